#!/bin/bash
# Reduced-scale reproductions on one GPU (results and how to read them: README.md beside this file).
# From the repository root:  bash docs/gpu-runs/run.sh PART OUT [TIER] [MULTIPLICITY]
#   PART a: MoPoE Fig. 3 (vanilla: MVAE, MMVAE, MoPoE) and mrVAE Tables 1a/1b (MoPoE vs mrVAE, coherence)
#   PART b: SMVAE Figs. 2-3 (PolyMNIST) and MM-VAMP Figs. 3/8 (translated PolyMNIST)
#   PART c: MoPoE Fig. 3 and SMVAE Figs. 2-3 (both on vanilla PolyMNIST)
# EXTRA: more `--set` arguments for every run (e.g. "--set eval.classifier_min_accuracy=0.85").
# Data: PolyMNIST rebuilt from the real MNIST test split (two disjoint halves: 5,000 train digits paired
# MULTIPLICITY times, 5,000 test tuples) and five photographs, read from .gpu/mnist-t10k and .gpu/backgrounds.
# LIMIT (seconds, default 480) bounds the runs; unfinished runs are reported as missing.
set -uo pipefail
part=$1; out=$2; tier=${3:-quick}; mult=${4:-12}
export MMBENCH_DATA=${MMBENCH_DATA:-/tmp/mmb/data} MMBENCH_RUNS=${MMBENCH_RUNS:-/tmp/mmb/runs} PYTHONUNBUFFERED=1
M="${PY:-python3} -m mmbench"
mkdir -p "$out"
say() { echo "[$(date +%T)] $*"; }
prep() {  # variant
  say "prepare polymnist $1 (multiplicity $mult)"
  $M prepare polymnist --variant "$1" --rebuild --source .gpu/mnist-t10k --backgrounds .gpu/backgrounds \
     -o mnist_source=test-halves -o "multiplicity=$mult" && \
  say "classifiers polymnist $1" && $M classifiers train polymnist --variant "$1" --epochs 10
}
limit=${LIMIT:-480}
read -r -a extra <<< "${EXTRA:-}"
case $part in
  a) prep vanilla; prep extended; say "runs"
     timeout "$limit" $M run suites/mopoe_iclr21.yaml --tier "$tier" --only polymnist-fig-3 --gpus 0,0,0 "${extra[@]}" &
     timeout "$limit" $M run suites/mrvae.yaml --tier "$tier" --set 'eval.metrics=[coherence]' --gpus 0,0,0,0 "${extra[@]}" &
     wait ;;
  b) prep vanilla; prep translated; say "runs"
     timeout "$limit" $M run suites/smvae_iclr22.yaml --tier "$tier" --only polymnist-fig-2,polymnist-fig-3 --gpus 0,0,0 "${extra[@]}" &
     timeout "$limit" $M run suites/mmvamp.yaml --tier "$tier" --only translated-polymnist --gpus 0,0,0,0,0 "${extra[@]}" &
     wait ;;
  c) prep vanilla; say "runs"
     timeout "$limit" $M run suites/mopoe_iclr21.yaml --tier "$tier" --only polymnist-fig-3 --gpus 0,0,0 "${extra[@]}" &
     timeout "$limit" $M run suites/smvae_iclr22.yaml --tier "$tier" --only polymnist-fig-2,polymnist-fig-3 --gpus 0,0,0,0 "${extra[@]}" &
     wait ;;
esac
say "report"
for r in "$MMBENCH_RUNS"/*/; do  # seconds per phase of every run, from its log
  echo "$(basename "$r"): $(grep -h -o 'train_seconds[^,]*\|eval_seconds[^,]*' "$r"/*.json 2>/dev/null | tr '\n' ' ')"
done
title="GPU $tier tier, PolyMNIST from the MNIST test split (reduced scale, multiplicity $mult)"
$M report --compare reference_results/ --allow-missing --format md --out "$out/report-$part.md" --title "$title" > "$out/report-$part.txt" 2>&1
$M report --compare reference_results/ --allow-missing --format html --out "$out/report-$part.html" --title "$title" >> "$out/report-$part.txt" 2>&1
tar czf "$out/runs-$part.tgz" --exclude='*.pt' -C "$MMBENCH_RUNS" .
say "done"
