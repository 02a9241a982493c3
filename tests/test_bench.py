"""`mmbench bench`: counts it cannot time with are one line, before any timing."""
import sys

import pytest

from mmbench.errors import MMBenchError


@pytest.mark.parametrize("args, message", [
    (["--steps", "0"], "error: --steps 0: must be at least 1"),
    (["--steps", "-2", "--pack", "1,2"], "error: --steps -2: must be at least 1"),
    (["--batch-size", "0"], "error: --batch-size 0: must be at least 1"),
    (["--latent-dim", "0"], "error: --latent-dim 0: must be at least 1"),
    (["--modalities", "2,0"], "error: --modalities 2,0: numbers of modalities must be at least 1"),
    (["--modalities", "2,x"], "error: --modalities '2,x': expected comma-separated numbers of modalities"),
])
def test_bench_steps_counts_are_checked_first(args, message, monkeypatch, capsys):
    import mmbench.bench as bench
    from mmbench import cli

    monkeypatch.setattr(bench, "_timed", lambda *a, **k: pytest.fail("timed before checking the counts"))
    monkeypatch.setattr(sys, "argv", ["mmbench", "bench", "steps", "--methods", "mopoe", "--scaling", "mopoe",
                                      "--batch-size", "4", "--latent-dim", "4", *args])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_bench_load_repeats_must_be_positive(monkeypatch, capsys, tmp_path):
    from mmbench import cli

    monkeypatch.setattr(sys, "argv", ["mmbench", "bench", "load", "polydigits", "--repeats", "0",
                                      "--data-root", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == 2 and "error: --repeats 0: must be at least 1" in capsys.readouterr().err


def test_step_time_refuses_zero_steps():
    from mmbench.bench import step_time

    with pytest.raises(MMBenchError, match="time at least 1 step"):
        step_time("mopoe", 2, batch_size=2, latent_dim=4, steps=0)
    assert step_time("mopoe", 2, batch_size=2, latent_dim=4, steps=1, warmup=0)["median_s"] > 0
