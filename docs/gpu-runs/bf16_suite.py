"""The bf16 twin of MoPoE Fig. 3's MoPoE runs, for device-check.sh: the `polymnist-fig-3` entry of
suites/mopoe_iclr21.yaml (MoPoE only) with `train.precision: bf16`, written from that suite (its defaults, tiers and
overrides) so that the bf16 runs cannot drift from the fp32 runs precision_agreement.py compares them with (a copy
typed into the script once lacked the suite's `eval.joint_samples`, and the comparison refused the runs).

`python docs/gpu-runs/bf16_suite.py OUT.yaml`"""
import copy
import sys
from pathlib import Path

import yaml

SUITE = Path(__file__).resolve().parents[2] / "suites" / "mopoe_iclr21.yaml"
ENTRY = "polymnist-fig-3"


def bf16_suite(src: Path = SUITE) -> dict:
    suite = yaml.safe_load(Path(src).read_text())
    (exp,) = [e for e in suite["experiments"] if e["name"] == ENTRY]
    exp = copy.deepcopy(exp)
    exp.update(name="mopoe-bf16", reproduces=["bf16 check"], methods=["mopoe"])
    overrides = exp.setdefault("overrides", {})
    overrides["train"] = {**overrides.get("train", {}), "precision": "bf16"}
    return {"name": "bf16-check",
            "description": f"MoPoE x {len(exp['seeds'])} seeds as {ENTRY} of {Path(src).name}, with train.precision bf16 "
                           f"(docs/gpu-runs/bf16_suite.py, for device-check.sh).",
            "defaults": suite.get("defaults", {}), "tiers": suite.get("tiers", {}), "experiments": [exp]}


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python docs/gpu-runs/bf16_suite.py OUT.yaml")
    Path(sys.argv[1]).write_text(yaml.safe_dump(bf16_suite(), sort_keys=False))
