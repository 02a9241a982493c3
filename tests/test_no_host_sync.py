"""A training step reads nothing back from the device (issue 13, "no host synchronisation in the step").

On a GPU every `.item()`, `.tolist()`, `int(t)`, `bool(t)`, `nonzero` or boolean mask of a device tensor, and every
tensor built from host data for the device (`torch.tensor(list, device=...)`), stops the host until the GPU has
caught up, so the next kernels cannot be queued behind the running ones. No GPU is needed to find them: the step
runs here on PyTorch's `meta` device, whose tensors have shapes but no data, so any read of a value fails, and a
dispatch mode records every copy of a host tensor (more than a scalar) to the device. The trainers read the
epoch's sums once per epoch (mmbench/train.py, mmbench/pack.py); this covers the methods' losses, which they call
every step.
"""
import contextlib
import traceback

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from mmbench.data.base import Modality, to_float
from mmbench.methods.base import MethodConfig
from mmbench.registry import DATASETS, METHODS


def where() -> str:
    """The innermost mmbench line of the current stack (what a failure names)."""
    frames = [f for f in traceback.extract_stack() if "/mmbench/" in f.filename.replace("\\", "/")]
    return f"{frames[-1].filename.split('mmbench')[-1]}:{frames[-1].lineno} {frames[-1].line}" if frames else "?"


class HostToDevice(TorchDispatchMode):
    """Records every copy of a host tensor to the meta device (`.to(device)`, `copy_`), and every operation on device
    tensors that takes a host tensor with elements (e.g. indexing with a host index tensor or list: on a GPU its
    indices are copied over first)."""

    def __init__(self):
        super().__init__()
        self.copies = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default):
            src = args[1] if func is torch.ops.aten.copy_.default else args[0]
            dst = args[0].device if func is torch.ops.aten.copy_.default else kwargs.get("device") or src.device
            if src.device.type == "cpu" and torch.device(dst).type == "meta":
                self.copies.append(f"{func}: host tensor of shape {tuple(src.shape)} at {where()}")
        else:
            tensors = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
            host = [t for t in tensors if t.device.type == "cpu" and t.dim() > 0]
            if host and any(t.device.type == "meta" for t in tensors):
                self.copies.append(f"{func}: takes a host tensor of shape {tuple(host[0].shape)} at {where()}")
        return func(*args, **kwargs)


class DataToDevice(TorchFunctionMode):
    """Records tensors built from host data for the device (`torch.tensor(data, device=...)`, `as_tensor`,
    `Tensor.new_tensor`, indexing by a list), which dispatch modes do not see."""

    def __init__(self, copies: list):
        super().__init__()
        self.copies = copies

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.tensor, torch.as_tensor):
            dev = kwargs.get("device")
            if dev is not None and torch.device(dev).type == "meta":
                self.copies.append(f"{func.__name__} from host data for the device at {where()}")
        elif func is torch.Tensor.new_tensor and args[0].device.type == "meta" and \
                torch.device(kwargs.get("device") or "meta").type == "meta":
            self.copies.append(f"new_tensor from host data for the device at {where()}")
        elif func in (torch.Tensor.__getitem__, torch.Tensor.__setitem__) and args[0].device.type == "meta":
            index = args[1] if isinstance(args[1], tuple) else (args[1],)
            if any(isinstance(i, list) for i in index):  # advanced indexing by a host list: its indices are sent
                self.copies.append(f"indexing by a host list at {where()}")
        return func(*args, **kwargs)


@contextlib.contextmanager
def host_copies():
    """Yields the list of host -> device copies made inside the block."""
    dispatch = HostToDevice()
    with dispatch, DataToDevice(dispatch.copies):
        yield dispatch.copies


def warmup_steps(options) -> int:
    """Steps before the observed one: the first step of each training stage may build constants from host data once
    (methods/base.py host_constant), so one step, and two where a second stage starts at step 2 (smvae two_stage with
    stage1_steps 1). A step on the meta device costs ~0.1-0.5 s (CelebA's ResNets the most): a third was a third of
    this file's time."""
    return 2 if (options or {}).get("stage1_steps") == 1 else 1


def step_on_meta(method: str, modalities, architecture: str, options=None, batch: int = 4) -> list:
    """A training step (loss and backward) of `method` on the meta device after warmup_steps(options) unobserved
    ones; returns its host->device copies."""
    torch.manual_seed(0)
    cfg = MethodConfig(method, latent_dim=16, beta=1.0, options=dict(options or {}))
    model = METHODS.get(method)(modalities, cfg, architecture).to("meta").train()

    def step():
        # the trainer's batch: stored uint8 rows gathered on the device, converted there (data/base.py to_float)
        x = {m.name: to_float(m, torch.empty(batch, *(m.shape[:-1] if m.kind == "text" else m.shape),
                                             dtype=torch.uint8, device="meta")) for m in modalities}
        loss, logs = model.loss(x)
        loss.backward()

    for _ in range(warmup_steps(options)):
        step()
    with host_copies() as copies:
        step()
    return copies


POLYMNIST = [Modality(f"m{i}", (3, 28, 28)) for i in range(5)]
# method options whose code paths differ in the step: schedules read each step
VARIANTS = {"mrvae": [{}, {"anneal_rate": 1e-3}],
            "mmvamp": [{}, {"alpha": 1.0, "alpha_anneal_steps": 100}, {"alpha": 1.0, "alpha_anneal_steps": 100,
                                                                       "alpha_anneal_batch": 128, "rate": "mc"}],
            "smvae": [{}, {"schedule": "two_stage", "stage1_steps": 5}, {"schedule": "two_stage", "stage1_steps": 1}]}


@pytest.mark.parametrize("method,options", [(m, o) for m in METHODS.names() for o in VARIANTS.get(m, [{}])])
def test_a_training_step_reads_nothing_back_from_the_device(method, options):
    """Every method's loss + backward on PolyMNIST's five modalities (the papers' step): no value is read back
    (the meta device would raise) and no host tensor is copied to the device."""
    assert step_on_meta(method, POLYMNIST, "polymnist_cnn", options) == []


@pytest.mark.parametrize("dataset,variant,methods", [
    ("mnist-svhn-text", "default", ["mopoe", "mvae", "mmvae", "smvae", "jmvae"]),
    ("celeba", "default", ["mopoe", "mvae", "mmvae", "mmvamp", "aggregated"]),
    ("rats", "deposit", ["mmvamp", "independent", "aggregated"])])
def test_the_other_datasets_steps_read_nothing_back(dataset, variant, methods):
    """The same on the other datasets' modalities (text one-hot, CelebA's ResNets, the rats' spike counts) with
    their default architectures."""
    spec = DATASETS.get(dataset)()
    mods = spec.modalities(spec.check_variant(variant))
    for method in methods:
        assert step_on_meta(method, mods, spec.default_architecture) == [], method


def test_the_detector_finds_device_reads_and_host_copies():
    """The check can fail: a value read of a device tensor raises on meta, a host list sent to the device is
    recorded."""
    t = torch.ones(3, device="meta")
    with pytest.raises((RuntimeError, NotImplementedError)):
        t.sum().item()
    with pytest.raises((RuntimeError, NotImplementedError)):
        t.nonzero()
    with pytest.raises((RuntimeError, NotImplementedError)):
        t.tolist()
    for send in (lambda: torch.tensor([1, 2, 3], device="meta"), lambda: t.new_tensor(2.0),
                 lambda: torch.as_tensor([1.0], device="meta"), lambda: torch.arange(3).to("meta"),
                 lambda: t[[0, 2]], lambda: t[torch.tensor([0, 2])], lambda: t.index_select(0, torch.tensor([0, 2]))):
        with host_copies() as copies:
            send()
        assert len(copies) == 1
    with host_copies() as copies:
        t * torch.tensor(2.0) + torch.arange(3, device="meta")  # a host scalar is an argument of the kernel
        t[0], t[1:], t[None, :2]  # basic indexing: views
    assert copies == []


@pytest.mark.parametrize("method", [m for m in METHODS.names() if METHODS.get(m).packable])
def test_a_packed_step_reads_nothing_back_from_the_device(method):
    """The same for a packed step as a GPU runs it (mmbench/pack.py: the loss vmapped over 2 runs, the logs turned
    into device tensors, backward, one Adam). Each run's noise is drawn from its own generator, which the meta
    device has not, so pack.draw gives empty meta tensors of the recorded shapes. (mrVAE's temperatures, Python
    numbers in its logs, were once sent from the host every packed step.)"""
    from mmbench import pack

    cls, mcfg = METHODS.get(method), MethodConfig(method, latent_dim=16, beta=1.0)
    states = []
    for s in range(2):
        torch.manual_seed(s)
        states.append(cls(POLYMNIST, mcfg, "polymnist_cnn").state_dict())
    sm = pack.StackedModel(cls(POLYMNIST, mcfg, "polymnist_cnn").train(), states, [None] * 2, 1e-3,
                           torch.device("meta"))
    sm.vectorised = True

    def step():
        x = {m.name: to_float(m, torch.empty(2, 4, *m.shape, dtype=torch.uint8, device="meta")) for m in POLYMNIST}
        losses, logs = sm.loss(x, [None, None], 0)
        assert all(v.device.type == "meta" for v in logs.values())
        sm.opt.zero_grad(set_to_none=True)
        losses.sum().backward()
        sm.opt.step()

    step()  # builds the constants and Adam's state (warmup_steps: no method options here)
    with host_copies() as copies:
        step()
    assert copies == []
