#!/usr/bin/env bash
# Issue 14's check on a lent GPU machine, in one device call (about 4 minutes):
#   bash benchmarks/gpu_dist_check.sh            (results in $OUT or ./gpu_dist_check)
# With 2+ GPUs it trains on all of them with NCCL and reports images/s for 1 vs N GPUs. With one
# GPU, NCCL cannot put two ranks on it, so two ranks share it over gloo
# (GANCTL_DIST_BACKEND=gloo): that checks the distributed code on CUDA with compile and bf16
# (gradient averaging, rank 0's writes, the launcher, resume on another world size), not speed.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
out="${OUT:-gpu_dist_check}"
mkdir -p "$out"
gpus=$(nvidia-smi -L 2>/dev/null | wc -l)
if [ "$gpus" -ge 2 ]; then n=$gpus; else n=2; export GANCTL_DIST_BACKEND=gloo; fi
echo "GPUs: $gpus; processes: $n; backend: ${GANCTL_DIST_BACKEND:-nccl}"
run() {  # name, then ganctl arguments; prints the exit code and the last lines
  local name=$1; shift
  local t0=$SECONDS
  timeout "${STEP_TIMEOUT:-150}" python3 -m ganctl "$@" --json >"$out/$name.json" 2>"$out/$name.log"
  local rc=$?
  echo "== $name: rc $rc, $((SECONDS - t0)) s"
  grep -v "^W1" "$out/$name.log" | grep -E "img/s|error|stopped|process" | tail -3
}
common=(--resolution 64 --batch-size 256 --g-width 64 --d-width 64 --log-every 100
        --sample-every 1000 --ckpt-every 1000)
run one train "${common[@]}" --steps 400 --out "$out/one"
run many train "${common[@]}" --steps 400 --gpus "$n" --out "$out/many"
run back resume "$out/many" --steps 450
run mlp-wgan train --arch mlp --loss wgan-gp --steps 40 --gpus "$n" --batch-size 64 --out "$out/mlp"
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
for name in ("one", "many", "back", "mlp-wgan"):
    try:
        doc = json.load(open(f"{out}/{name}.json"))
    except Exception as e:
        print(f"{name}: no result ({type(e).__name__})"); continue
    m = doc.get("metrics") or {}
    print(f"{name}: step {doc.get('step')}/{doc.get('steps')} img/s {m.get('img_per_s')} "
          f"compiled {doc.get('compiled')} precision {doc.get('precision')} error {doc.get('error')}")
PY
