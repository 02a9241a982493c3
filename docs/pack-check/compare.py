"""Compare the metrics.json of the same runs in two runs folders: `python docs/pack-check/compare.py A B`.

Prints how many metric values are equal to the last bit (NaN equal to NaN) and the first that are not; exits 1 if
any differ or a run of A is missing from B."""
import json
import sys
from pathlib import Path


def main(a: Path, b: Path) -> int:
    n = same = 0
    diffs = []
    runs = sorted(d for d in a.iterdir() if (d / "metrics.json").exists())
    for d in runs:
        other = b / d.name / "metrics.json"
        if not other.exists():
            print(f"{d.name}: no metrics.json in {b}")
            return 1
        ma = json.loads((d / "metrics.json").read_text())["metrics"]
        mb = json.loads(other.read_text())["metrics"]
        for k in sorted(set(ma) | set(mb)):
            n += 1
            x, y = ma.get(k), mb.get(k)
            if x == y or (isinstance(x, float) and isinstance(y, float) and x != x and y != y):
                same += 1
            else:
                diffs.append((d.name, k, x, y))
    print(f"{same} of {n} metric values equal to the last bit over {len(runs)} runs")
    for row in diffs[:10]:
        print(*row)
    return 1 if diffs or not runs else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
