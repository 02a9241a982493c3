"""Network passes of the evaluation, batched over subsets, importance samples and test tuples.

Metrics stack every row they need (subsets × samples × tuples) and run each network once per chunk of
``row_chunk(device)`` rows, so the per-call overhead is paid a few times per test batch rather than per
subset or sample, and nothing is read back to the host inside the loops. Only the schedule changes: every
row is the same computation as alone (eval mode; the style methods' decoders draw their style noise per row,
in another order than a loop would, which leaves each estimate's distribution as it is), so the numbers equal an
unbatched loop's to float rounding (tests/test_metrics_batched.py).
"""
from __future__ import annotations

from typing import Callable, Dict, Sequence

import torch
from torch import nn

from ..errors import MMBenchError

# Rows per network call. On the CPU a PolyMNIST CNN decoder runs 2.8x faster per row on chunks of 512 than on
# the 7,936 rows of 31 subsets × 256 tuples (activations stay in the caches; docs/metrics.md, "Evaluation wall
# time"); a GPU wants the largest chunk that fits (kernel launches, not arithmetic, bound these tiny networks).
CPU_ROWS = 512
DEVICE_ROWS = 32768


def row_chunk(device: torch.device) -> int:
    return CPU_ROWS if torch.device(device).type == "cpu" else DEVICE_ROWS


def for_eval(module: nn.Module, device: torch.device, precision: str = "fp32") -> nn.Module:
    """The module as the metrics run it. On the CPU, convolution weights in channels_last: oneDNN's (transposed)
    convolutions then skip a layout copy per call (PolyMNIST decoder 116 -> 97 µs per row, identical outputs
    measured). precision "bf16" (eval.precision): each of a model's `decoders` replaced by a bfloat16 copy
    (`Bfloat16Decoder`); encoders, posteriors, sampling and every density and sum stay fp32."""
    if precision not in ("fp32", "bf16"):
        raise MMBenchError(f"eval.precision {precision!r} is not allowed; choose fp32 or bf16")
    if precision == "bf16":
        name = getattr(module, "registry_name", type(module).__name__)
        decoders = getattr(module, "decoders", None)
        if not isinstance(decoders, nn.ModuleDict):
            raise MMBenchError(f"eval.precision bf16: {name} has no decoders to run in bf16; use eval.precision fp32")
        if getattr(module, "encodes_through_decoders", False):
            raise MMBenchError(f"eval.precision bf16: method {name} encodes through its decoders, so bf16 would "
                               f"change its posteriors too; use eval.precision fp32")
        module.decoders = nn.ModuleDict({m: d if isinstance(d, Bfloat16Decoder) else Bfloat16Decoder(d)
                                         for m, d in decoders.items()})
    if torch.device(device).type == "cpu":
        module.to(memory_format=torch.channels_last)
    return module


class Bfloat16Decoder(nn.Module):
    """A decoder evaluated in bfloat16: its parameters cast once, the latent cast on the way in, the output
    returned as float32, so the likelihood's log-density and every sum after it are fp32. On this project's
    CPU of 2026-12-02 (AMX) a PolyMNIST decoder ran ~3x faster per row, on an AVX2-only one 12x slower (the run's
    log says so: train.slow_bf16_note); docs/metrics.md, "Evaluation in bf16", gives the
    measured effect on the metrics."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner.to(torch.bfloat16)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.inner(z.to(torch.bfloat16)).float()


def chunked(fn: Callable[[torch.Tensor], torch.Tensor], rows: torch.Tensor, chunk: int) -> torch.Tensor:
    """fn applied to consecutive chunks of rows, concatenated (fn is row-wise: each output row depends on its
    input row only)."""
    if len(rows) <= chunk:
        return fn(rows)
    return torch.cat([fn(part) for part in rows.split(chunk)])


def batch_dependent(module: nn.Module) -> bool:
    """Whether a module's output rows depend on the other rows of its call: batch norm in training mode (the
    authors' classifiers under eval.classifier_dropout: as_authors use their batch's statistics)."""
    return isinstance(module, nn.Module) and any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
                                                 for m in module.modules())


def classify(clf: nn.Module, decode: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, block: int,
             chunk: int) -> torch.Tensor:
    """clf(decode(z)) for every row of z, `chunk` rows per call. A batch-dependent classifier (batch_dependent)
    sees one block of `block` consecutive rows per call instead: one subset's samples of one test batch, as the
    MoPoE code classifies them (eval_metrics/coherence.py, one call per subset and batch), never a mix of subsets."""
    if not batch_dependent(clf):
        return chunked(lambda part: clf(decode(part)), z, chunk)
    images = chunked(decode, z, chunk)
    return torch.cat([clf(part) for part in images.split(block)])


def rec_log_probs(model, z: torch.Tensor, x: Dict[str, torch.Tensor], names: Sequence[str],
                  chunk: int) -> torch.Tensor:
    """log p(x_m | z_r) for every row r of z (R×D) and modality m in names: an R×M tensor.

    Row r is scored against test tuple r mod B of x (B tuples), so z may stack any number of blocks of B
    rows (subsets, samples) without repeating x in memory."""
    B = x[names[0]].shape[0]
    out, full = [], None
    for start in range(0, len(z), chunk):
        zc = z[start:start + chunk]
        if chunk % B == 0 and full is not None:  # every chunk starts at tuple 0: the first chunk's rows serve
            xs = {m: full[m][:len(zc)] for m in names}
        else:
            tup = torch.arange(start, start + len(zc), device=z.device) % B
            xs = {m: x[m].index_select(0, tup) for m in names}
            full = xs if chunk % B == 0 else None
        out.append(torch.stack([model.rec_log_prob(zc, {m: xs[m]}, m) for m in names], -1))
    return torch.cat(out)
