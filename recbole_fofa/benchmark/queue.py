"""The benchmark's work queue: its runs in order, each trained by the one process that holds it.

Benchmarks started with the same command in the same ``--output`` (one per core, each with
``OMP_NUM_THREADS=1``, say) share the work: a process holds a run while it trains it, through the
lock file ``<output>/locks/<name>.lock`` (``flock``: released however the process ends); the
others skip that run, take the next free one and come back for its stored result. A run that
starts from another (``after``) waits until that one is stored. When a holder dies, the run is
free again and the next process resumes it from its progress file.
"""

from __future__ import annotations

import fcntl
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Sequence, Tuple

__all__ = ["Job", "RunQueue", "POLL_SECONDS"]

#: how long a process with nothing free to run waits before it looks again
POLL_SECONDS = 5.0


@dataclass(frozen=True)
class Job:
    """One run of the queue: ``name`` (unique in the output folder, the lock's name),
    ``finished()`` (its stored finished record, or None), ``run()`` (train, store and return
    the record) and the names of the jobs it starts from (``after``)."""

    name: str
    finished: Callable[[], Dict[str, Any] | None]
    run: Callable[[], Dict[str, Any]]
    after: Tuple[str, ...] = ()


class RunQueue:
    """The jobs of one benchmark process, run in the order they were added; ``records`` holds
    each finished job's record (trained here or stored by another process)."""

    def __init__(self, folder, bar=None, poll: float | None = None):
        self.locks = Path(folder) / "locks"
        self.locks.mkdir(parents=True, exist_ok=True)
        self.bar, self.poll = bar, POLL_SECONDS if poll is None else poll
        self.jobs: Dict[str, Job] = {}
        self.records: Dict[str, Dict[str, Any]] = {}

    def add(self, jobs: Sequence[Job], behind: str | None = None):
        """Queue ``jobs`` at the end, or right behind the queued job ``behind``."""
        order = list(self.jobs.values())
        at = len(order) if behind is None else [j.name for j in order].index(behind) + 1
        for job in jobs:
            if job.name in self.jobs:
                raise ValueError(f"benchmark queue: the run {job.name} is queued twice")
            missing = [name for name in job.after if name not in self.jobs]
            if missing:
                raise ValueError(f"benchmark queue: {job.name} starts from {missing}, which "
                                 "are not queued before it")
            self.jobs[job.name] = job
            order.insert(at, job)
            at += 1
        self.jobs = {job.name: job for job in order}
        if self.bar is not None:
            self.bar.total = len(self.jobs)
            self.bar.refresh()

    @property
    def done(self) -> bool:
        return len(self.records) == len(self.jobs)

    def step(self) -> bool:
        """Record the first open job that is stored, or run the first one that is free here;
        False (after waiting ``poll`` seconds) when every open job is held by another process
        or starts from one that is."""
        held = []
        for name, job in self.jobs.items():
            if name in self.records:
                continue
            record = job.finished()
            if record is not None:
                self._record(name, record)
                return True
            if any(dep not in self.records for dep in job.after):
                continue
            handle = self._hold(name)
            if handle is None:
                held.append(name)
                continue
            try:
                record = job.finished()  # stored by its holder between the look and the hold
                if record is None:
                    if self.bar is not None:
                        self.bar.set_postfix_str(name)
                    record = job.run()
            finally:
                handle.close()  # closing the file releases the flock
            self._record(name, record)
            return True
        if held:
            if self.bar is not None:
                self.bar.set_postfix_str(f"waiting for {self.owner(held[0])}: {held[0]}")
            time.sleep(self.poll)
        return False

    def run(self):
        """Step until every job added so far is recorded."""
        while not self.done:
            self.step()

    def owner(self, name) -> str:
        """Who holds ``name``, as its lock file says (``pid N``)."""
        try:
            return (self.locks / f"{name}.lock").read_text().strip() or "another process"
        except OSError:
            return "another process"

    def _hold(self, name):
        """The open, flocked lock file of ``name`` (with this pid in it), or None when another
        process holds it."""
        handle = (self.locks / f"{name}.lock").open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        return handle

    def _record(self, name, record):
        self.records[name] = record
        if self.bar is not None:
            self.bar.update(1)
