#!/bin/bash
# eval.precision bf16 against fp32 on the CPU, paired: the models of docs/bf16-check/run.sh (MoPoE, PolyMNIST rebuilt
# from the MNIST test split, 5 seeds per train.precision, 20 epochs) evaluated again with bf16 decoders; the fp32
# evaluation is kept beside it (metrics.<scoring>.json). Trains and evaluates in fp32 first whatever run.sh has not.
# Then the same for the quickstart's three trained models.
# Writes docs/bf16-check/eval-precision.md:
#   DATA=/path/to/data bash docs/bf16-check/eval_precision.sh
source "$(dirname "$0")/setup.sh"  # data, classifiers, the suite trained and evaluated in fp32 scoring
$PY -m mmbench run docs/bf16-check/suite.yaml --jobs 1 --set eval.precision=bf16
# Trained models too: the quickstart's MoPoE, MVAE and MMVAE on the embedded polydigits (conditional coherence
# 0.38-0.98), in their own runs folder.
QS=${QS_RUNS:-/tmp/bf16-check/quickstart-runs}
MMBENCH_RUNS=$QS $PY -m mmbench run suites/quickstart.yaml --jobs 1
MMBENCH_RUNS=$QS $PY -m mmbench run suites/quickstart.yaml --jobs 1 --set eval.precision=bf16
{ echo "Command: \`DATA=<folder with mnist-t10k/ and backgrounds/> bash docs/bf16-check/eval_precision.sh\`," \
       "$(date -u +%F), git $(git rev-parse --short HEAD 2>/dev/null), $(nproc) CPU cores, $(( $(date +%s) - T0 )) s."
  echo; echo "## PolyMNIST rebuilt from the MNIST test split: 20-epoch MoPoE models, 5 seeds per train.precision"
  $PY docs/bf16-check/eval_precision.py
  echo; echo "## The quickstart's models (polydigits, suites/quickstart.yaml)"
  $PY docs/bf16-check/eval_precision.py "$QS"; } > docs/bf16-check/eval-precision.md
cat docs/bf16-check/eval-precision.md
