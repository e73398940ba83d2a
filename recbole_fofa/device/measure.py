"""The device numbers of a trained ForwardOFA, in one call: :func:`measure_device`.

* which structures the controller picks for the given users, and how many users each serves;
* per structure and session variant (``folded``, ``lowrank``), and for SASRec-6 / SASRec-2 at
  the same sizes (``baked`` graphs, :func:`~recbole_fofa.device.export.plain_subnet`): the
  session latency in onnxruntime on one thread in a process of its own (encoding the window and
  re-ranking ``C`` candidates, :mod:`~recbole_fofa.device.latency`), its peak memory, the graph's
  bytes, the device MACs (encoder + ``C*d`` scoring, + the fold for ``lowrank``) and the
  real-savings ratio against SASRec-6: (latency ratio) / (MACs ratio); a Forward-OFA row per
  variant weights the structures by their users;
* the bytes of first and later sessions (:func:`~recbole_fofa.device.session.run_sessions`) next
  to shipping a whole SASRec graph, and the runtime's scores against PyTorch's;
* the cloud side, batched (:func:`~recbole_fofa.device.cloud.cloud_throughput`).

Run it alone on an idle machine (``benchmarks/device_latency.py``); timings on a shared machine
mean little.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import torch

from recbole_fofa import cost
from recbole_fofa.device.cloud import cloud_throughput
from recbole_fofa.device.export import SessionGraph, export_graph, plain_subnet
from recbole_fofa.device.latency import measure_graph
from recbole_fofa.device.runtime import ort_session, runtime_versions
from recbole_fofa.device.session import (
    SESSION_VARIANTS,
    DeployedCloud,
    DeviceRuntime,
    GraphStore,
    run_sessions,
    user_tensors,
)
from recbole_fofa.model import Stage
from recbole_fofa.search.extract import extract
from recbole_fofa.subnet import SubnetConfig
from recbole_fofa.table import format_table

__all__ = ["DeviceReport", "structures_picked", "measure_device", "LATENCY_COLUMNS",
           "BYTES_COLUMNS", "CLOUD_COLUMNS"]

LATENCY_COLUMNS = ["model", "structure", "variant", "users", "kept_blocks", "device_macs",
                   "graph_bytes", "latency_ms", "p90_ms", "peak_bytes", "latency_ratio",
                   "macs_ratio", "savings_ratio", "max_rel_diff"]
BYTES_COLUMNS = ["model", "variant", "users", "first_session_bytes", "later_session_bytes",
                 "graph_bytes", "user_weights_bytes", "candidates_bytes", "history_bytes",
                 "up_bytes"]
CLOUD_COLUMNS = ["variant", "users", "seconds", "users_per_s", "cloud_macs_per_user",
                 "structures", "torch_threads"]


@dataclass
class DeviceReport:
    """Rows of the latency, bytes and cloud tables, findings and settings."""

    latency: List[Dict] = field(default_factory=list)
    bytes: List[Dict] = field(default_factory=list)
    cloud: List[Dict] = field(default_factory=list)
    findings: List[str] = field(default_factory=list)
    settings: Dict = field(default_factory=dict)

    def markdown(self) -> str:
        lines = ["# device", ""]
        lines += [f"- {key}: {value}" for key, value in self.settings.items()]
        for title, rows, columns in (
                ("Session latency in the runtime (one thread)", self.latency, LATENCY_COLUMNS),
                ("Bytes per session", self.bytes, BYTES_COLUMNS),
                ("Cloud side, batched", self.cloud, CLOUD_COLUMNS)):
            if rows:
                lines += ["", f"## {title}", "", format_table(rows, columns, style="markdown")]
        lines += [""] + [f"- {finding}" for finding in self.findings]
        return "\n".join(lines) + "\n"

    def save(self, output_dir) -> Dict[str, str]:
        """``device.md`` and ``device.json`` under ``output_dir``; their paths."""
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        md, js = output_dir / "device.md", output_dir / "device.json"
        md.write_text(self.markdown())
        js.write_text(json.dumps(asdict(self), indent=1, default=str) + "\n")
        return {"md": str(md), "json": str(js)}


@torch.no_grad()
def structures_picked(model, item_seq, item_seq_len, batch: int = 1024):
    """``[(SubnetConfig, users, first row)]`` of the structures the controller picks for the
    users (the full network in the supernet stage), most users first."""
    if model.stage is Stage.SUPERNET:
        return [(model.shape.full(), int(item_seq.size(0)), 0)]
    was_training = model.training
    model.eval()
    try:
        masks = torch.cat([model.eval_structure(item_seq[i:i + batch],
                                                item_seq_len[i:i + batch])[1].cpu()
                           for i in range(0, item_seq.size(0), batch)])
    finally:
        model.train(was_training)
    picked: Dict[SubnetConfig, List[int]] = {}
    for row, mask in enumerate(masks.tolist()):
        cfg = model.shape.from_mask(mask)
        entry = picked.setdefault(cfg, [0, row])
        entry[0] += 1
    return sorted(((cfg, n, row) for cfg, (n, row) in picked.items()), key=lambda t: -t[1])


def _feeds(table_source: torch.Tensor, seq, length, candidate_ids):
    """A device's inputs: its cache (history and candidates) as the item table, row 0 padding;
    ``item_seq`` as rows of it; the candidates' embeddings."""
    seq = np.asarray(seq, dtype=np.int64).reshape(-1)
    ids = np.unique(np.concatenate([seq[seq != 0], np.asarray(candidate_ids)]))
    emb = table_source.detach().cpu().numpy()[ids].astype(np.float32)
    table = np.concatenate([np.zeros((1, emb.shape[1]), np.float32), emb])

    def rows(x):
        x = np.asarray(x, dtype=np.int64)
        return np.where(x == 0, 0, np.searchsorted(ids, x) + 1)

    return {"item_seq": rows(seq)[None], "item_seq_len": np.array([int(length)], np.int64),
            "item_table": table, "candidates": table[rows(candidate_ids)]}


def _rel_diff(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def _torch_scores(graph: SessionGraph, feeds, user) -> np.ndarray:
    with torch.no_grad():
        args = [torch.as_tensor(feeds[k]) for k in ("item_seq", "item_seq_len", "item_table",
                                                    "candidates")]
        return graph(*args, [torch.as_tensor(np.asarray(u)) for u in user]).numpy()


def _ort_reference(model, cfg, seq, length, candidate_ids) -> np.ndarray:
    """PyTorch scores of the user's extracted sub-model (``extract``) on the candidates."""
    sub = extract(model, cfg, seq, length)
    with torch.no_grad():
        emb = model.item_embedding.weight.detach().cpu()[torch.as_tensor(candidate_ids)]
        return (sub(torch.as_tensor(seq)[None], torch.tensor([int(length)])) @ emb.t()).numpy()


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle
                     if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}"


def measure_device(model, item_seq, item_seq_len, n_candidates: int = 100,
                   variants: Sequence[str] = SESSION_VARIANTS, baselines: Sequence[int] = (6, 2),
                   repeats: int = 200, warmup: int = 20, threads: int = 1,
                   max_structures: int | None = None, byte_users: int = 20,
                   cloud_users: int = 1000, cloud_threads: int | None = None,
                   seed: int = 0) -> DeviceReport:
    """The device report of ForwardOFA ``model`` on users ``item_seq`` [N, L] /
    ``item_seq_len`` [N] (module docstring). ``max_structures``: measure only the most used
    ones (the rest still count in ``users``); ``byte_users``: users whose two sessions are
    played for the bytes; ``cloud_users``: the cloud batch (users repeated to reach it), run
    on ``cloud_threads`` torch threads (default: as set)."""
    item_seq, item_seq_len = item_seq.cpu(), item_seq_len.cpu()
    shape = model.shape
    n_items, d = int(model.n_items), shape.hidden_size
    if not 1 <= n_candidates <= n_items - 1:
        raise ValueError(f"n_candidates = {n_candidates}: use 1 .. {n_items - 1}")
    rng = np.random.default_rng(seed)
    candidates = rng.choice(np.arange(1, n_items), size=n_candidates, replace=False)
    model.eval()
    picked = structures_picked(model, item_seq, item_seq_len)
    total_users = sum(n for _, n, _ in picked)
    measured = picked if max_structures is None else picked[:max_structures]
    scoring = int(cost.scoring_macs(n_candidates, d))
    supernet = model.stage is Stage.SUPERNET
    report = DeviceReport()

    def timed(graph_bytes, feeds):
        return measure_graph(graph_bytes, feeds, repeats, warmup, threads)

    # baselines first: SASRec-6 is the reference of every ratio
    act = model.blocks[0].feed_forward.hidden_act
    base_feeds = _feeds(model.item_embedding.weight, item_seq[0], item_seq_len[0], candidates)
    reference = None
    sasrec_graph_bytes = {}
    for k in baselines:
        graph = SessionGraph(plain_subnet(shape, k, n_items, act, model.LayerNorm.eps), "baked")
        data = export_graph(graph, [])
        sasrec_graph_bytes[k] = len(data)
        result = timed(data, base_feeds)
        macs = k * int(shape.block_macs()[0]) + scoring
        ort_scores = ort_session(data).run(["scores"], base_feeds)[0]
        row = {"model": f"SASRec-{k}", "structure": f"{k} full blocks", "variant": "baked",
               "users": None, "kept_blocks": k, "device_macs": macs, "graph_bytes": len(data),
               **result, "max_rel_diff": _rel_diff(ort_scores, _torch_scores(graph, base_feeds,
                                                                              []))}
        if k == 6 or (6 not in baselines and (reference is None or k > reference["kept_blocks"])):
            reference = row
        report.latency.append(row)

    store = GraphStore(model)
    for variant in (["baked"] if supernet else list(variants)):
        rows = []
        for cfg, users, first in measured:
            seq, length = item_seq[first], int(item_seq_len[first])
            feeds = _feeds(model.item_embedding.weight, seq, length, candidates)
            z, _ = model.code_and_logits(seq[None], torch.tensor([length]))
            gen = model.generated_params(z, cfg)
            user = user_tensors(model, cfg, gen, variant) if not supernet else {}
            feeds.update({k: v.numpy() for k, v in user.items()})
            data = store.graph(cfg, variant)
            result = timed(data, feeds)
            ort_scores = ort_session(data).run(["scores"], feeds)[0]
            macs = int(shape.cost(cfg).encoder_macs[0]) + scoring
            if variant == "lowrank":
                macs += sum(cost.merge_macs(d, w, shape.mapper_rank) for w in cfg.widths if w)
            rows.append({"model": "Forward-OFA", "structure": cfg.key, "variant": variant,
                         "users": users, "kept_blocks": cfg.n_kept, "device_macs": macs,
                         "graph_bytes": len(data), **result,
                         "max_rel_diff": _rel_diff(ort_scores, _ort_reference(
                             model, cfg, seq, length, candidates))})
        weights = np.array([row["users"] for row in rows], dtype=float)
        weights /= weights.sum()
        summary = {"model": "Forward-OFA (users' mean)", "structure": f"{len(rows)} of "
                   f"{len(picked)} structures", "variant": variant,
                   "users": int(sum(row["users"] for row in rows)),
                   "kept_blocks": float(weights @ [r["kept_blocks"] for r in rows]),
                   "device_macs": float(weights @ [r["device_macs"] for r in rows]),
                   "latency_ms": float(weights @ [r["latency_ms"] for r in rows]),
                   "peak_bytes": max((r["peak_bytes"] or 0) for r in rows),
                   "max_rel_diff": max(r["max_rel_diff"] for r in rows)}
        report.latency += rows + [summary]

    for row in report.latency:
        if reference is not None and row.get("latency_ms") is not None:
            row["latency_ratio"] = row["latency_ms"] / reference["latency_ms"]
            row["macs_ratio"] = row["device_macs"] / reference["device_macs"]
            row["savings_ratio"] = row["latency_ratio"] / row["macs_ratio"]

    # bytes: two sessions per user, as deployed
    users = rng.choice(len(item_seq), size=min(byte_users, len(item_seq)), replace=False)
    later_candidates = rng.choice(np.arange(1, n_items), size=n_candidates, replace=False)
    shared = {}
    for variant in (["folded"] if supernet else list(variants)):
        cloud = DeployedCloud(model, variant, store)
        firsts, laters, parts, diffs = [], [], {}, []
        for user in users:
            device, (first, later) = run_sessions(cloud, item_seq[user], item_seq_len[user],
                                                  [candidates, later_candidates],
                                                  runtime=DeviceRuntime(threads))
            firsts.append(first.bytes("down"))
            laters.append(later.bytes("down"))
            for name in ("graph", "user_weights", "candidates", "history"):
                parts.setdefault(name, []).append(first.bytes("down", name))
            parts.setdefault("up", []).append(first.bytes("up"))
            cfg = SubnetConfig.from_key(later.key.split("/")[0])
            diffs.append(_rel_diff(device.scores()[None], _ort_reference(
                model, cfg, item_seq[user], int(item_seq_len[user]), later_candidates)))
        mean = {name: float(np.mean(values)) for name, values in parts.items()}
        shared = {"candidates": mean["candidates"], "history": mean["history"],
                  "up": mean["up"]}
        report.bytes.append({
            "model": "Forward-OFA", "variant": variant, "users": len(users),
            "first_session_bytes": float(np.mean(firsts)),
            "later_session_bytes": float(np.mean(laters)),
            "graph_bytes": mean["graph"], "user_weights_bytes": mean["user_weights"],
            "candidates_bytes": mean["candidates"], "history_bytes": mean["history"],
            "up_bytes": mean["up"], "max_rel_diff": max(diffs)})
    for k, size in sasrec_graph_bytes.items():
        report.bytes.append({
            "model": f"SASRec-{k}", "variant": "baked", "users": len(users),
            "first_session_bytes": size + shared["candidates"] + shared["history"],
            "later_session_bytes": shared["candidates"], "graph_bytes": size,
            "user_weights_bytes": 0, "candidates_bytes": shared["candidates"],
            "history_bytes": shared["history"], "up_bytes": 0})

    # the cloud, batched
    repeat = -(-cloud_users // len(item_seq))
    batch_seq = item_seq.repeat(repeat, 1)[:cloud_users]
    batch_len = item_seq_len.repeat(repeat)[:cloud_users]
    for variant in (["folded"] if supernet else list(variants)):
        report.cloud.append(cloud_throughput(model, batch_seq, batch_len, variant,
                                             threads=cloud_threads))

    report.settings = {
        "machine": _machine(),
        "runtime": f"onnxruntime {runtime_versions().get('onnxruntime')}, CPU execution "
                   f"provider, {threads} intra-op thread(s), one inter-op thread, sequential, "
                   "a process of its own per graph",
        "versions": runtime_versions(),
        "session": f"one run of the session graph (batch 1, L={shape.seq_len}, C={n_candidates}"
                   " candidates) + argsort of the scores; median of "
                   f"{repeats} runs after {warmup} warm-up runs",
        "device_macs": "encoder of L items + C*d scoring (+ the fold for lowrank: the device "
                       "folds the cores onto its tier weights)",
        "peak_bytes": "growth of the probe process's peak resident set (VmHWM reset before "
                      "the graph loads) while loading and running the graph",
        "supernet": f"{shape.n_blocks} blocks, d={d}, d_ff={shape.inner_size}, "
                    f"{shape.n_heads} heads, L={shape.seq_len}, rt_len={model.rt_len}, "
                    f"mapper rank {shape.mapper_rank}, stage {model.stage.value}",
        "users": f"{total_users} (structures picked: {len(picked)}; measured: "
                 f"{len(measured)})",
        "SASRec-k": "the same sizes, k full blocks, random weights (latency and bytes depend "
                    "on sizes only), exported as a baked session graph",
        "bytes": "lengths of the serialized messages (ONNX SequenceProto of named tensors; "
                 "graphs: the stripped ONNX file); a later session: the same device and "
                 "structure, new candidates, its history cached",
        "cloud": f"{cloud_users} users in one batch (test users repeated as needed), best of 3 "
                 "passes after a warm-up pass",
    }
    report.settings["reference"] = None if reference is None else reference["model"]
    report.findings = _findings(report)
    return report


def _findings(report: DeviceReport) -> List[str]:
    out = []
    reference = report.settings.get("reference")
    for row in report.latency:
        if row["model"].startswith("Forward-OFA (") and row.get("savings_ratio") is not None:
            verdict = "meets" if row["savings_ratio"] <= 1.1 else "misses"
            out.append(
                f"{row['variant']}: the users' mean session takes {row['latency_ms']:.4g} ms "
                f"for {row['device_macs']:,.0f} MACs, {row['latency_ratio']:.3f} x "
                f"{reference}'s latency at {row['macs_ratio']:.3f} x its MACs: a device "
                f"real-savings ratio of {row['savings_ratio']:.3f} ({verdict} the goal <= 1.1 "
                "against SASRec-6).")
    folded = {row["variant"]: row for row in report.bytes if row["model"] == "Forward-OFA"}
    for variant, row in folded.items():
        out.append(
            f"{variant}: a first session downloads {row['first_session_bytes']:,.0f} bytes "
            f"(graph {row['graph_bytes']:,.0f}), a later one {row['later_session_bytes']:,.0f} "
            f"(user weights {row['user_weights_bytes']:,.0f} + candidates "
            f"{row['candidates_bytes']:,.0f}); runtime scores vs PyTorch: max relative "
            f"difference {row['max_rel_diff']:.2e}.")
    for row in report.cloud:
        verdict = "meets" if row["users_per_s"] >= 10_000 else "misses"
        out.append(f"cloud ({row['variant']}): {row['users_per_s']:,.0f} users/s on "
                   f"{row['torch_threads']} torch threads, {row['cloud_macs_per_user']:,.0f} "
                   f"MACs per user ({verdict} the goal >= 10,000 users/s).")
    return out
