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
    quieten_console()
    return logger


class _NotWarnings(logging.Filter):
    def filter(self, record):
        return record.name != "py.warnings"


_QUIET = []  # console levels of the open quiet_console blocks


@contextlib.contextmanager
def quiet_console(level=logging.WARNING):
    """Inside the block, runs log to RecBole's log file as configured, but the console shows
    only records at ``level`` and above (no model dump, no per-epoch lines), and Python warnings
    (pandas, torch deprecations) go to the log file only. The benchmark and the analyses run in
    one, so that their console shows progress bars and tables."""
    logging.captureWarnings(True)
    _QUIET.append(level)
    try:
        yield
    finally:
        _QUIET.pop()
        logging.captureWarnings(bool(_QUIET))


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
    logger.info(sys.argv)
    logger.info(config)
    if config["single_spec"] is not False and config["dist_backend"] is not None:
        logger.warning(f"`dist_backend` = {config['dist_backend']!r} is not used: this is one "
                       "process without a process group (--nproc=1 without --world_size); add "
                       "--world_size=1 for one DDP process")
    data = create_dataset(config)
    logger.info(data)
    check_split(config, data)
    train_data, valid_data, test_data = data_preparation(config, data)
    # rank r draws from seed + r (global rank: machines do not repeat each other's draws)
    init_seed(config["seed"] + distributed.get_rank(), config["reproducibility"])
    net = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    logger.info(net)
    return config, net, (train_data, valid_data, test_data)


def run_recbole_fofa(
    model=None, dataset=None, config_file_list=None, config_dict=None, saved=True, queue=None
):
    """Train, validate, reload the best checkpoint and test one model; like ``run_recbole``.

    Returns ``{'best_valid_score', 'valid_score_bigger', 'best_valid_result', 'test_result'}``.
    """
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
        + get_environment(config).draw()
    )
    logger.info(set_color("best valid ", "yellow") + f": {best_valid_result}")
    logger.info(set_color("test result", "yellow") + f": {test_result}")
    if config["search_budgets"] is not None:  # the subnet search of the trained supernet
        trainer.search(valid_data, test_data, show_progress=config["show_progress"])
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
    mp.spawn(
        run_recbole_fofas,
        args=(model, dataset, config_file_list, kwargs),
        nprocs=nproc,
        join=True,
    )
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
    outside :data:`RELOAD_OVERRIDABLE` are refused, naming them."""
    overrides = dict(overrides or {})
    refused = sorted(set(overrides) - RELOAD_OVERRIDABLE)
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
