"""The plugin's Config: RecBole's Config plus plugin name resolution, YAML and data checks."""

import os
from logging import getLogger
from pathlib import Path

import recbole
import yaml
from recbole.config import Config as RecBoleConfig
from recbole.utils import ModelType

from recbole_fofa import compat, distributed
from recbole_fofa.checks import (
    COMMON_CHECKS,
    check_keys,
    check_metrics,
    check_value,
    plain_values,
    resolve_model,
)
from recbole_fofa.data_check import check_atomic_files
from recbole_fofa.evaluator.measure import can_cost
from recbole_fofa.evaluator.metrics import DEFAULT_COST_METRICS, is_cost_metric
from recbole_fofa.key_names import check_key_names
from recbole_fofa.memory import check_memory
from recbole_fofa.registry import default_config_file, get_model, properties_dir

_RECBOLE_EXAMPLES = Path(recbole.__file__).resolve().parent / "dataset_example"


def check_config(config, model=None):
    """Check a final config (a RecBole ``Config`` or its dict) for ``model`` (a name or class;
    default ``config['model']``): every key it reads (:mod:`recbole_fofa.checks`), the metrics
    and the memory estimate (:mod:`recbole_fofa.memory`); returns the estimate (or None)."""
    _, model = resolve_model(plain_values(config), model)  # a name is resolved once
    check_keys(config, model)
    check_metrics(config)
    return check_memory(config, model)


class Config(RecBoleConfig):
    """RecBole's ``Config`` that also knows the plugin's models and defaults.

    On top of RecBole's resolution order it (1) resolves model names through
    :func:`recbole_fofa.registry.get_model`; (2) layers ``properties/overall.yaml`` and
    ``properties/model/<model>.yaml`` over RecBole's own defaults (user files, dicts and command
    line still win; no dataset presets, so RecBole's models see RecBole's dataset settings);
    (3) disables training negative sampling for CE-loss sequential models unless the user
    configured it (RecBole refuses the combination); (4) checks the dataset's atomic files
    (:mod:`recbole_fofa.data_check`) before RecBole would parse them or try to download them;
    (5) checks every config value the model reads (:mod:`recbole_fofa.checks`) before any data
    loads: once on the merged input, before RecBole's defaults would trip over a malformed one,
    and once on the final values (metrics consistency and the memory estimate,
    :func:`check_config`).
    (6) reads command-line and ``config_dict`` string values as literals, never evaluating them
    (:func:`recbole_fofa.compat.literal_config_dict`, compat C17); (7) resolves config files
    named like a shipped config (``main.yaml``) from any folder (:func:`resolve_config_files`);
    (8) refuses a key of a config file, ``config_dict`` or the command line that is a near-miss
    of a known key and not declared in ``extra_keys`` (:func:`~.key_names.check_key_names`);
    (9) appends the cost metrics (MACs, Params, Blocks) to the model type's RecBole default
    ``metrics`` when the user did not set ``metrics`` and the model class can be costed
    (``cost_metrics_by_default`` records it), refuses explicitly requested cost metrics for a model
    that cannot be costed, and lets cost metrics sit beside value metrics (AUC, LogLoss).
    """

    #: True when the plugin, not the user, put the cost metrics into ``metrics``; the trainer then
    #: drops them with a warning if the model's cost cannot be measured (an attribute, so it
    #: survives the pickled Config in checkpoints).
    cost_metrics_by_default = False

    def __init__(self, model=None, dataset=None, config_file_list=None, config_dict=None):
        super().__init__(model, dataset, config_file_list, config_dict)
        check_config(self, self.model_class)

    def _get_final_config_dict(self):
        final = super()._get_final_config_dict()
        check_keys(final, self.model_class)
        return final

    def _init_device(self):
        """RecBole's device set-up; a distributed run (``local_rank`` set) joins its process
        group with ``dist_backend`` (gloo on CPUs, NCCL on GPUs: :mod:`recbole_fofa.distributed`)
        where RecBole would assert one GPU per process and use NCCL only."""
        if "local_rank" not in self.final_config_dict:
            return super()._init_device()
        distributed.init_device(self.final_config_dict)

    def _convert_config_dict(self, config_dict):
        """Command-line and ``config_dict`` strings as literals, never ``eval`` (compat C17)."""
        return compat.literal_config_dict(config_dict)

    def _load_config_files(self, file_list):
        """RecBole's YAML loading, of :func:`resolve_config_files`' paths; an empty file is
        empty, and a file that is not a mapping of keys is an error naming it."""
        merged = {}
        for path in resolve_config_files(file_list):
            with open(path, encoding="utf-8") as f:
                values = yaml.load(f.read(), Loader=self.yaml_loader)
            if values is None:
                continue
            if not isinstance(values, dict):
                raise ValueError(f"config file {path} holds a {type(values).__name__}, not "
                                 "`key: value` lines")
            merged.update(values)
        return merged

    def _merge_external_config_dict(self):
        """RecBole's merge, then the unknown-key check of every user source (before the model
        resolves, so ``--modle=SASRec`` is not silently a ForwardOFA run)."""
        super()._merge_external_config_dict()
        extra = self.external_config_dict.get("extra_keys")
        COMMON_CHECKS["extra_keys"]("extra_keys", extra)
        for source, values in (("config-file key", self.file_config_dict),
                               ("config_dict key", self.variable_config_dict),
                               ("command-line key", self.cmd_config_dict)):
            check_key_names(values, declared=frozenset(extra or ()), source=source)

    def compatibility_settings(self):
        compat.install_numpy_aliases()
        super().compatibility_settings()

    def _get_model_and_dataset(self, model, dataset):
        if model is None:
            model = self.external_config_dict.get("model")
        if isinstance(model, str):
            model = get_model(model)
        return super()._get_model_and_dataset(model, dataset)

    def _load_internal_config_dict(self, model, model_class, dataset):
        super()._load_internal_config_dict(model, model_class, dataset)
        plugin = properties_dir()
        for path in (plugin / "overall.yaml", plugin / "model" / f"{model}.yaml"):
            if path.is_file():
                self._update_internal_config_dict(str(path))

    def _set_default_parameters(self):
        final = self.final_config_dict
        if (
            final.get("MODEL_TYPE") == ModelType.SEQUENTIAL
            and not hasattr(self.model_class, "input_type")
            and final.get("loss_type") == "CE"
            and "train_neg_sample_args" not in self.external_config_dict
        ):
            final["train_neg_sample_args"] = None
        user_data_path = final.get("data_path") or "dataset/"
        metrics = self._default_cost_metrics()
        others = [name for name in metrics if not is_cost_metric(name)]
        # RecBole refuses to mix ranking and value metrics; cost metrics fit either kind.
        final["metrics"] = others if others else metrics
        try:
            super()._set_default_parameters()
        finally:
            final["metrics"] = metrics
        final["data_path"] = resolve_data_path(self.dataset, user_data_path,
                                               final.get("benchmark_filename"))
        check_atomic_files(self)

    def _default_cost_metrics(self):
        """``metrics`` as a list, with the cost metrics appended to RecBole's default when the
        user set no ``metrics`` and the model can be costed; an error when the user asked for
        cost metrics of a model that cannot be costed."""
        final = self.final_config_dict
        metrics = final.get("metrics")
        metrics = [metrics] if isinstance(metrics, str) else list(metrics or [])
        costable, reason = can_cost(self.model_class)
        if "metrics" not in self.external_config_dict:
            self.cost_metrics_by_default = costable
            return metrics + list(DEFAULT_COST_METRICS) if costable else metrics
        requested = [name for name in metrics if is_cost_metric(name)]
        if requested and not costable:
            raise ValueError(
                f"config key `metrics` asks for cost metrics {requested}, but the cost of model "
                f"[{self.model}] cannot be measured: {reason}. Remove them from `metrics`."
            )
        return metrics


def resolve_data_path(dataset, data_path, benchmark_filename=None):
    """Directory holding ``<dataset>.inter`` (or, for a pre-split dataset, a
    ``<dataset>.<part>.inter`` of ``benchmark_filename``): the user's ``data_path``, else
    RecBole's bundled copy. A missing part is named by the atomic-file checks.

    RecBole would instead try to download a missing dataset (which hangs or fails obscurely
    offline), and always uses its bundled ml-100k even when the user has their own.
    """
    tried = [Path(data_path) / dataset]
    if (_RECBOLE_EXAMPLES / dataset).is_dir():
        tried.append(_RECBOLE_EXAMPLES / dataset)
    names = [f"{dataset}.inter"] + [f"{dataset}.{part}.inter" for part in benchmark_filename or ()]
    for directory in tried:
        if any((directory / name).is_file() for name in names):
            return os.path.join(str(directory), "")
    raise FileNotFoundError(
        f"dataset [{dataset}] not found: no {' or '.join(names)} in "
        f"{', '.join(str(path) for path in tried)}. Set `data_path` to the folder that contains "
        f"a '{dataset}/' directory of RecBole atomic files, or use the bundled `--dataset=ml-100k`."
    )


def shipped_configs():
    """``{file name: path}`` of the ready-made configs in ``properties/`` (``main.yaml``,
    ``converge.yaml``; not the defaults file ``overall.yaml``)."""
    return {path.name: str(path) for path in sorted(properties_dir().glob("*.yaml"))
            if path.name != "overall.yaml"}


def resolve_config_files(file_list):
    """Paths of the user's config files: each path as given when it is a file; else, for a
    shipped config's name alone or as ``properties/<name>`` (e.g. ``main.yaml``), the shipped
    file, so the shipped configs work from any folder (logged). Anything else is a
    FileNotFoundError naming the file and listing the shipped configs."""
    paths = []
    for name in file_list or ():
        path = Path(name)
        shipped = shipped_configs().get(path.name)
        if path.is_file():
            paths.append(str(path))
        elif shipped is not None and path.parent in (Path("."), Path("properties")):
            getLogger().info(f"config file {name}: not in {os.getcwd()}, using the shipped "
                             f"{shipped}")
            paths.append(shipped)
        else:
            raise FileNotFoundError(
                f"config file {name!r} (--config_files / config_file_list) not found in "
                f"{os.getcwd()}; the shipped configs, usable by name from any folder, are "
                f"{', '.join(shipped_configs())}"
            )
    return paths


# check_value, default_config_file and properties_dir are re-exported: the public API names them
# here (recbole_fofa.default_config_file comes from this module).
__all__ = ["Config", "check_config", "check_keys", "check_value", "default_config_file",
           "properties_dir", "resolve_config_files", "resolve_data_path", "shipped_configs"]
