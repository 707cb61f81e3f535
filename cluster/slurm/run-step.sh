# shellcheck shell=bash
# Sourced by the sbatch scripts (from the submit directory, the repository root): runs one training
# step and turns Slurm's warnings into a checkpoint and, for a time limit, a requeue.
#
# - USR1 (`--signal=B:USR1@300`: the time limit is 300 s away) -> RUN_DIR/STOP: every rank checkpoints
#   at its next agreement point and exits 0; then this script requeues the job (`--requeue` alone
#   never requeues a job that reaches its time limit: it ends TIMEOUT), and the requeued job resumes
#   (resume=auto) with its log appended (`--open-mode=append`).
# - TERM (scancel, or preemption, which Slurm signals to every process of the job) -> RUN_DIR/STOP too;
#   the ranks got the TERM themselves and checkpoint; Slurm requeues a preempted job itself.
# The STOP file is written again every 2 s until the step ends: a run that started after the signal
# removes an earlier attempt's STOP as stale.

# craft_find_run_dir ARGS...: run_dir from the `craft train` arguments.
craft_find_run_dir() {
  local arg
  run_dir=
  for arg in "$@"; do
    case $arg in run_dir=*) run_dir=${arg#run_dir=} ;; esac
  done
  [[ -n $run_dir ]] || { echo "sbatch: pass run_dir=DIR (on storage every node shares)" >&2; exit 2; }
}

craft_setup() {
  # shellcheck disable=SC1091  # the project's virtual environment, made by `make setup`
  if [[ -f ${CRAFT_VENV:-.venv}/bin/activate ]]; then source "${CRAFT_VENV:-.venv}/bin/activate"; fi
  python -c "import craftsman_platform" 2>/dev/null || {
    echo "sbatch: craftsman_platform is not importable by $(command -v python || echo "python (none on PATH)"); set CRAFT_VENV" >&2
    exit 2
  }
  # Slurm 22.05.0-23.02.4: srun does not inherit the job's --cpus-per-task (ranks on one CPU)
  export SRUN_CPUS_PER_TASK=${SLURM_CPUS_PER_TASK:-1}
  export HF_HUB_OFFLINE=1 WANDB_MODE=${WANDB_MODE:-offline}
  echo "craft: job ${SLURM_JOB_ID} start $(date -Is) restart ${SLURM_RESTART_COUNT:-0} on ${SLURM_JOB_NODELIST}"
}

craft_stop=
trap 'craft_stop=time-limit' USR1
trap 'craft_stop=terminated' TERM

# craft_run_step RUN_DIR COMMAND...: COMMAND in the background, the stop relayed; exits with its status.
craft_run_step() {
  local run_dir=$1 pid rc
  shift
  mkdir -p "$run_dir"
  "$@" &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    [[ -n $craft_stop ]] && touch "$run_dir/STOP"
    sleep 2 &
    wait $! # a trapped signal ends this wait at once
  done
  wait "$pid"
  rc=$?
  if [[ $craft_stop == time-limit && $rc == 0 ]] && grep -qs '"status": "preempted"' "$run_dir/workers/rank-0.json"; then
    echo "craft: checkpointed before the time limit; requeueing job ${SLURM_JOB_ID}"
    scontrol requeue "$SLURM_JOB_ID"
  fi
  exit "$rc"
}
