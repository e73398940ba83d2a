"""The cloud-device session protocol as it would be deployed: graphs are downloaded once per
structure and cached, a session ships only the user's weights and the candidates.

Every message is serialized bytes (:func:`pack`: an ONNX ``SequenceProto`` of named tensors; a
graph is its ONNX file), and the byte counts are the lengths of those bytes. One session:

1. down ``history`` (first session only: the device caches item embeddings) and ``candidates``:
   the embeddings and ids of the items the device needs;
2. up ``realtime_window``: the embeddings of the device's last ``rt_len`` items (no ids);
3. the cloud runs controller -> structure and mapper -> the user's generated parameters; down
   ``graph`` only when the device lacks that structure's graph (:class:`GraphStore`), then down
   ``user_weights``: the session graph's user inputs (:func:`user_tensors`), ``folded``
   (generated parameters folded into the kept feed-forward weights) or ``lowrank`` (the
   generated cores and LayerNorm shifts; the graph folds them onto the tier weights it holds);
4. the device runs the cached graph in onnxruntime (:class:`DeviceRuntime`) and re-ranks.

:func:`run_sessions` plays a first and a later session per user and returns the bytes of each
message; SASRec baselines ship a whole ``baked`` graph instead (:func:`graph_bytes`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Mapping, Sequence, Tuple

import numpy as np
import torch

from recbole_fofa.device.export import (
    LOWRANK,
    SessionGraph,
    export_graph,
    session_graph,
    user_input_names,
)
from recbole_fofa.device.runtime import ort_session, require
from recbole_fofa.model import Stage
from recbole_fofa.search.extract import merge_generated, subnet_state
from recbole_fofa.subnet import SubnetConfig

__all__ = [
    "SESSION_VARIANTS",
    "Message",
    "pack",
    "unpack",
    "user_tensors",
    "graph_user_example",
    "GraphStore",
    "DeviceRuntime",
    "DeployedCloud",
    "DeployedDevice",
    "SessionLog",
    "run_sessions",
    "graph_bytes",
]

#: what a ForwardOFA session ships: folded weights, or the low-rank factors' cores
SESSION_VARIANTS = ("folded", "lowrank")
DIRECTIONS = ("down", "up")


@dataclass
class Message:
    """Serialized bytes sent ``'down'`` (cloud -> device) or ``'up'``; ``key``: the structure
    a ``graph`` or ``user_weights`` message belongs to."""

    name: str
    direction: str
    payload: bytes
    key: str = ""

    def __post_init__(self):
        if self.direction not in DIRECTIONS:
            raise ValueError(f"Message {self.name!r}: direction {self.direction!r}, use one of "
                             f"{DIRECTIONS}")
        if not isinstance(self.payload, (bytes, bytearray)):
            raise TypeError(f"Message {self.name!r}: the payload must be bytes")

    @property
    def nbytes(self) -> int:
        return len(self.payload)


def _numpy(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().contiguous().numpy()
    return np.ascontiguousarray(value)


def pack(name: str, tensors: Mapping[str, object]) -> bytes:
    """``tensors`` (name -> tensor or array) serialized as one ONNX ``SequenceProto`` named
    ``name``: raw little-endian data with each tensor's name, type and shape."""
    onnx = require("onnx")
    from onnx import numpy_helper

    sequence = onnx.SequenceProto(name=name, elem_type=onnx.SequenceProto.TENSOR)
    for key, value in tensors.items():
        sequence.tensor_values.append(numpy_helper.from_array(_numpy(value), name=key))
    return sequence.SerializeToString()


def unpack(payload: bytes) -> Tuple[str, Dict[str, np.ndarray]]:
    """(name, {tensor name: array}) of a :func:`pack` payload."""
    onnx = require("onnx")
    from onnx import numpy_helper

    sequence = onnx.SequenceProto()
    sequence.ParseFromString(bytes(payload))
    return sequence.name, {t.name: numpy_helper.to_array(t) for t in sequence.tensor_values}


def _kept(cfg: SubnetConfig) -> List[int]:
    return [index for index, keep in enumerate(cfg.mask) if keep]


def user_tensors(model, cfg: SubnetConfig, gen, variant: str,
                 tier_state: Dict[str, torch.Tensor] | None = None) -> Dict[str, torch.Tensor]:
    """One user's tensors for the ``variant`` session graph of ``cfg``, keyed by its input names:
    ``gen`` is ``model.generated_params(z, cfg)`` of that user (None: no generated parameters,
    nothing to ship). ``tier_state`` (``subnet_state(model, cfg, items=False)``) saves slicing
    the tier again for ``folded``."""
    if variant not in SESSION_VARIANTS:
        raise ValueError(f"variant {variant!r}: use one of {SESSION_VARIANTS}")
    if gen is None:
        return {}
    names = user_input_names(cfg.n_kept, variant)
    if variant == "folded":
        state = subnet_state(model, cfg, items=False) if tier_state is None else tier_state
        merged = merge_generated(state, model, cfg, gen)
        return {name: merged[name] for name in names}
    values = [getattr(gen[index], field)[0] for index in _kept(cfg) for field in LOWRANK]
    return {name: value.detach() for name, value in zip(names, values)}


def graph_user_example(model, cfg: SubnetConfig, variant: str) -> List[torch.Tensor]:
    """Tensors shaped like one session's user tensors (for exporting the session graph)."""
    if variant == "baked":
        return []
    shape = model.shape
    r, d = shape.mapper_rank, shape.hidden_size
    out = []
    for index in _kept(cfg):
        w = cfg.widths[index]
        shapes = ([(w, d), (d, w), (d,), (d,)] if variant == "folded"
                  else [(r, r), (r, r), (d,), (d,)])
        out += [torch.zeros(s) for s in shapes]
    return out


class GraphStore:
    """The cloud's session graphs, exported once per (structure, variant) and kept."""

    def __init__(self, model):
        self.model = model
        self._graphs: Dict[Tuple[str, str], bytes] = {}
        #: seconds each export took
        self.export_seconds: Dict[Tuple[str, str], float] = {}

    def graph(self, cfg: SubnetConfig, variant: str) -> bytes:
        """The serialized ONNX session graph of ``cfg`` (a user's ``gen`` is None in the
        supernet stage: then the tier's weights are complete, and the graph is ``baked``)."""
        key = (cfg.key, variant)
        if key not in self._graphs:
            start = time.perf_counter()
            graph: SessionGraph = session_graph(self.model, cfg, variant)
            self._graphs[key] = export_graph(
                graph, graph_user_example(self.model, cfg, variant),
                metadata={"recbole_fofa.config": cfg.key, "recbole_fofa.variant": variant})
            self.export_seconds[key] = time.perf_counter() - start
        return self._graphs[key]


class DeviceRuntime:
    """A device's runtime: one onnxruntime session (``threads`` threads) per structure graph
    it has downloaded; :meth:`scores` runs one."""

    def __init__(self, threads: int = 1):
        self.threads = threads
        self._sessions: Dict[str, object] = {}

    def has(self, key: str) -> bool:
        return key in self._sessions

    @property
    def keys(self) -> List[str]:
        return list(self._sessions)

    def install(self, key: str, graph: bytes) -> None:
        """Load a downloaded graph (kept for later sessions)."""
        self._sessions[key] = ort_session(bytes(graph), self.threads)

    def scores(self, key: str, item_seq, item_seq_len, item_table, candidates,
               user: Mapping[str, np.ndarray]) -> np.ndarray:
        """Scores [B, C] of the ``key`` graph: history rows ``item_seq`` [B, L] of
        ``item_table`` [N, d], ``candidates`` [C, d] and the session's user tensors."""
        if key not in self._sessions:
            raise KeyError(f"DeviceRuntime: no graph for structure {key!r}; downloaded: "
                           f"{self.keys}")
        feeds = {"item_seq": _numpy(item_seq).astype(np.int64),
                 "item_seq_len": _numpy(item_seq_len).astype(np.int64),
                 "item_table": _numpy(item_table).astype(np.float32),
                 "candidates": _numpy(candidates).astype(np.float32)}
        feeds.update({name: _numpy(value).astype(np.float32) for name, value in user.items()})
        return self._sessions[key].run(["scores"], feeds)[0]


def _items_message(model, name: str, ids) -> Message:
    ids = torch.as_tensor(ids, dtype=torch.int64)
    with torch.no_grad():
        emb = model.item_embedding.weight.detach().cpu()[ids]
    return Message(name, "down", pack(name, {"item_ids": ids, "item_embeddings": emb}))


class DeployedCloud:
    """The cloud: the trained ForwardOFA, its :class:`GraphStore`, one tier state per structure
    (slicing once; per user only the mapper and the fold run)."""

    def __init__(self, model, variant: str = "folded", store: GraphStore | None = None):
        if variant not in SESSION_VARIANTS:
            raise ValueError(f"variant {variant!r}: use one of {SESSION_VARIANTS}")
        self.model = model
        self.variant = variant
        self.store = store or GraphStore(model)
        self._tiers: Dict[SubnetConfig, Dict[str, torch.Tensor]] = {}

    def items(self, name: str, ids) -> Message:
        """Down: the embeddings and ids of items (``history`` or ``candidates``)."""
        return _items_message(self.model, name, ids)

    @torch.no_grad()
    def decide(self, window: Message):
        """(z [1, d], SubnetConfig, generated params or None) from an up ``realtime_window``:
        the model's deterministic structure (``structure_of``); the full network in the
        supernet stage."""
        model = self.model
        _, tensors = unpack(window.payload)
        device = model.item_embedding.weight.device
        emb = torch.from_numpy(np.array(tensors["item_embeddings"])).to(device)[None]
        was_training = model.training
        model.eval()
        try:
            z, mask, _ = model.structure_of(emb, torch.tensor([emb.size(1)], device=device))
            cfg = (model.shape.full() if model.stage is Stage.SUPERNET
                   else model.shape.from_mask(mask[0].tolist()))
            gen = model.generated_params(z, cfg)
        finally:
            model.train(was_training)
        return z, cfg, gen

    def answer(self, window: Message, cached: Iterable[str]) -> List[Message]:
        """Down: the structure's ``graph`` if the device lacks it (``cached``: the keys it
        holds), then the ``user_weights`` of this session."""
        _, cfg, gen = self.decide(window)
        variant = self.variant if gen is not None else "baked"
        key = f"{cfg.key}/{variant}"
        out = []
        if key not in set(cached):
            out.append(Message("graph", "down", self.store.graph(cfg, variant), key))
        if cfg not in self._tiers:
            self._tiers[cfg] = subnet_state(self.model, cfg, items=False)
        tensors = user_tensors(self.model, cfg, gen, self.variant, self._tiers[cfg])
        out.append(Message("user_weights", "down", pack(key, tensors), key))
        return out


class DeployedDevice:
    """One user's device: its history (item ids), its caches (item embeddings, graphs in its
    :class:`DeviceRuntime`), and the last session's user weights and candidates."""

    def __init__(self, item_seq, item_seq_len, rt_len: int, runtime: DeviceRuntime | None = None):
        self.item_seq = np.asarray(_numpy(item_seq), dtype=np.int64).reshape(-1)
        self.item_seq_len = int(np.asarray(_numpy(item_seq_len)).reshape(-1)[0])
        self.rt_len = int(rt_len)
        self.runtime = runtime or DeviceRuntime()
        self.cache_ids = np.zeros(0, dtype=np.int64)
        self.cache_emb: np.ndarray | None = None
        self.candidate_ids: np.ndarray | None = None
        self.key: str | None = None
        self.user: Dict[str, np.ndarray] = {}

    def receive(self, message: Message) -> None:
        if message.direction != "down":
            raise ValueError(f"DeployedDevice.receive: {message.name!r} goes {message.direction}")
        if message.name == "graph":
            self.runtime.install(message.key, message.payload)
        elif message.name == "user_weights":
            self.key, self.user = unpack(message.payload)
        elif message.name in ("history", "candidates"):
            _, tensors = unpack(message.payload)
            self._cache(tensors["item_ids"], tensors["item_embeddings"])
            if message.name == "candidates":
                self.candidate_ids = tensors["item_ids"]
        else:
            raise ValueError(f"DeployedDevice.receive: unknown message {message.name!r}")

    def _cache(self, ids, emb):
        ids = np.concatenate([self.cache_ids, ids])
        emb = emb if self.cache_emb is None else np.concatenate([self.cache_emb, emb])
        self.cache_ids, first = np.unique(ids, return_index=True)
        self.cache_emb = emb[first]

    def missing(self, ids) -> np.ndarray:
        """The ids among ``ids`` (0 excluded) whose embeddings the device lacks."""
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        return ids[(ids != 0) & ~np.isin(ids, self.cache_ids)]

    def _rows(self, ids) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        rows = np.searchsorted(self.cache_ids, ids)
        return np.where(ids == 0, 0, rows + 1)

    def history(self):
        return self.item_seq[: self.item_seq_len]

    def realtime_window(self) -> Message:
        """Up: the cached embeddings of the last ``rt_len`` items (features, no ids)."""
        k = min(self.item_seq_len, self.rt_len)
        recent = self.item_seq[self.item_seq_len - k: self.item_seq_len]
        emb = self.cache_emb[self._rows(recent) - 1]
        return Message("realtime_window", "up", pack("realtime_window",
                                                     {"item_embeddings": emb}))

    def table(self) -> np.ndarray:
        """The item table the graph reads: row 0 padding, then the cache."""
        return np.concatenate([np.zeros((1, self.cache_emb.shape[1]), np.float32),
                               self.cache_emb.astype(np.float32)])

    def scores(self) -> np.ndarray:
        """Scores [C] of the cached candidates, in their received order."""
        table = self.table()
        seq = self._rows(self.item_seq)[None]
        cands = table[self._rows(self.candidate_ids)]
        return self.runtime.scores(self.key, seq, np.array([self.item_seq_len]), table, cands,
                                   self.user)[0]

    def rank(self) -> np.ndarray:
        """The candidates' ids, best first."""
        return self.candidate_ids[np.argsort(-self.scores(), kind="stable")]


@dataclass
class SessionLog:
    """The messages of one session, and which session of the device it was (1 = first)."""

    number: int
    messages: List[Message] = field(default_factory=list)
    key: str = ""

    def bytes(self, direction: str = "down", name: str | None = None) -> int:
        return sum(m.nbytes for m in self.messages
                   if m.direction == direction and (name is None or m.name == name))


def _session(cloud: DeployedCloud, device: DeployedDevice, candidate_ids, number) -> SessionLog:
    log = SessionLog(number)

    def down(message):
        log.messages.append(message)
        device.receive(message)

    missing = device.missing(device.history())
    if len(missing):
        down(cloud.items("history", missing))
    down(cloud.items("candidates", candidate_ids))
    window = device.realtime_window()
    log.messages.append(window)
    for message in cloud.answer(window, device.runtime.keys):
        down(message)
    log.key = device.key
    return log


def run_sessions(cloud: DeployedCloud, item_seq, item_seq_len, candidate_ids: Sequence,
                 sessions: int = 2, runtime: DeviceRuntime | None = None):
    """``sessions`` sessions of one user's device (the same history, the candidates of each
    ``candidate_ids[s]``): ``(device, [SessionLog])``, the device ranked after each session."""
    device = DeployedDevice(item_seq, item_seq_len, cloud.model.rt_len, runtime)
    logs = []
    for number in range(1, sessions + 1):
        logs.append(_session(cloud, device, candidate_ids[(number - 1) % len(candidate_ids)],
                             number))
    return device, logs


def graph_bytes(sub, fmt: str = "onnx") -> int:
    """Bytes of the ``baked`` session graph of a :class:`SubnetModel` (e.g. a SASRec): what a
    device downloads to run it without per-user weights."""
    return len(export_graph(SessionGraph(sub, "baked"), [], fmt))
