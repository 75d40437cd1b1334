#!/usr/bin/env bash
# Fresh-machine set-up: a virtualenv with the pinned torch/torchvision pair and the package, plus
# the Debian Fashion-MNIST data for the miniature study. Idempotent; `--run` then runs the main job.
set -euo pipefail
cd "$(dirname "$0")"

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch from PyPI is the CUDA build: torchvision's compiled ops need it, and it runs on CPU too
.venv/bin/python -m pip install -q -e ".[dev,notebooks]"

# The miniature study's images (MIT licensed): /usr/share/datasets/fashion-mnist/
if [ ! -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && SUDO="sudo -n"
  if command -v apt-get >/dev/null; then
    $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
      || { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; } \
      || echo "warning: could not install Debian's dataset-fashion-mnist; the miniature study needs it" \
              "(or set VITDET_FASHION_MNIST_DIR to a folder with the four *-idx*-ubyte.gz files)."
  else
    echo "warning: no apt-get here: set VITDET_FASHION_MNIST_DIR to a folder with Fashion-MNIST's *-idx*-ubyte.gz files"
  fi
fi
.venv/bin/python -c "import torch, torchvision; from torchvision.ops import nms; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'ops OK')"

# The main job: the whole study at smoke scale (pre-training, tuning sweeps, final runs of the
# five inits with seeds, the ablations, TIDE, complexity) through papermill, then every table and
# figure of the paper. It writes under work_dirs/ (git-ignored): the records the repository ships
# in results/study/smoke/ stay as they are.
if [ "${1:-}" = "--run" ]; then
  status=0
  out=work_dirs/main-job/smoke
  .venv/bin/vitdet-bench study run --profile smoke --results-dir "$out" || status=$?  # failures are recorded
  .venv/bin/vitdet-bench study report --profile smoke --results-dir "$out"
  echo "report: $out/report/README.md"
  exit "$status"
fi
