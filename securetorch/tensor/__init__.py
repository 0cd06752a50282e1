"""SharedTensor and its op tables (importing this package registers every handler)."""

from securetorch.tensor import arith_ops, compare_ops, nn_ops, nonlinear_ops, shape_ops  # noqa: F401 - registration
from securetorch.tensor.shared import SharedTensor, share

__all__ = ["SharedTensor", "share"]
