"""mmbench's latent regressions and average precision against the scikit-learn versions the authors' code pins.

MoPoE's latent classification fits `LogisticRegression(random_state=0, solver='lbfgs', multi_class='auto',
max_iter=1000)` (MoPoE eval_metrics/representation.py, train_clf_lr) under scikit-learn 0.20.0 (MoPoE
environment.yml); mmvmvae's fits `LogisticRegression(max_iter=10000)` on float32 means (mmvmvae utils/eval.py,
train_clf_lr_PM) under 1.4.0 (mmvmvae and mmvampvae environment.yml, with numpy 1.26.4 and scipy 1.12.0). Both
score CelebA with `average_precision_score`. mmbench fits the first with metrics/logistic020.py (eval.lr_protocol
mopoe, smvae) and the second with the installed scikit-learn (mmvamp), both through metrics/latent.py
fit_regression. This script fits each pinned version itself on the same inputs and compares.

scikit-learn 1.4.0 installs from its wheel:

    python3.11 -m venv /tmp/sk14 && /tmp/sk14/bin/pip install numpy==1.26.4 scipy==1.12.0 scikit-learn==1.4.0

No wheel of 0.20.0 installs on a Python newer than 3.7: build it from the PyPI source in place (numpy 1.23 still has
the distutils and np.float 0.20 uses; the build took 2 minutes on 2 cores here). Its bundled joblib does not import on Python 3.11,
so the folder is replaced by a link to joblib 1.2 (the regression does not use it):

    python3.11 -m venv /tmp/sk020 && /tmp/sk020/bin/pip install numpy==1.23.5 scipy==1.10.1 Cython==0.29.36 "setuptools<60" joblib==1.2.0
    cd /tmp && curl -LO https://files.pythonhosted.org/packages/0f/d7/136a447295adade38e7184618816e94190ded028318062a092daeb972073/scikit-learn-0.20.0.tar.gz
    echo "97d1d971f8ec257011e64b7d655df68081dd3097322690afa1a71a1d755f8c18  scikit-learn-0.20.0.tar.gz" | sha256sum -c
    tar xzf scikit-learn-0.20.0.tar.gz && cd scikit-learn-0.20.0
    mv PKG-INFO PKG-INFO.orig                                  # not a release: Cython regenerates the C sources
    find sklearn -name '*.pyx' | while read p; do rm -f "${p%.pyx}.c" "${p%.pyx}.cpp"; done   # (2018's fail on 3.11)
    /tmp/sk020/bin/python setup.py build_ext --inplace -j 2
    rm -r sklearn/externals/joblib && ln -s /tmp/sk020/lib/python3.11/site-packages/joblib sklearn/externals/joblib

Then, from the repository root (mmbench's environment where a line says `python`):

    python docs/sklearn_pins.py inputs /tmp/pins-in.npz [RUNS]
    PYTHONPATH=/tmp/scikit-learn-0.20.0 /tmp/sk020/bin/python docs/sklearn_pins.py fit /tmp/pins-in.npz /tmp/pins-020.npz
    /tmp/sk14/bin/python docs/sklearn_pins.py fit /tmp/pins-in.npz /tmp/pins-14.npz
    python docs/sklearn_pins.py compare /tmp/pins-in.npz /tmp/pins-020.npz /tmp/pins-14.npz
    PYTHONPATH=/tmp/scikit-learn-0.20.0:mmbench/metrics /tmp/sk020/bin/python docs/sklearn_pins.py compare /tmp/pins-in.npz /tmp/pins-020.npz
    python docs/sklearn_pins.py fixture tests/data/sklearn_pins.npz /tmp/pins-020.npz /tmp/pins-14.npz
    /tmp/sk14/bin/python docs/sklearn_pins.py rounding /tmp/pins-in.npz      # (and under 0.20.0, as `fit`)

`inputs` writes the synthetic problems (`problems()`, `ap_problems()`; numpy only) and, given RUNS (finished runs with
latent_classification, data in $MMBENCH_DATA), the regressions those runs evaluate: every subset's posterior means of
their regression rows and test tuples, as latent_classification builds them. `fit` makes the call of the authors'
code whose pinned version is the one imported (0.20.0: MoPoE's; 1.4.0: mmvmvae's) on every problem and scores the
average precision problems. `compare` fits mmbench's side on the same inputs and prints the differences; its second
form runs logistic020.py alone under 0.20's own numpy and scipy, which separates a difference of the code from one of
scipy's L-BFGS-B (a C rewrite since scipy 1.15). `rounding` measures what float rounding alone moves in the
imported pinned version: its fits on every problem as given and with the training rows shuffled (the same objective
summed in another order), the yardstick for `compare`'s differences on ill-conditioned fits. `fixture` keeps the synthetic problems' results (not the inputs, which
the tests rebuild with `problems()`) for tests/test_metrics_latent.py and tests/test_celeba_models.py.
"""
import hashlib
import os
import sys
import warnings

import numpy as np

# The authors' calls, by the scikit-learn version their code pins
CALLS = {
    "0.20.0": dict(random_state=0, solver="lbfgs", multi_class="auto", max_iter=1000),  # MoPoE train_clf_lr
    "1.4.0": dict(max_iter=10000),  # mmvmvae train_clf_lr_PM, train_clf_lr_celeba
}
# mmbench's eval.lr_protocol that reproduces each
PROTOCOL = {"0.20.0": "mopoe", "1.4.0": "mmvamp"}


def problems():
    """Synthetic regressions shaped like the papers' latent ones (numpy's PCG64 streams only): name -> (x_train,
    y_train, x_test, y_test), float32 means as the models give them. 512-d means of ten digit classes from 500 rows
    (MoPoE App. B, PolyMNIST), where C = 1 and the stopping rule decide the fit (more features than rows); the same
    with two classes; 32-d CelebA-like latents with a rare attribute (MoPoE Table 5); 64-d latents of large scale
    (nearly separable, ill-conditioned); 64-d means from 10,000 rows (MM-VAMP App. B.2.2's training size)."""
    out = {}
    rng = np.random.default_rng(20)
    means = rng.normal(size=(10, 512)) * 0.12
    scale = np.exp(rng.normal(size=512) * 0.5)
    for name, k, n in (("latent512_10class", 10, 500), ("latent512_binary", 2, 500)):
        y = rng.integers(0, k, n + 2000)
        x = (rng.normal(size=(n + 2000, 512)) + means[y]) * scale
        out[name] = (x[:n].astype(np.float32), y[:n], x[n:].astype(np.float32), y[n:])
    y = (rng.random(3000) < 0.08).astype(np.int64)
    x = rng.normal(size=(3000, 32)) + 0.9 * y[:, None] * rng.normal(size=32)
    out["celeba32_rare"] = (x[:1000].astype(np.float32), y[:1000], x[1000:].astype(np.float32), y[1000:])
    y = rng.integers(0, 10, 2500)
    x = (rng.normal(size=(2500, 64)) + 0.5 * rng.normal(size=(10, 64))[y]) * 12.0
    out["latent64_10class_scaled"] = (x[:500].astype(np.float32), y[:500], x[500:].astype(np.float32), y[500:])
    y = rng.integers(0, 10, 12000)
    x = rng.normal(size=(12000, 64)) + 0.25 * rng.normal(size=(10, 64))[y]
    out["mmvamp10000_64"] = (x[:10000].astype(np.float32), y[:10000], x[10000:].astype(np.float32), y[10000:])
    return out


# Where the stop of lbfgs depends on float rounding: 0.20.0 itself stops after 142 iterations on it, and after 248,
# 230, 257 or 261 given the same rows shuffled (the same objective, summed in another order), so only predictions and
# coefficients to ~1e-3 can agree there
ROUNDING_BOUND = {"latent64_10class_scaled"}


def ap_problems():
    """Average precision problems (numpy's PCG64 streams only): name -> (labels, scores), N×A. MoPoE's CelebA AP is
    average_precision_score per attribute on a test batch of 256 (MoPoE celeba/experiment.py eval_label), on the
    regressions' hard 0/1 predictions (eval.ap_scores: hard) or probabilities; here hard scores, scores with ties (one
    decimal), continuous ones, rare and absent positives (NaN without one, with a warning)."""
    rng = np.random.default_rng(21)
    out = {}
    rate = np.linspace(0.0, 0.6, 40)  # the first attribute has no positive
    y = (rng.random((256, 40)) < rate).astype(np.int64)
    flip = rng.random((256, 40)) < 0.2
    out["ap_hard"] = (y, np.where(flip, 1 - y, y).astype(np.float64))
    out["ap_ties"] = (y, np.round(np.clip(0.3 * y + rng.random((256, 40)), 0, 1), 1))
    out["ap_continuous"] = (y, 0.5 * y + rng.random((256, 40)))
    return out


def digest(arrays) -> str:
    """The inputs' fingerprint: the arrays' dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def run_problems(runs):
    """The latent regressions of finished runs: "<run id>/<subset>" -> (x_train, y_train, x_test, y_test), the
    posterior means latent_classification fits and scores (its regression rows and test tuples)."""
    from pathlib import Path

    import torch

    from mmbench.evaluate import eval_context
    from mmbench.methods.base import subset_key
    from mmbench.metrics import latent
    from mmbench.results import Run, parse_config
    from mmbench.train import load_trained

    data = Path(os.environ.get("MMBENCH_DATA", "data"))
    out = {}
    for d in sorted(p for p in Path(runs).iterdir() if (p / "metrics.json").exists()):
        _, cfg = parse_config((d / "config.yaml").read_bytes(), str(d / "config.yaml"))
        if "latent_classification" not in cfg.eval.metrics:
            continue
        run = Run(cfg, Path(runs))
        ctx = eval_context(run, load_trained(run, torch.device("cpu")), torch.device("cpu"), data)
        rows = ctx.regression_tuples()
        subsets, _ = latent.protocol_subsets(ctx)
        z_train = latent.encode_means(ctx, rows, subsets)
        z_test = latent.encode_means(ctx, ctx.test, subsets)
        y_train, y_test = rows.labels.numpy().ravel(), ctx.test.labels.numpy().ravel()
        for s, a, b in zip(subsets, z_train, z_test):
            out[f"{run.id}/{subset_key(s)}"] = (a, y_train, b, y_test)
    return out


def save_inputs(path, probs):
    arrays = {f"ap|{name}|{part}": a for name, pair in ap_problems().items() for part, a in zip(("y", "s"), pair)}
    for i, (name, (a, b, c, d)) in enumerate(sorted(probs.items())):
        arrays.update({f"{i}_name": np.array(name), f"{i}_xtr": a, f"{i}_ytr": b, f"{i}_xte": c, f"{i}_yte": d})
    np.savez_compressed(path, **arrays)


def load_inputs(path):
    f = np.load(path)
    n = len([k for k in f.files if k.endswith("_name")])
    return {str(f[f"{i}_name"]): (f[f"{i}_xtr"], f[f"{i}_ytr"], f[f"{i}_xte"], f[f"{i}_yte"]) for i in range(n)}


def fit(inp, outp):
    """The imported scikit-learn (0.20.0 or 1.4.0) as the authors' code calls it, on every problem: its coefficients,
    iterations, test predictions, the first rows' probabilities, and the average precisions."""
    import scipy
    import sklearn
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import average_precision_score

    v = sklearn.__version__
    if v not in CALLS:
        raise SystemExit(f"`fit` needs scikit-learn 0.20.0 or 1.4.0 (the authors' pins), not {v}")
    arrays = {f"{v}|versions": np.array(f"scikit-learn {v}, numpy {np.__version__}, scipy {scipy.__version__}")}
    f = np.load(inp)
    for name in ap_problems():
        y, s = f[f"ap|{name}|y"], f[f"ap|{name}|s"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # no positive: NaN, with a warning
            arrays[f"{v}|{name}|ap"] = np.array([average_precision_score(y[:, a], s[:, a]) for a in range(y.shape[1])])
        arrays[f"{v}|{name}|digest"] = np.array(digest((y, s)))
    for name, (xtr, ytr, xte, yte) in sorted(load_inputs(inp).items()):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ConvergenceWarning where it hits the cap, as in the authors' runs
            clf = LogisticRegression(**CALLS[v]).fit(xtr, ytr)
        arrays.update({f"{v}|{name}|digest": np.array(digest((xtr, ytr, xte))), f"{v}|{name}|coef": clf.coef_,
                       f"{v}|{name}|intercept": clf.intercept_, f"{v}|{name}|n_iter": np.asarray(clf.n_iter_),
                       f"{v}|{name}|predict": clf.predict(xte), f"{v}|{name}|proba": clf.predict_proba(xte[:20])})
        print(f"{v} {name}: n_iter {int(np.max(clf.n_iter_))}, test accuracy {np.mean(clf.predict(xte) == yte):.4f}")
    np.savez_compressed(outp, **arrays)


class Tally:
    """One line per problem (iterations, coefficients, predictions and accuracy of fit `a` beside fit `b`) and the
    summary over them: where the iteration counts agree, the largest share of test rows predicted otherwise, the
    largest accuracy difference."""

    def __init__(self, a_label: str, b_label: str):
        self.n = self.same = 0
        self.pred_diff = self.acc_diff = 0.0
        print(f"{'problem':56} {'iter ' + a_label:>11} {b_label:>8} {'max|dcoef|':>10} {'pred diff':>9} "
              f"{'acc ' + a_label:>10} {b_label:>8}")

    def add(self, name, a_iter, b_iter, a_coef, b_coef, a_pred, b_pred, y):
        self.n += 1
        self.same += int(a_iter) == int(b_iter)
        diff, a_acc, b_acc = float(np.mean(a_pred != b_pred)), float(np.mean(a_pred == y)), float(np.mean(b_pred == y))
        self.pred_diff, self.acc_diff = max(self.pred_diff, diff), max(self.acc_diff, abs(a_acc - b_acc))
        print(f"{name[:56]:56} {int(a_iter):11d} {int(b_iter):8d} {np.abs(a_coef - b_coef).max():10.1e} {diff:9.4f} "
              f"{a_acc:10.4f} {b_acc:8.4f}")

    def summary(self, what: str):
        print(f"{self.n} regressions, {what}: the same iteration count in {self.same}; predictions differ on at most "
              f"{self.pred_diff:.4f} of a problem's test rows; accuracy by at most {self.acc_diff:.4f}")


def rounding(inp):
    """How far the imported pinned version moves by float rounding alone: each problem fitted as given and with its
    training rows shuffled (seeded; the same objective, summed in another order), summarised as `compare` does."""
    import sklearn
    from sklearn.linear_model import LogisticRegression

    v = sklearn.__version__
    tally = Tally(v, "shuffled")
    for name, (xtr, ytr, xte, yte) in sorted(load_inputs(inp).items()):
        perm = np.random.default_rng(0).permutation(len(xtr))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            a = LogisticRegression(**CALLS[v]).fit(xtr, ytr)
            b = LogisticRegression(**CALLS[v]).fit(xtr[perm], ytr[perm])
        tally.add(name, np.max(a.n_iter_), np.max(b.n_iter_), a.coef_, b.coef_, a.predict(xte), b.predict(xte), yte)
    tally.summary(f"{v} against itself on shuffled rows")


def ours(version):
    """mmbench's fit of the authors' call under `version`: latent.fit_regression with the protocol that reproduces it;
    under 0.20's own environment (no torch, no mmbench) logistic020.py alone, on float64 features as fit_regression."""
    try:
        from mmbench.metrics.latent import fit_regression
    except ImportError:
        from logistic020 import LogisticRegression020
        assert version == "0.20.0", "only the 0.20.0 side runs without mmbench"
        return lambda x, y: LogisticRegression020(max_iter=CALLS[version]["max_iter"]).fit(x.astype(np.float64), y)
    return lambda x, y: fit_regression(x, y, False, PROTOCOL[version])


def one_blas_thread():
    """mmbench's fits run with numpy/scipy's BLAS on one thread (metrics/latent.py one_blas_thread); so do `compare`'s,
    where mmbench imports (not in 0.20's environment)."""
    try:
        from mmbench.metrics.latent import one_blas_thread as limit
    except ImportError:
        import contextlib
        return contextlib.nullcontext()
    return limit()


def average_precisions_here():
    try:
        from mmbench.metrics.precision import average_precisions
    except ImportError:
        from precision import average_precisions
    return average_precisions


def compare(inp, *outs):
    import scipy
    print(f"here: numpy {np.__version__}, scipy {scipy.__version__}")
    inputs = load_inputs(inp)
    for outp in outs:
        ref = np.load(outp)
        for v in [k.split("|")[0] for k in ref.files if k.endswith("|versions")]:
            compare_one(inputs, ref, v)


def compare_one(inputs, ref, v):
    """mmbench against the results `ref` holds of scikit-learn `v` (a `fit` output or the tests' fixture)."""
    print(f"\nreference: {ref[f'{v}|versions']}; mmbench: eval.lr_protocol {PROTOCOL[v]}")
    for name, (y, s) in ap_problems().items():
        assert str(ref[f"{v}|{name}|digest"]) == digest((y, s)), f"{name}: not the inputs {v} scored"
        a, b = average_precisions_here()(y, s), ref[f"{v}|{name}|ap"]
        print(f"{name}: average precision of {len(b)} attributes, max |mmbench - {v}| "
              f"{np.nanmax(np.abs(a - b)):.1e}, NaN where {v} gives NaN: {np.array_equal(np.isnan(a), np.isnan(b))}")
    fit_ours, tally = ours(v), Tally(v, "mmbench")
    for name, (xtr, ytr, xte, yte) in sorted(inputs.items()):
        assert str(ref[f"{v}|{name}|digest"]) == digest((xtr, ytr, xte)), f"{name}: not the inputs {v} fitted"
        with warnings.catch_warnings(), one_blas_thread():
            warnings.simplefilter("ignore")
            m = fit_ours(xtr, ytr)
            p = m.predict(xte)
        tally.add(name, ref[f"{v}|{name}|n_iter"].max(), np.max(m.n_iter_), ref[f"{v}|{name}|coef"], m.coef_,
                  ref[f"{v}|{name}|predict"], p, yte)
    tally.summary(f"mmbench against {v}")


def fixture(out, *refs):
    """The synthetic problems' results of every reference, without the inputs (the tests rebuild them)."""
    names = set(problems()) | set(ap_problems())
    keep = {}
    for path in refs:
        ref = np.load(path)
        for k in ref.files:
            if k.endswith("|versions") or k.split("|")[1] in names:
                keep[k] = ref[k]
    np.savez_compressed(out, **keep)


if __name__ == "__main__":
    cmd, *args = sys.argv[1:] or ["?"]
    need = {"inputs": 1, "fit": 2, "compare": 2, "rounding": 1, "fixture": 2}
    if cmd in need and len(args) < need[cmd]:
        raise SystemExit(f"`{cmd}` needs {need[cmd]} file argument(s); the commands are in this script's docstring")
    if cmd == "inputs":
        probs = problems()
        if len(args) > 1:
            probs.update(run_problems(args[1]))
        save_inputs(args[0], probs)
        print(f"{len(probs)} regression problems -> {args[0]}")
    elif cmd in ("fit", "compare", "rounding", "fixture"):
        {"fit": fit, "compare": compare, "rounding": rounding, "fixture": fixture}[cmd](*args)
    else:
        raise SystemExit(f"unknown command {cmd!r}: inputs, fit, compare, rounding or fixture (see the docstring)")
