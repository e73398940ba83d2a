"""Sub-models as on-device graphs: ONNX through ``torch.onnx.export`` (the dynamo exporter), and
ExecuTorch ``.pte`` where the ``executorch`` extra installs.

Graphs of a :class:`~recbole_fofa.search.extract.SubnetModel` (a tier, one user's folded
sub-model, or a SASRec):

* the encoder (:func:`encoder_graph`): ``item_seq`` int64 [B, L] and ``item_seq_len`` int64 [B]
  -> ``user`` [B, d], the item table in the graph;
* the scoring variant (:class:`Scoring`): also ``candidates`` [C, d], the cached candidate
  embeddings -> ``scores`` [B, C];
* the session graph (:class:`SessionGraph`): what a device caches per structure. Its inputs are
  the device's history as rows of ``item_table`` [N, d] (its cached embeddings, row 0 padding),
  the ``candidates`` [C, d], and the user's tensors of the session (:func:`user_input_names`):
  ``folded``: the kept blocks' feed-forward weights with the user's generated parameters folded
  in; ``lowrank``: the generated cores and LayerNorm shifts, folded inside the graph onto the
  tier's weights and factors it holds; ``baked``: none (a tier, SASRec).

B, C and N are dynamic; L is the model's ``MAX_ITEM_LIST_LENGTH``. Graphs are stripped of the
exporter's debugging metadata (source lines, FX names), so their bytes are what a device
downloads. :func:`export_tiers` writes each tier's graphs and ``manifest.json``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import warnings
from pathlib import Path
from typing import Dict, List, Mapping, Sequence, Tuple

import torch
from torch import nn
from torch.func import functional_call

from recbole_fofa.device.runtime import require, runtime_versions
from recbole_fofa.model.layers import slice_factors
from recbole_fofa.search.extract import FOLDED, SubnetModel, extract, fold_block, subnet_state
from recbole_fofa.subnet import SubnetConfig

__all__ = [
    "FORMATS",
    "VARIANTS",
    "LOWRANK",
    "Scoring",
    "SessionGraph",
    "user_input_names",
    "session_graph",
    "plain_subnet",
    "from_sasrec",
    "example_inputs",
    "to_onnx",
    "to_pte",
    "encoder_graph",
    "scoring_graph",
    "export_graph",
    "export_user",
    "tiers_from_search",
    "export_tiers",
]

#: format -> file suffix
FORMATS = {"onnx": ".onnx", "executorch": ".pte"}
#: what a session graph takes from the cloud each session
VARIANTS = ("baked", "folded", "lowrank")
#: the generated tensors of one block a ``lowrank`` session ships (``BlockParams``' fields)
LOWRANK = ("g1", "g2", "ln_scale", "ln_shift")
#: upper bounds of the dynamic sizes in an ExecuTorch program (it needs them)
PTE_MAX = {"batch": 1024, "candidates": 100_000, "items": 1_000_000}


class Scoring(nn.Module):
    """A sub-model that scores cached candidates: (item_seq, item_seq_len, candidates [C, d]) ->
    scores [B, C] (``C*d`` MACs per user beside the encoder)."""

    def __init__(self, sub: SubnetModel):
        super().__init__()
        self.sub = sub

    def forward(self, item_seq, item_seq_len, candidates):
        return self.sub(item_seq, item_seq_len) @ candidates.t()


def user_input_names(n_kept: int, variant: str) -> List[str]:
    """Names of the user tensors a ``variant`` session graph of ``n_kept`` blocks takes, in
    order: ``blocks.<p>.<FOLDED name>`` (folded) or ``blocks.<p>.<LOWRANK name>`` (lowrank)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r}: use one of {VARIANTS}")
    names = {"baked": (), "folded": FOLDED, "lowrank": LOWRANK}[variant]
    return [f"blocks.{p}.{name}" for p in range(n_kept) for name in names]


class SessionGraph(nn.Module):
    """The graph a device caches for one structure: (item_seq [B, L] rows of item_table [N, d],
    item_seq_len [B], item_table, candidates [C, d], [user tensors]) -> scores [B, C].

    ``sub`` holds the structure's weights (its item table is unused: the device's cache is an
    input); ``variant`` says which tensors come per session (module docstring); ``factors``: the
    kept blocks' low-rank factors (u1, v1, u2, v2) at their widths, for ``lowrank``.
    """

    def __init__(self, sub: SubnetModel, variant: str = "baked",
                 factors: Sequence[Tuple[torch.Tensor, ...]] | None = None):
        super().__init__()
        self.sub = sub
        self.variant = variant
        self.n_kept = len(sub.blocks)
        self.user_names = user_input_names(self.n_kept, variant)
        if variant == "lowrank":
            if factors is None or len(factors) != self.n_kept:
                raise ValueError(f"a lowrank session graph needs the factors of its {self.n_kept}"
                                 " kept blocks")
            for p, block in enumerate(factors):
                for name, tensor in zip(("u1", "v1", "u2", "v2"), block):
                    self.register_buffer(f"factor_{p}_{name}", tensor.detach().clone())

    def _factors(self, p):
        return tuple(getattr(self, f"factor_{p}_{name}") for name in ("u1", "v1", "u2", "v2"))

    def forward(self, item_seq, item_seq_len, item_table, candidates, user=()):
        """Scores [B, C]; ``user``: a list of the session's user tensors (:attr:`user_names`
        order), none for ``baked``."""
        params = {"item_embedding.weight": item_table}
        if self.variant == "folded":
            params.update(zip(self.user_names, user))
        elif self.variant == "lowrank":
            for p in range(self.n_kept):
                names = [f"blocks.{p}.{name}" for name in FOLDED]
                base = [self.sub.get_parameter(name) for name in names]
                g1, g2, scale, shift = user[4 * p: 4 * p + 4]
                params.update(zip(names, fold_block(*base, self._factors(p), g1, g2, scale,
                                                    shift)))
        return functional_call(self.sub, params, (item_seq, item_seq_len)) @ candidates.t()


def _hidden_act(model) -> str:
    return model.blocks[0].feed_forward.hidden_act


def session_graph(model, cfg: SubnetConfig, variant: str) -> SessionGraph:
    """The :class:`SessionGraph` of structure ``cfg`` of a ForwardOFA ``model``: the tier's
    weights (no item table), and for ``lowrank`` the kept blocks' factors."""
    model.shape.validate(cfg)
    state = subnet_state(model, cfg, items=False)
    state["item_embedding.weight"] = torch.zeros(1, model.shape.hidden_size)  # an input instead
    sub = SubnetModel.from_state(state, cfg.mask, model.shape.head_size, _hidden_act(model),
                                 model.LayerNorm.eps)
    factors = None
    if variant == "lowrank":
        kept = [index for index, keep in enumerate(cfg.mask) if keep]
        factors = [slice_factors(model.mapper.factors(index), cfg.widths[index])
                   for index in kept]
        if any(f is None for f in factors):
            raise ValueError("a lowrank session graph needs the mapper's factors; this model's "
                             "mapper_mode is 'none' (use variant 'baked')")
    return SessionGraph(sub, variant, factors).eval()


def plain_subnet(shape, n_blocks: int, n_items: int, hidden_act: str = "gelu",
                 layer_norm_eps: float = 1e-12, seed: int = 0) -> SubnetModel:
    """A SASRec-``n_blocks`` at the sizes of supernet ``shape`` (full-width blocks), with random
    weights: the baseline a device runs, for bytes and latency (which depend on sizes only)."""
    cfg = SubnetConfig((shape.inner_size,) * n_blocks, (shape.n_heads,) * n_blocks)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        sub = SubnetModel(cfg, n_items, shape.seq_len, shape.hidden_size, shape.head_size,
                          hidden_act, layer_norm_eps)
    return sub.eval()


#: RecBole SASRec state names -> SubnetModel names, per layer
_SASREC_LAYER = {
    "multi_head_attention.query": "query",
    "multi_head_attention.key": "key",
    "multi_head_attention.value": "value",
    "multi_head_attention.dense": "attn_out",
    "multi_head_attention.LayerNorm": "attn_norm",
    "feed_forward.dense_1": "dense_1",
    "feed_forward.dense_2": "dense_2",
    "feed_forward.LayerNorm": "ffn_norm",
}


def from_sasrec(model) -> SubnetModel:
    """RecBole's SASRec as a :class:`SubnetModel` with its weights (every block kept), so that it
    exports exactly as a tier does."""
    state = {}
    for name, tensor in model.state_dict().items():
        if name.startswith(("item_embedding.", "position_embedding.", "LayerNorm.")):
            state[name] = tensor.detach().clone()
            continue
        match = re.match(r"trm_encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$", name)
        if match and match.group(2) in _SASREC_LAYER:
            layer, part, kind = match.groups()
            state[f"blocks.{layer}.{_SASREC_LAYER[part]}.{kind}"] = tensor.detach().clone()
    head_size = model.hidden_size // model.n_heads
    return SubnetModel.from_state(state, [True] * model.n_layers, head_size, model.hidden_act,
                                  model.layer_norm_eps)


# ----------------------------------------------------------------------------- exporting
def example_inputs(n_items: int, seq_len: int, batch: int = 2):
    """(item_seq [batch, seq_len], item_seq_len [batch]): right-padded ids in ``1..n_items-1``,
    lengths seq_len and seq_len - 1 (batch 2 keeps the batch dimension dynamic)."""
    ids = torch.arange(batch * seq_len, dtype=torch.int64).view(batch, seq_len) % (n_items - 1)
    lengths = torch.tensor([seq_len - (row % 2) for row in range(batch)], dtype=torch.int64)
    seq = (ids + 1).masked_fill(torch.arange(seq_len) >= lengths[:, None], 0)
    return seq, lengths


@contextlib.contextmanager
def _quiet():
    """The exporter's warnings and log lines (torchvision absent, deprecations) kept off the
    console."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _strip(proto, metadata: Mapping[str, str]):
    """Drop the exporter's debugging metadata and unused initializers; add ``metadata``."""
    graph = proto.graph
    for node in graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    del graph.value_info[:]
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    keep = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    for init in graph.initializer:
        del init.metadata_props[:]
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = str(key), str(value)
    return proto


def _dims(dynamic: Mapping[str, Mapping[int, str]], names, bounded=False, varargs=0):
    """torch.export dynamic shapes, positional, from ``{input: {axis: dim name}}``; the last
    ``varargs`` names are one list argument (static shapes)."""
    names = list(names)
    if varargs:
        return (*_dims(dynamic, names[:-varargs], bounded), [None] * varargs)
    dims = {}
    out = []
    for name in names:
        axes = dynamic.get(name)
        if not axes:
            out.append(None)
            continue
        spec = {}
        for axis, dim in axes.items():
            if dim not in dims:
                dims[dim] = (torch.export.Dim(dim, min=1, max=PTE_MAX[dim]) if bounded
                             else torch.export.Dim(dim))
            spec[axis] = dims[dim]
        out.append(spec)
    return tuple(out)


def to_onnx(module: nn.Module, args, input_names: Sequence[str], output_names: Sequence[str],
            dynamic: Mapping[str, Mapping[int, str]], metadata: Mapping[str, str] = None,
            varargs: int = 0):
    """``module`` as an ``onnx.ModelProto`` through the dynamo exporter, inputs named
    ``input_names`` (dynamic axes ``{input: {axis: name}}``; the last ``varargs`` inputs are
    one list argument), stripped (module docstring)."""
    require("onnx", "onnxscript")
    with torch.no_grad(), _quiet():
        program = torch.onnx.export(
            module.eval(), tuple(args), None, dynamo=True, input_names=list(input_names),
            output_names=list(output_names),
            dynamic_shapes=_dims(dynamic, input_names, varargs=varargs),
            optimize=True, verbose=False,
        )
    return _strip(program.model_proto, metadata or {})


def to_pte(module: nn.Module, args, input_names: Sequence[str],
           dynamic: Mapping[str, Mapping[int, str]], varargs: int = 0) -> bytes:
    """``module`` as an ExecuTorch program (XNNPACK-delegated where it can be), serialized; the
    dynamic sizes are bounded by :data:`PTE_MAX`."""
    require("executorch")
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    with torch.no_grad(), _quiet():
        program = torch.export.export(module.eval(), tuple(args),
                                      dynamic_shapes=_dims(dynamic, input_names, True, varargs))
        lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
        return bytes(lowered.to_executorch().buffer)


ENCODER_INPUTS = ("item_seq", "item_seq_len")
_BATCH = {"item_seq": {0: "batch"}, "item_seq_len": {0: "batch"}}


def _export(module, args, inputs, outputs, dynamic, fmt, metadata, varargs=0) -> bytes:
    if fmt == "onnx":
        proto = to_onnx(module, args, inputs, outputs, dynamic, metadata, varargs)
        return proto.SerializeToString()
    if fmt == "executorch":
        return to_pte(module, args, inputs, dynamic, varargs)
    raise ValueError(f"format {fmt!r}: use one of {sorted(FORMATS)}")


def encoder_graph(sub: SubnetModel, fmt: str = "onnx", metadata=None) -> bytes:
    """The encoder of ``sub``: (item_seq, item_seq_len) -> user [B, d], serialized."""
    n_items, seq_len = sub.item_embedding.num_embeddings, sub.position_embedding.num_embeddings
    return _export(sub, example_inputs(n_items, seq_len), ENCODER_INPUTS, ("user",), _BATCH, fmt,
                   metadata)


def scoring_graph(sub: SubnetModel, fmt: str = "onnx", metadata=None) -> bytes:
    """The scoring variant of ``sub``: (item_seq, item_seq_len, candidates [C, d]) -> scores
    [B, C], serialized."""
    n_items, seq_len = sub.item_embedding.num_embeddings, sub.position_embedding.num_embeddings
    candidates = sub.item_embedding.weight.detach()[1:4].clone()
    return _export(Scoring(sub), (*example_inputs(n_items, seq_len), candidates),
                   (*ENCODER_INPUTS, "candidates"), ("scores",),
                   {**_BATCH, "candidates": {0: "candidates"}}, fmt, metadata)


SESSION_INPUTS = (*ENCODER_INPUTS, "item_table", "candidates")


def export_graph(graph: SessionGraph, user_example: Sequence[torch.Tensor], fmt: str = "onnx",
                 metadata=None) -> bytes:
    """A :class:`SessionGraph`, serialized; ``user_example``: tensors shaped like one session's
    user tensors (values do not matter)."""
    seq_len = graph.sub.position_embedding.num_embeddings
    d = graph.sub.position_embedding.embedding_dim
    table = torch.randn(seq_len + 3, d)
    seq, lengths = example_inputs(seq_len + 3, seq_len)
    dynamic = {**_BATCH, "item_table": {0: "items"}, "candidates": {0: "candidates"}}
    user = [tensor.detach().clone() for tensor in user_example]
    return _export(graph, (seq, lengths, table, table[1:4].clone(), *([user] if user else [])),
                   (*SESSION_INPUTS, *graph.user_names), ("scores",), dynamic, fmt, metadata,
                   varargs=len(graph.user_names))


def export_user(model, cfg: SubnetConfig, item_seq, item_seq_len=None, scoring: bool = False,
                fmt: str = "onnx") -> bytes:
    """One user's sub-model (``extract`` with that user's generated parameters folded in) as a
    serialized encoder graph, or its scoring variant."""
    sub = extract(model, cfg, item_seq, item_seq_len)
    metadata = {"recbole_fofa.config": cfg.key, "recbole_fofa.user_specific": "true"}
    return (scoring_graph if scoring else encoder_graph)(sub, fmt, metadata)


# ----------------------------------------------------------------------------- tiers
def tiers_from_search(result, budgets: Sequence, shape) -> List[Tuple[object, object]]:
    """``[(budget as given, BudgetResult)]`` of a ``SearchResult`` for ``budgets`` (fractions or
    ``"<n> MACs"``), matched by their MACs."""
    by_macs = {round(b.budget_macs, 3): b for b in result.budgets}
    out = []
    for budget in budgets:
        macs = round(shape.budget_macs(budget, "export_budgets"), 3)
        if macs not in by_macs:
            raise ValueError(f"budget {budget!r} ({macs:,.0f} MACs) is not in the search result "
                             f"(budgets {sorted(by_macs)})")
        out.append((budget, by_macs[macs]))
    return out


def _file_label(budget) -> str:
    return re.sub(r"[^0-9A-Za-z.]+", "", str(budget)) or "tier"


def _io(name, dtype, shape):
    return {"name": name, "dtype": dtype, "shape": list(shape)}


def export_tiers(model, tiers: Sequence[Tuple[object, object]], output_dir, fmt: str = "onnx",
                 source: str = "") -> Dict:
    """Each tier's sub-network as an encoder graph and a scoring graph in ``output_dir``, and
    ``output_dir/manifest.json``; returns the manifest.

    ``tiers``: ``[(budget, SubnetConfig or BudgetResult)]`` (:func:`tiers_from_search`); a
    config shared by several budgets is exported once. ``source`` (e.g. the checkpoint) is
    recorded. Per tier the manifest gives ``budget``, ``budget_macs``, ``config`` (the
    SubnetConfig key), ``macs`` (encoder, one sequence of L items), ``params`` (besides the item
    table), ``graph`` / ``graph_bytes`` and ``scoring_graph`` / ``scoring_graph_bytes``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: use one of {sorted(FORMATS)}")
    shape = model.shape
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    suffix = FORMATS[fmt]
    written: Dict[SubnetConfig, Tuple[str, int, str, int]] = {}
    entries = []
    for budget, tier in tiers:
        cfg = getattr(tier, "config", tier)
        if cfg not in written:
            sub = extract(model, cfg)
            metadata = {"recbole_fofa.config": cfg.key}
            name = f"tier-{_file_label(budget)}"
            files = []
            for graph, kind in ((encoder_graph, ""), (scoring_graph, "-scores")):
                data = graph(sub, fmt, metadata)
                path = output_dir / f"{name}{kind}{suffix}"
                path.write_bytes(data)
                files += [path.name, len(data)]
            written[cfg] = tuple(files)
        graph, graph_bytes, scores, scores_bytes = written[cfg]
        breakdown = shape.cost(cfg)
        entry = {
            "budget": budget,
            "budget_macs": float(shape.budget_macs(budget, "export_budgets")),
            "config": cfg.key,
            "kept_blocks": cfg.n_kept,
            "macs": int(breakdown.encoder_macs[0]),
            "params": int(breakdown.encoder_params[0]),
            "graph": graph,
            "graph_bytes": graph_bytes,
            "scoring_graph": scores,
            "scoring_graph_bytes": scores_bytes,
        }
        for name in ("valid_score", "feasible"):
            if hasattr(tier, name):
                entry[name] = getattr(tier, name)
        entries.append(entry)
    d, L = shape.hidden_size, shape.seq_len
    inputs = [_io("item_seq", "int64", ["batch", L]), _io("item_seq_len", "int64", ["batch"])]
    manifest = {
        "format": fmt,
        "inputs": inputs,
        "output": _io("user", "float32", ["batch", d]),
        "scoring": {"inputs": inputs + [_io("candidates", "float32", ["candidates", d])],
                    "output": _io("scores", "float32", ["batch", "candidates"]),
                    "macs_per_candidate": d},
        "item_table_params": int(model.item_embedding.weight.numel()),
        "notes": "macs: encoder multiply-accumulates of one sequence of L items (the scoring "
                 "graph adds C*d); params: weights besides the item table, which the graph "
                 "also holds; item ids are RecBole's internal ids (0 = padding)",
        "supernet": {"n_blocks": shape.n_blocks, "hidden_size": d, "inner_size":
                     shape.inner_size, "n_heads": shape.n_heads, "seq_len": L,
                     "full_macs": shape.full_macs(), "n_items": int(model.n_items)},
        "source": str(source),
        "versions": runtime_versions(),
        "tiers": entries,
    }
    (output_dir / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest
