#!/usr/bin/env bash
# The lent GPU's check (see benchmarks/gpu_check.py for what each part measures).
# Here, once:      python benchmarks/gpu_check.py prepare      (fills the ignored .gpu/)
# Device call 1:   bash benchmarks/gpu_check.sh stage           carry [".gpu/train"]
# Device call 2:   bash benchmarks/gpu_check.sh run [--minutes 5]   carry [".gpu/eval"], at once
#                  (the machine stays warm about 30 s between calls)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
what="${1:-run}"
shift || true
case "$what" in
  stage) exec python3 benchmarks/gpu_check.py stage "$@" ;;
  run)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    exec timeout 570 python3 benchmarks/gpu_check.py run "$@" ;;
  *) echo "usage: $0 stage|run [gpu_check.py options]" >&2; exit 2 ;;
esac
