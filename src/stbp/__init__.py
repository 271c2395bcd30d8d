"""stbp: direct training of deep spiking neural networks with STBP.

Wu, Deng, Li, Zhu, Xie, Shi, "Direct Training for Spiking Neural Networks: Faster, Larger,
Better", AAAI 2019. Multi-step tensors are `[T, B, ...]` throughout.
"""

from stbp import checkpoint, functional, surrogate
from stbp.blocks import ResidualBlock, TDBatchNorm
from stbp.init import calibrate_, threshold_scaled_
from stbp.layers import Encoding, SeqDropout, StepDropout, Temporal, Voting
from stbp.loss import rate_ce_loss, rate_mse_loss
from stbp.models import (
    PAPER_NETWORKS,
    SNN,
    build,
    firing_rates,
    paper_network,
    parse,
    rebuild,
)
from stbp.neunorm import NeuNorm
from stbp.neuron import LIF, LIFParameters, LIFState
from stbp.nir_export import export_nir, import_nir
from stbp.record import record
from stbp.stats import stats

__version__ = "0.1.0"

__all__ = [
    "LIF",
    "PAPER_NETWORKS",
    "SNN",
    "Encoding",
    "LIFParameters",
    "LIFState",
    "NeuNorm",
    "ResidualBlock",
    "SeqDropout",
    "StepDropout",
    "TDBatchNorm",
    "Temporal",
    "Voting",
    "build",
    "calibrate_",
    "checkpoint",
    "export_nir",
    "firing_rates",
    "functional",
    "import_nir",
    "paper_network",
    "parse",
    "rate_ce_loss",
    "rate_mse_loss",
    "rebuild",
    "record",
    "stats",
    "surrogate",
    "threshold_scaled_",
]
