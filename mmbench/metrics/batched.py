"""Network passes of the evaluation, batched over subsets, importance samples and test tuples.

Metrics stack every row they need (subsets × samples × tuples) and run each network once per chunk of
``row_chunk(device)`` rows, so the per-call overhead is paid a few times per test batch rather than per
subset or sample, and nothing is read back to the host inside the loops. Only the schedule changes: every
row is the same computation as alone (eval mode, no randomness in the networks), so the numbers equal an
unbatched loop's to float rounding (tests/test_metrics_batched.py).
"""
from __future__ import annotations

from typing import Callable, Dict, Sequence

import torch
from torch import nn

# Rows per network call. On the CPU a PolyMNIST CNN decoder runs 2.8x faster per row on chunks of 512 than on
# the 7,936 rows of 31 subsets × 256 tuples (activations stay in the caches; docs/metrics.md, "Evaluation wall
# time"); a GPU wants the largest chunk that fits (kernel launches, not arithmetic, bound these tiny networks).
CPU_ROWS = 512
DEVICE_ROWS = 32768


def row_chunk(device: torch.device) -> int:
    return CPU_ROWS if torch.device(device).type == "cpu" else DEVICE_ROWS


def for_eval(module: nn.Module, device: torch.device) -> nn.Module:
    """On the CPU, convolution weights in channels_last: oneDNN's (transposed) convolutions then skip a layout
    copy per call (PolyMNIST decoder 116 -> 97 µs per row, identical outputs measured). Elsewhere unchanged."""
    if torch.device(device).type == "cpu":
        module.to(memory_format=torch.channels_last)
    return module


def chunked(fn: Callable[[torch.Tensor], torch.Tensor], rows: torch.Tensor, chunk: int) -> torch.Tensor:
    """fn applied to consecutive chunks of rows, concatenated (fn is row-wise: each output row depends on its
    input row only)."""
    if len(rows) <= chunk:
        return fn(rows)
    return torch.cat([fn(part) for part in rows.split(chunk)])


def rec_log_probs(model, z: torch.Tensor, x: Dict[str, torch.Tensor], names: Sequence[str],
                  chunk: int) -> torch.Tensor:
    """log p(x_m | z_r) for every row r of z (R×D) and modality m in names: an R×M tensor.

    Row r is scored against test tuple r mod B of x (B tuples), so z may stack any number of blocks of B
    rows (subsets, samples) without repeating x in memory."""
    B = x[names[0]].shape[0]
    out = []
    for start in range(0, len(z), chunk):
        zc = z[start:start + chunk]
        tup = torch.arange(start, start + len(zc), device=z.device) % B
        out.append(torch.stack([model.rec_log_prob(zc, {m: x[m].index_select(0, tup)}, m) for m in names], -1))
    return torch.cat(out)
