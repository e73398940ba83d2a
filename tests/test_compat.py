"""Each recbole 1.2.1 work-around in recbole_fofa.compat; every test fails without its fix."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from recbole.config import Config as StockConfig
from recbole.data import create_dataset

import recbole_fofa
from recbole_fofa import compat, run_recbole_fofa
from recbole_fofa.quick_start import prepare


def test_numpy_aliases_let_the_stock_config_run(planted):
    """C2/C3: RecBole's Config reads np.float_ & co., which numpy 2 removed."""
    dataset, config = planted
    assert np.float_ is np.float64 and np.complex_ is np.complex128 and np.unicode_ is np.str_
    from recbole.model.sequential_recommender import SASRec

    # The stock Config loads no plugin YAML: CE models need train_neg_sample_args set by hand.
    stock = StockConfig(model=SASRec, dataset=dataset,
                        config_dict=dict(config, train_neg_sample_args=None))
    assert stock["model"] == "SASRec"


def test_stock_trainers_checkpoint_loads_only_through_the_checkpoint_loader(planted):
    """C1: torch >= 2.6 refuses RecBole's checkpoints in RecBole's own bare load; the plugin's
    restricted loader reads them, and leaves no process-wide switch behind."""
    from recbole.trainer import Trainer as StockTrainer

    dataset, config = planted
    config["epochs"] = 1
    cfg, model, (train, valid, test) = prepare("SASRec", dataset, config_dict=config)
    trainer = StockTrainer(cfg, model)
    trainer.fit(train, valid, saved=True)
    if tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 6):
        with pytest.raises(Exception, match="weights_only"):
            trainer.evaluate(test, load_best_model=True)
    checkpoint = compat.load_checkpoint_file(trainer.saved_model_file)
    assert checkpoint["config"]["model"] == "SASRec"
    assert set(checkpoint["state_dict"]) == set(model.state_dict())
    assert "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" not in __import__("os").environ


@pytest.mark.slow
def test_beyond_accuracy_metrics_work_with_the_tensor_safe_collector(planted):
    """C13: recbole 1.2.1 calls .cpu() on the ints its own Collector stores."""
    dataset, config = planted
    config.update(epochs=1, metrics=["NDCG", "Hit", "ItemCoverage", "GiniIndex"])
    result = run_recbole_fofa(model="SASRec", dataset=dataset, config_dict=config)
    assert 0.0 < result["test_result"]["itemcoverage@10"] <= 1.0
    assert 0.0 <= result["test_result"]["giniindex@10"] <= 1.0


def test_importing_recbole_models_leaves_anomaly_detection_off():
    """C16: SINE's module turns on torch's anomaly mode at import."""
    assert recbole_fofa.get_model("SINE") is not None
    assert not torch.is_anomaly_enabled()


def test_float_field_nans_are_filled(tmp_path):
    """C7: on pandas 3 RecBole leaves NaNs in float fields (hence the pandas<3 constraint)."""
    folder = tmp_path / "gappy"
    folder.mkdir()
    rows = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    rows += [f"u{u}\ti{i}\t{'' if (u + i) % 3 == 0 else u % 5 + 1}\t{10 * u + i}"
             for u in range(1, 9) for i in range(1, 7)]
    (folder / "gappy.inter").write_text("\n".join(rows) + "\n")
    config = recbole_fofa.Config(model="SASRec", dataset="gappy", config_dict={
        "data_path": str(tmp_path), "state": "ERROR",
        "load_col": {"inter": ["user_id", "item_id", "rating", "timestamp"]}})
    dataset = create_dataset(config)
    assert not dataset.inter_feat["rating"].isna().any()


@pytest.mark.slow
def test_pipeline_never_imports_ray(tmp_path, planted):
    """C4/C5: recbole.quick_start imports ray 2.6.3, which breaks on numpy 2."""
    dataset, config = planted
    config["epochs"] = 1
    script = textwrap.dedent(f"""
        import sys
        import recbole_fofa
        recbole_fofa.run_recbole_fofa(model="SASRec", dataset="{dataset}",
                                      config_dict={config!r})
        assert "ray" not in sys.modules, "ray was imported"
        assert "recbole.quick_start" not in sys.modules
        print("no ray")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)
    assert done.returncode == 0 and "no ray" in done.stdout, done.stderr[-2000:]


def test_graph_models_build_their_adjacency_with_dok_update(planted, monkeypatch):
    """C8: scipy >= 1.13 has no dok_matrix._update, which LightGCN (and 6 more) call."""
    import scipy.sparse as sp

    dataset, config = planted
    config["epochs"] = 1
    _, model, (train, _, _) = prepare("LightGCN", dataset, config_dict=config)
    inter = train._dataset.inter_matrix(form="coo")
    n = model.n_users + model.n_items
    rows = np.concatenate([inter.row, inter.col + model.n_users])
    cols = np.concatenate([inter.col + model.n_users, inter.row])
    adj = sp.coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n)).tocsr()
    adj.data[:] = 1.0  # repeated interactions are one edge, as in the dict recbole builds
    d = np.power(np.asarray(adj.sum(axis=1)).ravel() + 1e-7, -0.5)
    reference = sp.diags(d) @ adj @ sp.diags(d)
    np.testing.assert_allclose(model.norm_adj_matrix.to_dense().numpy(), reference.toarray(),
                               rtol=1e-5, atol=1e-7)

    matrix = sp.dok_matrix((3, 4), dtype=np.float32)
    matrix._update({(0, 1): 2.0, (2, 3): 5.0})
    assert matrix.toarray().tolist() == [[0, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 5]]

    monkeypatch.delattr(sp.dok_matrix, "_update", raising=False)
    if not hasattr(sp.dok_matrix, "_update"):  # scipy >= 1.13 without the work-around
        with pytest.raises(AttributeError, match="_update"):
            prepare("LightGCN", dataset, config_dict=config)
