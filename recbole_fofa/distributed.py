"""Distributed runs (DDP) on CPUs with gloo and on GPUs with NCCL: process-group set-up, backend
choice, rank helpers and the collectives the trainers and the subnet search use.

RecBole 1.2.1 supports DDP on GPUs only: ``Config._init_device`` asserts one GPU per process and
always initialises NCCL, and ``AbstractTrainer`` wraps the model with
``device_ids=[local_rank]``, which a CPU module refuses. The plugin's :class:`~recbole_fofa.config.
Config` calls :func:`init_device` instead, and the plugin's trainers wrap the model with
:func:`wrap_model`. Everything else stays RecBole's: the spawned processes
(:func:`recbole_fofa.quick_start.run`), the ``DistributedSampler`` of its dataloaders (each rank
gets ``1 / world_size`` of every batch, so the global batch is ``train_batch_size``), gradient
averaging by DDP with ``sync_grad_loss`` (every parameter takes part in every step, also the blocks
a sub-network skips) and the sample-weighted gathering of evaluation results.

Config keys (``properties/overall.yaml``): ``dist_backend`` (null: ``nccl`` on GPUs, ``gloo`` on
CPUs) and ``dist_timeout`` (seconds a process waits for the others, in the set-up and in every
collective). docs/distributed.md has the commands.
"""

import contextlib
import copy
import datetime
import errno
import gc
import os
import signal
import socket
import sys
import threading
import time
from logging import getLogger

import recbole.trainer.trainer as recbole_trainer
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from recbole_fofa import compat
from recbole_fofa.checks import COMMON_CHECKS

#: Process-group backends the plugin sets up: gloo (CPU tensors, also CUDA) and NCCL (GPUs).
BACKENDS = ("gloo", "nccl")
#: Default ``dist_timeout`` in seconds (torch's own default for gloo).
DEFAULT_TIMEOUT = 1800
#: Keys of a distributed run that a checkpoint must not keep (a reload is one process).
DISTRIBUTED_KEYS = ("world_size", "nproc", "offset", "ip", "port")


class PortInUseError(RuntimeError):
    """The master port of a distributed run is taken by another program (or an earlier run)."""


def port_in_use_message(ip, port):
    return (f"--port={port}: port {port} on {ip} is already in use (another program or an "
            f"unfinished run holds it), so rank 0 cannot open the process group there; pass a "
            f"free port with --port (config key `port`)")


# ----------------------------------------------------------------------------- rank helpers


def is_distributed():
    """Whether this process is in an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank():
    """Global rank of this process (0 when not distributed)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size():
    """Number of processes in the group (1 when not distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process(config=None):
    """Whether this process writes checkpoints, logs and results: global rank 0, or any
    single-process run (``config['single_spec']``)."""
    if config is not None and config["single_spec"] is not False:
        return True
    return get_rank() == 0


def barrier():
    """Wait for every rank (a no-op outside a distributed run)."""
    if is_distributed():
        dist.barrier()


def broadcast_object(obj, src=0):
    """``obj`` of rank ``src`` on every rank (picklable objects; tensors arrive on the CPU when
    they were sent from the CPU)."""
    if not is_distributed():
        return obj
    holder = [obj if get_rank() == src else None]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def all_gather_objects(obj):
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` when not distributed)."""
    if not is_distributed():
        return [obj]
    out = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def checksum(module):
    """A float64 sum of every parameter, weighted by position (detects a swapped or drifted
    entry, not only a changed total): the same number on ranks whose weights agree."""
    total = torch.zeros((), dtype=torch.float64)
    for index, parameter in enumerate(module.parameters()):
        values = parameter.detach().double().flatten().cpu()
        weights = torch.arange(1, values.numel() + 1, dtype=torch.float64)
        total += (index + 1) * (values * weights).sum() / values.numel()
    return float(total)


# ----------------------------------------------------------------------------- set-up


def _gpu_ids(value):
    """``gpu_id`` as RecBole reads it: a comma-separated string ('' for none)."""
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    return "" if value is None else str(value)


def choose_backend(values):
    """(device type, backend) for a distributed run configured by ``values`` (a config dict).

    The device follows RecBole's rule (CUDA when available and ``gpu_id`` names a GPU, else the
    CPU); ``dist_backend`` null picks ``nccl`` on CUDA and ``gloo`` on the CPU. ``nccl`` without
    CUDA, or a backend torch was built without, is a ValueError naming the key.
    """
    backend = values.get("dist_backend")
    use_cuda = bool(_gpu_ids(values.get("gpu_id"))) and torch.cuda.is_available()
    device = "cuda" if use_cuda else "cpu"
    if backend is None:
        backend = "nccl" if use_cuda else "gloo"
    if backend not in BACKENDS:
        raise ValueError(f"config key `dist_backend` = {backend!r} is invalid: expected null "
                         f"(nccl on GPUs, gloo on CPUs) or one of {list(BACKENDS)}")
    if backend == "nccl" and not use_cuda:
        raise ValueError("config key `dist_backend` = 'nccl' needs CUDA GPUs, and this run has "
                         "none (no CUDA device, or `gpu_id` is empty): use 'gloo' or leave "
                         "`dist_backend` unset")
    available = {"gloo": dist.is_gloo_available, "nccl": dist.is_nccl_available}[backend]
    if not available():
        raise ValueError(f"config key `dist_backend` = {backend!r}: this torch build has no "
                         f"{backend} backend; use one of "
                         f"{[b for b in BACKENDS if b != backend]} or leave it unset")
    return device, backend


def check_port_free(ip, port):
    """Raise :class:`PortInUseError` (naming ``--port``) when ``port`` on ``ip`` is taken.

    Run on the machine that hosts rank 0 before processes are spawned, so a taken port is one
    clear error instead of a failed spawn; an address that is not this machine's is left to the
    process group.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((ip, int(port)))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise PortInUseError(port_in_use_message(ip, port)) from None
            if err.errno == errno.EADDRNOTAVAIL or isinstance(err, socket.gaierror):
                return  # not an address of this machine: rank 0 runs elsewhere
            raise


def init_process_group(backend, rank, world_size, ip, port, timeout=DEFAULT_TIMEOUT):
    """``torch.distributed.init_process_group`` over ``tcp://ip:port`` with a timeout, so that a
    missing rank ends in an error after ``timeout`` seconds instead of a hang, and a taken port
    is a :class:`PortInUseError` naming ``--port``."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside the world of {world_size} processes: check "
                         "--world_size, --nproc and --group_offset")
    COMMON_CHECKS["dist_timeout"]("dist_timeout", timeout)  # a huge one wraps inside c10d
    try:
        dist.init_process_group(
            backend=backend, init_method=f"tcp://{ip}:{port}", rank=rank, world_size=world_size,
            timeout=datetime.timedelta(seconds=timeout),
        )
    except (RuntimeError, OSError) as err:  # DistNetworkError is a RuntimeError
        text = str(err)
        if "EADDRINUSE" in text or "address already in use" in text.lower():
            raise PortInUseError(port_in_use_message(ip, port)) from err
        if "timed out" in text.lower() or "timeout" in text.lower():
            raise RuntimeError(
                f"rank {rank}: the process group at {ip}:{port} did not form within "
                f"dist_timeout = {timeout}s ({world_size} processes expected): check that every "
                "machine runs with the same --ip, --port and --world_size and that rank 0 is "
                f"up; {text}") from err
        raise


def rank_gpu(local_rank, nproc, backend, gpu_id=None):
    """Index (among the visible GPUs) of the GPU that process ``local_rank`` of the ``nproc`` on
    this machine uses: its own with NCCL, which refuses two ranks on one GPU; round robin with
    gloo, so that processes may share GPUs. Too few GPUs for NCCL is a ValueError saying how to
    fix it."""
    visible = torch.cuda.device_count()
    if gpu_id:
        visible = min(visible, len(gpu_id.split(",")))
    if visible < 1:
        raise ValueError(f"no CUDA device is visible to this process (`gpu_id` = {gpu_id!r}, "
                         f"CUDA_VISIBLE_DEVICES = {os.environ.get('CUDA_VISIBLE_DEVICES')!r})")
    if backend == "nccl" and visible < nproc:
        raise ValueError(
            f"--nproc={nproc} NCCL processes on this machine need {nproc} GPUs (NCCL refuses "
            f"two processes on one GPU), but `gpu_id` = {gpu_id!r} and {visible} are visible: "
            f"set --gpu_id to {nproc} GPU ids (e.g. '{','.join(map(str, range(nproc)))}'), start "
            "fewer processes, set `dist_backend: gloo` to share the GPUs, or set `gpu_id: ''` "
            "to train on the CPU with gloo")
    return local_rank % visible


def init_device(values):
    """The distributed branch of ``Config._init_device`` for ``values`` (the final config dict):
    joins the process group (``dist_backend``) and sets ``device``, ``single_spec`` and, on
    ranks other than 0, quiet logging (``state: error``, no progress bars)."""
    gpu_id = _gpu_ids(values.get("gpu_id"))
    values["gpu_id"] = gpu_id
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu_id  # as RecBole: gpu_id picks the visible GPUs
    device_type, backend = choose_backend(values)
    local_rank, nproc = int(values["local_rank"]), int(values.get("nproc") or 1)
    if device_type == "cuda":
        index = rank_gpu(local_rank, nproc, backend, gpu_id)
        torch.cuda.set_device(index)
        device = torch.device("cuda", index)
    else:
        device = torch.device("cpu")
    world_size = int(values.get("world_size") or nproc)
    rank = local_rank + int(values.get("offset") or 0)
    timeout = values.get("dist_timeout")
    timeout = DEFAULT_TIMEOUT if timeout is None else timeout
    if not dist.is_initialized():
        init_process_group(backend, rank, world_size, values.get("ip") or "localhost",
                           values.get("port") or 5678, timeout)
    elif (dist.get_rank(), dist.get_world_size(), dist.get_backend()) != (rank, world_size,
                                                                            backend):
        raise RuntimeError(
            f"a process group is already initialised as rank {dist.get_rank()} of "
            f"{dist.get_world_size()} with {dist.get_backend()}, but this config asks for rank "
            f"{rank} of {world_size} with {backend} (`dist_backend`, `gpu_id`)")
    values["device"] = device
    values["dist_backend"] = backend
    values["single_spec"] = False
    if rank != 0:
        values["state"] = "error"
        values["show_progress"] = False
        values["verbose"] = False


def worker_threads(nproc):
    """CPU threads for each of ``nproc`` processes on one machine: the cores shared out (at
    least 1), unless ``OMP_NUM_THREADS`` says otherwise."""
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, int(nproc))))
    return torch.get_num_threads()


def destroy():
    """Leave the process group (a no-op when none is initialised).

    Objects that hold the group are collected first: a trainer and its model form reference
    cycles, so a finished run's DDP wrapper (its reducer keeps the group and gloo's work objects)
    would otherwise outlive the group and be freed during interpreter shutdown, where gloo's
    threads can abort the process (SIGABRT, "terminate called without an active exception")."""
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def free_port(ip="localhost"):
    """A TCP port on ``ip`` that is free now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((ip, 0))
        return sock.getsockname()[1]


def _spawned(rank, nproc, ip, port, backend, timeout, fn, args, queue, gpu_id=None):
    worker_threads(nproc)
    if gpu_id is not None:  # before anything touches CUDA, as RecBole's device set-up
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu_id
    if torch.cuda.is_available():  # NCCL's collectives use the current device: the rank's own
        torch.cuda.set_device(rank_gpu(rank, nproc, backend, gpu_id))
    init_process_group(backend, rank, nproc, ip, port, timeout)
    try:
        result = fn(*args)
        if rank == 0:
            queue.put(result)
    finally:
        destroy()


def spawn(fn, nproc, args=(), ip="localhost", port=None, backend=None,
          timeout=DEFAULT_TIMEOUT, deadline=None, gpu_id=None):
    """Run ``fn(*args)`` in ``nproc`` new processes on this machine that form one process group
    (``backend``: default nccl with CUDA, else gloo; ``port``: default a free one) and return
    rank 0's return value. ``fn`` must be importable (a module-level function). With CUDA each
    rank uses the GPU :func:`rank_gpu` gives it among ``gpu_id`` (as the config key: the GPUs
    the processes see; default all visible ones).

    A failing rank raises here with its traceback (the others are stopped); with ``deadline``
    (seconds) a run that has not finished by then is stopped and a TimeoutError raised; SIGINT
    or SIGTERM to this process stops every rank (:func:`join_workers`).
    """
    COMMON_CHECKS["dist_timeout"]("dist_timeout", timeout)
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":  # no or too few GPUs: the error before any spawn
        if not torch.cuda.is_available():
            raise ValueError("backend 'nccl' needs CUDA GPUs and this machine has none: use "
                             "'gloo'")
        rank_gpu(nproc - 1, nproc, backend, gpu_id)
    if port is None:
        port = free_port(ip)
    else:
        check_port_free(ip, port)
    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    processes = mp.start_processes(
        _spawned, args=(nproc, ip, port, backend, timeout, fn, tuple(args), queue, gpu_id),
        nprocs=nproc, join=False, start_method="spawn")
    join_workers(processes, deadline, what=f"{nproc} processes running {fn.__name__}")
    return None if queue.empty() else queue.get()


#: Signals that stop a distributed run: every worker is stopped with the parent.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _Stop(BaseException):
    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


def stop_workers(processes, grace=10.0):
    """SIGTERM every live process of ``processes`` (a list), then SIGKILL those still alive
    after ``grace`` seconds; returns how many were running."""
    alive = [p for p in processes if p.is_alive()]
    for process in alive:
        process.terminate()
    end = time.monotonic() + grace
    for process in alive:
        process.join(max(0.0, end - time.monotonic()))
    for process in alive:
        if process.is_alive():
            process.kill()
            process.join(5)
    return len(alive)


def join_workers(context, deadline=None, what="the worker processes", grace=10.0):
    """Wait for the processes of ``context`` (``torch.multiprocessing``'s ``ProcessContext``).

    A failing worker raises here with its traceback (torch stops the others). SIGINT (Ctrl-C) or
    SIGTERM to this process stops every worker (SIGTERM, SIGKILL after ``grace`` s) and then
    raises ``KeyboardInterrupt`` or ``SystemExit(128 + SIGTERM)``; with ``deadline`` (seconds) a
    run still going by then is stopped and a TimeoutError raised.
    """
    def stop(signum, frame):
        raise _Stop(signum)

    previous = {}
    if threading.current_thread() is threading.main_thread():  # signal handlers live there
        previous = {signum: signal.signal(signum, stop) for signum in STOP_SIGNALS}
    end = None if deadline is None else time.monotonic() + deadline
    try:
        while not context.join(timeout=1):
            if end is not None and time.monotonic() > end:
                stop_workers(context.processes, grace)
                raise TimeoutError(f"spawn: {what} did not finish within {deadline}s; stopped")
    except _Stop as stopped:
        _restore(previous)  # a second Ctrl-C while stopping interrupts as usual
        name = signal.Signals(stopped.signum).name
        count = stop_workers(context.processes, grace)
        print(f"{name}: stopped {count} of the {len(context.processes)} worker processes",
              file=sys.stderr)
        if stopped.signum == signal.SIGINT:
            raise KeyboardInterrupt from None
        raise SystemExit(128 + stopped.signum) from None
    except BaseException:
        stop_workers(context.processes, grace)
        raise
    finally:
        _restore(previous)


def _restore(handlers):
    while handlers:
        signum, handler = handlers.popitem()
        signal.signal(signum, handler)


# ----------------------------------------------------------------------------- model and config


def wrap_model(model, config):
    """``DistributedDataParallel`` around ``model`` for this rank's device: ``device_ids`` only on
    CUDA (a CPU module refuses them), SyncBatchNorm only on CUDA (it has no CPU kernel). Only the
    parameters that require a gradient now are reduced: call it again after freezing some."""
    device = torch.device(config["device"])
    if device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        index = device.index if device.index is not None else torch.cuda.current_device()
        return model, DistributedDataParallel(model, device_ids=[index])
    return model, DistributedDataParallel(model)


def portable_config(config):
    """A copy of ``config`` for a checkpoint of a distributed run: one process (``single_spec``
    True, ``local_rank`` 0, the device type without a rank's index) and no process-group keys,
    so that the checkpoint reloads in one process (RecBole issue #2063; on a machine without CUDA
    see :func:`recbole_fofa.quick_start.load_data_and_model`)."""
    clone = copy.copy(config)
    values = dict(config.final_config_dict)
    for key in DISTRIBUTED_KEYS:
        values.pop(key, None)
    values["single_spec"] = True
    values["local_rank"] = 0
    device = torch.device(values.get("device") or "cpu")
    values["device"] = torch.device(device.type)
    clone.final_config_dict = values
    return clone


def unsharded_config(config):
    """``config`` unchanged for one process, else a copy whose dataloaders are not split across
    ranks (``single_spec`` True; the rank's device is kept)."""
    if config["single_spec"] is not False:
        return config
    clone = copy.copy(config)
    clone.final_config_dict = dict(config.final_config_dict, single_spec=True)
    return clone


def unsharded(eval_data):
    """``eval_data`` itself, or in a distributed run a dataloader of the same class over all of
    its rows (RecBole gives each rank a ``DistributedSampler`` share)."""
    config = unsharded_config(eval_data.config)
    if config is eval_data.config:
        return eval_data
    return type(eval_data)(config, eval_data._dataset, eval_data._sampler, shuffle=False)


def load_checkpoint(path, device=None, trust=False):
    """The checkpoint at ``path``, read by :func:`recbole_fofa.compat.load_checkpoint_file`
    (``trust``: config key ``trust_checkpoint``): by rank 0 and broadcast, so ranks on machines
    without rank 0's file system get it too (one process: read here)."""
    if not is_distributed():
        return compat.load_checkpoint_file(path, device, trust)
    if get_rank() != 0:
        checkpoint, error = broadcast_object(None)
        if error is not None:  # rank 0 raised the full error; the others stop too, not hang
            raise RuntimeError(f"rank 0 could not read the checkpoint: {error}")
        return checkpoint
    try:
        checkpoint = compat.load_checkpoint_file(path, "cpu", trust)
    except Exception as err:
        broadcast_object((None, str(err)))
        raise
    return broadcast_object((checkpoint, None))[0]


# ----------------------------------------------------------------------------- rank-0-only files


class _NoTensorboard:
    """Stands for RecBole's ``SummaryWriter`` on ranks other than 0: every call does nothing."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


@contextlib.contextmanager
def no_tensorboard():
    """Inside the block, RecBole trainers are built without a tensorboard writer (which creates
    ``./log_tensorboard/<run>/`` at once): for ranks other than 0."""
    original = recbole_trainer.get_tensorboard
    recbole_trainer.get_tensorboard = lambda logger: _NoTensorboard()
    try:
        yield
    finally:
        recbole_trainer.get_tensorboard = original


def drop_log_files(logger=None):
    """Remove the root logger's file handlers and their still empty files: ranks other than 0
    log to the console only (at ``state: error``), rank 0 writes RecBole's log file."""
    logger = logger or getLogger()
    for handler in logger.handlers[:]:
        path = getattr(handler, "baseFilename", None)
        if path is None:
            continue
        logger.removeHandler(handler)
        handler.close()
        if os.path.isfile(path) and os.path.getsize(path) == 0:
            os.remove(path)


__all__ = [
    "BACKENDS", "DEFAULT_TIMEOUT", "PortInUseError", "STOP_SIGNALS", "all_gather_objects",
    "barrier", "broadcast_object", "check_port_free", "checksum", "choose_backend", "destroy",
    "drop_log_files", "free_port", "get_rank", "get_world_size", "init_device",
    "init_process_group", "is_distributed", "is_main_process", "join_workers", "load_checkpoint",
    "no_tensorboard", "portable_config", "rank_gpu", "spawn", "stop_workers", "unsharded",
    "unsharded_config", "worker_threads", "wrap_model",
]
