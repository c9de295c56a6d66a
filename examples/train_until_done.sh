#!/usr/bin/env bash
# Train a run to the end whatever happens to the process: preemption (SIGTERM), Ctrl-C (SIGINT)
# or a --max-time budget each leave a checkpoint, and this loop resumes from it until ganctl
# exits 0 with the run complete. Safe to re-run after the machine itself restarted.
#   examples/train_until_done.sh CONFIG.toml RUN_DIR [extra train flags...]
set -u
config=${1:?usage: $0 CONFIG.toml RUN_DIR [train flags...]}
run=${2:?usage: $0 CONFIG.toml RUN_DIR [train flags...]}
shift 2

# --resume: start the run, or continue it if RUN_DIR already holds one.
ganctl train --config "$config" --out "$run" --resume "$@"
status=$?
while true; do
  case $status in
    0)
      # exit 0 also ends a --max-time slice: go on until the last step is reached
      if ganctl inspect "$run" --json | python3 -c 'import json,sys; d=json.load(sys.stdin); sys.exit(d["step"] < d["config"]["steps"])'; then
        echo "run complete: $run"
        exit 0
      fi ;;
    130|143) echo "stopped by a signal (exit $status); resuming $run" >&2 ;;
    *) echo "ganctl failed with exit code $status; not retrying" >&2
       exit "$status" ;;
  esac
  ganctl resume "$run"
  status=$?
done
