"""CelebA training stability at the papers' lr 5e-4 (issue 12, point 8) on a CelebA-format fixture cut from natural
photographs (the shared background photographs; skipped when they are absent).

Cause (README, "celeba"): the residual encoders end in batch-normalised features read by a linear log-variance
head. Adam's first step moves every trunk weight by about ±lr, which realigns those features with the head's
random initial weights, and the log-variances jump by tens (exp overflows in the mixture methods' samples).
`celeba_resnet_lv0` starts the log-variance heads at zero; `celeba_resnet` keeps the authors' initialisation.
"""
import hashlib
import io
import zipfile

import numpy as np
import pytest
import torch
from conftest import SHARED
from PIL import Image

from mmbench.config import build_run_config
from mmbench.data import celeba
from mmbench.data.base import load_split, prepare
from mmbench.methods.base import MethodConfig
from mmbench.registry import DATASETS, METHODS
from mmbench.results import Run
from mmbench.train import train

PHOTOS = sorted((SHARED / "data" / "backgrounds").glob("*.jpg"))
pytestmark = pytest.mark.skipif(not PHOTOS, reason="no background photographs in ../shared/data/backgrounds")
N_TRAIN, N_TEST = 16, 8


@pytest.fixture(scope="module")
def photo_celeba(tmp_path_factory):
    """A prepared CelebA-format dataset whose 'faces' are 218×178 crops of natural photographs (built once)."""
    tmp_path = tmp_path_factory.mktemp("photo_celeba")
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    photos = [np.asarray(Image.open(p).convert("RGB")) for p in PHOTOS]
    n = N_TRAIN + N_TEST
    attrs = rng.choice([-1, 1], size=(n, 40))
    with zipfile.ZipFile(src / "img_align_celeba.zip", "w") as zf:
        for i in range(n):
            ph = photos[i % len(photos)]
            r, c = rng.integers(0, ph.shape[0] - 218), rng.integers(0, ph.shape[1] - 178)
            buf = io.BytesIO()
            Image.fromarray(ph[r:r + 218, c:c + 178]).save(buf, format="JPEG", quality=95)
            zf.writestr(f"img_align_celeba/{i + 1:06d}.jpg", buf.getvalue())
    lines = [str(n), " ".join(f"Attr_{i:02d}" for i in range(40))]
    lines += [f"{i + 1:06d}.jpg " + " ".join(f"{a:2d}" for a in attrs[i]) for i in range(n)]
    (src / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    (src / "list_eval_partition.txt").write_text(
        "".join(f"{i + 1:06d}.jpg {0 if i < N_TRAIN else 1}\n" for i in range(n)))
    root = tmp_path / "data"
    with pytest.MonkeyPatch.context() as mp:  # the fixture's own md5s, for this build only
        for f in celeba.FILES:
            mp.setitem(celeba.FILES, f, hashlib.md5((src / f).read_bytes()).hexdigest())
        prepare(DATASETS.get("celeba")(), "default", seed=0, data_root=root, options={"source": str(src)})
    return root


def first_step_logvar(arch: str, x) -> float:
    """Largest encoder log-variance over the batch after one Adam step at lr 5e-4 (MMVAE objective)."""
    torch.manual_seed(0)
    mods = DATASETS.get("celeba")().modalities("default")
    model = METHODS.get("mmvae")(mods, MethodConfig("mmvae", latent_dim=32, beta=2.5), arch)
    opt = torch.optim.Adam(model.parameters(), lr=5e-4)
    loss, _ = model.loss(x)
    opt.zero_grad()
    loss.backward()
    opt.step()
    torch.manual_seed(1)
    return max(model.encoders[m](x[m])[1].max().item() for m in model.names)


def test_first_adam_step_blows_up_the_authors_logvar_heads_not_the_zero_initialised(photo_celeba):
    x = load_split(DATASETS.get("celeba")(), "default", "train", photo_celeba).batch(torch.arange(8))
    assert first_step_logvar("celeba_resnet", x) > 12  # measured 18.4 (image) and 13.3 (text) on this fixture
    assert first_step_logvar("celeba_resnet_lv0", x) < 3


@pytest.mark.parametrize("method", ["mmvae", "mopoe_style", "mvae"])
def test_celeba_trains_three_epochs_at_lr_5e_4(photo_celeba, tmp_path, method):
    cfg = build_run_config({"dataset": "celeba", "seed": 0,
                            "method": {"name": method, "latent_dim": 20, "beta": 2.5, "architecture": "celeba_resnet_lv0"},
                            "train": {"epochs": 3, "batch_size": 4, "lr": 5e-4, "checkpoint_every": 3},
                            "eval": {"metrics": ["latent_ap"]}})
    hist = train(Run(cfg, tmp_path / "runs"), photo_celeba)["history"]  # raises "training diverged" on a non-finite loss
    assert len(hist) == 3
    assert all(np.isfinite(h["train_loss"]) and np.isfinite(h["test_loss"]) for h in hist)
    # the blow-up shows as epoch-mean KLs of 1e6-1e12 nats; trained, they stay in the hundreds
    assert max(h["train_kl"] for h in hist) < 1e4
    assert hist[-1]["test_loss"] < hist[0]["test_loss"]  # recovers from the first epoch's jump (see the docstring)
    # and learns: the training loss falls (measured last/first epoch 0.69 mmvae, 0.41 mopoe_style, 0.44 mvae; at lr
    # 1e-9, i.e. untrained, 0.995-0.998); the test loss alone would not show it (after 3 epochs it is still above the
    # untrained model's for mmvae and mopoe_style, on 16 training tuples)
    assert hist[-1]["train_loss"] < 0.8 * hist[0]["train_loss"]
