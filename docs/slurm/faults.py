"""Fault figures of `mmbench run --executor slurm` (README, "Reliability on Slurm").

    PYTHONPATH=. python docs/slurm/faults.py --runs 6 --out /tmp/faults
    PYTHONPATH=. python docs/slurm/faults.py --runs 6 --pack 3 --out /tmp/faults-packed

Submits a suite of N tiny polydigits runs (N seeds of mopoe, 2 epochs of 40 steps) to the Slurm that
`sinfo` sees, and while they train sends each a fault in turn: `scontrol requeue`, the pre-timeout
signal (`scancel --signal=USR2`) and `scancel` (with `--pack N`: N runs per array task, one fault per task,
and the local reference trained with the same packs). Requeued jobs are released at once (Slurm otherwise holds
them ~2 minutes). After the first command returns, the same command again resumes the cancelled runs.
Then it counts: runs lost (no metrics.json), runs computed twice (more epoch lines in a log than epochs),
runs whose metrics differ from the same run trained locally without faults; and times: submission to the
first training step per job, and resubmitting the whole (finished) suite.
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SUITE = """name: faults
defaults:
  method: {{latent_dim: 8, beta: 1.0, image_likelihood: gaussian}}
  train: {{epochs: 2, batch_size: 32, lr: 2.0e-3, max_train: 1280, max_test: 64}}
  eval: {{metrics: [latent_classification], test_samples: 64, lr_train_samples: 64}}
slurm: {{mem: 4G, time: 20}}
experiments:
  - {{name: f, dataset: polydigits, variant: vanilla, methods: [mopoe], seeds: {seeds}}}
"""


def cli(*args, runs, data, background=False):
    cmd = [sys.executable, "-m", "mmbench", "run", *map(str, args), "--runs-dir", str(runs), "--data-root", str(data)]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", COLUMNS="200")
    if background:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, env=env, capture_output=True, text=True)


def progress(d: Path):
    try:
        return json.loads((d / "progress.json").read_text())
    except (OSError, ValueError):
        return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=6)
    ap.add_argument("--out", type=Path, default=Path("/tmp/mmbench-faults"))
    ap.add_argument("--pack", type=int, default=1, help="runs per array task (mmbench run --pack)")
    a = ap.parse_args()
    pack = ("--pack", str(a.pack))
    shutil.rmtree(a.out, ignore_errors=True)
    a.out.mkdir(parents=True)
    data, runs, local = a.out / "data", a.out / "runs", a.out / "local"
    suite = a.out / "suite.yaml"
    suite.write_text(SUITE.format(seeds=list(range(a.runs))))
    out = cli(suite, "--dry-run", runs=runs, data=data)  # prepares nothing; checks the suite
    assert out.returncode == 0, out.stderr

    faults = ["requeue", "usr2", "scancel"]
    plan, first_step, done_faults = {}, {}, []
    t_submit = time.time()
    proc = cli(suite, "--executor", "slurm", *pack, runs=runs, data=data, background=True)
    stop = threading.Event()

    released, senders = set(), []

    def watch() -> None:
        k = 0
        while not stop.is_set():
            q = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T"], capture_output=True, text=True).stdout
            queue = dict(line.split()[:2] for line in q.splitlines() if line.strip())
            for name, f, jid in done_faults:  # release requeued jobs at once (Slurm holds them ~2 min)
                if f != "scancel" and jid not in released and queue.get(jid) == "PENDING":
                    subprocess.run(["scontrol", "update", f"JobId={jid}", "StartTime=now"], capture_output=True)
                    released.add(jid)
            for d in sorted(p for p in runs.glob("polydigits-*") if p.is_dir()):
                p, job = progress(d), d / "slurm.json"
                if not (p and job.exists()) or not p["phase"].startswith("train"):
                    continue
                j = json.loads(job.read_text())
                first_step.setdefault(d.name, time.time() - j["submitted"])
                jid = j["job_id"]
                if jid not in plan and p["done"] >= 3:  # one fault per array task (a pack's runs share one)
                    plan[jid] = f = faults[k % len(faults)]
                    k += 1
                    cmd = {"requeue": ["scontrol", "requeue", jid], "usr2": ["scancel", "--signal=USR2", jid],
                           "scancel": ["scancel", jid]}[f]
                    # not waited for: scancel --signal retries for ~90 s once the job has requeued itself
                    senders.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
                    done_faults.append((d.name, f, jid))
            time.sleep(0.2)

    th = threading.Thread(target=watch, daemon=True)
    th.start()
    log1 = proc.communicate()[0]
    t_first = time.time() - t_submit
    t0 = time.time()
    again = cli(suite, "--executor", "slurm", *pack, runs=runs, data=data)
    t_again = time.time() - t0
    stop.set()
    for p in senders:
        p.kill()
        p.wait()
    t0 = time.time()
    third = cli(suite, "--executor", "slurm", *pack, runs=runs, data=data)
    t_resubmit = time.time() - t0
    # The same runs without faults, through the local executor.
    t0 = time.time()
    loc = cli(suite, "-j", "2", *pack, runs=local, data=data)
    t_local = time.time() - t0
    lost = twice = differ = 0
    per_run = {}
    for d in sorted(p for p in runs.glob("polydigits-*") if p.is_dir()):
        text = (d / "log.txt").read_text()
        jobs = re.findall(r" slurm job (\S+) ", text)  # every array task that worked on the run
        per_run[d.name] = {"fault": next((plan[j] for j in jobs if j in plan), None), "stops": text.count(" stopped ("),
                           "resumes": text.count(" resumed from "), "jobs": text.count(" slurm job ") -
                           text.count("requeueing") - text.count("waiting")}
        m = d / "metrics.json"
        if not m.exists():
            lost += 1
            continue
        epochs = len(re.findall(r" epoch epoch=", (d / "log.txt").read_text()))
        twice += epochs > 2
        ref = json.loads((local / d.name / "metrics.json").read_text())["metrics"]
        differ += json.loads(m.read_text())["metrics"] != ref
    res = {
        "runs": a.runs, "pack": a.pack, "faults": {f: sum(1 for _, g, _ in done_faults if g == f) for f in faults},
        "first_command_rc": proc.returncode, "second_command_rc": again.returncode, "third_command_rc": third.returncode,
        "runs_lost": lost, "runs_computed_twice": twice, "runs_differing_from_local": differ,
        "submission_to_first_step_s": {"min": round(min(first_step.values()), 1), "median": round(statistics.median(first_step.values()), 1),
                                       "max": round(max(first_step.values()), 1)} if first_step else None,
        "first_command_s": round(t_first, 1), "second_command_s (resumes the cancelled)": round(t_again, 1),
        "resubmit_finished_suite_s": round(t_resubmit, 1), "local_executor_s": round(t_local, 1),
        "local_rc": loc.returncode, "per_run": per_run,
    }
    print(json.dumps(res, indent=1))
    (a.out / "faults.json").write_text(json.dumps(res, indent=1))
    (a.out / "first_command.log").write_text(log1)


if __name__ == "__main__":
    main()
