#!/usr/bin/env bash
# A Slurm job array that spreads one kd sweep over 4 jobs (one GPU each), then merges them.
#
#   sbatch scripts/slurm_sweep.sh runs/teacher/teacher.safetensors
#   # when all 4 tasks have finished:
#   target/release/kd sweep merge runs/sweep-part-{1,2,3,4} --out runs/sweep
#
# Every task runs the same command with its own --shard; a task that is killed or preempted can
# simply be resubmitted: kd sweep skips the points its folder already finished.
#SBATCH --job-name=kd-sweep
#SBATCH --array=1-4
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=4
#SBATCH --time=02:00:00
#SBATCH --output=runs/slurm-%A-%a.log
set -euo pipefail

teacher=${1:?usage: sbatch scripts/slurm_sweep.sh TEACHER.safetensors}
shards=4
part=${SLURM_ARRAY_TASK_ID:?run this script with sbatch}

target/release/kd sweep \
    --teacher "$teacher" \
    --temperature 1,2,4,8,20 --alpha 0.1,0.5,0.9 --seeds 0,1,2 \
    --shard "$part/$shards" \
    --out "runs/sweep-part-$part" \
    --device cuda --quiet --no-plot
