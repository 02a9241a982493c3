import contextlib
import os
from pathlib import Path

# Under pytest-xdist (pyproject.toml: -n 2, one worker per core of the 2-core CI machine) every worker and the
# processes it starts compute on one thread: two workers of two threads each on two cores spin against each other
# (they were on course to take longer than a serial run; with one thread each: 7:52 against 12:45 serially).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"  # the processes tests start compute as the worker does
    import torch

    torch.set_num_threads(1)

# Files are not synced to the disk (results.durable_writes): what a test can observe is the same (it kills
# processes, never the machine), and the files that write most ran 3-5 % faster (interleaved runs). Inherited by
# the processes and Slurm jobs the tests start; tests/test_results.py and test_train.py check the synced path.
os.environ.setdefault("MMBENCH_FSYNC", "0")  # MMBENCH_FSYNC=1 make test: synced, as by default

import pytest

from mmbench.data.base import prepare
from mmbench.registry import DATASETS
from mmbench.hostmem import tune_host_allocator
from mmbench.kernels import CHOICES

# As the CLI does, once for the whole session: the tests that call cli.main or a Slurm task in this process would
# otherwise switch it on part way, for the tests (and workers) that come after them.
tune_host_allocator()

SHARED = Path(__file__).resolve().parents[2] / "shared"

# The longest test files first (seconds on the 2-core machine, 2026-12-06: 135 to 34 s each). `make test` hands whole
# files to its 2 workers (--dist loadfile, in collection order: --no-loadscope-reorder), so a long file started last
# kept one worker busy while the other had nothing left; xdist's own order (most tests first) started test_slurm.py
# near the end. Within a file, and among the other files, the order is pytest's.
LONGEST_FIRST = ["test_slurm.py", "test_capture.py", "test_pack.py", "test_pack_datasets.py",
                 "test_celeba_stability.py", "test_polymnist.py", "test_methods_all_shapes.py", "test_cli.py",
                 "test_device_ops.py"]


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


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
    monkeypatch.delenv("MMBENCH_CACHE", raising=False)
    for name in CHOICES:  # the kernel choices: a shell's (or an earlier test's `mmbench run --compile`), not the tests'
        monkeypatch.delenv(name, raising=False)
    if not gpu_tests_asked():  # the suite runs on the CPU; device-check.sh asks for its GPU tests to see the GPU
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    yield


def gpu_tests_asked() -> bool:
    """MMBENCH_GPU_TESTS=1 (docs/gpu-runs/device-check.sh): the GPU stays visible and the GPU tests must use it."""
    return os.environ.get("MMBENCH_GPU_TESTS") == "1"


def on_gpu_if_asked() -> None:
    """In a test meant for a GPU: under MMBENCH_GPU_TESTS=1 fail unless a GPU is visible (it would otherwise pass on
    the CPU, proving nothing about the GPU)."""
    import torch

    if gpu_tests_asked():
        assert torch.cuda.is_available(), "MMBENCH_GPU_TESTS=1 but no GPU is visible to the test"


def train_steps(model, x, steps: int, lr: float = 1e-3, seed: int = 1, require_grad: bool = False,
                every_step: bool = False):
    """Full Adam steps on one fixed batch, asserting every gradient finite after each backward pass
    (and, with require_grad, that every parameter gets a non-zero one in some step; with every_step, that every
    parameter gets one in every step). Returns (losses, last step's logs)."""
    import torch

    opt = torch.optim.Adam(model.parameters(), lr=lr)
    torch.manual_seed(seed)
    losses, logs = [], {}
    moved = set()  # parameters that got a non-zero gradient in some step (a method may leave a modality out of one)
    for _ in range(steps):
        loss, logs = model.loss(x)
        opt.zero_grad()
        loss.backward()
        for name, p in model.named_parameters():
            assert p.grad is None or torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
            assert p.grad is not None or not every_step, f"{name} gets no gradient in some step"
            if require_grad and p.grad is not None and bool(p.grad.ne(0).any()):
                moved.add(name)
        opt.step()
        losses.append(loss.item())
    # a parameter whose gradient is None or all zero in every step takes no part in the loss (e.g. an encoder mean
    # that the loss multiplies by 0): with require_grad that is refused
    idle = [name for name, _ in model.named_parameters() if name not in moved]
    assert not require_grad or not idle, f"{idle[:5]} get no gradient"
    return losses, logs


def assert_latent_accuracies(metrics, n_test: int):
    """What an end-to-end latent_classification result must satisfy, whatever the model learnt: every
    `latent_acc/<S>` is a count of correct test tuples over n_test (k / n_test exactly), and every
    `latent_acc_by_n/<k>` is the mean of the subsets of size k (MoPoE Fig. 3)."""
    import math

    per_subset = {k.split("/", 1)[1]: v for k, v in metrics.items()
                  if k.startswith("latent_acc/") and k != "latent_acc/pooled"}
    assert per_subset, "no latent_acc/<subset> keys"
    for s, v in per_subset.items():
        assert 0 <= v <= 1 and math.isclose(v * n_test, round(v * n_test), abs_tol=1e-6), (s, v, n_test)
    sizes = {len(s.split("+")) for s in per_subset}
    for k in sizes:
        vals = [v for s, v in per_subset.items() if len(s.split("+")) == k]
        assert math.isclose(metrics[f"latent_acc_by_n/{k}"], sum(vals) / len(vals), rel_tol=1e-9), k


def seed_runs(runs_dir, n: int, method: str = "mopoe"):
    """Runs (not started) of seeds 0..n-1 of one polydigits experiment in `runs_dir`: a pack's worth for the
    scheduler and worker tests."""
    from mmbench.config import build_run_config
    from mmbench.results import Run

    return [Run(build_run_config({"dataset": "polydigits", "method": {"name": method}, "seed": s}), runs_dir)
            for s in range(n)]


def _mmbench_here(*args, env=None, width=200):
    """`mmbench ARGS` in this process (report, run --dry-run, list, --help; a `run` whose workers are processes of
    their own, as test_resume's last): the same result as `mmbench` without the seconds of a new interpreter
    importing torch. Returns returncode, stdout, stderr like subprocess.run; `width`: the console's columns (COLUMNS
    for a subprocess)."""
    import io
    from types import SimpleNamespace

    from rich.console import Console
    from typer.testing import CliRunner

    import mmbench.cli as cli
    from mmbench.errors import MMBenchError

    out, err = io.StringIO(), io.StringIO()
    saved = cli.console, cli.err_console
    cli.console, cli.err_console = Console(file=out, width=width), Console(file=err, width=width)
    try:
        r = CliRunner().invoke(cli.app, [str(a) for a in args], env=env)
    finally:
        cli.console, cli.err_console = saved
    code = r.exit_code
    if isinstance(r.exception, MMBenchError):  # what cli.main prints and returns for it
        code = 2
        err.write(f"error: {r.exception}\n")
    elif r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return SimpleNamespace(returncode=code, stdout=out.getvalue() + r.stdout, stderr=err.getvalue())


@pytest.fixture()
def mmbench_here():
    """The CLI run in this process (see _mmbench_here)."""
    return _mmbench_here


def png_bytes(img) -> bytes:
    """A uint8 H×W×3 array as PNG file bytes (lossless), for fixtures in the datasets' archive layouts."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


@contextlib.contextmanager
def file_size_limit(nbytes: int):
    """Writes past `nbytes` in any file fail, as on a full disk, in this process only (RLIMIT_FSIZE, with SIGXFSZ
    ignored so the write raises instead of killing the process): a real short write (numpy: "... requested and N
    written"; Python: EFBIG), no root and no small file system needed."""
    import resource
    import signal

    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)


def sklearn_pins():
    """docs/sklearn_pins.py as a module (its problems, digest, calls) and the pinned scikit-learn versions' results on
    its problems (tests/data/sklearn_pins.npz, made by the script's `fit` and `fixture`)."""
    import importlib.util

    import numpy as np

    spec = importlib.util.spec_from_file_location("sklearn_pins", Path(__file__).resolve().parents[1] / "docs" / "sklearn_pins.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script, np.load(Path(__file__).parent / "data" / "sklearn_pins.npz")


def left_in(folder) -> list:
    """The names in `folder`, sorted, but the lock file every process that writes there keeps (files.LOCK_FILE)."""
    from mmbench.files import LOCK_FILE

    return sorted(p.name for p in Path(folder).iterdir() if p.name != LOCK_FILE)


@pytest.fixture()
def nfs_flock(monkeypatch):
    """flock as an NFS client does it: emulated with an fcntl lock on the whole file, so an exclusive lock on a file
    not open for writing (a folder opened to lock it) fails with EBADF (flock(2), NOTES). No NFS mount needed."""
    import errno
    import fcntl
    import os

    real = fcntl.flock

    def flock(fd, op):
        fd = fd if isinstance(fd, int) else fd.fileno()
        if op & fcntl.LOCK_EX and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        return real(fd, op)

    monkeypatch.setattr(fcntl, "flock", flock)


def fake_popen(run):
    """A stand-in for subprocess.Popen (the runner's workers) that calls `run(cmd, env=..., stdout=..., stderr=...)`,
    written like subprocess.run (returning a CompletedProcess), at once; `wait` and `poll` give its return code."""

    class FakePopen:
        def __init__(self, cmd, **kw):
            self.returncode = run(cmd, **kw).returncode

        def wait(self, timeout=None):
            return self.returncode

        def poll(self):
            return self.returncode

    return FakePopen
