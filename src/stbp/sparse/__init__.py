"""Event-driven synapses (issue 17): conv and linear layers that skip the zeros of their spike
input in the forward pass and the weight gradient. See `stbp.sparse.ops`."""

from stbp.sparse.ops import SparseUnavailableError, available, cache_dir, conv2d, linear

__all__ = ["SparseUnavailableError", "available", "cache_dir", "conv2d", "linear"]
