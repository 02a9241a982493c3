"""PolyMNIST recipe properties: what is drawn independently per modality
(MoPoE mmnist/MMNISTDataset.py and mmvmvae utils/PolyMNISTDataset.py call _add_background_image once per image and
modality, each call drawing its own crop offset and, translated, its own digit position) and the colour channels
of the background photographs, the order of the splits' draws, the authors' archive counts."""
import numpy as np
from PIL import Image

from mmbench.data import polygen, polymnist


def coordinate_background(H, W, m):
    """A background whose pixel (y, x) holds (y, x, m): a crop's first pixel tells its offset and modality."""
    y, x = np.mgrid[0:H, 0:W]
    return np.stack([y, x, np.full_like(y, m)], axis=-1).astype(np.uint8)


def test_background_crop_offsets_are_drawn_independently_per_modality():
    # _add_background_image draws x_c, y_c for every (image, modality): two modalities of one tuple are cropped at
    # independent offsets, so over 600 tuples every pair of row offsets (and of column offsets) occurs
    H, W = 33, 34  # row offsets 0..4, column offsets 0..5
    masks = np.zeros((600, 2, 28, 28), bool)
    imgs = polygen.compose(masks, [coordinate_background(H, W, m) for m in range(2)], np.random.default_rng(0))
    assert [int(imgs[m][0, 2, 0, 0]) for m in range(2)] == [0, 1]  # modality m crops background m
    ys = [imgs[m][:, 0, 0, 0].astype(int) for m in range(2)]
    xs = [imgs[m][:, 1, 0, 0].astype(int) for m in range(2)]
    assert set(zip(ys[0].tolist(), ys[1].tolist())) == {(a, b) for a in range(H - 28) for b in range(H - 28)}
    assert set(zip(xs[0].tolist(), xs[1].tolist())) == {(a, b) for a in range(W - 28) for b in range(W - 28)}
    assert np.mean(ys[0] == ys[1]) < 0.5 and np.mean(xs[0] == xs[1]) < 0.5  # 1/5 and 1/6 expected


def test_translated_digit_positions_are_drawn_independently_per_modality():
    # MM-VAMP App. B.2.1 / mmvmvae _add_background_image: each modality's digit is placed at its own random offset,
    # so the position is modality-specific, not a factor the modalities share. Full-canvas digits make the pasted
    # 21×21 block visible whole: its top-left corner is the offset of that modality
    digits = np.full((20, 28, 28), 255, np.uint8)
    labels = np.repeat(np.arange(10), 2)
    tuples = polygen.pair_indices(labels, 2, 40, np.random.default_rng(0))  # 800 tuples × 2 modalities
    masks, extra = polygen.digit_masks(digits, labels, tuples, "translated", np.random.default_rng(1))
    corner = np.stack([np.stack([np.argwhere(masks[t, m])[0] for m in range(2)]) for t in range(len(tuples))])
    assert np.array_equal(corner, extra["offset"])  # the stored offsets are where each modality's digit is
    for axis in range(2):
        pairs = set(zip(corner[:, 0, axis].tolist(), corner[:, 1, axis].tolist()))
        assert pairs == {(a, b) for a in range(8) for b in range(8)}, axis  # every combination of 0..7 × 0..7
    assert np.mean((corner[:, 0] == corner[:, 1]).all(1)) < 0.1  # same place in both: 1/64 expected


def test_backgrounds_keep_their_red_green_blue_channels(tmp_path):
    # polymnist.load_backgrounds: the photographs are read as RGB (PIL convert("RGB"), as the authors' crop of a PIL
    # image and ToTensor), not reversed to BGR; flat JPEGs of three distinct colours read back within JPEG error
    colours = [(200, 30, 90), (10, 120, 240), (250, 250, 5), (60, 200, 20), (128, 0, 255)]
    for i, c in enumerate(colours):
        Image.fromarray(np.full((40, 40, 3), c, np.uint8)).save(tmp_path / f"{i}.jpg", quality=95)
    images, digests = polymnist.load_backgrounds(tmp_path, 5)
    assert list(digests) == [f"{i}.jpg" for i in range(5)]
    for img, c in zip(images, colours):
        assert img.shape == (40, 40, 3) and img.dtype == np.uint8
        assert np.abs(img.reshape(-1, 3).astype(int).mean(0) - np.array(c)).max() <= 4, c


class Arrays:
    """A stand-in for the array writer a build writes to: the arrays by key, in memory."""

    def __init__(self, raw_root):
        self.raw_root, self.arrays = raw_root, {}

    def write(self, key, array):
        self.arrays[key] = np.array(array)


def test_the_test_split_is_drawn_after_the_train_split_not_from_a_restarted_generator(tmp_path, monkeypatch):
    # mmvmvae utils/PolyMNISTDataset.py (__main__: _create_mmnist_dataset for train, then for test) draws both splits
    # from one running random state: the test split's pairing and crops are fresh draws, not a replay of the train
    # split's. From identical train and test IDX files a replay would give byte-identical splits
    import hashlib

    from test_download import write_idx

    from mmbench.data import mnist
    from mmbench.registry import DATASETS

    src, bg = tmp_path / "mnist", tmp_path / "bg"
    src.mkdir(), bg.mkdir()
    rng = np.random.default_rng(0)
    y = (np.arange(30) % 10).astype(np.uint8)
    x = np.zeros((30, 28, 28), np.uint8)
    x[:, 6:22, 8:20] = rng.integers(0, 256, (30, 16, 12))
    for prefix in ("train", "t10k"):
        write_idx(src / f"{prefix}-images-idx3-ubyte.gz", x)
        write_idx(src / f"{prefix}-labels-idx1-ubyte.gz", y)
    for name in list(mnist.FILES):
        monkeypatch.setitem(mnist.FILES, name, hashlib.md5((src / name).read_bytes()).hexdigest())
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3)).astype(np.uint8)).save(bg / f"{i}.jpg", quality=95)
    out = Arrays(tmp_path / "raw")
    DATASETS.get("polymnist")().build(out, "vanilla", 0, {"source": str(src), "backgrounds": str(bg), "rebuild": True},
                                      lambda *a: None)
    a = out.arrays
    assert a["train_m0"].shape == a["test_m0"].shape == (30, 3, 28, 28)
    assert sorted(a["train_labels"].tolist()) == sorted(a["test_labels"].tolist())
    assert not any(np.array_equal(a[f"train_m{m}"], a[f"test_m{m}"]) for m in range(5))


def test_the_authors_archive_is_checked_for_60000_train_and_10000_test_tuples_of_five_modalities():
    # MoPoE App. D: PolyMNIST is MNIST's 60,000 training and 10,000 test digits, each a tuple of five modalities; the
    # archive's layout check (read_archive, through the spec's counts) expects exactly these numbers per split
    spec = polymnist.PolyMNIST()
    assert spec.counts == polymnist.COUNTS == {"train": 60_000, "test": 10_000}
    assert spec.n_modalities == 5 and [m.shape for m in spec.modalities("vanilla")] == [(3, 28, 28)] * 5
