#!/bin/bash
# One prepared GPU check of the speed work (issue 13), fitting in 8 minutes on one H100/H200. The device returns at
# most 8 files from $OUT, so the results are written to $RES (default /tmp/dc/results) and, after every part,
# packed into $OUT/results.tgz; $OUT also gets log.txt, runs.tgz (run directories without checkpoints) and copies
# of steps-packed.md, eval-time.txt, bf16-vs-fp32.md and report.md. The files of results.tgz:
#   env.txt                 GPU, torch, git commit, the Python packages installed from $WHEELS
#   gpu-tests.txt           correctness on the GPU: the random streams through test losses, checkpoints and resume,
#                           a pack of 3 against 3 runs alone (looped, vmapped, vmapped with MMBENCH_PACK_CONV=bmm), bf16
#                           packs, a β sweep's pack and MM-VAMP's (α annealed on the device) against their runs
#                           alone, MM-VAMP's rates at a device α under bf16 autocast against a Python float α's, a
#                           run trained with captured steps (`mmbench run --compile`, CUDA graphs) against the same
#                           run uncaptured, a resume from fused Adam to foreach and back, training with TF32
#                           matmuls (MMBENCH_MATMUL_TF32=1) and evaluating without, as pytest tests
#   steps-packed.md         `bench steps --pack`: run-steps/s per method unpacked and packed (fp32), best pack
#   steps-packed-bf16.md    the same for MoPoE in bf16 (a bf16 pack loops over its runs: under vmap autocast misses convolutions)
#   steps-packed-cudnn.md   MoPoE's packs again with cuDNN benchmark mode (`--cudnn-benchmark`; GPU only)
#   steps-packed-loop.md    MoPoE pack of 5 looped over the runs (MMBENCH_PACK_MODE=loop) instead of vmapped
#   steps-mrvae.md          the mrVAE step next to MoPoE's and the bare-network floor (step-time table)
#   steps-mrvae-packed.md   mrVAE's run-steps/s unpacked and in a pack of 5
#   kernel-choices.md       per layer of the PolyMNIST CNN at packs of 5 and 15: vmapped (grouped convolutions, what a
#                           pack runs) against looped, im2col + bmm (fp32, TF32) and channels_last grouped kernels;
#                           Adam foreach against fused and for-loop (docs/gpu-runs/kernel_choices.py; each checked equal)
#   steps-packed-bmm.md     MoPoE's packs of 5 and 15 with their convolutions as batched matmuls (MMBENCH_PACK_CONV=bmm)
#   steps-packed-bmm-tf32.md  the same with TF32 matmuls (MMBENCH_MATMUL_TF32=1), if time is left
#   fig3-epochs.txt         how many epochs of MoPoE Fig. 3 the remaining budget allows, and why
#   fig3 runs               MoPoE Fig. 3 (MVAE, MMVAE, MoPoE x 5 seeds) on PolyMNIST rebuilt from the real
#                           MNIST test split, packed (one pack of 5 per method), for that many epochs;
#                           alongside, MoPoE x 5 seeds in bf16 (a 4th worker) for the bf16-vs-fp32 check
#   fig3-pace.md            each pack's recorded training rate, the fp32 packs' sum and the GPU-hours of Fig. 3's
#                           paper budget at that pace (docs/gpu-runs/fig3_pace.py)
#   bf16-vs-fp32.md         per metric: fp32 mean ± sd over 5 seeds vs bf16, and whether they agree
#   eval-time.txt           full-budget evaluation time of one Fig. 3 MoPoE model (docs/eval_time.py full [bf16]),
#                           per metric, with fp32 and with bf16 decoders (eval.precision)
#   report.md / report.txt  `mmbench report --compare reference_results/ --allow-missing`
#   steps-compiled.md       packed MoPoE step captured with torch.compile(mode="reduce-overhead"), if time is left
#   steps-compiled-profiled.md  the same again with its steps profiled (profiles/captured/), if time is left
#   profiles/               every timed step of the step tables profiled (`bench steps --profile`): per table a folder,
#                           per step the operators and kernels with the most device time, and in the tables the
#                           device's busy time per step (kernel_ms, kernel_share: launch-bound or kernel-bound)
#   steps-mrvae-captured.md the unpacked mrVAE and MoPoE steps captured the same way, if time is left
#   projection.txt          `mmbench run SUITE --dry-run --step-times steps-packed.md` for every suite
#   steps-suite-SUITE.md    `bench steps --suite suites/SUITE.yaml`: run-steps/s at each step shape of the suite's runs
#   projection-suites.txt   `mmbench run SUITE --dry-run --step-times steps-suite-SUITE.md`: every run from its own shape
#   log.txt                 everything printed (also in $OUT)
#
# On the device (repository root; DATA names the folder holding mnist-t10k/ (the MNIST test IDX files) and
# backgrounds/ (five photographs)):
#   DATA=/path/to/data OUT=$OUT bash docs/gpu-runs/device-check.sh
# The device image lacks pytorch-fid (mmbench imports it with its metrics) and cannot download: WHEELS (default
# DATA/wheels) holds its wheel, made here with `pip download --no-deps -d DATA/wheels pytorch-fid==0.3.0`; any of
# mmbench's imports still missing after that stops the script at once, naming it.
# A second, shorter run of some parts (the device returns after each call; a lease may allow a second one):
#   PARTS=correctness,fig3,report,captured EPOCHS=2 RESERVE=30 CAPTURE_PACKS=15 BUDGET=370 \
#   GPU_TESTS=tests/test_pack.py::test_pack_of_three_equals_three_alone ...
# PARTS (default all), in the order they run: correctness, steps (its fp32 table first, then captured, then its other
# tables), fig3, evaltime, report, projection, kernels (then the captured steps' profiles, with captured),
# suitesteps (SUITES, default all four; SUITE_PACKS default 5,15);
# data is always prepared;
# EPOCHS fixes Fig. 3's epochs instead of sizing them from the step table; RESERVE: seconds Fig. 3 leaves for the parts
# after it (default 170); OVERLAP: how much four packs sharing the GPU overlap (default 2.5, measured on an H200)
# when EPOCHS are sized; GPU_TESTS replaces the correctness tests; CAPTURE_PACKS: captured MoPoE packs only;
# RUN_FLAGS: more options for the fp32 Fig. 3 `mmbench run` (e.g. --compile: its packs trained with captured steps;
# GPU only); MPS=1: Fig. 3's four packs share the GPU through CUDA MPS, where it starts (else they time-slice it, as
# by default); PROFILE=0 leaves the steps unprofiled. Parts depend on earlier ones: projection on steps, evaltime on fig3's runs; report names EPOCHS.
# Dry mode on the CPU (tiny shapes, 1 epoch, a 256-tuple subset; checks the script, measures nothing):
#   DATA=/path/to/data DEVICE=cpu SCALE=tiny OUT=/tmp/dc bash docs/gpu-runs/device-check.sh
set -uo pipefail
OUT=${OUT:-/tmp/device-check}; RES=${RES:-/tmp/dc/results}; DEVICE=${DEVICE:-cuda}; SCALE=${SCALE:-full}; BUDGET=${BUDGET:-480}
SHARED=${DATA:?"set DATA to the folder holding mnist-t10k/ and backgrounds/"}
export MMBENCH_DATA=${MMBENCH_DATA:-/tmp/dc/data} MMBENCH_RUNS=${MMBENCH_RUNS:-/tmp/dc/runs} PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PY:-python3}
PARTS=${PARTS:-all}
part() { [ "$PARTS" = all ] || [[ ",$PARTS," == *",$1,"* ]]; }
M="$PY -m mmbench"
rm -rf "$RES"  # this run's results only (a warm machine or a second dry run may hold an earlier run's)
# and its runs only: an earlier attempt's runs (other epochs: other run ids) would be picked up beside this one's
[ "$MMBENCH_RUNS" = /tmp/dc/runs ] && rm -rf /tmp/dc/runs; rm -rf /tmp/dc/evaltime
mkdir -p "$OUT" "$RES" "$MMBENCH_DATA" "$MMBENCH_RUNS"
exec > >(tee -a "$OUT/log.txt") 2>&1
# $OUT after each part: results.tgz (written whole, then renamed), log.txt, the key tables; 8 files at most
snap() {
  cp "$OUT/log.txt" "$RES/log.txt" 2>/dev/null
  tar czf "$OUT/.results.tgz" -C "$RES" . 2>/dev/null && mv -f "$OUT/.results.tgz" "$OUT/results.tgz"
  for f in steps-packed.md eval-time.txt bf16-vs-fp32.md report.md; do [ -f "$RES/$f" ] && cp "$RES/$f" "$OUT/"; done
  return 0
}
T0=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
say() { echo "[$(date +%T) +$(( $(date +%s) - T0 ))s] $*"; }

# prof NAME: the option profiling a step table's steps into profiles/NAME/ (PROFILE=0: none)
prof() { [ "${PROFILE:-1}" = 0 ] || echo "--profile $RES/profiles/$1"; }
# to SECONDS: a part's time limit on the GPU; none in the dry mode (a shared CPU may be arbitrarily slow)
to() { if [ "$SCALE" = tiny ]; then echo 0; else echo "$1"; fi; }
# lim SECONDS: the same, but no more than what is left of BUDGET (less 5 s for the snapshot after it)
# (never 0, which would be no limit at all)
lim() { if [ "$SCALE" = tiny ]; then echo 0; else l=$(( $(left) - 5 )); [ "$l" -lt 1 ] && l=1
        [ "$l" -lt "$1" ] && echo "$l" || echo "$1"; fi; }
# fits SECONDS: whether a table that needs about that long still fits the budget (always in the dry mode); else says so
fits() { if [ "$SCALE" = tiny ] || [ "$(left)" -gt "$1" ]; then return 0; fi
         say "skipped: $2 (needs ~$1 s, $(left) s left)"; return 1; }
if [ "$SCALE" = tiny ]; then
  B=16; LAT=16; STEPS=1; PACKS=1,3; METHODS=mopoe,mvae; MULT=1; CLF_EPOCHS=1
  RUNSET=(--set train.max_train=256 --set train.max_test=128 --set eval.test_samples=128
          --set eval.lr_train_samples=128 --set eval.ll_samples=2 --set eval.classifier_min_accuracy=0
          --set method.latent_dim=16 --set eval.classifier_epochs=1)
else
  B=256; LAT=512; STEPS=5; PACKS=${PACKS:-1,5,15}; MULT=12; CLF_EPOCHS=10
  # the Fig. 3 methods and two others fit the budget; METHODS=... for more (each takes ~10-15 s)
  METHODS=${METHODS:-mopoe,mvae,mmvae,mopoe_eq5,aggregated}
  # metrics on 1,000 test tuples (the quick tier uses 2,000) so 20 evaluations fit; eval-time.txt times the full budget
  RUNSET=(--set eval.test_samples=1000 --set eval.classifier_min_accuracy=0.85)
fi
if [ "$DEVICE" = cuda ]; then GPUS=(--gpus 0,0,0); GPU4=(--gpus 0); else GPUS=(--jobs 1); GPU4=(--jobs 1); fi
if [ "$DEVICE" != cuda ] && [[ " ${RUN_FLAGS:-} " == *" --compile "* ]]; then  # CUDA graphs need a GPU
  RUN_FLAGS=$(echo " $RUN_FLAGS " | sed 's/ --compile / /g'); echo "dry mode: --compile left out of RUN_FLAGS (GPU only)"
fi

say "environment"
WHEELS=${WHEELS:-$SHARED/wheels}
# the module an import of mmbench's CLI, metrics and the tests stops at (nothing when all import; a warning on
# stderr is not a missing module: the exit status decides)
missing() { $PY -c "import pytorch_fid, typer, rich, pandas, sklearn, scipy, yaml, tabulate, torchvision, matplotlib, \
threadpoolctl, pytest, mmbench.cli, mmbench.registry, mmbench.metrics.fid" >/dev/null 2>/tmp/dc-import.err \
  || tail -1 /tmp/dc-import.err; }
if [ -n "$(missing)" ] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then  # into a folder of its own: the image's is left as is
  $PY -m pip install --quiet --no-deps --no-index --target /tmp/dc-site "$WHEELS"/*.whl 2>&1 | tail -2
  export PYTHONPATH="$PYTHONPATH:/tmp/dc-site"
fi
# "fp32" on a GPU: cuDNN's convolutions run in TF32 unless switched off (PyTorch's default, kept by mmbench), so the
# fp32 rows of the tables are TF32 convolutions with fp32 matmuls; the flags are recorded here
{ nvidia-smi 2>/dev/null | head -15
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'cudnn.allow_tf32',
torch.backends.cudnn.allow_tf32, 'matmul.allow_tf32', torch.backends.cuda.matmul.allow_tf32)"
  # the device's copy may come without .git, or with the .git of an older checkout under a newer working tree
  # (seen 2026-12-04: HEAD said the session's first commit, the tree was a later one): commit.txt, written where
  # the tree was staged, is the commit; HEAD is recorded beside it
  echo "commit.txt (staged with the data): $(cat "$SHARED/commit.txt" 2>/dev/null | tr '\n' ' ' || true)"
  echo "git HEAD of the copy here: $(git rev-parse HEAD 2>/dev/null)$(git status --porcelain 2>/dev/null | grep -q . && echo ' (working tree differs)')"
  echo "DEVICE=$DEVICE SCALE=$SCALE BUDGET=$BUDGET"
  ls "$WHEELS" 2>/dev/null | sed 's/^/wheel available: /'; } > "$RES/env.txt" 2>&1
cat "$RES/env.txt"
if [ -n "$(missing)" ]; then
  echo "error: $(missing); put its wheel into $WHEELS (pip download --no-deps -d DIR PACKAGE) and run again"; snap; exit 2
fi
if [ "$DEVICE" = cuda ] && ! $PY -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
  echo "error: torch sees no GPU here; every part would run on the CPU and measure nothing of the GPU"; snap; exit 3
fi

if part correctness; then
say "correctness on $DEVICE: random streams, resume, packed = alone (pytest)"
# resume is compared bitwise: deterministic cuBLAS workspaces; a cuDNN weight gradient may still use atomics, so a
# failure of that test alone, by float rounding, is nondeterminism, not a lost random stream (read its diff)
# MMBENCH_GPU_TESTS=1 keeps the GPU visible to these tests (the suite hides it from every test otherwise) and makes
# them fail, not pass on the CPU, where no GPU is visible
GPUT=""; [ "$DEVICE" = cuda ] && GPUT=1
MMBENCH_GPU_TESTS=$GPUT CUBLAS_WORKSPACE_CONFIG=:4096:8 timeout $(to 240) $PY -m pytest -q -p no:cacheprovider -o addopts="" \
  ${GPU_TESTS:-tests/test_train.py::test_test_loss_and_checkpoints_keep_every_random_stream \
  tests/test_train.py::test_interrupted_and_resumed_equals_uninterrupted \
  tests/test_pack.py::test_pack_of_three_equals_three_alone tests/test_pack.py::test_bf16_pack_draws_the_numbers_it_draws_alone \
  tests/test_pack.py::test_a_pack_of_a_beta_sweep_equals_its_runs_alone \
  tests/test_pack.py::test_mmvamp_packs_with_each_runs_own_annealed_alpha \
  tests/test_mmvamp_methods.py::test_an_annealed_device_alpha_gives_the_rates_and_schedule_of_a_host_alpha \
  tests/test_pack.py::test_vgon_and_smvgon_pack_through_their_inner_gradient_step \
  tests/test_pack_paths.py::test_a_pack_out_of_real_gpu_memory_splits_and_its_halves_start_from_what_it_gave_back \
  tests/test_capture.py::test_mmbench_run_compile_captures_unpacked_training_with_the_same_results \
  tests/test_adam.py::test_a_resume_continues_in_its_processs_implementation \
  tests/test_matmul_tf32.py::test_a_run_trains_with_the_flag_on_and_evaluates_with_it_off \
  tests/test_matmul_tf32.py::test_a_pack_checks_and_trains_with_the_flag_on_and_leaves_it_off} \
  > "$RES/gpu-tests.txt" 2>&1
tail -4 "$RES/gpu-tests.txt"
fi

if part fig3 || part evaltime || part report; then  # (the step tables and tests read no prepared data: ~60 s saved)
say "prepare PolyMNIST from the MNIST test split (multiplicity $MULT) + coherence classifiers"
$M prepare polymnist --variant vanilla --rebuild --source "$SHARED/mnist-t10k" --backgrounds "$SHARED/backgrounds" \
   -o mnist_source=test-halves -o "multiplicity=$MULT" \
  && $M classifiers train polymnist --variant vanilla --epochs "$CLF_EPOCHS"
fi

# BIG: the largest pack asked; each table's limit grows by a second per run of it (a looped bf16 pack of 15 took
# 0.5 s a step on the H200: 7 steps of a pack of 30 and building its 30 models ~15 s more than at 15)
BIG=$(echo "$PACKS" | tr ',' '\n' | sort -n | tail -1)
if part steps && fits 20 "the fp32 step table"; then
say "step table, packed and unpacked (fp32)"
timeout $(lim $(( 120 + BIG ))) $M bench steps --methods "$METHODS" --pack "$PACKS" --device "$DEVICE" --batch-size $B \
  --latent-dim $LAT --steps $STEPS --out "$RES/steps-packed.md" $(prof steps)
snap
fi
# the captured packs next (the issue's figure: run-steps/s at 15), before the other tables can spend the budget
if part captured && [ "$DEVICE" = cuda ] && fits 45 "captured steps"; then
  say "captured steps (torch.compile reduce-overhead): mrVAE and MoPoE unpacked, then MoPoE packed"
  # CAPTURE_PACKS=15 (say): only the packed MoPoE step, in packs of that size (with an uncaptured row beside it)
  if [ -z "${CAPTURE_PACKS:-}" ]; then
  timeout $(( ($(left) - 10) / 2 )) $M bench steps --methods mrvae,mopoe --scaling "" --device cuda --batch-size $B \
    --latent-dim $LAT --steps $STEPS --compile --out "$RES/steps-mrvae-captured.md"
  snap
  fi
  timeout $(lim 150) $M bench steps --methods mopoe --pack "${CAPTURE_PACKS:-5,15}" --device cuda --batch-size $B \
    --latent-dim $LAT --steps $STEPS --compile --out "$RES/steps-compiled.md"
  snap
fi
if part steps; then
if fits 30 "the bf16 step table"; then
say "step table, packed and unpacked (bf16)"
timeout $(lim $(( 30 + BIG ))) $M bench steps --methods mopoe --pack "$PACKS" --device "$DEVICE" --batch-size $B \
  --latent-dim $LAT --steps $STEPS --precision bf16 --out "$RES/steps-packed-bf16.md"
snap
fi
if [ "$DEVICE" = cuda ] && fits 40 "the cuDNN benchmark-mode table"; then
say "MoPoE packed with cuDNN benchmark mode (convolution algorithms chosen by timing), for comparison"
timeout $(lim $(( 60 + BIG ))) $M bench steps --methods mopoe --pack "$PACKS" --device cuda --batch-size $B \
  --latent-dim $LAT --steps $STEPS --cudnn-benchmark --out "$RES/steps-packed-cudnn.md" $(prof cudnn)
snap
fi
if fits 20 "the looped-pack table"; then
say "packed step looped over the runs instead of vmapped (a CPU's default), for comparison"
MMBENCH_PACK_MODE=loop timeout $(lim 30) $M bench steps --methods mopoe --pack 5 --device "$DEVICE" --batch-size $B \
  --latent-dim $LAT --steps $STEPS --out "$RES/steps-packed-loop.md" $(prof loop)
snap
fi
if fits 25 "the mrVAE step table"; then
say "mrVAE step next to MoPoE's"
timeout $(lim 40) $M bench steps --methods mrvae,mopoe --scaling "" --device "$DEVICE" --batch-size $B \
  --latent-dim $LAT --steps $STEPS --out "$RES/steps-mrvae.md" $(prof mrvae)
snap
fi
if fits 25 "the packed mrVAE table"; then
say "mrVAE packed (5 runs)"
timeout $(lim 40) $M bench steps --methods mrvae --pack 5 --device "$DEVICE" --batch-size $B --latent-dim $LAT \
  --steps $STEPS --out "$RES/steps-mrvae-packed.md"
snap
fi
fi

# Epochs of Fig. 3 that fit: what is left, minus evaluation, eval-time (fp32 and bf16) and report (~200 s on the GPU), at the
# measured packed rate of the slowest of the three methods (packs of 5 in three workers share the GPU).
# Prints "EPOCHS MAX_TRAIN": when not even one epoch of the 60,000 tuples fits, one epoch of fewer (train.max_train),
# so that the runs finish and are evaluated rather than being killed by their time limit.
if part fig3; then
# MPS=1: the four packs' processes share the GPU through CUDA MPS (kernels of different processes run side by side;
# without it the GPU time-slices between them), where the daemon starts and serves a process: a CUDA program that
# cannot reach it runs without MPS and says nothing, so a server must be listed after a tensor was made on the GPU.
# Started before Fig. 3's epochs are sized (its seconds count); stopped after the runs. Every call to the control
# program has a time limit (a quit waits for its clients).
MPS_ON=""
mps() { timeout 20 sh -c "echo $1 | nvidia-cuda-mps-control"; }
if [ "${MPS:-0}" = 1 ]; then
  if [ "$DEVICE" = cuda ] && command -v nvidia-cuda-mps-control > /dev/null; then
    export CUDA_MPS_PIPE_DIRECTORY=/tmp/dc/mps-pipe CUDA_MPS_LOG_DIRECTORY=/tmp/dc/mps-log
    mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
    # a daemon left by an earlier call killed past its time limit (no EXIT trap ran) holds this pipe: quit it first
    if [ -e "$CUDA_MPS_PIPE_DIRECTORY/control" ] && mps quit > /dev/null 2>&1; then
      for _ in 1 2 3 4 5 6 7 8 9 10; do  # a quit is asynchronous: wait (at most 10 s) for the daemon to go
        pgrep -x nvidia-cuda-mps-control > /dev/null 2>&1 || break; sleep 1
      done
      echo "MPS: quit the daemon an earlier call left running" | tee -a "$RES/fig3-epochs.txt"
    fi
    if timeout 20 nvidia-cuda-mps-control -d \
        && timeout 60 $PY -c "import torch; torch.zeros(1, device='cuda').sum().item()" \
        && SERVERS=$(mps get_server_list 2> /dev/null) && [ -n "$SERVERS" ]; then
      MPS_ON=1; trap 'mps quit' EXIT
      echo "MPS: on (server $(echo $SERVERS) serves the packs' processes)" | tee -a "$RES/fig3-epochs.txt"
    else
      mps quit 2> /dev/null
      unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
      echo "MPS: asked, but the daemon did not start or served no process; the packs time-slice the GPU" \
        | tee -a "$RES/fig3-epochs.txt"
    fi
  else
    echo "MPS: asked, but there is no nvidia-cuda-mps-control here (or no GPU); the packs time-slice the GPU" \
      | tee -a "$RES/fig3-epochs.txt"
  fi
fi
if [ -n "${EPOCHS:-}" ]; then FIT="$EPOCHS 0"; echo "EPOCHS=$EPOCHS fixed (not sized)" >> "$RES/fig3-epochs.txt"; else
FIT=$($PY - "$RES/steps-packed.md" "$(left)" "$SCALE" "$RES/steps-packed-bf16.md" "${RESERVE:-170}" "${OVERLAP:-2.5}" \
  2>>"$RES/fig3-epochs.txt" <<'EOF'
import sys
from mmbench.projection import pack_rate, read_step_times
path, left, scale, bf16_path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
reserve, overlap = int(sys.argv[5]), float(sys.argv[6])
if scale == "tiny":
    print(1, 0); sys.exit()
steps_per_epoch = 60000 // 256
# after training: the runs' start and evaluation (~70 s for the 20 runs on an H200, 2026-12-04, with today's
# scikit-learn's latent fits; since 2026-12-06 the MoPoE protocol fits as 0.20 did, ~20 s per 512-d MoPoE or MMVAE model
# on one CPU core, and each pack's worker evaluates its 5 runs one after another: 180 allowed), then RESERVE
train_s = max(left - reserve - 180, 20)
try:
    rates = read_step_times(path)
    slowest = min(pack_rate(rates[m], 5) for m in ("mopoe", "mvae", "mmvae"))
except Exception as e:  # no table: the H100's unpacked MoPoE step (docs/step_times_h100.md, 22 ms), four packs sharing
    slowest = 1 / 0.022 / 4
    print(f"no step table ({e}); assuming {slowest:.0f} run-steps/s per pack", file=sys.stderr)
try:  # a bf16 pack loops over its runs (slower than a vmapped one): its own measured rate
    bf16 = pack_rate(read_step_times(bf16_path)["mopoe"], 5)
except Exception:  # noqa: BLE001
    bf16 = slowest
# 15 fp32 runs at about the slowest 5-pack's run-steps/s and 5 bf16 runs at the bf16 5-pack's; packs sharing the GPU
# overlap (OVERLAP: on an H200, 2026-12-04, the four packs ran an epoch in ~30 s against ~75 s one after another)
epoch_s = steps_per_epoch * (15 / slowest + 5 / bf16) / overlap
epochs = int(train_s / epoch_s)
max_train = 0 if epochs >= 1 else max(2560, int(60000 * train_s / epoch_s) // 256 * 256)
print(max(1, min(epochs, 300)), max_train)
print(f"{left} s left; slowest 5-pack {slowest:.0f} run-steps/s, bf16 5-pack {bf16:.0f}, overlap {overlap}; one epoch "
      f"{epoch_s:.0f} s; "
      f"training budget {train_s} s -> {epochs} epochs" + (f", so 1 epoch of {max_train} tuples" if max_train else ""),
      file=sys.stderr)
EOF
); fi
read -r EPOCHS MAXTRAIN <<< "$(echo "$FIT" | head -1)"
EPOCHS=${EPOCHS:-1}; MAXTRAIN=${MAXTRAIN:-0}
[ "$MAXTRAIN" -gt 0 ] && RUNSET+=(--set "train.max_train=$MAXTRAIN")
echo "MoPoE Fig. 3: $EPOCHS epochs (of 300)$([ "$MAXTRAIN" -gt 0 ] && echo " on $MAXTRAIN training tuples")" \
  | tee -a "$RES/fig3-epochs.txt"

snap
say "MoPoE Fig. 3 (15 runs, packed) and MoPoE x 5 in bf16, $EPOCHS epochs"
$PY docs/gpu-runs/bf16_suite.py "$RES/bf16-suite.yaml"  # Fig. 3's MoPoE entry, read from the suite, in bf16
# RESERVE: seconds kept for the parts after it (default 170: the agreement, eval-time, report, projection)
LIM=$(( $(left) - ${RESERVE:-170} )); [ $LIM -lt 60 ] && LIM=60; [ "$SCALE" = tiny ] && LIM=0
timeout "$LIM" $M run suites/mopoe_iclr21.yaml --tier full --only polymnist-fig-3 "${GPUS[@]}" --pack 5 \
  --set "train.epochs=$EPOCHS" "${RUNSET[@]}" ${RUN_FLAGS:-} &
p1=$!
timeout "$LIM" $M run "$RES/bf16-suite.yaml" --tier full "${GPU4[@]}" --pack 5 \
  --set "train.epochs=$EPOCHS" "${RUNSET[@]}" &
p2=$!
wait "$p1"; rc1=$?; wait "$p2"; rc2=$?  # not a bare `wait`: it would also wait for the `tee` of the log, i.e. forever
{ echo "exit status: Fig. 3 runs $rc1, bf16 runs $rc2 ($([ "$LIM" -gt 0 ] && echo "124: stopped by the ${LIM} s limit" || echo "no time limit in dry mode"))"
  echo "how the runs trained (from their logs):"
  grep -h -o "packed with [0-9]* other run(s) on [a-z0-9:]*\|training unpacked: .*\|step is not captured\|step captured with torch.compile\|torch.compile failed.*" \
    "$MMBENCH_RUNS"/*/log.txt 2>/dev/null | sort | uniq -c; } | tee -a "$RES/fig3-epochs.txt"
tar czf "$OUT/runs.tgz" --exclude='*.pt' -C "$MMBENCH_RUNS" . 2>/dev/null
$PY docs/gpu-runs/fig3_pace.py "$MMBENCH_RUNS" > "$RES/fig3-pace.md" 2>&1; tail -1 "$RES/fig3-pace.md"
if [ -n "$MPS_ON" ]; then  # the parts after it time one process alone: MPS off again
  mps quit; trap - EXIT; unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
fi

say "bf16 vs fp32 (MoPoE, 5 seeds each)"
$PY docs/gpu-runs/precision_agreement.py > "$RES/bf16-vs-fp32.md" 2>&1
cat "$RES/bf16-vs-fp32.md"
fi

snap
if part evaltime; then
say "full-budget evaluation time of one Fig. 3 MoPoE model"
# full: the issue's budget on 10,000 tuples (both rebuilt splits together, as the CPU figures in docs/metrics.md;
# the rebuilt test split alone has 5,000), for timing only
if [ "$SCALE" = tiny ]; then EB=(quick); else EB=(full both-splits 10000); fi
EVALTIME_RUNS=/tmp/dc/evaltime timeout $(to 90) $PY docs/eval_time.py "${EB[@]}" 2>&1 | tail -3 | tee "$RES/eval-time.txt"
EVALTIME_RUNS=/tmp/dc/evaltime timeout $(to 60) $PY docs/eval_time.py "${EB[@]}" bf16 2>&1 | tail -3 \
  | tee -a "$RES/eval-time.txt"
fi

snap
if part report; then
say "report"
$M report --compare reference_results/ --allow-missing --format md --out "$RES/report.md" \
  --title "device-check: MoPoE Fig. 3, ${EPOCHS:-?} epochs, PolyMNIST from the MNIST test split" > "$RES/report.txt" 2>&1
tail -5 "$RES/report.txt"
fi

snap
if part projection; then
say "projected cost of every suite's full tier on this GPU (packed)"
for s in suites/*.yaml; do
  echo "== $s"; timeout $(to 30) $M run "$s" --tier full --dry-run --step-times "$RES/steps-packed.md" 2>&1 | tail -4
done > "$RES/projection.txt"
tail -3 "$RES/projection.txt"
fi

snap
tar czf "$OUT/runs.tgz" --exclude='*.pt' -C "$MMBENCH_RUNS" . 2>/dev/null
snap
# the kernel choices after the captured table (the issue's figure) and before the captured steps' profiles; each call
# limited by what is left of the budget (always in the dry mode)
if part kernels && { [ "$SCALE" = tiny ] || [ "$(left)" -gt 40 ]; }; then
say "kernel choices for packs: grouped (vmapped) against looped, im2col + bmm, channels_last; Adam implementations"
if [ "$SCALE" = tiny ]; then KC=(--packs 1,3 --repeats 1); else KC=(--packs 5,15 --repeats 10); fi
timeout $(lim 60) $PY docs/gpu-runs/kernel_choices.py --device "$DEVICE" --batch-size $B --latent-dim $LAT "${KC[@]}" \
  --out "$RES/kernel-choices.md" > /dev/null 2> "$RES/kernel-choices.err" || tail -2 "$RES/kernel-choices.err"
tail -7 "$RES/kernel-choices.md" 2>/dev/null
snap
if [ "$SCALE" = tiny ]; then KP=3; else KP=5,15; fi
# MoPoE's packs with their convolutions as batched matmuls (against steps-packed.md's), then the same with TF32
# matmuls (MMBENCH_MATMUL_TF32=1: the batched matmuls at the precision of cuDNN's convolutions)
for TF32 in 0 1; do
  { [ "$SCALE" = tiny ] || [ "$(left)" -gt 25 ]; } || break
  NAME=bmm$([ $TF32 = 1 ] && echo -tf32)
  say "MoPoE packed with MMBENCH_PACK_CONV=bmm MMBENCH_MATMUL_TF32=$TF32 ($RES/steps-packed-$NAME.md)"
  MMBENCH_PACK_MODE=vmap MMBENCH_PACK_CONV=bmm MMBENCH_MATMUL_TF32=$TF32 timeout $(lim 45) $M bench steps --methods mopoe \
    --pack $KP --device "$DEVICE" --batch-size $B --latent-dim $LAT --steps $STEPS --out "$RES/steps-packed-$NAME.md" \
    $(prof $NAME)
  snap
done
fi
if part captured && [ "$DEVICE" = cuda ]; then
  # the captured steps profiled in a call of their own, after the table above is safe: the profiler's tracing of CUDA
  # graphs has not been tried here, and a crash would take the table of its call with it
  if [ "${PROFILE:-1}" != 0 ] && [ "$(left)" -gt 60 ]; then
    snap
    say "captured MoPoE packs again, profiled"
    timeout $(( $(left) - 10 )) $M bench steps --methods mopoe --pack "${CAPTURE_PACKS:-5,15}" --device cuda --batch-size $B \
      --latent-dim $LAT --steps $STEPS --compile --out "$RES/steps-compiled-profiled.md" $(prof captured)
  fi
fi
snap
# every suite's step shapes (ResNets, CelebA, MNIST-SVHN-Text, the rats, latent 256), for the projections of the suites
# whose runs the PolyMNIST-CNN table cannot project; the time left split over SUITES, each table then read back by
# the suite's dry run
if part suitesteps && { [ "$SCALE" = tiny ] || [ "$(left)" -gt 30 ]; }; then
  if [ "$SCALE" = tiny ]; then SUITES=${SUITES:-mrvae}; ST=(--tier smoke --pack 3 --steps 1); else
    SUITES=${SUITES:-mmvamp,smvae_iclr22,mopoe_iclr21,mrvae}; ST=(--pack "${SUITE_PACKS:-5,15}" --steps 3); fi
  IFS=, read -ra SL <<< "$SUITES"
  for i in "${!SL[@]}"; do
    s=${SL[$i]}
    share=$(( ($(left) - 15) / (${#SL[@]} - i) ))
    if [ "$share" -le 10 ]; then [ "$SCALE" = tiny ] || break; share=60; fi  # dry mode: every suite, budget or not
    say "$s: step times at its runs' shapes (bench steps --suite; ${share} s)"
    timeout $(to $(( share + 20 ))) $M bench steps --suite "suites/$s.yaml" "${ST[@]}" --device "$DEVICE" \
      --time-limit "$share" --out "$RES/steps-suite-$s.md" > /dev/null 2> "$RES/steps-suite-$s.err" || tail -2 "$RES/steps-suite-$s.err"
    { echo "== $s"; timeout $(to 30) $M run "suites/$s.yaml" $([ "$SCALE" = tiny ] && echo --tier smoke) --dry-run \
        --step-times "$RES/steps-suite-$s.md" 2>&1 | tail -4; } >> "$RES/projection-suites.txt"
    snap
  done
  tail -4 "$RES/projection-suites.txt" 2>/dev/null
fi
snap
say "done ($(left) s of the budget left)"
