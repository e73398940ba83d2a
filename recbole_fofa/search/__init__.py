"""Subnet search: spaces, strategies, estimator, results and extraction of sub-networks."""
