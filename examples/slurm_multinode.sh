#!/usr/bin/env bash
# Train on several nodes under Slurm: one torchrun per node, GPUS_PER_NODE processes each.
#   sbatch examples/slurm_multinode.sh            (edit the #SBATCH lines for your cluster)
# Assumes: ganctl installed in the environment the job starts in (torchrun on PATH), the run
# folder and the data on a file system every node sees, and the data prepared beforehand on a
# node with internet (`ganctl data prepare celeba`): compute nodes often have none.
#SBATCH --job-name=ganctl
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --signal=TERM@120
#SBATCH --requeue
set -euo pipefail

GPUS_PER_NODE=${GPUS_PER_NODE:-8}            # keep equal to --gpus-per-node above
PORT=${PORT:-29500}                          # the rendezvous port on the first node
RUN=${RUN:-runs/celeba-multinode}
HOST=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)

# --signal=TERM@120: Slurm sends SIGTERM to torchrun two minutes before the time limit; torchrun
# passes it on (it does not pass SIGUSR1), and every rank stops at the same step after one
# checkpoint. If the run is not complete then, the job is requeued (at most MAX_REQUEUES times,
# so a run that fails for another reason does not loop), and `train --resume` continues the
# run from its newest checkpoint.
MAX_REQUEUES=${MAX_REQUEUES:-20}
status=0
srun --kill-on-bad-exit=1 torchrun \
    --nnodes "$SLURM_NNODES" --nproc_per_node "$GPUS_PER_NODE" \
    --rdzv-id "$SLURM_JOB_ID" --rdzv-backend c10d --rdzv-endpoint "$HOST:$PORT" \
    -m ganctl train --dataset celeba --batch-size 1024 --steps 200000 --out "$RUN" --resume \
    || status=$?
complete=$(ganctl inspect "$RUN" --json 2>/dev/null | python3 -c \
    'import json, sys; d = json.load(sys.stdin); print(int(d["step"] >= d["config"]["steps"]))' \
    || echo 0)
if [ "$complete" != 1 ] && [ "${SLURM_RESTART_COUNT:-0}" -lt "$MAX_REQUEUES" ]; then
    scontrol requeue "$SLURM_JOB_ID"
fi
exit "$status"
