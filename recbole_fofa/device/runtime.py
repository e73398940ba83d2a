"""The optional ``device`` extra and the runtime sessions every device number is measured in.

The extra (``pip install 'recbole-fofa[device]'``) brings onnxruntime and onnxscript (the dynamo
ONNX exporter's dependency); ExecuTorch is a further extra (``executorch``). :func:`require`
imports a runtime package or raises an ImportError that names the extra; :func:`ort_session`
opens a graph in onnxruntime on one thread, as a phone app runs it.
"""

from __future__ import annotations

import importlib
from importlib import metadata
from typing import Union

__all__ = ["EXTRAS", "available", "require", "ort_session", "runtime_versions"]

#: package -> the extra that installs it
EXTRAS = {
    "onnx": "device",
    "onnxruntime": "device",
    "onnxscript": "device",
    "executorch": "executorch",
}


def require(*packages: str):
    """The imported modules of ``packages`` (one module for one name); an ImportError naming
    the extra to install when one is missing."""
    modules = []
    for name in packages:
        try:
            modules.append(importlib.import_module(name))
        except ImportError as err:
            extra = EXTRAS.get(name, "device")
            raise ImportError(
                f"{name} is not installed: the device export and runtime need the `{extra}` "
                f"extra: pip install 'recbole-fofa[{extra}]' ({err})"
            ) from err
    return modules[0] if len(modules) == 1 else modules


def available(*packages: str) -> bool:
    """Whether every package in ``packages`` (default: the ``device`` extra) imports."""
    names = packages or tuple(n for n, extra in EXTRAS.items() if extra == "device")
    try:
        require(*names)
    except ImportError:
        return False
    return True


def ort_session(graph: Union[bytes, str], threads: int = 1):
    """An onnxruntime CPU session of ``graph`` (serialized model or path): ``threads`` intra-op
    threads, one inter-op thread, sequential execution, all graph optimisations."""
    ort = require("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if threads == 1:  # no spinning pool threads beside the one that runs the graph
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])


def runtime_versions() -> dict:
    """``{package: version}`` of the runtime packages that import (for reports)."""
    out = {}
    for name in ("torch", *EXTRAS):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out
