"""Every `mmbench` command the documentation and the prepared scripts show names a command and options the CLI has,
and every `--set KEY=...` a config field: a renamed option otherwise lives on in README.md, or in
docs/gpu-runs/device-check.sh, where it fails only on a lent GPU (whose minutes are few)."""
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import typer.main

from mmbench.cli import app
from mmbench.config import ConfigError, check_path

ROOT = Path(__file__).resolve().parents[1]
CLI = typer.main.get_command(app)
# where a command line ends: a shell pipe, list, redirection, comment or a closing bracket of the prose around it
END = re.compile(r"^(\||&&|;|\|\||#|\)|[0-9]?>)")
WORD = re.compile(r"[a-z][a-z0-9-]*")


def markdown_code(text: str):
    """The lines of a Markdown text's fenced code blocks, and its inline code spans."""
    for block in re.findall(r"^```[^\n]*\n(.*?)^```", text, re.S | re.M):
        yield from block.replace("\\\n", " ").splitlines()
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    for paragraph in prose.split("\n\n"):
        yield from paragraph.replace("\n", " ").split("`")[1::2]


def shell_lines(text: str):
    """A shell script's (or Makefile's, or YAML comment's) lines, continuations joined."""
    return text.replace("\\\n", " ").splitlines()


def invocations(line: str, callers=("mmbench", "$M", "$(BIN)/mmbench", ".venv/bin/mmbench")):
    """The argument lists after each way of calling mmbench in `line` (up to where its command ends)."""
    words = line.split()
    for i, w in enumerate(words):
        if w in callers and i + 1 < len(words) and WORD.fullmatch(words[i + 1]):
            args = []
            for a in words[i + 1:]:
                if END.match(a):
                    break
                args.append(a)
            yield args


def problem(args) -> str:
    """What is wrong with `mmbench ARGS` (its command path, its options); empty when nothing is."""
    cmd, path, rest = CLI, [], list(args)
    while hasattr(cmd, "commands") and rest and WORD.fullmatch(rest[0]):
        sub = cmd.commands.get(rest[0])
        if sub is None:
            return f"mmbench has no command `{' '.join(path + [rest[0]])}`"
        path.append(rest.pop(0))
        cmd = sub
    if hasattr(cmd, "commands"):
        return ""  # a group named alone (e.g. `mmbench bench`): its help
    known = {o for p in cmd.params for o in (*p.opts, *getattr(p, "secondary_opts", ()))}
    unknown = []
    for a in rest:
        m = re.match(r"[\[(]*(--?[A-Za-z][A-Za-z0-9-]*)", a)  # `[--tier full|quick]`, `--out=FILE`
        if m and m.group(1) not in known:
            unknown.append(m.group(1))
    return f"`mmbench {' '.join(path)}` has no option {', '.join(unknown)}" if unknown else ""


def set_paths(line: str):
    """The config paths of `--set path=value` in a line (the placeholder KEY=VALUE is upper case: not matched)."""
    return re.findall(r"--set[ =]+['\"]?([a-z_][a-z0-9_.]*)=", line)


def documented_lines():
    """(file, text, prose) for the code of the Markdown documents, and the lines of the scripts, Makefile and suite
    files; prose: the text is a comment, where "mmbench" may begin a sentence ("mmbench itself ...")."""
    # the documents (not the outputs recorded beside them, e.g. docs/gpu-runs/h200-2026-12-04/: what ran then)
    for f in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "docs").glob("*/README.md"))]:
        for line in markdown_code(f.read_text()):
            yield f, line, False
    for f in [*sorted((ROOT / "docs").rglob("*.sh")), ROOT / "Makefile", ROOT / ".ci" / "run",
              *sorted((ROOT / "suites").glob("*.yaml"))]:
        for line in shell_lines(f.read_text()):
            m = re.search(r"(^|\s)#", line)  # a comment: from a # that begins a word
            code, comment = (line, "") if m is None else (line[:m.start()], line[m.end():])
            yield f, code, f.suffix == ".yaml"  # a suite's text values are prose too
            yield f, comment, True


def commands_in(text: str, prose: bool):
    """The argument lists of the mmbench commands in `text`; in prose, only those naming one of its commands."""
    return [a for a in invocations(text) if not prose or a[0] in CLI.commands]


def test_the_checker_sees_what_is_wrong():
    """The checks below can fail: a command, a sub-command and an option that do not exist are named; a real
    command with real options, a `[...]` usage line and a group alone pass."""
    assert problem(["nosuch"]) == "mmbench has no command `nosuch`"
    assert problem(["bench", "stepz"]) == "mmbench has no command `bench stepz`"
    assert problem(["run", "suites/quickstart.yaml", "--dry-runn"]) == "`mmbench run` has no option --dry-runn"
    assert problem(["run", "SUITE", "[--tier", "full|quick|smoke]", "--gpus=0,1", "--dry-run"]) == ""
    assert problem(["bench", "steps", "--pack", "1,5", "--methods", "mopoe"]) == ""
    assert problem(["bench"]) == ""
    assert commands_in("mmbench itself resolves nothing; mmbench run --dry-runn", prose=True) == [
        ["run", "--dry-runn"]]
    assert [a for a in invocations("x; $M bench steps --pack 5 > out.md 2>&1 | tail -2")] == [
        ["bench", "steps", "--pack", "5"]]
    assert set_paths("RUNSET=(--set train.max_train=256 --set 'eval.ll_samples=2' --set KEY=VALUE)") == [
        "train.max_train", "eval.ll_samples"]
    with pytest.raises(ConfigError):
        check_path("train.max_trian", "--set")


def test_every_documented_command_and_option_exists():
    found, wrong = 0, []
    for f, line, prose in documented_lines():
        for args in commands_in(line, prose):
            found += 1
            if problem(args):
                wrong.append(f"{f.relative_to(ROOT)}: {' '.join(args)[:100]}: {problem(args)}")
    assert found > 150, f"only {found} mmbench commands found in the documents: is the extraction broken?"
    assert not wrong, "\n".join(wrong)


def test_every_documented_set_names_a_config_field():
    found, wrong = 0, []
    for f, line, _ in documented_lines():
        for path in set_paths(line):
            found += 1
            try:
                check_path(path, "--set")
            except ConfigError as e:
                wrong.append(f"{f.relative_to(ROOT)}: --set {path}: {e}")
    assert found > 30, f"only {found} --set settings found in the documents: is the extraction broken?"
    assert not wrong, "\n".join(wrong)


SCRIPTS = sorted((ROOT / "docs").rglob("*.sh")) + [ROOT / ".ci" / "run", ROOT / ".ci" / "slurm-up.sh"]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_scripts_parse(script):
    """`bash -n`: a script that does not parse (device-check.sh's would be found out on a lent GPU) fails here."""
    r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_the_scripts_have_no_shellcheck_errors():
    """shellcheck at its error level (.ci/run installs it; skipped where it is not installed)."""
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    r = subprocess.run(["shellcheck", "-S", "error", *map(str, SCRIPTS)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_test_a_script_or_document_names_exists():
    """`tests/FILE.py::test_name` in the scripts (device-check.sh's GPU correctness tests) and documents names a test
    function of that file: a renamed test would otherwise be "not found" on a lent GPU."""
    texts = [(f, f.read_text()) for f in [*SCRIPTS, ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
                                           *sorted((ROOT / "docs").glob("*/README.md"))]]
    named = [(f, path, name) for f, text in texts
             for path, name in re.findall(r"(tests/[\w/]+\.py)::(test_\w+)(?![\w…])", text)]
    assert len({n for *_, n in named}) >= 10, named  # device-check.sh alone names ten
    wrong = [f"{f.relative_to(ROOT)}: {path}::{name}" for f, path, name in named
             if not (ROOT / path).exists() or not re.search(rf"^def {name}\(", (ROOT / path).read_text(), re.M)]
    assert not wrong, "no such test:\n" + "\n".join(wrong)
