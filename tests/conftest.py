from pathlib import Path

import pytest

from mmbench.data.base import prepare
from mmbench.registry import DATASETS

SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """polydigits (vanilla) prepared once for the whole session."""
    root = tmp_path_factory.mktemp("data")
    prepare(DATASETS.get("polydigits")(), "vanilla", seed=0, data_root=root)
    return root


@pytest.fixture(autouse=True)
def _no_env_leak(monkeypatch):
    monkeypatch.delenv("MMBENCH_DATA", raising=False)
    monkeypatch.delenv("MMBENCH_RUNS", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    yield
