#!/usr/bin/env bash
# Train on several nodes under Slurm: one torchrun per node, 8 GPUs each.
#   sbatch examples/slurm_multinode.sh            (edit the #SBATCH lines for your cluster)
#SBATCH --job-name=ganctl
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --signal=TERM@120
set -euo pipefail

# the first node hosts the rendezvous
HOST=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
RUN=${RUN:-runs/celeba-multinode}

# --signal=TERM@120 sends SIGTERM to the job's torchrun two minutes before the time limit; it
# passes it on, and every rank stops at the same step after one checkpoint, and the next job continues with `ganctl resume "$RUN"`.
# train --resume continues the run if an earlier job started it.
srun --kill-on-bad-exit=1 torchrun \
    --nnodes "$SLURM_NNODES" --nproc_per_node 8 \
    --rdzv-id "$SLURM_JOB_ID" --rdzv-backend c10d --rdzv-endpoint "$HOST:29500" \
    -m ganctl train --dataset celeba --batch-size 1024 --steps 200000 --out "$RUN" --resume
