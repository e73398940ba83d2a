"""The cloud's side of a session, per user, batched: controller -> structure, mapper ->
generated parameters, and folding them into the kept blocks' weights (``folded`` sessions) or
not (``lowrank`` sessions ship the cores).

:func:`cloud_throughput` serves a batch of users the way a server would: one controller pass for
the batch, users grouped by structure, one mapper pass per structure, the fold batched in chunks
(:func:`~recbole_fofa.search.extract.fold_block`, the one formula), the tier weights sliced once
per structure and kept. It reports users per second and the analytic MACs per user
(:mod:`recbole_fofa.cost`), which the device MACs metric leaves out.
"""

from __future__ import annotations

import time
from typing import Dict

import numpy as np
import torch

from recbole_fofa import cost
from recbole_fofa.device.session import SESSION_VARIANTS
from recbole_fofa.model import Stage
from recbole_fofa.model.layers import group_by_structure, slice_factors
from recbole_fofa.search.extract import FOLDED, fold_block, subnet_state
from recbole_fofa.subnet import SubnetConfig

__all__ = ["serve_batch", "cloud_macs", "cloud_throughput"]


@torch.no_grad()
def serve_batch(model, item_seq, item_seq_len, variant: str = "folded", tiers=None,
                chunk: int = 128) -> Dict[str, int]:
    """Serve every user of the batch once; ``{structure key: users}``. ``tiers``: a dict the
    sliced tier weights are kept in between calls (as a server keeps them)."""
    if variant not in SESSION_VARIANTS:
        raise ValueError(f"variant {variant!r}: use one of {SESSION_VARIANTS}")
    tiers = {} if tiers is None else tiers
    z, mask, _ = model.eval_structure(item_seq, item_seq_len)
    if model.stage is Stage.SUPERNET:  # the full network for everyone, nothing generated
        return {model.shape.full().key: int(item_seq.size(0))}
    structures, kept, counts, order = group_by_structure(mask)
    served = {}
    start = 0
    for structure, blocks, count in zip(structures.tolist(), kept, counts):
        rows = order[start: start + count]
        start += count
        cfg = model.shape.from_mask(structure)
        gen = model.generated_params(z[rows], cfg)
        served[cfg.key] = count
        if variant == "lowrank" or gen is None:
            continue
        if cfg not in tiers:
            tiers[cfg] = subnet_state(model, cfg, items=False)
        state = tiers[cfg]
        for position, index in enumerate(blocks):
            names = [f"blocks.{position}.{name}" for name in FOLDED]
            factors = slice_factors(model.mapper.factors(index), cfg.widths[index])
            user = gen[index]
            for part in range(0, count, chunk):
                cut = slice(part, part + chunk)
                fold_block(*(state[name] for name in names), factors, user.g1[cut],
                           user.g2[cut], user.ln_scale[cut], user.ln_shift[cut])
    return served


def cloud_macs(model, served: Dict[str, int], variant: str = "folded") -> float:
    """Mean cloud MACs per user of a :func:`serve_batch` result: the controller, the mapper's
    heads and, for ``folded``, the fold (:func:`cost.merge_macs` per kept block)."""
    shape = model.shape
    if model.stage is Stage.SUPERNET:
        return 0.0
    total = 0.0
    for key, users in served.items():
        cfg = SubnetConfig.from_key(key)
        breakdown = shape.cost(cfg)
        macs = breakdown.controller_macs + int(breakdown.mapper_macs[0])
        if variant == "lowrank":
            macs -= sum(cost.merge_macs(shape.hidden_size, w, shape.mapper_rank)
                        for w in cfg.widths if w)
        total += users * macs
    return total / max(sum(served.values()), 1)


def cloud_throughput(model, item_seq, item_seq_len, variant: str = "folded", repeats: int = 3,
                     chunk: int = 128, threads: int | None = None) -> Dict:
    """Users per second of :func:`serve_batch` on the batch (the best of ``repeats`` timed
    passes after one warm-up pass that also slices the tiers), MACs per user, the threads
    (``threads``: torch's intra-op threads for the call, default as set)."""
    was_training = model.training
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    model.eval()
    tiers = {}
    try:
        served = serve_batch(model, item_seq, item_seq_len, variant, tiers, chunk)
        times = []
        for _ in range(max(int(repeats), 1)):
            start = time.perf_counter()
            serve_batch(model, item_seq, item_seq_len, variant, tiers, chunk)
            times.append(time.perf_counter() - start)
        used = torch.get_num_threads()
    finally:
        model.train(was_training)
        torch.set_num_threads(previous)
    users = int(item_seq.size(0))
    best = float(np.min(times))
    return {"variant": variant, "users": users, "seconds": best, "users_per_s": users / best,
            "cloud_macs_per_user": cloud_macs(model, served, variant),
            "structures": len(served), "torch_threads": used}
