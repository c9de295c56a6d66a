#!/usr/bin/env bash
# Train a run to the end whatever happens to the process: preemption (SIGTERM, or a scheduler's
# SIGUSR1/SIGUSR2/SIGXCPU, a closed terminal's SIGHUP) or a --max-time budget each leave a
# checkpoint, and this loop continues from it until the run is complete.
# Safe to re-run after the machine itself restarted. Ctrl-C (exit 130) stops the loop.
#   examples/train_until_done.sh CONFIG.toml RUN_DIR [extra train flags, e.g. --max-time 3h30m]
set -u
config=${1:?usage: $0 CONFIG.toml RUN_DIR [train flags...]}
run=${2:?usage: $0 CONFIG.toml RUN_DIR [train flags...]}
shift 2

while true; do
  # --resume: start the run, or continue it if RUN_DIR already holds one
  ganctl train --config "$config" --out "$run" --resume "$@"
  status=$?
  case $status in
    0)
      # exit 0 also ends a --max-time slice: go on until the last step is reached
      if ganctl inspect "$run" --json | python3 -c \
          'import json,sys; d=json.load(sys.stdin); sys.exit(d["step"] < d["config"]["steps"])'; then
        echo "run complete: $run"
        exit 0
      fi
      echo "time slice over; continuing $run" >&2 ;;
    129|138|140|143|152)  # SIGHUP, SIGUSR1, SIGUSR2, SIGTERM, SIGXCPU: stopped after a checkpoint
      echo "stopped by signal $((status - 128)) (preempted?); continuing $run" >&2 ;;
    130) echo "interrupted (Ctrl-C): stopping; run this script again to continue" >&2
         exit 130 ;;
    *) echo "ganctl failed with exit code $status; not retrying" >&2
       exit "$status" ;;
  esac
done
