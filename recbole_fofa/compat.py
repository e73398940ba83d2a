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
* C1 RecBole pickles the whole ``Config`` object (its model class, YAML loader class, enums,
  numpy scalars) into every checkpoint, with protocol 4 (recbole/trainer/trainer.py:299-308), and
  reloads with a bare ``torch.load`` (trainer.py:323, 583): on torch >= 2.6 that raises
  ``UnpicklingError``, and with ``weights_only=False`` any code pickled into a shared file runs.
  torch's own ``weights_only`` unpickler cannot help: it reads protocol 2 only ("Unsupported
  operand 149", the protocol-4 FRAME). -> :func:`load_checkpoint_file`, the one loader of every
  checkpoint (the plugin's trainers override RecBole's two loads): a pickle restricted to torch's
  weights-only allowlist plus :data:`CHECKPOINT_GLOBALS` and RecBole's and the plugin's model
  classes (as references, never called); anything else raises
  :class:`UntrustedCheckpointError` naming the file and the global. ``trust=True`` (config key
  ``trust_checkpoint``, flag ``--trust_checkpoint``) loads with full unpickling, for trusted old
  files (test_checkpoint_trust.py).
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
* C17 RecBole's ``Config._convert_config_dict`` (recbole/config/configurator.py:141-162) runs
  ``eval`` on every string value of the command line and of ``config_dict``, so
  ``--note=__import__('os').system(...)`` runs a shell command. -> :func:`literal_config_dict`,
  which the plugin's ``Config`` uses instead: Python literals only (``ast.literal_eval``), the
  same fallbacks (``true``/``false`` in any case, anything else stays a string)
  (test_command_line.test_command_line_values_are_literals).
"""

import ast
import copy
import functools
import importlib
import logging
import pickle
from collections import OrderedDict

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


# the value types RecBole keeps from its eval (configurator.py:149-151); others stay strings
_CONFIG_VALUE_TYPES = (str, int, float, list, tuple, dict, bool)


def literal_config_value(text):
    """A command-line or ``config_dict`` string as RecBole reads it, without running it (C17): a
    Python literal (number, list, dict, None, True, ...), else ``true``/``false`` as booleans,
    else the string itself."""
    if not isinstance(text, str):
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return {"true": True, "false": False}.get(text.lower(), text)
    return value if value is None or isinstance(value, _CONFIG_VALUE_TYPES) else text


def literal_config_dict(config_dict):
    """``config_dict`` with every string value read by :func:`literal_config_value` (C17)."""
    for key, value in config_dict.items():
        config_dict[key] = literal_config_value(value)
    return config_dict


#: Globals a RecBole or recbole_fofa checkpoint may name and build, beyond torch's own weights-only
#: allowlist (tensors, storages, dtypes, ``torch.device``, OrderedDict): the pickled ``Config``
#: classes, RecBole's enums and numpy scalars (found by loading real checkpoints of ForwardOFA,
#: of RecBole models trained through the plugin and by stock RecBole; numpy 1 named ``numpy.core``).
CHECKPOINT_GLOBALS = (
    "recbole.config.configurator.Config", "recbole_fofa.config.Config",
    "recbole.utils.enum_type.ModelType", "recbole.utils.enum_type.InputType",
    "recbole.utils.enum_type.EvaluatorType", "recbole.utils.enum_type.FeatureType",
    "recbole.utils.enum_type.FeatureSource",
    "numpy.dtype", "numpy._core.multiarray.scalar", "numpy.core.multiarray.scalar",
    "collections.defaultdict",
    # RecBole models' ``other_parameter``: numpy arrays and scipy sparse matrices (EASE,
    # SLIMElastic, ItemKNN, AsymKNN), ``defaultdict(list)`` (RippleNet's ripple set)
    "numpy.ndarray", "numpy._core.multiarray._reconstruct", "numpy.core.multiarray._reconstruct",
    "builtins.list", "numpy.matrix", "logging.getLogger",
    *(f"scipy.sparse.{module}.{kind}_matrix" for kind in ("csr", "csc", "coo", "lil", "dok")
      for module in (f"_{kind}", kind)),
)
#: Packages whose objects a checkpoint may build (never ``__init__``: the object is made by
#: ``__new__`` and its ``__dict__`` filled): the embedding layers that FDSA, GRU4RecF, SASRecF, DIN
#: and DIEN keep in ``other_parameter``, with the dataset (and DIEN's sampler) they hold.
MODULE_PACKAGES = ("recbole.model.layers", "torch.nn.modules.", "recbole.data.", "recbole.sampler.")
#: Classes a checkpoint may name but never call or change: ``Config.yaml_loader``.
CHECKPOINT_REFERENCES = ("yaml.loader.FullLoader", "yaml.loader.Loader", "yaml.loader.SafeLoader")
#: Packages whose model classes (``Config.model_class``) a checkpoint may name, as references.
MODEL_PACKAGES = ("recbole.model.", "recbole_fofa.model.")


class UntrustedCheckpointError(pickle.UnpicklingError, ValueError):
    """A checkpoint holds something other than what RecBole's and the plugin's checkpoints hold
    (a ValueError too: the user's input, reported without a traceback on the command line)."""

    def __init__(self, path, wanted):
        self.path, self.wanted = path, wanted
        super().__init__(
            f"{path}: refused to load: it asks for {wanted}, which no RecBole or recbole_fofa "
            "checkpoint holds, and unpickling it could run code. If you trust the file (e.g. "
            "written by an older version), set the config key `trust_checkpoint: true` (command "
            "line: --trust_checkpoint); see docs/usage.md, \"Checkpoints\"")


@functools.cache
def _checkpoint_callables():
    """{full name: object} a checkpoint may call or build: torch's weights-only allowlist plus
    :data:`CHECKPOINT_GLOBALS` (imported on first use)."""
    from torch._weights_only_unpickler import _get_allowed_globals

    allowed = dict(_get_allowed_globals())
    for name in CHECKPOINT_GLOBALS:
        module, _, attribute = name.rpartition(".")
        try:
            allowed[name] = getattr(importlib.import_module(module), attribute)
        except (ImportError, AttributeError):  # numpy.core on numpy 1 and 2, _core on 2 only
            continue
    return allowed


@functools.cache
def _buildable_bases():
    from recbole.data.dataset import Dataset
    from recbole.data.interaction import Interaction
    from recbole.sampler.sampler import AbstractSampler

    return (torch.nn.Module, Dataset, Interaction, AbstractSampler)


def _is_layer(value):
    """Whether ``value`` is a class of :data:`MODULE_PACKAGES` that a checkpoint may build: a
    ``torch.nn.Module``, or RecBole's ``Dataset``, ``Interaction`` or sampler."""
    return (isinstance(value, type) and value.__module__.startswith(MODULE_PACKAGES)
            and issubclass(value, _buildable_bases()))


class _Refused(Exception):
    """Raised inside the unpickler; :func:`load_checkpoint_file` adds the file name."""


class _CheckpointUnpickler(pickle._Unpickler):
    """Python's unpickler (it reads every protocol) where globals resolve only from the
    allowlist, only allowlisted types are called, built or filled, and model classes and
    :data:`CHECKPOINT_REFERENCES` stay inert references (C1)."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def find_class(self, module, name):
        full = f"{module}.{name}"
        allowed = _checkpoint_callables()
        if full in allowed:
            return allowed[full]
        if full in CHECKPOINT_REFERENCES or module.startswith(MODEL_PACKAGES + MODULE_PACKAGES):
            found = super().find_class(module, name)  # RecBole's, torch's or the plugin's module
            from recbole.model.abstract_recommender import AbstractRecommender

            if full in CHECKPOINT_REFERENCES or (isinstance(found, type)
                                                 and issubclass(found, AbstractRecommender)):
                return found
            if _is_layer(found):
                return found
        raise _Refused(f"the global `{full}`")

    def _check_call(self, func):
        if not (_is_layer(func) or any(func is value
                                       for value in _checkpoint_callables().values())):
            raise _Refused(f"a call of {getattr(func, '__qualname__', type(func).__name__)}")
        return func

    def _check_type(self, obj, types, what):
        types = (*types, *_buildable_bases(),
                 *(t for t in _checkpoint_callables().values() if isinstance(t, type)))
        if type(obj) is type or not isinstance(obj, types):  # objects come from allowed calls
            raise _Refused(f"{what} an object of type {type(obj).__qualname__}")

    def load_reduce(self):
        self._check_call(self.stack[-2])
        super().load_reduce()

    def load_newobj(self):
        self._check_call(self.stack[-2])
        super().load_newobj()

    def load_newobj_ex(self):
        self._check_call(self.stack[-3])
        super().load_newobj_ex()

    def _instantiate(self, klass, args):  # INST, OBJ
        super()._instantiate(self._check_call(klass), args)

    def load_build(self):
        self._check_type(self.stack[-2], (OrderedDict,), "setting the state of")
        super().load_build()

    def load_append(self):
        self._check_type(self.stack[-2], (list,), "appending to")
        super().load_append()

    def load_appends(self):
        self._check_type(self.metastack[-1][-1], (list,), "appending to")  # below the MARK
        super().load_appends()

    def load_setitem(self):
        self._check_type(self.stack[-3], (dict, OrderedDict), "setting items of")
        super().load_setitem()

    def load_setitems(self):
        self._check_type(self.metastack[-1][-1], (dict, OrderedDict), "setting items of")
        super().load_setitems()

    def load_additems(self):
        self._check_type(self.metastack[-1][-1], (set,), "adding to")
        super().load_additems()

    for _opcode, _method in ((pickle.REDUCE, load_reduce), (pickle.NEWOBJ, load_newobj),
                             (pickle.NEWOBJ_EX, load_newobj_ex), (pickle.BUILD, load_build),
                             (pickle.APPEND, load_append), (pickle.APPENDS, load_appends),
                             (pickle.SETITEM, load_setitem), (pickle.SETITEMS, load_setitems),
                             (pickle.ADDITEMS, load_additems)):
        dispatch[_opcode[0]] = _method
    del _opcode, _method


class _CheckpointPickle:
    """The ``pickle_module`` torch.load reads a checkpoint with (C1)."""

    Unpickler = _CheckpointUnpickler

    @staticmethod
    def load(file, **kwargs):
        return _CheckpointUnpickler(file, **kwargs).load()


def load_checkpoint_file(path, map_location=None, trust=False):
    """The checkpoint at ``path`` (C1): only what RecBole's and the plugin's checkpoints hold,
    else :class:`UntrustedCheckpointError` naming the file and what it wanted, before any of it
    runs. ``trust`` (config key ``trust_checkpoint``): full unpickling, for files you trust."""
    if trust:
        logging.getLogger().warning(
            f"{path}: loading with `trust_checkpoint`: any code pickled into it runs")
        return torch.load(path, map_location=map_location, weights_only=False)
    try:
        return torch.load(path, map_location=map_location, weights_only=False,
                          pickle_module=_CheckpointPickle)
    except _Refused as refused:
        raise UntrustedCheckpointError(path, refused.args[0]) from None


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
