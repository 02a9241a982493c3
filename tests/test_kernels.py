"""The environment's kernel choices (mmbench/kernels.py): each reader refuses a value it does not know with one line
naming the allowed ones; every `mmbench` command checks them all before it starts; `trained_with` lists those other
than the defaults."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mmbench import kernels
from mmbench.errors import MMBenchError
from mmbench.pack import vectorised_on
from mmbench.packconv import conv_mode
from mmbench.train import adam_options, captured, cudnn_autotune, matmul_tf32

ROOT = Path(__file__).resolve().parents[1]
# each choice's reader, as the trainers call it
READERS = {"MMBENCH_ADAM": adam_options, "MMBENCH_MATMUL_TF32": lambda: matmul_tf32("cpu"),
           "MMBENCH_PACK_CONV": conv_mode, "MMBENCH_PACK_MODE": lambda: vectorised_on("cpu"),
           "MMBENCH_COMPILE": lambda: captured(lambda: None, "cpu"), "MMBENCH_CUDNN_BENCHMARK": lambda: cudnn_autotune("cpu")}


def test_every_choice_has_its_reader_here():
    assert set(READERS) == set(kernels.CHOICES)


@pytest.mark.parametrize("name", sorted(kernels.CHOICES))
def test_each_reader_refuses_an_unknown_value_naming_the_allowed_ones(name, monkeypatch):
    allowed, default, _ = kernels.CHOICES[name]
    monkeypatch.setenv(name, "typo")
    with pytest.raises(MMBenchError, match=rf"^{name}='typo': use {' or '.join(allowed)} \(or leave it unset: "):
        READERS[name]()
    for value in ("", *allowed):
        monkeypatch.setenv(name, value)
        READERS[name]()
        assert kernels.chosen() == ({name: value} if value and value != default else {})


@pytest.mark.parametrize("name", sorted(kernels.CHOICES))
def test_every_command_checks_each_choice(name, monkeypatch):
    """check_all (the CLI's first step) reads every choice, not only those the command would read later."""
    monkeypatch.setenv(name, "typo")
    with pytest.raises(MMBenchError, match=rf"^{name}='typo': use "):
        kernels.check_all()


def test_a_refusal_describes_leaving_a_choice_unset_as_its_default():
    """"(or leave it unset: ...)" begins with the default where a choice has a fixed one (PACK_MODE's depends on the
    device)."""
    for name, (allowed, default, unset) in kernels.CHOICES.items():
        if name == "MMBENCH_PACK_MODE":
            assert default == "" and unset == "vmap on a GPU, loop on a CPU"
        else:
            assert default in allowed and unset.split(",")[0] == default, name


def test_chosen_lists_what_differs_from_the_defaults(monkeypatch):
    monkeypatch.setenv("MMBENCH_ADAM", "default")
    monkeypatch.setenv("MMBENCH_PACK_CONV", "bmm")
    monkeypatch.setenv("MMBENCH_PACK_MODE", "loop")  # no fixed default: any value asked is listed
    assert kernels.chosen() == {"MMBENCH_PACK_CONV": "bmm", "MMBENCH_PACK_MODE": "loop"}


def test_a_command_refuses_a_misspelt_choice_before_it_starts(tmp_path):
    """One line and exit 2 at once, nothing made: not a failure in every worker after the data are prepared."""
    env = {**os.environ, "MMBENCH_PACK_MODE": "vmapped", "MMBENCH_RUNS": str(tmp_path / "runs"),
           "MMBENCH_DATA": str(tmp_path / "data")}
    p = subprocess.run([sys.executable, "-m", "mmbench", "run", str(ROOT / "suites" / "quickstart.yaml")], env=env,
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert lines == ["error: MMBENCH_PACK_MODE='vmapped': use vmap or loop (or leave it unset: vmap on a GPU, loop on "
                     "a CPU)"], p.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()


def test_help_answers_whatever_the_choices(tmp_path):
    env = {**os.environ, "MMBENCH_ADAM": "apex"}
    p = subprocess.run([sys.executable, "-m", "mmbench", "run", "--help"], env=env, capture_output=True, text=True,
                       timeout=120, cwd=tmp_path)
    assert p.returncode == 0 and "Usage" in p.stdout, p.stderr
