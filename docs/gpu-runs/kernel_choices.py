"""Which kernels should a pack use on this device? For the PolyMNIST CNN of MoPoE Fig. 3 (mmbench/nets/polymnist.py) at
pack sizes R, times the forward + backward pass of each of its layers stacked over R runs, computed four ways:

  vmapped      what mmbench/pack.py runs: torch.func.vmap over the stacked parameters (a convolution becomes one
               grouped convolution with groups = R; a linear layer one batched matmul)
  looped       R ordinary calls, one per run (a CPU pack's default, MMBENCH_PACK_MODE=loop)
  bmm          a convolution as one matmul per run over unfolded patches (im2col; col2im for the transposed ones),
               vmapped into one batched matmul: what a pack runs with MMBENCH_PACK_CONV=bmm (mmbench/packconv.py),
               in fp32, and again with TF32 matmuls (`bmm tf32`: the precision cuDNN's convolutions get by
               PyTorch's default, which mmbench keeps)
  grouped nhwc the grouped convolution called directly on channels_last tensors

and Adam's step over a pack's stacked parameters (all 5 encoders and decoders): foreach (multi-tensor kernels: the
trainer's on a GPU), fused (one kernel), for-loop (one tensor at a time). Every alternative is first compared with
the vmapped result (outputs and all gradients; Adam: parameters after 3 steps), and its relative difference is
printed beside its time, so the table compares equal work; a difference beyond float rounding (TF32's where TF32 is
used) stops the script. The issue's question (`vmap`, or grouped kernels: "your choice, measured") gets its numbers.

python docs/gpu-runs/kernel_choices.py [--device cuda] [--packs 5,15] [--batch-size 256] [--latent-dim 512]
    [--repeats 10] [--out kernel-choices.md]"""
import argparse
import contextlib
import copy
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from mmbench.bench import _timed  # noqa: E402
from mmbench.nets.polymnist import CNNDecoder, CNNEncoder  # noqa: E402
from mmbench.packconv import matmul_convs  # noqa: E402

Params = Dict[str, torch.Tensor]
# largest relative difference from the vmapped result accepted as float rounding: fp32 reassociation, and TF32
# (10-bit mantissa) where cuDNN's convolutions or a TF32 matmul are involved
TOL_FP32, TOL_TF32 = 1e-4, 2e-2
# Adam: the parameters' change after 3 steps, from parameters of magnitude ~0.01 (so that the last bit of the parameter
# an implementation writes is ~1e-6 of a change at lr 1e-3; another β2, 0.99, differs by 2e-3)
TOL_ADAM = 1e-4


def layers(latent_dim: int) -> List[tuple]:
    """(name, module, input shape without the batch) of every convolution and linear layer of one PolyMNIST
    encoder and decoder, in the order a forward pass runs them."""
    found = []

    def hook(mod, inp, _out):
        found.append((mod, tuple(inp[0].shape[1:])))
    enc, dec = CNNEncoder(latent_dim), CNNDecoder(latent_dim)
    hooks = [m.register_forward_hook(hook) for net in (enc, dec) for m in net.modules()
             if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    with torch.no_grad():
        mu, _ = enc(torch.zeros(2, 3, 28, 28))
        dec(mu)
    for h in hooks:  # the layers are timed next, copies of them too: without the hook
        h.remove()
    kind = {nn.Conv2d: "conv", nn.ConvTranspose2d: "convT", nn.Linear: "linear"}
    out = []
    for i, (m, shape) in enumerate(found):
        part = "enc" if i < sum(1 for x in enc.modules() if type(x) in kind) else "dec"
        if isinstance(m, nn.Linear):
            name = f"{part} linear {m.in_features}->{m.out_features}"
        else:
            name = f"{part} {kind[type(m)]} {m.in_channels}->{m.out_channels} {shape[1]}x{shape[2]}"
        out.append((name, m, shape))
    return out


def stacked(layer: nn.Module, runs: int, device, seed: int = 0) -> Params:
    """The layer's parameters for `runs` runs, each initialised as PyTorch initialises the layer, stacked on dim 0."""
    torch.manual_seed(seed)
    mods = []
    for _ in range(runs):
        m = copy.deepcopy(layer)
        m.reset_parameters()
        mods.append(m.to(device))
    params, _ = stack_module_state(mods)
    return {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}


def vmapped(layer: nn.Module) -> Callable:
    return lambda p, x: vmap(lambda pr, xr: functional_call(layer, pr, (xr,)))(p, x)


def looped(layer: nn.Module) -> Callable:
    return lambda p, x: torch.stack([functional_call(layer, {k: v[r] for k, v in p.items()}, (x[r],))
                                     for r in range(x.shape[0])])


def as_matmul(layer: nn.Module) -> nn.Module:
    """The layer as a pack computes it under MMBENCH_PACK_CONV=bmm (mmbench/packconv.py)."""
    return matmul_convs(layer)[0]


def grouped_nhwc(layer: nn.Module) -> Callable:
    """The grouped convolution vmap makes, called directly with channels_last tensors."""
    conv = F.conv2d if isinstance(layer, nn.Conv2d) else F.conv_transpose2d

    def f(p, x):
        R, B, C, H, W = x.shape
        xs = x.transpose(0, 1).reshape(B, R * C, H, W).contiguous(memory_format=torch.channels_last)
        w = p["weight"].reshape(-1, *p["weight"].shape[2:]).contiguous(memory_format=torch.channels_last)
        kw = dict(stride=layer.stride, padding=layer.padding, dilation=layer.dilation, groups=R)
        if conv is F.conv_transpose2d:
            kw["output_padding"] = layer.output_padding
        y = conv(xs, w, p["bias"].reshape(-1), **kw)
        return y.reshape(B, R, -1, *y.shape[2:]).transpose(0, 1)
    return f


def fwd_bwd(f: Callable, p: Params, x: torch.Tensor, g: torch.Tensor) -> List[torch.Tensor]:
    out = f(p, x)
    return [out.detach()] + list(torch.autograd.grad(out, [*p.values(), x], g))


def rel_diff(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    return max(((u.float() - v.float()).abs().max() / v.float().abs().max().clamp_min(1e-30)).item()
               for u, v in zip(a, b))


def timed(work: Callable[[], object], device, repeats: int) -> float:
    """Median milliseconds of `work` over `repeats` calls after two warm-up calls, timed as `bench steps` times a
    step (mmbench/bench.py _timed: the device synchronised around each call)."""
    return 1e3 * _timed(work, 2, repeats, torch.device(device), [])["median_s"]


@contextlib.contextmanager
def tf32_matmuls(on: bool):
    """TF32 matmuls switched on or off for the block (forward and backward), restored after."""
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = on
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def variants(layer: nn.Module, device) -> Dict[str, tuple]:
    """name -> (function, tolerance, TF32 matmuls) of every way to compute the stacked layer; the first is the
    reference."""
    cuda = torch.device(device).type == "cuda"
    tf32 = torch.backends.cuda.matmul.allow_tf32
    conv_tol = TOL_TF32 if cuda and torch.backends.cudnn.allow_tf32 else TOL_FP32
    if not isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
        return {"vmapped": (vmapped(layer), 0.0, tf32), "looped": (looped(layer), TOL_FP32, tf32)}
    bmm = vmapped(as_matmul(layer))
    out = {"vmapped": (vmapped(layer), 0.0, tf32), "looped": (looped(layer), conv_tol, tf32),
           "bmm": (bmm, conv_tol, False)}
    if cuda:
        out["bmm tf32"] = (bmm, TOL_TF32, True)
    out["grouped nhwc"] = (grouped_nhwc(layer), conv_tol, tf32)
    return out


def layer_table(device, packs: Sequence[int], batch_size: int, latent_dim: int, repeats: int) -> tuple:
    """Rows (layer, R, {variant: (ms, rel diff)}) and the variants' names in column order."""
    rows, names = [], []
    for name, layer, shape in layers(latent_dim):
        layer = layer.to(device)
        for R in packs:
            p = stacked(layer, R, device)
            gen = torch.Generator(device).manual_seed(R)
            x = torch.randn(R, batch_size, *shape, device=device, generator=gen).requires_grad_(True)
            ref = None
            cells = {}
            for vname, (f, tol, tf32) in variants(layer, device).items():
                with tf32_matmuls(tf32):
                    with torch.no_grad():
                        out_shape = f(p, x).shape
                    g = torch.randn(out_shape, device=device, generator=torch.Generator(device).manual_seed(1))
                    res = fwd_bwd(f, p, x, g)
                    if ref is None:
                        ref, diff = res, 0.0
                    else:
                        diff = rel_diff(res, ref)
                        if diff > tol:
                            raise SystemExit(f"{name}, R={R}: {vname} differs from the vmapped result by {diff:.2e} "
                                             f"(relative; allowed {tol:.0e}): it does not compute the same layer")
                    cells[vname] = (timed(lambda: fwd_bwd(f, p, x, g), device, repeats), diff)
                names += [vname] if vname not in names else []
            rows.append((name, R, cells))
    return rows, names


def adam_table(device, packs: Sequence[int], latent_dim: int, repeats: int) -> List[tuple]:
    """Rows (R, parameters, {implementation: (ms per step, rel diff of the parameters after 3 steps)})."""
    shapes = [p.shape for net in (CNNEncoder(latent_dim), CNNDecoder(latent_dim)) for p in net.parameters()] * 5
    impls = {"foreach": dict(foreach=True), "fused": dict(fused=True), "for-loop": dict(foreach=False)}
    rows = []
    for R in packs:
        gen = torch.Generator(device).manual_seed(R)
        start = [0.01 * torch.randn(R, *s, device=device, generator=gen) for s in shapes]
        grads = [torch.randn(R, *s, device=device, generator=gen) for s in shapes]
        cells, ref = {}, None
        for iname, kw in impls.items():
            ps = [t.clone().requires_grad_(True) for t in start]
            try:
                opt = torch.optim.Adam(ps, lr=1e-3, **kw)
            except (RuntimeError, ValueError) as e:  # e.g. fused Adam on a device without it
                cells[iname] = (None, f"unavailable: {str(e).splitlines()[0][:80]}")
                continue
            with torch.no_grad():  # 3 steps with gradients that change (with a constant one Adam's first steps
                for k in range(3):  # are ±lr whatever its β: a wrong β would pass)
                    for p, g in zip(ps, grads):
                        p.grad = g * (1.0 - 1.5 * k)
                    opt.step()
            after = [p.detach().clone() for p in ps]
            diff = 0.0 if ref is None else rel_diff([a - s for a, s in zip(after, start)],
                                                    [r - s for r, s in zip(ref, start)])
            if ref is None:
                ref = after
            elif diff > TOL_ADAM:
                raise SystemExit(f"Adam, R={R}: {iname} moves the parameters differently from foreach by {diff:.2e}")
            with torch.no_grad():
                cells[iname] = (timed(opt.step, device, repeats), diff)
            del opt, ps
        rows.append((R, sum(s.numel() for s in shapes) * R, cells))
    return rows


def cell(c) -> str:
    ms, diff = c
    if ms is None:
        return diff
    return f"{ms:.3f} ({diff:.0e})" if diff else f"{ms:.3f}"


def render(device, packs, batch_size, latent_dim, repeats, rows, names, adam_rows) -> str:
    cuda = torch.device(device).type == "cuda"
    head = ["# Kernel choices for packed steps (docs/gpu-runs/kernel_choices.py)", "",
            f"device {torch.cuda.get_device_name(device) if cuda else 'cpu'}, torch {torch.__version__}, "
            f"cudnn.allow_tf32 {torch.backends.cudnn.allow_tf32}, matmul.allow_tf32 "
            f"{torch.backends.cuda.matmul.allow_tf32}, cudnn.benchmark {torch.backends.cudnn.benchmark}, "
            f"{torch.get_num_threads()} CPU threads; batch {batch_size}, latent {latent_dim}, median of {repeats}", "",
            "Milliseconds per forward + backward of one layer for all R runs (in brackets: the largest difference from "
            "the vmapped result over the output and every gradient, relative to its largest magnitude).", ""]
    lines = ["| layer | R | " + " | ".join(names) + " | fastest |", "|---|---|" + "---|" * (len(names) + 1)]
    totals: Dict[tuple, float] = {}
    for name, R, cells in rows:
        fastest = min(cells, key=lambda v: cells[v][0])
        lines.append(f"| {name} | {R} | " + " | ".join(cell(cells[v]) if v in cells else "" for v in names)
                     + f" | {fastest} |")
        for v in ("vmapped", "looped"):
            totals[R, v] = totals.get((R, v), 0.0) + cells[v][0]
        best = min(cells[v][0] for v in cells)
        totals[R, "best"] = totals.get((R, "best"), 0.0) + best
    summary = ["", "Sum over the layers of one encoder and one decoder (a modality's pass), per R: "
               + "; ".join(f"R={R}: vmapped {totals[R, 'vmapped']:.2f} ms, looped {totals[R, 'looped']:.2f} ms, "
                           f"each layer's fastest {totals[R, 'best']:.2f} ms" for R in packs), ""]
    impls = [k for k in adam_rows[0][2]] if adam_rows else []
    adam = ["Adam's step over a pack's stacked parameters (5 encoders and decoders per run), milliseconds (in "
            "brackets: the parameters' change after 3 steps against foreach's, relative):", "",
            "| R | parameters | " + " | ".join(impls) + " | fastest |", "|---|---|" + "---|" * (len(impls) + 1)]
    for R, n, cells in adam_rows:
        ok = {k: v for k, v in cells.items() if v[0] is not None}
        adam.append(f"| {R} | {n:,} | " + " | ".join(cell(cells[k]) for k in impls)
                    + f" | {min(ok, key=lambda k: ok[k][0])} |")
    return "\n".join(head + lines + summary + adam) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--packs", default="5,15", help="pack sizes R, comma-separated")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--latent-dim", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--out", default=None, help="write the tables here too (markdown)")
    a = ap.parse_args(argv)
    packs = [int(r) for r in a.packs.split(",") if r.strip()]
    if not packs or min(packs) < 1:
        ap.error(f"--packs {a.packs!r}: give pack sizes of at least 1, e.g. 5,15")
    rows, names = layer_table(a.device, packs, a.batch_size, a.latent_dim, a.repeats)
    text = render(a.device, packs, a.batch_size, a.latent_dim, a.repeats, rows, names,
                  adam_table(a.device, packs, a.latent_dim, a.repeats))
    if a.out:
        Path(a.out).write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
