"""``--benchmark --jobs=N``: N processes of one benchmark command that share its runs.

The command starts ``N - 1`` helper processes of itself (the same arguments, without ``--jobs``)
and works as the N-th; the runs are shared through the output folder's queue
(:mod:`~recbole_fofa.benchmark.queue`), so each trains once. The cores are split between them
(``OMP_NUM_THREADS``: the cores torch uses here over N, at least 1). A helper writes its console
to ``<output>/workers/<i>.log``; when this process stops, however it stops, the helpers stop
with it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import List, Sequence

import torch

__all__ = ["MAX_JOBS", "check_jobs", "helpers"]

#: more processes than this would each get less than a useful share of any machine here
MAX_JOBS = 64


def check_jobs(jobs) -> int:
    """``--jobs``: an integer in [1, MAX_JOBS]; a ValueError names the flag and the range."""
    try:
        value = int(jobs)
    except (TypeError, ValueError):
        value = None
    if value is None or str(value) != str(jobs).strip() or not 1 <= value <= MAX_JOBS:
        raise ValueError(f"--jobs={jobs!r}: give the number of benchmark processes, an integer "
                         f"in [1, {MAX_JOBS}]")
    return value


def _terminated(signum, frame):
    raise SystemExit(128 + signum)


def _without_jobs(argv: Sequence[str]) -> List[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--jobs":
            skip = True
        elif not arg.startswith("--jobs="):
            out.append(arg)
    return out


@contextmanager
def helpers(argv: Sequence[str], jobs: int, output, grace: float = 10.0):
    """Run ``jobs - 1`` helpers of the command ``argv`` (its arguments) while the body runs in
    this process with its share of the threads; the helpers are waited for at the end (a
    helper that failed is named with its log) and stopped (SIGTERM, SIGKILL after ``grace`` s)
    if the body raises."""
    if jobs <= 1:
        yield []
        return
    threads = max(1, torch.get_num_threads() // jobs)
    folder = Path(output) / "workers"
    folder.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    command = [sys.executable, "-m", "recbole_fofa", *_without_jobs(argv)]
    processes = []
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    handler = None
    if threading.current_thread() is threading.main_thread():  # SIGTERM: stop them too
        handler = signal.signal(signal.SIGTERM, _terminated)
    try:
        for i in range(1, jobs):
            with (folder / f"{i}.log").open("w") as log:
                processes.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                                  stdin=subprocess.DEVNULL, env=env))
        yield processes
        failed = [(i, p.wait()) for i, p in enumerate(processes, 1)]
        failed = [f"{folder / f'{i}.log'} (exit {code})" for i, code in failed if code != 0]
        if failed:
            print(f"run_recbole_fofa: helper processes failed: {', '.join(failed)}; this "
                  "process ran what they left", file=sys.stderr)
    finally:
        torch.set_num_threads(previous)
        if handler is not None:
            signal.signal(signal.SIGTERM, handler)
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
            try:
                process.wait(grace)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
