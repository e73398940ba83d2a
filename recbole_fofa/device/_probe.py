"""Run one graph in onnxruntime, alone in a fresh process: ``python _probe.py JOB.json``.

Started by :func:`recbole_fofa.device.latency.measure_graph` by path, so the process imports
numpy and onnxruntime only (nothing of the plugin, no torch): its memory is the runtime's. The
job names the graph file, the inputs (``.npz``), repeats, warm-up runs and threads; one JSON
line with the timings and the peak memory goes to stdout.
"""

import json
import sys
import time


def _status(field):
    """A ``/proc/self/status`` field in bytes (Linux), else None."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak():
    """Reset the peak resident set (VmHWM) to the current one; False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def main(job_file):
    with open(job_file) as handle:
        job = json.load(handle)
    import numpy as np
    import onnxruntime as ort

    with np.load(job["inputs"]) as data:
        feeds = {name: data[name] for name in data.files}
    rank = job.get("rank_output")
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(job["threads"])
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if int(job["threads"]) == 1:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    before = _status("VmRSS")
    reset = _reset_peak()
    hwm_before = _status("VmHWM")
    start = time.perf_counter()
    session = ort.InferenceSession(job["graph"], options, providers=["CPUExecutionProvider"])
    load = time.perf_counter() - start
    times = []
    for index in range(int(job["warmup"]) + int(job["repeats"])):
        start = time.perf_counter()
        out = session.run(None, feeds)[0]
        if rank:
            np.argsort(-out[0], kind="stable")
        if index >= int(job["warmup"]):
            times.append(time.perf_counter() - start)
    peak = _status("VmHWM")
    result = {
        "seconds": times,
        "load_seconds": load,
        "rss_before": before,
        "peak_rss": peak,
        "peak_bytes": None if peak is None or before is None else
        peak - (before if reset else max(before, hwm_before or 0)),
        "peak_reset": reset,
        "onnxruntime": ort.__version__,
        "threads": int(job["threads"]),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
