"""Every registered method on every dataset's modality shapes and default architecture: two training
steps with a finite loss and finite gradients, then every subset encoded and decoded."""
import pytest
import torch

from mmbench.data.base import to_float
from mmbench.methods.base import MethodConfig, evaluable_subsets
from mmbench.registry import DATASETS, METHODS

SHAPES = [("mnist-svhn-text", None), ("celeba", None), ("rats", "simulated")]


def fake_batch(mods, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for m in mods:
        if m.kind == "text":
            raw = torch.randint(0, m.shape[-1], (n, m.shape[0]), generator=g)
        else:
            raw = torch.randint(0, 11 if m.kind == "spikes" else 256, (n, *m.shape), generator=g, dtype=torch.uint8)
        out[m.name] = to_float(m, raw)
    return out


@pytest.mark.parametrize("dataset, variant", SHAPES)
@pytest.mark.parametrize("method", METHODS.names())
def test_method_trains_on_dataset_shapes(method, dataset, variant):
    spec = DATASETS.get(dataset)()
    mods = spec.modalities(spec.check_variant(variant))
    torch.manual_seed(0)
    model = METHODS.get(method)(mods, MethodConfig(method, latent_dim=4, beta=1.0), spec.default_architecture)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = fake_batch(mods)
    for _ in range(2):
        loss, logs = model.loss(x)
        assert torch.isfinite(loss), logs
        opt.zero_grad()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        opt.step()
    model.eval()
    with torch.no_grad():
        subsets = evaluable_subsets(model)
        for s, q in zip(subsets, model.encode_subsets(x, subsets)):
            z = q.rsample()
            for m in mods:
                assert model.decode(z, m.name).shape == x[m.name].shape  # every dim, as the input
