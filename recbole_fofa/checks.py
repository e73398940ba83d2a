"""Config-value checks, run by :class:`recbole_fofa.config.Config` before the dataset loads.

A bad value gets a ``ValueError`` naming the key, the value and what is allowed, instead of a crash
inside torch or RecBole's dataloader, a "Training loss is nan", or a hang. Three tables:

* :data:`COMMON_CHECKS`: training and evaluation keys with one meaning across RecBole;
* :data:`BACKBONE_CHECKS`: backbone keys shared by RecBole's models, applied to a RecBole model
  only for the keys it reads (those in RecBole's or the plugin's YAML for it; sequence length for
  every sequential model);
* :data:`MODEL_CHECKS`: one table per plugin model, covering every key of its YAML.

On top of them: cross-key rules (heads dividing the width, ``device_budget`` above one block),
``metrics``/``topk``/``valid_metric`` consistency, and a memory estimate of the configured model
compared with the memory of the configured device (:func:`estimate_memory`).
"""

import ast
import inspect
import math
import os
import re
import textwrap
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import recbole
import yaml
from recbole.model.layers import FeedForward
from recbole.utils import ModelType

from recbole_fofa import cost
from recbole_fofa.evaluator.metrics import is_cost_metric

# ----------------------------------------------------------------------------- predicates


def is_int(value):
    """An integer, not a bool (YAML's ``yes``/``true`` would otherwise count as 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_finite_number(value):
    """An int or float, not a bool, neither NaN nor infinite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


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
        return bool(values) and all(_is_registered_metric(v) for v in values)

    def allowed():
        names = ", ".join(sorted(_registry().metrics_dict))
        return f"a metric name or a non-empty list of them from RecBole's registry: {names}"

    return Rule(check, allowed, ([], None, 3.5, ["NDCG", "NDCGX"]))


# ----------------------------------------------------------------------------- RecBole's names


def _literal_strings(node):
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        return {s for element in node.elts for s in _literal_strings(element)}
    return set()


def _dict_keys_in(func):
    """String keys of the dict literals in ``func``'s source."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
    return {key.value for node in ast.walk(tree) if isinstance(node, ast.Dict)
            for key in node.keys if isinstance(key, ast.Constant) and isinstance(key.value, str)}


@cache
def activation_names(model_class=None):
    """Names RecBole's ``FeedForward`` (and the model's own ``get_hidden_act``, if its module
    defines one, as FEARec's does) accept as ``hidden_act``: read from their source."""
    names = set(_dict_keys_in(FeedForward.get_hidden_act))
    module = inspect.getmodule(model_class) if model_class is not None else None
    for obj in vars(module).values() if module is not None else ():
        if inspect.isclass(obj) and "get_hidden_act" in vars(obj):
            names |= _dict_keys_in(obj.get_hidden_act)
    return tuple(sorted(names))


def _mentions_loss_type(node):
    return any(
        (isinstance(n, ast.Name) and n.id == "loss_type")
        or (isinstance(n, ast.Attribute) and n.attr == "loss_type")
        or (isinstance(n, ast.Constant) and n.value == "loss_type")
        for n in ast.walk(node)
    )


@cache
def loss_type_names(model_class):
    """(names, case_insensitive): the ``loss_type`` values a RecBole model's code compares
    against (its module and its bases'), and whether it lowercases first (MCCLK does). Empty
    names when it never compares (then any non-empty string passes)."""
    names, insensitive = set(), False
    for cls in model_class.__mro__:
        if not cls.__module__.startswith("recbole."):
            continue
        try:
            tree = ast.parse(inspect.getsource(inspect.getmodule(cls)))
        except (OSError, TypeError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare) and _mentions_loss_type(node.left):
                for comparator in node.comparators:
                    names |= _literal_strings(comparator)
                left = node.left
                insensitive |= (isinstance(left, ast.Call) and isinstance(left.func, ast.Attribute)
                                and left.func.attr in ("lower", "upper"))
    return tuple(sorted(names)), insensitive


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


@cache
def recbole_model_keys(model_name):
    """Keys of RecBole's own ``properties/model/<model>.yaml`` (empty if it has none)."""
    path = Path(recbole.__file__).resolve().parent / "properties" / "model" / f"{model_name}.yaml"
    if not path.is_file():
        return frozenset()
    return frozenset(yaml.safe_load(path.read_text()) or {})


@cache
def plugin_model_keys(model_name):
    """Keys of the plugin's ``properties/model/<model>.yaml`` (empty if it has none)."""
    from recbole_fofa.config import properties_dir

    path = properties_dir() / "model" / f"{model_name}.yaml"
    if not path.is_file():
        return frozenset()
    return frozenset(yaml.safe_load(path.read_text()) or {})


def _registry():
    import recbole.evaluator.register as register

    return register


def _is_registered_metric(name):
    return isinstance(name, str) and name.lower() in _registry().metrics_dict


def is_topk_metric(name):
    """Whether RecBole reports the metric per cut-off (``ndcg@10``) rather than once (``auc``)."""
    need = _registry().metric_information[name.lower()]
    return "rec.topk" in need or "rec.items" in need


# ----------------------------------------------------------------------------- device_budget


_MAC_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9}
_BUDGET_STRING = re.compile(r"^\s*(\d+(?:\.\d*)?(?:[eE][+-]?\d+)?)\s*([KMG]?)\s*MACs\s*$")
BUDGET_FORMS = ("a fraction of the full encoder's MACs as a number in (0, 1] (e.g. 0.5), or "
                "absolute MACs as a string with a unit (e.g. \"400K MACs\", \"1.2M MACs\", "
                "\"378880 MACs\"; units K, M, G)")


@dataclass(frozen=True)
class Budget:
    """A per-device compute budget: exactly one of ``fraction`` (of the full encoder's MACs) or
    ``macs`` (absolute multiply-accumulates)."""

    fraction: Optional[float] = None
    macs: Optional[float] = None

    def to_macs(self, full_macs):
        """The budget in MACs, given the full encoder's MACs."""
        return self.fraction * full_macs if self.fraction is not None else self.macs

    def __str__(self):
        return (f"{self.fraction:g} of the full encoder" if self.fraction is not None
                else f"{self.macs:,.0f} MACs")


def parse_budget(key, value):
    """``value`` of config key ``key`` as a :class:`Budget`.

    A number is a fraction in (0, 1]; absolute MACs are a string with a unit, so that 1.5 (a typo
    for 0.15? 1.5 MACs?) is an error rather than a guess. Raises ValueError naming the key, the
    value and both allowed forms.
    """
    error = ValueError(f"config key `{key}` = {value!r} is invalid: expected {BUDGET_FORMS}")
    if isinstance(value, str):
        match = _BUDGET_STRING.match(value)
        if not match:
            raise error
        macs = float(match.group(1)) * _MAC_UNITS[match.group(2)]
        if not (math.isfinite(macs) and macs > 0):
            raise error
        return Budget(macs=macs)
    if not is_finite_number(value) or not 0 < value <= 1:
        raise error
    return Budget(fraction=float(value))


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


def _parses_as_budget(value):
    try:
        parse_budget("device_budget", value)
    except ValueError:
        return False
    return True


def _is_fraction(value):
    return is_finite_number(value) and 0 < value <= 1


# ----------------------------------------------------------------------------- tables

PROBABILITY = number(0, 1, high_open=True)
HIDDEN_ACT = Rule(lambda v: v in activation_names(), f"one of {list(activation_names())} "
                  "(recbole.model.layers.FeedForward's activations)", ("GELU", "leakyrelu", None))
SEQUENCE_LENGTH = integer(1)

COMMON_CHECKS: Dict[str, Rule] = {
    "epochs": integer(0),
    "train_batch_size": integer(1),
    "eval_batch_size": integer(1),
    "learning_rate": number(0, low_open=True),
    "weight_decay": number(0),
    "stopping_step": integer(1),
    "eval_step": integer(0),
    "seed": integer(0, 2**32 - 1),  # numpy's seed range (init_seed seeds numpy too)
    "metric_decimal_place": integer(0),
    "topk": Rule(lambda v: (is_int(v) and v > 0)
                 or (isinstance(v, list) and bool(v) and all(is_int(k) and k > 0 for k in v)),
                 "an integer >= 1 or a non-empty list of them", (0, [], [5, 0], "10", [2.5])),
    "metrics": _metric_names_rule(),  # case-insensitive, as RecBole's own lookup
    "valid_metric": Rule(lambda v: isinstance(v, str) and bool(v.strip()),
                         "a metric name, with @k for top-k metrics (e.g. NDCG@10)", (None, 10)),
    # distributed runs (recbole_fofa/distributed.py)
    "dist_backend": Rule(lambda v: v is None or v in ("gloo", "nccl"),
                         "null (nccl on GPUs, gloo on CPUs), 'gloo' or 'nccl'",
                         ("mpi", "NCCL", 1)),
    "dist_timeout": number(0, low_open=True),
}

BACKBONE_CHECKS: Dict[str, Rule] = {
    "hidden_size": integer(1),
    "inner_size": integer(1),
    "n_layers": integer(0),  # 0 is plain MF for graph models; see _cross_checks for encoders
    "n_heads": integer(1),
    "hidden_dropout_prob": PROBABILITY,
    "attn_dropout_prob": PROBABILITY,
    "dropout_prob": PROBABILITY,
    "hidden_act": HIDDEN_ACT,
    "layer_norm_eps": number(0, low_open=True),
    "initializer_range": number(0, low_open=True),
    "loss_type": Rule(lambda v: isinstance(v, str) and bool(v), "a loss name", (None, 1)),
    "MAX_ITEM_LIST_LENGTH": SEQUENCE_LENGTH,
}

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

MODEL_CHECKS: Dict[str, Dict[str, Rule]] = {
    "ForwardOFA": {
        "n_blocks": integer(1, MAX_BLOCKS),
        "n_heads": integer(1),
        "hidden_size": integer(1),
        "inner_size": integer(1),
        "hidden_dropout_prob": PROBABILITY,
        "attn_dropout_prob": PROBABILITY,
        "hidden_act": HIDDEN_ACT,
        "layer_norm_eps": number(0, low_open=True),
        "initializer_range": number(0, low_open=True),
        "loss_type": choice(("CE", "BPR"), "ce"),
        "rt_len": integer(1),
        "extractor": choice(cost.EXTRACTORS, "lstm"),
        "controller": choice(CONTROLLER_MODES, "off"),
        "keep_threshold": number(0, 1, low_open=True, high_open=True),
        "eval_grouping": choice(EVAL_GROUPINGS, "rows"),
        "tau_start": number(0, low_open=True),
        "tau_end": number(0, low_open=True),
        "tau_anneal_epochs": integer(0),
        "mapper_mode": choice(cost.MAPPER_MODES, "serial"),
        "mapper_rank": integer(1),
        "mapper_hidden": integer(1),
        "supernet_epochs": integer(0),
        "supernet_subnets": integer(0, MAX_SUBNETS),
        "supernet_full_epochs": integer(0),
        "distill_weight": number(0),
        "sparsity_weight": number(0),
        "sparsity_target": optional(number(0, 1, low_open=True)),
        "backbone_lr_scale": number(0),
        "device_budget": Rule(lambda v: v is None or _parses_as_budget(v),
                              f"null, or {BUDGET_FORMS}", (1.5, -1, 0, "fast", float("nan"),
                                                          "1.2 MACs/s", True)),
        "n_candidates": optional(integer(1)),
        # subnet search (recbole_fofa.search; docs/search.md)
        "search_space": choice(SEARCH_SPACES, "Elastic"),
        "width_choices": ListOf(_is_fraction, "fractions of inner_size in (0, 1]",
                                ([], [0], [1.5], [0.5, 0.5], 0.5, None, [True])),
        "head_choices": ListOf(lambda v: is_int(v) and v >= 1, "head counts (integers >= 1)",
                               ([], [0], [1.5], [2, 2], 2, None)),
        "compound_widths": ListOf(_is_fraction, "fractions of inner_size in (0, 1], one per "
                                  "number of kept blocks", ([], [0.0], [2], None, "0.5"),
                                  distinct=False),
        "compound_heads": ListOf(lambda v: is_int(v) and v >= 1, "head counts (integers >= 1), "
                                 "one per number of kept blocks", ([], [0], [1.5], None),
                                 distinct=False),
        "search_budgets": ListOf(_parses_as_budget, f"budgets, each {BUDGET_FORMS}",
                                 ([], [1.5], 0.5, ["fast"], [0.5, 0.5], [None], [0, 0.5]),
                                 nullable=True),
        "search_strategy": choice(SEARCH_STRATEGIES, "evolution"),
        "search_metric": Rule(lambda v: isinstance(v, str) and bool(v.strip()),
                              "a metric name, with @k for top-k metrics (e.g. NDCG@10)",
                              (None, 10, "", "  ")),
        "search_eval_users": optional(integer(1)),
        "search_population": integer(2),
        "search_parents": integer(1),
        "search_mutants": integer(0),
        "search_crossovers": integer(0),
        "search_mutation_prob": number(0, 1, low_open=True),
        "search_generations": integer(1),
        "search_warm_generations": optional(integer(0)),
        "search_max_resample": integer(1),
        "search_exhaustive_limit": integer(1, MAX_EXHAUSTIVE),
        "search_predictor": Rule(lambda v: isinstance(v, bool), "true or false",
                                 (1, "yes", None)),
        "search_predictor_samples": integer(10),
        "search_predictor_min_rank_corr": number(-1, 1),
        "search_seed": optional(integer(0, 2**32 - 1)),
    },
}


# ----------------------------------------------------------------------------- key checks


def _values(config):
    """The plain dict behind a RecBole Config (or a mapping)."""
    return dict(config.final_config_dict if hasattr(config, "final_config_dict") else config)


def _model(config, model):
    """(name, class) of ``model`` (a name, a class, or None for ``config['model']``)."""
    from recbole_fofa.utils import get_model

    model = model if model is not None else config.get("model")
    if isinstance(model, str):
        return model, get_model(model)
    if model is None:
        raise ValueError("config key `model` is missing: name a model (e.g. --model=SASRec)")
    return model.__name__, model


def rules_for(model, values=None):
    """{key: Rule} checked for ``model`` (a name or class): the common table, plus the plugin
    model's own table, or the backbone keys the RecBole model reads."""
    name, model_class = _model({}, model)
    rules = dict(COMMON_CHECKS)
    model_type = getattr(model_class, "type", None)
    if values is not None and "MODEL_TYPE" in values:
        model_type = values["MODEL_TYPE"]
    if model_type == ModelType.SEQUENTIAL:
        rules["MAX_ITEM_LIST_LENGTH"] = SEQUENCE_LENGTH
    if name in MODEL_CHECKS:
        rules.update(MODEL_CHECKS[name])
        return rules
    read = recbole_model_keys(name) | plugin_model_keys(name)
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
    values = _values(config)
    name, model_class = _model(values, model)
    for key, rule in rules_for(model_class, values).items():
        if key in values:
            rule(key, values[key])
    _cross_checks(name, values)


def _cross_checks(name, values):
    reads = {key for key in rules_for(name, values) if is_int(values.get(key))}
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
        types = {_registry().metric_types[m.lower()] for m in metrics if not is_cost_metric(m)}
        if len(types) > 1:
            raise ValueError(
                f"config key `metrics` = {metrics!r} mixes ranking metrics with value metrics "
                "(AUC-style losses on scores): RecBole evaluates one kind per run; use "
                f"{_names_of(values, ranking=True)} or {_names_of(values, ranking=False)}"
            )
    sizes = {"MAX_ITEM_LIST_LENGTH", "hidden_size", "inner_size", "n_heads", "n_blocks"}
    if name == "ForwardOFA" and values.get("device_budget") is not None and sizes <= reads:
        block = cost.block_macs(values["MAX_ITEM_LIST_LENGTH"], values["hidden_size"],
                                values["inner_size"], values["n_heads"])
        full = block * values["n_blocks"]
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
    population, parents = get("search_population"), get("search_parents")
    if is_int(population) and is_int(parents) and parents > population:
        raise ValueError(
            f"config key `search_parents` = {parents} exceeds `search_population` = "
            f"{population}: the parents are the best of the population; use at most {population}"
        )
    mutants, crossovers = get("search_mutants"), get("search_crossovers")
    if is_int(mutants) and is_int(crossovers) and mutants + crossovers == 0:
        raise ValueError(
            "config keys `search_mutants` = 0 and `search_crossovers` = 0: a generation would "
            "add no child; set either to at least 1"
        )
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


def _check_search_metric(values):
    """``search_metric`` names a valid-split result to maximise: produced by ``metrics`` x
    ``topk`` (as for ``valid_metric``), and bigger-is-better (not a cost, not an error)."""
    metric = values.get("search_metric")
    metrics, topk = values.get("metrics"), values.get("topk")
    if metrics is None or topk is None:
        return
    allowed = [name for name in allowed_valid_metrics(metrics, topk)
               if not is_cost_metric(name) and name.split("@")[0] not in _smaller_metrics()]
    if metric.lower() not in allowed:
        raise ValueError(
            f"config key `search_metric` = {metric!r} is not a bigger-is-better result of "
            f"`metrics` = {metrics!r} x `topk` = {topk!r}; use one of {', '.join(allowed)}"
        )


def _smaller_metrics():
    return set(_registry().smaller_metrics)


def search_cost_bounds(values):
    """(cheapest, full) encoder MACs of the configured search space, from the config alone:
    one block at the space's smallest width and head count, and every block at full width."""
    get = values.get
    seq_len, hidden, inner = get("MAX_ITEM_LIST_LENGTH"), get("hidden_size"), get("inner_size")
    n_heads, n_blocks = get("n_heads"), get("n_blocks")
    head_size = hidden // n_heads
    full = cost.block_macs(seq_len, hidden, inner, n_heads, head_size=head_size) * n_blocks
    space = get("search_space")
    if space == "elastic":
        shapes = [(1, min(get("width_choices")), min(get("head_choices")))]
    elif space == "compound":  # k blocks kept at entry k-1's width and heads
        shapes = list(zip(range(1, n_blocks + 1), get("compound_widths"), get("compound_heads")))
    else:
        shapes = [(1, 1.0, n_heads)]
    cheapest = min(k * cost.block_macs(seq_len, hidden, round(w * inner), h, head_size=head_size)
                   for k, w, h in shapes)
    return int(cheapest), int(full)


def supernet_block_passes(n_blocks, subnets):
    """Worst-case block passes of one supernet step: the full network, the one-block
    sub-network, then ``subnets - 1`` random ones that may keep every block."""
    return n_blocks + (1 + (subnets - 1) * n_blocks if subnets >= 1 else 0)


def _divisors(n):
    return [k for k in range(1, min(n, 64) + 1) if n % k == 0]


def _names_of(values, ranking):
    from recbole.utils import EvaluatorType

    kind = EvaluatorType.RANKING if ranking else EvaluatorType.VALUE
    names = [n for n, t in _registry().metric_types.items() if t == kind]
    return f"only {'ranking' if ranking else 'value'} metrics ({', '.join(sorted(names))})"


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
    values = _values(config)
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


# ----------------------------------------------------------------------------- memory


FLOAT_BYTES = 4
OPTIMIZER_STATES = {"adam": 2, "adamw": 2, "sparse_adam": 2, "rmsprop": 1, "adagrad": 1, "sgd": 0}
# Bytes saved for backward by one RecBole transformer block, per element of B*L*d, B*L*d_ff and
# B*heads*L*L (float32 activations and bool dropout masks; measured with saved_tensors_hooks).
BLOCK_SAVED = {"hidden": 10.5 * FLOAT_BYTES, "inner": 4 * FLOAT_BYTES, "scores": 3.25 * FLOAT_BYTES}
# Extra per-block tensors of ForwardOFA's adapt stage: the soft keep/skip mix, the generated
# LayerNorm affine and the low-rank paths (per element of B*L*d).
ADAPT_EXTRA = 6 * FLOAT_BYTES
EMBED_SAVED = 4 * FLOAT_BYTES  # embedding sum, LayerNorm, dropout (per element of B*L*d)
# Shipped defaults (ForwardOFA.yaml, RecBole's overall/dataset YAML): when the estimate does not
# fit, the key whose reduction to its default shrinks it most is named.
REFERENCE = {"n_blocks": 6, "n_layers": 2, "supernet_subnets": 2, "hidden_size": 64,
             "inner_size": 256, "n_heads": 2, "MAX_ITEM_LIST_LENGTH": 50,
             "train_batch_size": 2048, "eval_batch_size": 4096, "mapper_rank": 8,
             "mapper_hidden": 64, "rt_len": 10}


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak memory of training (and evaluating) a configured model, without the item table."""

    parameters: int  # parameter count, item embedding excluded
    parameter_bytes: int  # weights + gradients + optimizer state
    activation_bytes: int  # saved for backward in the heaviest training step
    eval_bytes: int  # weights + one evaluation batch's largest live tensors
    stage: str  # which training step is the heaviest

    @property
    def total_bytes(self):
        return max(self.parameter_bytes + self.activation_bytes, self.eval_bytes)


def _block_bytes(batch, length, hidden, inner, heads):
    return (BLOCK_SAVED["hidden"] * batch * length * hidden
            + BLOCK_SAVED["inner"] * batch * length * inner
            + BLOCK_SAVED["scores"] * batch * heads * length * length)


def _transformer_params(length, hidden, inner, n_blocks):
    # Python ints: absurd sizes must not overflow into a small number.
    block = 4 * (hidden * hidden + hidden) + 2 * hidden * inner + inner + hidden + 4 * hidden
    return length * hidden + 2 * hidden + n_blocks * block


def estimate_memory(config, model=None):
    """Estimated :class:`MemoryEstimate` of ``model`` under ``config``, or None when the model has
    no transformer backbone to estimate (only ForwardOFA and RecBole models reading hidden_size,
    inner_size, n_layers and n_heads are estimated).

    From the config alone: the item embedding and the ``batch x n_items`` scores are left out,
    since the number of items is unknown before the dataset loads. Parameters count 1 + 1 +
    optimizer states (Adam: 2) copies; activations are what one training step keeps for backward:
    per block ``B*L*(10.5 d + 4 d_ff)`` floats plus ``3.25 B*heads*L^2``. ForwardOFA's supernet
    step keeps the full network, the one-block sub-network and ``supernet_subnets - 1`` random
    ones (at most every block each) until ``backward``; its adapt step runs every block softly.
    """
    values = _values(config)
    name, _ = _model(values, model)
    get = values.get
    batch, eval_batch = get("train_batch_size"), get("eval_batch_size")
    length = get("MAX_ITEM_LIST_LENGTH")
    hidden, inner, heads = get("hidden_size"), get("inner_size"), get("n_heads")
    if name == "ForwardOFA":
        n_blocks = get("n_blocks")
    elif {"hidden_size", "inner_size", "n_layers", "n_heads"} <= recbole_model_keys(name):
        n_blocks = get("n_layers")
    else:
        return None
    if not all(is_int(v) for v in (batch, eval_batch, length, hidden, inner, heads, n_blocks)):
        return None  # malformed values are check_keys' job
    states = OPTIMIZER_STATES.get(str(get("learner")).lower(), 2)
    params = _transformer_params(length, hidden, inner, n_blocks)
    block = _block_bytes(batch, length, hidden, inner, heads)
    embed = EMBED_SAVED * batch * length * hidden
    step = {"training": n_blocks * block + embed}
    if name == "ForwardOFA":
        rank, mapper_hidden, rt_len = get("mapper_rank"), get("mapper_hidden"), get("rt_len")
        subnets = get("supernet_subnets")
        gru = get("extractor") == "gru"
        params += (6 * hidden * hidden + 6 * hidden if gru else 0) + hidden * n_blocks + n_blocks
        out = 2 * rank * rank + 2 * hidden  # generated values per block
        mode = get("mapper_mode")
        head = (hidden + n_blocks) * mapper_hidden + mapper_hidden
        if mode == "parallel":
            params += n_blocks * (head + mapper_hidden * out + out)
        elif mode == "shared":
            params += head + mapper_hidden * n_blocks * out + n_blocks * out
        if mode != "none":
            params += n_blocks * 2 * rank * (hidden + inner)  # static low-rank factors
        controller = (8 if gru else 2) * FLOAT_BYTES * batch * rt_len * hidden
        passes = supernet_block_passes(n_blocks, subnets)
        step = {
            "adapt": n_blocks * (block + ADAPT_EXTRA * batch * length * hidden) + embed
            + controller + 2 * FLOAT_BYTES * batch * n_blocks * out
        }
        if get("supernet_epochs"):
            step["supernet"] = passes * block + (1 + subnets) * embed
    stage = max(step, key=step.get)
    # Evaluation keeps nothing for backward: the input, one block's largest tensors and output.
    eval_live = 3 * FLOAT_BYTES * eval_batch * length * max(hidden, inner) + (
        2 * FLOAT_BYTES * eval_batch * heads * length * length)
    return MemoryEstimate(
        parameters=params,
        parameter_bytes=int((2 + states) * FLOAT_BYTES * params),
        activation_bytes=int(step[stage]),
        eval_bytes=int(FLOAT_BYTES * params + eval_live),
        stage=stage,
    )


def _cgroup_limit():
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            return int(text)
    return None


def available_memory(device):
    """(bytes, description) of the memory a run on ``device`` can use: free memory of a CUDA
    device, else the machine's RAM (capped by a cgroup limit when one is set)."""
    import torch

    device = torch.device(device if device is not None else "cpu")
    if device.type == "cuda" and torch.cuda.is_available():
        try:
            free, _ = torch.cuda.mem_get_info(device)
        except RuntimeError:
            free = torch.cuda.get_device_properties(device).total_memory
        return int(free), f"free memory of {device}"
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    limit = _cgroup_limit()
    if limit is not None and limit < total:
        return limit, "the memory limit of this cgroup"
    return total, "RAM of this machine"


def _size(nbytes):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if nbytes < 1024 or unit == "PiB":
            return f"{nbytes:.1f} {unit}" if unit != "B" else f"{nbytes:.0f} B"
        nbytes /= 1024
    return f"{nbytes:.1f} PiB"  # unreachable


def dominant_key(config, model=None):
    """The size key whose reduction to its shipped default shrinks the estimate most."""
    values = _values(config)
    total = estimate_memory(values, model).total_bytes
    best, best_ratio = None, 1.0
    for key, reference in REFERENCE.items():
        value = values.get(key)
        if not is_int(value) or value <= reference:
            continue
        smaller = estimate_memory(dict(values, **{key: reference}), model)
        ratio = total / max(smaller.total_bytes, 1)
        if ratio > best_ratio:
            best, best_ratio = key, ratio
    return best


def check_memory(config, model=None, limit=None):
    """Raise ValueError when the estimated peak memory exceeds what the device offers.

    ``limit`` (bytes) overrides the device's memory (tests, or a caller that knows better).
    """
    values = _values(config)
    estimate = estimate_memory(values, model)
    if estimate is None:
        return None
    where = "the given limit"
    if limit is None:
        limit, where = available_memory(values.get("device"))
    if estimate.total_bytes <= limit:
        return estimate
    name, _ = _model(values, model)
    key = dominant_key(values, model) or "train_batch_size"
    raise ValueError(
        f"config key `{key}` = {values.get(key)!r} makes {name} need an estimated "
        f"{_size(estimate.total_bytes)} ({_size(estimate.parameter_bytes)} for "
        f"{estimate.parameters:,} parameters with gradients and optimizer state, "
        f"{_size(estimate.activation_bytes)} of activations in a {estimate.stage} step; the item "
        f"embedding is not counted) but the limit is {_size(limit)} ({where}); lower `{key}` "
        f"(shipped default {REFERENCE.get(key)})"
    )


# ----------------------------------------------------------------------------- entry point


def check_config(config, model=None):
    """Check a final config (a RecBole ``Config`` or its dict) for ``model`` (a name or class;
    default ``config['model']``): every key it reads, the metrics and the memory estimate."""
    check_keys(config, model)
    check_metrics(config)
    return check_memory(config, model)


__all__ = [
    "BACKBONE_CHECKS", "COMMON_CHECKS", "MODEL_CHECKS", "Budget", "MemoryEstimate", "Rule",
    "available_memory", "check_config", "check_keys", "check_memory", "check_metrics",
    "check_value", "estimate_memory", "parse_budget", "rules_for", "search_cost_bounds",
]
