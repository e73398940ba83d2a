"""Forward-OFA: the model and its layers."""

from recbole_fofa.model.forward_ofa import ForwardOFA

__all__ = ["ForwardOFA"]
