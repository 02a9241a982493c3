"""The environment's kernel choices: how a run computes, never what (the same run id; other kernels, other float
rounding). Read by the trainers, `bench steps` and packs; checked by every `mmbench` command before it starts, so a
misspelt value is one line at once, not a failure in every worker after the data and classifiers are made; those that
take effect are recorded in each run's `trained_with` (train.note_code). Kept free of torch, as hostmem.py is, for
the CLI's first check."""
from __future__ import annotations

import os
from typing import Dict, Tuple

from .errors import MMBenchError

# name -> (the values allowed, the default among them ('' where the default depends on the device), what leaving it
# unset means, in words)
CHOICES: Dict[str, Tuple[Tuple[str, ...], str, str]] = {
    "MMBENCH_ADAM": (("default", "fused"), "default", "default"),  # train.adam_options
    "MMBENCH_MATMUL_TF32": (("0", "1"), "0", "0, fp32 matmuls"),  # train.matmul_tf32
    "MMBENCH_PACK_CONV": (("grouped", "bmm"), "grouped", "grouped"),  # packconv.conv_mode
    "MMBENCH_PACK_MODE": (("vmap", "loop"), "", "vmap on a GPU, loop on a CPU"),  # pack.vectorised_on
    # set to 1 for the workers by `mmbench run --compile` and `--cudnn-benchmark` (train.captured, cudnn_autotune)
    "MMBENCH_COMPILE": (("0", "1"), "0", "0"),
    "MMBENCH_CUDNN_BENCHMARK": (("0", "1"), "0", "0"),
}


def choice(name: str) -> str:
    """The value the environment gives `name` ('' where unset or empty), refused unless allowed."""
    value = os.environ.get(name, "")
    allowed, _, unset = CHOICES[name]
    if value and value not in allowed:
        raise MMBenchError(f"{name}={value!r}: use {' or '.join(allowed)} (or leave it unset: {unset})")
    return value


def check_all() -> None:
    """Every kernel choice of the environment, checked (the CLI's entry point calls this first)."""
    for name in CHOICES:
        choice(name)


def chosen() -> Dict[str, str]:
    """The kernel choices this process was given other than the defaults, as asked: a choice a device ignores (TF32
    on a CPU, a pack's convolutions in an unpacked run) is listed too; {} for PyTorch's and mmbench's defaults."""
    return {name: v for name, (_, default, _) in CHOICES.items() if (v := choice(name)) and v != default}


def default_pack_mode(device_type: str) -> str:
    """How a pack computes its loss on this device where MMBENCH_PACK_MODE leaves it open: vmap on a GPU, loop on a
    CPU (pack.vectorised_on says why)."""
    return "loop" if device_type == "cpu" else "vmap"


def effective(device_type: str, pack_mode_applies: bool = False, matmul_convs: bool = False,
              captured: bool = False) -> Dict[str, str]:
    """The choices of `chosen()` that change how a training computes here, as its `trained_with` records them: TF32
    and cuDNN's benchmark mode on a GPU only, capture where the step was captured, the pack mode where it decides a
    pack's schedule (`pack_mode_applies`: an fp32 pack; a bf16 pack loops whatever the mode, pack.vmaps_at) and is not
    the device's default, a pack's convolutions where they are computed as matmuls (a vmapped pack with
    convolutions); Adam's everywhere. A choice that changes nothing (TF32 on a CPU, a pack's convolutions in an
    unpacked run, the pack mode of a bf16 pack) is left out, so that the report does not flag runs as trained
    differently when they were not."""
    gpu = device_type == "cuda"
    keep = {"MMBENCH_ADAM": True, "MMBENCH_MATMUL_TF32": gpu, "MMBENCH_CUDNN_BENCHMARK": gpu, "MMBENCH_COMPILE": captured,
            "MMBENCH_PACK_MODE": pack_mode_applies, "MMBENCH_PACK_CONV": matmul_convs}
    device_default = {"MMBENCH_PACK_MODE": default_pack_mode(device_type)}
    return {k: v for k, v in chosen().items() if keep[k] and v != device_default.get(k)}
