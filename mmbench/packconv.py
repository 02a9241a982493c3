"""A vmapped pack's convolutions as batched matrix products (MMBENCH_PACK_CONV=bmm; default: vmap's grouped ones).

Under vmap a convolution whose weights differ per run becomes one grouped convolution over the runs (groups = R,
vmap's batching rule), and cuDNN's grouped kernels with few channels per group may be slow. The alternative here
writes each run's convolution as one matrix product over unfolded patches, W (Cout, Cin·k·k) @ cols (Cin·k·k, B·L)
(im2col, F.unfold), which vmap turns into one batched matmul over the runs; a transposed convolution is the product
Wᵀ (Cout·k·k, Cin) @ x (Cin, B·H·W) whose patches are summed into the image (col2im, F.fold). The modules keep their
class's parameters and state_dict keys; only a pack's vmapped template (pack.StackedModel) uses them: unpacked runs,
the trial's reference loss (which the packed loss must reproduce before a pack trains) and evaluation keep PyTorch's.
Precision: the matmuls follow torch.backends.cuda.matmul.allow_tf32 (off by default: fp32), while cuDNN's
convolutions run in TF32 by PyTorch's default; docs/gpu-runs/kernel_choices.py times each layer both ways."""
from __future__ import annotations

import copy
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

from . import kernels
from .errors import MMBenchError


def conv_mode() -> str:
    """MMBENCH_PACK_CONV: how a vmapped pack computes its convolutions (grouped, the default, or bmm)."""
    return kernels.choice("MMBENCH_PACK_CONV") or "grouped"


def _out_size(n: int, k: int, s: int, p: int, d: int) -> int:
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


class MatmulConv2d(nn.Conv2d):
    """nn.Conv2d (groups 1, zero padding) computed as W @ unfold(x): one GEMM per run, a batched one under vmap."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel_size, self.stride, self.padding, self.dilation
        Ho, Wo = _out_size(H, kh, sh, ph, dh), _out_size(W, kw, sw, pw, dw)
        cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)  # (B, Cin·k·k, Ho·Wo)
        y = self.weight.reshape(self.out_channels, -1) @ cols.transpose(0, 1).reshape(cols.shape[1], -1)
        y = y.reshape(self.out_channels, B, Ho, Wo).transpose(0, 1)  # (B, Cout, Ho, Wo)
        return y if self.bias is None else y + self.bias[:, None, None]


class MatmulConvTranspose2d(nn.ConvTranspose2d):
    """nn.ConvTranspose2d (groups 1, zero padding, the output size its output_padding gives) as fold(Wᵀ @ x)."""

    def forward(self, x: torch.Tensor, output_size=None) -> torch.Tensor:
        if output_size is not None:
            raise MMBenchError("MMBENCH_PACK_CONV=bmm computes a transposed convolution's output size from its "
                               "output_padding; this network passes output_size: leave MMBENCH_PACK_CONV unset")
        B, C, H, W = x.shape
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel_size, self.stride, self.padding, self.dilation
        oh, ow = self.output_padding
        Ho, Wo = (H - 1) * sh - 2 * ph + dh * (kh - 1) + oh + 1, (W - 1) * sw - 2 * pw + dw * (kw - 1) + ow + 1
        cols = self.weight.reshape(C, -1).t() @ x.transpose(0, 1).reshape(C, B * H * W)  # (Cout·k·k, B·H·W)
        cols = cols.reshape(cols.shape[0], B, H * W).transpose(0, 1)  # (B, Cout·k·k, H·W)
        y = F.fold(cols, (Ho, Wo), self.kernel_size, self.dilation, self.padding, self.stride)
        return y if self.bias is None else y + self.bias[:, None, None]


_SWAP = {nn.Conv2d: MatmulConv2d, nn.ConvTranspose2d: MatmulConvTranspose2d}


def matmul_convs(module: nn.Module) -> Tuple[nn.Module, int]:
    """A copy of `module` whose 2-d convolutions (groups 1, zero padding) compute as batched matmuls, and how many
    were swapped; the parameters, buffers and their names are the copy's as they were."""
    out = copy.deepcopy(module)
    n = 0
    for m in out.modules():
        swap = _SWAP.get(type(m))
        if swap is not None and m.groups == 1 and m.padding_mode == "zeros" and not isinstance(m.padding, str):
            m.__class__ = swap
            n += 1
    return out, n
