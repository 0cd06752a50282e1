"""``torch.nn.functional`` helpers HF models call on SharedTensors: embedding lookups with
public indices (positions, token types) or with secret token ids (``OneHotTokens``),
convolutions (patches x kernel), dropout in eval mode."""

from __future__ import annotations

from typing import Any

import torch

from securetorch.tensor.registry import implements
from securetorch.tensor.shape_ops import public_tensor
from securetorch.tensor.shared import SharedTensor

F = torch.nn.functional


@implements(F.embedding)
def _embedding(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> SharedTensor:
    """Rows of a secret table at public indices (position ids, token type ids): share-wise."""
    indices, weight = args[0], args[1]
    if isinstance(indices, SharedTensor) or not isinstance(weight, SharedTensor):
        raise NotImplementedError(
            "securetorch: F.embedding needs public indices and a secret table; secret token ids "
            "enter as a one-hot matrix (see puma.secure)"
        )
    first, second = (s[indices] for s in weight.shares)
    return SharedTensor((first, second), weight.dtype)


def _spatial(value: Any, dims: int) -> tuple[int, int]:
    """A stride, padding or dilation argument as (height, width) (1-D: height 1, padding 0)."""
    values = (int(value),) * dims if isinstance(value, int) else tuple(int(v) for v in value)
    return (values[0], values[1]) if dims == 2 else (0, values[0])


def _patches(
    x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int], pads: tuple[int, ...], dilation: tuple[int, int]
) -> torch.Tensor:
    """The convolution windows of ``x`` [B, C, H, W] as rows [B, H', W', C * kh * kw] (zero
    padding, strided windows, dilated taps): a rearrangement of the entries, so applied to
    each share it gives shares of the patches exactly."""
    x = F.pad(x, pads)
    for dim, (k, s, d) in enumerate(zip(kernel, stride, dilation, strict=True), start=2):
        x = x.unfold(dim, d * (k - 1) + 1, s)
    x = x[..., :: dilation[0], :: dilation[1]]  # [B, C, H', W', kh, kw]
    batch, channels, height, width = x.shape[:4]
    return x.permute(0, 2, 3, 1, 4, 5).reshape(batch, height, width, channels * kernel[0] * kernel[1])


@implements(F.conv2d, F.conv1d)
def _conv(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> SharedTensor:
    """A convolution as one product of its patches and its kernel.

    The patches (zero padding, strides, dilation) are a rearrangement of the input, computed
    share-wise on a secret input (exact, no communication); their product with the kernel
    reshaped to [C/groups * kh * kw, out/groups] per group is one matmul: secret x secret costs
    what any product of those shapes costs (one truncation, 2 rounds), a public operand on
    either side makes it local. ``conv1d`` is ``conv2d`` on a height of one; an input without
    a batch dimension gets one for the product. The bias is added per output channel."""
    names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
    given = dict(zip(names, args, strict=False)) | kwargs
    x, weight, bias = given["input"], given["weight"], given.get("bias")
    dims = 1 if func is F.conv1d else 2
    unbatched = x.dim() == dims + 1  # [C, ...] without a batch dimension, as torch allows
    if unbatched:
        x = x.unsqueeze(0)
    if dims == 1:
        x, weight = x.unsqueeze(2), weight.unsqueeze(2)
    stride, dilation = (_spatial(given.get(n, 1), dims) for n in ("stride", "dilation"))
    stride, dilation = (max(stride[0], 1), stride[1]), (max(dilation[0], 1), dilation[1])
    groups = int(given.get("groups", 1))
    out_channels, group_channels, kh, kw = weight.shape
    padding = given.get("padding", 0)
    if padding == "same":
        if stride != (1, 1):
            raise NotImplementedError("securetorch: padding='same' needs stride 1 (as in torch)")
        total = (dilation[0] * (kh - 1), dilation[1] * (kw - 1))
        pads = (total[1] // 2, total[1] - total[1] // 2, total[0] // 2, total[0] - total[0] // 2)
    else:
        ph, pw = (0, 0) if padding == "valid" else _spatial(padding, dims)
        pads = (pw, pw, ph, ph)
    if isinstance(x, SharedTensor):
        shares = [_patches(s, (kh, kw), stride, pads, dilation) for s in x.shares]
        patches: Any = SharedTensor((shares[0], shares[1]), x.dtype)
    else:
        patches = _patches(public_tensor(x), (kh, kw), stride, pads, dilation)
    batch, height, width, _ = patches.shape
    patches = patches.reshape(batch, height * width, groups, -1).transpose(1, 2)  # [B, g, H'W', C/g kh kw]
    kernel = weight.reshape(groups, out_channels // groups, group_channels * kh * kw).transpose(1, 2)
    out = torch.matmul(patches, kernel).transpose(2, 3).reshape(batch, out_channels, height, width)
    if bias is not None:
        out = out + bias.reshape(1, out_channels, 1, 1)
    out = out.squeeze(2) if dims == 1 else out
    return out.squeeze(0) if unbatched else out


@implements(F.dropout)
def _dropout(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> SharedTensor:
    training = args[2] if len(args) > 2 else kwargs.get("training", True)
    p = args[1] if len(args) > 1 else kwargs.get("p", 0.5)
    if training and p > 0:
        raise NotImplementedError("securetorch: dropout in training mode (secure inference runs in eval mode)")
    return args[0]


class OneHotTokens:
    """Secret token ids as a one-hot matrix [..., V] (a secret integer tensor), passed to a
    model's token-embedding module in place of ``input_ids``. ``F.embedding`` on it is the
    product with the secret table (exact, one truncation-free product: the one-hot entries are
    integers), so an embedding module that does more than look up rows (Gemma scales them)
    runs its own forward on the result. Any other use raises."""

    def __init__(self, onehot: SharedTensor) -> None:
        self.onehot = onehot

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func is F.embedding and isinstance(args[0], OneHotTokens):
            weight = args[1] if len(args) > 1 else kwargs["weight"]
            max_norm = args[3] if len(args) > 3 else kwargs.get("max_norm")
            if max_norm is not None:
                raise NotImplementedError("securetorch: an embedding with max_norm rewrites its table on lookup")
            return args[0].onehot @ weight
        raise NotImplementedError(
            f"securetorch: secret token ids reach the model only through its token embedding, not {func}"
        )
