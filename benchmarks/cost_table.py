"""Per-model on-device cost table for RecBole models of every type, and the mask-costing speed.

Usage: python benchmarks/cost_table.py [--max_len 50]
Builds each model at its RecBole default size on the bundled ml-100k (no training), measures it on
row 0 of its training data as the plugin's trainers do, and prints MACs (FLOPs = 2 x MACs), device
Params (item tables and other users' rows excluded), Blocks, the source of the numbers (analytic,
measured, element-wise only, lower bound) and what the count covers.
"""

import argparse
import sys
import time

import numpy as np

import recbole_fofa
from recbole_fofa import cost
from recbole_fofa.evaluator import measure
from recbole_fofa.quick_start import prepare
from recbole_fofa.subnet import SupernetShape
from recbole_fofa.table import format_table

_SEQ = {"inter": ["user_id", "item_id", "timestamp"]}
_CONTEXT = {"inter": ["user_id", "item_id", "rating", "timestamp"],
            "user": ["user_id", "age", "gender", "occupation"],
            "item": ["item_id", "release_year", "class"]}
_KG = {"inter": ["user_id", "item_id", "rating", "timestamp"],
       "kg": ["head_id", "relation_id", "tail_id"], "link": ["item_id", "entity_id"]}
# model -> extra config (RecBole's own ml-100k load_col for its type)
MODELS = {
    "SASRec": {}, "BERT4Rec": {"transform": "mask_itemseq"}, "GRU4Rec": {}, "Caser": {},
    "NARM": {}, "STAMP": {}, "NextItNet": {}, "LightSANs": {}, "FEARec": {}, "SHAN": {},
    "TransRec": {},
    "BPR": {}, "NeuMF": {}, "LightGCN": {}, "EASE": {},
    "FM": {"load_col": _CONTEXT}, "DeepFM": {"load_col": _CONTEXT}, "DCNV2": {"load_col": _CONTEXT},
    "CKE": {"load_col": _KG}, "KGCN": {"load_col": _KG},
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max_len", type=int, default=50)
    args = parser.parse_args()
    sys.argv = sys.argv[:1]  # RecBole's Config would read our flags as config keys
    rows = []
    for name, extra in MODELS.items():
        config = {"MAX_ITEM_LIST_LENGTH": args.max_len, "state": "ERROR", "load_col": _SEQ,
                  **extra}
        try:
            _, model, (train, _, _) = prepare(name, "ml-100k", config_dict=config)
            c = measure.model_cost(model, measure.one_row_interaction(train))
            note = f"uncounted: {', '.join(c.uncounted_ops)}" if c.uncounted_ops else ""
            rows.append((name, c.macs, c.params, c.blocks, c.source, c.covers, note))
        except cost.CostNotMeasurableError as err:
            rows.append((name, None, None, None, "not measurable", "", err.reason[:70]))
    print(f"\nRecBole defaults, MAX_ITEM_LIST_LENGTH={args.max_len}, ml-100k (FLOPs = 2 x MACs)")
    print(format_table(rows, ["model", "MACs/user", "Params", "Blocks", "source", "covers",
                              "note"]))

    masks = np.random.default_rng(0).random((10_000, 6)) < 0.5
    per_block = np.full(6, cost.block_macs(args.max_len, 64, 256, 2))
    start = time.perf_counter()
    cost.encoder_macs(masks, per_block)
    encoder_s = time.perf_counter() - start
    start = time.perf_counter()
    shape = SupernetShape(seq_len=args.max_len, hidden_size=64, inner_size=256, n_heads=2,
                          n_blocks=6, n_candidates=100)
    cost.forward_ofa_cost(shape, masks)
    full_s = time.perf_counter() - start
    print(f"\ncosting 10,000 masks of 6 blocks: encoder_macs {encoder_s * 1e3:.2f} ms, "
          f"full forward_ofa_cost breakdown {full_s * 1e3:.2f} ms")
    assert recbole_fofa.__version__


if __name__ == "__main__":
    main()
