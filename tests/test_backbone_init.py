"""Switch `backbone_init`: ForwardOFA's supernet starts as a trained SASRec of the same sizes."""

import pytest
import torch
from conftest import TINY_FOFA

from recbole_fofa import get_trainer
from recbole_fofa.quick_start import prepare

pytestmark = pytest.mark.slow


def _fit(model_name, config):
    cfg, model, (train, valid, test) = prepare(model_name, "planted", config_dict=config)
    trainer = get_trainer(cfg["MODEL_TYPE"], model_name)(cfg, model)
    trainer.fit(train, valid, saved=True)
    return trainer, model


def test_the_supernet_starts_as_the_sasrec_checkpoint(planted):
    _, config = planted
    sasrec_trainer, sasrec = _fit("SASRec", dict(config, n_layers=3, epochs=2))
    path = sasrec_trainer.saved_model_file
    best = torch.load(path, weights_only=False)["state_dict"]
    _, fofa = _fit("ForwardOFA", dict(config, **TINY_FOFA, supernet_epochs=0, epochs=1,
                                      backbone_lr_scale=0.0, backbone_init=path))
    state = fofa.state_dict()
    for name, tensor in best.items():  # stage 2 froze the backbone: it is the SASRec's
        assert torch.equal(state[name.replace("trm_encoder.layer.", "blocks.")], tensor), name


def test_a_checkpoint_that_is_not_this_supernet_is_refused(planted):
    _, config = planted
    two, _ = _fit("SASRec", dict(config, n_layers=2, epochs=1))
    with pytest.raises(ValueError, match=r"the SASRec is not this supernet: "
                                         r"`n_layers` 2 there, `n_blocks` 3 here"):
        _fit("ForwardOFA", dict(config, **TINY_FOFA, supernet_epochs=1, epochs=0,
                                backbone_init=two.saved_model_file))
    fofa, _ = _fit("ForwardOFA", dict(config, **TINY_FOFA, supernet_epochs=1, epochs=0))
    with pytest.raises(ValueError, match="not a SASRec checkpoint"):
        _fit("ForwardOFA", dict(config, **TINY_FOFA, supernet_epochs=1, epochs=0,
                                backbone_init=fofa.saved_model_file))
