#!/usr/bin/env bash
# The suite and device-check.sh's CPU dry mode under the lent GPU machines' Python and packages, on a CPU machine.
#
# The lent machines run their image's Python 3.12.3 with torch 2.11.0, torchvision 0.26.0 and numpy 2.5.2 (the
# device tool's KINDS.md); this project develops on CPython 3.11, for which PyPI has no numpy 2.5 nor SciPy 1.18. Here
# Ubuntu 24.04 ("noble", whose python3.12 is 3.12.3) is unpacked into a chroot with debootstrap, a virtual environment
# there gets those versions, SciPy 1.18.1 (the newest for 3.12; the image's own is not known) and every other
# package as requirements.lock pins it, and the repository (its parent folder bind-mounted) is tested in it.
#
# Run as root from the repository root, on Debian or Ubuntu with archive.ubuntu.com reachable:
#   bash docs/image-env/run.sh [tests|dry|all]     (default: all; ROOT=/srv/noble, OUT=/tmp/image-env)
# `dry` needs the real MNIST test split and the background photographs: DATA=<folder with mnist-t10k/, backgrounds/>.
set -euo pipefail
WHAT=${1:-all}; ROOT=${ROOT:-/srv/noble}; OUT=${OUT:-/tmp/image-env}; REPO=$(pwd)
[ -f "$REPO/requirements.lock" ] || { echo "error: run from the repository root"; exit 2; }
[ "$(id -u)" = 0 ] || { echo "error: debootstrap and chroot need root"; exit 2; }
mkdir -p "$OUT"

if [ ! -e "$ROOT/opt/v312/.built" ]; then  # (its bin/python links to the chroot's /usr/bin/python3.12)
  command -v debootstrap >/dev/null || apt-get install -y -qq debootstrap
  # Debian's debootstrap knows Ubuntu releases up to jammy; noble is made the same way (the gutsy script).
  [ -e /usr/share/debootstrap/scripts/noble ] || ln -s gutsy /usr/share/debootstrap/scripts/noble
  # --no-check-gpg: Debian ships no Ubuntu archive key; this is a throwaway test environment.
  # g++ and python3.12-dev: TorchInductor builds its CPU kernels with them (a test compiles on the CPU)
  debootstrap --no-check-gpg --variant=minbase --components=main,universe \
    --include=python3.12-venv,python3.12-dev,ca-certificates,g++ noble "$ROOT" http://archive.ubuntu.com/ubuntu/
  cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/ca-certificates.crt"  # this machine's proxy's CA too
  [ -f /etc/pip.conf ] && cp /etc/pip.conf "$ROOT/etc/pip.conf"
  cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
  # every locked package but the torch stack and numpy/scipy, whose image versions replace them
  grep -E '^[A-Za-z0-9_.-]+==' requirements.lock | sed 's/ \\$//' \
    | grep -v -E '^(torch|torchvision|triton|nvidia-|numpy|scipy|setuptools|cuda-)' > "$ROOT/tmp/req312.txt"
  printf '%s\n' torch==2.11.0 torchvision==0.26.0 numpy==2.5.2 scipy==1.18.1 'setuptools<82' >> "$ROOT/tmp/req312.txt"
  chroot "$ROOT" python3.12 -m venv /opt/v312
  chroot "$ROOT" env PIP_FIND_LINKS= /opt/v312/bin/pip install -q -r /tmp/req312.txt
  touch "$ROOT/opt/v312/.built"
fi

for d in proc sys dev; do mountpoint -q "$ROOT/$d" || mount --bind "/$d" "$ROOT/$d"; done
# the repository's parent folder at /work, so that the tests find ../shared where the checkout has one
mkdir -p "$ROOT/work" "$ROOT/out"
mountpoint -q "$ROOT/work" || mount --bind "$(dirname "$REPO")" "$ROOT/work"
mountpoint -q "$ROOT/out" || mount --bind "$OUT" "$ROOT/out"
in_root() { chroot "$ROOT" env HOME=/root PIP_FIND_LINKS= bash -c "cd '/work/$(basename "$REPO")' && $1"; }
cat > "$ROOT/tmp/env.py" <<'PY'
import importlib.metadata as m, sys
names = ("torch", "numpy", "scipy", "scikit-learn", "pandas")
print("Python", sys.version.split()[0], *(f"{p} {m.version(p)}" for p in names))
PY
in_root "/opt/v312/bin/pip install -q --no-deps -e . && /opt/v312/bin/python /tmp/env.py" | tee "$OUT/env.txt"

if [ "$WHAT" = tests ] || [ "$WHAT" = all ]; then  # the whole suite (Slurm, chromium and shellcheck absent: skipped)
  in_root "/opt/v312/bin/python -m pytest -o addopts='' -q -n 2 --dist loadfile --no-loadscope-reorder -rs \
-p no:cacheprovider -W default" > "$OUT/tests.txt" 2>&1 || true
  tail -1 "$OUT/tests.txt"
fi
if [ "$WHAT" = dry ] || [ "$WHAT" = all ]; then  # device-check.sh's CPU dry mode, every part
  [ -d "${DATA:-}/mnist-t10k" ] || { echo "error: the dry mode needs DATA=<folder with mnist-t10k/, backgrounds/>"
                                     exit 2; }
  mkdir -p "$ROOT/data" && { mountpoint -q "$ROOT/data" || mount --bind "$DATA" "$ROOT/data"; }
  in_root "PARTS=all DATA=/data DEVICE=cpu SCALE=tiny OUT=/out/dc PY=/opt/v312/bin/python BUDGET=900 \
bash docs/gpu-runs/device-check.sh" > "$OUT/dry.txt" 2>&1 && echo "dry mode: exit 0" || echo "dry mode: exit $?"
fi
