#!/bin/bash
# bf16 autocast against fp32 on the CPU, at reduced scale: MoPoE on PolyMNIST rebuilt from the MNIST test split
# (5,000 training tuples, the shared-photograph backgrounds), latent 512, beta 2.5, seeds 0-4 in each precision,
# 20 epochs, metrics on 300 test tuples (docs/bf16-check/suite.yaml); writes docs/bf16-check/result.md. The
# quick-tier check on a GPU is part of docs/gpu-runs/device-check.sh. DATA names the folder holding mnist-t10k/
# (the MNIST test IDX files) and backgrounds/ (photographs):
#   DATA=/path/to/data bash docs/bf16-check/run.sh
source "$(dirname "$0")/setup.sh"  # data, classifiers, the suite trained and evaluated in fp32 scoring
{ echo "Command: \`DATA=<folder with mnist-t10k/ and backgrounds/> bash docs/bf16-check/run.sh\`, $(date -u +%F)," \
       "git $(git rev-parse --short HEAD 2>/dev/null), $(nproc) CPU cores, $(( $(date +%s) - T0 )) s."
  echo; $PY docs/gpu-runs/precision_agreement.py; } > docs/bf16-check/result.md
cat docs/bf16-check/result.md
