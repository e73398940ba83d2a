"""Atomic-file checks, load_col completion and split prediction (recbole_fofa/data_check.py)."""

import csv
import logging

import pandas as pd
import pytest
from conftest import write_atomic_files
from recbole.data import create_dataset

from recbole_fofa import Config, data_check, run_recbole_fofa
from recbole_fofa.data_check import DatasetFileError, check_split, predict_split
from recbole_fofa.quick_start import prepare

INTER = ["user_id:token", "item_id:token", "timestamp:float"]
TINY = {
    "state": "ERROR",
    "show_progress": False,
    "epochs": 1,
    "hidden_size": 8,
    "inner_size": 8,
    "embedding_size": 8,
    "n_layers": 1,
    "n_heads": 1,
    "MAX_ITEM_LIST_LENGTH": 5,
    "train_batch_size": 32,
    "eval_batch_size": 64,
    "metrics": ["NDCG", "Hit"],
    "valid_metric": "NDCG@10",
}


def rows(n_users, per_user, n_items=30):
    """Interactions of ``n_users`` users with ``per_user`` each (int or list), increasing time."""
    counts = per_user if isinstance(per_user, list) else [per_user] * n_users
    out, time = [], 0
    for user, count in enumerate(counts):
        for step in range(count):
            time += 1
            out.append((f"u{user}", f"i{(3 * user + step) % n_items}", time))
    return out


def config_for(tmp_path, model="SASRec", name="mine", **extra):
    return Config(model=model, dataset=name, config_dict={"data_path": str(tmp_path), **extra})


def test_empty_inter_is_a_clear_error(tmp_path):
    write_atomic_files(tmp_path, "mine", {"inter": ""})
    with pytest.raises(DatasetFileError, match=r"mine\.inter is empty.*name:type"):
        config_for(tmp_path)


def test_header_only_inter_is_a_clear_error(tmp_path):
    write_atomic_files(tmp_path, "mine", {"inter": "\t".join(INTER) + "\n"})
    with pytest.raises(DatasetFileError, match=r"mine\.inter has a header .* but no data rows"):
        config_for(tmp_path)


def test_missing_item_column_names_file_field_key_and_header(tmp_path):
    write_atomic_files(
        tmp_path, "mine", {"inter": (["user_id:token", "timestamp:float"], [("u1", 1)])}
    )
    with pytest.raises(DatasetFileError) as error:
        config_for(tmp_path)
    message = str(error.value)
    assert "mine.inter has no field `item_id`" in message
    assert "ITEM_ID_FIELD" in message and "declares: user_id, timestamp" in message


def test_bad_float_names_line_field_and_value(tmp_path):
    text = "\t".join(INTER) + "\nu1\ti1\t1\nu1\ti2\t2\n\nu2\ti3\t3x\nu2\ti4\tbad\n"
    write_atomic_files(tmp_path, "mine", {"inter": text})
    with pytest.raises(DatasetFileError) as error:
        config_for(tmp_path)
    message = str(error.value)
    # line 4 is blank (pandas skips it), so the first bad value is on line 5
    assert "mine.inter, line 5, field `timestamp` (float): '3x' is not a number" in message


def test_bad_float_seq_value_names_its_line(tmp_path):
    header = [*INTER, "scores:float_seq"]
    data = [("u1", "i1", 1, "0.5 1"), ("u1", "i2", 2, ""), ("u2", "i3", 3, "1 two")]
    write_atomic_files(tmp_path, "mine", {"inter": (header, data)})
    with pytest.raises(DatasetFileError, match=r"line 4, field `scores` \(float_seq\): 'two'"):
        config_for(tmp_path, load_col=None)


def test_values_python_float_accepts_pass_and_empty_values_are_allowed(tmp_path):
    data = [(f"u{u}", f"i{k}", v) for u in range(4) for k, v in enumerate(["1_000", "", "3", "4"])]
    write_atomic_files(tmp_path, "mine", {"inter": (INTER, data)})
    assert config_for(tmp_path)["load_col"] == {"inter": ["user_id", "item_id", "timestamp"]}


def test_unparsed_columns_are_not_value_checked(tmp_path):
    header = [*INTER, "rating:float"]
    data = [("u1", "i1", 1, "not-a-number"), ("u1", "i2", 2, "4")]
    write_atomic_files(tmp_path, "mine", {"inter": (header, data)})
    config_for(tmp_path)  # rating is not loaded, so RecBole never parses it
    with pytest.raises(DatasetFileError, match=r"line 2, field `rating`.*'not-a-number'"):
        config_for(tmp_path, load_col=None)


def test_bad_header_type_lists_the_allowed_types(tmp_path):
    header = ["user_id:token", "item_id:str", "timestamp:float"]
    write_atomic_files(tmp_path, "mine", {"inter": (header, [("u1", "i1", 1)])})
    with pytest.raises(DatasetFileError) as error:
        config_for(tmp_path)
    message = str(error.value)
    assert "line 1 (header), column 2: 'item_id:str'" in message
    assert "token, float, token_seq, float_seq" in message


def test_windows_line_endings_load_as_in_recbole(tmp_path):
    text = "\t".join(INTER) + "\r\n" + "".join(f"{u}\t{i}\t{t}\r\n" for u, i, t in rows(3, 4))
    write_atomic_files(tmp_path, "mine", {"inter": text})
    dataset = create_dataset(config_for(tmp_path, state="ERROR"))
    assert dataset.inter_feat["timestamp"].tolist() == [float(t) for t in range(1, 13)]


def test_byte_order_mark_names_the_encoding_key(tmp_path):
    text = "\ufeff" + "\t".join(INTER) + "\nu1\ti1\t1\n"
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "mine.inter").write_text(text, encoding="utf-8")
    with pytest.raises(DatasetFileError, match=r"byte-order mark; set `encoding: utf-8-sig`"):
        config_for(tmp_path)
    config_for(tmp_path, encoding="utf-8-sig")


def test_a_field_declared_twice_names_the_file_and_field(tmp_path):
    header = ["user_id:token", "item_id:token", "timestamp:float", "user_id:float"]
    write_atomic_files(tmp_path, "mine", {"inter": (header, [("u1", "i1", 1, 2)])})
    with pytest.raises(DatasetFileError) as error:
        config_for(tmp_path)
    assert (f"{tmp_path / 'mine' / 'mine.inter'}, line 1 (header): field `user_id` is declared "
            "twice (columns 1 and 4)") in str(error.value)


@pytest.mark.parametrize("chunk", [1 << 20, 7])  # 7: the bad bytes straddle read chunks
def test_non_utf8_bytes_name_the_file_line_offset_and_encoding_key(tmp_path, monkeypatch,
                                                                   chunk):
    monkeypatch.setattr(data_check, "CHUNK_BYTES", chunk)
    head = ("\t".join(INTER) + "\nu1\ti1\t1\nu1\ti2\t2\n").encode()
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "mine.inter").write_bytes(head + "u2\tcaf\u00e9\t3\n".encode("latin-1"))
    with pytest.raises(DatasetFileError) as error:
        config_for(tmp_path)
    message = str(error.value)
    offset = len(head) + len("u2\tcaf")
    assert f"mine.inter, line 4 (byte offset {offset}): b'\\xe9' is not utf-8 text" in message
    assert "config key `encoding` = None" in message and "`encoding: latin-1`" in message
    # the same bytes in the first line (the header) and after a multi-byte character
    (folder / "mine.inter").write_bytes("user_\u00e9:token".encode("latin-1") + head[7:])
    with pytest.raises(DatasetFileError, match=r"line 1 \(byte offset 5\): b'\\xe9'"):
        config_for(tmp_path)
    (folder / "mine.inter").write_bytes(head + "u2\t\u00e9\u00e9\t3\n".encode() + b"\xff\n")
    with pytest.raises(DatasetFileError, match=rf"line 5 \(byte offset {len(head) + 10}\)"):
        config_for(tmp_path)
    # with the file's encoding named, it loads
    (folder / "mine.inter").write_bytes(head + "u2\tcaf\u00e9\t3\n".encode("latin-1"))
    assert config_for(tmp_path, encoding="latin-1")["encoding"] == "latin-1"
    with pytest.raises(DatasetFileError, match=r"`encoding` = 'utf-9' is not an encoding"):
        config_for(tmp_path, encoding="utf-9")


def test_a_field_over_the_reader_limit_names_the_file_and_line(tmp_path, monkeypatch):
    monkeypatch.setattr(data_check, "CHUNK_BYTES", 1 << 16)  # the long line spans chunks
    long = "x" * (csv.field_size_limit() + 1)
    write_atomic_files(tmp_path, "mine", {"inter": (INTER, [("u1", "i1", 1), ("u1", long, 2)])})
    with pytest.raises(DatasetFileError) as error:
        config_for(tmp_path)
    message = str(error.value)
    assert "mine.inter, line 3, column 2 ('item_id:token'): a value of 131,073 characters" in (
        message)
    assert "csv.field_size_limit()" in message
    # the limit is RecBole's reader's: pandas' python engine refuses that file
    with pytest.raises(pd.errors.ParserError, match="field larger than field limit"):
        pd.read_csv(tmp_path / "mine" / "mine.inter", sep="\t", engine="python", dtype=str)
    # at the limit it loads, and a multi-character separator has no such limit
    at_limit = [("u1", "i1", 1), ("u1", long[:-1], 2)]
    write_atomic_files(tmp_path, "mine", {"inter": (INTER, at_limit)})
    config_for(tmp_path)


def test_an_empty_file_that_load_col_never_reads_is_not_refused(tmp_path):
    write_atomic_files(tmp_path, "mine", {"inter": (INTER, rows(6, 5)), "item": ""})
    load_col = {"inter": ["user_id", "item_id", "timestamp"]}
    config = config_for(tmp_path, load_col=load_col, state="ERROR")
    dataset = create_dataset(config)  # RecBole never opens it either
    assert dataset.item_feat is None and len(dataset.inter_feat) == 30
    config_for(tmp_path)  # SASRec's default load_col reads the interactions only
    for read in ({"load_col": dict(load_col, item=["item_id"])}, {"load_col": None}):
        with pytest.raises(DatasetFileError, match=r"mine\.item is empty"):
            config_for(tmp_path, **read)  # a file RecBole reads is still checked


def test_knowledge_model_without_kg_file(tmp_path):
    write_atomic_files(tmp_path, "mine", {"inter": (INTER, rows(5, 4))})
    with pytest.raises(DatasetFileError, match=r"mine\.kg not found: KGAT is a knowledge-aware"):
        config_for(tmp_path, model="KGAT")


def test_kg_file_without_relation_column(tmp_path):
    kg = (["head_id:token", "tail_id:token"], [("e1", "e2")])
    link = (["item_id:token", "entity_id:token"], [("i1", "e1")])
    write_atomic_files(tmp_path, "mine", {"inter": (INTER, rows(5, 4)), "kg": kg, "link": link})
    with pytest.raises(DatasetFileError, match=r"mine\.kg has no field `relation_id`.*RELATION_ID"):
        config_for(tmp_path, model="KGAT")


def test_knowledge_model_files_and_load_col(tmp_path):
    kg = (["head_id:token", "relation_id:token", "tail_id:token"], [("e1", "r1", "e2")])
    link = (["item_id:token", "entity_id:token"], [("i1", "e1"), ("i2", "e2")])
    write_atomic_files(tmp_path, "mine", {"inter": (INTER, rows(5, 4)), "kg": kg, "link": link})
    config = config_for(tmp_path, model="KGAT")
    assert config["load_col"] == expected_load_col(config)
    with pytest.raises(DatasetFileError) as error:
        config_for(tmp_path, model="KGAT", load_col={"inter": ["user_id", "item_id"]})
    assert "`load_col` does not load `head_id` from the `kg` file (load_col.kg = None)" in str(
        error.value
    )
    assert "{kg: ['head_id', 'relation_id', 'tail_id']}" in str(error.value)


def test_missing_benchmark_part(tmp_path):
    write_atomic_files(tmp_path, "mine", {"inter": (INTER, rows(3, 4))})
    write_atomic_files(tmp_path, "mine", {"train.inter": (INTER, rows(3, 4))})
    with pytest.raises(DatasetFileError, match=r"mine\.valid\.inter not found.*benchmark_filename"):
        config_for(tmp_path, benchmark_filename=["train", "valid", "test"])


@pytest.mark.slow
def test_own_dataset_without_load_col_runs_sasrec_end_to_end(tmp_path, caplog):
    write_atomic_files(tmp_path, "mine", {"inter": (INTER, rows(12, 6))})
    with caplog.at_level(logging.INFO):
        config = config_for(tmp_path)
    assert config["load_col"] == {"inter": ["user_id", "item_id", "timestamp"]}
    assert any("added inter.timestamp" in record.getMessage() for record in caplog.records)
    result = run_recbole_fofa(
        model="SASRec",
        dataset="mine",
        config_dict={**TINY, "data_path": str(tmp_path), "epochs": 2},
        saved=False,
    )
    assert 0.0 <= result["test_result"]["ndcg@10"] <= 1.0


def test_general_model_keeps_recbole_default_load_col(tmp_path):
    write_atomic_files(tmp_path, "mine", {"inter": (INTER, rows(5, 4))})
    assert config_for(tmp_path, model="BPR")["load_col"] == {"inter": ["user_id", "item_id"]}


def test_user_load_col_without_timestamp_names_load_col(tmp_path):
    write_atomic_files(tmp_path, "mine", {"inter": (INTER, rows(5, 4))})
    with pytest.raises(DatasetFileError) as error:
        config_for(tmp_path, load_col={"inter": ["user_id", "item_id"]})
    message = str(error.value)
    assert "config key `load_col` does not load `timestamp`" in message
    assert "TIME_FIELD" in message and "'user_id', 'item_id', 'timestamp'" in message


def test_user_unload_col_of_a_needed_field_names_unload_col(tmp_path):
    write_atomic_files(tmp_path, "mine", {"inter": (INTER, rows(5, 4))})
    with pytest.raises(DatasetFileError, match=r"`unload_col` drops `timestamp`"):
        config_for(tmp_path, load_col=None, unload_col={"inter": ["timestamp"]})


def test_user_load_col_naming_an_undeclared_column(tmp_path):
    write_atomic_files(tmp_path, "mine", {"inter": (INTER, rows(5, 4))})
    with pytest.raises(DatasetFileError, match=r"lists \['rating'\] for `inter`"):
        config_for(tmp_path, load_col={"inter": ["user_id", "item_id", "timestamp", "rating"]})


def test_threshold_field_is_completed_for_context_models(tmp_path):
    header = [*INTER, "rating:float"]
    data = [(u, i, t, 1 + t % 5) for u, i, t in rows(6, 5)]
    write_atomic_files(tmp_path, "mine", {"inter": (header, data)})
    config = config_for(tmp_path, model="FM", threshold={"rating": 4})
    assert config["load_col"] == {"inter": ["user_id", "item_id", "rating"]}
    with pytest.raises(DatasetFileError, match=r"no field `label`.*`threshold`"):
        config_for(tmp_path, model="FM")


def expected_load_col(config):
    """load_col as RecBole's own resolution leaves it (internal YAML, then the user's)."""
    return {**config.internal_config_dict, **config.external_config_dict}["load_col"]


def test_ml100k_and_planted_load_col_unchanged(planted):
    config = Config(model="SASRec", dataset="ml-100k")
    assert config["load_col"] == expected_load_col(config)
    assert "timestamp" in config["load_col"]["inter"]  # RecBole's own ml-100k preset
    name, settings = planted
    config = Config(model="SASRec", dataset=name, config_dict=settings)
    assert config["load_col"] == expected_load_col(config) == settings["load_col"]
    config = Config(model="BPR", dataset="ml-100k")
    assert config["load_col"] == expected_load_col(config)


def test_one_interaction_per_user_is_a_split_error(tmp_path):
    write_atomic_files(tmp_path, "mine", {"inter": (INTER, rows(10, 1))})
    with pytest.raises(DatasetFileError) as error:
        prepare("SASRec", "mine", config_dict={**TINY, "data_path": str(tmp_path)})
    message = str(error.value)
    assert "eval_args.split = {'LS': 'valid_and_test'} leaves no training and no evaluation" in (
        message
    )
    assert "(train, valid, test) = (0, 0, 0)" in message and "10 users x 1" in message
    assert "at least 2 interactions to reach training, 4 to reach validation, 3" in message


def test_two_interactions_per_user_leave_no_evaluation_data(tmp_path):
    write_atomic_files(tmp_path, "mine", {"inter": (INTER, rows(10, 2))})
    with pytest.raises(DatasetFileError, match=r"no evaluation data.*\(10, 0, 0\)"):
        prepare("SASRec", "mine", config_dict={**TINY, "data_path": str(tmp_path)})


SPLITS = {
    "LS": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "full"},
    "LS-valid": {"split": {"LS": "valid_only"}, "order": "TO", "group_by": "user", "mode": "full"},
    "RS": {"split": {"RS": [0.8, 0.1, 0.1]}, "order": "TO", "group_by": "user", "mode": "full"},
    "RS-all": {"split": {"RS": [0.6, 0.2, 0.2]}, "order": "TO", "group_by": None, "mode": "full"},
    "TS": {"split": {"TS": [0.8, 0.1, 0.1]}, "order": "TO", "group_by": "user", "mode": "full"},
}


@pytest.mark.parametrize("model", ["SASRec", "BPR"])
@pytest.mark.parametrize("split", list(SPLITS))
def test_predicted_split_sizes_equal_recbole_build(tmp_path, model, split):
    per_user = [1, 2, 2, 3, 4, 5, 7, 1, 3, 9]
    write_atomic_files(tmp_path, "mine", {"inter": (INTER, rows(10, per_user))})
    config = config_for(tmp_path, model=model, eval_args=SPLITS[split], state="ERROR")
    dataset = create_dataset(config)
    predicted = predict_split(config, dataset)
    built = tuple(len(part) for part in dataset.build())
    assert predicted == built
    assert check_split(config, create_dataset(config)) == built
