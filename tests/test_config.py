"""Suites, overrides and names: every bad input gives one line naming the field and what is allowed."""
import re
import textwrap

import pytest

from mmbench.config import build_run_config, parse_overrides
from mmbench.errors import ConfigError, MMBenchError
from mmbench.suite import load_suite

GOOD = """
name: tiny
defaults: {train: {epochs: 1}, method: {latent_dim: 8}}
tiers: {smoke: {seeds: 1, train: {max_train: 64}}}
experiments:
  - name: e1
    reproduces: ["Quickstart"]
    dataset: polydigits
    methods: [mopoe, mvae]
    seeds: [0, 1]
    method_overrides: {mvae: {method: {beta: 2.0}}}
"""


def write(tmp_path, text):
    p = tmp_path / "suite.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def test_good_suite_expands(tmp_path):
    s = load_suite(write(tmp_path, GOOD))
    full = s.runs("full")
    assert len(full) == 4
    assert {r.method.name for r in full} == {"mopoe", "mvae"}
    assert [r.method.beta for r in full if r.method.name == "mvae"] == [2.0, 2.0]
    smoke = s.runs("smoke")
    assert len(smoke) == 2 and all(r.train.max_train == 64 for r in smoke)
    assert all(r.variant == "vanilla" for r in smoke)  # resolved to the dataset's default variant
    assert len({r.run_id() for r in full}) == 4


@pytest.mark.parametrize("text, expected", [
    ("name: x\nexperiments: [{name: e, dataset: polydigits, methods: [nope]}]",
     "experiments[0] (e, nope).method.name: unknown method 'nope'; choose one of: "),
    ("name: x\nexperiments: [{name: e, dataset: nodata, methods: [mopoe]}]", "dataset: unknown dataset 'nodata'"),
    ("name: x\nexperiments: [{name: e, dataset: polydigits, methods: [mopoe], overrides: {train: {epochs: ten}}}]",
     "train.epochs: expected an integer, got 'ten'"),
    ("name: x\nexperiments: [{name: e, dataset: polydigits, methods: [mopoe], overrides: {train: {epoch: 3}}}]",
     "train.epoch: unknown field; allowed: epochs,"),
    ("name: x\nexperiments: [{name: e, dataset: polydigits, methods: [mopoe], overrides: {train: {select: best}}}]",
     "train.select: 'best' is not allowed; choose one of: last, best_test_loss"),
    ("name: x\nexperiments: [{name: e, dataset: polydigits, methods: [mopoe], overrides: {eval: {precision: fp16}}}]",
     "eval.precision: 'fp16' is not allowed; choose one of: fp32, bf16"),
    ("name: x\nexperiments: [{name: e, dataset: polydigits, methods: [vgon], overrides: {eval: {precision: bf16}}}]",
     "eval.precision: bf16 is not allowed for method vgon: it encodes through its decoders"),
    ("name: x\nexperiments: [{name: e, dataset: polydigits, variant: huge, methods: [mopoe]}]",
     "variant: 'huge' is not a variant of polydigits; choose one of: vanilla, extended, translated"),
    ("name: x\nexperiments: [{name: e, dataset: polydigits, methods: [mopoe], metrics: [fid2]}]",
     "eval.metrics[0]: unknown metric 'fid2'"),
    ("name: x\nexperiments: [{name: e, dataset: polydigits, methods: [mopoe], overrides: {train: {lr: -1}}}]",
     "train.lr: must be > 0"),
    ("name: x\nexperiments: []", "experiments: must be a non-empty list"),
    ("name: [x]\nexperiments: [{name: e, dataset: polydigits, methods: [mopoe]}]", "name: must be a non-empty string"),
    ("name: 3\nexperiments: [{name: e, dataset: polydigits, methods: [mopoe]}]", "name: must be a non-empty string"),
    ("name: '  '\nexperiments: [{name: e, dataset: polydigits, methods: [mopoe]}]", "name: must be a non-empty string"),
    ("experiments: [{name: e, dataset: polydigits, methods: [mopoe]}]", "name: missing"),
    ("name: x\nexperiment: []", "experiment: unknown top-level key"),
    ("name: x\nexperiments: [{dataset: polydigits, methods: [mopoe]}]", "experiments[0].name: missing"),
    ("name: x\nexperiments: [{name: e, dataset: polydigits, methods: [mopoe], method_overrides: {mvae: {}}}]",
     "method_overrides.mvae: not one of this experiment's methods"),
    ("name: x\ntiers: {fast: {}}\nexperiments: [{name: e, dataset: polydigits, methods: [mopoe]}]",
     "tiers.fast: unknown tier"),
    ("name: x\ntiers: {quick: {method_overrides: {mvae: {}}}}\nexperiments: [{name: e, dataset: polydigits, methods: [mopoe]}]",
     "tiers.quick.method_overrides.mvae: not a method of any experiment: mopoe"),
    ("name: [x\n", "not valid YAML at line"),
    ("name: x\nexperiments: [{name: e, dataset: polydigits, methods: [mopoe], metrics: [loglik],"
     " overrides: {method: {image_likelihood: sse}}}]", "eval.metrics[0]: loglik needs normalised likelihoods"),
    ("name: x\nexperiments: [{name: e, dataset: rats, variant: simulated, methods: [aggregated], metrics: [loglik]}]",
     "eval.metrics[0]: loglik needs normalised likelihoods; the rats modalities barat, buchanan, mitt, stella, superchris use one"),
    # PyYAML alone keeps the last of two equal keys: mrvae.yaml lost its mrVAE overrides (beta 1) that way
    ("name: x\nexperiments:\n  - name: e\n    dataset: polydigits\n    methods: [mopoe, mvae]\n"
     "    method_overrides: {mopoe: {method: {beta: 1.0}}}\n    method_overrides: {mvae: {}}\n",
     "at line 7, column 5: the key 'method_overrides' is given twice (first at line 6)"),
    ("name: x\nexperiments: [{name: e, dataset: polydigits, methods: [mopoe], overrides: {train: {epochs: 2, epochs: 3}}}]",
     "the key 'epochs' is given twice"),
    ("- 1\n- 2\n", "a suite must be a mapping"),
    ("name: x\nexperiments: [{name: e, dataset: polydigits, methods: [mopoe]}, {name: e, dataset: polydigits, "
     "methods: [mvae]}]", "experiments[1].name: 'e' names an earlier experiment too"),
    ("name: x\ntiers: {smoke: {seeds: 0}}\nexperiments: [{name: e, dataset: polydigits, methods: [mopoe]}]",
     "tiers.smoke.seeds: must be a positive integer"),
    ("name: x\ntiers: {smoke: [1]}\nexperiments: [{name: e, dataset: polydigits, methods: [mopoe]}]",
     "tiers.smoke: must be a mapping of overrides"),
    # a sweep over what the experiment's own fields say would silently replace them; a repeated value runs twice
    ("name: x\nexperiments: [{name: e, dataset: polydigits, methods: [mopoe], sweep: {method.name: [mvae]}}]",
     "sweep.method.name: is set by the experiment's `methods`"),
    ("name: x\nexperiments: [{name: e, dataset: polydigits, methods: [mopoe], sweep: {seed: [1, 2]}}]",
     "sweep.seed: is set by the experiment's `seeds`"),
    ("name: x\nexperiments: [{name: e, dataset: polydigits, methods: [mopoe], sweep: {method.beta: [1.0, 1.0]}}]",
     "sweep.method.beta: repeats a value"),
    ("name: x\nexperiments: [{name: e, dataset: polydigits, methods: [mopoe], sweep: {method.betta: [1.0]}}]",
     "sweep.method.betta 'method.betta': unknown field"),
    ("name: x\nexperiments: [{name: e, dataset: polydigits, methods: [mopoe], sweep: {eval.metrics: [[coherence]]}}]",
     "sweep.eval.metrics: is set by the experiment's `metrics`"),
    # a string where a list belongs is refused, not read as a list of its characters
    ("name: x\nexperiments: [{name: e, reproduces: MoPoE Table 3, dataset: polydigits, methods: [mopoe]}]",
     "experiments[0].reproduces: expected a list of strings, got 'MoPoE Table 3'"),
    ("name: x\nexperiments: [{name: e, dataset: polydigits, methods: [mopoe], overrides: {method: {architecture: nope}}}]",
     "method.architecture: unknown architecture 'nope'; choose one of: "),
    ("name: x\nexperiments: [{name: e, dataset: polydigits}]",
     "experiments[0].methods: missing; every experiment needs name, dataset and methods"),
    ("name: x\ntiers: [smoke]\nexperiments: [{name: e, dataset: polydigits, methods: [mopoe]}]",
     "tiers: must be a mapping of tier name to overrides"),
    ("name: x\ntiers: {quick: {method_overrides: [mopoe]}}\nexperiments: [{name: e, dataset: polydigits, methods: [mopoe]}]",
     "tiers.quick.method_overrides: must be a mapping of method name to overrides"),
    ("name: x\nexperiments: [{name: e, dataset: polydigits, methods: [mopoe], seeds: []}]",
     "experiments[0].seeds: must be a non-empty list of seeds, e.g. [0, 1, 2]"),
    ("name: x\nexperiments: [{name: e, dataset: polydigits, methods: [mopoe, mvae, mopoe]}]",
     "experiments[0].methods: repeats a value (['mopoe', 'mvae', 'mopoe']); list each once"),
    ("name: x\nexperiments: [{name: e, dataset: polydigits, methods: [mopoe], seeds: [0, 1, 0]}]",
     "experiments[0].seeds: repeats a value ([0, 1, 0]); list each once"),
    # YAML's .inf and .nan are floats: a run would train on them and report garbage
    ("name: x\nexperiments: [{name: e, dataset: polydigits, methods: [mopoe], overrides: {train: {lr: .inf}}}]",
     "train.lr: must be a finite number, got inf"),
    ("name: x\nexperiments: [{name: e, dataset: polydigits, methods: [mopoe], overrides: {method: {beta: .nan}}}]",
     "method.beta: must be a finite number, got nan"),
    ("name: x\nexperiments: [{name: e, dataset: polydigits, methods: [mopoe], overrides: {method: {beta: -0.5}}}]",
     "method.beta: must be >= 0, got -0.5"),
    ("name: x\nexperiments: [{name: e, dataset: polydigits, methods: [mopoe], sweep: {method.beta: [1.0, .inf]}}]",
     "method.beta: must be a finite number, got inf"),
    # every tier is checked at load, not only the one a later `mmbench run --tier` asks for
    ("name: x\ntiers: {quick: {train: {epochs: ten}}}\nexperiments: [{name: e, dataset: polydigits, methods: [mopoe]}]",
     "experiments[0] (e, mopoe).train.epochs: expected an integer, got 'ten'"),
])
def test_malformed_suites(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_suite(path)
    msg = str(e.value)
    assert expected in msg
    assert str(path) in msg  # every error names the file
    assert "\n" not in msg


def test_missing_suite_file(tmp_path):
    with pytest.raises(MMBenchError, match="does not exist"):
        load_suite(tmp_path / "nope.yaml")
    with pytest.raises(MMBenchError, match="is not a file"):
        load_suite(tmp_path)
    (tmp_path / "latin1.yaml").write_bytes(b"name: caf\xe9\n")
    with pytest.raises(MMBenchError, match=r"latin1.yaml is not UTF-8 text \(byte 9\)"):
        load_suite(tmp_path / "latin1.yaml")


def test_overrides_parse_and_validate():
    d = parse_overrides(["train.epochs=3", "method.beta=2.5", "variant=extended", "method.options={}"])
    assert d == {"train": {"epochs": 3}, "method": {"beta": 2.5, "options": {}}, "variant": "extended"}
    cfg = build_run_config({"dataset": "polydigits", **d}, "--set")
    assert cfg.train.epochs == 3 and cfg.method.beta == 2.5
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_overrides(["train.epochs"])
    with pytest.raises(ConfigError, match=r"--set\.method\.options\.foo: not an option of mopoe; allowed: \(none\)$"):
        build_run_config({"dataset": "polydigits", "method": {"options": {"foo": 1}}}, "--set")
    with pytest.raises(ConfigError, match="eval.classifier_min_accuracy: must be between 0 and 1"):
        build_run_config({"dataset": "polydigits", "eval": {"classifier_min_accuracy": 2}}, "")


def test_run_id_ignores_tables_but_not_settings():
    a = build_run_config({"dataset": "polydigits", "tables": ["A"]})
    b = build_run_config({"dataset": "polydigits", "tables": ["B"]})
    c = build_run_config({"dataset": "polydigits", "train": {"epochs": 2}})
    assert a.run_id() == b.run_id() != c.run_id()


def test_modalities_select_a_subset(data_root):
    from mmbench.train import build_model, load_data

    cfg = build_run_config({"dataset": "polydigits", "modalities": ["m2", "m0"], "method": {"latent_dim": 4}})
    assert build_model(cfg).names == ["m2", "m0"]
    train, test = load_data(cfg, data_root)
    assert train.names == ["m2", "m0"] and set(test.x) == {"m2", "m0"}
    full = build_run_config({"dataset": "polydigits"})
    assert cfg.run_id() != full.run_id()
    with pytest.raises(ConfigError, match=r"^modalities: must be distinct modality names of polydigits: m0, m1"):
        build_run_config({"dataset": "polydigits", "modalities": ["m0", "m9"]})


def test_sweep_makes_one_run_per_value_and_seed(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text(textwrap.dedent("""\
        name: s
        experiments:
          - {name: e, dataset: polydigits, methods: [mopoe, mvae], seeds: [0, 1],
             sweep: {method.beta: [0.5, 2.0], train.lr: [0.01]}}
    """))
    runs = load_suite(p).runs("full")
    assert len(runs) == 2 * 2 * 2
    assert sorted({(r.method.name, r.method.beta, r.train.lr) for r in runs}) == [
        ("mopoe", 0.5, 0.01), ("mopoe", 2.0, 0.01), ("mvae", 0.5, 0.01), ("mvae", 2.0, 0.01)]
    p.write_text("name: s\nexperiments: [{name: e, dataset: polydigits, methods: [mopoe], sweep: {method.beta: []}}]\n")
    with pytest.raises(ConfigError, match=r"experiments\[0\].sweep.method.beta: must be a non-empty list"):
        load_suite(p)


def test_fields_added_later_keep_existing_run_ids():
    """Ids computed by mmbench before `modalities` and the FID/log-likelihood eval fields existed."""
    assert build_run_config({"dataset": "polydigits"}).run_id() == "polydigits-vanilla-mopoe-s0-a78aea8e21"
    cfg = {"dataset": "polydigits", "method": {"name": "mmvae", "beta": 2.0}, "eval": {"metrics": ["coherence"]}}
    assert build_run_config(cfg).run_id() == "polydigits-vanilla-mmvae-s0-64d61337ee"


def test_a_method_whose_numerics_changed_gets_new_run_ids():
    """mrVAE's defaults changed (objective q, normalised size prior): the same config must not find the runs
    made before, while every other method keeps its ids."""
    from mmbench.registry import METHODS

    mr = build_run_config({"dataset": "polydigits", "method": {"name": "mrvae"}})
    mrvae = METHODS.get("mrvae")
    assert mrvae.id_version == 2
    old, mrvae.id_version = mrvae.id_version, 1
    try:
        before = mr.run_id()
    finally:
        mrvae.id_version = old
    assert mr.run_id() != before
    assert all(getattr(cls, "id_version", 1) == 1 for name, cls in METHODS.items() if name != "mrvae")


def test_mrvae_objective_r_alone_got_new_run_ids_when_its_gradient_changed():
    """Objective r's size gradient now reaches every row (methods/mrvae.py RelaxedHead): an objective r config gets
    another id than the same config had at version 2, while objective q (the default) keeps its ids."""
    from mmbench.registry import METHODS

    mrvae = METHODS.get("mrvae")
    assert mrvae.numerics_version({"objective": "r"}) == 3 and mrvae.numerics_version({}) == 2

    def ids():
        return [build_run_config({"dataset": "polydigits", "method": {"name": "mrvae", "options": o}}).run_id()
                for o in ({}, {"objective": "q"}, {"objective": "r"})]

    now = ids()
    with pytest.MonkeyPatch.context() as mp:  # version 2 for every objective, as before
        mp.setattr(mrvae, "numerics_version", classmethod(lambda cls, options: cls.id_version))
        before = ids()
    assert now[:2] == before[:2] and now[2] != before[2]


def test_tier_method_overrides_apply_to_their_method_only(tmp_path):
    path = write(tmp_path, "name: x\ntiers:\n  quick: {train: {epochs: 2}, method_overrides: {mvae: {train: {lr: 0.01}}}}\n"
                           "experiments: [{name: e, dataset: polydigits, methods: [mopoe, mvae],"
                           " method_overrides: {mvae: {train: {lr: 0.002, epochs: 7}}}}]\n")
    suite = load_suite(path)
    got = {r.method.name: (r.train.lr, r.train.epochs) for r in suite.runs("quick")}
    assert got == {"mopoe": (1e-3, 2), "mvae": (0.01, 2)}  # over the experiment's, for mvae alone
    assert {r.method.name: r.train.lr for r in suite.runs("full")} == {"mopoe": 1e-3, "mvae": 0.002}
    over = suite.runs("quick", overrides={"train": {"lr": 0.5}})  # --set still wins
    assert {r.train.lr for r in over} == {0.5}


# ----- behaviours a mutation pass found unguarded -----
def test_modalities_enter_the_run_id():
    a = build_run_config({"dataset": "polydigits", "modalities": ["m0", "m1", "m2"]})
    assert a.run_id() != build_run_config({"dataset": "polydigits"}).run_id()


def test_a_bool_is_not_an_integer():
    with pytest.raises(ConfigError, match="train.epochs: expected an integer, got True"):
        build_run_config({"dataset": "polydigits", "train": {"epochs": True}})


def test_a_repeated_modality_is_refused():
    with pytest.raises(ConfigError, match="^modalities: must be distinct"):
        build_run_config({"dataset": "polydigits", "modalities": ["m0", "m0"]})


def test_classifier_min_ap_is_a_fraction():
    with pytest.raises(ConfigError, match="eval.classifier_min_ap: must be between 0 and 1"):
        build_run_config({"dataset": "polydigits", "eval": {"classifier_min_ap": 2}})


PRECEDENCE_SUITE = """
name: s
tiers: {smoke: {seeds: 1, train: {max_train: 64}}}
experiments:
  - name: e
    dataset: polydigits
    methods: [mopoe, mvae]
    seeds: [3, 4]
    overrides: {train: {lr: 0.01}}
    method_overrides: {mvae: {train: {lr: 0.002}}}
    sweep: {train.max_train: [100, 200]}
  - name: f
    dataset: polydigits
    methods: [mopoe]
"""


@pytest.fixture()
def precedence_suite(tmp_path):
    """Precedence (low to high): experiment overrides, method_overrides, sweep point, tier; seeds: the tier's first N."""
    from mmbench.suite import load_suite
    p = tmp_path / "s.yaml"
    p.write_text(PRECEDENCE_SUITE)
    return load_suite(p)


def test_a_tier_keeps_the_first_seeds(precedence_suite):
    assert sorted({r.seed for r in precedence_suite.runs("smoke", only=["e"])}) == [3]


def test_method_overrides_win_over_overrides(precedence_suite):
    got = {(r.method.name, r.train.lr) for r in precedence_suite.runs("full", only=["e"])}
    assert got == {("mopoe", 0.01), ("mvae", 0.002)}


def test_the_tier_wins_over_a_sweep_point(precedence_suite):
    assert {r.train.max_train for r in precedence_suite.runs("smoke", only=["e"])} == {64}


def test_only_selects_and_refuses_an_unknown_name(precedence_suite):
    assert len(precedence_suite.runs("full", only=["f"])) == 1
    with pytest.raises(ConfigError, match="--only: no experiment 'nope'"):
        precedence_suite.runs("full", only=["nope"])


def test_yaml_merge_key_with_an_overriding_key_is_not_a_repeated_key():
    """A YAML merge (<<: *anchor) that an explicit key overrides loads; only a key written twice is refused."""
    from mmbench.yamlio import load

    assert load("a: &a {x: 1, y: 1}\nb:\n  <<: *a\n  x: 2\n", "s.yaml")["b"] == {"x": 2, "y": 1}


# ----- behaviours a second mutation pass (config, suites, results, bundles) found unguarded -----
def test_a_suites_runs_serve_their_experiments_tables_with_its_defaults(tmp_path):
    runs = load_suite(write(tmp_path, GOOD)).runs("full")
    assert {(tuple(r.tables), r.train.epochs, r.method.latent_dim) for r in runs} == {(("Quickstart",), 1, 8)}


def test_a_number_written_as_an_integer_is_the_same_run():
    """lr: 1 and lr: 1.0 (or beta: 2 and 2.0) are one setting: one run id, held as a float."""
    a = build_run_config({"dataset": "polydigits", "train": {"lr": 1}, "method": {"beta": 2}})
    b = build_run_config({"dataset": "polydigits", "train": {"lr": 1.0}, "method": {"beta": 2.0}})
    assert type(a.train.lr) is float and type(a.method.beta) is float
    assert a.run_id() == b.run_id()


def test_integer_reconstruction_weights_are_the_same_run_as_float_ones():
    """--set method.rec_weights.m0=1 names the run a suite's {m0: 1.0} made, not a new one (before: another id)."""
    a = build_run_config({"dataset": "polydigits", "method": {"rec_weights": {"m0": 1, "m1": 3}}})
    b = build_run_config({"dataset": "polydigits", "method": {"rec_weights": {"m0": 1.0, "m1": 3.0}}})
    assert a.method.rec_weights == {"m0": 1.0, "m1": 3.0} and all(type(v) is float for v in a.method.rec_weights.values())
    assert a.run_id() == b.run_id()


def test_evaluation_choices_over_the_same_trained_model_keep_the_run_id():
    """Where the FID weights live, which classifiers score coherence and the decoders' precision are not the run."""
    base = build_run_config({"dataset": "polydigits"}).run_id()
    for ev in ({"fid_weights": "/elsewhere/pt_inception.pth"}, {"classifier_dropout": "as_authors"},
               {"precision": "bf16"}):
        assert build_run_config({"dataset": "polydigits", "eval": ev}).run_id() == base, ev
    assert build_run_config({"dataset": "polydigits", "eval": {"ll_samples": 3}}).run_id() != base


@pytest.mark.parametrize("key", ["train.epochs", "train.batch_size", "eval.ll_samples", "train.max_train"])
def test_a_count_of_zero_is_refused(key):
    section, name = key.split(".")
    with pytest.raises(ConfigError, match=rf"^{section}\.{name}: must be > 0, got 0$"):
        build_run_config({"dataset": "polydigits", section: {name: 0}})


@pytest.mark.parametrize("value", [0, float("inf"), float("nan")])
def test_a_zero_or_non_finite_reconstruction_weight_is_refused(value):
    with pytest.raises(ConfigError, match=rf"^method\.rec_weights\.m0: expected a finite number > 0, got {value!r}$"):
        build_run_config({"dataset": "polydigits", "method": {"rec_weights": {"m0": value}}})


def test_beta_zero_is_a_run():  # a plain autoencoder's objective: the low end of a β sweep
    assert build_run_config({"dataset": "polydigits", "method": {"beta": 0}}).method.beta == 0.0


def test_a_set_value_may_hold_an_equals_sign():
    assert parse_overrides(["method.options.schedule=a=b"]) == {"method": {"options": {"schedule": "a=b"}}}


def test_train_samples_counts_epochs_times_the_used_train_split(data_root):
    """The --dry-run estimate's tuples: epochs x min(train split, max_train)."""
    import json

    from mmbench.data.base import dataset_dir
    from mmbench.suite import train_samples

    n = json.loads((dataset_dir("polydigits", "vanilla", data_root) / "manifest.json").read_text())["counts"]["train"]
    run = lambda **t: build_run_config({"dataset": "polydigits", "train": t})  # noqa: E731
    assert train_samples(run(epochs=3, max_train=64), data_root) == 3 * 64
    assert train_samples(run(epochs=2, max_train=10 * n), data_root) == 2 * n
    assert train_samples(run(epochs=2), data_root) == 2 * n


def test_seconds_per_sample_of_a_run_without_a_rate_is_its_wall_time_over_its_tuples(data_root, monkeypatch):
    """A run recorded before `train_tuples_per_second`: its train_seconds over every tuple it trained (3 epochs of
    max_train 64: 192), 96 s -> 0.5 s a tuple; a run with neither, or of a dataset not prepared here, is left out, and
    so is a run whose last process timed no epoch (a null rate: resumed after its training, its train_seconds that
    process's fraction of a second, which would make the estimate ~0 s)."""
    from mmbench.projection import step_key
    from mmbench.suite import seconds_per_sample

    c = build_run_config({"dataset": "polydigits", "train": {"epochs": 3, "max_train": 64}})
    elsewhere = build_run_config({"dataset": "polymnist", "train": {"epochs": 3}})
    fake = [{"config": c, "provenance": {"train_seconds": 96.0}}, {"config": c, "provenance": {}},
            {"config": elsewhere, "provenance": {"train_seconds": 50.0}},
            {"config": c, "provenance": {"train_seconds": 0.05, "train_tuples_per_second": None}}]
    monkeypatch.setattr("mmbench.results.load_runs", lambda runs_dir: fake)
    assert seconds_per_sample(None, data_root) == {step_key(c): pytest.approx(0.5)}
    # the key holds what a step's time depends on: a method's options and the modalities too, not the seed or epochs
    mc = build_run_config({"dataset": "polydigits", "method": {"name": "mmvamp", "options": {"rate": "mc"}}})
    bound = build_run_config({"dataset": "polydigits", "method": {"name": "mmvamp"}, "seed": 3, "train": {"epochs": 9}})
    two = build_run_config({"dataset": "polydigits", "method": {"name": "mmvamp"}, "modalities": ["m0", "m1"]})
    plain = build_run_config({"dataset": "polydigits", "method": {"name": "mmvamp"}})
    assert step_key(bound) == step_key(plain)
    assert len({step_key(mc), step_key(bound), step_key(two)}) == 3


def test_train_tuples_reads_the_manifest_else_the_default_recipe(data_root, tmp_path):
    """Projections size a run from its prepared copy's manifest (prepared: True); an unprepared PolyMNIST from the
    split its default recipe builds (60,000 train tuples: the archive's checked count and MNIST's train file), marked
    not prepared; MNIST-SVHN-Text from its default pairing (1,121,360 triples); a dataset whose size only a build tells
    (the rats) stays unknown. A prepared copy of another size (a rebuild at another multiplicity) is read, not the
    default."""
    import json

    from mmbench.data.base import dataset_dir
    from mmbench.suite import train_tuples

    n = json.loads((dataset_dir("polydigits", "vanilla", data_root) / "manifest.json").read_text())["counts"]["train"]
    assert train_tuples(build_run_config({"dataset": "polydigits", "train": {"epochs": 2}}), data_root) == (2 * n, True)
    empty = tmp_path / "data"
    poly = lambda **t: build_run_config({"dataset": "polymnist", "variant": "extended", "train": t})  # noqa: E731
    assert train_tuples(poly(epochs=3), empty) == (3 * 60_000, False)
    assert train_tuples(poly(epochs=3, max_train=1000), empty) == (3 * 1000, False)
    assert train_tuples(build_run_config({"dataset": "mnist-svhn-text", "train": {"epochs": 3}}), empty) == (
        3 * 1_121_360, False)
    assert train_tuples(build_run_config({"dataset": "rats", "train": {"epochs": 3}}), empty) == (None, False)
    d = dataset_dir("polymnist", "extended", empty)
    d.mkdir(parents=True)
    (d / "manifest.json").write_text(json.dumps({"dataset": "polymnist", "variant": "extended", "arrays": {},
                                                 "counts": {"train": 720_000, "test": 10_000}}))
    assert train_tuples(poly(epochs=3), empty) == (3 * 720_000, True)


def test_an_experiment_with_no_metrics_evaluates_none(tmp_path):
    p = write(tmp_path, "name: x\nexperiments: [{name: e, dataset: polydigits, methods: [mopoe], metrics: []}]")
    assert [r.eval.metrics for r in load_suite(p).runs("full")] == [[]]


def test_an_empty_modality_list_is_refused():
    with pytest.raises(ConfigError, match="^modalities: must be distinct modality names of polydigits"):
        build_run_config({"dataset": "polydigits", "modalities": []})


def test_set_refuses_a_value_and_settings_below_it():
    with pytest.raises(ConfigError, match="^method.beta: method is given both a value and settings below it; give one of them$"):
        parse_overrides(["method=mvae", "method.beta=2"])


def test_a_path_under_a_mapping_setting_is_not_checked_but_the_mapping_itself_is_a_section():
    from mmbench.config import check_path

    check_path("method.options.schedule", "sweep")  # the method's options are its own to check
    check_path("train.max_train", "sweep")
    with pytest.raises(ConfigError, match="'method.options' is a section of settings"):
        check_path("method.options", "sweep")
    with pytest.raises(ConfigError, match="train.epochs is one setting, it has no fields"):
        check_path("train.epochs.x", "sweep")


@pytest.mark.parametrize("given, by", [({"seed": 5}, "seeds"), ({"method": {"name": "mvae"}}, "methods"),
                                       ({"dataset": "celeba"}, "dataset"), ({"tables": ["X"]}, "reproduces")])
def test_set_refuses_what_each_experiment_of_a_suite_sets(tmp_path, given, by):
    """`mmbench run SUITE --set seed=5` ran the experiments' seeds (the --set silently dropped); --set method.name=mvae
    made every method's runs mvae runs. Both are refused, as `mmbench train --set seed=...` is."""
    suite = load_suite(write(tmp_path, GOOD))
    with pytest.raises(ConfigError, match=rf"suite.yaml: --set .*: is set by each experiment's `{by}`; choose"):
        suite.runs("full", overrides=given)
    wanted = suite.runs("full", overrides={"eval": {"metrics": ["coherence"]}, "variant": "extended"})  # still allowed
    assert {(r.eval.metrics[0], r.variant) for r in wanted} == {("coherence", "extended")}


def test_a_set_value_that_is_not_yaml_is_taken_as_written():
    assert parse_overrides(["method.options.schedule=[a"]) == {"method": {"options": {"schedule": "[a"}}}


def test_human_seconds_switches_units_at_two_minutes_and_two_hours():
    from mmbench.suite import human_seconds

    assert [human_seconds(s) for s in (119, 120, 7199, 7200)] == ["119 s", "2 min", "120 min", "2.0 h"]
    assert [human_seconds(s) for s in (4 * 86400 - 1, 4 * 86400, 2007.4 * 86400)] == [
        "96.0 h", "4 days (96 h)", "2,007 days (48,178 h)"]


def test_authors_classifiers_are_refused_for_a_dataset_they_do_not_cover():
    with pytest.raises(ConfigError, match="^eval.classifiers: the MoPoE authors distribute no classifiers for rats; use mmbench$"):
        build_run_config({"dataset": "rats", "variant": "simulated", "method": {"name": "aggregated"},
                          "eval": {"classifiers": "authors", "metrics": ["reconstruction"]}})


def test_check_settings_checks_each_dotted_setting_as_set_does():
    from mmbench.config import check_settings

    check_settings({"method.beta": 2.5, "train.epochs": 3}, "cells[0].where")
    with pytest.raises(ConfigError, match=r"^cells\[0\].where.method.beta: expected a number, got 'x'$"):
        check_settings({"method.beta": "x"}, "cells[0].where")
    with pytest.raises(ConfigError, match=r"^cells\[0\].where.method.betta: unknown field"):
        check_settings({"method.betta": 1.0}, "cells[0].where")
    with pytest.raises(ConfigError, match=r"^cells\[0\].where: must be a mapping of dotted config paths"):
        check_settings(["method.beta"], "cells[0].where")


def test_reconstruction_weights_name_modalities_of_the_run():
    with pytest.raises(ConfigError, match=r"^method\.rec_weights\.m2: not a modality of this run; use some of: m0, m1$"):
        build_run_config({"dataset": "polydigits", "modalities": ["m0", "m1"], "method": {"rec_weights": {"m2": 2.0}}})


@pytest.mark.parametrize("block, where, by", [
    ("defaults: {seed: 5}", "defaults.seed", "seeds"),
    ("defaults: {variant: extended}", "defaults.variant", "variant"),
    ("tiers: {smoke: {dataset: celeba}}", "tiers.smoke.dataset", "dataset"),
    ("tiers: {quick: {method: {name: mvae}}}", "tiers.quick.method.name", "methods"),
    ("tiers: {quick: {method_overrides: {mvae: {seed: 3}}}}", "tiers.quick.method_overrides.mvae.seed", "seeds"),
    ("tiers: {full: {eval: {metrics: [coherence]}}}", "tiers.full.eval.metrics", "metrics"),
])
def test_a_suite_block_may_not_set_what_each_experiment_sets(tmp_path, block, where, by):
    """A suite's defaults or a tier giving seed, dataset, variant, method.name, tables or (a tier) eval.metrics was
    replaced by each experiment's field or replaced it for every experiment, in silence; refused when the suite loads,
    naming the block."""
    text = GOOD.replace("defaults: {train: {epochs: 1}, method: {latent_dim: 8}}", "").replace(
        "tiers: {smoke: {seeds: 1, train: {max_train: 64}}}", block)
    with pytest.raises(ConfigError, match=rf"suite.yaml: {re.escape(where)}: is set by each experiment's `{by}`"):
        load_suite(write(tmp_path, text))


@pytest.mark.parametrize("block, where", [("overrides: {seed: 7}", "overrides.seed"),
                                          ("overrides: {tables: [X]}", "overrides.tables"),
                                          ("method_overrides: {mvae: {dataset: celeba}}", "method_overrides.mvae.dataset")])
def test_an_experiment_s_overrides_may_not_set_its_own_fields(tmp_path, block, where):
    text = GOOD.replace("method_overrides: {mvae: {method: {beta: 2.0}}}", block)
    with pytest.raises(ConfigError, match=rf"experiments\[0\]\.{re.escape(where)}: is set by each experiment's"):
        load_suite(write(tmp_path, text))


def test_eval_metrics_stays_a_default_an_experiment_s_metrics_replaces(tmp_path):
    text = GOOD.replace("defaults: {train: {epochs: 1}, method: {latent_dim: 8}}",
                        "defaults: {train: {epochs: 1}, eval: {metrics: [coherence]}}")
    assert {tuple(r.eval.metrics) for r in load_suite(write(tmp_path, text)).runs("full")} == {("coherence",)}


@pytest.mark.parametrize("item", ["=3", " =3", "train..epochs=3", "train.=3"])
def test_an_override_without_a_key_names_itself(item):
    from mmbench.config import parse_overrides

    with pytest.raises(ConfigError, match=rf"^--set {re.escape(item)}: the KEY before = is empty or has an empty part"):
        parse_overrides([item])


def test_configs_are_plain_data_without_torch():
    """The typed configs (MethodConfig among them) live in config.py, below the methods: reading a suite's or a run's
    settings loads no torch (methods/base.py imports MethodConfig from here, not the other way round)."""
    import subprocess
    import sys

    code = "import sys, mmbench.config; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    from mmbench.config import MethodConfig
    from mmbench.methods import base

    assert base.MethodConfig is MethodConfig  # one class, not a copy left behind


def test_an_unhashable_key_is_a_config_error_naming_the_file():
    """yamlio.load: every YAML problem is a ConfigError naming the file (a complex key PyYAML cannot hash too)."""
    from mmbench.yamlio import load

    with pytest.raises(ConfigError, match=r"s\.yaml.*not valid YAML at line 1.*unhashable"):
        load("? [a, b]\n: 1\n", "s.yaml")


# ----- found by fuzzing mutated suites and --set values: each was a traceback or a silent acceptance -----
@pytest.mark.parametrize("block, where", [
    ("method_overrides: {mvae: [1]}", "experiments[0].method_overrides.mvae"),  # was AttributeError in _gives
    ("method_overrides: {mvae: 3}", "experiments[0].method_overrides.mvae"),  # was TypeError in _gives
    ("method_overrides: {mvae: dataset}", "experiments[0].method_overrides.mvae"),  # was "dataset: is set by ..."
    ("method_overrides: {mvae: []}", "experiments[0].method_overrides.mvae"),  # an empty list: not "no overrides"
    ("tiers: {quick: {method_overrides: {mvae: abc}}}", "tiers.quick.method_overrides.mvae"),
])
def test_a_method_s_overrides_that_are_not_a_mapping_are_refused(tmp_path, block, where):
    text = GOOD.replace("method_overrides: {mvae: {method: {beta: 2.0}}}", block if "tiers" not in block else "")
    if "tiers" in block:
        text = text.replace("tiers: {smoke: {seeds: 1, train: {max_train: 64}}}", block)
    with pytest.raises(ConfigError, match=rf"suite.yaml: {re.escape(where)}: must be a mapping of run settings"):
        load_suite(write(tmp_path, text))


def test_a_sweep_key_under_another_swept_key_is_refused(tmp_path):
    """sweep_points set method.options.a, then could not set a key below that value (TypeError)."""
    text = GOOD.replace("method_overrides: {mvae: {method: {beta: 2.0}}}",
                        "sweep: {method.rec_weights.m0: [1.0], method.rec_weights.m0.x: [2.0]}")
    with pytest.raises(ConfigError, match=r"sweep\.method\.rec_weights\.m0\.x: lies under method\.rec_weights\.m0, "
                                          r"which the sweep sets too"):
        load_suite(write(tmp_path, text))


@pytest.mark.parametrize("given, field", [({"seeds": "[-1]"}, "seed"), ({"seeds": "[4294967296]"}, "seed"),
                                          ({"overrides": "{data_seed: -5}"}, "data_seed")])
def test_a_seed_numpy_and_torch_cannot_take_is_refused(tmp_path, given, field):
    """A negative data seed failed in numpy's default_rng when the data was prepared, a huge run seed in torch's
    manual_seed when training began: refused when the suite loads."""
    (key, value), = given.items()
    text = GOOD.replace("seeds: [0, 1]", f"seeds: {value}" if key == "seeds" else "seeds: [0, 1]\n    overrides: " + value)
    with pytest.raises(ConfigError, match=rf"\(e1, mopoe\)\.{field}: must be an integer from 0 to 4294967295"):
        load_suite(write(tmp_path, text))
    with pytest.raises(ConfigError, match=r"^--set data_seed: must be an integer from 0 to 4294967295"):
        load_suite(write(tmp_path, GOOD)).runs("full", parse_overrides(["data_seed=-1"]))
    cfg = build_run_config({"dataset": "polydigits", "seed": 2 ** 32 - 1, "data_seed": 0})  # both ends: numpy takes them
    assert (cfg.seed, cfg.data_seed) == (4294967295, 0)


def test_an_empty_settings_block_is_refused_not_reset_to_the_defaults(tmp_path):
    """A tier's `train:` left empty (null) replaced the suite's defaults' train block, so the tier's runs silently
    trained with the dataclass defaults (10 epochs) instead of the suite's."""
    text = GOOD.replace("tiers: {smoke: {seeds: 1, train: {max_train: 64}}}", "tiers: {quick: {train: }}")
    with pytest.raises(ConfigError, match=r"\(e1, mopoe\)\.train: expected a mapping of TrainConfig fields, got None; "
                                          r"give the settings \(e\.g\. \{epochs: 10\}\) or drop the key$"):
        load_suite(write(tmp_path, text))
    with pytest.raises(ConfigError, match=r"^--set method: expected a mapping of MethodConfig fields, got None"):
        load_suite(write(tmp_path, GOOD)).runs("full", parse_overrides(["method=null"]))


def test_a_number_yaml_reads_as_text_names_how_to_write_it():
    with pytest.raises(ConfigError, match=r"^train\.lr: expected a number, got '1e-3' \(text to YAML.*; write 1\.0e-3$"):
        build_run_config({"dataset": "polydigits", "train": {"lr": "1e-3"}})
    with pytest.raises(ConfigError, match=r"^--set method\.beta: .*got '2\.5e2' .*; write 2\.5e\+2$"):
        load_suite("suites/quickstart.yaml").runs("full", parse_overrides(["method.beta=2.5e2"]))
    for text, fix in (("-1e-3", "-1.0e-3"), ("+2e5", "+2.0e+5"), (".5e3", ".5e+3")):  # a sign, no digit before the point
        with pytest.raises(ConfigError, match=rf"^train\.lr: expected a number, got '{re.escape(text)}' .*; write {re.escape(fix)}$"):
            build_run_config({"dataset": "polydigits", "train": {"lr": text}})


@pytest.mark.parametrize("name", ["'  '", "'a,b'"])
def test_an_experiment_name_that_only_cannot_select_is_refused(tmp_path, name):
    with pytest.raises(ConfigError, match=r"experiments\[0\]\.name: must be a non-blank name without commas"):
        load_suite(write(tmp_path, GOOD.replace("name: e1", f"name: {name}")))


def test_a_description_that_is_not_text_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"suite\.yaml: description: must be a string, got \['a', 'b'\]"):
        load_suite(write(tmp_path, "description: [a, b]\n" + GOOD))
    assert load_suite(write(tmp_path, "description:\n" + GOOD)).description == ""  # was the text 'None'
    with pytest.raises(ConfigError, match=r"suite\.yaml: description: must be a string, got False"):  # not read as ""
        load_suite(write(tmp_path, "description: false\n" + GOOD))


def test_a_set_value_validation_refuses_is_blamed_on_the_set(tmp_path):
    """--set eval.metrics=[nosuch] was reported as the suite file's experiments[0] error."""
    suite = load_suite(write(tmp_path, GOOD))
    with pytest.raises(ConfigError, match=r"^--set eval\.metrics\[0\] \(for e1, mopoe\): unknown metric 'nosuch'"):
        suite.runs("full", parse_overrides(["eval.metrics=[nosuch]"]))
    with pytest.raises(ConfigError, match=r"^--set eval\.classifier_min_accuracy \(for e1, mopoe\): must be between"):
        suite.runs("full", parse_overrides(["eval.classifier_min_accuracy=2"]))
    with pytest.raises(ConfigError, match=r"^--set modalities \(for e1, mopoe\): must be distinct modality names"):
        suite.runs("full", parse_overrides(["modalities=[m0, nosuch]"]))  # a top-level field


def test_a_set_option_that_clashes_with_the_suite_s_is_blamed_on_the_set(tmp_path):
    """The error names stage1_steps (the suite's), the clash is the --set of stage1_fraction: a setting above it."""
    suite = load_suite(write(tmp_path, GOOD.replace("methods: [mopoe, mvae]", "methods: [smvae]").replace(
        "method_overrides: {mvae: {method: {beta: 2.0}}}", "overrides: {method: {options: {stage1_steps: 5}}}")))
    with pytest.raises(ConfigError, match=r"^--set method\.options\.stage1_steps \(for e1, smvae\): set stage1_steps or "):
        suite.runs("full", parse_overrides(["method.options.stage1_fraction=0.5"]))


@pytest.mark.parametrize("text, expected", [
    ("name: x\x00\n", r"not valid YAML at line 1: special characters are not allowed \(#x0000\); remove it$"),
    ("name: " + "[" * 3000 + "]" * 3000 + "\n", r"not valid YAML: nested too deeply"),
    # a value its explicit tag cannot take was a ValueError or TypeError traceback from PyYAML's constructor
    ("epochs: !!int x\n", r"not valid YAML: a value its tag cannot take \(ValueError: invalid literal for int\(\) .*\); drop the tag"),
    ("day: !!timestamp 2020-13-45\n", r"not valid YAML: a value its tag cannot take \(ValueError: month must be in 1\.\.12\)"),
    ("- !!map [1]\n", r"not valid YAML: a value its tag cannot take"),
])
def test_yaml_a_reader_cannot_take_is_one_line_naming_the_file(text, expected):
    """A NUL character gave a two-line message; deep nesting a RecursionError traceback."""
    from mmbench.yamlio import load

    with pytest.raises(ConfigError, match=r"^s\.yaml: " + expected) as e:
        load(text, "s.yaml")
    assert "\n" not in str(e.value)


def test_an_error_quoting_a_misplaced_block_stays_short(tmp_path):
    text = "name: x\nexperiments: [[" + ", ".join(f"{{name: e{i}, dataset: polydigits, methods: [mopoe]}}" for i in range(9)) + "]]"
    with pytest.raises(ConfigError, match=r"experiments\[0\]: expected a mapping of Experiment fields, got \[\{.*…$") as e:
        load_suite(write(tmp_path, text))
    assert len(str(e.value)) < 250


@pytest.mark.parametrize("section, value", [("eval", {"metrics": "x" * 500}),  # a list's field
                                            ("method", {"rec_weights": list(range(500))}),  # a mapping's
                                            ("train", {"epochs": "x" * 500})])  # a number's
def test_a_long_value_of_the_wrong_type_is_quoted_short(section, value):
    with pytest.raises(ConfigError, match=r"expected .*, got .*…$") as e:
        build_run_config({"dataset": "polydigits", section: value})
    assert len(str(e.value)) < 150


def test_show_value_cuts_only_what_is_longer_than_its_width():
    from mmbench.errors import show_value

    assert show_value("a" * 78) == "'" + "a" * 78 + "'"  # 80 characters: whole
    assert show_value("a" * 79) == "'" + "a" * 79 + "…"  # 81: its first 80, and the mark of the cut
    assert show_value(list(range(100)), 10) == "[0, 1, 2, …"


# ----- method options' values: checked when the config is built, as the method's constructor checks them -----
# (method, option, bad value, what the one-line error says after "method.options.<option>[.<key>]: ")
BAD_OPTIONS = [
    ("aggregated", "average", "median", "'median' is not allowed; choose one of: variance, std"),
    ("aggregated", "aggregation", "sum", "'sum' is not allowed; choose one of: avg, poe"),
    ("aggregated", "beta_convention", 1, "expected a string, got 1"),
    ("aggregated", "beta_convention", "both", "'both' is not allowed; choose one of: paper, code"),
    ("independent", "beta_convention", "sometimes", "'sometimes' is not allowed; choose one of: paper, code"),
    ("jmvae", "alpha", "abc", "expected a number or null (null: method.beta), got 'abc'"),
    ("jmvae", "alpha", -1.0, "must be a number >= 0, got -1.0"),
    ("jmvae", "alpha", True, "expected a number or null (null: method.beta), got True"),
    ("mmvamp", "rate", "nosuch", "'nosuch' is not allowed; choose one of: bound, mc"),
    ("mmvamp", "alpha", 1.5, "must be a number in [0, 1], got 1.5 (0: the paper's prior)"),
    ("mmvamp", "alpha", "1e-3", "expected a number, got '1e-3' (text to YAML); write 1.0e-3"),
    ("mmvamp", "alpha_anneal_steps", 10.5, "expected an integer, got 10.5"),
    ("mmvamp", "alpha_anneal_steps", True, "expected an integer, got True"),
    ("mmvamp", "rate", None, "expected a string, got None"),  # null is a value only where the default is
    ("mmvamp", "alpha_anneal_batch", -1, "must be an integer >= 0, got -1"),
    ("mmvamp", "beta_convention", "both", "'both' is not allowed; choose one of: paper, code"),
    ("mrvae", "hidden", 1.5, "expected an integer, got 1.5"),
    ("mrvae", "hidden", 0, "must be an integer >= 1, got 0"),
    ("mrvae", "objective", "elbo", "'elbo' is not allowed; choose one of: q, r (q: App. A.1"),
    ("mrvae", "size_prior", "max", "'max' is not allowed; choose one of: mean, product"),
    ("mrvae", "tau_n", 0, "must be a number > 0, got 0"),
    ("mrvae", "tau_y", float("inf"), "must be a finite number, got inf"),
    ("mrvae", "tau_min", "half", "expected a number, got 'half'"),
    ("mrvae", "tau_min", 0, "must be a number > 0, got 0"),
    ("mrvae", "anneal_rate", -0.1, "must be a number >= 0, got -0.1"),
    ("mvae", "unimodal_weights", "all", "'all' is not allowed; choose one of: one, rec_weights"),
    ("smvae", "schedule", "sometimes", "'sometimes' is not allowed; choose one of: end_to_end, two_stage"),
    ("smvae", "prior_expert", "some", "'some' is not allowed; choose one of: full, all, none"),
    ("smvae", "stage1_fraction", 1.0, "must be a number in (0, 1), got 1.0"),
    ("smvae", "stage1_steps", 0, "must be an integer >= 1, got 0"),
    ("smvae", "stage1_steps", 2.5, "expected an integer or null (null: stage1_fraction of the run), got 2.5"),
    ("smvae", "detach_surrogate", "yes", "expected true/false, got 'yes'"),
    ("smvgon", "inner_step", 0, "must be a number > 0, got 0 (default 1/256)"),
    ("smvgon", "schedule", "never", "'never' is not allowed; choose one of: end_to_end, two_stage"),
    ("vgon", "inner_step", "small", "expected a number, got 'small'"),
    ("mopoe_style", "style_dim", 2.5, "expected an integer, got 2.5"),
    ("mopoe_style", "beta_style", -1, "must be a number >= 0, got -1"),
    ("mvae_style", "style_dim", 0, "must be an integer >= 1, got 0"),
    ("mvae_style", "beta_content", [1], "expected a number, got [1]"),
    ("mvae_style", "beta_content", list(range(40)), f"expected a number, got {repr(list(range(40)))[:80]}…"),
    ("mmvae_style", "style_betas", 2.0, "expected a mapping of modality names to numbers, got 2.0"),
    ("mmvae_style", "style_betas", list(range(40)),  # quoted short
     f"expected a mapping of modality names to numbers, got {repr(list(range(40)))[:80]}…"),
    ("mmvae_style", "style_betas", {"m9": 1.0}, "names m9, not modalities of this run; use some of: m0, m1, m2, m3, m4"),
    ("mmvae_style", "style_betas.m0", "x", "expected a number, got 'x'"),
    ("mmvae_style", "style_betas.m1", -1.0, "must be a number >= 0, got -1.0"),
]


def _option(option, value):
    name, _, key = option.partition(".")
    return {name: {key: value} if key else value}


@pytest.mark.parametrize("method, option, value, expected", BAD_OPTIONS, ids=lambda v: str(v))
def test_a_bad_method_option_value_is_refused_when_the_config_is_built(tmp_path, method, option, value, expected):
    """method.options values were checked only by the model's constructor, once a run started (float('abc'),
    int(1.5) tracebacks among them): suites, --set and build_run_config now refuse them, on one line naming the option."""
    import yaml

    want = re.escape(f"method.options.{option}: {expected}")
    data = {"dataset": "polydigits", "method": {"name": method, "options": _option(option, value)}}
    with pytest.raises(ConfigError, match="^" + want) as e:
        build_run_config(data)  # builds no model
    assert "\n" not in str(e.value)
    suite = {"name": "x", "experiments": [{"name": "e", "dataset": "polydigits", "methods": [method],
                                           "overrides": {"method": {"options": _option(option, value)}}}]}
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: experiments\[0\] \(e, {method}\)\.{want}"):
        load_suite(path)
    path.write_text(yaml.safe_dump({**suite, "experiments": [{**suite["experiments"][0], "overrides": {}}]}))
    if "." not in option and not isinstance(value, (dict, list)):  # the same value given by --set
        item = f"method.options.{option}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
        blamed = re.escape(f"--set method.options.{option} (for e, {method}): {expected}")
        with pytest.raises(ConfigError, match="^" + blamed):
            load_suite(path).runs("full", parse_overrides([item]))


@pytest.mark.parametrize("method, option, value, expected", BAD_OPTIONS, ids=lambda v: str(v))
def test_the_constructor_refuses_a_bad_option_with_the_same_message(method, option, value, expected):
    """One place: the model's constructor runs the check config.validate runs (MultimodalVAE.check_options), so a
    model built without a suite says exactly what loading the suite would."""
    from mmbench.config import MethodConfig
    from mmbench.data.base import Modality
    from mmbench.registry import METHODS

    options = _option(option, value)
    with pytest.raises(ConfigError) as by_config:
        METHODS.get(method).check_options(options, [f"m{i}" for i in range(5)])
    mods = [Modality(f"m{i}", (3, 28, 28)) for i in range(5)]
    with pytest.raises(ConfigError) as by_model:
        METHODS.get(method)(mods, MethodConfig(method, latent_dim=4, options=options), "polymnist_cnn")
    assert str(by_model.value) == str(by_config.value)
    assert str(by_config.value).startswith(f"method.options.{option}: {expected}")


def test_method_options_that_are_not_a_mapping_are_refused_by_the_method():
    from mmbench.registry import METHODS

    with pytest.raises(ConfigError, match=r"^method\.options: expected a mapping, got \['alpha'\]$"):
        METHODS.get("mmvamp").check_options(["alpha"])


def test_every_method_with_options_has_a_bad_value_case():
    from mmbench.registry import METHODS

    with_options = {name for name, cls in METHODS.items() if cls.options}
    assert with_options == {m for m, *_ in BAD_OPTIONS}
    covered = {id(METHODS.get(m).option_rules.get(o.split(".")[0])) for m, o, *_ in BAD_OPTIONS}
    for name, cls in METHODS.items():  # and each choice or range a method sets (some shared by several methods)
        for option, rule in cls.option_rules.items():
            assert option in cls.options, (name, option)
            assert id(rule) in covered, (name, option)


def test_every_method_s_defaults_and_every_shipped_suite_s_options_pass_the_check():
    from pathlib import Path

    from mmbench.registry import METHODS
    from mmbench.suite import TIERS

    for name, cls in METHODS.items():
        cls.check_options(dict(cls.options), None)
        cls.check_options(dict(cls.options), ["img", "text"])  # style_betas' defaults name CelebA's modalities
        cls.check_options({})
    suites = sorted((Path(__file__).resolve().parent.parent / "suites").glob("*.yaml"))
    assert suites
    for path in suites:
        suite = load_suite(path)  # validates every tier
        for tier in TIERS:
            for run in suite.runs(tier):
                METHODS.get(run.method.name).check_options(run.method.options, run.modalities)


def test_valid_method_options_are_kept_as_written():
    """Checked, not converted: an integer α stays 1 (run ids of existing runs do not change), null means β."""
    cfg = build_run_config({"dataset": "polydigits", "method": {"name": "mmvamp", "options": {"alpha": 1, "rate": "mc"}}})
    assert cfg.method.options == {"alpha": 1, "rate": "mc"} and type(cfg.method.options["alpha"]) is int
    for name, options in (("jmvae", {"alpha": None}), ("smvae", {"stage1_steps": 5}),
                          ("smvae", {"stage1_steps": None, "stage1_fraction": 0.5})):  # null: β's, the fraction's
        cfg = build_run_config({"dataset": "polydigits", "method": {"name": name, "options": dict(options)}})
        assert cfg.method.options == options and [type(v) for v in cfg.method.options.values()] == \
            [type(v) for v in options.values()]
    with pytest.raises(ConfigError, match=r"^method\.options\.stage1_steps: set stage1_steps or stage1_fraction, not both$"):
        build_run_config({"dataset": "polydigits", "method": {"name": "smvae",
                                                               "options": {"stage1_steps": 5, "stage1_fraction": 0.5}}})


def test_minus_zero_is_the_run_zero_is_and_other_numbers_keep_their_ids():
    """method.beta: -0.0 hashed to another run than 0.0 (json writes -0.0); ids computed before the change."""
    def run_id(method, **rest):
        return build_run_config({"dataset": "polydigits", "method": method, **rest}).run_id()

    zero = "polydigits-vanilla-mopoe-s0-343ef34a53"
    assert run_id({"beta": 0.0}) == run_id({"beta": 0}) == run_id({"beta": -0.0}) == zero
    assert run_id({"name": "mmvamp", "beta": 1.0, "options": {"alpha": 0.5, "alpha_anneal_steps": 10}},
                  train={"lr": 0.0005}, eval={"classifier_min_accuracy": 0.0}) == "polydigits-vanilla-mmvamp-s0-b87c6b0ed0"
    assert build_run_config({"dataset": "polydigits", "eval": {"classifier_min_accuracy": -0.0}}).eval.classifier_min_accuracy.hex() == "0x0.0p+0"


def test_a_run_config_is_read_by_libyaml_as_pyyaml_reads_it_and_its_errors_are_pyyamls(tmp_path, monkeypatch):
    # yamlio.load(written_by_mmbench=True): `mmbench report` spent 8 of 13 s over 900 runs in PyYAML's pure-Python
    # scanner, so the configs mmbench writes are read by libyaml; values and errors must be what PyYAML's give
    import yaml

    from mmbench import results, yamlio
    from mmbench.results import Run

    if yamlio._FastStrictLoader is None:
        pytest.skip("this PyYAML has no libyaml")
    run = Run(build_run_config({"dataset": "polydigits", "method": {"name": "mmvae", "beta": 2.5}, "seed": 3,
                                "tables": ["T1"], "train": {"lr": 1.0e-4}}), tmp_path)
    run.init()
    text = (run.dir / "config.yaml").read_text(encoding="utf-8")
    fast = yamlio.load(text, "c", written_by_mmbench=True)
    assert fast == yaml.load(text, Loader=yamlio._StrictLoader) and results.parse_config(text, "c")[1] == run.cfg
    twice = text + "seed: 4\n"  # a key given twice: the strict constructor's error, through either parser
    with pytest.raises(ConfigError, match="the key 'seed' is given twice"):
        yamlio.load(twice, "c", written_by_mmbench=True)
    parsers = []

    class Spy(yamlio._FastStrictLoader):
        def __init__(self, stream):
            parsers.append(1)
            super().__init__(stream)

    monkeypatch.setattr(yamlio, "_FastStrictLoader", Spy)
    results.parse_config(text, "c")
    assert parsers == [1]  # the run records' reader takes the fast path
    with pytest.raises(ConfigError, match=r"^c: not valid YAML at line 1, column 1: found character '\\t' that "):
        yamlio.load("\tseed: 1\n", "c", written_by_mmbench=True)  # libyaml refuses it too: PyYAML's words
    tabbed = "methods: [mopoe,\tmvae]\n"  # libyaml reads a list; PyYAML's parser refuses the tab
    assert yamlio.load(tabbed, "c", written_by_mmbench=True) == {"methods": ["mopoe", "mvae"]}
    with pytest.raises(ConfigError, match="found character '\\\\t' that cannot start any token"):
        yamlio.load(tabbed, "suite.yaml")  # a file people write: PyYAML's parser, as before


def test_reading_many_run_configs_resolves_each_config_class_type_hints_once(monkeypatch):
    # config._type_hints: typing.get_type_hints ran for every field of every config read, half of `mmbench report`'s
    # time over 900 runs
    import typing

    from mmbench import config

    calls = []
    real = typing.get_type_hints
    monkeypatch.setattr(typing, "get_type_hints", lambda cls: calls.append(cls) or real(cls))
    config._type_hints.cache_clear()
    for seed in range(20):
        build_run_config({"dataset": "polydigits", "method": {"name": "mopoe"}, "seed": seed,
                          "train": {"epochs": 3}, "eval": {"metrics": ["coherence"]}})
    assert len(calls) == len(set(calls)) <= 6


def test_a_document_read_again_is_a_fresh_copy_and_its_errors_are_raised_again():
    """yamlio.load keeps the values of the texts PyYAML's parser read (reports read the reference files, budgets and
    suites again each time): a second reading gives an equal value that its caller may change without changing the
    next reading's, an alias still shares one object inside its copy, and a text that fails fails every time."""
    from mmbench.errors import ConfigError
    from mmbench.yamlio import load

    text = "a: &x [1, 2]\nb: *x\nc: {d: 3}\n"
    first = load(text, "f.yaml")
    first["c"]["d"] = 99
    first["a"].append(3)
    second = load(text, "f.yaml")
    assert second == {"a": [1, 2], "b": [1, 2], "c": {"d": 3}} and second["a"] is second["b"]
    second["c"]["d"] = 7
    assert load(text, "g.yaml")["c"]["d"] == 3
    for _ in range(2):
        with pytest.raises(ConfigError, match="bad.yaml.*the key 'k' is given twice"):
            load("k: 1\nk: 2\n", "bad.yaml")
