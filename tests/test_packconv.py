"""mmbench/packconv.py: a pack's convolutions as batched matmuls (MMBENCH_PACK_CONV=bmm) compute PyTorch's
convolutions, run by run and under vmap, forward and backward; the swap keeps every parameter and its name."""
import pytest
import torch
from torch import nn

from mmbench.errors import MMBenchError
from mmbench.packconv import MatmulConv2d, MatmulConvTranspose2d, conv_mode, matmul_convs

# the projects' 2-d convolutions (PolyMNIST CNN: k3 s2 p1, transposed with output padding 1 or 0; MNIST-SVHN-Text's
# SVHN CNN: k4 s2 p1 and k4 s1 p0) and shapes beyond them: no bias, dilation, rectangular kernels and strides
LAYERS = [
    (nn.Conv2d(3, 8, 3, 2, 1), (28, 28)), (nn.Conv2d(8, 16, 3, 2, 1), (7, 7)), (nn.Conv2d(3, 8, 4, 2, 1), (32, 32)),
    (nn.Conv2d(8, 6, 4, 1, 0), (4, 4)), (nn.Conv2d(4, 5, (3, 2), (1, 2), (1, 0), dilation=(2, 1), bias=False), (9, 8)),
    (nn.ConvTranspose2d(16, 8, 3, 2, 1), (4, 4)), (nn.ConvTranspose2d(8, 3, 3, 2, 1, output_padding=1), (14, 14)),
    (nn.ConvTranspose2d(6, 8, 4, 1, 0), (1, 1)), (nn.ConvTranspose2d(8, 3, 4, 2, 1, bias=False), (8, 8)),
    (nn.ConvTranspose2d(4, 5, (3, 2), (2, 1), (1, 0), output_padding=(1, 0), dilation=(1, 2)), (5, 6)),
]


def _stacked(layer, runs):
    torch.manual_seed(0)
    p = {"weight": torch.randn(runs, *layer.weight.shape).requires_grad_(True)}
    if layer.bias is not None:
        p["bias"] = torch.randn(runs, *layer.bias.shape).requires_grad_(True)
    return p


@pytest.mark.parametrize("layer,hw", LAYERS, ids=[f"{type(m).__name__}-{i}" for i, (m, _) in enumerate(LAYERS)])
def test_matmul_convolutions_equal_pytorchs_alone_and_vmapped(layer, hw):
    swapped, n = matmul_convs(layer)
    assert n == 1 and type(swapped) in (MatmulConv2d, MatmulConvTranspose2d) and type(layer) in (nn.Conv2d,
                                                                                                 nn.ConvTranspose2d)
    R, B = 3, 4
    p = _stacked(layer, R)
    x = torch.randn(R, B, layer.in_channels, *hw, requires_grad=True)
    g = torch.randn_like(torch.stack([torch.func.functional_call(layer, {k: v[r] for k, v in p.items()}, (x[r],))
                                      for r in range(R)]))

    def grads(f):
        out = f()
        return [out] + list(torch.autograd.grad(out, [*p.values(), x], g))
    want = grads(lambda: torch.stack([torch.func.functional_call(layer, {k: v[r] for k, v in p.items()}, (x[r],))
                                      for r in range(R)]))
    alone = grads(lambda: torch.stack([torch.func.functional_call(swapped, {k: v[r] for k, v in p.items()}, (x[r],))
                                       for r in range(R)]))
    vmapped = grads(lambda: torch.func.vmap(lambda pr, xr: torch.func.functional_call(swapped, pr, (xr,)))(p, x))
    for got in (alone, vmapped):
        for a, b in zip(got, want):
            assert a.shape == b.shape
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_the_swap_keeps_parameters_and_names_and_leaves_the_original():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1), nn.ReLU(), nn.ConvTranspose2d(4, 3, 3, 2, 1, output_padding=1),
                        nn.Conv2d(4, 4, 3, groups=2), nn.Conv2d(3, 3, 3, padding="same"),
                        nn.Conv2d(3, 3, 3, padding=1, padding_mode="reflect"), nn.Conv1d(3, 3, 3), nn.Linear(3, 3))
    swapped, n = matmul_convs(net)
    assert n == 2  # grouped, "same"-padded, reflect-padded and 1-d convolutions keep PyTorch's
    assert [type(m) for m in swapped][:3] == [MatmulConv2d, nn.ReLU, MatmulConvTranspose2d]
    assert [type(m) for m in swapped][3:] == [type(m) for m in net][3:]
    assert type(net[0]) is nn.Conv2d and type(net[2]) is nn.ConvTranspose2d  # a copy was swapped
    a, b = net.state_dict(), swapped.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert isinstance(swapped[0], nn.Conv2d)  # a subclass: isinstance checks (e.g. packability) still see a conv


def test_an_unknown_mode_and_an_output_size_are_refused(monkeypatch):
    monkeypatch.setenv("MMBENCH_PACK_CONV", "im2col")
    with pytest.raises(MMBenchError, match=r"MMBENCH_PACK_CONV='im2col': use grouped or bmm"):
        conv_mode()
    for v, want in (("", "grouped"), ("grouped", "grouped"), ("bmm", "bmm")):
        monkeypatch.setenv("MMBENCH_PACK_CONV", v)
        assert conv_mode() == want
    m, _ = matmul_convs(nn.ConvTranspose2d(2, 2, 3, 2, 1))
    with pytest.raises(MMBenchError, match="output_size"):
        m(torch.randn(1, 2, 4, 4), output_size=[8, 8])
