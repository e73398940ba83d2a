"""The cloud-device protocol of Forward-OFA (paper figure 3), simulated message by message, next to
on-device fine-tuning on the same users and the same cached candidates.

Each test user is one session start (RecBole has no session field). A :class:`Cloud` holds the
trained ForwardOFA; a :class:`Device` holds only its own item ids and what it received. Every
tensor that crosses goes through a :class:`Channel` as a :class:`Message` (cloned to the CPU on
the way), so the byte counts are the sizes of tensors that were really handed over:

1. down ``candidates``: the embeddings and ids of ``C`` candidates (the target plus ``C-1`` items
   drawn uniformly without replacement from the others), cached for the session; down
   ``history``: the embeddings and ids of the distinct items in the device's history window,
   which the device needs to run an encoder at all;
2. up ``realtime_window``: the embeddings of the device's last ``rt_len`` items (no ids);
3. the cloud runs controller -> structure, mapper -> parameters and cuts the sub-model's weights
   with :func:`~recbole_fofa.search.extract.subnet_state` (one forward pass, timed; no module is
   built on the cloud); down ``submodel``: the
   kept blocks with the user's generated parameters merged, the position embeddings and the input
   LayerNorm (no item table), plus the structure mask;
4. the device builds the :class:`~recbole_fofa.search.extract.SubnetModel` from those tensors,
   encodes its history and re-ranks the cached candidates: in onnxruntime when the ``device``
   extra is installed (:class:`OnnxDevice`: the structure's session graph, exported once, with
   the received folded weights as its inputs), else in PyTorch; ``run_protocol`` says which.

The baseline downloads the full network (``full_model``: every block, the backbone's weights, no
mapper) and takes ``k`` Adam steps of next-item loss on its own history before re-ranking.
:func:`run_protocol` trains (or takes) a ForwardOFA, simulates the sessions and hands the records
to :func:`~recbole_fofa.analysis.protocol_report.report`, which writes the table and the figure.
"""

from __future__ import annotations

import contextlib
import math
import time
import weakref
from dataclasses import dataclass, field
from typing import Dict, List, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from tqdm import tqdm

from recbole_fofa import cost
from recbole_fofa.analysis import AnalysisResult
from recbole_fofa.analysis.protocol_report import METHODS, TOPK, report
from recbole_fofa.device import runtime as device_runtime
from recbole_fofa.device.export import user_input_names
from recbole_fofa.device.session import DeviceRuntime, GraphStore
from recbole_fofa.experiment import train
from recbole_fofa.model import Stage
from recbole_fofa.search.extract import SubnetModel, merge_generated, subnet_state
from recbole_fofa.subnet import SubnetConfig

__all__ = [
    "Message",
    "Channel",
    "LiveTensorBytes",
    "DeviceArch",
    "OnnxDevice",
    "RUNTIMES",
    "Cloud",
    "Device",
    "Adaptation",
    "SessionRecord",
    "sample_candidates",
    "simulate_session",
    "one_thread",
    "run_protocol",
]

DIRECTIONS = ("down", "up")
#: where the device runs Forward-OFA's sub-model (``run_protocol(runtime=...)``)
RUNTIMES = ("onnxruntime", "torch")
MEMORY_METHOD = ("resident received tensors + peak live tensor bytes of the device's forward "
                 "(and, for fine-tuning, its training steps), tracked with a TorchDispatchMode")


# ----------------------------------------------------------------------------- messages
@dataclass
class Message:
    """Tensors sent in one direction: ``'down'`` (cloud -> device) or ``'up'`` (device -> cloud)."""

    name: str
    direction: str
    tensors: Dict[str, torch.Tensor]

    def __post_init__(self):
        if self.direction not in DIRECTIONS:
            raise ValueError(f"Message {self.name!r}: direction {self.direction!r}, use one of "
                             f"{DIRECTIONS}")
        for key, tensor in self.tensors.items():
            if not isinstance(tensor, torch.Tensor):
                raise TypeError(f"Message {self.name!r}: {key} is a {type(tensor).__name__}, "
                                "not a tensor")

    @property
    def nbytes(self) -> int:
        """Payload bytes: ``sum(numel * element_size)`` over the tensors carried."""
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


class Channel:
    """The link between the cloud and one device: every message is copied to the CPU (nothing
    is shared with the sender) and logged."""

    def __init__(self):
        self.log: List[Message] = []

    def send(self, message: Message) -> Message:
        """The message as the receiver gets it (fresh CPU tensors)."""
        received = Message(message.name, message.direction,
                           {k: t.detach().to("cpu", copy=True) for k, t in
                            message.tensors.items()})
        self.log.append(received)
        return received

    def bytes(self, direction: str) -> int:
        if direction not in DIRECTIONS:
            raise ValueError(f"direction {direction!r}: use one of {DIRECTIONS}")
        return sum(m.nbytes for m in self.log if m.direction == direction)

    def message(self, name: str) -> Message:
        for message in self.log:
            if message.name == name:
                return message
        raise KeyError(f"no message {name!r} was sent; sent: {[m.name for m in self.log]}")


# ----------------------------------------------------------------------------- device memory
def _tensors(values):
    """The tensors among an op's arguments or outputs, and in lists of them (aten ops take and
    return tensors, lists of tensors and scalars only)."""
    out = []
    for value in values:
        if isinstance(value, torch.Tensor):
            out.append(value)
        elif isinstance(value, (tuple, list)):
            out.extend(v for v in value if isinstance(v, torch.Tensor))
    return out


def _storage(tensor):
    try:
        storage = tensor.untyped_storage()
    except (RuntimeError, NotImplementedError):  # sparse or otherwise storage-less tensors
        return 0, 0
    return storage.data_ptr(), storage.nbytes()


class LiveTensorBytes(TorchDispatchMode):
    """Bytes of the tensor storages allocated inside the ``with`` block that are still alive,
    and their peak (:attr:`peak`).

    Every op's outputs are inspected: a storage none of the op's inputs has is a new allocation
    and is counted until the last tensor using it is collected (weakref finalizers; torch keeps a
    tensor's Python object alive while autograd or a ``.grad`` holds it). Views of tensors from
    before the block (weights, inputs) count nothing.
    """

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._refs: Dict[int, List[int]] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {_storage(t)[0] for t in _tensors((*args, *(kwargs or {}).values()))}
        for tensor in _tensors(out if isinstance(out, (tuple, list)) else (out,)):
            key, nbytes = _storage(tensor)
            if not key or not nbytes:
                continue
            if key in self._refs:
                self._refs[key][0] += 1
            elif key in inputs:
                continue
            else:
                self._refs[key] = [1, nbytes]
                self.live += nbytes
                self.peak = max(self.peak, self.live)
            weakref.finalize(tensor, self._release, key)
        return out

    def _release(self, key):
        entry = self._refs.get(key)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            del self._refs[key]
            self.live -= entry[1]


def _module_bytes(module) -> int:
    return sum(t.numel() * t.element_size()
               for t in list(module.parameters()) + list(module.buffers()))


# ----------------------------------------------------------------------------- the two sides
@dataclass(frozen=True)
class DeviceArch:
    """What the app on the device knows without being sent anything: the backbone's sizes and
    layer types (never weights)."""

    hidden_size: int
    head_size: int
    seq_len: int
    rt_len: int
    n_blocks: int
    hidden_act: str
    layer_norm_eps: float

    @classmethod
    def of(cls, model) -> DeviceArch:
        shape = model.shape
        return cls(shape.hidden_size, shape.head_size, shape.seq_len, int(model.rt_len),
                   shape.n_blocks, model.blocks[0].feed_forward.hidden_act,
                   float(model.LayerNorm.eps))


@dataclass
class Adaptation:
    """The cloud's answer to a real-time window: the ``submodel`` message, its SubnetConfig,
    the seconds from the received window to the finished sub-model, and of those the seconds of
    the controller and mapper alone (``forward_seconds``; the rest is slicing and merging the
    weights)."""

    message: Message
    subnet: SubnetConfig
    seconds: float
    forward_seconds: float


class OnnxDevice:
    """Forward-OFA's device in onnxruntime: each structure's session graph
    (:func:`~recbole_fofa.device.export.session_graph`, ``folded``: the user's feed-forward
    weights are inputs; ``baked`` in the supernet stage) exported once by the cloud's
    :class:`~recbole_fofa.device.session.GraphStore` and loaded once in a
    :class:`~recbole_fofa.device.session.DeviceRuntime` on one thread: a device downloads a
    structure's graph once and caches it."""

    def __init__(self, model, threads: int = 1):
        self.store = GraphStore(model)
        self.runtime = DeviceRuntime(threads)

    def scores(self, cfg: SubnetConfig, state, item_seq, item_seq_len, table, candidates):
        """Scores [B, C] of sub-network ``cfg`` with the received ``state`` (its user tensors
        feed the graph), history rows ``item_seq`` of ``table``, candidate embeddings."""
        variant = "baked" if self.store.model.stage is Stage.SUPERNET else "folded"
        key = f"{cfg.key}/{variant}"
        if not self.runtime.has(key):
            self.runtime.install(key, self.store.graph(cfg, variant))
        user = {name: state[name] for name in user_input_names(cfg.n_kept, variant)}
        return self.runtime.scores(key, item_seq, item_seq_len, table, candidates, user)


class Cloud:
    """The cloud: holds the trained ForwardOFA and answers a device's messages.

    It keeps the supernet weights of each structure it has served (``tiers``), so a user's
    answer costs the controller, the mapper and the merge of that user's generated parameters;
    the first user of a structure also pays its slicing. The model must not change while a
    Cloud serves it.
    """

    def __init__(self, model):
        if type(model).__name__ != "ForwardOFA":
            raise ValueError(f"the protocol simulates ForwardOFA; got a {type(model).__name__}")
        self.model = model
        self.device = model.item_embedding.weight.device
        self.arch = DeviceArch.of(model)
        self.tiers: Dict[SubnetConfig, Dict[str, torch.Tensor]] = {}

    @torch.no_grad()
    def _embeddings(self, name, item_ids) -> Message:
        ids = torch.as_tensor(item_ids, dtype=torch.int64, device=self.device)
        return Message(name, "down", {"item_ids": ids,
                                      "item_embeddings": self.model.item_embedding(ids)})

    def candidates(self, candidate_ids) -> Message:
        """Session start: the candidates' embeddings and ids, cached by the device."""
        return self._embeddings("candidates", candidate_ids)

    def history(self, item_seq, item_seq_len) -> Message:
        """The embeddings of the distinct items in the device's history window."""
        seq = torch.as_tensor(item_seq)[: int(item_seq_len)]
        return self._embeddings("history", torch.unique(seq))

    @torch.no_grad()
    def structure(self, window: torch.Tensor):
        """(z [1, d], kept mask [n] bool) from the received real-time window [k, d]: the
        model's own decision (``structure_of``, as ``eval_structure`` on the item ids) computed
        from features only."""
        model = self.model
        emb = window.to(self.device)[None]
        z, mask, _ = model.structure_of(emb, torch.tensor([emb.size(1)], device=self.device))
        if model.stage is Stage.SUPERNET:  # no controller yet: the full network, as forward() runs
            return z, torch.ones(model.n_blocks, dtype=torch.bool)
        return z, mask[0].cpu()

    @torch.no_grad()
    def adapt(self, window_message: Message) -> Adaptation:
        """One forward pass: structure, generated parameters, the user's sub-model (timed)."""
        model = self.model
        was_training = model.training
        model.eval()
        try:
            self._sync()
            start = time.perf_counter()
            z, mask = self.structure(window_message.tensors["item_embeddings"])
            cfg = model.shape.from_mask(mask.tolist())
            gen = model.generated_params(z, cfg)
            self._sync()
            forward = time.perf_counter() - start
            if cfg not in self.tiers:
                self.tiers[cfg] = subnet_state(model, cfg, items=False)
            state = self.tiers[cfg] if gen is None else merge_generated(self.tiers[cfg], model,
                                                                         cfg, gen)
            self._sync()
            seconds = time.perf_counter() - start
        finally:
            model.train(was_training)
        tensors = {"structure_mask": mask.to(self.device), **state}
        return Adaptation(Message("submodel", "down", tensors), cfg, seconds, forward)

    @torch.no_grad()
    def full_model(self) -> Message:
        """The fine-tuning baseline's download: every block with the backbone's weights (no
        mapper, no item table)."""
        state = subnet_state(self.model, self.model.shape.full(), items=False)
        tensors = {"structure_mask": torch.ones(self.arch.n_blocks, dtype=torch.bool), **state}
        return Message("full_model", "down", tensors)

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


class Device:
    """One user's device: its own history (item ids) and what the cloud sent, nothing else."""

    def __init__(self, arch: DeviceArch, item_seq, item_seq_len):
        self.arch = arch
        self.item_seq = torch.as_tensor(item_seq, dtype=torch.int64).cpu()
        self.item_seq_len = int(item_seq_len)
        if self.item_seq.dim() != 1 or not 1 <= self.item_seq_len <= self.item_seq.numel():
            raise ValueError(f"Device: item_seq must be one user's [T] items and item_seq_len in "
                             f"[1, T]; got shape {tuple(self.item_seq.shape)}, "
                             f"length {self.item_seq_len}")
        self.cache_ids = torch.empty(0, dtype=torch.int64)
        self.cache_emb = torch.empty(0, arch.hidden_size)
        self.candidate_ids: torch.Tensor | None = None
        self.state: Dict[str, torch.Tensor] | None = None
        self.mask: torch.Tensor | None = None
        self.model: SubnetModel | None = None
        self.scores: torch.Tensor | None = None  # in the received candidates' order
        self.infer_seconds = 0.0
        #: where :meth:`rank` runs the sub-model: an :class:`OnnxDevice`, or None (PyTorch)
        self.onnx: OnnxDevice | None = None

    # ------------------------------------------------------------------ messages
    def receive(self, message: Message) -> None:
        if message.direction != "down":
            raise ValueError(f"Device.receive: {message.name!r} goes {message.direction}")
        tensors = dict(message.tensors)
        if message.name in ("candidates", "history"):
            self._cache(tensors["item_ids"], tensors["item_embeddings"])
            if message.name == "candidates":
                self.candidate_ids = tensors["item_ids"]
        elif message.name in ("submodel", "full_model"):
            self.mask = tensors.pop("structure_mask")
            self.state = tensors
        else:
            raise ValueError(f"Device.receive: unknown message {message.name!r}")

    def _cache(self, ids, emb):
        ids = torch.cat([self.cache_ids, ids])
        emb = torch.cat([self.cache_emb, emb])
        unique, inverse = torch.unique(ids, return_inverse=True)
        first = torch.full((unique.numel(),), ids.numel(), dtype=torch.int64)
        first.scatter_reduce_(0, inverse, torch.arange(ids.numel()), reduce="amin")
        self.cache_ids, self.cache_emb = unique, emb[first]

    def realtime_window(self) -> Message:
        """Up: the embeddings of the last ``rt_len`` items, from the cache (features, no ids)."""
        k = min(self.item_seq_len, self.arch.rt_len)
        recent = self.item_seq[self.item_seq_len - k: self.item_seq_len]
        return Message("realtime_window", "up",
                       {"item_embeddings": self.cache_emb[self._rows(recent) - 1]})

    # ------------------------------------------------------------------ local model
    def _rows(self, item_ids):
        """Cache rows + 1 of item ids (0 stays the padding row); an unknown id is an error."""
        ids = torch.as_tensor(item_ids, dtype=torch.int64)
        if not self.cache_ids.numel():
            raise RuntimeError("Device: no item embeddings were received")
        rows = torch.searchsorted(self.cache_ids, ids).clamp(max=self.cache_ids.numel() - 1)
        known = (ids == 0) | (self.cache_ids[rows] == ids)
        if not bool(known.all()):
            raise RuntimeError(f"Device: items {ids[~known].tolist()} were never sent")
        return torch.where(ids == 0, torch.zeros_like(rows), rows + 1)

    def build(self) -> SubnetModel:
        """The SubnetModel assembled from a copy of the received state (so that a rebuild
        starts from the received weights again), its item table the cache (row 0 padding):
        widths and head counts are read off the received weights."""
        if self.state is None or self.mask is None:
            raise RuntimeError("Device.build: no sub-model was received")
        arch = self.arch
        table = torch.cat([torch.zeros(1, arch.hidden_size), self.cache_emb])
        state = {key: tensor.clone() for key, tensor in self.state.items()}
        model = SubnetModel.from_state({"item_embedding.weight": table, **state},
                                       self.mask.tolist(), arch.head_size, arch.hidden_act,
                                       arch.layer_norm_eps)
        model.item_embedding.weight.requires_grad_(False)
        self.model = model
        return self.model

    def local_inputs(self):
        """(history as cache rows [1, T], length [1])."""
        return self._rows(self.item_seq)[None], torch.tensor([self.item_seq_len])

    def rank(self, runtime: bool = True) -> torch.Tensor:
        """Encode the history, score the cached candidates, return their ids best first: in
        :attr:`onnx` when set (and ``runtime``), else in PyTorch."""
        seq, length = self.local_inputs()
        start = time.perf_counter()
        with torch.no_grad():
            if self.onnx is not None and runtime:
                table = self.model.item_embedding.weight
                candidates = table[self._rows(self.candidate_ids)]
                self.scores = torch.from_numpy(self.onnx.scores(
                    self.model.subnet, self.state, seq, length, table, candidates)[0])
            else:
                self.scores = self.model.scores(seq, length, self._rows(self.candidate_ids))[0]
            order = torch.argsort(self.scores, descending=True, stable=True)
        self.infer_seconds = time.perf_counter() - start
        return self.candidate_ids[order]

    def training_pairs(self):
        """Next-item pairs of the device's own window: prefix ``seq[:t]`` -> ``seq[t]`` for
        ``t = 1 .. len-1`` (cache rows, right-padded). The test target is never a label."""
        seq = self._rows(self.item_seq)
        n = self.item_seq_len
        prefixes = torch.zeros(max(n - 1, 0), seq.numel(), dtype=torch.int64)
        for t in range(1, n):
            prefixes[t - 1, :t] = seq[:t]
        return prefixes, torch.arange(1, n), seq[1:n]

    def finetune(self, steps: int, lr: float) -> float:
        """``steps`` Adam steps of next-item cross-entropy over the cached items (the device has
        no other item table); item embeddings frozen. Returns the seconds taken."""
        model = self.model
        prefixes, lengths, targets = self.training_pairs()
        start = time.perf_counter()
        if steps and len(targets):
            model.train()
            trainable = [p for p in model.parameters() if p.requires_grad]
            optimizer = torch.optim.Adam(trainable, lr=lr, foreach=True)
            for _ in range(steps):
                logits = model.scores(prefixes, lengths)[:, 1:]  # row 0 is padding
                loss = F.cross_entropy(logits, targets - 1)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            del optimizer
            model.eval()
        return time.perf_counter() - start


# ----------------------------------------------------------------------------- one session
@dataclass
class SessionRecord:
    """What one method cost and scored in one session."""

    method: str
    bytes_down: int
    bytes_up: int
    model_bytes_down: int
    device_macs: int
    device_train_macs: int
    cloud_macs: int
    resident_bytes: int
    peak_bytes: int
    adaptation_seconds: float
    #: Forward-OFA: the controller and mapper only (no extraction); fine-tuning: the k steps
    forward_seconds: float
    infer_seconds: float
    kept_blocks: int
    rank: int
    messages: List[Message] = field(default_factory=list, repr=False)

    @property
    def ndcg(self) -> float:
        return 1.0 / math.log2(self.rank + 2) if self.rank < TOPK else 0.0

    @property
    def hit(self) -> float:
        return float(self.rank < TOPK)


def sample_candidates(rng: np.random.Generator, n_items: int, target: int,
                      n_candidates: int) -> torch.Tensor:
    """``n_candidates`` distinct item ids in random order: ``target`` plus items drawn uniformly
    without replacement from ids ``1 .. n_items-1`` other than it (0 is padding)."""
    if not 1 <= target < n_items:
        raise ValueError(f"target item {target} is not an item id in [1, {n_items - 1}]")
    if not 1 <= n_candidates <= n_items - 1:
        raise ValueError(f"n_candidates must be in [1, {n_items - 1}], got {n_candidates}")
    others = np.arange(1, n_items - 1)
    others[others >= target] += 1  # every id but the target
    chosen = rng.choice(others, size=n_candidates - 1, replace=False)
    ids = np.concatenate([[target], chosen])
    return torch.as_tensor(rng.permutation(ids), dtype=torch.int64)


def _position(ranked: torch.Tensor, target: int) -> int:
    return int((ranked == target).nonzero()[0, 0])


def _device_pass(device, work):
    """Run ``work`` on the device under the memory tracker: (result, peak bytes incl. resident)."""
    resident = _module_bytes(device.model)
    with LiveTensorBytes() as memory:
        result = work()
    return result, resident + memory.peak


def simulate_session(cloud: Cloud, item_seq, item_seq_len, target: int,
                     candidate_ids: torch.Tensor, finetune_steps: int = 5,
                     finetune_lr: float = 1e-3, methods: Sequence[str] = METHODS,
                     onnx: OnnxDevice | None = None):
    """One session for each method in ``methods``: ``{method: (SessionRecord, Device)}``.
    ``onnx``: Forward-OFA's device ranks in onnxruntime (its memory is still PyTorch's
    tracker's); fine-tuning trains and ranks in PyTorch."""
    model, arch = cloud.model, cloud.arch
    d, n_cand = arch.hidden_size, int(candidate_ids.numel())
    scoring = int(cost.scoring_macs(n_cand, d))
    shared = [cloud.candidates(candidate_ids), cloud.history(item_seq, item_seq_len)]
    out = {}
    for method in methods:
        if method not in METHODS:
            raise ValueError(f"method {method!r}: use one of {METHODS}")
        channel = Channel()
        device = Device(arch, item_seq, item_seq_len)
        for message in shared:
            device.receive(channel.send(message))
        if method == "Forward-OFA":
            window = channel.send(device.realtime_window())
            adaptation = cloud.adapt(window)
            submodel, cfg = adaptation.message, adaptation.subnet
            adapt_seconds, forward_seconds = adaptation.seconds, adaptation.forward_seconds
            device.receive(channel.send(submodel))
            device.build()
            _, peak = _device_pass(device, lambda device=device: device.rank(runtime=False))
            device.onnx = onnx
            ranked = device.rank()  # timed without the memory tracker's overhead
            breakdown = model.shape.cost(cfg)
            device_macs = int(breakdown.encoder_macs[0]) + scoring
            train_macs = 0
            cloud_macs = int(breakdown.controller_macs + breakdown.mapper_macs[0])
            kept, model_bytes = cfg.n_kept, submodel.nbytes
        else:
            full = cloud.full_model()
            device.receive(channel.send(full))
            device.build()

            def adapt_and_rank(device=device):
                # From the second step on, every step allocates the same tensors (Adam's state
                # exists from the first): two steps reach the peak of k >= 2.
                device.finetune(min(finetune_steps, 2), finetune_lr)
                device.rank()

            _, peak = _device_pass(device, adapt_and_rank)
            device.build()  # again from the received weights, timed without the tracker
            adapt_seconds = forward_seconds = device.finetune(finetune_steps, finetune_lr)
            ranked = device.rank()
            forward = model.shape.full_macs()
            device_macs = forward + scoring
            rows = len(device.training_pairs()[2])
            logits = rows * int(device.cache_ids.numel()) * d
            train_macs = 3 * finetune_steps * (rows * forward + logits) if rows else 0
            cloud_macs = 0
            kept, model_bytes = arch.n_blocks, full.nbytes
        record = SessionRecord(
            method, channel.bytes("down"), channel.bytes("up"), model_bytes, device_macs,
            train_macs, cloud_macs, _module_bytes(device.model), peak, adapt_seconds,
            forward_seconds, device.infer_seconds, kept, _position(ranked, int(target)),
            list(channel.log),
        )
        out[method] = (record, device)
    return out


# ----------------------------------------------------------------------------- the run
def _check_options(n_candidates, sessions, finetune_steps, finetune_lr, seeds):
    def integer(value):
        return isinstance(value, (int, np.integer)) and not isinstance(value, bool)

    if not integer(n_candidates) or n_candidates < 2:
        raise ValueError(f"n_candidates = {n_candidates!r}: use an integer >= 2 and <= the "
                         "number of items - 1")
    if not integer(sessions) or sessions < 1:
        raise ValueError(f"sessions = {sessions!r}: use an integer >= 1")
    if not integer(finetune_steps) or finetune_steps < 0:
        raise ValueError(f"finetune_steps = {finetune_steps!r}: use an integer >= 0")
    if (isinstance(finetune_lr, bool) or not isinstance(finetune_lr, (int, float))
            or not math.isfinite(finetune_lr) or finetune_lr <= 0):
        raise ValueError(f"finetune_lr = {finetune_lr!r}: use a finite number > 0")
    if seeds is not None:
        if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
            seeds = [seeds]
        seeds = list(seeds)
        if not seeds or not all(integer(s) for s in seeds):
            raise ValueError(f"seeds = {seeds!r}: use None or a non-empty list of integers")
    return seeds


def _test_users(test_data):
    """(item_seq [N, T], item_seq_len [N], target [N]) of every test interaction."""
    dataset = test_data._dataset
    data = dataset[np.arange(len(dataset))]
    transform = getattr(test_data, "transform", None)
    if transform is not None:
        data = transform(dataset, data)
    config = test_data.config
    seq_field = config["ITEM_ID_FIELD"] + config["LIST_SUFFIX"]
    return data[seq_field], data[config["ITEM_LIST_LENGTH_FIELD"]], data[config["ITEM_ID_FIELD"]]


@contextlib.contextmanager
def one_thread():
    """Torch on one CPU thread inside the block (restored after): batch-1 work on a shared
    machine is fastest and steadiest there, so the two methods' timings compare fairly."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _simulate(trained, seed, n_candidates, sessions, finetune_steps, finetune_lr, progress,
              runtime="torch"):
    model = trained.model
    if type(model).__name__ != "ForwardOFA":
        raise ValueError(f"run_protocol simulates ForwardOFA; trained.model is a "
                         f"{type(model).__name__}")
    n_items = int(model.n_items)
    if n_candidates > n_items - 1:
        raise ValueError(f"n_candidates = {n_candidates}: use an integer >= 2 and <= the number "
                         f"of items - 1 = {n_items - 1}")
    cloud = Cloud(model)
    onnx = OnnxDevice(model) if runtime == "onnxruntime" else None
    seqs, lengths, targets = _test_users(trained.test_data)
    rng = np.random.default_rng(seed)
    users = np.sort(rng.choice(len(seqs), size=min(sessions, len(seqs)), replace=False))
    records = {method: [] for method in METHODS}
    bar = users
    if progress:
        bar = tqdm(users, desc=f"protocol sessions (seed {seed})", ncols=100)
    with one_thread():
        for user in bar:
            candidates = sample_candidates(rng, n_items, int(targets[user]), n_candidates)
            out = simulate_session(cloud, seqs[user], lengths[user], int(targets[user]),
                                   candidates, finetune_steps, finetune_lr, onnx=onnx)
            for method, (record, _) in out.items():
                record.messages = []  # keep the numbers, not every session's tensors
                records[method].append(record)
    return records


def resolve_runtime(runtime=None) -> str:
    """``runtime`` (one of :data:`RUNTIMES`, or None: onnxruntime when the ``device`` extra is
    installed, else torch); asking for onnxruntime without the extra is an ImportError naming
    it."""
    if runtime is None:
        return "onnxruntime" if device_runtime.available() else "torch"
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime = {runtime!r}: use one of {RUNTIMES} or None")
    if runtime == "onnxruntime":
        device_runtime.require("onnx", "onnxscript", "onnxruntime")
    return runtime


def _runtime_setting(runtime) -> str:
    if runtime == "torch":
        return ("PyTorch (the `device` extra is not installed: pip install "
                "'recbole-fofa[device]' runs Forward-OFA's device in onnxruntime)")
    version = device_runtime.runtime_versions().get("onnxruntime")
    return (f"onnxruntime {version} for Forward-OFA's device: its structure's session graph "
            "(exported once, cached), the received folded weights as inputs, one thread; "
            "fine-tuning trains and ranks in PyTorch; device memory is PyTorch's tracker's")


def run_protocol(dataset, config_file_list=None, config_dict=None, output_dir="fofa-output",
                 seeds=None, progress=True, n_candidates=100, sessions=200, finetune_steps=5,
                 finetune_lr=1e-3, trained=None, runtime=None) -> AnalysisResult:
    """Simulate the cloud-device protocol for ``sessions`` test users (seeded subsample) and
    write ``protocol.md``, ``protocol.csv`` and ``protocol.png`` under ``output_dir``.

    Trains ForwardOFA with :func:`recbole_fofa.experiment.train` once per seed in ``seeds``
    (default: the config's ``seed``), unless ``trained`` (a :class:`~recbole_fofa.experiment.
    Trained` ForwardOFA) is given, in which case ``seeds`` holds at most one seed, used for
    sampling users and candidates. Rows: Forward-OFA and fine-tuning, means over all sessions.
    ``runtime``: where Forward-OFA's device runs (:func:`resolve_runtime`; the report says).
    """
    seeds = _check_options(n_candidates, sessions, finetune_steps, finetune_lr, seeds)
    runtime = resolve_runtime(runtime)
    if trained is not None and seeds is not None and len(seeds) > 1:
        raise ValueError(f"seeds = {seeds}: use at most one seed with trained= (the model is "
                         "given; the seed draws the sessions and candidates)")
    def runs():
        if trained is not None:
            yield trained, None if seeds is None else seeds[0]
            return
        for seed in seeds or [None]:
            config = dict(config_dict or {})
            if seed is not None:
                config["seed"] = int(seed)
            yield train("ForwardOFA", dataset, config_file_list, config), seed

    records = {method: [] for method in METHODS}
    used_seeds = []
    for run_trained, seed in runs():
        seed = int(run_trained.config["seed"]) if seed is None else int(seed)
        used_seeds.append(seed)
        per_seed = _simulate(run_trained, seed, n_candidates, sessions, finetune_steps,
                             finetune_lr, progress, runtime)
        for method in METHODS:
            records[method].extend(per_seed[method])
        model = run_trained.model
    shape = model.shape
    settings = {
        "dataset": dataset,
        "seeds": used_seeds,
        "sessions per seed": len(records["Forward-OFA"]) // len(used_seeds),
        "candidates per session": n_candidates,
        "fine-tuning": f"{finetune_steps} Adam steps, lr {finetune_lr}, item embeddings "
                       "frozen, cross-entropy over the device's cached items",
        "supernet": f"{shape.n_blocks} blocks, d={shape.hidden_size}, d_ff="
                    f"{shape.inner_size}, {shape.n_heads} heads, L={shape.seq_len}, "
                    f"rt_len={model.rt_len}",
        "device runtime": _runtime_setting(runtime),
        "device memory": MEMORY_METHOD,
        "adaptation time": "Forward-OFA: wall time of the cloud's forward pass (controller, "
                           "mapper, slicing and merging the weights; no module is built); "
                           "fine-tuning: wall time of the device's steps; both on this "
                           "machine, torch on one CPU thread",
        "bytes": "payload numel * element_size of every tensor sent (no framing)",
    }
    return report(records, finetune_steps, settings, output_dir)
