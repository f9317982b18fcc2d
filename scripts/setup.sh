#!/usr/bin/env bash
# Installs every build and test dependency on a fresh Debian 12: apt packages, then the pinned
# Python test oracles (scripts/requirements-test.txt) into a virtualenv at $BERT_VENV
# (default ~/.cache/bertforge/venv). Idempotent and quick when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(build-essential cmake ninja-build git pkg-config ca-certificates catch2 libopenblas-dev libopenblas0-openmp zlib1g-dev
              libopenmpi-dev openmpi-bin python3 python3-venv python3-pip python3-torch time)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

VENV="${BERT_VENV:-$HOME/.cache/bertforge/venv}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating virtualenv $VENV (with Debian's site packages visible)"
  /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi
stamp="$VENV/.bertforge-requirements"
if ! cmp -s scripts/requirements-test.txt "$stamp"; then
  echo "setup: installing pinned test oracles into $VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r scripts/requirements-test.txt
  cp scripts/requirements-test.txt "$stamp"
fi
if command -v nvcc >/dev/null 2>&1; then
  echo "setup: nvcc found ($(nvcc --version | tail -n 2 | head -n 1)); the CUDA backend will be built"
else
  echo "setup: no nvcc on PATH; building without the CUDA backend"
fi
