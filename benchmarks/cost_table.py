"""Per-model on-device cost table for RecBole's sequential baselines, and the mask-costing speed.

Usage: python benchmarks/cost_table.py [--max_len 50]
Builds each model at its RecBole default size on the bundled ml-100k (no training) and prints
MACs (FLOPs = 2 x MACs), device Params (item tables excluded), Blocks and where the count comes
from (analytic formula, or FlopCounterMode measurement).
"""

import argparse
import sys
import time

import numpy as np

import recbole_fofa
from recbole_fofa import cost
from recbole_fofa.quick_start import prepare

MODELS = ["SASRec", "BERT4Rec", "GRU4Rec", "Caser", "NARM", "STAMP", "NextItNet", "LightSANs",
          "FEARec"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max_len", type=int, default=50)
    args = parser.parse_args()
    sys.argv = sys.argv[:1]  # RecBole's Config would read our flags as config keys
    rows = []
    for name in MODELS:
        extra = {"transform": "mask_itemseq"} if name == "BERT4Rec" else {}
        try:
            _, model, _ = prepare(name, "ml-100k", config_dict={
                "MAX_ITEM_LIST_LENGTH": args.max_len, "state": "ERROR", **extra})
            c = cost.model_cost(model)
            note = f"lower bound: {', '.join(c.uncounted_ops)} uncounted" if c.uncounted_ops else ""
            rows.append((name, f"{c.macs:,}", f"{c.params:,}", str(c.blocks), c.source, note))
        except Exception as err:  # report and go on: the table should show every model
            rows.append((name, "-", "-", "-", "not measurable", f"{type(err).__name__}: {err}"))
    header = ("model", "MACs/user", "Params", "Blocks", "source", "note")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print(f"\nRecBole defaults, MAX_ITEM_LIST_LENGTH={args.max_len}, ml-100k (FLOPs = 2 x MACs)")
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)))

    masks = np.random.default_rng(0).random((10_000, 6)) < 0.5
    per_block = np.full(6, cost.block_macs(args.max_len, 64, 256, 2))
    start = time.perf_counter()
    cost.encoder_macs(masks, per_block)
    encoder_s = time.perf_counter() - start
    start = time.perf_counter()
    cost.forward_ofa_cost(masks, seq_len=args.max_len, hidden_size=64, inner_size=256, n_heads=2,
                          n_blocks=6, rt_len=10, extractor="gru", rank=8, mapper_hidden=64,
                          mapper_mode="parallel", n_candidates=100)
    full_s = time.perf_counter() - start
    print(f"\ncosting 10,000 masks of 6 blocks: encoder_macs {encoder_s * 1e3:.2f} ms, "
          f"full forward_ofa_cost breakdown {full_s * 1e3:.2f} ms")
    assert recbole_fofa.__version__


if __name__ == "__main__":
    main()
