"""Device numbers in the on-device runtime: session latency, peak memory, bytes, cloud side.

Usage: python benchmarks/device_latency.py [--checkpoint FILE | --tiny] [--output DIR]
           [--config_files properties/main.yaml] [--candidates 100] [--repeats 200]
           [--warmup 20] [--threads 1] [--structures N] [--byte_users 20]
           [--cloud_users 1000] [--cloud_threads N] [--users N]

Needs the ``device`` extra (``pip install 'recbole-fofa[device]'``). The ForwardOFA comes from
``--checkpoint`` (a saved ForwardOFA), or is trained first on ml-100k with ``--config_files``
(default the README's main job, properties/main.yaml; the checkpoint is kept under
``--output``/saved), or with ``--tiny`` is a tiny one trained for a minute on generated data
(a smoke test of the whole path; its numbers mean nothing).

Then :func:`recbole_fofa.device.measure.measure_device` on the test users: for each structure the
controller picks (the ``--structures`` most used; default all) and each session variant
(``folded``: the user's generated parameters folded into the weights the cloud ships;
``lowrank``: the cores, folded on the device), and for SASRec-6 and SASRec-2 at the same sizes:
the latency of one session (encode the history window, score ``--candidates`` cached
candidates, re-rank) in onnxruntime on ``--threads`` threads in a process of its own, median of
``--repeats``; peak memory; the real-savings ratio (latency ratio / MACs ratio) against
SASRec-6; the bytes of first and later sessions; the cloud's controller + mapper + folding over
``--cloud_users`` users in one batch on ``--cloud_threads`` torch threads. Prints the tables and
writes ``device.md`` and ``device.json`` to ``--output`` (default fofa-device/).

Run it alone on an idle machine: other work on the cores changes every timing.
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch
from distributed import write_tiny_dataset  # benchmarks/distributed.py, beside this script

from recbole_fofa.device.measure import measure_device
from recbole_fofa.device.runtime import require
from recbole_fofa.experiment import train
from recbole_fofa.quick_start import load_data_and_model, quiet_console

ROOT = Path(__file__).resolve().parents[1]
TINY = {"n_blocks": 3, "rt_len": 4, "mapper_rank": 4, "mapper_hidden": 16, "hidden_size": 16,
        "inner_size": 32, "n_heads": 2, "MAX_ITEM_LIST_LENGTH": 8, "supernet_epochs": 1,
        "epochs": 1, "train_batch_size": 64, "eval_batch_size": 256, "state": "ERROR",
        "show_progress": False, "metrics": ["NDCG", "Hit"], "topk": [10],
        "valid_metric": "NDCG@10", "load_col": {"inter": ["user_id", "item_id", "timestamp"]}}


def test_users(test_data):
    """(item_seq [N, L], item_seq_len [N]) of every test interaction."""
    seqs, lengths = [], []
    seq_field = test_data.config["ITEM_ID_FIELD"] + test_data.config["LIST_SUFFIX"]
    len_field = test_data.config["ITEM_LIST_LENGTH_FIELD"]
    for batch in test_data:
        interaction = batch[0]
        seqs.append(interaction[seq_field].cpu())
        lengths.append(interaction[len_field].cpu())
    return torch.cat(seqs), torch.cat(lengths)


def load_model(args, output):
    """(ForwardOFA in eval mode, test data, where it came from)."""
    if args.checkpoint:
        config_dict = {"trust_checkpoint": True} if args.trust_checkpoint else None
        _, model, _, _, _, test = load_data_and_model(args.checkpoint, config_dict)
        return model, test, args.checkpoint
    if args.tiny:
        root = Path(tempfile.mkdtemp(prefix="fofa-device-tiny-"))
        write_tiny_dataset(root)  # root/tiny/tiny.inter
        dataset = "tiny"
        config = dict(TINY, data_path=str(root), checkpoint_dir=str(root / "saved"))
        trained = train("ForwardOFA", dataset, config_dict=config)
        return trained.model, trained.test_data, f"a tiny ForwardOFA trained on {root}"
    files = args.config_files.split() if args.config_files else [
        str(ROOT / "properties" / "main.yaml")]
    config = {"checkpoint_dir": str(output / "saved")}
    trained = train("ForwardOFA", "ml-100k", config_file_list=files, config_dict=config)
    return (trained.model, trained.test_data,
            f"ForwardOFA trained on ml-100k with {files} (checkpoint "
            f"{trained.trainer.saved_model_file})")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=None, help="a saved ForwardOFA (.pth)")
    parser.add_argument("--trust_checkpoint", action="store_true",
                        help="unpickle the checkpoint fully (only for files you trust)")
    parser.add_argument("--tiny", action="store_true",
                        help="a tiny model on generated data: checks the path, not the numbers")
    parser.add_argument("--config_files", default=None,
                        help="without --checkpoint: the training config (default main.yaml)")
    parser.add_argument("--output", default="fofa-device")
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="the runtime's threads")
    parser.add_argument("--structures", type=int, default=None,
                        help="measure the N most used structures (default: all)")
    parser.add_argument("--byte_users", type=int, default=20)
    parser.add_argument("--cloud_users", type=int, default=1000)
    parser.add_argument("--cloud_threads", type=int, default=None,
                        help="torch threads of the cloud batch (default: torch's)")
    parser.add_argument("--users", type=int, default=None,
                        help="only the first N test users pick structures (default: all)")
    args = parser.parse_args(argv)
    require("onnx", "onnxscript", "onnxruntime")
    output = Path(args.output)
    with quiet_console():
        model, test, source = load_model(args, output)
        model = model.cpu().eval()
        seqs, lengths = test_users(test)
        if args.users:
            seqs, lengths = seqs[: args.users], lengths[: args.users]
        candidates = min(args.candidates, int(model.n_items) - 1)
        report = measure_device(model, seqs, lengths, n_candidates=candidates,
                                repeats=args.repeats, warmup=args.warmup, threads=args.threads,
                                max_structures=args.structures, byte_users=args.byte_users,
                                cloud_users=args.cloud_users, cloud_threads=args.cloud_threads)
    report.settings = {"model": source, **report.settings}
    files = report.save(output)
    print(report.markdown())
    print(f"written: {files['md']}, {files['json']}")
    return report


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    sys.exit(0 if main() is not None else 1)
