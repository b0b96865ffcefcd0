#!/usr/bin/env bash
# Run an entry script on every node of the current Slurm job with `accelerate launch`: one srun task per node,
# each expanding its own --machine_rank from $SLURM_NODEID. Shared by train.sbatch and dpo.sbatch.
#
#   bash sbatch/launch.sh SCRIPT [CONFIG.yaml] [--flag value ...]
#
# One process per GPU; on nodes without GPUs, CPU_PROCESSES_PER_NODE processes (default 1) and `--use_cpu true`.
# Variables (all optional): VENV, ACCELERATE_CONFIG (e.g. configs/accelerate/fsdp2.yaml), GPUS_PER_NODE,
# CPU_PROCESSES_PER_NODE, MAIN_PROCESS_PORT, ACCELERATE_ARGS,
# DRY_RUN=1 (print the srun command and what each node would run, run nothing). See sbatch/README.md.
# A requeued job ($SLURM_RESTART_COUNT > 0) gets `--resume true`; USR1 to the batch shell requeues the job.
set -euo pipefail

if (($# < 1)); then
    echo "usage: launch.sh SCRIPT [CONFIG.yaml] [--flag value ...]" >&2
    exit 2
fi
: "${SLURM_JOB_NODELIST:?launch.sh runs inside a Slurm job (sbatch or salloc)}"
script=$1
shift

if [[ -n ${VENV:-} ]]; then
    # shellcheck disable=SC1091
    source "$VENV/bin/activate"
fi

count_gpus() {
    if [[ -n ${SLURM_GPUS_ON_NODE:-} ]]; then
        echo "$SLURM_GPUS_ON_NODE"
    elif command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
        nvidia-smi -L | grep -c '^GPU'
    else
        echo 0
    fi
}

nodes=${SLURM_NNODES:-1}
gpus_per_node=${GPUS_PER_NODE:-$(count_gpus)}
main_process_ip=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
main_process_port=${MAIN_PROCESS_PORT:-$((20000 + ${SLURM_JOB_ID:-0} % 20000))}
script_args=("$@")
if ((${SLURM_RESTART_COUNT:-0} > 0)); then
    # a requeued job (preempted, or requeued on USR1 below): continue from the newest complete checkpoint
    script_args+=(--resume true)
fi
if ((gpus_per_node > 0)); then
    processes_per_node=$gpus_per_node
else
    processes_per_node=${CPU_PROCESSES_PER_NODE:-1}
    script_args+=(--use_cpu true)
fi
num_processes=$((nodes * processes_per_node))
cpus_per_node=${SLURM_CPUS_PER_TASK:-${SLURM_CPUS_ON_NODE:-$(nproc)}}
threads_per_process=$((cpus_per_node / processes_per_node > 0 ? cpus_per_node / processes_per_node : 1))

launch_args=(
    --num_machines "$nodes"
    --main_process_ip "$main_process_ip"
    --main_process_port "$main_process_port"
    --rdzv_backend c10d
    --num_processes "$num_processes"
    --num_cpu_threads_per_process "$threads_per_process"
)
if [[ -n ${ACCELERATE_CONFIG:-} ]]; then
    # a sharding config (configs/accelerate/*.yaml) sets the distributed type; the job sets the process counts
    launch_args=(--config_file "$ACCELERATE_CONFIG" "${launch_args[@]}")
elif ((num_processes > 1)); then
    launch_args+=(--multi_gpu)
fi
read -r -a extra_launch_args <<<"${ACCELERATE_ARGS:-}"
launch_args+=("${extra_launch_args[@]}")

# Runs on each node; $SLURM_NODEID is expanded there, not here.
per_node_command='accelerate launch --machine_rank "$SLURM_NODEID" "$@"'
srun_args=(--nodes="$nodes" --ntasks="$nodes" --ntasks-per-node=1 --kill-on-bad-exit=1)
if [[ -n ${SLURM_CPUS_PER_TASK:-} ]]; then
    export SRUN_CPUS_PER_TASK=$SLURM_CPUS_PER_TASK # srun no longer inherits the job's --cpus-per-task (Slurm >= 22.05)
fi

echo "launch.sh: $nodes node(s) x $processes_per_node process(es) on $([[ $gpus_per_node -gt 0 ]] && echo GPU || echo CPU)," \
    "$threads_per_process thread(s) each, main process $main_process_ip:$main_process_port"
if [[ ${DRY_RUN:-0} == 1 ]]; then
    printf "srun %s bash -c '%s'" "${srun_args[*]}" "$per_node_command"
    printf ' %q' accelerate-launch "${launch_args[@]}" "$script" "${script_args[@]}"
    printf '\n'
    # Emulate srun: run the same per-node command once per node id, with `accelerate` only printing its arguments.
    accelerate() {
        printf '[node %s] accelerate' "$SLURM_NODEID"
        printf ' %q' "$@"
        printf '\n'
    }
    export -f accelerate
    for ((node_id = 0; node_id < nodes; node_id++)); do
        SLURM_NODEID=$node_id bash -c "$per_node_command" accelerate-launch "${launch_args[@]}" "$script" "${script_args[@]}"
    done
    exit 0
fi
# USR1 (sbatch --signal=B:USR1@SECONDS, sent before the time limit) requeues the job; the requeued run resumes.
requeue() {
    echo "launch.sh: USR1 received: requeueing job $SLURM_JOB_ID (restart $((${SLURM_RESTART_COUNT:-0} + 1)))"
    scontrol requeue "$SLURM_JOB_ID"
}
trap requeue USR1
srun "${srun_args[@]}" bash -c "$per_node_command" accelerate-launch "${launch_args[@]}" "$script" "${script_args[@]}" &
srun_pid=$!
status=0
wait "$srun_pid" || status=$?
while kill -0 "$srun_pid" 2>/dev/null; do # `wait` returned for the trap: keep waiting for srun
    status=0
    wait "$srun_pid" || status=$?
done
exit "$status"
