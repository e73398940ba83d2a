"""recbole-fofa: Forward-OFA and once-for-all subnet search as a RecBole plugin.

Importing the package makes recbole 1.2.1 work on numpy 2 (see :mod:`recbole_fofa.compat`) and
exposes the plugin's Config, name resolution and quick start.
"""

from recbole_fofa import compat

compat.install_numpy_aliases()
compat.install_scipy_dok_update()
compat.import_recbole_models()

from recbole_fofa.config import Config, default_config_file  # noqa: E402
from recbole_fofa.evaluator import register_metrics  # noqa: E402
from recbole_fofa.quick_start import (  # noqa: E402
    load_data_and_model,
    objective_function,
    run,
    run_recbole_fofa,
    search_checkpoint,
)
from recbole_fofa.trainer import Trainer  # noqa: E402
from recbole_fofa.utils import get_model, get_trainer  # noqa: E402

register_metrics()

from recbole_fofa.version import __version__  # noqa: E402,F401 (the package's version)

__all__ = [
    "Config",
    "Trainer",
    "default_config_file",
    "get_model",
    "get_trainer",
    "load_data_and_model",
    "objective_function",
    "run",
    "run_recbole_fofa",
    "search_checkpoint",
]
