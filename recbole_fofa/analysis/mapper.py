"""What the structural mapper adds at equal structure.

ForwardOFA's quality mixes two things: which blocks each user gets (the structure controller) and
the per-user parameters the mapper generates for them. To separate them, models are compared on
the same sub-networks: every user through one fixed structure (:meth:`ForwardOFA.active_subnet`,
which keeps each user's generated parameters), and each model at its own per-user structures.
:func:`generated_off` removes the generated parameters from a model (plain supernet blocks at the
same structures), so one trained model is also compared with and without them.

Per seed, :func:`run_mapper` trains ForwardOFA with a mapper and, from the same supernet, stage 2
again without one (``mapper_mode: none``, the benchmark's ``ForwardOFA-nomapper``), then reports
RecBole's test NDCG@10 and Hit@10 of both at the full network, at the mapper model's most common
test structures, and at their own structures.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from typing import Dict, List

import numpy as np
from recbole.data.dataloader import AbstractDataLoader

from recbole_fofa import experiment
from recbole_fofa.analysis import AnalysisResult
from recbole_fofa.analysis._common import (
    MODEL,
    bits,
    evaluation_trainer,
    fmt,
    mean_std,
    progress_bar,
    recbole_evaluate,
    require_metrics,
    require_stage2,
    resolve_config,
    resolve_seeds,
    run_config,
    user_structures,
)
from recbole_fofa.analysis.blocks import DOMINANT_SHARE
from recbole_fofa.model import Stage
from recbole_fofa.subnet import SubnetConfig

__all__ = ["generated_off", "at_equal_structure", "run_mapper", "MAPPER_MODES", "MAX_COMMON"]

NAME = "mapper"
#: the mapper modes :func:`run_mapper` compares with ``mapper_mode: none``
MAPPER_MODES = ("parallel", "shared")
#: at most this many common structures are evaluated (those covering DOMINANT_SHARE of users)
MAX_COMMON = 3
METRICS = ("ndcg@10", "hit@10")
OWN = "own (per user)"


# ----------------------------------------------------------------------------- generated params
def _no_generated(module, args, output):
    """Forward hook: the mapper's list of per-block parameters, every entry None."""
    return [None] * len(output)


@contextlib.contextmanager
def generated_off(model):
    """Evaluate ``model`` without generated parameters inside the ``with`` block.

    The structures are unchanged (per user from the controller, or ``active_subnet``'s); every
    call of the mapper returns no parameters, so each kept block is the plain supernet block, as
    with ``mapper_mode: none``. A forward hook on the mapper does it, removed on exit, also on an
    error; nesting works.
    """
    mapper = getattr(getattr(model, "module", model), "mapper", None)
    if mapper is None:
        raise ValueError(f"generated_off(model): {type(model).__name__} has no structural mapper "
                         "(`mapper`); expected a ForwardOFA model")
    handle = mapper.register_forward_hook(_no_generated)
    try:
        yield model
    finally:
        handle.remove()


def generates(model) -> bool:
    """Whether ``model`` evaluates with generated parameters (a mapper, in the adapt stage)."""
    return model.stage is Stage.ADAPT and model.mapper.mode != "none"


# ----------------------------------------------------------------------------- equal structure
def _check_models(models) -> Dict[str, object]:
    if not isinstance(models, dict) or not models:
        raise ValueError(f"models={models!r}: expected a non-empty dict {{label: ForwardOFA}}")
    for label, model in models.items():
        if not all(hasattr(model, name) for name in ("active_subnet", "mapper", "shape")):
            raise ValueError(f"models[{label!r}] is a {type(model).__name__}: expected a "
                             "ForwardOFA model")
    first_label, first = next(iter(models.items()))
    for label, model in models.items():
        theirs, ours = _blocks_shape(model), _blocks_shape(first)
        if theirs != ours:
            raise ValueError(f"models[{label!r}] has other blocks than models[{first_label!r}] "
                             f"({theirs} vs {ours}): equal structures need equal supernets")
    return dict(models)


def _blocks_shape(model):
    """What a sub-network depends on (the mapper and controller settings may differ)."""
    shape = model.shape
    return {key: getattr(shape, key) for key in ("n_blocks", "hidden_size", "inner_size",
                                                 "n_heads", "seq_len")}


def _check_structures(structures, shape) -> List[SubnetConfig]:
    if isinstance(structures, (str, bytes, SubnetConfig)) or not hasattr(structures, "__iter__"):
        raise ValueError(f"structures={structures!r}: expected a list of SubnetConfig")
    structures = list(structures)
    if not structures:
        raise ValueError("structures=[]: expected at least one SubnetConfig")
    for cfg in structures:
        if not isinstance(cfg, SubnetConfig):
            raise ValueError(f"structures: {cfg!r} is a {type(cfg).__name__}, expected a "
                             "SubnetConfig (e.g. model.shape.from_mask([1, 1, 0]))")
        try:
            shape.validate(cfg)
        except ValueError as error:
            raise ValueError(f"structures: {cfg.key} is not a sub-network of the models' "
                             f"supernet ({error})") from None
    if len({cfg.key for cfg in structures}) != len(structures):
        raise ValueError(f"structures={[cfg.key for cfg in structures]}: values must be distinct")
    return structures


def _label(cfg, shape) -> str:
    """A full-width structure as its bit string (block 1 first), any other by its key."""
    return bits(cfg.mask) if cfg == shape.from_mask(cfg.mask) else cfg.key


def at_equal_structure(models, data, structures) -> List[dict]:
    """RecBole's test metrics of every model at the same structures.

    ``models``: ``{label: ForwardOFA}`` with equal supernet shapes; ``data``: a RecBole evaluation
    dataloader (its config's ``metrics`` must include NDCG and Hit, ``topk`` 10);
    ``structures``: SubnetConfigs. For each structure, every model with every user through it
    (:meth:`ForwardOFA.active_subnet`: a model with a mapper still generates each user's
    parameters) and the first model again without generated parameters
    (:func:`generated_off`); then each model at its own per-user structures, and the first one
    without generated parameters there too. Evaluation is RecBole's (a plugin trainer on
    ``data.config``), so the numbers are those a training reports.

    Rows: ``structure`` (bit string, or key of an elastic config; ``own (per user)``), ``kind``
    (``fixed`` / ``per-user``), ``share`` (fraction of the first model's users whose own structure
    it is), ``blocks`` (kept blocks, a mean for own structures), ``model`` (label), ``generated``
    (``on``, ``off`` or ``none`` for a model without a mapper), ``ndcg@10``, ``hit@10``.
    """
    models = _check_models(models)
    first_label, first = next(iter(models.items()))
    structures = _check_structures(structures, first.shape)
    if not isinstance(data, AbstractDataLoader):
        raise ValueError(f"data={type(data).__name__}: expected a RecBole evaluation dataloader "
                         "(e.g. the test data of data_preparation)")
    require_metrics(data.config, ["NDCG", "Hit"])
    was_training = {label: model.training for label, model in models.items()}
    try:
        own = {label: user_structures(model, data) for label, model in models.items()}
        users = len(own[first_label])
        shares = Counter(bits(mask) for mask in own[first_label])
        trainers = {label: evaluation_trainer(model, data) for label, model in models.items()}

        def measure(label, structure, kind, share, blocks, cfg=None, off=False):
            model = models[label]
            with contextlib.ExitStack() as stack:
                if off:
                    stack.enter_context(generated_off(model))
                if cfg is not None:
                    stack.enter_context(model.active_subnet(cfg))
                result = recbole_evaluate(trainers[label], data)
            generated = "off" if off else ("on" if generates(model) else "none")
            row = {"structure": structure, "kind": kind, "share": share, "blocks": blocks,
                   "model": label, "generated": generated}
            row.update({metric: result[metric] for metric in METRICS})
            return row

        rows = []
        for cfg in structures:
            full_width = cfg == first.shape.from_mask(cfg.mask)
            share = shares[bits(cfg.mask)] / users if full_width else 0.0
            args = (_label(cfg, first.shape), "fixed", share, float(cfg.n_kept))
            rows += [measure(label, *args, cfg=cfg) for label in models]
            if generates(first):
                rows.append(measure(first_label, *args, cfg=cfg, off=True))
        for label in models:
            rows.append(measure(label, OWN, "per-user", None, float(own[label].sum(1).mean())))
        if generates(first):
            rows.append(measure(first_label, OWN, "per-user", None,
                                float(own[first_label].sum(1).mean()), off=True))
    finally:
        for label, model in models.items():
            model.train(was_training[label])
    return rows


# ----------------------------------------------------------------------------- the analysis
def common_structures(masks, share=DOMINANT_SHARE, at_most=MAX_COMMON) -> List[str]:
    """The most common structures (bit strings) of ``masks`` (bool [users, blocks]), most common
    first, until they cover ``share`` of the users or ``at_most`` are listed."""
    counts = Counter(bits(mask) for mask in masks)
    chosen, covered = [], 0
    for key, count in counts.most_common():
        if len(chosen) == at_most or covered >= share * len(masks):
            break
        chosen.append(key)
        covered += count
    return chosen


def run_mapper(dataset, config_file_list=None, config_dict=None, output_dir="fofa-output",
               seeds=None, progress=True, mapper_mode="parallel") -> AnalysisResult:
    """ForwardOFA with a ``mapper_mode`` mapper against stage 2 retrained without one (from the
    same supernet), at equal structures, on the test split; means (std) over ``seeds``.

    Structures: the full network; the mapper model's most common test structures, pooled over
    the seeds, until they cover :data:`~recbole_fofa.analysis.blocks.DOMINANT_SHARE` of the users
    (at most :data:`MAX_COMMON`); and each model's own per-user structures. The mapper model is
    also evaluated without its generated parameters (:func:`generated_off`) at each of them.

    Writes ``<output_dir>/mapper.md`` and ``mapper.csv`` (one row per structure, model and
    generated state; see :func:`at_equal_structure`) and returns the :class:`AnalysisResult`.
    """
    if mapper_mode not in MAPPER_MODES:
        raise ValueError(f"mapper_mode={mapper_mode!r}: use one of {MAPPER_MODES} (it is "
                         "compared with mapper_mode 'none')")
    config = resolve_config(dataset, config_file_list, config_dict)
    require_metrics(config, ["NDCG", "Hit"])
    require_stage2(config)
    seeds = resolve_seeds(config, seeds)
    mapped, plain = f"mapper={mapper_mode}", "mapper=none"

    runs = []
    with progress_bar(2 * len(seeds), "mapper at equal structure", progress) as bar:
        for seed in seeds:
            trained = experiment.train(MODEL, dataset, config_file_list,
                                       run_config(config_dict, seed, mapper_mode=mapper_mode))
            bar.update(1)
            without = experiment.train(MODEL, dataset, config_file_list,
                                       run_config(config_dict, seed, mapper_mode="none"),
                                       supernet=trained.supernet,
                                       supernet_seconds=trained.epoch_seconds.get(Stage.SUPERNET.value))
            bar.update(1)
            runs.append((trained.model, without.model, trained.test_data,
                         trained.supernet is not None))

    shape = runs[0][0].shape
    pooled = np.concatenate([user_structures(model, data) for model, _, data, _ in runs])
    full = bits(shape.full().mask)
    common = common_structures(pooled)
    structures = [shape.full()] + [shape.from_mask([b == "1" for b in key])
                                   for key in common if key != full]
    per_seed = [at_equal_structure({mapped: model, plain: without}, data, structures)
                for model, without, data, _ in runs]
    rows = _mean_rows(per_seed, full)
    columns = ["structure", "kind", "share", "blocks", "model", "generated", "ndcg@10",
               "ndcg@10_std", "hit@10", "hit@10_std"]
    shared = [flag for *_, flag in runs]
    result = AnalysisResult(
        NAME, rows, columns, _findings(rows, mapped, plain, full, all(shared)),
        settings={"dataset": dataset, "model": MODEL, "seeds": seeds, "n_blocks": shape.n_blocks,
                  "models": f"{mapped} (ForwardOFA) and {plain} (stage 2 retrained without a "
                  "mapper from the same seed's supernet)" if all(shared) else
                  f"{mapped} and {plain}; no supernet stage (supernet_epochs: 0), so each "
                  "trained stage 2 from the same seeded initialisation",
                  "structures": f"the full network {full}; the {mapped} model's most common test "
                  f"structures (pooled over seeds) until {DOMINANT_SHARE:.0%} of users or "
                  f"{MAX_COMMON}: {common}; each model's own per-user structures",
                  "generated": "on: the mapper's per-user parameters; off: the same model with "
                  "them removed (plain supernet blocks); none: no mapper",
                  "split": "test", "statistics": "RecBole's test metrics per seed, then mean "
                  "(std) over seeds; share: fraction of the mapper model's users whose own "
                  "structure it is"},
    )
    return result.save(output_dir)


def _mean_rows(per_seed, full) -> List[dict]:
    """Rows averaged over seeds (same order in every seed: same structures and models)."""
    rows = []
    for group in zip(*per_seed):
        row = {key: group[0][key] for key in ("structure", "kind", "model", "generated")}
        if row["kind"] == "fixed":
            row["kind"] = "full network" if row["structure"] == full else "common"
        share = [r["share"] for r in group if r["share"] is not None]
        row["share"] = float(np.mean(share)) if share else None
        row["blocks"] = float(np.mean([r["blocks"] for r in group]))
        for metric in METRICS:
            row[metric], row[f"{metric}_std"] = mean_std(r[metric] for r in group)
        rows.append(row)
    return rows


def _findings(rows, mapped, plain, full, shared) -> List[str]:
    findings = []
    gains_off, gains_plain = [], []
    for structure in dict.fromkeys(row["structure"] for row in rows):
        at = {(row["model"], row["generated"]): row for row in rows
              if row["structure"] == structure}
        on, off, none = at[(mapped, "on")], at[(mapped, "off")], at[(plain, "none")]
        where = ("their own per-user structures" if structure == OWN else
                 f"the full network {structure}" if structure == full else
                 f"structure {structure} (own structure of {on['share']:.1%} of {mapped} users)")
        blocks = (f" ({on['blocks']:.2f} vs {none['blocks']:.2f} blocks on average)"
                  if structure == OWN else "")
        findings.append(
            f"At {where}{blocks}, test NDCG@10: {mapped} {fmt(on['ndcg@10'])}, the same model "
            f"without generated parameters {fmt(off['ndcg@10'])} "
            f"({on['ndcg@10'] - off['ndcg@10']:+.4f}), {plain} {fmt(none['ndcg@10'])} "
            f"({on['ndcg@10'] - none['ndcg@10']:+.4f}).")
        if structure != OWN:
            gains_off.append(on["ndcg@10"] - off["ndcg@10"])
            gains_plain.append(on["ndcg@10"] - none["ndcg@10"])
    findings.append(
        f"Over the {len(gains_off)} fixed structures, the generated parameters change NDCG@10 by "
        f"{np.mean(gains_off):+.4f} on average against the same model without them, and the "
        f"{mapped} model differs from {plain} by {np.mean(gains_plain):+.4f}"
        + (" (same supernet: the difference is stage 2 with versus without a mapper)."
           if shared else "."))
    return findings
