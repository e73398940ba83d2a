"""The device side: sub-models exported to an on-device runtime, the session protocol that ships a
user's weights (not graphs), and measurements taken in that runtime.

* :mod:`~recbole_fofa.device.runtime`: the optional ``device`` extra (onnxruntime, onnxscript),
  one-thread runtime sessions;
* :mod:`~recbole_fofa.device.export`: tiers and per-user sub-models as ONNX graphs (ExecuTorch
  ``.pte`` where it installs) and their ``manifest.json``;
* :mod:`~recbole_fofa.device.session`: the deployed protocol, message by message, in bytes;
* :mod:`~recbole_fofa.device.latency`: latency and peak memory of a graph in the runtime;
* :mod:`~recbole_fofa.device.cloud`: the cloud's side per user (controller, mapper, folding);
* :mod:`~recbole_fofa.device.measure`: the device numbers of a trained ForwardOFA, in one call.

Nothing here imports onnx or onnxruntime at module level: without the extra, the modules import
and a call that needs a runtime raises an ImportError naming the extra (docs/device.md).
"""
