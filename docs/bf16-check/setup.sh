# shellcheck shell=bash
# Sourced by docs/bf16-check/run.sh and eval_precision.sh: the repository root as working directory, the data and
# runs folders, PolyMNIST rebuilt from the MNIST test split ($DATA/mnist-t10k, $DATA/backgrounds), its coherence
# classifiers, and the suite's runs trained and evaluated (all idempotent: what is done is skipped).
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
