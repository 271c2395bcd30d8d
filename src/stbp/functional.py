"""The functional core of stbp: pure functions beside the `nn.Module`s (as in Norse)."""

from stbp.loss import rate_ce_loss, rate_mse_loss
from stbp.neunorm import neunorm
from stbp.neuron import LIFParameters, LIFState, lif, lif_reference, lif_step
from stbp.surrogate import spike

__all__ = [
    "LIFParameters",
    "LIFState",
    "lif",
    "lif_reference",
    "lif_step",
    "neunorm",
    "rate_ce_loss",
    "rate_mse_loss",
    "spike",
]
