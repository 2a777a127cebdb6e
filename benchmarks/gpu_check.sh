#!/usr/bin/env bash
# The GPU check of issue 18 in one call (under 8 minutes on an H200): training step time and MFU of the
# paper UNet (bare loop, entry point, each COMPILE mode), models per GPU, resume of both arms; one JSON.
#   benchmarks/gpu_check.sh [OUT.json] [gpu_check.py options]
# Without a CUDA device it runs the CPU mode (tiny sizes), which CI runs to keep it working.
# Wheels in .whl/ (packages a bare GPU image lacks, e.g. diffusers) are installed to /tmp/site first.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/gpu_check.json}
shift || true
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
mode=()
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then mode=(--cpu); fi
if [ ${#mode[@]} -eq 0 ]; then nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true; fi
exec "$PY" benchmarks/gpu_check.py --out "$out" "${mode[@]}" "$@"
