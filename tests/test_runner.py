from mmbench.runner import worker_slots


def test_worker_slots():
    assert worker_slots("0,1", 4) == ["0", "1"]  # one worker per listed GPU
    assert worker_slots(" 3 ", 1) == ["3"]
    assert worker_slots(None, 2) == ["", ""]  # CPU workers see no device
    assert worker_slots(None, 0) == [""]


def test_a_run_listed_by_two_experiments_is_scheduled_once_with_both_tables(tmp_path):
    from mmbench.config import build_run_config
    from mmbench.results import Run
    from mmbench.runner import make_packs, unique_runs

    base = {"dataset": "polydigits", "method": {"name": "smvae"}}
    a = Run(build_run_config({**base, "tables": ["SMVAE Fig. 2"]}), tmp_path)
    b = Run(build_run_config({**base, "tables": ["SMVAE Fig. 3"]}), tmp_path)
    other = Run(build_run_config({**base, "seed": 1, "tables": ["SMVAE Fig. 2"]}), tmp_path)
    runs = unique_runs([a, b, other])
    assert [r.id for r in runs] == [a.id, other.id]
    assert runs[0].cfg.tables == ["SMVAE Fig. 2", "SMVAE Fig. 3"]
    # never the same run twice in one pack or in two packs (its lock would refuse the second)
    ids = [r.id for p in make_packs(runs, None, 2) for r in p]
    assert sorted(ids) == sorted({a.id, other.id})
