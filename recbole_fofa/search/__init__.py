"""Subnet search for many device budgets (issue 8): spaces, strategies and results.

``search(space, estimator, budgets_in_macs, strategy="auto")`` returns a :class:`SearchResult`
with one :class:`BudgetResult` per budget; build the space from a RecBole config with
:func:`build_space` and the settings with :meth:`SearchSettings.from_config`.
"""

from recbole_fofa.search.evolution import (
    AUTO_EVOLUTION,
    STRATEGIES,
    SearchProgress,
    SearchSettings,
    Strategy,
    search,
)
from recbole_fofa.search.result import BudgetResult, SearchResult, pareto_front
from recbole_fofa.search.space import (
    SPACES,
    BlockSpace,
    CompoundSpace,
    ElasticSpace,
    InfeasibleBudget,
    SearchSpace,
    build_space,
)

__all__ = [
    "AUTO_EVOLUTION",
    "BlockSpace",
    "BudgetResult",
    "CompoundSpace",
    "ElasticSpace",
    "InfeasibleBudget",
    "SPACES",
    "STRATEGIES",
    "SearchProgress",
    "SearchResult",
    "SearchSettings",
    "SearchSpace",
    "Strategy",
    "build_space",
    "pareto_front",
    "search",
]
