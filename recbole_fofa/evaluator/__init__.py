"""The plugin's evaluation: cost metrics registered with RecBole and the collector behind them."""

from recbole_fofa.evaluator.collector import CostCollector
from recbole_fofa.evaluator.metrics import (
    COST_METRICS,
    Blocks,
    MACs,
    MACsRatio,
    Params,
    register_metrics,
)

__all__ = ["COST_METRICS", "Blocks", "CostCollector", "MACs", "MACsRatio", "Params",
           "register_metrics"]
