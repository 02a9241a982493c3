"""Packs on the datasets beside polydigits, from fixtures in their published formats: MNIST-SVHN-Text (a text
modality: stored as character indices, trained one-hot; tests/test_mnist_svhn_text.py) and CelebA (text too, and
networks with Dropout2d and BatchNorm2d: MoPoE Table 5, MM-VAMP's CelebA, SMVAE's; tests/test_celeba.py). A pack
redraws each run's dropout masks from the run's own generator (pack._PackDropout) and keeps each run's BatchNorm
statistics in its stacked buffers, so a pack of a β sweep's runs ends as its runs alone. On the CPU only: on a GPU,
F.dropout's fused kernel draws its masks from the generator in another way than bernoulli_, so a packed run's masks
there are other draws of the same distribution than its run's alone."""
import pytest
import torch

from mmbench.config import build_run_config
from mmbench.data.base import dataset_dir, prepare, read_manifest
from mmbench.pack import train_pack, unpackable_reason
from mmbench.registry import DATASETS
from mmbench.results import Run
from mmbench.train import train
import test_celeba
import test_mnist_svhn_text
from test_pack import assert_same_trajectory, last, set_pack_mode

# the fixtures of the datasets' own tests: CelebA in its published layout, MNIST-SVHN-Text as IDX and .mat files
source = test_celeba.source
raw = test_mnist_svhn_text.raw


def test_a_pack_with_a_text_modality_ends_as_its_runs_alone(tmp_path, raw, monkeypatch):
    """MNIST-SVHN-Text's text rows are stored as character indices and trained one-hot: a pack's batch has the one-hot
    shape (it once kept the stored rows' shape, and every MNIST-SVHN-Text pack failed at its first batch)."""
    src, _ = raw
    prepare(DATASETS.get("mnist-svhn-text")(), None, seed=0, data_root=tmp_path / "d", options={"source": str(src)})
    set_pack_mode(monkeypatch, "loop")
    cfgs = [build_run_config({"dataset": "mnist-svhn-text", "seed": s, "method": {"name": "mopoe", "latent_dim": 8,
                                                                                   "beta": b},
                              "train": {"epochs": 2, "batch_size": 16}}) for s, b in ((0, 1.0), (1, 5.0))]
    alone = {i: train(Run(c, tmp_path / "alone"), tmp_path / "d") for i, c in enumerate(cfgs)}
    runs = [Run(c, tmp_path / "packed") for c in cfgs]
    packed = train_pack(runs, tmp_path / "d")
    for i, r in enumerate(runs):
        assert packed[r.id]["packed_with"] == 2, r.log_path.read_text()
        ca, cp = last(Run(cfgs[i], tmp_path / "alone")), last(r)
        steps = 2 * max(read_manifest(dataset_dir("mnist-svhn-text", "default", tmp_path / "d"))["counts"]["train"]
                        // 16, 1)
        assert_same_trajectory(cfgs[i], alone[i], ca, packed[r.id], cp, "loop", steps=steps)


def celeba_cfg(seed, beta, method="mopoe", arch="celeba_resnet_lv0"):
    return build_run_config({"dataset": "celeba", "seed": seed,
                             "method": {"name": method, "latent_dim": 8, "beta": beta, "architecture": arch},
                             "train": {"epochs": 2, "batch_size": 2, "lr": 1e-4}})


@pytest.fixture()
def celeba_root(tmp_path, source):
    src, _ = source
    prepare(DATASETS.get("celeba")(), None, seed=0, data_root=tmp_path / "data", options={"source": str(src)})
    return tmp_path / "data"


@pytest.mark.parametrize("method,arch", [("mmvamp", "celeba_mmvm")])
def test_a_looped_pack_of_celeba_runs_ends_as_its_runs_alone(tmp_path, celeba_root, monkeypatch, method, arch):
    """Looped over its runs (a CPU's pack), a β sweep's pack of two on the CelebA networks ends as its runs alone:
    the same dropout masks (each run's from its own stream, in its order), the same BatchNorm statistics per run
    (MM-VAMP's networks, the cheapest; one step of each CelebA network: below)."""
    set_pack_mode(monkeypatch, "loop")
    cfgs = [celeba_cfg(0, 0.5, method, arch), celeba_cfg(1, 4.0, method, arch)]
    assert unpackable_reason(cfgs[0]) is None
    alone = {i: train(Run(c, tmp_path / "alone"), celeba_root) for i, c in enumerate(cfgs)}
    runs = [Run(c, tmp_path / "packed") for c in cfgs]
    packed = train_pack(runs, celeba_root)
    for i, r in enumerate(runs):
        assert packed[r.id]["packed_with"] == 2, r.log_path.read_text()
        ca, cp = last(Run(cfgs[i], tmp_path / "alone")), last(r)
        stats = [k for k in ca["model"] if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
        assert stats and all(torch.allclose(cp["model"][k].float(), ca["model"][k].float(), rtol=1e-4, atol=1e-6)
                             for k in stats)
        assert all(int(cp["model"][k]) == 2 * 2 for k in stats if k.endswith("num_batches_tracked"))
        assert_same_trajectory(cfgs[i], alone[i], ca, packed[r.id], cp, "loop", steps=2 * 2)
        assert torch.equal(ca["rng"], cp["rng"])  # the dropout masks came from the run's own stream, in its order


@pytest.mark.parametrize("mode", ["loop", "vmap"])
@pytest.mark.parametrize("method,arch", [("mopoe", "celeba_resnet_lv0"), ("mopoe", "celeba_resnet"),
                                         ("mmvamp", "celeba_mmvm"), ("smvgon", "celeba_resnet_lv0")])
def test_a_packed_step_of_celeba_runs_gives_each_its_own_loss_gradient_and_statistics(method, arch, mode,
                                                                                      monkeypatch):
    """One packed training step on each CelebA network gives each run (β 0.5 and 4) the loss, gradient and
    BatchNorm statistics of its model alone drawing from its stream: looped (a CPU's pack) to float rounding, vmapped
    (a GPU's) to the rounding of its batched kernels. Vmapped trajectories are not compared: Adam's first steps move
    each weight by about lr·sign(gradient), and the biases before a BatchNorm have a gradient that is zero up to
    rounding, whose sign the batched kernels' rounding decides (on the fixture, epoch 1's mean KL came out 0.7 %
    apart after two steps)."""
    from mmbench.methods.base import MethodConfig
    from mmbench.pack import StackedModel
    from mmbench.registry import METHODS

    set_pack_mode(monkeypatch, mode)
    mods = DATASETS.get("celeba")().modalities("default")
    cls, betas = METHODS.get(method), [0.5, 4.0]
    own = []
    for r, b in enumerate(betas):
        torch.manual_seed(r)
        own.append(cls(mods, MethodConfig(method, latent_dim=8, beta=b), arch).train())
    sm = StackedModel(cls(mods, MethodConfig(method, latent_dim=8, beta=1.0), arch).train(),
                      [m.state_dict() for m in own], [None] * 2, 1e-3, torch.device("cpu"), betas=betas)
    assert sm.vectorised == (mode == "vmap") and sm.dropouts >= 10
    g = torch.Generator().manual_seed(0)
    x = {"img": torch.rand(2, 4, 3, 64, 64, generator=g),
         "text": torch.nn.functional.one_hot(torch.randint(0, mods[1].shape[1], (2, 4, mods[1].shape[0]), generator=g),
                                             mods[1].shape[1]).float()}
    gens = [torch.Generator().manual_seed(10 + r) for r in range(2)]
    states = [gg.get_state() for gg in gens]
    losses, _ = sm.loss(x, gens, 0)
    names = list(sm.params)
    g_packed = torch.autograd.grad(losses.sum(), [sm.params[n] for n in names])
    for r in range(2):
        torch.set_rng_state(states[r])  # on the CPU a run's generator starts where its run alone draws from
        alone, _ = own[r].loss({k: v[r] for k, v in x.items()})
        assert losses[r].item() == pytest.approx(alone.item(), rel=1e-6)
        mine = dict(own[r].named_parameters())
        g_alone = torch.autograd.grad(alone, [mine[n[len("model."):]] for n in names])
        a = torch.cat([t.flatten() for t in g_alone])
        p = torch.cat([t[r].flatten() for t in g_packed])
        assert torch.linalg.norm(p - a) <= 5e-4 * torch.linalg.norm(a)
        for n, b in own[r].named_buffers():
            if n.endswith(("running_mean", "running_var")):
                torch.testing.assert_close(sm.buffers[f"model.{n}"][r], b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("mode", ["loop", "vmap"])
def test_a_two_stage_packs_second_stage_draws_its_encoders_dropout_as_its_runs_alone(mode, monkeypatch):
    """SMVAE two_stage on CelebA's networks: stage 2 also runs the unimodal encoders, whose dropout draws more
    numbers than stage 1. A pack records a step's draws once per key; the key holds the stage (noise_key), so the
    pack's first stage-2 step (after a stage-1 step) gives each run (β 0.5 and 4) the loss and gradient of its model
    alone in stage 2 drawing from its stream (with one key for both stages it raised "drew more random numbers than
    recorded", and the pack stopped at the switch)."""
    from mmbench.methods.base import MethodConfig
    from mmbench.pack import StackedModel
    from mmbench.registry import METHODS

    set_pack_mode(monkeypatch, mode)
    mods = DATASETS.get("celeba")().modalities("default")
    cls, betas, options = METHODS.get("smvae"), [0.5, 4.0], {"schedule": "two_stage", "stage1_steps": 1}
    own = []
    for r, b in enumerate(betas):
        torch.manual_seed(r)
        own.append(cls(mods, MethodConfig("smvae", latent_dim=8, beta=b, options=options), "celeba_resnet_lv0").train())
    sm = StackedModel(cls(mods, MethodConfig("smvae", latent_dim=8, beta=1.0, options=options),
                          "celeba_resnet_lv0").train(), [m.state_dict() for m in own], [None] * 2, 1e-3,
                      torch.device("cpu"), betas=betas)
    g = torch.Generator().manual_seed(0)
    x = {"img": torch.rand(2, 4, 3, 64, 64, generator=g),
         "text": torch.nn.functional.one_hot(torch.randint(0, mods[1].shape[1], (2, 4, mods[1].shape[0]), generator=g),
                                             mods[1].shape[1]).float()}
    gens = [torch.Generator().manual_seed(10 + r) for r in range(2)]
    with torch.no_grad():
        sm.loss(x, gens, 0)  # stage 1: its draws recorded
    sm.host_step()
    assert sm.template.model.stage() == "stage2"
    states = [gg.get_state() for gg in gens]
    losses, _ = sm.loss(x, gens, 0)
    names = list(sm.params)
    g_packed = torch.autograd.grad(losses.sum(), [sm.params[n] for n in names], allow_unused=True)
    for r in range(2):
        own[r].host_step()  # its stage 2 too
        torch.set_rng_state(states[r])
        alone, _ = own[r].loss({k: v[r] for k, v in x.items()})
        assert losses[r].item() == pytest.approx(alone.item(), rel=1e-6)
        mine = dict(own[r].named_parameters())
        g_alone = torch.autograd.grad(alone, [mine[n[len("model."):]] for n in names], allow_unused=True)
        used = [i for i, t in enumerate(g_alone) if t is not None]
        assert used and all(g_packed[i] is not None for i in used)
        a = torch.cat([g_alone[i].flatten() for i in used])
        p = torch.cat([g_packed[i][r].flatten() for i in used])
        assert torch.linalg.norm(p - a) <= 5e-4 * torch.linalg.norm(a)


class _Toy(torch.nn.Module):
    """Dropout at two rates (elementwise and per channel) around a BatchNorm: a loss the pack must draw as alone."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3)
        self.d2, self.d1 = torch.nn.Dropout2d(0.3), torch.nn.Dropout(0.2)

    def loss(self, x):
        h = self.d1(self.bn(self.d2(self.conv(x["a"]))))
        return (h ** 2).mean(), {}


@pytest.mark.parametrize("mode", ["loop", "vmap"])
def test_packed_dropout_draws_the_masks_of_nn_dropout_at_any_rate(mode, monkeypatch):
    """pack._PackDropout at rates other than CelebA's 0.5 (where a mask and its complement are equally likely): each
    run's loss and statistics are its module's alone, from its own stream."""
    from mmbench.pack import StackedModel

    set_pack_mode(monkeypatch, mode)
    own = []
    for r in range(2):
        torch.manual_seed(r)
        own.append(_Toy().train())
    sm = StackedModel(_Toy().train(), [m.state_dict() for m in own], [None] * 2, 1e-3, torch.device("cpu"))
    assert sm.dropouts == 2
    x = {"a": torch.randn(2, 5, 2, 6, 6, generator=torch.Generator().manual_seed(3))}
    gens = [torch.Generator().manual_seed(7 + r) for r in range(2)]
    states = [g.get_state() for g in gens]
    losses, _ = sm.loss(x, gens, 0)
    for r in range(2):
        torch.set_rng_state(states[r])
        alone, _ = own[r].loss({"a": x["a"][r]})
        assert losses[r].item() == pytest.approx(alone.item(), rel=1e-6)
        torch.testing.assert_close(sm.buffers["model.bn.running_var"][r], own[r].bn.running_var)
