"""The multi-seed benchmark of ForwardOFA, its ablations and RecBole's baselines."""

from recbole_fofa.benchmark.runner import default_variants, resolve_variants, run_benchmark

__all__ = ["default_variants", "resolve_variants", "run_benchmark"]
