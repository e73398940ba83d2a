"""Checks of a dataset's atomic files and of its split, before RecBole parses or splits them.

RecBole reports a malformed atomic file from deep inside its loaders (``not enough values to
unpack`` for an empty file, ``KeyError: 'item_id'`` for a missing column) and a split that leaves
nothing to train on as ``num_samples=0``. :func:`check_atomic_files` reads what RecBole will read
for a config (headers always, values only of the float-like columns RecBole will parse) and raises
one :class:`DatasetFileError` naming the file, the field, the line and what was expected.
:func:`check_split` predicts the train/valid/test sizes of ``eval_args`` from the loaded dataset
with RecBole's own per-group split arithmetic.

Both only add checks: a valid dataset loads and splits exactly as RecBole would. The one change to
a config is ``load_col`` completion: when the user set neither ``load_col`` nor ``unload_col``, a
column that the run cannot do without (e.g. ``TIME_FIELD`` for a sequential model) and that the file
declares is added to RecBole's default ``load_col``; without it RecBole would fail.
"""

import codecs
import csv
import importlib
import os
from collections import Counter
from dataclasses import dataclass
from logging import getLogger

import numpy as np
import pandas as pd
from recbole.data.dataset import KnowledgeBasedDataset, SequentialDataset
from recbole.utils import FeatureType, ModelType, set_color

FEATURE_TYPES = tuple(member.value for member in FeatureType)
#: Sources RecBole reads whatever ``load_col`` says (a model needs them); ``user``, ``item`` and
#: the ``additional_feat_suffix`` files are read only when ``load_col`` lists them.
ALWAYS_READ = ("inter", "kg", "link")
CHUNK_BYTES = 1 << 20  # the text pass reads files in chunks of this size


class DatasetFileError(ValueError):
    """An atomic file (or the split of its data) that RecBole could not use."""


@dataclass(frozen=True)
class Need:
    """A column the run cannot do without: ``field`` of ``source``, asked for by config ``key``."""

    source: str
    field: str
    key: str
    why: str


@dataclass
class AtomicFile:
    """One atomic file RecBole will read: its source (``inter``, ``user``, ``kg``, ...) and path."""

    source: str
    path: str
    header: list = None  # [(name, type)] once parsed

    @property
    def names(self):
        return [name for name, _ in self.header]


# ----------------------------------------------------------------------------- atomic files


def check_atomic_files(config):
    """Check every atomic file RecBole will read for ``config``; complete ``load_col`` if needed.

    Raises :class:`DatasetFileError` for a missing or empty file, a malformed header, a header
    without a column the config needs, a user-set ``load_col``/``unload_col`` that leaves such a
    column out (or names a column the file lacks), or a value that does not parse as its type.
    Returns the list of fields added to ``load_col`` (empty when nothing was added).
    """
    files = [atomic for atomic in _atomic_files(config)
             if atomic.source in ALWAYS_READ or _read_by_recbole(config, atomic.source)]
    for atomic in files:
        check_text(atomic.path, config)
        atomic.header = read_header(atomic.path, config)
    needs = _needs(config, files)
    _check_declared(config, files, needs)
    added = _complete_load_col(config, files, needs)
    _check_loaded(config, files, needs)
    for atomic in files:
        if _read_by_recbole(config, atomic.source):
            check_values(atomic.path, atomic.header, _loaded_fields(config, atomic), config)
    return added


def read_header(path, config):
    """``[(name, type)]`` of an atomic file's first line, or a :class:`DatasetFileError`."""
    separator = config["field_separator"]
    with open(path, encoding=config["encoding"]) as f:
        head = f.readline()
    if not head.strip():
        raise DatasetFileError(
            f"{path} is empty: an atomic file starts with a header line of "
            f"`name:type` fields separated by {separator!r} (types: {', '.join(FEATURE_TYPES)})"
        )
    head = head.rstrip("\n")
    if head.startswith("\ufeff"):
        raise DatasetFileError(
            f"{path} starts with a byte-order mark; set `encoding: utf-8-sig` in the config "
            f"(or save the file without the BOM)."
        )
    header, seen = [], {}
    for position, column in enumerate(head.split(separator), start=1):
        name, colon, ftype = column.partition(":")
        if not colon or ":" in ftype or not name or ftype not in FEATURE_TYPES:
            raise DatasetFileError(
                f"{path}, line 1 (header), column {position}: {column!r} is not `name:type` "
                f"with type one of {', '.join(FEATURE_TYPES)} (fields are separated by "
                f"`field_separator` = {separator!r}). Header: {head!r}"
            )
        if name in seen:
            raise DatasetFileError(
                f"{path}, line 1 (header): field `{name}` is declared twice (columns "
                f"{seen[name]} and {position}); RecBole keeps one column per field name: rename "
                f"or remove one. Header: {head!r}"
            )
        seen[name] = position
        header.append((name, ftype))
    return header


def check_text(path, config):
    """One pass over the bytes of an atomic file: it decodes as ``encoding``, and no field is
    longer than the limit of the reader RecBole parses it with (pandas' python engine, that is
    Python's ``csv.field_size_limit()``, with a one-character ``field_separator``). Either
    failure is a :class:`DatasetFileError` naming the file and the line."""
    setting, separator = config["encoding"], config["field_separator"]
    encoding = setting or "utf-8"  # null: pandas reads the values as utf-8
    try:
        decoder = codecs.getincrementaldecoder(encoding)("strict")
    except LookupError:
        raise DatasetFileError(
            f"config key `encoding` = {setting!r} is not an encoding Python knows: use a codec "
            "name such as 'utf-8', 'utf-8-sig' or 'latin-1'"
        ) from None
    limit = csv.field_size_limit() if len(separator) == 1 else None
    offset, line, tail, header = 0, 1, "", None
    with open(path, "rb") as f:
        while True:
            chunk = f.read(CHUNK_BYTES)
            pending = decoder.getstate()[0]  # bytes of a character cut by the last chunk
            try:
                text = decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as err:
                start = offset - len(pending) + err.start
                before = err.object[:err.start].decode(encoding, "replace").count("\n")
                raise DatasetFileError(
                    f"{path}, line {line + before} (byte offset {start}): "
                    f"{err.object[err.start:err.end]!r} is not {encoding} text (config key "
                    f"`encoding` = {setting!r}). Set `encoding` to the file's encoding (e.g. "
                    f"`encoding: latin-1`, or `cp1252` for Windows files), or save the file as "
                    f"{encoding}."
                ) from None
            lines = (tail + text).split("\n")
            tail = lines.pop() if chunk else ""
            if header is None and lines:
                header = lines[0].rstrip("\r").split(separator)
            if limit is not None and max(map(len, lines), default=0) > limit:
                _check_field_lengths(path, lines, line, separator, limit, header or [])
            line += len(lines)
            offset += len(chunk)
            if not chunk:
                return


def _check_field_lengths(path, lines, first, separator, limit, header):
    """Raise naming the first field of ``lines`` (numbered from ``first``) over ``limit``;
    ``header``: the file's header columns, to name the field."""
    for number, text in enumerate(lines, start=first):
        for position, value in enumerate(text.rstrip("\r").split(separator), start=1):
            if len(value) > limit:
                field = f" ({header[position - 1]!r})" if position <= len(header) else ""
                raise DatasetFileError(
                    f"{path}, line {number}, column {position}{field}: a value of {len(value):,} "
                    f"characters (starting {value[:20]!r}) is longer than the {limit:,} "
                    "characters RecBole's reader takes in one field (pandas' python engine, "
                    "Python's csv.field_size_limit()); shorten it (tokens are ids) or check "
                    f"`field_separator` = {separator!r}"
                )


def check_values(path, header, fields, config):
    """Check the ``fields`` of one file: data rows exist and float-like values parse.

    One pass over the float and float_seq columns RecBole will load (none for all-token files,
    where only the first data row is looked for): float columns are parsed by pandas' C reader,
    and only if that fails is the file read again as text to find the first bad value with
    RecBole's own rule (Python's ``float``). Empty values are allowed: RecBole fills them.
    """
    types = dict(header)
    numeric = {f"{name}:{types[name]}": name for name in fields if "float" in types[name]}
    if not numeric:
        if not _has_data_row(path, config):
            raise DatasetFileError(_no_rows_message(path, header))
        return
    as_float = {column: np.float64 for column in numeric if column.endswith(":float")}
    try:
        frame = _read_columns(path, config, numeric, as_float)
    except DatasetFileError:
        raise
    except ValueError:
        frame = _read_columns(path, config, numeric, {})
    if frame.empty:
        raise DatasetFileError(_no_rows_message(path, header))
    for column, name in numeric.items():
        if frame[column].dtype == np.float64:
            continue
        row, value = _first_bad_value(frame[column], types[name], config["seq_separator"])
        if row is not None:
            expected = (
                "a number"
                if types[name] == "float"
                else f"numbers separated by `seq_separator` = {config['seq_separator']!r}"
            )
            raise DatasetFileError(
                f"{path}, line {_line_of_row(path, config, row)}, field `{name}` "
                f"({types[name]}): {value!r} is not {expected} (empty values are allowed and "
                "filled by RecBole)"
            )


def _read_columns(path, config, columns, float_dtypes):
    """The ``columns`` (header strings) of an atomic file; text unless given a float dtype."""
    separator = config["field_separator"]
    try:
        return pd.read_csv(
            path,
            sep=separator,
            usecols=list(columns),
            dtype={column: float_dtypes.get(column, str) for column in columns},
            encoding=config["encoding"],
            engine="c" if len(separator) == 1 else "python",
        )
    except pd.errors.ParserError as error:
        raise DatasetFileError(f"{path} is not a valid atomic file: {error}") from error


def _first_bad_value(values, ftype, seq_separator):
    """(row index, value) of the first value Python's ``float`` rejects, else (None, None)."""
    values = values.dropna()
    if ftype == "float_seq":
        values = values.str.split(seq_separator, regex=False).explode()
        values = values[values.notna() & (values != "")]
    try:
        np.asarray(values.to_numpy(), dtype=np.float64)
        return None, None
    except ValueError:
        pass
    for row, value in values.items():
        try:
            float(value)
        except ValueError:
            return row, value
    return None, None


def _line_of_row(path, config, row):
    """1-based line number of data row ``row`` (pandas skips blank lines, so count them)."""
    separator = config["field_separator"]
    with open(path, encoding=config["encoding"]) as f:
        f.readline()
        seen = -1
        for number, line in enumerate(f, start=2):
            if line.strip() or separator in line:
                seen += 1
                if seen == row:
                    return number
    return "?"


def _has_data_row(path, config):
    separator = config["field_separator"]
    with open(path, encoding=config["encoding"]) as f:
        f.readline()
        return any(line.strip() or separator in line.rstrip("\r\n") for line in f)


def _no_rows_message(path, header):
    fields = ", ".join(f"{name}:{ftype}" for name, ftype in header)
    return f"{path} has a header ({fields}) but no data rows"


def _dataset_class(config):
    """The class RecBole's ``create_dataset`` builds for this config."""
    module = importlib.import_module("recbole.data.dataset")
    name = f"{config['model']}Dataset"
    if hasattr(module, name):
        return getattr(module, name)
    by_type = {
        ModelType.SEQUENTIAL: SequentialDataset,
        ModelType.KNOWLEDGE: KnowledgeBasedDataset,
    }
    return by_type.get(config["MODEL_TYPE"], module.Dataset)


def _atomic_files(config):
    """Every atomic file RecBole reads for ``config``; a missing required one raises."""
    directory, name = config["data_path"], config["dataset"]
    files = []

    def require(source, filename, key, why):
        path = os.path.join(directory, filename)
        if not os.path.isfile(path):
            raise DatasetFileError(
                f"{path} not found: {why} (config key `{key}` = {config[key]!r}). "
                f"Put RecBole atomic files in {directory}."
            )
        files.append(AtomicFile(source, path))

    benchmark = config["benchmark_filename"]
    if benchmark is None:
        require("inter", f"{name}.inter", "dataset", "every dataset needs its interactions")
    else:
        for part in benchmark:
            require(
                "inter", f"{name}.{part}.inter", "benchmark_filename", "a pre-split part is listed"
            )
    for source in ("user", "item"):
        path = os.path.join(directory, f"{name}.{source}")
        if os.path.isfile(path):
            files.append(AtomicFile(source, path))
    for suffix in config["additional_feat_suffix"] or []:
        require(suffix, f"{name}.{suffix}", "additional_feat_suffix", "it is listed")
    if issubclass(_dataset_class(config), KnowledgeBasedDataset):
        why = f"{config['model']} is a knowledge-aware model (RecBole's KnowledgeBasedDataset)"
        require("kg", f"{name}.kg", "model", why)
        require("link", f"{name}.link", "model", why)
    return files


def _label_needed(config):
    """Whether RecBole reads LABEL_FIELD from the file (no threshold makes it from a rating)."""
    modes = config["eval_args"]["mode"]
    modes = modes.values() if isinstance(modes, dict) else [modes]
    sampling = config["train_neg_sample_args"]
    sampled = isinstance(sampling, dict) and str(sampling.get("distribution")).lower() != "none"
    labeled_training = (
        config["MODEL_TYPE"] in (ModelType.CONTEXT, ModelType.DECISIONTREE) and not sampled
    )
    return "labeled" in modes or labeled_training


def _needs(config, files):
    """The columns this run cannot do without, per source."""
    needs = []
    uid, iid = config["USER_ID_FIELD"], config["ITEM_ID_FIELD"]
    if uid is not None:
        needs.append(Need("inter", uid, "USER_ID_FIELD", "it names each interaction's user"))
        needs.append(Need("user", uid, "USER_ID_FIELD", "RecBole joins user features on it"))
    if iid is not None:
        needs.append(Need("inter", iid, "ITEM_ID_FIELD", "it names each interaction's item"))
        needs.append(Need("item", iid, "ITEM_ID_FIELD", "RecBole joins item features on it"))
    eval_args = config["eval_args"] or {}
    split = eval_args.get("split")
    if config["benchmark_filename"] is None:
        why = None
        if isinstance(split, dict) and "TS" in split:
            why = "eval_args.split TS splits by time"
        elif eval_args.get("order") == "TO":
            why = "eval_args.order TO orders each user's interactions by time"
            if config["MODEL_TYPE"] == ModelType.SEQUENTIAL:
                why += " (sequential models build item sequences from it)"
        if why is not None:
            if config["TIME_FIELD"] is None:
                raise DatasetFileError(
                    f"config key `TIME_FIELD` is not set, but {why}: set TIME_FIELD to the "
                    f"name of the timestamp column of {config['dataset']}.inter"
                )
            needs.append(Need("inter", config["TIME_FIELD"], "TIME_FIELD", why))
    elif config["MODEL_TYPE"] == ModelType.SEQUENTIAL and iid is not None:
        # RecBole's pre-split sequential format: each row holds the history and the next item
        needs.append(Need("inter", iid + config["LIST_SUFFIX"], "benchmark_filename",
                          "a pre-split dataset of a sequential model gives each row's item "
                          "history (RecBole's SequentialDataset._benchmark_presets reads it)"))
    threshold = config["threshold"]
    if isinstance(threshold, dict):
        for field in threshold:
            needs.append(Need("inter", field, "threshold", "labels are made from its values"))
    elif _label_needed(config):
        needs.append(
            Need(
                "inter",
                config["LABEL_FIELD"],
                "LABEL_FIELD",
                "this model or eval_args.mode 'labeled' reads 0/1 labels (or set `threshold`, "
                "e.g. {rating: 4}, to make them from a rating column)",
            )
        )
    if any(atomic.source == "kg" for atomic in files):
        why = "knowledge-aware models read the graph's triples"
        for key in ("HEAD_ENTITY_ID_FIELD", "RELATION_ID_FIELD", "TAIL_ENTITY_ID_FIELD"):
            needs.append(Need("kg", config[key], key, why))
        why = "it links items to graph entities"
        needs.append(Need("link", iid, "ITEM_ID_FIELD", why))
        needs.append(Need("link", config["ENTITY_ID_FIELD"], "ENTITY_ID_FIELD", why))
    for field in config["val_interval"] or {}:
        needs.append(Need("*", field, "val_interval", "rows are filtered by its values"))
    return needs


def _needed_in(files, need):
    """The files that must hold ``need`` (for ``*``: the first read file that declares it)."""
    if need.source != "*":
        return [atomic for atomic in files if atomic.source == need.source]
    return [atomic for atomic in files if need.field in atomic.names][:1]


def _check_declared(config, files, needs):
    """Every needed column is declared in its file's header (or, for ``*``, in some file)."""
    for need in needs:
        holders = _needed_in(files, need)
        if need.source == "*" and not holders:
            raise DatasetFileError(
                f"config key `{need.key}` names field `{need.field}`, which no atomic file of "
                f"{config['dataset']} declares ({_headers(files)})"
            )
        for atomic in holders:
            if atomic.source in ("user", "item") and not _read_by_recbole(config, atomic.source):
                continue
            if need.field not in atomic.names:
                raise DatasetFileError(
                    f"{atomic.path} has no field `{need.field}` (config key `{need.key}`: "
                    f"{need.why}). Its header declares: {', '.join(atomic.names)}. Add the "
                    f"column, or set `{need.key}` to the column that holds it."
                )
    user_set = config["load_col"] if "load_col" in config.external_config_dict else None
    for source, fields in (user_set or {}).items():
        if fields == "*":
            continue
        for atomic in files:
            missing = [field for field in fields if field not in atomic.names]
            if atomic.source == source and missing:
                raise DatasetFileError(
                    f"config key `load_col` lists {missing} for `{source}`, but {atomic.path} "
                    f"declares only: {', '.join(atomic.names)}. Remove them from load_col."
                )


def _headers(files):
    return "; ".join(f"{os.path.basename(a.path)}: {', '.join(a.names)}" for a in files)


def _read_by_recbole(config, source):
    """Whether RecBole's ``_load_feat`` reads this source at all (``load_col`` lists it with at
    least one field, or ``'*'``)."""
    load_col = config["load_col"]
    return load_col is None or bool(load_col.get(source))


def _loaded_fields(config, atomic):
    """The header fields RecBole loads from ``atomic`` under the current load_col/unload_col."""
    load_col, unload_col = config["load_col"], config["unload_col"] or {}
    if load_col is None or load_col.get(atomic.source) == "*":
        load = None
    else:
        load = set(load_col.get(atomic.source) or ())
    unload = set(unload_col.get(atomic.source) or ())
    return [n for n in atomic.names if (load is None or n in load) and n not in unload]


def _missing_loads(config, files, needs):
    """``{(source, field): need}`` for needed fields declared but not loaded."""
    missing = {}
    for need in needs:
        for atomic in _needed_in(files, need):
            if atomic.source in ("user", "item") and not _read_by_recbole(config, atomic.source):
                continue
            if need.field in atomic.names and need.field not in _loaded_fields(config, atomic):
                missing.setdefault((atomic.source, need.field), need)
    return missing


def _complete_load_col(config, files, needs):
    """Add needed, declared columns to RecBole's default ``load_col`` (not to a user's)."""
    external = config.external_config_dict
    if "load_col" in external or "unload_col" in external:
        return []
    missing = _missing_loads(config, files, needs)
    if not missing:
        return []
    load_col = {
        source: list(fields) if isinstance(fields, (list, tuple)) else fields
        for source, fields in config["load_col"].items()
    }
    added = []
    for source, field in missing:
        if load_col.get(source) == "*":
            continue
        load_col.setdefault(source, [])
        if field not in load_col[source]:
            load_col[source].append(field)
            added.append(f"{source}.{field}")
    config.final_config_dict["load_col"] = load_col
    getLogger().info(
        set_color("load_col", "blue")
        + f": added {', '.join(added)} (declared in the atomic files and needed by this run; "
        f"set `load_col` yourself to choose the columns)"
    )
    return added


def _check_loaded(config, files, needs):
    """A user-set load_col/unload_col that leaves out a needed column is a clear error."""
    missing = _missing_loads(config, files, needs)
    for (source, field), need in missing.items():
        if field in ((config["unload_col"] or {}).get(source) or ()):
            raise DatasetFileError(
                f"config key `unload_col` drops `{field}` from {source}, but `{need.key}` needs "
                f"it ({need.why}). Remove it from unload_col."
            )
    if missing:
        (source, field), need = next(iter(missing.items()))
        current = (config["load_col"] or {}).get(source)
        wanted = [*(current or []), *(f for s, f in missing if s == source)]
        raise DatasetFileError(
            f"config key `load_col` does not load `{field}` from the `{source}` file "
            f"(load_col.{source} = {current}), but `{need.key}` needs it ({need.why}). Set "
            f"`load_col: {{{source}: {wanted}}}` (keeping your other sources), or `load_col: ~` "
            f"to load every column."
        )


# ----------------------------------------------------------------------------- split


def _split_parts(dataset, split, sizes):
    """``{group size: (train, valid, test)}`` for ``split`` = eval_args['split'], per group size.

    Uses RecBole's own per-group arithmetic (``_calcu_split_ids``, leave-one-out indexing).
    """
    mode, value = next(iter(split.items()))
    parts = {}
    for size in sizes:
        if mode == "RS":
            total = sum(value)
            ids = dataset._calcu_split_ids(tot=size, ratios=[r / total for r in value])
            bounds = [0, *ids, size]
            counts = [end - start for start, end in zip(bounds, bounds[1:])]
            counts = (counts + [0, 0])[:3]
        elif mode == "LS":
            leave = 2 if value == "valid_and_test" else 1
            index = dataset._split_index_by_leave_one_out([range(size)], leave_one_num=leave)
            counts = [len(part) for part in index]
            if value == "valid_only":
                counts = [counts[0], counts[1], 0]
            elif value == "test_only":
                counts = [counts[0], 0, counts[1]]
            elif value != "valid_and_test":
                raise DatasetFileError(
                    f"config key `eval_args.split` LS = {value!r} is not one of "
                    "valid_and_test, valid_only, test_only"
                )
        else:
            raise ValueError(mode)
        parts[size] = tuple(counts)
    return parts


def predict_split(config, dataset):
    """(train, valid, test) sizes RecBole's ``dataset.build()`` will produce, without building.

    Sequential datasets are split after augmentation: a user with n interactions yields n - 1
    training samples (the first interaction is only ever history).
    """
    if config["benchmark_filename"] is not None:
        sizes = list(dataset.file_size_list) + [0, 0]
        return tuple(sizes[:3])
    inter = dataset.inter_feat
    sequential = isinstance(dataset, SequentialDataset)
    split = config["eval_args"]["split"]
    mode = next(iter(split))
    if mode == "TS":
        return _predict_time_split(config, dataset, split["TS"], sequential)
    group_by = config["eval_args"].get("group_by")
    if mode == "RS" and (group_by is None or str(group_by).lower() == "none"):
        total = len(inter) - (inter[dataset.uid_field].nunique() if sequential else 0)
        return _split_parts(dataset, split, [total])[total]
    per_user = inter[dataset.uid_field].value_counts().to_numpy()
    if sequential:
        per_user = per_user - 1
    per_user = per_user[per_user > 0]
    histogram = Counter(per_user.tolist())
    parts = _split_parts(dataset, split, histogram)
    totals = np.zeros(3, dtype=np.int64)
    for size, users in histogram.items():
        totals += users * np.asarray(parts[size])
    return tuple(int(t) for t in totals)


def _predict_time_split(config, dataset, ratios, sequential):
    """Sizes of RecBole's TS split: a global time boundary for test, ratios within the rest."""
    uid, time = dataset.uid_field, dataset.time_field
    frame = dataset.inter_feat[[uid, time]]
    if sequential:
        frame = frame.sort_values([uid, time], kind="stable")
        frame = frame[frame[uid].duplicated()]
    if frame.empty:
        return (0, 0, 0)
    total = sum(ratios)
    ratios = [r / total for r in ratios]
    boundary = np.percentile(frame[time].to_numpy(), 100 * (1 - ratios[-1]))
    kept = (frame[time] <= boundary).groupby(frame[uid]).sum().to_numpy()
    train = (kept * (ratios[0] / (1 - ratios[2]))).astype(np.int64)
    return int(train.sum()), int((kept - train).sum()), int(len(frame) - kept.sum())


def _requested(split):
    """Whether the split asks for a validation part and a test part."""
    mode, value = next(iter(split.items()))
    if mode == "LS":
        return value in ("valid_and_test", "valid_only"), value in ("valid_and_test", "test_only")
    value = list(value) + [0, 0]
    return value[1] > 0, value[2] > 0


def _minimum_sizes(dataset, split, sequential):
    """Fewest interactions a user needs to reach train, valid and test under ``split``."""
    offset = 1 if sequential else 0
    parts = _split_parts(dataset, split, range(1, 12))
    return [
        next((size + offset for size in range(1, 12) if parts[size][i] > 0), None) for i in range(3)
    ]


def check_split(config, dataset):
    """Raise :class:`DatasetFileError` if ``eval_args`` leaves no training or no evaluation data.

    Call between ``create_dataset`` and ``data_preparation``. Saved dataloaders (which RecBole
    loads instead of splitting) are not checked. A requested but empty validation or test part
    is logged as a warning: RecBole then trains without validation or skips the test.
    Returns the predicted (train, valid, test) sizes.
    """
    saved = config["dataloaders_save_path"] or os.path.join(
        config["checkpoint_dir"], f"{config['dataset']}-for-{config['model']}-dataloader.pth"
    )
    if os.path.exists(saved):
        return None
    sizes = predict_split(config, dataset)
    train, valid, test = sizes
    benchmark = config["benchmark_filename"]
    split = config["eval_args"]["split"]
    if train > 0 and (valid > 0 or test > 0):
        if benchmark is None:
            for wanted, count, part in zip(
                _requested(split), (valid, test), ("validation", "test")
            ):
                if wanted and count == 0:
                    getLogger().warning(
                        f"eval_args.split = {split} leaves the {part} set empty "
                        f"({_describe(dataset)}); RecBole runs without it."
                    )
        return sizes
    empty = [
        part for part, count in (("training", train), ("evaluation", valid + test)) if not count
    ]
    empty = " and no ".join(empty)
    if benchmark is not None:
        raise DatasetFileError(
            f"benchmark_filename = {benchmark} gives (train, valid, test) = {sizes} rows after "
            f"loading: no {empty} data. Put rows in every listed {config['dataset']}.<part>.inter."
        )
    advice = ""
    mode = next(iter(split))
    if mode == "LS" or (
        mode == "RS" and str(config["eval_args"].get("group_by")).lower() != "none"
    ):
        sequential = isinstance(dataset, SequentialDataset)
        minimum = _minimum_sizes(dataset, split, sequential)
        reach = [
            f"{count}{' interactions' if part == 'training' else ''} to reach {part}"
            for count, part in zip(minimum, ("training", "validation", "test"))
            if count is not None
        ]
        advice = f" Under this split a user needs at least {', '.join(reach)}" + (
            " (a sequential model predicts each interaction after the user's first)."
            if sequential
            else "."
        )
    raise DatasetFileError(
        f"eval_args.split = {split} leaves no {empty} data for dataset {config['dataset']}: "
        f"predicted (train, valid, test) = {sizes} from {_describe(dataset)}.{advice} Add "
        f"interactions, relax the filters (user_inter_num_interval, val_interval, ...) or change "
        f"`eval_args`."
    )


def _describe(dataset):
    users = dataset.inter_feat[dataset.uid_field].nunique()
    text = f"{len(dataset.inter_feat)} interactions of {users} users after filtering"
    counts = dataset.inter_feat[dataset.uid_field].value_counts()
    spread = counts.value_counts().sort_index()
    shown = ", ".join(f"{n} users x {k}" for k, n in list(spread.items())[:4])
    return f"{text}; interactions per user: {shown}{', ...' if len(spread) > 4 else ''}"
