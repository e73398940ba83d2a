"""The config-key table and the cross-key checks, run by :class:`recbole_fofa.config.Config`
before the dataset loads.

A bad value gets a ``ValueError`` naming the key, the value and what is allowed, instead of a crash
inside torch or RecBole's dataloader, a "Training loss is nan", or a hang. One table per group of
keys, one row per key (:class:`Key`: its :class:`Rule`, its shipped default read from the YAML, and
its flags):

* :data:`COMMON_KEYS`: training and evaluation keys with one meaning across RecBole;
* :data:`BACKBONE_KEYS`: backbone keys shared by RecBole's models, applied to a RecBole model
  only for the keys it reads (those in RecBole's or the plugin's YAML for it; sequence length for
  every sequential model);
* :data:`MODEL_KEYS`: one table per plugin model, covering every key of its YAML;
* :data:`RUN_KEYS`: RecBole keys not checked here, listed for their flags.

:data:`COMMON_CHECKS`, :data:`BACKBONE_CHECKS` and :data:`MODEL_CHECKS` (``{key: Rule}``),
:data:`STAGE2_KEYS` and :data:`RELOAD_OVERRIDABLE` are derived from the tables. On top of the
rules: cross-key rules (heads dividing the width, ``device_budget`` above one block, the search
keys) and ``metrics``/``topk``/``valid_metric`` consistency. The memory estimate is
:mod:`recbole_fofa.memory`.
"""

from dataclasses import dataclass
from typing import Any, Callable, Dict, FrozenSet, Optional, Tuple

from recbole.utils import ModelType

from recbole_fofa import registry
from recbole_fofa.budget import (
    BUDGET_FORMS,
    is_budget,
    is_finite_number,
    is_fraction,
    parse_budget,
)
from recbole_fofa.cost import EXTRACTORS, MAPPER_MODES
from recbole_fofa.evaluator.metrics import is_cost_metric
from recbole_fofa.recbole_introspect import (
    activation_names,
    is_registered_metric,
    is_topk_metric,
    loss_type_names,
    metric_names,
    metric_names_of,
    metric_type,
    recbole_model_keys,
    smaller_metrics,
)
from recbole_fofa.subnet import SupernetShape

# ----------------------------------------------------------------------------- predicates


def is_int(value):
    """An integer, not a bool (YAML's ``yes``/``true`` would otherwise count as 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_value(key, value, check, allowed):
    """Raise ValueError naming ``key``, its ``value`` and what is ``allowed`` if check fails."""
    if not check(value):
        raise ValueError(f"config key `{key}` = {value!r} is invalid: expected {allowed}")
    return value


@dataclass(frozen=True)
class Rule:
    """One key's check: ``check(value) -> bool``, the ``allowed`` values in words (or a function
    returning them, for lists that grow at run time), and representative ``bad`` values
    (documentation, and what the tests feed it)."""

    check: Callable[[Any], bool]
    allowed: Any
    bad: Tuple[Any, ...] = ()

    def describe(self):
        return self.allowed() if callable(self.allowed) else self.allowed

    def __call__(self, key, value):
        return check_value(key, value, self.check, self.describe())


def integer(low, high=None):
    """An integer in ``[low, high]`` (no upper bound when ``high`` is None)."""
    allowed = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
    bad = (low - 1, 2.5, True, "8") + (() if high is None else (high + 1,))
    return Rule(lambda v: is_int(v) and v >= low and (high is None or v <= high), allowed, bad)


def number(low, high=None, low_open=False, high_open=False):
    """A finite number in the interval from ``low`` to ``high`` (open ends as flagged)."""
    left = "(" if low_open else "["
    right = ")" if high_open else "]"
    allowed = (f"a finite number {'>' if low_open else '>='} {low}" if high is None
               else f"a number in {left}{low}, {high}{right}")

    def check(value):
        if not is_finite_number(value):
            return False
        above = value > low if low_open else value >= low
        below = high is None or (value < high if high_open else value <= high)
        return above and below

    bad = (float("nan"), float("inf"), "0.5", low - 1)
    if high is not None:
        bad += (high + 1,)
    return Rule(check, allowed, bad)


def choice(options, example_bad="nonsense"):
    """One of ``options`` (exactly, case-sensitive)."""
    options = tuple(options)
    return Rule(lambda v: isinstance(v, str) and v in options, f"one of {list(options)}",
                (example_bad, None, 1))


def optional(rule):
    """``rule`` or null."""
    return Rule(lambda v: v is None or rule.check(v), f"null or {rule.describe()}",
                tuple(b for b in rule.bad if b is not None))



def _metric_names_rule():
    def check(value):
        values = value if isinstance(value, list) else [value]
        return bool(values) and all(is_registered_metric(v) for v in values)

    def allowed():
        names = ", ".join(metric_names())
        return f"a metric name or a non-empty list of them from RecBole's registry: {names}"

    return Rule(check, allowed, ([], None, 3.5, ["NDCG", "NDCGX"]))


def loss_type_rule(model_class):
    """The ``loss_type`` rule of a RecBole model, from :func:`loss_type_names`."""
    names, insensitive = loss_type_names(model_class)
    if not names:
        return BACKBONE_CHECKS["loss_type"]
    if not insensitive:
        return choice(names, "nonsense")
    folded = {name.lower() for name in names}
    return Rule(lambda v: isinstance(v, str) and v.lower() in folded,
                f"one of {list(names)} (case-insensitive)", ("nonsense", None, 1))


# ----------------------------------------------------------------------------- lists


class ListOf(Rule):
    """A non-empty list whose entries each pass ``entry(value) -> bool`` (``entry_allowed`` in
    words); ``distinct`` entries when asked. The error names the bad entry and its position."""

    def __init__(self, entry, entry_allowed, bad, distinct=True, nullable=False):
        def check(value):
            return (value is None and nullable) or self._problem(value) is None

        what = f"a non-empty list of {entry_allowed}" + (", without repeats" if distinct else "")
        object.__setattr__(self, "entry", entry)
        object.__setattr__(self, "distinct", distinct)
        object.__setattr__(self, "nullable", nullable)
        super().__init__(check, f"null or {what}" if nullable else what, bad)

    def _problem(self, value):
        """None if ``value`` is fine, else a phrase saying what is wrong with it."""
        if not isinstance(value, list) or not value:
            return "is not a non-empty list"
        for index, item in enumerate(value):
            if not self.entry(item):
                return f"has a bad entry {item!r} (position {index})"
        if self.distinct:
            seen = []
            for index, item in enumerate(value):
                if item in seen:
                    return f"repeats the entry {item!r} (position {index})"
                seen.append(item)
        return None

    def __call__(self, key, value):
        if value is None and self.nullable:
            return value
        problem = self._problem(value)
        if problem is not None:
            raise ValueError(f"config key `{key}` = {value!r} {problem}: expected "
                             f"{self.describe()}")
        return value



# ----------------------------------------------------------------------------- the key table

STAGE2 = "stage2"  # acts in stage 2 only: runs differing in it alone can share the supernet
RELOAD = "reload"  # a reloaded checkpoint may change it: it alters neither weights nor the split
SIZE = "size"  # a size the memory estimate may name, with its shipped default, when too big
RESUME = "resume"  # a resumed run may change it: the length of a stage (as RecBole's `epochs`)
SPACE = "space"  # a reload key that still shapes training: the space the supernet stage samples
FLAGS = (STAGE2, RELOAD, SIZE, RESUME, SPACE)


@dataclass(frozen=True)
class Key:
    """One row of a key table: the key's ``rule`` (None: a RecBole key the plugin does not
    check), its ``flags`` (from :data:`FLAGS`) and its shipped ``default`` (read from the YAML;
    None where the YAML has none)."""

    rule: Optional[Rule]
    flags: FrozenSet[str] = frozenset()
    default: Any = None


def _table(defaults, rows):
    """``{key: Key}`` from ``{key: (rule, *flags)}``, each default read from ``defaults``."""
    table = {}
    for key, (rule, *flags) in rows.items():
        unknown = set(flags) - set(FLAGS)
        if unknown:
            raise ValueError(f"key table row `{key}`: unknown flags {sorted(unknown)}")
        table[key] = Key(rule, frozenset(flags), defaults.get(key))
    return table


def _rules(table):
    return {key: row.rule for key, row in table.items() if row.rule is not None}


# c10d's deadline, now + timeout in int64 ns since 1970, wraps past ~7.4e9 s (gloo: 1e10 fails at
# once "after 1e13 ms", 8e9 hangs, 6e9 works); no collective waits a year: far below the wrap.
MAX_DIST_TIMEOUT = 365 * 24 * 3600
PROBABILITY = number(0, 1, high_open=True)
HIDDEN_ACT = Rule(lambda v: v in activation_names(), f"one of {list(activation_names())} "
                  "(recbole.model.layers.FeedForward's activations)", ("GELU", "leakyrelu", None))
SEQUENCE_LENGTH = integer(1)

COMMON_KEYS: Dict[str, Key] = _table(registry.shipped_defaults(), {
    "epochs": (integer(0), STAGE2),
    "train_batch_size": (integer(1), SIZE),
    "eval_batch_size": (integer(1), RELOAD, SIZE),
    "learning_rate": (number(0),),  # 0 trains nothing, as in RecBole (its tests use it)
    "weight_decay": (number(0),),
    "stopping_step": (integer(0),),  # 0: stop at the first validation without improvement
    "eval_step": (integer(0),),
    "seed": (integer(0, 2**32 - 1),),  # numpy's seed range (init_seed seeds numpy too)
    "metric_decimal_place": (integer(0), RELOAD),
    "topk": (Rule(lambda v: (is_int(v) and v > 0)
                  or (isinstance(v, list) and bool(v) and all(is_int(k) and k > 0 for k in v)),
                  "an integer >= 1 or a non-empty list of them", (0, [], [5, 0], "10", [2.5])),
             RELOAD),
    "metrics": (_metric_names_rule(), RELOAD),  # case-insensitive, as RecBole's own lookup
    "valid_metric": (Rule(lambda v: isinstance(v, str) and bool(v.strip()),
                          "a metric name, with @k for top-k metrics (e.g. NDCG@10)", (None, 10)),
                     RELOAD),
    # distributed runs (recbole_fofa/distributed.py)
    "dist_backend": (Rule(lambda v: v is None or v in ("gloo", "nccl"),
                          "null (nccl on GPUs, gloo on CPUs), 'gloo' or 'nccl'",
                          ("mpi", "NCCL", 1)),),
    "dist_timeout": (number(0, MAX_DIST_TIMEOUT, low_open=True),),
    # checkpoints load only what RecBole's and the plugin's hold unless this is true (compat C1)
    "trust_checkpoint": (Rule(lambda v: isinstance(v, bool), "true or false (true unpickles "
                              "the file fully: only for files you trust)", (1, "yes", None)),
                         RELOAD),
    # true: the console also shows the config, dataset and model dumps and library warnings
    "verbose": (Rule(lambda v: isinstance(v, bool), "true or false", (1, "yes", None)), RELOAD),
    # the escape from the unknown-key check (check_key_names): keys of the user's own model
    "extra_keys": (Rule(lambda v: v is None or (isinstance(v, list) and all(
        isinstance(k, str) and k.isidentifier() for k in v)),
        "null or a list of config key names (your own model's keys)", ("my_key", [1], [""])),),
})

# Backbone keys mean what they mean for SASRec: its YAML gives their defaults.
BACKBONE_KEYS: Dict[str, Key] = _table(registry.shipped_defaults("SASRec"), {
    "hidden_size": (integer(1), SIZE),
    "inner_size": (integer(1), SIZE),
    "n_layers": (integer(0), SIZE),  # 0 is plain MF for graph models; see _cross_checks
    "n_heads": (integer(1), SIZE),
    "hidden_dropout_prob": (PROBABILITY,),
    "attn_dropout_prob": (PROBABILITY,),
    "dropout_prob": (PROBABILITY,),
    "hidden_act": (HIDDEN_ACT,),
    "layer_norm_eps": (number(0, low_open=True),),
    "initializer_range": (number(0, low_open=True),),
    "loss_type": (Rule(lambda v: isinstance(v, str) and bool(v), "a loss name", (None, 1)),),
    "MAX_ITEM_LIST_LENGTH": (SEQUENCE_LENGTH, SIZE),
})

# RecBole keys the plugin leaves to RecBole; rows only for their flags.
RUN_KEYS: Dict[str, Key] = _table(registry.shipped_defaults(), {
    "show_progress": (None, RELOAD),
    "state": (None, RELOAD),
    "checkpoint_dir": (None, RELOAD),
})

# ForwardOFA's Python loops run once per block (construction, every forward) and once per sampled
# sub-network (every supernet step); beyond these the run is hours of interpreter overhead even
# when the tensors are tiny. See docs/design-notes.md ("Config checks").
MAX_BLOCKS = 256
MAX_SUBNETS = 64
# ForwardOFA `controller`: per-user block selection, or every block for every user (ablation)
CONTROLLER_MODES = ("learned", "none")
# ForwardOFA `eval_grouping`: how evaluation runs per-user structures (docs/design-notes.md)
EVAL_GROUPINGS = ("block", "structure")
MAX_BLOCK_PASSES = 1024  # block forward passes in one supernet step (full + sub-networks)
# The subnet search's names (recbole_fofa.search.space.SPACES and evolution.STRATEGIES + auto;
# a test keeps them equal). Listed here because checks run before anything imports the search.
SEARCH_SPACES = ("block", "elastic", "compound")
SEARCH_STRATEGIES = ("auto", "independent", "bottom_up", "top_down", "exhaustive", "pareto")
# Exhaustive search evaluates every config with a RecBole evaluation: a million is already days.
MAX_EXHAUSTIVE = 2**20
# Evolution sizes: 100x OFA's population (100) and children (50 + 50), 20x its 500 generations;
# OFA's predictor learned from 16K sub-networks; after 1,000 misses a child is repaired anyway.
# MAX_SEARCH_DRAWS caps the children one budget draws (population + generations x children; OFA:
# 50,100): a million is ~1 min of bookkeeping (~50 us each), days of evaluation, ~1 GB of configs.
MAX_SEARCH_SIZE, MAX_PREDICTOR_SAMPLES, MAX_RESAMPLE, MAX_SEARCH_DRAWS = 10**4, 20_000, 1000, 10**6

MODEL_KEYS: Dict[str, Dict[str, Key]] = {
    "ForwardOFA": _table(registry.shipped_defaults("ForwardOFA"), {
        "n_blocks": (integer(1, MAX_BLOCKS), SIZE),
        "n_heads": (integer(1), SIZE),
        "hidden_size": (integer(1), SIZE),
        "inner_size": (integer(1), SIZE),
        "hidden_dropout_prob": (PROBABILITY,),
        "attn_dropout_prob": (PROBABILITY,),
        "hidden_act": (HIDDEN_ACT,),
        "layer_norm_eps": (number(0, low_open=True),),
        "initializer_range": (number(0, low_open=True),),
        "loss_type": (choice(("CE", "BPR"), "ce"),),
        "rt_len": (integer(1), STAGE2, SIZE),
        "extractor": (choice(EXTRACTORS, "lstm"), STAGE2),
        "controller": (choice(CONTROLLER_MODES, "off"), STAGE2),
        "keep_threshold": (number(0, 1, low_open=True, high_open=True), STAGE2),
        "eval_grouping": (choice(EVAL_GROUPINGS, "rows"),),
        "tau_start": (number(0, low_open=True), STAGE2),
        "tau_end": (number(0, low_open=True), STAGE2),
        "tau_anneal_epochs": (integer(0), STAGE2),
        "gumbel_noise_end": (number(0, 1), STAGE2),
        "controller_init_keep": (optional(number(0, 1, low_open=True, high_open=True)), STAGE2),
        "mapper_mode": (choice(MAPPER_MODES, "serial"), STAGE2),
        "mapper_rank": (integer(1), STAGE2, SIZE),
        "mapper_hidden": (integer(1), STAGE2, SIZE),
        "supernet_epochs": (integer(0), RESUME),
        "supernet_subnets": (integer(0, MAX_SUBNETS), SIZE),
        "supernet_full_epochs": (integer(0),),
        "backbone_init": (Rule(lambda v: v is None or (isinstance(v, str) and v.strip() != ""),
                               "null, or the path of a SASRec checkpoint with n_layers = n_blocks",
                               (1, "", True, ["a.pth"])),),
        "distill_weight": (number(0),),
        "adapt_distill_weight": (number(0), STAGE2),
        "sparsity_weight": (number(0), STAGE2),
        "sparsity_target": (optional(number(0, 1, low_open=True)), STAGE2),
        "backbone_lr_scale": (number(0), STAGE2),
        "device_budget": (Rule(lambda v: v is None or is_budget(v), f"null, or {BUDGET_FORMS}",
                               (1.5, -1, 0, "fast", float("nan"), "1.2 MACs/s", True)), STAGE2),
        "n_candidates": (optional(integer(1)),),
        # subnet search (recbole_fofa.search; docs/search.md)
        "search_space": (choice(SEARCH_SPACES, "Elastic"), RELOAD, SPACE),
        "width_choices": (ListOf(is_fraction, "fractions of inner_size in (0, 1]",
                                 ([], [0], [1.5], [0.5, 0.5], 0.5, None, [True])), RELOAD, SPACE),
        "head_choices": (ListOf(lambda v: is_int(v) and v >= 1, "head counts (integers >= 1)",
                                ([], [0], [1.5], [2, 2], 2, None)), RELOAD, SPACE),
        "compound_widths": (ListOf(is_fraction, "fractions of inner_size in (0, 1], one per "
                                   "number of kept blocks", ([], [0.0], [2], None, "0.5"),
                                   distinct=False), RELOAD, SPACE),
        "compound_heads": (ListOf(lambda v: is_int(v) and v >= 1, "head counts (integers >= "
                                  "1), one per number of kept blocks", ([], [0], [1.5], None),
                                  distinct=False), RELOAD, SPACE),
        "search_budgets": (ListOf(is_budget, f"budgets, each {BUDGET_FORMS}",
                                  ([], [1.5], 0.5, ["fast"], [0.5, 0.5], [None], [0, 0.5]),
                                  nullable=True), RELOAD),
        "search_strategy": (choice(SEARCH_STRATEGIES, "evolution"), RELOAD),
        "search_metric": (Rule(lambda v: isinstance(v, str) and bool(v.strip()),
                               "a metric name, with @k for top-k metrics (e.g. NDCG@10)",
                               (None, 10, "", "  ")), RELOAD),
        "search_eval_users": (optional(integer(1)), RELOAD),
        "search_population": (integer(2, MAX_SEARCH_SIZE), RELOAD),
        "search_parents": (integer(1, MAX_SEARCH_SIZE), RELOAD),
        "search_mutants": (integer(0, MAX_SEARCH_SIZE), RELOAD),
        "search_crossovers": (integer(0, MAX_SEARCH_SIZE), RELOAD),
        "search_mutation_prob": (number(0, 1, low_open=True), RELOAD),
        "search_generations": (integer(1, MAX_SEARCH_SIZE), RELOAD),
        "search_warm_generations": (optional(integer(0, MAX_SEARCH_SIZE)), RELOAD),
        "search_max_resample": (integer(1, MAX_RESAMPLE), RELOAD),
        "search_exhaustive_limit": (integer(1, MAX_EXHAUSTIVE), RELOAD),
        "search_predictor": (Rule(lambda v: isinstance(v, bool), "true or false",
                                  (1, "yes", None)), RELOAD),
        "search_predictor_samples": (integer(10, MAX_PREDICTOR_SAMPLES), RELOAD),
        "search_predictor_min_rank_corr": (number(-1, 1), RELOAD),
        "search_seed": (optional(integer(0, 2**32 - 1)), RELOAD),
    }),
}

KEY_TABLES: Dict[str, Dict[str, Key]] = {"common": COMMON_KEYS, "backbone": BACKBONE_KEYS,
                                         "run": RUN_KEYS, **MODEL_KEYS}


def flagged(flag):
    """``{key: shipped default}`` of every key carrying ``flag``, in table order."""
    if flag not in FLAGS:
        raise ValueError(f"flag {flag!r} is invalid: expected one of {list(FLAGS)}")
    out = {}
    for table in KEY_TABLES.values():
        for key, row in table.items():
            if flag in row.flags:
                out.setdefault(key, row.default)
    return out


COMMON_CHECKS: Dict[str, Rule] = _rules(COMMON_KEYS)
BACKBONE_CHECKS: Dict[str, Rule] = _rules(BACKBONE_KEYS)
MODEL_CHECKS: Dict[str, Dict[str, Rule]] = {name: _rules(t) for name, t in MODEL_KEYS.items()}
#: Keys acting in stage 2 only: runs differing in these alone can share the supernet.
STAGE2_KEYS = frozenset(flagged(STAGE2))
#: Keys a reloaded checkpoint's config may change: none alters the model's weights or the split.
RELOAD_OVERRIDABLE = frozenset(flagged(RELOAD))
#: Model keys a resumed run may change: the length of a stage (as RecBole's own `epochs`).
RESUME_FREE_KEYS = frozenset(flagged(RESUME))
#: Reload keys that still shape training: the sub-network space the supernet stage samples.
TRAINED_SPACE_KEYS = frozenset(flagged(SPACE))


def method_keys(model):
    """Keys that define ``model``'s (a name or class) method, which a checkpoint resumes only
    under the same values: a plugin model's key table, else the keys of the RecBole model's YAML,
    less :data:`RESUME_FREE_KEYS` and the reload keys that do not shape training."""
    name, _ = resolve_model({}, model)
    if name in MODEL_KEYS:
        reads = set(MODEL_KEYS[name])
    else:
        reads = set(recbole_model_keys(name) | registry.plugin_model_keys(name))
    return frozenset(key for key in reads if key not in RESUME_FREE_KEYS
                     and (key not in RELOAD_OVERRIDABLE or key in TRAINED_SPACE_KEYS))


# ----------------------------------------------------------------------------- key checks


def plain_values(config):
    """The plain dict behind a RecBole Config (or a mapping)."""
    return dict(config.final_config_dict if hasattr(config, "final_config_dict") else config)


def resolve_model(config, model=None):
    """(name, class) of ``model`` (a name, a class, or None for ``config['model']``); a name is
    resolved once, by :func:`recbole_fofa.registry.get_model`."""
    model = model if model is not None else config.get("model")
    if isinstance(model, str):
        return model, registry.get_model(model)
    if model is None:
        raise ValueError("config key `model` is missing: name a model (e.g. --model=SASRec)")
    return model.__name__, model


def rules_for(model, values=None):
    """{key: Rule} checked for ``model`` (a name or class): the common table, plus the plugin
    model's own table, or the backbone keys the RecBole model reads."""
    return _rules_for(*resolve_model({}, model), values)


def _rules_for(name, model_class, values):
    rules = dict(COMMON_CHECKS)
    model_type = getattr(model_class, "type", None)
    if values is not None and "MODEL_TYPE" in values:
        model_type = values["MODEL_TYPE"]
    if model_type == ModelType.SEQUENTIAL:
        rules["MAX_ITEM_LIST_LENGTH"] = SEQUENCE_LENGTH
    if name in MODEL_CHECKS:
        rules.update(MODEL_CHECKS[name])
        return rules
    read = recbole_model_keys(name) | registry.plugin_model_keys(name)
    for key in read & BACKBONE_CHECKS.keys():
        rules[key] = BACKBONE_CHECKS[key]
    if "hidden_act" in read:
        names = activation_names(model_class)
        rules["hidden_act"] = Rule(lambda v: v in names, f"one of {list(names)}", HIDDEN_ACT.bad)
    if "loss_type" in read:
        rules["loss_type"] = loss_type_rule(model_class)
    return rules


def check_keys(config, model=None):
    """Check every key ``model`` reads, one at a time, plus the cross-key rules.

    Runs on RecBole's merged config before its own defaults are applied (``metrics`` may still be a
    string, ``topk`` an integer), and again on the final values.
    """
    values = plain_values(config)
    name, model_class = resolve_model(values, model)
    rules = _rules_for(name, model_class, values)
    for key, rule in rules.items():
        if key in values:
            rule(key, values[key])
    _cross_checks(name, values, {key for key in rules if is_int(values.get(key))})


def _cross_checks(name, values, reads):
    """Rules between keys; ``reads``: the keys the model reads that hold an integer."""
    if {"hidden_size", "n_heads"} <= reads and values["hidden_size"] % values["n_heads"]:
        raise ValueError(
            f"config key `n_heads` = {values['n_heads']!r} must divide `hidden_size` = "
            f"{values['hidden_size']!r}: use one of {_divisors(values['hidden_size'])}"
        )
    if {"n_layers", "hidden_size"} <= reads and values.get("n_layers") == 0:
        raise ValueError(
            f"config key `n_layers` = 0 is invalid for {name}: expected an integer >= 1 (its "
            "encoder reads the output of its last layer)"
        )
    if name == "ForwardOFA" and {"n_blocks", "supernet_subnets"} <= reads and values.get(
            "supernet_epochs"):
        passes = supernet_block_passes(values["n_blocks"], values["supernet_subnets"])
        if passes > MAX_BLOCK_PASSES:
            raise ValueError(
                f"config key `supernet_subnets` = {values['supernet_subnets']!r} with `n_blocks` "
                f"= {values['n_blocks']!r} runs up to {passes:,} block passes per supernet step "
                f"(at most {MAX_BLOCK_PASSES}: each costs milliseconds of interpreter overhead "
                "before any arithmetic); lower either, or set `supernet_epochs: 0`"
            )
    metrics = values.get("metrics")
    if metrics is not None:
        metrics = [metrics] if isinstance(metrics, str) else metrics
        # the cost metrics fit beside either kind (see Config._set_default_parameters)
        types = {metric_type(m) for m in metrics if not is_cost_metric(m)}
        if len(types) > 1:
            raise ValueError(
                f"config key `metrics` = {metrics!r} mixes ranking metrics with value metrics "
                "(AUC-style losses on scores): RecBole evaluates one kind per run; use "
                f"{_names_of(ranking=True)} or {_names_of(ranking=False)}"
            )
    sizes = {"MAX_ITEM_LIST_LENGTH", "hidden_size", "inner_size", "n_heads", "n_blocks"}
    if name == "ForwardOFA" and values.get("device_budget") is not None and sizes <= reads:
        shape = _shape(values)
        block, full = shape.cheapest_macs(), shape.full_macs()
        budget = parse_budget("device_budget", values["device_budget"])
        if budget.to_macs(full) < block:
            raise ValueError(
                f"config key `device_budget` = {values['device_budget']!r} is below the cheapest "
                f"sub-network: one block costs {block:,} MACs (a fraction >= "
                f"{1 / values['n_blocks']:.4f}, or \"{block} MACs\")"
            )
    if name == "ForwardOFA":
        _search_checks(values, reads)
    elif values.get("search_budgets") is not None:
        raise ValueError(
            f"config key `search_budgets` = {values['search_budgets']!r} is set for {name}, but "
            "only ForwardOFA has sub-networks to search: remove it or use --model=ForwardOFA"
        )


def _shape(values):
    """The supernet shape the config's sizes describe (the encoder only: enough for MACs)."""
    get = values.get
    return SupernetShape(seq_len=get("MAX_ITEM_LIST_LENGTH"), hidden_size=get("hidden_size"),
                         inner_size=get("inner_size"), n_heads=get("n_heads"),
                         n_blocks=get("n_blocks"))


def _search_checks(values, reads):
    """Cross-key rules of the subnet-search keys (each key alone passed its table rule)."""
    get = values.get
    space = get("search_space")
    inner, n_heads, n_blocks = get("inner_size"), get("n_heads"), get("n_blocks")
    shape_known = {"inner_size", "n_heads", "n_blocks"} <= reads
    if space in ("elastic", "compound") and shape_known:
        for fraction in get("width_choices") or ():
            if round(fraction * inner) < 1:
                raise ValueError(
                    f"config key `width_choices` = {get('width_choices')!r}: {fraction!r} x "
                    f"`inner_size` = {inner} rounds to 0 feed-forward units; use fractions >= "
                    f"{0.5 / inner:.4g}"
                )
        for heads in get("head_choices") or ():
            if heads > n_heads:
                raise ValueError(
                    f"config key `head_choices` = {get('head_choices')!r}: {heads} heads exceed "
                    f"`n_heads` = {n_heads}; use head counts in [1, {n_heads}]"
                )
    if space == "compound" and shape_known:
        for key, choices in (("compound_widths", "width_choices"),
                             ("compound_heads", "head_choices")):
            rule, allowed = get(key) or [], get(choices) or []
            if len(rule) != n_blocks:
                raise ValueError(
                    f"config key `{key}` = {rule!r} has {len(rule)} entries but `n_blocks` = "
                    f"{n_blocks}: entry k-1 is used when k blocks are kept, so give {n_blocks}"
                )
            for index, value in enumerate(rule):
                if value not in allowed:
                    raise ValueError(
                        f"config key `{key}` = {rule!r}: entry {index} ({value!r}, for "
                        f"{index + 1} kept blocks) is not in `{choices}` = {allowed!r}"
                    )
    check_evolution(values)
    budgets = get("search_budgets")
    if budgets is None:
        return  # search_metric is only read by a search: do not tie other runs' metrics to it
    _check_search_metric(values)
    sizes = {"MAX_ITEM_LIST_LENGTH", "hidden_size"} | {"inner_size", "n_heads", "n_blocks"}
    if sizes <= reads:
        cheapest, full = search_cost_bounds(values)
        for budget in budgets:
            macs = parse_budget("search_budgets", budget).to_macs(full)
            if macs < cheapest:
                raise ValueError(
                    f"config key `search_budgets` = {budgets!r}: the budget {budget!r} "
                    f"({macs:,.0f} MACs) is below the cheapest sub-network of the "
                    f"{space!r} space, {cheapest:,} MACs (a fraction >= {cheapest / full:.4f})"
                )


#: The evolution settings, each config key ``search_<field>``
#: (:class:`recbole_fofa.search.SearchSettings` has one field per entry).
EVOLUTION_KEYS = ("search_population", "search_parents", "search_mutants", "search_crossovers",
                  "search_mutation_prob", "search_generations", "search_warm_generations",
                  "search_max_resample", "search_exhaustive_limit")


def check_evolution(values, each=False):
    """The rules between the evolution keys (``parents <= population``, at least one child per
    generation); with ``each``, first every key of :data:`EVOLUTION_KEYS` by its table rule.
    The config checks and ``SearchSettings`` both run this, so they cannot disagree."""
    get = values.get
    if each:
        rules = MODEL_CHECKS["ForwardOFA"]
        for key in EVOLUTION_KEYS:
            rules[key](key, get(key))
    population, parents = get("search_population"), get("search_parents")
    if is_int(population) and is_int(parents) and parents > population:
        raise ValueError(
            f"config key `search_parents` = {parents} exceeds `search_population` = "
            f"{population}: the parents are the best of the population; use at most "
            f"search_population = {population}"
        )
    mutants, crossovers = get("search_mutants"), get("search_crossovers")
    if is_int(mutants) and is_int(crossovers) and mutants + crossovers == 0:
        raise ValueError(
            "config keys `search_mutants` = 0 and `search_crossovers` = 0: a generation would "
            "add no child; set either to at least 1"
        )
    children = mutants + crossovers if is_int(mutants) and is_int(crossovers) else 0
    for key in ("search_generations", "search_warm_generations"):
        generations = get(key)
        if children and is_int(population) and is_int(generations) and (
                population + generations * children > MAX_SEARCH_DRAWS):
            raise ValueError(
                f"config keys `search_population` = {population} + `{key}` = {generations} x "
                f"(`search_mutants` + `search_crossovers` = {children}) draw "
                f"{population + generations * children:,} sub-networks per budget (at most "
                f"{MAX_SEARCH_DRAWS:,}): use `{key}` <= "
                f"{max(0, (MAX_SEARCH_DRAWS - population) // children):,} or fewer children")


def _check_search_metric(values):
    """``search_metric`` names a valid-split result to maximise: produced by ``metrics`` x
    ``topk`` (as for ``valid_metric``), and bigger-is-better (not a cost, not an error)."""
    metric = values.get("search_metric")
    metrics, topk = values.get("metrics"), values.get("topk")
    if metrics is None or topk is None:
        return
    allowed = [name for name in allowed_valid_metrics(metrics, topk)
               if not is_cost_metric(name) and name.split("@")[0] not in smaller_metrics()]
    if metric.lower() not in allowed:
        raise ValueError(
            f"config key `search_metric` = {metric!r} is not a bigger-is-better result of "
            f"`metrics` = {metrics!r} x `topk` = {topk!r}; use one of {', '.join(allowed)}"
        )


def search_cost_bounds(values):
    """(cheapest, full) encoder MACs of the configured search space, from the config alone
    (:meth:`recbole_fofa.subnet.SupernetShape.cheapest_macs`, as the search space's own)."""
    get = values.get
    space, options = get("search_space"), {}
    if space == "elastic":
        options = {"width_choices": get("width_choices"), "head_choices": get("head_choices")}
    elif space == "compound":
        options = {"compound_widths": get("compound_widths"),
                   "compound_heads": get("compound_heads")}
    else:
        space = "block"
    shape = _shape(values)
    return shape.cheapest_macs(space, **options), shape.full_macs()


def supernet_block_passes(n_blocks, subnets):
    """Worst-case block passes of one supernet step: the full network, the one-block
    sub-network, then ``subnets - 1`` random ones that may keep every block."""
    return n_blocks + (1 + (subnets - 1) * n_blocks if subnets >= 1 else 0)


def _divisors(n):
    return [k for k in range(1, min(n, 64) + 1) if n % k == 0]


def _names_of(ranking):
    names = metric_names_of(ranking)
    return f"only {'ranking' if ranking else 'value'} metrics ({', '.join(names)})"


# ----------------------------------------------------------------------------- metrics


def allowed_valid_metrics(metrics, topk):
    """The ``valid_metric`` values that ``metrics`` and ``topk`` produce (lowercase)."""
    topk = [topk] if is_int(topk) else list(topk)
    out = []
    for metric in [metrics] if isinstance(metrics, str) else metrics:
        name = metric.lower()
        out += [f"{name}@{k}" for k in topk] if is_topk_metric(name) else [name]
    return out


def check_metrics(config):
    """``valid_metric`` names a result that ``metrics`` and ``topk`` produce (case-insensitive,
    as RecBole's trainer lowercases it), so a run cannot end its first epoch with a KeyError."""
    values = plain_values(config)
    for key in ("metrics", "topk", "valid_metric"):
        COMMON_CHECKS[key](key, values.get(key))
    metrics = [values["metrics"]] if isinstance(values["metrics"], str) else values["metrics"]
    topk = [values["topk"]] if is_int(values["topk"]) else values["topk"]
    valid = values["valid_metric"]
    allowed = allowed_valid_metrics(metrics, topk)
    if valid.lower() in allowed:
        return
    name, _, cut = valid.lower().partition("@")
    listed = [m.lower() for m in metrics]
    prefix = f"config key `valid_metric` = {valid!r}"
    if name not in listed:
        reason = f"is not one of `metrics` = {metrics!r}"
    elif not is_topk_metric(name):
        reason = f"takes no @k: {name} is not a top-k metric"
    elif not cut:
        reason = f"needs @k with k in `topk` = {topk!r}"
    else:
        reason = f"needs {cut} in `topk` = {topk!r}"
    raise ValueError(f"{prefix} {reason}; use one of {', '.join(allowed)}")


__all__ = [
    "BACKBONE_CHECKS", "BACKBONE_KEYS", "COMMON_CHECKS", "COMMON_KEYS", "EVOLUTION_KEYS", "FLAGS",
    "KEY_TABLES", "Key", "MAX_DIST_TIMEOUT", "MAX_SEARCH_DRAWS", "MODEL_CHECKS", "MODEL_KEYS",
    "RELOAD", "RELOAD_OVERRIDABLE", "RESUME", "RESUME_FREE_KEYS", "RUN_KEYS", "Rule", "SIZE",
    "SPACE", "STAGE2", "STAGE2_KEYS", "TRAINED_SPACE_KEYS", "allowed_valid_metrics",
    "check_evolution", "check_keys", "check_metrics", "check_value", "flagged", "is_int",
    "method_keys", "plain_values", "resolve_model", "rules_for", "search_cost_bounds",
    "supernet_block_passes",
]
