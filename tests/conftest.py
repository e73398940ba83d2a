"""Shared fixtures: an isolated working directory and a tiny dataset with a planted pattern."""

import sys
from pathlib import Path

import numpy as np
import pytest
import recbole.trainer.trainer as recbole_trainer

N_ITEMS = 40  # item ids 1..N_ITEMS; RecBole adds the padding id 0


def write_planted_dataset(root, name="planted", n_users=60, seq_len=14, seed=0):
    """Write ``root/name/name.inter``: every user walks the cycle i -> i+1 (mod N_ITEMS).

    Each user starts at a random item; the next item is always the successor, so a sequential
    model that learns anything ranks the true next item first. Returns the dataset folder.
    """
    rng = np.random.default_rng(seed)
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    for user in range(1, n_users + 1):
        start = int(rng.integers(N_ITEMS))
        for step in range(seq_len):
            item = (start + step) % N_ITEMS + 1
            lines.append(f"u{user}\ti{item}\t{1000 * user + step}")
    (folder / f"{name}.inter").write_text("\n".join(lines) + "\n")
    return folder


def latest_log_text():
    """Text of RecBole's newest log file under ./log (the tests run in a temporary cwd)."""
    return max(Path("log").rglob("*.log"), key=lambda f: f.stat().st_mtime).read_text()


def random_ndcg_at_10(n_items=N_ITEMS):
    """Expected NDCG@10 of a uniformly random full ranking with one relevant item."""
    return sum(1.0 / np.log2(rank + 1) for rank in range(1, 11)) / n_items


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """RecBole writes ./log, ./log_tensorboard and ./saved, and parses sys.argv: keep both clean.
    Every tensorboard writer a RecBole trainer opens is closed before the test leaves its
    directory: its thread writes to a relative path, which would miss from the next test's."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["pytest"])
    writers = []
    open_writer = recbole_trainer.get_tensorboard

    def tracked(logger):
        writers.append(open_writer(logger))
        return writers[-1]

    monkeypatch.setattr(recbole_trainer, "get_tensorboard", tracked)
    yield tmp_path
    for writer in writers:
        writer.close()


#: The tiny ForwardOFA the tests build on the planted data: three blocks, a four-item real-time
#: window and a small mapper.
TINY_FOFA = {"n_blocks": 3, "rt_len": 4, "mapper_rank": 4, "mapper_hidden": 16}


def planted_config(root):
    """Write the planted dataset under ``root/data`` and return the config of a tiny, fast run on
    it (checkpoints in ``root/saved``): the ``planted`` fixture's, for module-scoped fixtures."""
    write_planted_dataset(root / "data")
    return {
        "data_path": str(root / "data"),
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "MAX_ITEM_LIST_LENGTH": 8,
        "hidden_size": 16,
        "inner_size": 32,
        "n_layers": 1,
        "n_heads": 2,
        "hidden_dropout_prob": 0.1,
        "attn_dropout_prob": 0.1,
        "epochs": 12,
        "train_batch_size": 64,
        "eval_batch_size": 256,
        "learning_rate": 0.01,
        "stopping_step": 20,
        "metrics": ["NDCG", "Hit"],
        "topk": [10],
        "valid_metric": "NDCG@10",
        "state": "ERROR",
        "show_progress": False,
        "checkpoint_dir": str(root / "saved"),
        "seed": 2020,
    }


def cli_flags(config):
    """``config`` as ``run_recbole_fofa`` flags (``--key=value``; values as Python literals)."""
    return [f"--{key}={value!r}" if not isinstance(value, str) else f"--{key}={value}"
            for key, value in config.items() if key != "state"]


@pytest.fixture
def planted(tmp_path):
    """(dataset name, config_dict) for a tiny, fast run on the planted dataset."""
    return "planted", planted_config(tmp_path)


def write_atomic_files(root, name, files):
    """Write ``root/name/name.<suffix>`` for each ``suffix: content`` and return the folder.

    ``content`` is either the file's exact text (for malformed files) or ``(header, rows)``:
    ``header`` a list of ``name:type`` strings, ``rows`` a list of value tuples (tab-separated).
    """
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    for suffix, content in files.items():
        if not isinstance(content, str):
            header, rows = content
            lines = ["\t".join(header), *("\t".join(str(v) for v in row) for row in rows)]
            content = "\n".join(lines) + "\n"
        (folder / f"{name}.{suffix}").write_text(content)
    return folder


# ----------------------------------------------------------------------------- model zoo dataset

ZOO_USERS, ZOO_ITEMS, ZOO_SEQ_LEN, ZOO_EMB = 24, 20, 8, 8


def write_zoo_dataset(root, name="zoo", seed=0):
    """Write every atomic file RecBole's model families read, tiny, with a planted pattern.

    ``.inter`` (user_id, item_id, rating, timestamp): each user walks the cycle i -> i+1 from a
    random start; the successor of an even step is rated 5, otherwise 2 (so ``threshold: {rating:
    4}`` yields both labels). ``.user`` (age, gender), ``.item`` (price, class: a token_seq of the
    item's parity and residue mod 3), ``.kg``/``.link`` (item entities, relation "next" along the
    cycle and "class" to a class entity) and ``.ent``/``.rel`` (pretrained entity and relation
    embeddings, float_seq of width ``ZOO_EMB``, for KSR and GRU4RecKG). Returns the folder.
    """
    rng = np.random.default_rng(seed)
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)

    def write(suffix, header, rows):
        text = "\t".join(header) + "\n" + "".join("\t".join(map(str, r)) + "\n" for r in rows)
        (folder / f"{name}.{suffix}").write_text(text)

    inter = []
    for user in range(1, ZOO_USERS + 1):
        start = int(rng.integers(ZOO_ITEMS))
        for step in range(ZOO_SEQ_LEN):
            item = (start + step) % ZOO_ITEMS + 1
            inter.append((f"u{user}", f"i{item}", 5 if step % 2 == 0 else 2, 1000 * user + step))
    write("inter", ["user_id:token", "item_id:token", "rating:float", "timestamp:float"], inter)
    write("user", ["user_id:token", "age:float", "gender:token"],
          [(f"u{u}", 18 + u % 40, "MF"[u % 2]) for u in range(1, ZOO_USERS + 1)])
    write("item", ["item_id:token", "price:float", "class:token_seq"],
          [(f"i{i}", i % 7 + 1.5, f"p{i % 2} m{i % 3}") for i in range(1, ZOO_ITEMS + 1)])
    write("link", ["item_id:token", "entity_id:token"],
          [(f"i{i}", f"e{i}") for i in range(1, ZOO_ITEMS + 1)])
    kg = [(f"e{i}", "next", f"e{i % ZOO_ITEMS + 1}") for i in range(1, ZOO_ITEMS + 1)]
    kg += [(f"e{i}", "class", f"c{i % 3}") for i in range(1, ZOO_ITEMS + 1)]
    write("kg", ["head_id:token", "relation_id:token", "tail_id:token"], kg)
    entities = [f"e{i}" for i in range(1, ZOO_ITEMS + 1)] + [f"c{k}" for k in range(3)]

    def vec():
        return " ".join(f"{x:.3f}" for x in rng.normal(size=ZOO_EMB))

    write("ent", ["ent_id:token", "ent_emb:float_seq"], [(e, vec()) for e in entities])
    write("rel", ["rel_id:token", "rel_emb:float_seq"], [(r, vec()) for r in ("next", "class")])
    return folder


@pytest.fixture(scope="session")
def zoo(tmp_path_factory):
    """(dataset name, data_path) of the shared model-zoo dataset, written once per session."""
    root = tmp_path_factory.mktemp("zoo")
    write_zoo_dataset(root)
    return "zoo", str(root)
