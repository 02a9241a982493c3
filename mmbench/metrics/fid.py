"""Fréchet Inception Distance of generated images to the test images (Heusel et al. 2017; mrVAE Table 2).

* Network: pytorch-fid's FID variant of InceptionV3 (the TF 2015-12-05 graph ported to PyTorch), 2048-d
  pool3 features; inputs in [0, 1], resized bilinearly to 299×299 and scaled to [-1, 1] inside, as
  pytorch-fid does (MoPoE's fid/inception.py and MultiVae's FID code use the same network).
* Weights: the published file ``pt_inception-2015-12-05-6726825d.pth`` (FID_WEIGHTS_URL), checked
  against its sha256 before use. Looked up at ``eval.fid_weights`` (or ``mmbench evaluate --fid-weights``)
  or else in the torch hub cache (``torch.hub.get_dir()/checkpoints/``), downloaded there when missing.
  A missing or different file is a hard error: never an untrained network, never another checkpoint.
* Real statistics (mean, covariance of the features of the test images of each image modality) are
  cached under ``<data_root or $MMBENCH_CACHE>/fid_stats/``, keyed by the images' content digest and the weights' sha256.
* Generated images are the likelihood means, clamped to [0, 1] and quantised to 8 bits as a saved PNG
  would be (MoPoE saves each sample as a PNG before its Inception pass); one-channel images are repeated
  to three channels; text modalities get no FID.

Keys: ``fid/prior-><m>`` (z ~ N(0, I), unconditional); ``fid/<S>-><m>`` for each input subset S
(``eval.fid_subsets``) and image modality m, targets inside S included (mrVAE Table 2 reports x0 -> x0);
``fid_by_n/<n>`` = mean over subsets of size n of the targets outside S. Sample budget:
``eval.fid_samples`` test tuples (default 10,000, MoPoE's `num_samples_fid`; capped by the test split),
the same number of prior samples. Fewer samples bias FID upwards (the covariance is rank-deficient
below 2048 samples), so compare only numbers computed with the same budget.
"""
from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.base import DataSplit, Modality
from ..data.download import file_digest
from ..errors import MMBenchError, brief
from ..files import SHARED_TEMP_AGE_S, cache_lock, remove_abandoned_temps, stderr_note, temp_beside, usual_mode
from ..methods.base import all_subsets, subset_key
from ..registry import METRICS
from ..results import atomic_write
from .batched import chunked
from .cache import cache_folder, cache_root, set_aside, writable_folder
from .context import EvalContext

# pytorch-fid 0.3.0 inception.py FID_WEIGHTS_URL (tests/test_metrics_fid.py holds the two equal); written out so
# that importing this module (every CLI call loads the metric registry) does not import torchvision (~3 s).
FID_WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_FILE = FID_WEIGHTS_URL.rsplit("/", 1)[-1]  # pt_inception-2015-12-05-6726825d.pth
# sha256 of the published file (95,628,359 bytes); torch hub's name suffix 6726825d is its prefix.
FID_WEIGHTS_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
FID_DIMS = 2048
SUBSET_CHOICES = ("all", "unimodal", "unimodal_and_full", "none")


# ----- the network -----------------------------------------------------------------------------

def build_inception() -> nn.Module:
    """pytorch-fid's FID InceptionV3 trunk (torchvision Inception3, 1008 classes, with pytorch-fid's
    patched blocks), randomly initialised: the caller loads the verified weights into it."""
    import torchvision  # here, not at the top: see FID_WEIGHTS_URL
    from pytorch_fid import inception as pfid
    net = torchvision.models.inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=False)
    net.Mixed_5b = pfid.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = pfid.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = pfid.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = pfid.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = pfid.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = pfid.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = pfid.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = pfid.FIDInceptionE_1(1280)
    net.Mixed_7c = pfid.FIDInceptionE_2(2048)
    return net


class FIDInception(nn.Module):
    """Images in [0, 1] (B×3×H×W) -> 2048-d pool3 features, exactly pytorch-fid's InceptionV3 block 3 path."""

    LAYERS = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
              "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
              "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c")

    def __init__(self, state_dict: Dict[str, torch.Tensor]):
        super().__init__()
        with torch.random.fork_rng(devices=[]):  # the layers' initial draws must not move the evaluation's stream
            self.net = build_inception()
        try:
            self.net.load_state_dict(state_dict, strict=True)
        except RuntimeError as e:
            raise MMBenchError(f"the FID Inception weights do not fit pytorch-fid's InceptionV3: {str(e)[:200]}") from None
        self.eval().requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = 2 * x - 1  # (0, 1) -> (-1, 1), the range the TF Inception expects
        for name in self.LAYERS:
            x = getattr(self.net, name)(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


def weights_help() -> str:
    return (f"download {FID_WEIGHTS_URL} (sha256 {FID_WEIGHTS_SHA256}) and put it at "
            f"{Path(torch.hub.get_dir()) / 'checkpoints' / FID_WEIGHTS_FILE}, or pass its path with "
            f"`mmbench evaluate ... --fid-weights PATH` or `--set eval.fid_weights=PATH`")


def resolve_weights(path: Optional[str], sha256: str = FID_WEIGHTS_SHA256, download: bool = True) -> Path:
    """The verified weights file: `path` if given, else the torch hub cache copy (downloaded if missing)."""
    if path:
        target = Path(path).expanduser()
        if not target.is_file():
            raise MMBenchError(f"FID Inception weights not found at {target} (eval.fid_weights); {weights_help()}")
    else:
        target = Path(torch.hub.get_dir()) / "checkpoints" / FID_WEIGHTS_FILE
        if not target.is_file():
            if not download:
                raise MMBenchError(f"FID Inception weights not found at {target}; {weights_help()}")
            download_weights(target, sha256)
    actual = file_digest(target, "sha256")
    if actual != sha256:
        raise MMBenchError(f"{target} is not the FID Inception weights file (sha256 {actual[:16]}…, expected "
                           f"{sha256[:16]}…); {weights_help()}")
    return target


def download_weights(target: Path, sha256: str) -> None:
    """Fetch the published weights into `target`, keeping the file only if its sha256 matches."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_beside(target)
    os.close(fd)
    try:
        torch.hub.download_url_to_file(FID_WEIGHTS_URL, tmp, progress=False)
        actual = file_digest(Path(tmp), "sha256")
        if actual != sha256:
            raise MMBenchError(f"downloaded {FID_WEIGHTS_URL} has sha256 {actual[:16]}…, expected {sha256[:16]}…; "
                               f"{weights_help()}")
        os.chmod(tmp, usual_mode())  # torch's download leaves its own temporary file's 0600
        os.replace(tmp, target)
    except MMBenchError:
        raise
    except Exception as e:  # no network, HTTP error, disk full
        raise MMBenchError(f"could not download the FID Inception weights ({type(e).__name__}: {str(e)[:120]}); "
                           f"{weights_help()}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


_NETWORKS: Dict[Tuple[str, str], FIDInception] = {}


def fid_network(path: Optional[str], device, sha256: str = FID_WEIGHTS_SHA256) -> FIDInception:
    """The Inception with the verified weights on `device` (kept for the next evaluation in this process)."""
    file = resolve_weights(path, sha256)
    key = (sha256, str(device))
    if key not in _NETWORKS:
        state = torch.load(file, map_location="cpu", weights_only=True)
        _NETWORKS.clear()
        _NETWORKS[key] = FIDInception(state).to(device)
    return _NETWORKS[key]


# ----- the distance ----------------------------------------------------------------------------

def psd_sqrt(sigma: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a covariance matrix (eigenvalues clipped at 0)."""
    w, v = torch.linalg.eigh(sigma)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||² + Tr(S1 + S2 - 2 (S1 S2)^½) (Heusel et al. 2017, Eq. for d²).

    Tr (S1 S2)^½ = Σ √λ over the eigenvalues λ of S1^½ S2 S1^½ (a PSD matrix similar to S1 S2), which
    needs two symmetric eigendecompositions instead of pytorch-fid's general `sqrtm` (same value, faster).
    """
    mu1, sigma1, mu2, sigma2 = (torch.as_tensor(a, dtype=torch.float64) for a in (mu1, sigma1, mu2, sigma2))
    r = psd_sqrt(sigma1)
    lam = torch.linalg.eigvalsh(r @ sigma2 @ r).clamp(min=0)
    return float(((mu1 - mu2) ** 2).sum() + sigma1.trace() + sigma2.trace() - 2 * lam.sqrt().sum())


def feature_stats(features: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased covariance (as numpy's cov) of N×d features, in float64."""
    f = features.double()
    mu = f.mean(0)
    a = f - mu
    return mu, a.T @ a / (f.shape[0] - 1)


class Reference:
    """Statistics of the real features; FIDs of generated feature sets against them."""

    def __init__(self, mu: torch.Tensor, sigma: torch.Tensor):
        self.mu, self.sigma = mu.double(), sigma.double()
        self._root: Optional[torch.Tensor] = None

    @property
    def root(self) -> torch.Tensor:
        """S1^½, computed once (only needed when there are more generated samples than feature dims)."""
        if self._root is None:
            self._root = psd_sqrt(self.sigma)
        return self._root

    def distance(self, features: torch.Tensor) -> float:
        """FID of N×d generated features to the reference; equal to `frechet_distance` of their stats.

        With A the centred features / √(N-1), S2 = AᵀA. The non-zero eigenvalues of S1 S2 are those of
        the PSD matrices A S1 Aᵀ (N×N) and S1^½ AᵀA S1^½ (d×d): the smaller one is decomposed.
        """
        f = features.to(self.mu.device).double()
        mu2 = f.mean(0)
        a = (f - mu2) / (f.shape[0] - 1) ** 0.5
        if a.shape[0] <= a.shape[1]:
            gram = a @ self.sigma @ a.T
        else:
            b = a @ self.root
            gram = b.T @ b
        lam = torch.linalg.eigvalsh(gram).clamp(min=0)
        return float(((self.mu - mu2) ** 2).sum() + self.sigma.trace() + (a ** 2).sum() - 2 * lam.sqrt().sum())


# ----- images -> features ----------------------------------------------------------------------

def inception_input(images: torch.Tensor) -> torch.Tensor:
    """Clamp to [0, 1], quantise to 8 bits (a saved PNG), repeat one channel to three."""
    x = images.clamp(0, 1).mul(255).round().div(255)
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    if x.shape[1] != 3:
        raise MMBenchError(f"FID needs 1- or 3-channel images, got {x.shape[1]} channels")
    return x


def _cached_stats(path: Path) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """The cached (mu, sigma) of real features; None when there is none, or when the file cannot be read or does not
    hold a finite (2048,) mean and (2048, 2048) covariance (it is set aside and the statistics computed again)."""
    if not os.path.lexists(path):
        return None
    try:
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as f:  # np.load leaks a file it cannot read
            mu, sigma = f["mu"], f["sigma"]
        if mu.dtype != np.float64 or sigma.dtype != np.float64:
            raise ValueError(f"dtypes {mu.dtype}, {sigma.dtype}; expected float64")
        if mu.shape != (FID_DIMS,) or sigma.shape != (FID_DIMS, FID_DIMS):
            raise ValueError(f"mu {mu.shape}, sigma {sigma.shape}; expected ({FID_DIMS},), ({FID_DIMS}, {FID_DIMS})")
        if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
            raise ValueError("not finite")
    except Exception as e:  # noqa: BLE001 - a damaged file raises anything from a zip error to a missing key
        set_aside(path, f"is corrupt ({brief(e)})", "computing the reference statistics again")
        return None
    return mu, sigma


def real_reference(ctx: EvalContext, net: FIDInception, split: DataSplit, mod: Modality, weights_sha: str) -> Reference:
    """Reference statistics of `split`'s images of `mod`, cached by content digest and weights digest."""
    raw = split.x[mod.name][torch.arange(len(split))]
    digest = hashlib.sha256(str(tuple(raw.shape)).encode() + raw.contiguous().numpy().tobytes()).hexdigest()[:16]
    root = cache_folder(cache_root(ctx.data_root) / "fid_stats", "FID's reference statistics")
    name = getattr(ctx.spec, "registry_name", "data")
    path = root / f"{name}-{ctx.variant}-test-{mod.name}-n{len(split)}-{digest}-w{weights_sha[:12]}.npz"
    cached = _cached_stats(path)
    if cached is None:
        writable_folder(root, "FID's reference statistics")  # before the Inception pass, not after it
        root.mkdir(parents=True, exist_ok=True)
        # one process at a time computes these statistics (workers on several GPUs, Slurm jobs): the second waits, then
        # reads them; each file has its own lock, so processes computing other datasets' or modalities' go on
        with cache_lock(root, f"waiting for another mmbench process computing the FID reference statistics {path.name} "
                              f"in {root}", name=f".{path.stem}.lock"):
            remove_abandoned_temps(root, path.name, SHARED_TEMP_AGE_S, say=stderr_note)  # a writer killed outright
            cached = _cached_stats(path)
            if cached is None:
                return _compute_reference(ctx, net, split, mod, path)
    return Reference(torch.from_numpy(cached[0]).to(ctx.device), torch.from_numpy(cached[1]).to(ctx.device))


def _compute_reference(ctx: EvalContext, net: FIDInception, split: DataSplit, mod: Modality, path: Path) -> Reference:
    feats = []
    bs = ctx.cfg.fid_batch_size
    for start in range(0, len(split), bs):
        idx = torch.arange(start, min(start + bs, len(split)))
        feats.append(net(inception_input(split.batch(idx, ctx.device)[mod.name])))
    mu, sigma = feature_stats(torch.cat(feats))
    buf = io.BytesIO()
    np.savez(buf, mu=mu.cpu().numpy(), sigma=sigma.cpu().numpy())
    atomic_write(path, buf.getvalue())
    return Reference(mu, sigma)


def fid_subsets(names: Sequence[str], which: str) -> List[tuple]:
    """Input subsets for conditional FID (`eval.fid_subsets`)."""
    subsets = all_subsets(names)
    if which == "all":
        return subsets
    if which == "unimodal":
        return [s for s in subsets if len(s) == 1]
    if which == "unimodal_and_full":
        return [s for s in subsets if len(s) in (1, len(names))]
    if which == "none":
        return []
    raise MMBenchError(f"eval.fid_subsets is {which!r}; choose one of: {', '.join(SUBSET_CHOICES)}")


# ----- the metric ------------------------------------------------------------------------------

@torch.no_grad()
def compute_fid(ctx: EvalContext, weights_sha256: str = FID_WEIGHTS_SHA256) -> Dict[str, float]:
    """Unconditional and conditional FID of every image modality (keys in the module docstring)."""
    model, cfg = ctx.model, ctx.cfg
    specs = {m.name: m for m in ctx.test.modalities}
    targets = [n for n in model.names if specs[n].kind == "image"]
    if not targets:
        raise MMBenchError(f"fid needs an image modality; {getattr(ctx.spec, 'registry_name', 'this dataset')} has "
                           f"none ({', '.join(model.names)}); remove fid from eval.metrics")
    split = ctx.test.subset(cfg.fid_samples, seed=3)
    n = len(split)
    if n < 2:
        raise MMBenchError(f"fid needs at least 2 test tuples, got {n}; raise eval.test_samples / eval.fid_samples")
    subsets = [s for s in fid_subsets(model.names, cfg.fid_subsets) if model.supports(s)]  # as coherence
    net = fid_network(cfg.fid_weights, ctx.device, weights_sha256)
    ctx.provenance["fid_weights_sha256"] = weights_sha256  # fid_network refuses any other file
    bs = cfg.fid_batch_size
    total, step = len(targets) + 1, 0
    refs = {}
    for m in targets:
        refs[m] = real_reference(ctx, net, split, specs[m], weights_sha256)
        step += 1
        ctx.progress("fid", step, total)

    out: Dict[str, float] = {}
    # Unconditional: n prior samples, every modality decoded from the same z.
    feats: Dict[str, list] = {m: [] for m in targets}
    for start in range(0, n, bs):
        z = model.sample_prior(min(bs, n - start))
        for m in targets:
            feats[m].append(net(inception_input(model.decode(z, m))))
    for m in targets:
        out[f"fid/prior->{m}"] = refs[m].distance(torch.cat(feats[m]))
    step += 1
    ctx.progress("fid", step, total)

    # Conditional: for each subset S, z ~ q(z | X_S) once per test tuple, decoded to every target. Batched over
    # subsets as coherence is (metrics/batched.py): per test batch every subset's z at once, each target's images
    # through Inception in chunks of `chunk` rows (fid_batch_size; 4x on a GPU), cut across subsets.
    chunk = bs * (1 if torch.device(ctx.device).type == "cpu" else 4)
    cond = {(s, m): [] for s in subsets for m in targets}
    for b, start in enumerate(range(0, n, bs) if subsets else []):
        idx = torch.arange(start, min(start + bs, n))
        x = split.batch(idx, ctx.device)
        z = torch.cat([q.rsample() for q in ctx.posteriors(x, subsets)])  # eval.mixture_representation
        for m in targets:
            f = chunked(lambda part: net(inception_input(model.decode(part, m))), z, chunk)
            for k, s in enumerate(subsets):
                cond[s, m].append(f[k * len(idx):(k + 1) * len(idx)])
        ctx.progress("fid: conditional", b + 1, (n + bs - 1) // bs)
    values: Dict[Tuple[tuple, str], float] = {}
    for s in subsets:
        for m in targets:
            values[s, m] = out[f"fid/{subset_key(s)}->{m}"] = refs[m].distance(torch.cat(cond[s, m]))
    for size in sorted({len(s) for s in subsets}):
        vals = [v for (s, m), v in values.items() if len(s) == size and m not in s]
        if vals:
            out[f"fid_by_n/{size}"] = float(np.mean(vals))
    return out


@METRICS.register("fid")
def fid(ctx: EvalContext) -> Dict[str, float]:
    """FID with pytorch-fid's Inception: `fid/prior-><m>`, `fid/<S>-><m>`, `fid_by_n/<n>` (mrVAE Table 2)."""
    return compute_fid(ctx)
