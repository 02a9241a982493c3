"""docs/gpu-runs/kernel_choices.py, the GPU script's comparison of the kernels a pack could use: every alternative
must compute the vmapped layer (else its time means nothing), and a wrong one must stop the script."""
import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

SCRIPT = Path(__file__).resolve().parents[1] / "docs" / "gpu-runs" / "kernel_choices.py"


@pytest.fixture()
def kc():
    spec = importlib.util.spec_from_file_location("kernel_choices", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_tables_cover_every_layer_and_adam(kc, tmp_path):
    out = tmp_path / "kc.md"
    text = kc.main(["--device", "cpu", "--packs", "1,3", "--batch-size", "4", "--latent-dim", "8", "--repeats", "1",
                    "--out", str(out)])
    assert out.read_text() == text
    rows = [line for line in text.splitlines() if line.startswith(("| enc", "| dec"))]
    # 3 convolutions + 3 linear layers in the encoder, 1 linear + 3 transposed convolutions in the decoder, per R
    assert len(rows) == 2 * 10
    assert sum("convT" in r for r in rows) == 6 and sum(" conv " in r for r in rows) == 6
    assert "| layer | R | vmapped | looped | bmm | grouped nhwc | fastest |" in text
    conv_rows = [r for r in rows if "conv" in r]
    assert all(r.count("(") == 3 for r in conv_rows), conv_rows  # looped, bmm and grouped each with its difference
    adam = [line for line in text.splitlines() if line.startswith(("| 1 |", "| 3 |"))]
    assert len(adam) == 2 and all("unavailable" not in a for a in adam), adam


@pytest.mark.parametrize("layer", [nn.Conv2d(3, 4, 3, 2, 1), nn.ConvTranspose2d(4, 3, 3, 2, 1, output_padding=1),
                                   nn.ConvTranspose2d(4, 2, 3, 2, 1)])
def test_every_variant_is_the_layer_run_by_run(kc, layer):
    """Against F.conv2d / conv_transpose2d of each run's own weights (not only against vmap, which they are compared
    with in the script), for the shapes of the PolyMNIST CNN: stride 2, padding 1, with and without output padding."""
    p = kc.stacked(layer, 3, "cpu")
    x = torch.randn(3, 2, layer.in_channels, 7, 7)
    want = torch.stack([torch.func.functional_call(layer, {k: v[r] for k, v in p.items()}, (x[r],)) for r in range(3)])
    found = kc.variants(layer, "cpu")
    assert set(found) == {"vmapped", "looped", "bmm", "grouped nhwc"}
    for name, (f, _tol, _tf32) in found.items():
        got = f(p, x)
        assert got.shape == want.shape, name
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=name)


def test_a_variant_computing_something_else_stops_the_script(kc, monkeypatch):
    real = kc.as_matmul

    def off(layer):  # the same kernels and cost, one percent off: another layer
        m = real(layer)
        forward = m.forward
        m.forward = lambda x: 1.01 * forward(x)
        return m
    monkeypatch.setattr(kc, "as_matmul", off)
    with pytest.raises(SystemExit, match="bmm differs from the vmapped result.*does not compute the same layer"):
        kc.main(["--device", "cpu", "--packs", "2", "--batch-size", "2", "--latent-dim", "4", "--repeats", "1"])


def test_an_adam_that_updates_otherwise_stops_the_script(kc, monkeypatch):
    real = torch.optim.Adam

    def adam(params, lr, **kw):  # the fused implementation with another β2: the time would be of another optimiser
        return real(params, lr=lr, betas=(0.9, 0.99), **kw) if kw.get("fused") else real(params, lr=lr, **kw)
    monkeypatch.setattr(kc.torch.optim, "Adam", adam)
    with pytest.raises(SystemExit, match="Adam, R=2: fused moves the parameters differently"):
        kc.adam_table("cpu", [2], 4, 1)


def test_an_adam_a_twentieth_of_a_percent_off_stops_the_script(kc, monkeypatch):
    """The check compares the parameters' change, not the parameters (3 steps move them ~10 % of their size, so a
    difference in the update would look 10 times smaller): a step 0.05 % longer (lr 1.0005 times) is another update,
    5 times TOL_ADAM in the change (0.5 times in the parameters)."""
    real = torch.optim.Adam

    def adam(params, lr, **kw):
        return real(params, lr=lr * 1.0005 if kw.get("fused") else lr, **kw)
    monkeypatch.setattr(kc.torch.optim, "Adam", adam)
    with pytest.raises(SystemExit, match="Adam, R=2: fused moves the parameters differently"):
        kc.adam_table("cpu", [2], 4, 1)


def test_a_variant_with_another_gradient_stops_the_script(kc, monkeypatch):
    """The check compares every gradient, the input's too, not only the outputs: a variant whose forward is right
    and whose input gradient is a tenth of a percent off (beyond fp32 rounding) is another layer."""
    real = kc.as_matmul

    def off(layer):  # the same output; d(output)/d(input) 1.001 times the layer's
        m = real(layer)
        forward = m.forward
        m.forward = lambda x: forward(x + 1e-3 * (x - x.detach()))
        return m
    monkeypatch.setattr(kc, "as_matmul", off)
    with pytest.raises(SystemExit, match="bmm differs from the vmapped result.*does not compute the same layer"):
        kc.main(["--device", "cpu", "--packs", "2", "--batch-size", "2", "--latent-dim", "4", "--repeats", "1"])


def test_layers_are_timed_without_the_hooks_that_found_them_and_tf32_is_restored(kc):
    found = kc.layers(4)
    assert len(found) == 10 and not any(m._forward_hooks for _, m, _ in found)
    before = torch.backends.cuda.matmul.allow_tf32
    for on in (True, False):
        with kc.tf32_matmuls(on):
            assert torch.backends.cuda.matmul.allow_tf32 is on
        assert torch.backends.cuda.matmul.allow_tf32 is before
