#!/usr/bin/env bash
# One-step set-up on a fresh machine: creates .venv in the repository root and installs svd_fast.
#   bash scripts/setup.sh          # what sampling needs
#   bash scripts/setup.sh --dev    # + tests, benchmarks, training, curation and demo-test extras
# torch is pinned to its CPU build through constraints.txt: an unpinned torch pulls GBs of CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
[ "${1:-}" = "--dev" ] && dev=1

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
py=.venv/bin/python
pip_install() { "$py" -m pip install --quiet --disable-pip-version-check -c constraints.txt "$@"; }

"$py" -c "import torch" 2>/dev/null || pip_install torch
if [ "$dev" = 1 ]; then
  # DeepSpeed's optional C++ ops are compiled on first use, not at install time.
  DS_BUILD_OPS=0 pip_install -e ".[test,bench,train,curate,app]"
  if ! command -v tesseract >/dev/null 2>&1; then
    # OCR text detection of the curation pipeline (Debian package; needs root, as on CI).
    (apt-get update -qq && apt-get install -y -qq tesseract-ocr tesseract-ocr-eng) >/dev/null
  fi
  if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    # Headless browser of the web demo's test (tests/test_app.py): Debian's build plays H.264, and its
    # driver comes from the same source package, so the two versions always match.
    (apt-get update -qq && apt-get install -y -qq chromium chromium-driver) >/dev/null
  fi
else
  pip_install -e .
fi
# The native CPU kernels (svd_fast._C, CMakeLists.txt), built for this machine's CPU. They are
# part of the product: where a C++ compiler exists a failed build stops the set-up (with its log);
# only a machine without one falls back to the PyTorch implementations.
export PATH="$PWD/.venv/bin:$PATH"  # a pip-installed cmake lands here
if command -v c++ >/dev/null 2>&1 || command -v g++ >/dev/null 2>&1 || command -v clang++ >/dev/null 2>&1; then
  command -v cmake >/dev/null 2>&1 || pip_install cmake ninja
  log=$(mktemp)
  if "$py" -m svd_fast.kernels.native.build >"$log" 2>&1; then
    echo "native kernels built (svd_fast._C)"
  else
    tail -n 40 "$log" >&2
    echo "error: the native kernels (svd_fast._C) failed to build; full log: $log" >&2
    exit 1
  fi
  rm -f "$log"
else
  echo "no C++ compiler on PATH: native kernels not built, the PyTorch implementations will be used"
fi
echo "svd_fast is set up in .venv ($("$py" -c 'import torch; print("torch", torch.__version__)'))"
