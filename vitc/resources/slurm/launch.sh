# ---- vitc launch body (vitc/resources/slurm/launch.sh), shared by every vitc sbatch template ----
# Runs in the batch shell on the first node: finds the master, then starts one task per GPU
# (one per node on CPU) with srun. Rank, world size and local rank reach vitc through
# SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID (vitc.distributed.env); master through the two exports.
set -uo pipefail  # no -e: `wait` returns >128 when the USR1 trap interrupts it
cd {{workdir}}

# sbatch exports the submitting shell's environment: a rank it had (a shell under torchrun, a
# process that trained in-process) would win over Slurm's in vitc.distributed.env. Slurm's say here.
unset RANK WORLD_SIZE LOCAL_RANK LOCAL_WORLD_SIZE GROUP_RANK

# Node names need not resolve on the training network: use the first node's NodeAddr.
first_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MASTER_ADDR=$(scontrol show node "$first_node" | sed -n 's/.*NodeAddr=\([^ ]*\).*/\1/p')
export MASTER_ADDR=${MASTER_ADDR:-$first_node}
# Same on every node, different for two jobs sharing a node (array tasks each have a job id), and
# below Linux's ephemeral ports (32768-60999): vitc.distributed.env.slurm_master_port, the same rule.
export MASTER_PORT=$((10000 + SLURM_JOB_ID % 20000))

# NCCL and threading: the one place these are set. A failed or timed-out collective raises
# (train.collective_timeout_min) instead of hanging the job; site settings come from slurm.env below.
export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}
export PYTHONUNBUFFERED=1
{{env_exports}}
echo "vitc: job $SLURM_JOB_ID restart ${SLURM_RESTART_COUNT:-0} on $SLURM_JOB_NODELIST," \
     "$SLURM_NTASKS tasks, master $MASTER_ADDR:$MASTER_PORT"

# Preemption: Slurm signals only this shell (--signal=B:USR1@N, or `scancel --signal=USR1
# --batch`); srun forwards USR1 to every task, whose PreemptionSignal then asks the trainer to
# finish its step, checkpoint and `scontrol requeue` the job.
srun_pid=""
forward_preemption() {
    echo "vitc: $(date +%T) preemption signal received; forwarding USR1 to every rank"
    [ -n "$srun_pid" ] && kill -USR1 "$srun_pid"
}
trap forward_preemption USR1

# --kill-on-bad-exit: one rank that dies ends the step; --wait: one rank that exits cleanly
# while others still run ends it after slurm.exit_wait_s. Neither case can hang the job.
# --cpus-per-task again: srun 22.05 does not inherit it from sbatch (its release notes).
# Binding (slurm.cpu_bind, slurm.gpu_bind): a task bound to one GPU sees it as device 0, a task
# that sees every GPU takes the one at its local rank (vitc.distributed.env.gpu_index).
srun --kill-on-bad-exit=1 --wait={{exit_wait_s}} --cpus-per-task="$SLURM_CPUS_PER_TASK" --label {{srun_binding}}\
    {{python}} -m vitc.cli "${VITC_ARGS[@]}" &
srun_pid=$!
while kill -0 "$srun_pid" 2>/dev/null; do wait "$srun_pid"; done
wait "$srun_pid"
status=$?
[ "$status" -eq 0 ] && exit 0

# A node that failed (down, not responding) takes its ranks with it: requeue the job, which resumes
# from the newest complete checkpoint on other nodes, up to slurm.node_failure_requeues times over
# the run's life (counted in a file beside the job logs; SLURM_RESTART_COUNT counts preemptions too).
lost=""
for node in $(scontrol show hostnames "$SLURM_JOB_NODELIST"); do
    state=$(scontrol show node "$node" 2>/dev/null | grep -o 'State=[^ ]*')
    case "$state" in *DOWN*|*FAIL*|*NOT_RESPONDING*|*'*'*) lost="$lost $node" ;; esac
done
lost=${lost# }
if [ -n "$lost" ]; then
    count_file={{state_dir}}/node_failures${SLURM_ARRAY_TASK_ID:+.$SLURM_ARRAY_TASK_ID}
    used=$(cat "$count_file" 2>/dev/null || echo 0)
    if [ "$used" -lt {{node_failure_requeues}} ]; then
        echo $((used + 1)) > "$count_file"
        echo "vitc: node failure ($lost): requeueing job $SLURM_JOB_ID ($((used + 1)) of" \
             "{{node_failure_requeues}}); it resumes from the newest complete checkpoint" >&2
        scontrol requeue "$SLURM_JOB_ID" && exit 0
    fi
    echo "vitc: error: node failure ($lost) after $used requeue(s) for node failures" \
         "(slurm.node_failure_requeues={{node_failure_requeues}}): giving up; resubmit the same" \
         "command to resume from the newest complete checkpoint" >&2
    exit "$status"
fi
echo "vitc: error: the training step ended with status $status: a rank failed or was" \
     "killed (its srun error is above); the job ends here" >&2
exit "$status"
