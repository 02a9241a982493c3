"""The pinned environment: requirements.lock must serve pyproject.toml (make install runs the same check)."""
import re
import shutil
from pathlib import Path

from mmbench import lockfile

ROOT = Path(__file__).resolve().parents[1]


def _copy(tmp_path):
    for name in ("pyproject.toml", "requirements.lock"):
        shutil.copy(ROOT / name, tmp_path / name)
    return tmp_path / "pyproject.toml", tmp_path / "requirements.lock"


def test_shipped_lock_serves_pyproject():
    assert lockfile.problems(ROOT / "pyproject.toml", ROOT / "requirements.lock") == []
    pins = lockfile.pins(ROOT / "requirements.lock")
    # Every locked line carries hashes (pip --require-hashes installs nothing else) and the torch pair is the
    # Makefile's.
    text = (ROOT / "requirements.lock").read_text()
    assert len(re.findall(r"^\S+==\S+ \\$", text, flags=re.M)) == len(pins)
    assert text.count("--hash=sha256:") >= len(pins)
    torch_pair = re.search(r"^TORCH\s*:=\s*(.+)$", (ROOT / "Makefile").read_text(), flags=re.M).group(1).split()
    for pin in torch_pair:
        name, version = pin.split("==")
        assert pins[name] == version


def test_edited_pyproject_is_refused(tmp_path):
    pyproject, lock = _copy(tmp_path)
    pyproject.write_text(pyproject.read_text().replace('"tabulate>=0.9",', '"tabulate>=0.9",\n    "einops>=0.7",'))
    found = lockfile.problems(pyproject, lock)
    assert any("changed since requirements.lock was made; run `make lock`" in p for p in found)
    assert any(p.startswith("einops (pyproject.toml) is not pinned") for p in found)
    assert lockfile.main(["check", str(lock)]) == 0  # cwd is the repository root: its own files still agree


def test_pin_outside_the_range_is_refused(tmp_path):
    pyproject, lock = _copy(tmp_path)
    lock.write_text(re.sub(r"^pyyaml==\S+", "pyyaml==5.4.1", lock.read_text(), flags=re.M))
    assert lockfile.problems(pyproject, lock) == [
        "pyyaml==5.4.1 in requirements.lock does not satisfy pyproject.toml's 'pyyaml>=6'; run `make lock`"]
    lines = [l for l in lock.read_text().splitlines() if not l.startswith(lockfile.STAMP)]
    lock.write_text("\n".join(lines))
    assert any("has no" in p for p in lockfile.problems(pyproject, lock))


def test_stamp_makes_an_edited_lock_current(tmp_path):
    pyproject, lock = _copy(tmp_path)
    pyproject.write_text(pyproject.read_text().replace('"pyyaml>=6"', '"pyyaml>=6.0"'))
    assert lockfile.problems(pyproject, lock)
    lockfile.stamp(pyproject, lock)
    assert lockfile.problems(pyproject, lock) == []
    assert lock.read_text().count(lockfile.STAMP) == 1


def test_check_exits_1_on_a_stale_lock_and_covers_the_test_extra(tmp_path, monkeypatch):
    """`python -m mmbench.lockfile check` fails (make install stops) when a test-extra dependency is not pinned."""
    pyproject, lock = _copy(tmp_path)
    pyproject.write_text(pyproject.read_text().replace('test = ["pytest>=7",', 'test = ["einops>=0.7", "pytest>=7",'))
    monkeypatch.chdir(tmp_path)
    assert lockfile.main(["check"]) == 1
    assert any(p.startswith("einops (pyproject.toml) is not pinned") for p in lockfile.problems(pyproject, lock))


def test_digest_ignores_dependency_order_and_pins_ignore_name_case(tmp_path):
    """Reordering pyproject's dependencies needs no new lock; `PyYAML==6.0.1` pins pyyaml."""
    pyproject, lock = _copy(tmp_path)
    before = lockfile.digest(pyproject)
    pyproject.write_text(pyproject.read_text().replace('    "torch>=2.1",\n', '').replace(
        '    "pyyaml>=6",\n', '    "pyyaml>=6",\n    "torch>=2.1",\n'))
    assert lockfile.digest(pyproject) == before
    lock.write_text("PyYAML==6.0.1 \\\n")
    assert lockfile.pins(lock) == {"pyyaml": "6.0.1"}


# ----- behaviours a mutation pass (small modules) found unguarded -----
def test_check_reads_the_lock_it_is_given_and_reports_each_problem_on_stderr(tmp_path, monkeypatch, capsys):
    """`check LOCK` judges LOCK (not ./requirements.lock) and prints each problem as `error: ...` on stderr."""
    _copy(tmp_path)  # ./pyproject.toml and a current ./requirements.lock
    stale = tmp_path / "other.lock"
    stale.write_text(re.sub(r"^pyyaml==\S+", "pyyaml==5.4.1", (tmp_path / "requirements.lock").read_text(), flags=re.M))
    monkeypatch.chdir(tmp_path)
    assert lockfile.main(["check"]) == 0
    capsys.readouterr()
    assert lockfile.main(["check", str(stale)]) == 1
    assert capsys.readouterr().err == ("error: pyyaml==5.4.1 in other.lock does not satisfy pyproject.toml's "
                                       "'pyyaml>=6'; run `make lock`\n")


def test_usage_and_a_missing_lock(tmp_path, capsys):
    """Module docstring: the commands are check and stamp (anything else: usage, exit 2); no lock: `make lock`."""
    for argv in ([], ["chek"], ["lock"]):
        assert lockfile.main(argv) == 2
        assert "usage: python -m mmbench.lockfile check|stamp [LOCK]" in capsys.readouterr().err
    pyproject, _ = _copy(tmp_path)
    missing = tmp_path / "none.lock"
    assert lockfile.problems(pyproject, missing) == [f"{missing} is missing; run `make lock`"]


def test_pins_normalise_names_as_pep_503_and_stop_at_an_environment_marker(tmp_path):
    """PEP 503 names (runs of -, _ and . are one -, lower case); a pin's version ends at a space, ';' or '\\'."""
    lock = tmp_path / "requirements.lock"
    lock.write_text("ruamel.yaml==0.18.6 \\\nTyping_Extensions==4.12.2 ; python_version < '3.11' \\\n"
                    "zope..interface==6.4;python_version<'3.12'\n    --hash=sha256:00\n")
    assert lockfile.pins(lock) == {"ruamel-yaml": "0.18.6", "typing-extensions": "4.12.2", "zope-interface": "6.4"}
