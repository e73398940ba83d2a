"""Every work-around that recbole 1.2.1 needs on a modern stack, and nothing else.

Each item names the breakage (C1, C2, ...: the numbers tests/test_compat.py and the code comments
use; gaps are breakages that needed no work-around), where it sits in recbole 1.2.1 and the test
that fails without the fix (tests/test_compat.py).

Handled by version constraints (setup.cfg / constraints.txt), not code:

* C7  pandas 3's copy-on-write makes RecBole's chained ``df[col].fillna(..., inplace=True)``
  (recbole/data/dataset/dataset.py:648,650) a silent no-op: NaNs stay in float fields. Constraint:
  ``pandas<3`` (test_compat.test_float_field_nans_are_filled).
* C4/C5 ``recbole.quick_start`` imports ray 2.6.3, which needs ``np.bool8`` (numpy < 2) and
  ``pkg_resources`` (setuptools < 82). Not constrained: this package never imports
  ``recbole.quick_start`` (it ships its own quick start), so ray is never loaded
  (test_compat.test_pipeline_never_imports_ray).

Handled by code, below:

* C2/C3 numpy 2 removed ``np.float_``, ``np.complex_`` and ``np.unicode_``; RecBole's
  ``Config.compatibility_settings`` (recbole/config/configurator.py:625-635) reads them to recreate
  the ``np.float``/``np.bool``/... aliases that its metrics use (recbole/evaluator/metrics.py:90,
  128, 131, 190, 196, 287). Without them every ``Config()`` raises AttributeError.
  -> :func:`install_numpy_aliases`.
* C1 torch >= 2.6 loads with ``weights_only=True`` by default; RecBole's checkpoints pickle the
  whole ``Config`` object with protocol 4 (recbole/trainer/trainer.py:308), so the best-model reload
  after training (trainer.py:583) and ``resume_checkpoint`` (trainer.py:323) raise
  ``UnpicklingError``. -> :func:`trusted_checkpoint_loads`, used by the plugin's trainers around
  RecBole's own loading code, for checkpoints this process wrote or the user named.
* C13 recbole 1.2.1's ``Collector.get_data_struct`` calls ``.cpu()`` on every collected value
  (recbole/evaluator/collector.py:226-227), including the ints and Counters it stores itself, so
  ItemCoverage, GiniIndex, AveragePopularity and TailPercentage crash.
  -> :class:`TensorSafeCollector`.
* C16 importing any RecBole sequential model imports the package
  ``recbole.model.sequential_recommender``, whose SINE module calls
  ``torch.autograd.set_detect_anomaly(True)`` at import (recbole/model/sequential_recommender/
  sine.py:25): every later training step records stack traces, about 2x slower.
  -> :func:`import_recbole_models`.
* C8 scipy >= 1.13 removed the private ``dok_matrix._update`` (a raw ``dict.update`` of the
  matrix's entries). recbole 1.2.1 builds every graph model's adjacency with it
  (recbole/model/general_recommender/lightgcn.py:111, ngcf.py:110, gcmc.py:174, spectralcf.py:123,
  ncl.py:131; knowledge_aware_recommender/kgin.py:356, mcclk.py:425), so LightGCN, NGCF, GCMC,
  SpectralCF, NCL, KGIN and MCCLK raise AttributeError when built.
  -> :func:`install_scipy_dok_update`, installed when ``recbole_fofa`` is imported.
* C14 ``recbole.utils.get_model`` raises ``ModuleNotFoundError: lightgbm`` for an unknown name
  (recbole/utils/utils.py:64-78). -> handled where names are resolved,
  :func:`recbole_fofa.registry.get_model`.
"""

import contextlib
import copy
import os
import warnings

import numpy as np
import scipy.sparse as sp
import torch
from recbole.evaluator.collector import Collector

# numpy 2 name -> the type numpy 1 gave it; only missing names are added.
_NUMPY_ALIASES = {"float_": np.float64, "complex_": np.complex128, "unicode_": np.str_}


def install_numpy_aliases():
    """Restore the numpy 1 names that RecBole's ``Config.compatibility_settings`` reads (C2/C3)."""
    for name, value in _NUMPY_ALIASES.items():
        if name not in np.__dict__:
            setattr(np, name, value)


def _dok_update(self, data):
    """Store ``data`` ({(row, col): value}) as entries of the matrix, unchecked, as scipy < 1.13
    did: one C-level ``dict.update`` of the entry dict (recbole passes in-range int keys)."""
    self._dict.update(data)


def install_scipy_dok_update():
    """Give ``scipy.sparse.dok_matrix`` back the ``_update`` method recbole's graph models call
    (C8); a scipy that still has it is left alone."""
    if not hasattr(sp.dok_matrix, "_update"):
        sp.dok_matrix._update = _dok_update


def import_recbole_models():
    """Import RecBole's sequential models once, undoing SINE's global anomaly mode (C16)."""
    was_enabled = torch.is_anomaly_enabled()
    import recbole.model.sequential_recommender  # noqa: F401

    torch.autograd.set_detect_anomaly(was_enabled)


_WEIGHTS_ONLY_ENV = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"


@contextlib.contextmanager
def trusted_checkpoint_loads():
    """Let RecBole's own ``torch.load`` calls read full checkpoints (C1).

    torch honours ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` only where the caller did not pass
    ``weights_only``, which is the case for every RecBole call site. Use it only around loads of
    checkpoints this process or the user wrote: unpickling runs code.
    """
    previous = os.environ.get(_WEIGHTS_ONLY_ENV)
    os.environ[_WEIGHTS_ONLY_ENV] = "1"
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD.*")
            yield
    finally:
        if previous is None:
            os.environ.pop(_WEIGHTS_ONLY_ENV, None)
        else:
            os.environ[_WEIGHTS_ONLY_ENV] = previous


def torch_load_trusted(path, map_location=None):
    """``torch.load`` of a checkpoint this project or its user wrote (C1)."""
    return torch.load(path, map_location=map_location, weights_only=False)


class TensorSafeCollector(Collector):
    """RecBole's Collector, with ``get_data_struct`` moving only tensors to the CPU (C13)."""

    def get_data_struct(self):
        for key in self.data_struct._data_dict:
            value = self.data_struct._data_dict[key]
            if isinstance(value, torch.Tensor):
                self.data_struct._data_dict[key] = value.cpu()
        returned_struct = copy.deepcopy(self.data_struct)
        for key in ["rec.topk", "rec.meanrank", "rec.score", "rec.items", "data.label"]:
            if key in self.data_struct:
                del self.data_struct[key]
        return returned_struct
