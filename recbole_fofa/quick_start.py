"""The plugin's quick start: RecBole's ``run_recbole`` contract without importing ray.

``recbole.quick_start`` imports ray 2.6.3 at module level, which breaks on numpy 2, so library code
never imports it (see :mod:`recbole_fofa.compat`). These functions follow the same steps and return
the same dicts, with model and trainer names resolved by :mod:`recbole_fofa.utils`.
"""

import contextlib
import logging
import os
import sys
from collections.abc import MutableMapping
from logging import getLogger

import torch
import torch.multiprocessing as mp
from recbole.data import create_dataset, data_preparation
from recbole.utils import get_environment, init_logger, init_seed, set_color

from recbole_fofa import checks, compat, distributed
from recbole_fofa.checks import check_keys, check_metrics
from recbole_fofa.config import Config
from recbole_fofa.data_check import check_split
from recbole_fofa.device.export import export_tiers, tiers_from_search
from recbole_fofa.device.runtime import require
from recbole_fofa.table import format_table
from recbole_fofa.trainer.base import load_checkpoint
from recbole_fofa.utils import get_model, get_trainer


def _fresh_logger(config):
    """RecBole's logger, with handlers of an earlier run in this process removed first (and its
    console quietened inside :func:`quiet_console`)."""
    logger = getLogger()
    for handler in logger.handlers[:]:
        logger.removeHandler(handler)
        handler.close()
    if config["single_spec"] is False:  # ranks would race in RecBole's exists-then-mkdir
        os.makedirs(os.path.join("log", str(config["model"])), exist_ok=True)
    init_logger(config)
    if not distributed.is_main_process(config):
        distributed.drop_log_files(logger)  # only rank 0 writes RecBole's log file
    if not config["verbose"]:
        for handler in _console_handlers():
            handler.addFilter(_NoDumps())
    quieten_console()
    return logger


#: ``extra=`` of a log record that only the log file shows, unless ``verbose: true``
DUMP = {"dump": True}
_FILE_ONLY = []  # open file_only blocks


class _NotWarnings(logging.Filter):
    def filter(self, record):
        return record.name != "py.warnings"


class _NoDumps(logging.Filter):
    """The console of a run without ``verbose``: no dumps (:data:`DUMP` records, INFO records
    inside :func:`file_only`) and no library warnings; the log file keeps them all."""

    def filter(self, record):
        if record.name == "py.warnings":
            return False
        if record.levelno >= logging.WARNING:
            return True
        return not (_FILE_ONLY or getattr(record, "dump", False))


def _console_handlers():
    return [h for h in logging.getLogger().handlers if type(h) is logging.StreamHandler]


@contextlib.contextmanager
def file_only():
    """Inside the block, INFO records go to the log file only (unless ``verbose: true``): for
    what RecBole logs itself, such as ``data_preparation``'s summary."""
    _FILE_ONLY.append(True)
    try:
        yield
    finally:
        _FILE_ONLY.pop()


_QUIET = []  # console levels of the open quiet_console blocks
_CAPTURING = []  # open warnings_to_log blocks


@contextlib.contextmanager
def warnings_to_log():
    """Inside the block, Python warnings (pandas, torch deprecations) are log records of the
    ``py.warnings`` logger: in the log file, and on the console only with ``verbose: true``."""
    logging.captureWarnings(True)
    _CAPTURING.append(True)
    try:
        yield
    finally:
        _CAPTURING.pop()
        logging.captureWarnings(bool(_CAPTURING))


@contextlib.contextmanager
def quiet_console(level=logging.WARNING):
    """Inside the block, runs log to RecBole's log file as configured, but the console shows
    only records at ``level`` and above (no model dump, no per-epoch lines), and Python warnings
    (pandas, torch deprecations) go to the log file only. The benchmark and the analyses run in
    one, so that their console shows progress bars and tables."""
    _QUIET.append(level)
    try:
        with warnings_to_log():
            yield
    finally:
        _QUIET.pop()


def quieten_console():
    """Inside :func:`quiet_console`: raise the level of the root logger's console handlers."""
    if not _QUIET:
        return
    for handler in logging.getLogger().handlers:
        if type(handler) is logging.StreamHandler:
            handler.setLevel(max(handler.level, _QUIET[-1]))
            handler.addFilter(_NotWarnings())


def prepare(model=None, dataset=None, config_file_list=None, config_dict=None):
    """Config, seeded logger, dataset, the three dataloaders and the model, ready to train."""
    config = Config(
        model=model, dataset=dataset, config_file_list=config_file_list, config_dict=config_dict
    )
    init_seed(config["seed"], config["reproducibility"])
    logger = _fresh_logger(config)
    logger.info(sys.argv, extra=DUMP)
    logger.info(config, extra=DUMP)
    if config["single_spec"] is not False and config["dist_backend"] is not None:
        logger.warning(f"`dist_backend` = {config['dist_backend']!r} is not used: this is one "
                       "process without a process group (--nproc=1 without --world_size); add "
                       "--world_size=1 for one DDP process")
    data = create_dataset(config)
    logger.info(data, extra=DUMP)
    check_split(config, data)
    with file_only():
        train_data, valid_data, test_data = data_preparation(config, data)
    # rank r draws from seed + r (global rank: machines do not repeat each other's draws)
    init_seed(config["seed"] + distributed.get_rank(), config["reproducibility"])
    net = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    logger.info(net, extra=DUMP)
    return config, net, (train_data, valid_data, test_data)


def run_recbole_fofa(
    model=None, dataset=None, config_file_list=None, config_dict=None, saved=True, queue=None
):
    """Train, validate, reload the best checkpoint and test one model; like ``run_recbole``.

    Returns ``{'best_valid_score', 'valid_score_bigger', 'best_valid_result', 'test_result'}``.
    The console shows the epochs and, last, where the checkpoint and the log file are; the
    config, dataset and model dumps and library warnings go to the log file only, unless
    ``verbose: true``.
    """
    with warnings_to_log():
        return _run(model, dataset, config_file_list, config_dict, saved, queue)


def _run(model, dataset, config_file_list, config_dict, saved, queue):
    config, net, (train_data, valid_data, test_data) = prepare(
        model, dataset, config_file_list, config_dict
    )
    logger = getLogger()
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, net)
    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, saved=saved, show_progress=config["show_progress"]
    )
    test_result = trainer.evaluate(
        test_data, load_best_model=saved, show_progress=config["show_progress"]
    )
    logger.info(
        "The running environment of this training is as follows:\n"
        + get_environment(config).draw(), extra=DUMP
    )
    logger.info(set_color("best valid ", "yellow") + f": {best_valid_result}", extra=DUMP)
    logger.info(set_color("test result", "yellow") + f": {test_result}", extra=DUMP)
    if config["search_budgets"] is not None:  # the subnet search of the trained supernet
        trainer.search(valid_data, test_data, show_progress=config["show_progress"])
    logger.info(where_written(trainer, saved, config["search_budgets"] is not None))
    result = {
        "best_valid_score": best_valid_score,
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": best_valid_result,
        "test_result": test_result,
    }
    if not config["single_spec"]:
        distributed.destroy()
    if config["local_rank"] == 0 and queue is not None:
        queue.put(result)
    return result


def log_file(logger=None):
    """The path of the log file RecBole's ``init_logger`` opened (None: none, e.g. rank > 0)."""
    for handler in (logger or getLogger()).handlers:
        if getattr(handler, "baseFilename", None):
            return os.path.relpath(handler.baseFilename)
    return None


def where_written(trainer, saved=True, searched=False):
    """Where a run's files went, one per line: the checkpoint, the search result (``searched``),
    the log file."""
    lines = [f"checkpoint: {trainer.saved_model_file}" if saved
             else "checkpoint: none (saved=False)"]
    if searched:
        lines.append(f"search result: {trainer.search_result_file}")
    lines.append(f"log file: {log_file() or 'none'}")
    return set_color("written", "blue") + ":\n  " + "\n  ".join(lines)


def run_recbole_fofas(rank, *args):
    """Entry point of one spawned process (distributed runs): ``run_recbole_fofa`` on ``rank``."""
    kwargs = args[-1]
    if not isinstance(kwargs, MutableMapping):
        raise ValueError(f"the last argument must be a dict of keyword arguments, got {kwargs!r}")
    kwargs["config_dict"] = dict(kwargs.get("config_dict") or {}, local_rank=rank)
    distributed.worker_threads(kwargs["config_dict"].get("nproc", 1))
    run_recbole_fofa(*args[:3], **kwargs)


def run(
    model,
    dataset,
    config_file_list=None,
    config_dict=None,
    saved=True,
    nproc=1,
    world_size=-1,
    ip="localhost",
    port="5678",
    group_offset=0,
):
    """Like ``recbole.quick_start.run``: one process, or ``nproc`` spawned DDP processes on this
    machine (ranks ``group_offset`` ... ``group_offset + nproc - 1`` of ``world_size``, default
    ``nproc``), with the process group at ``ip:port``: NCCL on GPUs, gloo on CPUs (config key
    ``dist_backend``). Returns rank ``group_offset``'s result dict (docs/distributed.md).

    A ``port`` already in use on this machine, when it hosts rank 0, is a
    :class:`~recbole_fofa.distributed.PortInUseError` before anything is spawned.
    """
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"--nproc={nproc!r} is invalid: expected an integer >= 1 (processes on "
                         "this machine)")
    if nproc == 1 and world_size <= 0:
        return run_recbole_fofa(model, dataset, config_file_list, config_dict, saved)
    if world_size != -1 and world_size < nproc + group_offset:
        raise ValueError(f"--world_size={world_size} is smaller than --group_offset="
                         f"{group_offset} + --nproc={nproc}: the world counts every process on "
                         "every machine")
    if group_offset == 0:
        distributed.check_port_free(ip, port)

    queue = mp.get_context("spawn").SimpleQueue()
    config_dict = dict(config_dict or {})
    config_dict.update(
        world_size=nproc if world_size == -1 else world_size,
        ip=ip,
        port=port,
        nproc=nproc,
        offset=group_offset,
    )
    kwargs = {"config_dict": config_dict, "queue": queue, "saved": saved}
    processes = mp.start_processes(run_recbole_fofas, nprocs=nproc, join=False,
                                   args=(model, dataset, config_file_list, kwargs))
    distributed.join_workers(processes, what=f"{nproc} training processes")  # Ctrl-C stops all
    return None if queue.empty() else queue.get()


def objective_function(config_dict=None, config_file_list=None, saved=True):
    """Objective for ``recbole.trainer.HyperTuning`` (no ray): the keys its ``trial`` reads."""
    result = run_recbole_fofa(
        config_dict=config_dict, config_file_list=config_file_list, saved=saved
    )
    logging.getLogger().setLevel(logging.ERROR)
    return {"model": (config_dict or {}).get("model"), **result}


def load_data_and_model(model_file, config_dict=None):
    """Rebuild config, model (best weights), dataset and dataloaders from a plugin checkpoint.

    ``config_dict`` overrides keys of the saved config that do not change the model or the data
    split (:data:`RELOAD_OVERRIDABLE`: the search keys, evaluation batch size, metrics, ...); it is
    checked like any config before the dataset loads. The file is read by
    :func:`~recbole_fofa.compat.load_checkpoint_file`: ``trust_checkpoint: true`` in
    ``config_dict`` unpickles it fully (only for files you trust).
    """
    trust = (config_dict or {}).get("trust_checkpoint", False)
    checks.COMMON_CHECKS["trust_checkpoint"]("trust_checkpoint", trust)
    checkpoint = compat.load_checkpoint_file(model_file, "cpu", trust)  # to the device below
    config = checkpoint["config"]
    config.compatibility_settings()  # an unpickled Config skipped the numpy aliases of __init__
    apply_overrides(config, config_dict)
    init_seed(config["seed"], config["reproducibility"])
    _fresh_logger(config)
    _reload_device(config, model_file)
    data = create_dataset(config)
    check_split(config, data)
    train_data, valid_data, test_data = data_preparation(config, data)
    init_seed(config["seed"], config["reproducibility"])
    net = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    load_checkpoint(net, checkpoint)
    return config, net, data, train_data, valid_data, test_data


def _reload_device(config, model_file):
    """Keep the checkpoint's device where this machine has it; a model trained on a GPU reloads
    on the CPU of a machine without CUDA, with a warning (RecBole's reload would fail)."""
    if torch.device(config["device"]).type == "cuda" and not torch.cuda.is_available():
        getLogger().warning(f"{model_file} was trained on {config['device']}; this machine has "
                            "no CUDA device, so it is reloaded on the CPU")
        config["device"] = torch.device("cpu")
        config["gpu_id"] = ""


#: Keys a reloaded checkpoint's config may change: none of them alters the model's weights or
#: the data split, so the reloaded model is the saved one (the key table's ``reload`` rows).
RELOAD_OVERRIDABLE = checks.RELOAD_OVERRIDABLE


def apply_overrides(config, overrides):
    """Set ``overrides`` (``{key: value}``) on a loaded ``config`` and check the result; keys
    outside :data:`RELOAD_OVERRIDABLE` are refused, naming them, unless they repeat the saved
    value (``dataset``: the checkpoint's own, as ``--search --dataset`` may name it)."""
    overrides = dict(overrides or {})
    saved = config.final_config_dict
    refused = sorted(key for key in set(overrides) - RELOAD_OVERRIDABLE
                     if key not in saved or saved[key] != overrides[key])
    if "dataset" in refused:
        raise ValueError(
            f"--dataset / config key `dataset` = {overrides['dataset']!r} is not the dataset "
            f"the checkpoint was trained on, {saved.get('dataset')!r}: a checkpoint is searched "
            "and reloaded on its own dataset (its items and split); leave --dataset out or "
            "name that one"
        )
    if refused:
        raise ValueError(
            f"config keys {refused} cannot change on a saved checkpoint (they define its model "
            f"or data); allowed: {', '.join(sorted(RELOAD_OVERRIDABLE))}"
        )
    for key, value in overrides.items():
        config[key] = value
    if overrides:
        check_keys(config, config["model"])
        check_metrics(config)
    return config


def search_checkpoint(model_file, budgets=None, config_dict=None, show_progress=None, nproc=1,
                      port=None):
    """Run the subnet search on a saved ForwardOFA checkpoint; returns the ``SearchResult``
    (also written to ``<checkpoint_dir>/<model>-<dataset>-search.json``).

    ``budgets`` defaults to the config's ``search_budgets``; ``config_dict`` overrides search
    keys (see :func:`load_data_and_model`). ``nproc`` > 1 spreads each generation's candidates
    over that many processes on this machine (gloo, also with CUDA: the ranks exchange scores,
    and share the visible GPUs round robin; ``port``: the
    process group's, default a free one): the same result as one process, sooner.
    """
    if nproc > 1:
        result, _ = distributed.spawn(search_worker, nproc, (model_file, budgets, config_dict,
                                                             show_progress), port=port,
                                      backend="gloo")
        return result
    trainer, valid_data, test_data = searching_trainer(model_file, config_dict)
    return trainer.search(valid_data, test_data, budgets, show_progress=show_progress)


def search_worker(model_file, budgets, config_dict, show_progress):
    """One rank of :func:`search_checkpoint`: (result, JSON path); only rank 0 logs and writes."""
    main = distributed.get_rank() == 0
    if not main:
        config_dict = dict(config_dict or {}, state="error", show_progress=False)
        show_progress = False
    with contextlib.nullcontext() if main else distributed.no_tensorboard():
        trainer, valid_data, test_data = searching_trainer(model_file, config_dict)
    if not main:
        distributed.drop_log_files()
    result = trainer.search(valid_data, test_data, budgets, show_progress=show_progress)
    return result, trainer.search_result_file


def searching_trainer(model_file, config_dict=None):
    """(ForwardOFATrainer of the reloaded checkpoint, valid data, test data)."""
    config, net, _, _, valid_data, test_data = load_data_and_model(model_file, config_dict)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, net)
    if not hasattr(trainer, "search"):
        raise ValueError(f"{model_file} holds a {config['model']} model: only ForwardOFA "
                         "checkpoints can be searched")
    return trainer, valid_data, test_data


def export_checkpoint(model_file, budgets=None, output_dir="fofa-export", config_dict=None,
                      fmt="onnx", show_progress=None):
    """Search a saved ForwardOFA's sub-networks for ``budgets`` (default: its
    ``search_budgets``) and export each tier's graphs and ``manifest.json`` to ``output_dir``
    (:func:`recbole_fofa.device.export.export_tiers`); returns the manifest. The runtime
    packages are checked first: without the ``device`` extra this fails before searching."""
    require(*(("executorch",) if fmt == "executorch" else ("onnx", "onnxscript")))
    trainer, valid_data, test_data = searching_trainer(model_file, config_dict)
    result = trainer.search(valid_data, test_data, budgets, show_progress=show_progress)
    model = getattr(trainer.model, "module", trainer.model)
    budgets = trainer.config["search_budgets"] if budgets is None else budgets
    tiers = tiers_from_search(result, budgets, model.shape)
    return export_tiers(model.eval(), tiers, output_dir, fmt, source=str(model_file))


def results_table(result):
    """The valid/test metrics of a ``run_recbole_fofa`` result as an aligned text table."""
    valid = result.get("best_valid_result") or {}
    test = result.get("test_result") or {}
    names = list(dict.fromkeys([*valid, *test]))
    return format_table([[name, _number(valid.get(name)), _number(test.get(name))]
                         for name in names], ["metric", "valid", "test"])


def comparison_table(results):
    """One column per model, one row per metric: ``{model: metric dict}`` as aligned text."""
    names = list(dict.fromkeys(key for metrics in results.values() for key in metrics))
    return format_table([[name, *(_number(m.get(name)) for m in results.values())]
                         for name in names], ["metric", *results])


def _number(value):
    return None if value is None else float(value)
