#!/usr/bin/env bash
# The lent GPU's check for issue 11: throughput, a compiled smoke run of every arch x loss, the
# host-sync check and the presets' quality, in two calls on one warm machine, about 8 minutes in
# all (see benchmarks/gpu_check.py for what each part measures). The table comes last.
# Here, once:     python benchmarks/gpu_check.py prepare       (fills the ignored .gpu/)
# Device call 1:  bash benchmarks/gpu_check.sh stage            carry [".gpu/train"]  (~3 min)
# Device call 2:  bash benchmarks/gpu_check.sh run              carry [".gpu/eval"]   (~5 min),
#                 at once: the machine stays warm about 30 s between calls
# Optional, < 1 min, the host CPU alone (issue 22): fp32 against bf16 train steps for each arch
#                 (benchmarks/cpu_precision.py; the lent machines' CPUs may have AVX512-BF16/AMX),
#                 best before call 2 in the same command: `bash benchmarks/gpu_check.sh cpu; bash
#                 benchmarks/gpu_check.sh run`. Its table goes to stdout, the JSON to
#                 $OUT/cpu_precision.json (or .gpu/ without $OUT).
# StyleGAN2 (issue 24), its own call, ~9 min (--budget 510 s; a lease of its own, or what is left
#                 of one): ganctl stylegan2-256 compiled against NVlabs' train.py on the same GPU,
#                 the largest 1024 px batch, one table last (benchmarks/stylegan2_speed.py).
# Here, once:     git clone --depth 1 https://github.com/NVlabs/stylegan2-ada-pytorch \
#                     .gpu/nvlabs/stylegan2-ada-pytorch
# Device call:    bash benchmarks/gpu_check.sh stylegan2      carry [".gpu/nvlabs"]   timeout_s 600
#                 (table also appended to $OUT/stylegan2_speed.md; JSON and logs beside it)
# StyleGAN2's quality (issue 24), after `stage` on the same warm machine, ~9 min:
# Device call:    bash benchmarks/gpu_check.sh stylegan2-quality   carry [".gpu/eval"]  timeout_s 600
#                 stylegan2-cifar10 and dcgan-cifar10 side by side on the one GPU for
#                 SG2_QUALITY_MINUTES (6) of training each, FID of 10k fakes against the 50k
#                 training JPEGs every 2 minutes; both JSON documents and a table in $OUT
# The projected D's quality (issue 27), after `stage`, each preset alone on the GPU in turn for
#                 PG_QUALITY_MINUTES (10) of training, scored at 2.5, 5 and 10 min (10k fakes
#                 against the 50k training JPEGs, FID, KID, precision, recall) with a grid each;
#                 `prepare` puts the fp16 Inception and EfficientNet-Lite0 in .gpu/projected
#                 (62 MiB). 4 presets x 10 min is 40 min: on the lent machines (600 s a call,
#                 15 min a lease) one preset a call with PG_QUALITY_MINUTES=8 (scored at 2, 4, 6
#                 and 8 min), e.g. PG_QUALITY_PRESETS="projected-cifar10"; the 10-minute point
#                 needs a machine without that cap.
# Device call:    bash benchmarks/gpu_check.sh projected-quality  carry [".gpu/projected"]  timeout_s 600
# On a CPU:       add --device cpu and tiny sizes (gpu_check.py's docstring has the lines);
#                 stylegan2's is `python benchmarks/stylegan2_speed.py --quick`.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
what="${1:-run}"
shift || true
# a safety net only: gpu_check.py keeps its own budget (--budget: stage 180 s, run 300 s)
case "$what" in
  stage) exec timeout "${GPU_CHECK_TIMEOUT:-260}" python3 benchmarks/gpu_check.py stage "$@" ;;
  run)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
    exec timeout "${GPU_CHECK_TIMEOUT:-420}" python3 benchmarks/gpu_check.py run "$@" ;;
  cpu)  # 5 rows x 3 s timed, plus warm-ups: well under the minute on 16 cores
    exec timeout "${GPU_CHECK_CPU_TIMEOUT:-90}" python3 benchmarks/cpu_precision.py --seconds 3 \
      --out "${OUT:-.gpu}/cpu_precision.json" "$@" ;;
  stylegan2)  # the script keeps its own budget (--budget 510 s, a cap per part); this is a net
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
    exec timeout "${STYLEGAN2_TIMEOUT:-570}" python3 benchmarks/stylegan2_speed.py "$@" ;;
  stylegan2-quality)  # the two runs share the GPU, so each has the same share of it
    out="${OUT:-.gpu}"
    data="${GPU_CHECK_STAGE:-/tmp/gpu_check}/cifar10_train_jpg.zip"
    for preset in stylegan2-cifar10 dcgan-cifar10; do
      timeout "${SG2_QUALITY_TIMEOUT:-570}" python3 benchmarks/quality.py \
        --minutes "${SG2_QUALITY_MINUTES:-6}" --every 120 --num 10000 --no-floor \
        --inception .gpu/eval/inception-fp16.pt --json "$@" -- --preset "$preset" \
        --dataset "$data" > "$out/quality-$preset.json" 2> "$out/quality-$preset.log" &
    done
    wait || true
    exec python3 benchmarks/quality_table.py "$out"/quality-*.json ;;
  projected-quality)  # one preset at a time: each alone on the GPU, for the same wall time
    out="${OUT:-.gpu}"
    data="${GPU_CHECK_STAGE:-/tmp/gpu_check}/cifar10_train_jpg.zip"
    export GANCTL_EFFICIENTNET="${GANCTL_EFFICIENTNET:-.gpu/projected/efficientnet-lite0.safetensors}"
    minutes="${PG_QUALITY_MINUTES:-10}"
    for preset in ${PG_QUALITY_PRESETS:-projected-cifar10 dcgan-cifar10 r3-cifar10 stylegan2-cifar10}; do
      timeout "${PG_QUALITY_TIMEOUT:-900}" python3 benchmarks/quality.py \
        --minutes "$minutes" --every "$(python3 -c "print($minutes * 15)")" --num 10000 \
        --no-floor --inception .gpu/projected/inception-fp16.pt --grid "$out/quality-$preset.png" \
        --json "$@" -- --preset "$preset" --dataset "$data" \
        > "$out/quality-$preset.json" 2> "$out/quality-$preset.log" || true
    done
    exec python3 benchmarks/quality_table.py "$out"/quality-*.json ;;
  *) echo "usage: $0 stage|run|cpu|stylegan2|stylegan2-quality|projected-quality [gpu_check.py," \
          "cpu_precision.py, stylegan2_speed.py or quality.py options]" >&2; exit 2 ;;
esac
