#!/usr/bin/env bash
# What the coherence classifiers reach on the data this repository can build without downloads
# (results: docs/metrics.md, "What the coherence classifiers reach"):
#   PolyMNIST vanilla rebuilt from the real MNIST *test* split (two disjoint halves; each train digit
#   paired into 12 tuples -> 60,000 train / 5,000 test tuples) and five real photographs, all five
#   classifiers; translated PolyMNIST (3 tuples per digit, 15,000 train tuples), the ResNet classifier
#   of m0 only (CPU time); the simulated rats, all five.
# Usage: bash docs/classifiers/measure.sh DATA_DIR OUT_DIR   (DATA_DIR holds mnist-t10k/ and backgrounds/)
set -euo pipefail
SHARED=${1:?path to the folder holding mnist-t10k/ and backgrounds/}
OUT=${2:?output directory}
BIN=${BIN:-.venv/bin}
mkdir -p "$OUT"
for v in vanilla:12 translated:3; do
  $BIN/mmbench prepare polymnist --variant "${v%:*}" --rebuild --source "$SHARED/mnist-t10k" \
     --backgrounds "$SHARED/backgrounds" -o mnist_source=test-halves -o multiplicity="${v#*:}" --data-root "$OUT/data"
done
$BIN/mmbench prepare rats --simulate --data-root "$OUT/data"
/usr/bin/time -f "wall %e s" $BIN/mmbench classifiers train polymnist --variant vanilla --epochs 10 --data-root "$OUT/data"
/usr/bin/time -f "wall %e s" $BIN/mmbench classifiers train rats --variant simulated --epochs 10 --data-root "$OUT/data"
/usr/bin/time -f "wall %e s" $BIN/mmbench classifiers train polymnist --variant translated --modalities m0 --epochs 10 \
   --data-root "$OUT/data"
