"""The benchmark's runs: which models, with which settings, over which seeds, stored one file per
run so that an interrupted benchmark resumes where it stopped.

Every run trains on the same dataset config (split, metrics, evaluation) with the same epoch
budget: ForwardOFA's ``supernet_epochs + epochs``, which the baselines train as ``epochs``.
ForwardOFA variants that differ from ForwardOFA only in stage-2 keys (mapper, controller,
sparsity) start stage 2 from the same supernet of their seed, trained once and stored beside the
runs, and report its stage-1 epochs as theirs. Benchmarks started with the same settings in the
same output folder share its runs (:mod:`~recbole_fofa.benchmark.queue`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Sequence

import torch
from tqdm import tqdm

from recbole_fofa import experiment
from recbole_fofa.benchmark import tuning
from recbole_fofa.benchmark.queue import Job, RunQueue
from recbole_fofa.benchmark.report import BenchmarkReport
from recbole_fofa.benchmark.status import checkpoint_path, file_stem
from recbole_fofa.compat import literal_config_value
from recbole_fofa.config import Config
from recbole_fofa.model import Stage
from recbole_fofa.trainer.progress import write_atomically
from recbole_fofa.version import __version__

__all__ = ["Variant", "default_variants", "resolve_variants", "run_benchmark", "RUN_METRICS",
           "SEARCH_BUDGETS"]

#: the metrics every run reports (RecBole's names; MACs/Params/Blocks are the plugin's)
RUN_METRICS = ["NDCG", "Hit", "MRR", "MACs", "Params", "Blocks"]
RUN_TOPK = [5, 10, 20]
#: budgets (fractions of the full encoder) the ForwardOFA run searches when the config sets none
SEARCH_BUDGETS = [0.25, 0.5, 0.75]
#: RecBole's sequential baselines that the default benchmark runs (issue 9's list)
BASELINES = ["GRU4Rec", "BERT4Rec", "Caser", "NextItNet", "LightSANs"]


@dataclass(frozen=True)
class Variant:
    """One row of the benchmark: a label, the model it runs and its config overrides.

    ``kind``: ``model`` (ForwardOFA), ``ablation`` (a ForwardOFA variant) or ``baseline``.
    """

    label: str
    model: str
    overrides: Dict[str, Any] = field(default_factory=dict)
    kind: str = "baseline"

    @property
    def shares_supernet(self) -> bool:
        return self.model == "ForwardOFA" and set(self.overrides) <= experiment.STAGE2_KEYS

    @property
    def routed(self) -> bool:
        """A ForwardOFA with a controller: ``routing=True`` scores its per-user routing."""
        return self.model == "ForwardOFA" and self.overrides.get("controller") != "none"


def _forward_ofa_variants(n_blocks):
    return {
        "ForwardOFA": Variant("ForwardOFA", "ForwardOFA", {}, "model"),
        "ForwardOFA-shared": Variant("ForwardOFA-shared", "ForwardOFA",
                                     {"mapper_mode": "shared"}, "ablation"),
        "ForwardOFA-nomapper": Variant("ForwardOFA-nomapper", "ForwardOFA",
                                       {"mapper_mode": "none"}, "ablation"),
        "ForwardOFA-allblocks": Variant("ForwardOFA-allblocks", "ForwardOFA",
                                        {"controller": "none"}, "ablation"),
        # stage 1 starts from the SASRec-<n_blocks> run of the same seed (its best checkpoint)
        "ForwardOFA-fromSASRec": Variant("ForwardOFA-fromSASRec", "ForwardOFA",
                                         {"backbone_init": f"@SASRec-{n_blocks}"}, "ablation"),
    }


#: the verdict's stage-2 switches (docs/design-notes.md, "The verdict protocol and its
#: switches"): run on request (``--model``), never by default; each shares ForwardOFA's supernet
SWITCHES = {
    "ForwardOFA-distill": {"adapt_distill_weight": 1.0},
    "ForwardOFA-anneal": {"gumbel_noise_end": 0.0, "controller_init_keep": 0.9},
    "ForwardOFA-backbone1": {"backbone_lr_scale": 1.0},
    "ForwardOFA-backbone0": {"backbone_lr_scale": 0.0},
}


def _sasrec_starts(n_blocks):
    """The verdict's switch that starts from a trained SASRec-``n_blocks`` and skips stage 1
    (the issue's "saves the whole stage-1 cost"): stage 2 alone on that SASRec's best checkpoint
    of the same seed. On request only; ``@backbone_init=@LABEL`` names another SASRec run."""
    return {"ForwardOFA-adaptSASRec": Variant(
        "ForwardOFA-adaptSASRec", "ForwardOFA",
        {"backbone_init": f"@SASRec-{n_blocks}", "supernet_epochs": 0}, "ablation")}


def default_variants(n_blocks: int) -> List[Variant]:
    """ForwardOFA, its ablations (``ForwardOFA-fromSASRec`` among them; not the switches),
    SASRec at 2 and at ``n_blocks`` layers, and :data:`BASELINES`."""
    sasrec = [Variant(f"SASRec-{n}", "SASRec", {"n_layers": n}) for n in sorted({2, n_blocks})]
    return [*_forward_ofa_variants(n_blocks).values(), *sasrec,
            *[Variant(name, name) for name in BASELINES]]


def _pins(name):
    """``(label, {key: value})`` of ``<label>@key=value[@key=value...]`` (each value read as a
    command-line flag's is; a reference ``key=@LABEL``, whose label may carry pins of its own,
    comes last); a ValueError names a malformed pin."""
    label, *pins = name.split("@")
    settings = {}
    while pins:
        key, sep, text = pins.pop(0).partition("=")
        if sep and not text and pins:  # key=@LABEL: a reference to a run, to the name's end
            text, pins = "@" + "@".join(pins), []
        if not (sep and key.isidentifier() and text.strip().lstrip("@")) or key in settings:
            raise ValueError(f"benchmark model {name!r}: write a model with fixed settings as "
                             "LABEL@key=value[@key=value...], each key once, e.g. "
                             "SASRec-6@learning_rate=0.002")
        settings[key] = literal_config_value(text.strip())
    if not label:
        raise ValueError(f"benchmark model {name!r}: no model label before '@'")
    return label, settings


def resolve_variants(names: Sequence[str], n_blocks: int) -> List[Variant]:
    """Variants for ``names``: a default label (``ForwardOFA-shared``), a switch of
    :data:`SWITCHES`, ``ForwardOFA-adaptSASRec``, ``<Model>-<N>`` (a RecBole model with
    ``n_layers: N``; ForwardOFA with ``n_blocks: N``), or a model name; any of these followed
    by ``@key=value`` pins (fixed settings, which a tuned benchmark leaves as they are:
    ``SASRec-6@learning_rate=0.002``)."""
    known = {v.label: v for v in default_variants(n_blocks)}
    known.update({label: Variant(label, "ForwardOFA", dict(overrides), "ablation")
                  for label, overrides in SWITCHES.items()})
    known.update(_sasrec_starts(n_blocks))
    variants = []
    for name in names:
        base, pins = _pins(name)
        if pins:
            variant = resolve_variants([base], n_blocks)[0]
            variants.append(Variant(name, variant.model, {**variant.overrides, **pins},
                                    variant.kind))
            continue
        if name in known:
            variants.append(known[name])
            continue
        model, sep, depth = name.rpartition("-")
        if sep and depth.isdigit() and int(depth) >= 1:
            key = "n_blocks" if model == "ForwardOFA" else "n_layers"
            kind = "model" if model == "ForwardOFA" else "baseline"
            variants.append(Variant(name, model, {key: int(depth)}, kind))
        else:
            variants.append(Variant(name, name, {}, "model" if name == "ForwardOFA" else
                                    "baseline"))
    labels = [v.label for v in variants]
    if len(set(labels)) != len(labels):
        raise ValueError(f"benchmark models: {labels} names a model twice")
    return variants


def searched_label(variants) -> str | None:
    """The one model whose runs search a fixed sub-network per device tier: ForwardOFA, else
    the first ForwardOFA variant with a controller (ForwardOFA-adaptSASRec in the main job)."""
    routed = [v.label for v in variants if v.routed]
    return "ForwardOFA" if "ForwardOFA" in routed else next(iter(routed), None)


def references(variant) -> Dict[str, str]:
    """``{key: label}`` of the variant's overrides that name another run (``"@SASRec-6"``: that
    label's best checkpoint of the same seed, and for a tuning run of the same grid point)."""
    return {k: v[1:] for k, v in variant.overrides.items()
            if isinstance(v, str) and v.startswith("@")}


def _in_dependency_order(variants):
    """``variants`` with every referenced label before the variants that name it; a
    ValueError when a referenced label is not a model of this benchmark."""
    labels = [v.label for v in variants]
    for variant in variants:
        missing = sorted(set(references(variant).values()) - set(labels))
        if missing:
            raise ValueError(f"benchmark model {variant.label} starts from the runs of "
                             f"{missing}: add them to --model")
    return sorted(variants, key=lambda v: bool(references(v)))


def _bound(variant, checkpoint_of):
    """``variant`` with each reference replaced by ``checkpoint_of(label)`` (a path)."""
    refs = references(variant)
    if not refs:
        return variant
    overrides = {**variant.overrides, **{k: str(checkpoint_of(label)) for k, label in
                                         refs.items()}}
    return Variant(variant.label, variant.model, overrides, variant.kind)


def check_reference(reference, variants, n_blocks):
    """The label the report compares every model with: ``reference``, which must be one of the
    benchmark's models, or by default SASRec at ForwardOFA's depth when it runs (else None)."""
    labels = [v.label for v in variants]
    if reference is None:
        default = f"SASRec-{n_blocks}"
        return default if default in labels else None
    if reference not in labels:
        raise ValueError(f"benchmark reference {reference!r} is not one of the benchmark's "
                         f"models {labels}: add it to --model or pick one of them")
    return reference


def _run_settings(variant, seed, common, budget, output_dir):
    """The config dict of one run: the common flags, the benchmark's metrics, the variant's
    overrides, the epoch budget and the seed."""
    settings = dict(common)
    settings.update(variant.overrides)
    settings.update(seed=seed, checkpoint_dir=str(Path(output_dir) / "saved"))
    # every run reports the benchmark's metrics, whatever the dataset config asks for
    settings["metrics"] = RUN_METRICS
    settings["topk"] = RUN_TOPK
    settings.setdefault("valid_metric", "NDCG@10")
    if variant.model == "ForwardOFA":
        settings.setdefault("supernet_epochs", budget["supernet_epochs"])
        settings.setdefault("epochs", budget["epochs"])
    else:
        settings["epochs"] = budget["total"]
    return settings


def epoch_budget(dataset, config_file_list, common, search_budgets=None):
    """``({supernet_epochs, epochs, total}, n_blocks, data key)`` of ForwardOFA under these
    settings; ``total`` is what every baseline trains. ``search_budgets`` are checked here
    (feasible for the supernet), before anything trains; the data key is
    :func:`data_files_key`."""
    settings = dict(common)
    if search_budgets:
        settings["search_budgets"] = list(search_budgets)
    with experiment.recbole_argv_cleared():
        config = Config("ForwardOFA", dataset, config_file_list, settings)
    budget = {"supernet_epochs": int(config["supernet_epochs"]), "epochs": int(config["epochs"])}
    budget["total"] = budget["supernet_epochs"] + budget["epochs"]
    return budget, int(config["n_blocks"]), data_files_key(config["data_path"], dataset)


def data_files_key(folder, dataset) -> str:
    """A hash of the dataset's atomic files (``<folder>/<dataset>.*``: names and contents), so
    that stored runs of a changed dataset are not reused."""
    digest = hashlib.sha1()
    for path in sorted(Path(folder).glob(f"{dataset}.*")):
        if path.is_file():
            digest.update(path.name.encode())
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()[:12]


def settings_key(*parts, config_file_list=None) -> str:
    """A short hash of what defines a run (or a shared supernet): ``parts``, the *contents* of
    the config files and the plugin's version, so that an edited file or flag, or other code, is
    not mistaken for a finished run."""
    files = [Path(f).read_text() if Path(f).is_file() else str(f)
             for f in (config_file_list or [])]
    text = json.dumps([parts, files, __version__], default=str, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def _search(trained, budgets):
    """The per-budget searched sub-networks and the controller at the same budgets (test)."""
    result = trained.trainer.search(trained.valid_data, trained.test_data, budgets,
                                    show_progress=False)
    rows = []
    for entry in result.budgets:
        controller = entry.extra.get("controller") or {}
        rows.append({
            "budget": entry.extra.get("budget"), "budget_macs": entry.budget_macs,
            "config": entry.config.key, "macs": entry.macs,
            "test": entry.extra.get("test_result"),
            "controller_test": controller.get("test_result"),
            "controller_skipped": controller.get("skipped"),
        })
    return rows, result.settings.get("search_seconds")


def _run_key(variant, seed, data, config_file_list, common, search_budgets, routing=False,
             tuning_run=False):
    """``data``: ``(dataset, data key)``; a tuning run neither tests nor searches."""
    parts = [list(data), sorted(common.items()), variant.model,
             sorted(variant.overrides.items()), seed]
    parts += ["tuning"] if tuning_run else [search_budgets, routing and variant.routed]
    return settings_key(*parts, config_file_list=config_file_list)


def _routing(trained, macs):
    """What per-user routing is worth on this run: the best fixed sub-network within
    ForwardOFA's own mean test MACs ``macs`` (the search, by valid) and the routing oracle (each
    user's best sub-network on valid), both scored on test with their per-user values."""
    trainer, model = trained.trainer, trained.model
    result = trainer.search(trained.valid_data, None, [f"{macs:.0f} MACs"], show_progress=False)
    entry = result.budgets[0]
    with model.active_subnet(entry.config):
        test, _ = trained.evaluate(trained.test_data)
        per_user = trainer.per_user_results()
    searched = {"config": entry.config.key, "budget_macs": entry.budget_macs, "test": test,
                "per_user": per_user}
    return {"searched_at_own_macs": searched,
            "oracle": trainer.routing_oracle(trained.valid_data, trained.test_data)}


def run_one(variant, seed, dataset, config_file_list, common, budget, output_dir, supernets,
            search_budgets, routing=False, key=None, stem=None, tuning_run=False, share=None):
    """Train, time and test one (variant, seed); returns the run record (a JSON-able dict).

    ``share``: whether the run starts stage 2 from the stored supernet of its seed (and stores
    its own when there is none); default ``variant.shares_supernet``.
    ``key``: the run's settings key; ``stem``: its file name stem. The run keeps its progress
    in ``output_dir/progress/<stem>-<key>.pt`` (an interrupted run resumes from its last
    validated epoch; the file is removed when the run ends) and its best checkpoint in
    ``output_dir/saved/<stem>-<key>.pth``. A ``tuning_run`` is validated only: test is never
    evaluated, nothing is searched. ``search_budgets``: the device tiers this run's search
    picks a fixed sub-network for (``[]``: no search; one model of a benchmark searches)."""
    stem = stem or file_stem(variant.label, seed)
    record = {"label": variant.label, "model": variant.model, "kind": variant.kind,
              "seed": seed, "overrides": variant.overrides, "status": "ok", "error": None,
              "settings_key": key}
    start = time.perf_counter()
    progress_file = Path(output_dir) / "progress" / f"{stem}-{key}.pt"
    try:
        settings = _run_settings(variant, seed, common, budget, output_dir)
        shared = None
        share = variant.shares_supernet if share is None else share
        # a run with progress of its own resumes it (to the uninterrupted numbers) rather than
        # starting stage 2 again from the supernet it stored
        if share and not tuning_run and not progress_file.is_file():
            shared = supernets.load(seed, variant)
        trained = experiment.train(
            variant.model, dataset, config_file_list, settings,
            supernet=None if shared is None else shared["state"],
            supernet_seconds=None if shared is None else shared["seconds"],
            progress_file=progress_file,
            checkpoint_file=checkpoint_path(output_dir, stem, key),
        )
        record["resumed"] = [list(r) for r in trained.trainer.resumes]
        # where it trained: runs of one benchmark may come from several machines and sessions
        record["device"] = str(trained.config["device"])
        record["torch_threads"] = torch.get_num_threads()
        if tuning_run:
            record.update(valid=trained.best_valid_result,
                          training=trained.trainer.training_summary(),
            valid_curve=trained.trainer.valid_curve(),
                          epochs={st: len(v) for st, v in trained.epoch_seconds.items()})
            record["wall_s"] = time.perf_counter() - start
            return record
        if share and shared is None and trained.supernet is not None:
            supernets.store(seed, variant, trained.supernet,
                            trained.epoch_seconds.get(Stage.SUPERNET.value, []))
        trained.evaluate(trained.test_data)  # first call: cost measurement and warm-up
        test, eval_seconds = trained.evaluate(trained.test_data)
        users = len(trained.test_data._dataset)
        seconds = [s for values in trained.epoch_seconds.values() for s in values]
        record.update(
            valid=trained.best_valid_result, test=test, test_users=users,
            eval_s_per_1k_users=eval_seconds / max(users, 1) * 1000,
            epochs={stage: len(v) for stage, v in trained.epoch_seconds.items()},
            epoch_seconds=trained.mean_epoch_seconds(),
            train_s_per_epoch=sum(seconds) / len(seconds) if seconds else math.nan,
            supernet_shared=shared is not None,
            # how each stage ended, and the per-user test values the comparisons pair
            training=trained.trainer.training_summary(),
            valid_curve=trained.trainer.valid_curve(),
            per_user=trained.trainer.per_user_results(),
        )
        if variant.routed and routing:
            try:  # as the search: a failure leaves the trained run's row intact
                record["routing"] = _routing(trained, test["macs"])
            except Exception as err:
                record["routing_error"] = f"{type(err).__name__}: {err}"
        if search_budgets:
            try:  # a failed search leaves the trained run's row intact
                record["search"], record["search_seconds"] = _search(trained, search_budgets)
            except Exception as err:
                record["search_error"] = f"{type(err).__name__}: {err}"
    except Exception as err:  # a failed run is a row with its error, not a lost benchmark
        record.update(status="error", error=f"{type(err).__name__}: {err}",
                      traceback=traceback.format_exc(limit=8))
    record["wall_s"] = time.perf_counter() - start
    return record


class _Supernets:
    """Stage-1 backbones by seed and stage-1 settings (a variant's overrides that are not
    stage-2 keys: a tuned learning rate), on disk so that a resumed benchmark reuses them."""

    def __init__(self, folder, key_of):
        self.folder, self.key_of = Path(folder), key_of

    def _path(self, seed, variant):
        stage1 = sorted((k, v) for k, v in variant.overrides.items()
                        if k not in experiment.STAGE2_KEYS)
        return self.folder / f"supernet-{self.key_of(seed, stage1)}.pt"

    def load(self, seed, variant):
        path = self._path(seed, variant)
        if not path.is_file():
            return None
        try:
            return torch.load(path, weights_only=True)
        except Exception as err:  # a truncated file: set aside, stage 1 trains again
            _set_aside(path, err)
            return None

    def store(self, seed, variant, state, seconds):
        write_atomically(self._path(seed, variant), lambda f: torch.save(
            {"state": state, "seconds": list(seconds)}, f))


def _write_json(path, record):
    write_atomically(path, lambda f: Path(f).write_text(
        json.dumps(record, indent=1, default=_json_default)))


def _set_aside(path, err):
    """Rename an unreadable stored file to ``<name>.unreadable`` (kept for inspection) and say
    so; the run it belonged to runs again."""
    aside = Path(path).with_name(Path(path).name + ".unreadable")
    os.replace(path, aside)
    tqdm.write(f"warning: {path}: unreadable ({type(err).__name__}: {err}); moved to "
               f"{aside.name}, its run runs again", file=sys.stderr)


def _read_record(path):
    """The stored run at ``path``, or None (absent, or unreadable: set aside)."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        _set_aside(path, err)
        return None


def writable_runs_dir(output_dir) -> Path:
    """``output_dir/runs``, created and checked writable before any run starts. The probe file
    has a name of its own (``tempfile``): benchmarks started at once on one folder, which share
    its runs, must not delete each other's probe."""
    runs_dir = Path(output_dir) / "runs"
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=runs_dir, prefix=".writable-"):
            pass
    except OSError as err:
        raise ValueError(f"--output {output_dir}: cannot write runs there ({err})") from None
    return runs_dir


def run_benchmark(
    dataset: str,
    config_file_list: List[str] | None = None,
    config_dict: Dict[str, Any] | None = None,
    models: Sequence[str] | None = None,
    seeds: Sequence[int] = (2020, 2021, 2022),
    output_dir="fofa-benchmark",
    search_budgets: Sequence[Any] | None = None,
    progress: bool = True,
    reference: str | None = None,
    routing: bool = False,
    tune: Dict[str, List[Any]] | None = None,
    tuning_seeds: Sequence[int] = (),
):
    """Run every model over every seed (finished runs in ``output_dir/runs`` are skipped; an
    interrupted run resumes from its last validated epoch; other processes running the same
    benchmark in ``output_dir`` share the runs) and write the report; returns the
    :class:`~recbole_fofa.benchmark.report.BenchmarkReport`.

    ``models``: labels for :func:`resolve_variants` (default: :func:`default_variants`).
    ``search_budgets``: the device tiers :func:`searched_label`'s runs search (default: the
    config's ``search_budgets``, else :data:`SEARCH_BUDGETS`; ``[]`` searches nothing).
    ``reference``: the label every model is compared with (:func:`check_reference`).
    ``routing``: every ForwardOFA run with a controller also scores the
    best fixed sub-network at its own MACs and the per-user routing oracle, which the report
    compares as ``ForwardOFA search@own`` and ``ForwardOFA oracle``. ``tune``: a grid
    (:mod:`~recbole_fofa.benchmark.tuning`) each model is tuned on, by its mean valid score over
    ``tuning_seeds`` (never test seeds), before its test runs use the chosen point.
    """
    seeds = _check_seeds(seeds, "seeds")
    grid = tuning.check_grid(tune) if tune else None
    tuning_seeds = _check_seeds(tuning_seeds, "tuning seeds") if grid else []
    overlap = sorted(set(tuning_seeds) & set(seeds))
    if overlap:
        raise ValueError(f"tuning seeds {tuning_seeds} overlap the test seeds (both have "
                         f"{overlap}; {len(seeds)} test seeds, {min(seeds)} to {max(seeds)}): "
                         "tuning must never see a test seed")
    common = dict(config_dict or {})
    # the search runs on one model's runs, from here: not a key of every model's config
    configured_budgets = common.pop("search_budgets", None)
    output_dir = Path(output_dir)
    runs_dir = writable_runs_dir(output_dir)
    with experiment.quiet_console():
        if search_budgets is None:
            search_budgets = configured_budgets or SEARCH_BUDGETS
        budget, n_blocks, data_key = epoch_budget(dataset, config_file_list, common,
                                                  search_budgets)
        data = (dataset, data_key)
        variants = _in_dependency_order(default_variants(n_blocks) if not models
                                        else resolve_variants(list(models), n_blocks))
        reference = check_reference(reference, variants, n_blocks)
        by_label = {v.label: v for v in variants}
        supernets = _Supernets(output_dir / "supernets", lambda seed, stage1: settings_key(
            list(data), sorted(common.items()), seed, *([stage1] if stage1 else []),
            config_file_list=config_file_list))
        context = dict(dataset=dataset, config_file_list=config_file_list, common=common,
                       budget=budget, output_dir=output_dir, supernets=supernets)
        bar = tqdm(total=0, desc="benchmark", unit="run", disable=not progress, ncols=100)
        queue = RunQueue(output_dir, bar)
        # who shares a supernet is decided on the variants' own overrides, before tuning adds
        # a point. The sharer (plain ForwardOFA when it runs) trains stage 1; with a grid its
        # fellows are not tuned but take its choice, since their stage 1 is its own
        sharing = sorted((v.label for v in variants if v.shares_supernet),
                         key=lambda label: bool(by_label[label].overrides))
        sharer = sharing[0] if sharing else None
        inheriting = set(sharing[1:]) if grid else set()
        # a model whose own settings fix its grid point (``@key=value``) is not tuned
        pinned = {v.label: point for v in variants if grid and v.label not in inheriting
                  for point in [tuning.pinned_point(grid, v.model, v.overrides)] if point}
        tuned = (_Tuning([v for v in variants if v.label not in inheriting | pinned.keys()],
                         grid, tuning_seeds, data, context) if grid else None)
        if tuned:
            queue.add(tuned.jobs)
        keys, chosen, pending, final = {}, {}, list(variants), {}

        def starts_from(variant):  # the labels whose run of the same seed this one needs first
            shared = [sharer] if variant.label in sharing[1:] else []
            return [*references(variant).values(), *shared]

        test_options = dict(search_budgets=list(search_budgets), routing=routing)
        searched = searched_label(variants)
        while pending or not queue.done:
            ready = []  # the models whose test runs can be queued now: tuned, references queued
            for variant in list(pending):
                if set(starts_from(variant)) & {v.label for v in pending}:
                    continue
                if variant.label in inheriting:  # its sharer is chosen: it is not pending
                    chosen[variant.label] = {**chosen[sharer], "rows": [], "from": sharer}
                    overrides = {**chosen[sharer]["point"], **variant.overrides}
                elif variant.label in pinned:
                    chosen[variant.label] = {"point": pinned[variant.label], "rows": [],
                                             "metric": tuned.metric,
                                             "pinned": True}
                    overrides = variant.overrides
                elif tuned:
                    if not tuned.finished(variant.label, queue.records):
                        continue
                    chosen[variant.label] = tuned.choose(variant.label, queue.records)
                    overrides = {**variant.overrides, **chosen[variant.label]["point"]}
                else:
                    overrides = variant.overrides
                variant = final[variant.label] = Variant(variant.label, variant.model, overrides,
                                                         variant.kind)
                pending = [v for v in pending if v.label != variant.label]
                ready.append(variant)
            jobs = []  # a tuned model's test runs come right behind its tuning runs
            for variant in ready:
                for seed in seeds:
                    bound = _bound(variant, lambda label, seed=seed: checkpoint_path(
                        output_dir, file_stem(label, seed), keys[label, seed]))
                    keys[variant.label, seed] = _run_key(bound, seed, data, config_file_list,
                                                         common, list(search_budgets), routing)
                    after = [file_stem(label, seed) for label in starts_from(variant)]
                    jobs.append((seeds.index(seed), _job(
                        runs_dir / f"{file_stem(variant.label, seed)}.json",
                        keys[variant.label, seed], bound, seed, context, after,
                        dict(test_options, share=variant.label in sharing,
                             search_budgets=test_options["search_budgets"]
                             if variant.label == searched else []))))
                if tuned and variant.label in tuned.names:
                    queue.add([job for _, job in jobs], behind=tuned.names[variant.label][-1][0])
                    jobs = []
            queue.add([job for _, job in sorted(jobs, key=lambda pair: pair[0])])
            if not ready:
                if queue.done:  # cannot happen: every model is tuned once its runs are stored
                    raise RuntimeError(f"benchmark: {[v.label for v in pending]} never ready")
                queue.step()
        variants = [final[v.label] for v in variants]
        if tuned:
            tuned.write(chosen)
        bar.close()
    records = [_stored_record(runs_dir / f"{file_stem(v.label, s)}.json", keys[v.label, s])
               for s in seeds for v in variants]
    settings = {"dataset": dataset, "config_files": config_file_list or [],
                "overrides": common, "seeds": seeds, "epoch_budget": budget,
                "models": [asdict(v) for v in variants], "data_key": data_key,
                "search_budgets": list(search_budgets), "reference": reference}
    if grid:
        settings.update(tune=grid, tuning_seeds=tuning_seeds, tuning=chosen)
    return BenchmarkReport(records, settings).write(output_dir)


def _check_seeds(seeds, what):
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"benchmark {what}: {seeds}; give one or more distinct integers")
    return seeds


def _finished(path, key):
    """The run stored at ``path`` if it finished with settings ``key``, else None."""
    stored = _read_record(path)
    if stored and stored.get("status") == "ok" and stored.get("settings_key") == key:
        return stored
    return None


def _job(path, key, variant, seed, context, after=(), options=None):
    """The queue's job of run (variant, seed), stored at ``path``: it runs unless ``path``
    holds its finished run with settings ``key``; the record is stored atomically and the run's
    progress file dropped once it is. ``after``: the file stems of the runs it starts from."""
    prefix = "tuning__" if path.parent.parent.name == "tuning" else ""

    def run():
        record = run_one(variant, seed, key=key, stem=path.stem, **context, **(options or {}))
        _write_json(path, record)
        if record["status"] == "ok":
            (Path(context["output_dir"]) / "progress" / f"{path.stem}-{key}.pt").unlink(
                missing_ok=True)
        return record

    return Job(prefix + path.stem, lambda: _finished(path, key), run,
               tuple(prefix + stem for stem in after))


def _stored_record(path, key):
    """The finished run at ``path``; a ValueError names a file written under other settings
    (another benchmark in the same --output) instead of mixing it into the table."""
    record = _read_record(path)
    if record is None:
        raise ValueError(f"{path}: the run's file is missing or unreadable; rerun the benchmark")
    if record.get("settings_key") != key:
        raise ValueError(f"{path}: written by a benchmark with other settings (key "
                         f"{record.get('settings_key')}, expected {key}); use another --output")
    return record


class _Tuning:
    """The blind tuning of a benchmark: the queue's tuning runs (each model at each grid point on
    each tuning seed, validated only) and each model's choice, the point with the best mean valid
    score, written to ``<output>/tuning/tuning.json``."""

    def __init__(self, variants, grid, tuning_seeds, data, context):
        self.grid, self.seeds = grid, list(tuning_seeds)
        self.output = Path(context["output_dir"]) / "tuning"
        self.metric = str(context["common"].get("valid_metric") or "NDCG@10").lower()
        self.points = {v.label: tuning.points_for(grid, v.model) for v in variants}
        self.jobs, self.names, keys = [], {}, {}

        def checkpoint(label, point, seed):  # a referenced label's run at its own point
            own = self.own(label, point)
            return checkpoint_path(context["output_dir"], self.stem(label, own, seed),
                                    keys[label, tuning.point_slug(own), seed])

        for variant in variants:
            for point in self.points[variant.label]:
                for seed in self.seeds:
                    run = _bound(Variant(variant.label, variant.model,
                                         {**variant.overrides, **point}, variant.kind),
                                 lambda label, point=point, seed=seed: checkpoint(label, point,
                                                                                  seed))
                    key = _run_key(run, seed, data, context["config_file_list"],
                                   context["common"], None, tuning_run=True)
                    keys[variant.label, tuning.point_slug(point), seed] = key
                    after = [self.stem(label, self.own(label, point), seed)
                             for label in references(variant).values()]
                    path = self.output / "runs" / f"{self.stem(variant.label, point, seed)}.json"
                    job = _job(path, key, run, seed, context, after,
                               dict(search_budgets=[], tuning_run=True))
                    self.names.setdefault(variant.label, []).append((job.name, point))
                    self.jobs.append(job)

    @staticmethod
    def stem(label, point, seed):
        return f"{label}__{tuning.point_slug(point)}__seed{seed}"

    def own(self, label, point):
        """The part of ``point`` that applies to ``label`` (a referenced model's own point)."""
        return {k: v for k, v in point.items() if k in self.points[label][0]}

    def finished(self, label, records) -> bool:
        return all(name in records for name, _ in self.names[label])

    def choose(self, label, records):
        rows = [{**records[name], "point": point} for name, point in self.names[label]]
        point, table = tuning.choose(rows, self.points[label], self.metric)
        return {"point": point, "metric": self.metric, "rows": table}

    def write(self, chosen):
        """``tuning.json``, keeping the choices of models that another benchmark in the same
        output tuned on the same grid and seeds."""
        path = self.output / "tuning.json"
        stored = _read_record(path) or {}
        kept = stored.get("chosen", {}) if (stored.get("grid"), stored.get("tuning_seeds")) == (
            self.grid, self.seeds) else {}
        _write_json(path, {"grid": self.grid, "tuning_seeds": self.seeds,
                           "chosen": {**kept, **chosen}})


def _json_default(value):
    if hasattr(value, "item"):
        return value.item()
    return str(value)
