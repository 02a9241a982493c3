#!/bin/bash
# bf16 autocast against fp32 on the CPU, at reduced scale: MoPoE on PolyMNIST rebuilt from the MNIST test split
# (5,000 training tuples, the shared-photograph backgrounds), latent 512, beta 2.5, seeds 0-4 in each precision,
# 20 epochs, metrics on 300 test tuples (docs/bf16-check/suite.yaml); writes docs/bf16-check/result.md. The
# quick-tier check on a GPU is part of docs/gpu-runs/device-check.sh. DATA names the folder holding mnist-t10k/
# (the MNIST test IDX files) and backgrounds/ (photographs):
#   DATA=/path/to/data bash docs/bf16-check/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."  # the repository root
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
SHARED=${DATA:?"set DATA to the folder holding mnist-t10k/ and backgrounds/"}
export MMBENCH_DATA=${MMBENCH_DATA:-/tmp/bf16-check/data} MMBENCH_RUNS=${MMBENCH_RUNS:-/tmp/bf16-check/runs}
PY=${PY:-python3}
T0=$(date +%s)
$PY -m mmbench prepare polymnist --variant vanilla --rebuild --source "$SHARED/mnist-t10k" \
  --backgrounds "$SHARED/backgrounds" -o mnist_source=test-halves -o multiplicity=1
$PY -m mmbench classifiers train polymnist --variant vanilla --epochs 10
$PY -m mmbench run docs/bf16-check/suite.yaml --jobs 1
{ echo "Command: \`DATA=<folder with mnist-t10k/ and backgrounds/> bash docs/bf16-check/run.sh\`, $(date -u +%F)," \
       "git $(git rev-parse --short HEAD 2>/dev/null), $(nproc) CPU cores, $(( $(date +%s) - T0 )) s."
  echo; $PY docs/gpu-runs/precision_agreement.py; } > docs/bf16-check/result.md
cat docs/bf16-check/result.md
