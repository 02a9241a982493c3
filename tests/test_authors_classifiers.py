"""`mmbench classifiers import`: the MoPoE authors' classifier files (written here in their exact module layout,
never the real files) load into mmbench's networks, give the same outputs, refuse a mismatch in one line, and
`eval.classifiers: authors` makes coherence use them without changing run ids."""
import hashlib
import json
import re

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from mmbench.cli import app
from mmbench.config import EvalConfig, build_run_config
from mmbench.data.base import load_split
from mmbench.errors import ConfigError, MMBenchError
from mmbench.metrics.authors_classifiers import cache_dir, load_classifiers, load_file
from mmbench.metrics.classifiers import accuracy, get_classifiers
from mmbench.metrics.context import EvalContext
from mmbench.registry import ARCHITECTURES, DATASETS


class PolyClfImg(nn.Module):
    """The authors' PolyMNIST ClfImg layout (mmnist/networks/ConvNetworkImgClfCMNIST.py): one `encoder`."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(3, 10, 4, 2, 1), nn.Dropout2d(0.5), nn.ReLU(), nn.Conv2d(10, 20, 4, 2, 1), nn.Dropout2d(0.5),
            nn.ReLU(), nn.Flatten(), nn.Linear(980, 128), nn.Dropout(0.5), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x):
        return self.encoder(x)


class MnistClfImg(nn.Module):
    """The authors' MNIST ClfImg layout (mnistsvhntext/networks/ConvNetworkImgClfMNIST.py), sigmoid output."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2, self.conv3 = nn.Conv2d(1, 32, 4, 2), nn.Conv2d(32, 64, 4, 2), nn.Conv2d(64, 128, 4, 2)
        self.relu, self.dropout, self.linear = nn.ReLU(), nn.Dropout(0.5), nn.Linear(128, 10)

    def forward(self, x):
        h = self.relu(self.conv3(self.relu(self.conv2(self.relu(self.conv1(x))))))
        return torch.sigmoid(self.linear(self.dropout(h).view(len(x), -1)))


class SvhnClfImg(nn.Module):
    """The authors' ClfImgSVHN layout: conv_i -> dropout -> bn_i -> relu, four times; linear; sigmoid."""

    def __init__(self):
        super().__init__()
        for i, (cin, cout, pad) in enumerate(((3, 32, 1), (32, 64, 1), (64, 64, 1), (64, 128, 0)), 1):
            setattr(self, f"conv{i}", nn.Conv2d(cin, cout, 4, 2, pad))
            setattr(self, f"bn{i}", nn.BatchNorm2d(cout))
        self.relu, self.dropout, self.linear = nn.ReLU(), nn.Dropout(0.5), nn.Linear(128, 10)

    def forward(self, x):
        for i in range(1, 5):
            x = self.relu(getattr(self, f"bn{i}")(self.dropout(getattr(self, f"conv{i}")(x))))
        return torch.sigmoid(self.linear(x.view(len(x), -1)))


class Block(nn.Module):
    """The authors' ResidualBlockEncoder (mnistsvhntext/networks/ConvNetworkTextClf.py) with its downsample."""

    def __init__(self, cin, cout, pad):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm1d(cin), nn.Conv1d(cin, cin, 1)
        self.bn2, self.conv2 = nn.BatchNorm1d(cin), nn.Conv1d(cin, cout, 4, 2, pad)
        self.downsample = nn.Sequential(nn.Conv1d(cin, cout, 4, 2, pad), nn.BatchNorm1d(cout))

    def forward(self, x):
        out = self.conv2(torch.relu(self.bn2(self.conv1(torch.relu(self.bn1(x))))))
        return self.downsample(x) + 0.3 * out


class TextClf(nn.Module):
    """The authors' MNIST-SVHN-Text ClfText layout (dim 64): conv1, resblock_1, resblock_4, dropout, linear."""

    def __init__(self, alphabet):
        super().__init__()
        self.conv1 = nn.Conv1d(alphabet, 128, 1)
        self.resblock_1, self.resblock_4 = nn.Sequential(Block(128, 192, 1)), nn.Sequential(Block(192, 128, 0))
        self.dropout, self.linear = nn.Dropout(0.5), nn.Linear(128, 10)

    def forward(self, x):
        h = self.dropout(self.resblock_4(self.resblock_1(self.conv1(x.transpose(-2, -1)))))
        return torch.sigmoid(self.linear(h.view(len(h), -1)))


def _randomize_bn(module):
    """Non-trivial running statistics, so a wrongly mapped batch norm shows in the outputs."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return module


def write_poly(folder, n=5, seed=0):
    torch.manual_seed(seed)
    nets = [PolyClfImg().eval() for _ in range(n)]
    sub = folder / "trained_clfs_polyMNIST"
    sub.mkdir(parents=True, exist_ok=True)
    for i, net in enumerate(nets):
        torch.save(net.state_dict(), sub / f"pretrained_img_to_digit_clf_m{i}")  # as the authors save them
    return nets


@pytest.fixture(scope="module")
def imported(data_root, tmp_path_factory):
    src = tmp_path_factory.mktemp("authors")
    nets = write_poly(src)
    result = CliRunner().invoke(app, ["classifiers", "import", "polydigits", "--from", str(src),
                                      "--data-root", str(data_root)])
    assert result.exit_code == 0, result.output
    return nets, src


def test_import_reproduces_the_authors_outputs_and_records_accuracy(imported, data_root):
    nets, src = imported
    spec = DATASETS.get("polydigits")()
    test = load_split(spec, "vanilla", "test", data_root)
    clfs, accs = load_classifiers(spec, "vanilla", test.modalities, data_root)
    x = test.x["m3"][:16].float() / 255
    with torch.no_grad():
        assert torch.allclose(clfs["m3"](x), nets[3](x), atol=1e-6)
        assert not torch.allclose(clfs["m2"](x), nets[3](x), atol=1e-3)  # each modality its own file
    # Recorded test accuracy = the authors' net's accuracy on the prepared test split.
    assert accs["m1"] == pytest.approx(accuracy(nets[1], test, "m1", torch.device("cpu")))
    directory = cache_dir(spec, "vanilla", data_root)
    assert directory.parent.name == "classifiers-authors"  # never mixed with mmbench's own cache
    source = json.loads((directory / "source.json").read_text())
    path = src / "trained_clfs_polyMNIST" / "pretrained_img_to_digit_clf_m0"
    assert source["m0"] == {"file": str(path.resolve()), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    assert source["architecture"] == "authors_polymnist_clf"


@pytest.mark.parametrize("damage, message", [
    (lambda s: s.pop("encoder.7.weight"), r"parameter encoder\.7\.weight is missing \(expected shape \(128, 980\)\)"),
    (lambda s: s.__setitem__("enc.0.weight", s.pop("encoder.0.weight")), r"parameter encoder\.0\.weight is missing"),
    (lambda s: s.__setitem__("encoder.3.weight", torch.zeros(20, 10, 3, 3)),
     r"parameter encoder\.3\.weight has shape \(20, 10, 3, 3\), expected \(20, 10, 4, 4\)"),
    (lambda s: s.__setitem__("encoder.11.weight", torch.zeros(2)), r"unexpected parameter encoder\.11\.weight"),
])
def test_mismatch_is_a_one_line_error_naming_file_and_parameter(tmp_path, data_root, damage, message):
    write_poly(tmp_path, seed=1)
    path = tmp_path / "trained_clfs_polyMNIST" / "pretrained_img_to_digit_clf_m2"
    state = torch.load(path)
    damage(state)
    torch.save(state, path)
    root = tmp_path / "data"
    root.mkdir()
    (root / "polydigits").symlink_to(data_root / "polydigits")  # the prepared data, a fresh classifier cache
    result = CliRunner().invoke(app, ["classifiers", "import", "polydigits", "--from", str(tmp_path),
                                      "--data-root", str(root)])
    assert result.exit_code != 0
    assert isinstance(result.exception, MMBenchError)
    text = str(result.exception)
    assert "\n" not in text and str(path) in text
    assert re.search(message, text), text
    assert not (root / "classifiers-authors").exists()  # nothing written when any file is refused


def test_missing_file_names_what_was_looked_for(tmp_path):
    arch = ARCHITECTURES.get("authors_polymnist_clf")
    spec = DATASETS.get("polydigits")()
    from mmbench.metrics.authors_classifiers import find_file

    with pytest.raises(MMBenchError, match="pretrained_img_to_digit_clf_m4"):
        find_file(arch, spec.modalities("vanilla")[4], tmp_path)


def test_import_cache_is_keyed_by_the_dataset_digest(tmp_path, monkeypatch):
    # authors_classifiers.py docstring: cached under <data_root>/classifiers-authors/<dataset>-<variant>-<digest>/
    import mmbench.metrics.authors_classifiers as authors
    from mmbench.data.base import manifest_digest

    manifests = [{"arrays": {"test_m0": {"sha256": c * 64}}} for c in "01"]
    it = iter(manifests)
    monkeypatch.setattr(authors, "read_manifest", lambda directory: next(it))  # two prepared datasets, no build
    spec = DATASETS.get("polydigits")()
    dirs = [cache_dir(spec, "vanilla", tmp_path) for _ in manifests]
    assert dirs[0] != dirs[1]
    assert [d.name for d in dirs] == [f"polydigits-vanilla-{manifest_digest(m)}" for m in manifests]


def test_mnist_svhn_text_layouts_map_onto_mmbench(tmp_path):
    torch.manual_seed(0)
    spec = DATASETS.get("mnist-svhn-text")()
    mods = {m.name: m for m in spec.modalities(spec.variants[0])}
    arch = ARCHITECTURES.get("authors_mnist_svhn_text_clf")
    # the authors' files: flags.clf_save_m1 (MNIST), clf_save_m2 (SVHN), clf_save_m3 (text)
    assert {n: arch.files(m) for n, m in mods.items()} == {"mnist": ["clf_m1"], "svhn": ["clf_m2"], "text": ["clf_m3"]}
    nets = {"mnist": MnistClfImg(), "svhn": _randomize_bn(SvhnClfImg()), "text": _randomize_bn(TextClf(mods["text"].shape[1]))}
    inputs = {"mnist": torch.rand(4, 1, 28, 28), "svhn": torch.rand(4, 3, 32, 32),
              "text": nn.functional.one_hot(torch.randint(0, mods["text"].shape[1], (4, mods["text"].shape[0])),
                                            mods["text"].shape[1]).float()}
    for name, net in nets.items():
        path = tmp_path / arch.files(mods[name])[0]
        torch.save(net.state_dict(), path)
        clf = load_file(arch, mods[name], spec.n_classes, path)
        with torch.no_grad():
            assert torch.allclose(torch.sigmoid(clf(inputs[name])), net.eval()(inputs[name]), atol=1e-5), name
    with pytest.raises(MMBenchError, match=r"clf_m1: parameter conv1\.weight has shape \(32, 1, 4, 4\), expected \(32, 3, 4, 4\)"):
        load_file(arch, mods["svhn"], spec.n_classes, tmp_path / "clf_m1")  # MNIST's file given for SVHN


def test_eval_classifiers_authors_drives_coherence_and_provenance(imported, data_root, tmp_path):
    import mmbench.evaluate as evaluate_mod
    from mmbench.evaluate import execute
    from mmbench.results import Run

    nets, _ = imported
    base = {"dataset": "polydigits", "modalities": ["m0", "m1", "m2"], "method": {"name": "mopoe", "latent_dim": 8},
            "train": {"epochs": 1, "batch_size": 32, "max_train": 64},
            "eval": {"metrics": ["coherence"], "test_samples": 32, "joint_samples": 32, "classifier_min_accuracy": 0.0}}
    authors = json.loads(json.dumps(base))
    authors["eval"].update(classifiers="authors", classifier_dropout="as_authors")
    cfg = build_run_config(authors)
    assert cfg.run_id() == build_run_config(base).run_id()  # an evaluation choice, not part of the run id
    run = Run(cfg, tmp_path / "run")
    out = execute(run, data_root)
    spec = DATASETS.get("polydigits")()
    _, accs = load_classifiers(spec, "vanilla", spec.modalities("vanilla")[:3], data_root)
    assert out["classifier_set"] == "authors" and out["classifier_accuracy"] == accs
    prov = json.loads((run.dir / "provenance.json").read_text())
    assert prov["classifier_set"] == "authors" and prov["classifier_dropout"] == "as_authors"
    # The floor applies to the imported ones as well (random weights are near chance).
    # The same run scored the other way: evaluated again (not retrained), the first scoring set aside and
    # brought back, not recomputed, when asked for again.
    first = json.loads(run.metrics_path.read_text())
    off = json.loads(json.dumps(authors))
    off["eval"]["classifier_dropout"] = "off"
    run_off = Run(build_run_config(off), tmp_path / "run")
    assert run_off.status() == "rescore" and Run(cfg, tmp_path / "run").status() == "done"
    ckpt = (run.ckpt_dir / "last.pt").stat().st_mtime_ns
    assert execute(run_off, data_root)["classifier_dropout"] == "off"
    assert (run.ckpt_dir / "last.pt").stat().st_mtime_ns == ckpt
    assert json.loads((run.dir / "metrics.authors-as_authors.json").read_text()) == first
    assert json.loads((run.dir / "provenance.json").read_text())["classifier_dropout"] == "off"
    with pytest.MonkeyPatch.context() as mp:  # restored, not re-evaluated (an evaluation gives the same metrics)
        mp.setattr(evaluate_mod, "evaluate", lambda *a, **k: pytest.fail("evaluated again"))
        assert execute(Run(cfg, tmp_path / "run"), data_root) == first
    assert (run.dir / "metrics.authors-off.json").exists() and run.status() == "done"

    test = load_split(spec, "vanilla", "test", data_root)
    with pytest.raises(MMBenchError, match=r"authors coherence classifiers below eval\.classifier_min_accuracy"):
        get_classifiers(spec, "vanilla", test, test, EvalConfig(classifiers="authors", classifier_min_accuracy=0.9),
                        data_root, lambda *a: None)


@pytest.mark.parametrize("dropout", ["off", "as_authors"])
def test_classifier_dropout_mode(imported, data_root, dropout):
    nets, _ = imported
    spec = DATASETS.get("polydigits")()
    test = load_split(spec, "vanilla", "test", data_root)
    ctx = EvalContext(model=None, spec=spec, variant="vanilla", train=test, test=test, test_full=test,
                      cfg=EvalConfig(classifiers="authors", classifier_dropout=dropout, classifier_min_accuracy=0.0),
                      device=torch.device("cpu"), data_root=data_root)
    clf = ctx.classifiers()["m0"]
    x = test.x["m0"][:64].float() / 255
    torch.manual_seed(0)
    stream = torch.get_rng_state()
    with torch.no_grad():
        a, b = clf(x), clf(x)
    # the dropout draws from the classifiers' own stream: the metrics after coherence draw what they draw without it
    # (scored with dropout, every later loglik key had moved; classifier_dropout is not in the run id)
    assert torch.equal(torch.get_rng_state(), stream)
    assert clf.training == (dropout == "as_authors")
    assert torch.equal(a, b) == (dropout == "off")  # active dropout: two passes differ
    if dropout == "off":
        assert torch.allclose(a, nets[0](x), atol=1e-6)


def test_config_fields_are_validated_and_not_in_the_run_id():
    with pytest.raises(ConfigError, match=r"eval\.classifiers"):
        build_run_config({"eval": {"classifiers": "paper"}})
    with pytest.raises(ConfigError, match=r"eval\.classifier_dropout"):
        build_run_config({"eval": {"classifier_dropout": "on"}})
    with pytest.raises(ConfigError, match=r"eval\.classifiers.*no classifiers for rats"):
        build_run_config({"dataset": "rats", "eval": {"classifiers": "authors"}})
    assert build_run_config({"dataset": "polydigits"}).run_id() == "polydigits-vanilla-mopoe-s0-a78aea8e21"
    assert build_run_config({"dataset": "polydigits", "eval": {"classifiers": "authors",
                                                               "classifier_dropout": "as_authors"}}
                            ).run_id() == "polydigits-vanilla-mopoe-s0-a78aea8e21"


def test_not_imported_is_a_one_line_error(tmp_path, data_root):
    spec = DATASETS.get("polydigits")()
    with pytest.raises(MMBenchError, match=r"not imported .*mmbench classifiers import polydigits"):
        load_classifiers(spec, "vanilla", spec.modalities("vanilla"), tmp_path)


def test_the_import_advice_imports_into_the_data_root_that_was_searched(tmp_path):
    """The classifiers are cached under their data root (cache_dir): the advice for data under `--data-root DIR`
    names it, else the import it suggests fills ./data's cache and the run still finds none; each option it shows
    is one of `mmbench classifiers import`."""
    spec = DATASETS.get("polydigits")()
    with pytest.raises(MMBenchError, match="not imported") as e:
        load_classifiers(spec, "vanilla", spec.modalities("vanilla"), tmp_path)
    command = re.search(r"run `([^`]+)`", str(e.value)).group(1)
    assert command == f"mmbench classifiers import polydigits --variant vanilla --from DIR --data-root {tmp_path}"
    usage = CliRunner().invoke(app, ["classifiers", "import", "--help"], env={"COLUMNS": "200"}).output
    assert all(f" {word} " in usage for word in command.split() if word.startswith("--"))


class CelebaBlock(nn.Module):
    """The authors' ResidualBlock2dConv / ResidualBlock1dConv (celeba/networks/ResidualBlocks.py), a=2, b=0.3."""

    def __init__(self, cin, cout, pad, dims):
        super().__init__()
        conv, bn = (nn.Conv2d, nn.BatchNorm2d) if dims == 2 else (nn.Conv1d, nn.BatchNorm1d)
        bias = dims == 1
        self.bn1, self.conv1, self.dropout1 = bn(cin), conv(cin, cin, 1, bias=bias), nn.Dropout(0.5)
        self.bn2, self.conv2, self.dropout2 = bn(cin), conv(cin, cout, 4, 2, pad, bias=bias), nn.Dropout(0.5)
        self.downsample = nn.Sequential(conv(cin, cout, 4, 2, pad), bn(cout))

    def forward(self, x):
        out = self.dropout1(self.conv1(torch.relu(self.bn1(x))))
        out = self.dropout2(self.conv2(torch.relu(self.bn2(out))))
        return 2.0 * self.downsample(x) + 0.3 * out


class CelebaImgFeatures(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 128, 3, 2, 2, bias=False)
        for i in range(1, 5):
            setattr(self, f"resblock{i}", nn.Sequential(CelebaBlock(128 * i, 128 * (i + 1), 0 if i == 4 else 1, 2)))

    def forward(self, x):
        x = self.conv1(x)
        for i in range(1, 5):
            x = getattr(self, f"resblock{i}")(x)
        return x


class CelebaClfImg(nn.Module):
    """The authors' CelebA ClfImg layout: feature_extractor, dropout, linear 640 -> 40, sigmoid."""

    def __init__(self):
        super().__init__()
        self.feature_extractor, self.dropout, self.linear = CelebaImgFeatures(), nn.Dropout(0.5), nn.Linear(640, 40)

    def forward(self, x):
        return torch.sigmoid(self.linear(self.dropout(self.feature_extractor(x)).view(len(x), -1)))


class CelebaClfText(nn.Module):
    """The authors' CelebA ClfText layout: conv1 (k3 s2 p1), resblock_1..6, dropout, linear 896 -> 40, sigmoid."""

    def __init__(self, alphabet):
        super().__init__()
        self.conv1 = nn.Conv1d(alphabet, 128, 3, 2, 1)
        for i in range(1, 7):
            setattr(self, f"resblock_{i}", nn.Sequential(CelebaBlock(128 * i, 128 * (i + 1), 0 if i == 6 else 1, 1)))
        self.dropout, self.linear = nn.Dropout(0.5), nn.Linear(896, 40)

    def forward(self, x):
        h = self.conv1(x.transpose(-2, -1))
        for i in range(1, 7):
            h = getattr(self, f"resblock_{i}")(h)
        return torch.sigmoid(self.linear(self.dropout(h).view(len(h), -1)))


def test_celeba_layouts_map_onto_mmbench(tmp_path):
    """Full-size nets (DIM 128, as the authors'; 38 M parameters): about 5 s on 2 shared cores."""
    torch.manual_seed(0)
    spec = DATASETS.get("celeba")()
    img, text = spec.modalities(spec.variants[0])
    arch = ARCHITECTURES.get("authors_celeba_clf")
    inputs = {img.name: torch.rand(2, 3, 64, 64),
              text.name: nn.functional.one_hot(torch.randint(0, text.shape[1], (2, text.shape[0])), text.shape[1]).float()}
    for mod, net in ((img, CelebaClfImg()), (text, CelebaClfText(text.shape[1]))):
        _randomize_bn(net)
        path = tmp_path / arch.files(mod)[0]
        torch.save(net.state_dict(), path)
        clf = load_file(arch, mod, spec.n_classes, path)
        with torch.no_grad():
            assert torch.allclose(torch.sigmoid(clf(inputs[mod.name])), net.eval()(inputs[mod.name]), atol=1e-5), mod.name
    state = torch.load(tmp_path / "clf_m1")
    state.pop("feature_extractor.resblock2.0.downsample.0.bias")  # mmbench's own bias-free shortcut would not load it
    torch.save(state, tmp_path / "clf_m1")
    with pytest.raises(MMBenchError, match=r"clf_m1: parameter feature_extractor\.resblock2\.0\.downsample\.0\.bias "
                                           r"is missing \(expected shape \(384,\)\)"):
        load_file(arch, img, spec.n_classes, tmp_path / "clf_m1")


def test_runs_scored_before_the_choice_existed_stay_done(tmp_path):
    from mmbench.results import Run

    run = Run(build_run_config({"dataset": "polydigits"}), tmp_path)
    run.dir.mkdir(parents=True, exist_ok=True)
    run.write_metrics({"coherence/joint": 0.5}, classifier_accuracy={"m0": 0.95})
    assert run.status() == "done" and run.scored_with() == "mmbench-off"
    authors = Run(build_run_config({"dataset": "polydigits", "eval": {"classifiers": "authors"}}), tmp_path)
    assert authors.id == run.id and authors.status() == "rescore"


def test_a_corrupt_import_cache_is_one_line_and_import_again_mends_it(tmp_path):
    """The cached copies of the authors' classifiers damaged (a truncated .pt, an accuracy.json that is not JSON):
    loading them names the file and `mmbench classifiers import`; the user's files are never touched, and importing
    again rebuilds the cache."""
    from mmbench.data.base import prepare
    from mmbench.metrics.authors_classifiers import import_classifiers

    spec = DATASETS.get("polydigits")()
    prepare(spec, "vanilla", seed=0, data_root=tmp_path)
    test = load_split(spec, "vanilla", "test", tmp_path).subset(128)
    src = tmp_path / "authors"
    write_poly(src)
    originals = {p: p.read_bytes() for p in src.rglob("*") if p.is_file()}
    first = import_classifiers(spec, "vanilla", test, src, tmp_path)
    directory = cache_dir(spec, "vanilla", tmp_path)
    fix = f"import them again with `mmbench classifiers import polydigits --variant vanilla --from DIR --data-root {tmp_path}`"
    for name, damage in (("m2.pt", lambda p: p.write_bytes(p.read_bytes()[:1000])),
                         ("accuracy.json", lambda p: p.write_text("{"))):
        damage(directory / name)
        with pytest.raises(MMBenchError, match=re.escape(str(directory / name))) as e:
            load_classifiers(spec, "vanilla", test.modalities, tmp_path)
        assert str(e.value).endswith(fix) and "\n" not in str(e.value)
        assert import_classifiers(spec, "vanilla", test, src, tmp_path) == first
        assert load_classifiers(spec, "vanilla", test.modalities, tmp_path)[1] == first
    assert (directory / "accuracy.json.corrupt").read_text() == "{"
    assert {p: p.read_bytes() for p in src.rglob("*") if p.is_file()} == originals


def test_each_dataset_gets_its_authors_set_and_others_are_refused_naming_those_that_have_them():
    from mmbench.metrics.authors_classifiers import authors_set

    assert {d: authors_set(DATASETS.get(d)()).registry_name for d in ("polymnist", "polydigits", "mnist-svhn-text",
                                                                          "celeba")} == {
        "polymnist": "authors_polymnist_clf", "polydigits": "authors_polymnist_clf",
        "mnist-svhn-text": "authors_mnist_svhn_text_clf", "celeba": "authors_celeba_clf"}
    with pytest.raises(MMBenchError, match=r"no authors' classifiers are known for dataset rats; they exist for: "
                                           r".*polydigits.*\(use eval\.classifiers: mmbench\)"):
        authors_set(DATASETS.get("rats")())


def test_map_state_dict_refuses_non_tensors_and_any_extra_entry():
    """Every entry of the authors' file is checked: a value that is not a tensor, and an unexpected bias or buffer as
    well as an unexpected weight."""
    from mmbench.metrics.authors_classifiers import map_state_dict

    target = {"0.weight": torch.zeros(2, 3), "0.bias": torch.zeros(2)}
    state = {"encoder.0.weight": torch.ones(2, 3), "encoder.0.bias": torch.ones(2)}
    prefixes = [("encoder.0.", "0.")]
    assert set(map_state_dict(state, target, prefixes, "f")) == set(target)
    with pytest.raises(MMBenchError, match=r"^f: parameter encoder\.0\.bias is not a tensor but int$"):
        map_state_dict({**state, "encoder.0.bias": 3}, target, prefixes, "f")
    for extra in ("encoder.1.bias", "encoder.0.num_batches_tracked"):
        with pytest.raises(MMBenchError, match=rf"^f: unexpected parameter {re.escape(extra)} \(1 in all\)"):
            map_state_dict({**state, extra: torch.zeros(1)}, target, prefixes, "f")


def test_a_file_that_is_not_a_plain_state_dict_is_refused_unread(tmp_path):
    """The files are read with torch.load(weights_only=True): one pickling anything else (here a Fraction) is refused
    unread, and a tensor list is not a state dict."""
    from fractions import Fraction

    arch = ARCHITECTURES.get("authors_polymnist_clf")
    mod = DATASETS.get("polydigits")().modalities("vanilla")[0]
    path = tmp_path / "pretrained_img_to_digit_clf_m0"
    state = PolyClfImg().state_dict()
    torch.save({**state, "encoder.0.bias": Fraction(1, 2)}, path)
    with pytest.raises(MMBenchError, match=rf"^{re.escape(str(path))}: not a readable state dict "):
        load_file(arch, mod, 10, path)
    torch.save(list(state.values()), path)
    with pytest.raises(MMBenchError, match=rf"^{re.escape(str(path))}: holds a list, not a state dict"):
        load_file(arch, mod, 10, path)


def test_import_from_a_file_not_a_folder_says_so(tmp_path):
    from mmbench.metrics.authors_classifiers import import_classifiers

    (tmp_path / "clfs.tar").write_bytes(b"x")
    with pytest.raises(MMBenchError, match=r"clfs\.tar: not a directory; pass the folder"):
        import_classifiers(DATASETS.get("polydigits")(), "vanilla", None, tmp_path / "clfs.tar", tmp_path)


def test_multilabel_datasets_are_scored_by_mean_ap_at_import(tmp_path, monkeypatch):
    """authors_classifiers.py docstring: the import records the test accuracy, mean AP on multi-label data (CelebA)."""
    import mmbench.metrics.authors_classifiers as authors

    spec = DATASETS.get("celeba")()
    mods = spec.modalities(spec.variants[0])
    monkeypatch.setattr(authors, "find_file", lambda arch, mod, source: source / f"{mod.name}.pt")
    monkeypatch.setattr(authors, "load_file", lambda arch, mod, n, path: nn.Linear(1, 1))
    monkeypatch.setattr(authors, "mean_ap", lambda *a: 0.25)
    monkeypatch.setattr(authors, "accuracy", lambda *a: 0.75)
    for mod in mods:
        (tmp_path / f"{mod.name}.pt").write_bytes(b"x")  # (hashed for source.json)
    test = type("Split", (), {"modalities": mods})()
    assert authors.import_classifiers(spec, spec.variants[0], test, tmp_path, tmp_path) == {m.name: 0.25 for m in mods}


def test_a_second_import_replaces_the_recorded_scores(tmp_path, data_root):
    """Importing other files again: accuracy.json records the new files' scores, source.json their digests."""
    from mmbench.metrics.authors_classifiers import import_classifiers

    spec = DATASETS.get("polydigits")()
    root = tmp_path / "data"
    root.mkdir()
    (root / "polydigits").symlink_to(data_root / "polydigits")  # the prepared data, a fresh classifier cache
    test = load_split(spec, "vanilla", "test", data_root).subset(256)
    first = import_classifiers(spec, "vanilla", test, _poly_folder(tmp_path / "a", seed=0), root)
    src = _poly_folder(tmp_path / "b", seed=1)
    second = import_classifiers(spec, "vanilla", test, src, root)
    assert first != second
    assert load_classifiers(spec, "vanilla", test.modalities, root)[1] == second
    source = json.loads((cache_dir(spec, "vanilla", root) / "source.json").read_text())
    path = src / "trained_clfs_polyMNIST" / "pretrained_img_to_digit_clf_m4"
    assert source["m4"] == {"file": str(path.resolve()), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def _poly_folder(folder, seed):
    write_poly(folder, seed=seed)
    return folder


@pytest.mark.parametrize("accuracy_json, message", [
    ("[0.9, 0.9]", r"accuracy\.json holds a JSON list, not an object; this cache .* is corrupt"),
    ('{"m0": "high", "m1": 0.9}', r"accuracy\.json holds scores that are not numbers; this cache .* is corrupt"),
    ('{"m0": NaN, "m1": 0.9}', r"accuracy\.json holds scores that are not numbers; this cache .* is corrupt"),
    ('{"m0": 1.5, "m1": 0.9}', r"accuracy\.json holds scores that are not numbers; this cache .* is corrupt"),
    ('{"m0": 0.9}', r"modality m1 is not imported"),  # m1.pt is there, its score is not
])
def test_an_incomplete_import_cache_is_refused(tmp_path, accuracy_json, message):
    spec = DATASETS.get("polydigits")()
    mods = spec.modalities("vanilla")[:2]
    directory = cache_dir(spec, "vanilla", tmp_path)
    directory.mkdir(parents=True)
    arch = ARCHITECTURES.get("authors_polymnist_clf")
    for mod in mods:
        torch.save(arch.classifier(mod, 10).state_dict(), directory / f"{mod.name}.pt")
    (directory / "accuracy.json").write_text(accuracy_json)
    with pytest.raises(MMBenchError, match=message):
        load_classifiers(spec, "vanilla", mods, tmp_path)


def test_load_classifiers_returns_the_scores_of_the_modalities_asked_for(tmp_path):
    spec = DATASETS.get("polydigits")()
    mods = spec.modalities("vanilla")
    directory = cache_dir(spec, "vanilla", tmp_path)
    directory.mkdir(parents=True)
    torch.save(ARCHITECTURES.get("authors_polymnist_clf").classifier(mods[1], 10).state_dict(), directory / "m1.pt")
    (directory / "accuracy.json").write_text(json.dumps({"m0": 0.5, "m1": 0.75, "m2": 0.25}))
    clfs, accs = load_classifiers(spec, "vanilla", [mods[1]], tmp_path)
    assert list(clfs) == ["m1"] and accs == {"m1": 0.75} and not clfs["m1"].training


def test_the_authors_dropout_is_kept_for_classifier_dropout_as_authors():
    """eval.classifier_dropout: as_authors leaves the classifiers' dropout on, so its kinds and rates are the authors':
    Dropout2d(0.5) twice in each of CelebA ClfImg's residual blocks, Dropout(0.5) before the linear heads."""
    from mmbench.nets.authors_clf_celeba import AuthorsImageClassifier
    from mmbench.nets.authors_clf_mnist_svhn_text import AuthorsTextClassifier

    def dropouts(net):
        return [(type(m).__name__, m.p) for m in net.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]

    assert dropouts(AuthorsImageClassifier(3, 40, dim=4)) == [("Dropout2d", 0.5)] * 8 + [("Dropout", 0.5)]
    assert dropouts(AuthorsTextClassifier(5, 10, dim=4)) == [("Dropout", 0.5)]


def test_the_authors_text_classifier_refuses_other_text_lengths():
    from mmbench.nets.authors_clf_mnist_svhn_text import AuthorsTextClassifier

    net = AuthorsTextClassifier(5, 10, dim=4).eval()
    assert net(torch.zeros(2, 8, 5)).shape == (2, 10)
    with pytest.raises(MMBenchError, match=r"needs 8-character texts; got 16$"):
        net(torch.zeros(2, 16, 5))


def test_a_modality_the_authors_have_no_classifier_for_is_refused():
    from mmbench.data.base import Modality

    with pytest.raises(MMBenchError, match=r"CelebA classifiers for the image and the text; 'x' is 'spikes'$"):
        ARCHITECTURES.get("authors_celeba_clf").files(Modality("x", (4,), kind="spikes"))
    with pytest.raises(MMBenchError, match=r"no MNIST-SVHN-Text classifier for modality 'fashion'; they have mnist, "
                                           r"svhn, text$"):
        ARCHITECTURES.get("authors_mnist_svhn_text_clf").classifier(Modality("fashion", (1, 28, 28)), 10)


def test_polymnist_files_are_found_beside_or_in_the_authors_folder(tmp_path):
    """The authors' file for m<i> is taken from the folder given, or from its trained_clfs_polyMNIST/ subfolder."""
    from mmbench.metrics.authors_classifiers import find_file

    arch = ARCHITECTURES.get("authors_polymnist_clf")
    m0, m1 = DATASETS.get("polydigits")().modalities("vanilla")[:2]
    (tmp_path / "pretrained_img_to_digit_clf_m0").touch()
    (tmp_path / "trained_clfs_polyMNIST").mkdir()
    (tmp_path / "trained_clfs_polyMNIST" / "pretrained_img_to_digit_clf_m1").touch()
    assert find_file(arch, m0, tmp_path) == tmp_path / "pretrained_img_to_digit_clf_m0"
    assert find_file(arch, m1, tmp_path) == tmp_path / "trained_clfs_polyMNIST" / "pretrained_img_to_digit_clf_m1"


def test_a_file_where_the_import_cache_belongs_is_named_before_the_files_are_read(tmp_path, monkeypatch):
    # authors_classifiers.import_classifiers (metrics/cache.cache_folder): a file at <data_root>/classifiers-authors
    # was an OS error after every classifier had been loaded and measured
    import mmbench.metrics.authors_classifiers as authors

    spec = DATASETS.get("polydigits")()
    (tmp_path / "authors").mkdir()
    (tmp_path / "classifiers-authors").write_text("not a folder")
    monkeypatch.setattr(authors, "find_file", lambda *a: pytest.fail("read before the cache was checked"))
    test = type("Split", (), {"modalities": spec.modalities("vanilla")})()
    with pytest.raises(MMBenchError, match=f"^{re.escape(str(tmp_path / 'classifiers-authors'))} is a file where "
                                           f"mmbench keeps the authors' classifiers' cache"):
        authors.import_classifiers(spec, "vanilla", test, tmp_path / "authors", tmp_path)


@pytest.mark.parametrize("damage", ["replaced", "record_not_a_mapping", "digest_not_text"])
def test_a_cached_classifier_replaced_after_its_import_is_refused(tmp_path, data_root, damage):
    # authors_classifiers.load_classifiers: source.json recorded the digests of the authors' files only, so a cached
    # m2.pt replaced afterwards (here by m3's network, which loads) scored coherence under m2's recorded accuracy
    from mmbench.metrics.authors_classifiers import CACHED, import_classifiers

    spec = DATASETS.get("polydigits")()
    root = tmp_path / "data"
    root.mkdir()
    (root / "polydigits").symlink_to(data_root / "polydigits")
    test = load_split(spec, "vanilla", "test", data_root).subset(64)
    src = _poly_folder(tmp_path / "a", seed=0)
    first = import_classifiers(spec, "vanilla", test, src, root)
    directory = cache_dir(spec, "vanilla", root)
    source = json.loads((directory / "source.json").read_text())
    assert source[CACHED] == {m: hashlib.sha256((directory / f"{m}.pt").read_bytes()).hexdigest() for m in first}
    if damage == "replaced":
        (directory / "m2.pt").write_bytes((directory / "m3.pt").read_bytes())
        message = f"{directory / 'm2.pt'} is not the file imported"
    else:  # a digest that is not text is the record's damage, not the file's
        record = ["m0"] if damage == "record_not_a_mapping" else {**source[CACHED], "m0": None}
        (directory / "source.json").write_text(json.dumps({**source, CACHED: record}))
        message = f"{directory / 'source.json'} records the cached files' sha256"
    with pytest.raises(MMBenchError, match=f"^{re.escape(message)}.*import them again with") as e:
        load_classifiers(spec, "vanilla", test.modalities, root)
    assert "\n" not in str(e.value)
    assert import_classifiers(spec, "vanilla", test, src, root) == first  # the advice mends it
    assert load_classifiers(spec, "vanilla", test.modalities, root)[1] == first
