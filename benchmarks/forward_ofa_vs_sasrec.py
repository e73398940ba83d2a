"""Forward-OFA vs RecBole's SASRec (6 and 2 layers) on the bundled ml-100k.

Usage: python benchmarks/forward_ofa_vs_sasrec.py [--epochs 10] [--supernet_epochs 5]
       [--key=value ...]
All three models share the split, the metrics and the settings of properties/main.yaml; SASRec
trains ``--epochs`` epochs, ForwardOFA ``--supernet_epochs`` supernet epochs plus
``--epochs - --supernet_epochs`` controller + mapper epochs, so all train the same number of epochs.
Extra ``--key=value`` flags are config entries for every model. Prints one table: test NDCG@10,
Hit@10, mean kept blocks, mean per-user encoder MACs (FLOPs = 2 x MACs), and the mean training
seconds per epoch of each stage.
"""

import argparse
import sys
import time
from pathlib import Path

from recbole_fofa import get_trainer
from recbole_fofa.quick_start import prepare

MAIN = str(Path(__file__).resolve().parent.parent / "properties" / "main.yaml")


def train_and_test(model, settings):
    """Fit, then test the best checkpoint; returns (test result, mean s/epoch by stage)."""
    config, net, (train, valid, test) = prepare(model, "ml-100k", [MAIN], settings)
    trainer = get_trainer(config["MODEL_TYPE"], model)(config, net)
    seconds = {}
    inner = trainer._train_epoch

    def timed(*args, **kwargs):  # time each epoch under the stage it belongs to
        stage = getattr(net, "stage", "train")
        start = time.perf_counter()
        out = inner(*args, **kwargs)
        seconds.setdefault(stage, []).append(time.perf_counter() - start)
        return out

    trainer._train_epoch = timed
    trainer.fit(train, valid, saved=True, show_progress=False)
    result = trainer.evaluate(test, load_best_model=True)
    return result, {stage: sum(v) / len(v) for stage, v in seconds.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--supernet_epochs", type=int, default=5)
    args, extra = parser.parse_known_args()
    overrides = dict(item[2:].split("=", 1) for item in extra if item.startswith("--"))
    sys.argv = sys.argv[:1]  # RecBole's Config would read our flags as config keys
    common = {"state": "INFO", "stopping_step": 100,
              "metrics": ["NDCG", "Hit", "MACs", "Blocks", "MACsRatio"], **overrides}
    runs = {
        "ForwardOFA-6": ("ForwardOFA", dict(common, n_blocks=6, epochs=args.epochs
                                            - args.supernet_epochs,
                                            supernet_epochs=args.supernet_epochs)),
        "SASRec-6": ("SASRec", dict(common, n_layers=6, epochs=args.epochs)),
        "SASRec-2": ("SASRec", dict(common, n_layers=2, epochs=args.epochs)),
    }
    rows = {}
    for label, (model, settings) in runs.items():
        rows[label] = train_and_test(model, settings)
        print(f"{label}: {dict(rows[label][0])} {rows[label][1]}", flush=True)
    reference = rows["SASRec-6"]
    print(f"\nml-100k, {args.epochs} epochs each (ForwardOFA: {args.supernet_epochs} supernet + "
          f"{args.epochs - args.supernet_epochs} adapt); MACs per user (FLOPs = 2 x MACs)")
    header = ["model", "NDCG@10", "Hit@10", "Blocks", "MACs", "MACs vs SASRec-6",
              "s/epoch supernet", "s/epoch adapt|train"]
    print(" | ".join(header))
    for label, (result, seconds) in rows.items():
        print(" | ".join([
            label, f"{result['ndcg@10']:.4f}", f"{result['hit@10']:.4f}", f"{result['blocks']:.2f}",
            f"{result['macs']:,.0f}", f"{result['macs'] / reference[0]['macs']:.3f}",
            f"{seconds.get('supernet', float('nan')):.1f}",
            f"{seconds.get('adapt', seconds.get('train', float('nan'))):.1f}",
        ]))


if __name__ == "__main__":
    main()
