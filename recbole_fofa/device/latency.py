"""Latency and peak memory of a graph in the on-device runtime, measured in a process of its own.

:func:`measure_graph` writes the graph and its inputs to a temporary folder and runs
``_probe.py`` (beside this file) by path in a fresh Python: that process imports numpy and
onnxruntime only, loads the graph on ``threads`` threads (default one, as a phone app), runs
``warmup`` sessions, then times ``repeats`` sessions. A session is one run of the graph
(encoding the history window and scoring the candidates) plus the argsort that re-ranks them.
Peak memory is the growth of the process's peak resident set (VmHWM, reset just before the graph
loads) over its resident set then: the graph, its weights, the runtime's arenas and the outputs.

Numbers mean something only on a machine doing nothing else (docs/device.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, Mapping

import numpy as np

__all__ = ["PROBE", "measure_graph", "summarize"]

PROBE = Path(__file__).with_name("_probe.py")


def summarize(seconds) -> Dict[str, float]:
    """Milliseconds: median, mean, p10, p90 and min of session times."""
    ms = 1e3 * np.asarray(seconds, dtype=float)
    return {"latency_ms": float(np.median(ms)), "mean_ms": float(ms.mean()),
            "p10_ms": float(np.percentile(ms, 10)), "p90_ms": float(np.percentile(ms, 90)),
            "min_ms": float(ms.min())}


def measure_graph(graph: bytes, feeds: Mapping[str, np.ndarray], repeats: int = 200,
                  warmup: int = 20, threads: int = 1, rank: bool = True,
                  timeout: float = 600.0) -> Dict:
    """Time ``graph`` (serialized ONNX) on ``feeds`` in a fresh process (module docstring):
    :func:`summarize`'s latencies, ``load_ms``, ``peak_bytes`` (None off Linux) and the
    onnxruntime version. ``rank``: each session also argsorts the scores (the re-ranking)."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats = {repeats!r} must be >= 1 and warmup = {warmup!r} >= 0")
    with tempfile.TemporaryDirectory(prefix="fofa-probe-") as folder:
        folder = Path(folder)
        (folder / "graph.onnx").write_bytes(bytes(graph))
        np.savez(folder / "inputs.npz", **{k: np.asarray(v) for k, v in feeds.items()})
        job = {"graph": str(folder / "graph.onnx"), "inputs": str(folder / "inputs.npz"),
               "repeats": int(repeats), "warmup": int(warmup), "threads": int(threads),
               "rank_output": bool(rank)}
        (folder / "job.json").write_text(json.dumps(job))
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        done = subprocess.run([sys.executable, str(PROBE), str(folder / "job.json")],
                              capture_output=True, text=True, timeout=timeout, env=env,
                              check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the runtime probe failed (exit {done.returncode}): "
                           f"{done.stderr.strip()[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    out = summarize(result.pop("seconds"))
    out["load_ms"] = 1e3 * result.pop("load_seconds")
    out.update(result)
    out["repeats"], out["warmup"] = int(repeats), int(warmup)
    return out
