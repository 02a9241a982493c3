#!/bin/bash
# Prepare the data first (see README.md here). Smoke-tier runs for the example report (docs/example-report). Data: PolyMNIST rebuilt from the real MNIST
# test split (two halves) and five real photographs; rats from the simulator with the real trial tables.
set -x
cd "$(dirname "$0")/../.." || exit 1
export MMBENCH_DATA=/tmp/ex/data MMBENCH_RUNS=/tmp/ex/runs OMP_NUM_THREADS=2
M=.venv/bin/mmbench
$M run suites/mopoe_iclr21.yaml --tier smoke --only polymnist-fig-3 2>&1 | tail -1
$M run suites/mrvae.yaml --tier smoke --set 'eval.metrics=[coherence]' 2>&1 | tail -1
$M run suites/smvae_iclr22.yaml --tier smoke --only polymnist-fig-2,polymnist-fig-3 2>&1 | tail -1
$M run suites/mmvamp.yaml --tier smoke --only rats --set variant=simulated 2>&1 | tail -1
$M run suites/mmvamp.yaml --tier smoke --only translated-polymnist 2>&1 | tail -1
rm -f docs/example-report/*.png  # figures of runs no longer in the runs directory would stay behind
T="mmbench example report (SMOKE TIER: pipeline check, not results)"
$M report --compare reference_results/ --allow-missing --title "$T" --format html --out docs/example-report/index.html --plots docs/example-report/
$M report --compare reference_results/ --allow-missing --title "$T" --format md --out docs/example-report/report.md
rm -f docs/example-report/*.svg
# the HTML page in headless Chromium: fails on a broken figure or a script error; keeps a screenshot of the page's top
.venv/bin/python tests/browser.py docs/example-report/index.html --screenshot docs/example-report/screenshot.png
