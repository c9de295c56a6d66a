#!/usr/bin/env bash
# Train a GAN on a GPU box, then write an 8x8 sample grid, checking every exit code.
#   examples/train_and_sample.sh [CONFIG.toml] [RUN_DIR] [extra train flags...]
# Exit codes of ganctl: 0 done, 1 error (one line on stderr), 2 bad command line,
# 130/143 stopped by SIGINT/SIGTERM after writing a checkpoint.
set -u
config=${1:-examples/celeba_dcgan64.toml}
run=${2:-runs/$(basename "$config" .toml)}
shift $(( $# < 2 ? $# : 2 ))

ganctl train --config "$config" --out "$run" "$@"
status=$?
case $status in
  0) ;;
  130|143) echo "training stopped by a signal; continue with: ganctl resume $run" >&2
           exit "$status" ;;
  *) echo "training failed with exit code $status" >&2
     exit "$status" ;;
esac

ganctl sample -n 64 "$run/grid.png" --ckpt "$run" || { echo "sampling failed" >&2; exit 1; }
ganctl inspect "$run" --json > "$run/inspect.json" || { echo "inspect failed" >&2; exit 1; }
echo "grid: $run/grid.png"
