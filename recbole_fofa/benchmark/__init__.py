"""The multi-seed benchmark of ForwardOFA, its ablations and RecBole's baselines."""
