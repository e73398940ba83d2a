"""Forward-OFA: the model, its structure controller, structural mapper and blocks."""

from recbole_fofa.model.forward_ofa import ForwardOFA, Stage

__all__ = ["ForwardOFA", "Stage"]
