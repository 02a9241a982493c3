"""Device operations per training step (issue 13, "launch overhead" and "mrVAE within 3× of MoPoE").

The PolyMNIST networks are small, so on a GPU a step's time is mostly its kernel launches and the Python that
issues them, not arithmetic. `mmbench.bench.device_ops` counts the tensor operations a step issues, on PyTorch's
`meta` device (shapes, no data: nothing is computed, and no CPU-only shortcut such as mrVAE's cut of the prior's
rows is taken), views excluded. These tests check the counter and hold mrVAE's step to the issue's bound against
MoPoE's, so that a change putting a Python loop back into its step fails here rather than on a GPU.
"""
import pytest
import torch

from mmbench.bench import device_ops, floor_step, method_step


def test_the_counter_counts_device_operations_and_not_views_or_host_work():
    x = torch.ones(4, 3, device="meta")
    host = torch.ones(3)

    def step():
        y = x.view(12).unsqueeze(0)  # views: no kernel
        (y * 2).sum()  # two kernels
        host.add(1)  # host only: not the device's
        torch.relu(x).t().contiguous()  # relu + a copy of the transposed view

    assert device_ops(step, warmup=0) == 4
    assert device_ops(lambda: None, warmup=0) == 0


def test_every_step_is_counted_on_meta_at_the_papers_shapes_without_depending_on_them():
    """The count does not depend on the batch or latent size (no data-dependent work on meta), so small shapes
    stand for the papers' (batch 256, latent 512)."""
    small = device_ops(method_step("mrvae", batch_size=4, latent_dim=16, device="meta")[0])
    assert small == device_ops(method_step("mrvae", batch_size=8, latent_dim=24, device="meta")[0])
    assert device_ops(floor_step(batch_size=4, latent_dim=16, device="meta")[0]) > 100


def test_mrvae_step_issues_at_most_three_times_mopoes_operations():
    """Issue 13, point 4: mrVAE's step within 3× of MoPoE's. Where launches bound the step (a GPU at these
    network sizes), time follows the operation count: mrVAE's step issued 2,632 operations against MoPoE's 365
    before its relation was vectorised (one Gumbel draw for every subspace's size, the slots and their KL as stacked
    tensors, every pick placed with one scatter), 804 after; the sequential size draws (Def. 1) remain, 8
    operations per subspace."""
    ops = {m: device_ops(method_step(m, batch_size=4, latent_dim=16, device="meta")[0]) for m in ("mopoe", "mrvae")}
    assert ops["mrvae"] <= 3 * ops["mopoe"], ops


@pytest.mark.parametrize("conv", ["grouped", "bmm"])
def test_a_packs_operations_do_not_grow_with_its_runs(monkeypatch, conv):
    """A pack's loss is vmapped: one batched kernel per operation for all its runs, so a pack of R runs issues about
    the operations of one run's step (plus vmap's reshapes) and a launch-bound GPU step costs ~1/R per run. A
    batching rule that loops over the runs breaks that silently (no warning: mrVAE's index_add over a buffer's
    indices did, one launch per run and subspace); here every packable method's packed step issues the same operations
    for 2 and 4 runs, with vmap's grouped convolutions and with the convolutions as batched matmuls (MMBENCH_PACK_CONV).
    One known exception, counted exactly: VGON's and SMVGON's inner gradient step differentiates the decoders' transposed
    convolutions twice, and vmap's grouped rule for that second derivative runs one convolution per run and layer (9
    per run here: 3 decoders of 3 layers); as batched matmuls it does not."""
    from mmbench.bench import pack_step
    from mmbench.registry import METHODS

    monkeypatch.setenv("MMBENCH_PACK_CONV", conv)

    for m in [m for m in METHODS.names() if METHODS.get(m).packable]:
        # one warm-up step (Adam's moments), the same for both packs: what differs is only the runs
        two, four = (device_ops(pack_step(m, r, n_modalities=3, batch_size=4, latent_dim=8, device="meta")[0],
                                warmup=1) for r in (2, 4))
        looped = 9 if conv == "grouped" and m in ("vgon", "smvgon") else 0  # per run: see the docstring
        assert four - two == (4 - 2) * looped, (m, two, four)
    # the check can fail: index_add with a batched index (a pack stacks every buffer per run, index tables too)
    # loops over the runs under vmap
    def looped(runs):
        return lambda: torch.func.vmap(lambda t, i, s: t.index_add(0, i, s))(
            torch.zeros(runs, 3, 5, device="meta"), torch.zeros(runs, 2, dtype=torch.long, device="meta"),
            torch.ones(runs, 2, 5, device="meta"))

    assert device_ops(looped(4), warmup=0) > device_ops(looped(2), warmup=0)
