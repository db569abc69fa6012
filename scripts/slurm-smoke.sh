#!/usr/bin/env bash
# Check that the local cluster from scripts/slurm-cluster.sh runs, requeues and preempts jobs.
#
# Usage: scripts/slurm-smoke.sh
# Run it after `scripts/slurm-cluster.sh up`. It took 15-17 s on a 2-CPU VM with an idle node.
#
# It submits three scenarios and prints each step with its delay:
#   1. `sbatch --wrap 'echo hi'` completes, and sacct records it as COMPLETED.
#   2. A `--requeue` job, requeued by `scontrol requeue`, runs again with SLURM_RESTART_COUNT=1.
#   3. A 1-CPU job on partition debug is preempted by an --exclusive job on partition urgent:
#      it receives USR1 (from --signal=B:USR1@...) or at least SIGTERM, and is requeued.
# SMOKE_WAIT_TIMEOUT_S (default 90) limits each wait for a job event, in seconds.
# Exits 1 at the first check that fails, and keeps the job folder for inspection.
# NOTE: scenario 3 also preempts any jobs that others are running on partition debug.
set -euo pipefail
export LC_ALL=C

WAIT_TIMEOUT_S=${SMOKE_WAIT_TIMEOUT_S:-90}
WORK_DIR=$(mktemp -d /tmp/runner-slurm-smoke.XXXXXX)
JOB_IDS=()

now() {
    echo "$EPOCHREALTIME"
}

# Print the seconds from the first timestamp to the second, with 2 decimals.
seconds_between() {
    awk -v start="$1" -v end="$2" 'BEGIN { printf "%.2f", end - start }'
}

log() {
    printf 'smoke: %s\n' "$*"
}

fail() {
    printf 'smoke: FAILED: %s\n' "$*" >&2
    printf 'smoke: job outputs and scripts kept in %s\n' "$WORK_DIR" >&2
    exit 1
}

cancel_jobs() {
    if ((${#JOB_IDS[@]} > 0)); then
        scancel "${JOB_IDS[@]}" 2>/dev/null || true
    fi
}
trap cancel_jobs EXIT

# Submit a batch job and store its id in JOB_ID. Calling this directly, not in $(...), keeps the
# id in JOB_IDS for the cancel on exit.
submit() {
    JOB_ID=$(sbatch --parsable --job-name=runner-smoke "$@") || fail "sbatch $* failed"
    JOB_IDS+=("$JOB_ID")
}

# Wait until a command succeeds, polling every 0.1 s; fail with the description after WAIT_TIMEOUT_S.
wait_for() {
    local description=$1
    shift
    local deadline_s=$((SECONDS + WAIT_TIMEOUT_S))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline_s)); then
            fail "timed out after $WAIT_TIMEOUT_S s waiting for $description"
        fi
        sleep 0.1
    done
}

# Print the states sacct records for every run of a job (one line per run, oldest first).
job_states() {
    sacct --noheader --allocations --duplicates --parsable2 --format=State --jobs="$1"
}

job_has_state() {
    job_states "$1" | grep -qx "$2"
}

# Print the epoch time of the first "EVENT restart=N TIME" line in a job output file.
event_time() {
    local output_file=$1 event=$2
    awk -v key="$event" '$1 " " $2 == key { print $3; exit }' "$output_file" 2>/dev/null
}

has_event() {
    [[ -n "$(event_time "$1" "$2")" ]]
}

# A batch script that logs its start, USR1, SIGTERM and end with epoch times. The first run
# (SLURM_RESTART_COUNT unset or 0) sleeps until killed, and a rerun exits at once.
write_event_script() {
    cat >"$WORK_DIR/events.sh" <<'EOF'
#!/bin/bash
log_event() { echo "$1 restart=${SLURM_RESTART_COUNT:-0} $(date +%s.%N)"; }
trap 'log_event USR1' USR1
trap 'log_event TERM; exit 143' TERM
log_event start
if [[ ${SLURM_RESTART_COUNT:-0} == 0 ]]; then
    # Short sleeps in the foreground let bash run the USR1 trap within 0.1 s.
    for _ in $(seq 3000); do sleep 0.1; done
fi
log_event end
EOF
    chmod +x "$WORK_DIR/events.sh"
}

check_cluster() {
    if ! sinfo --noheader --format=%T >/dev/null 2>&1; then
        fail "sinfo failed; start the cluster with: bash scripts/slurm-cluster.sh up"
    fi
    log "cluster: $(sinfo --noheader --format='%P %T %c CPUs' | tr '\n' ';')"
}

check_trivial_job() {
    local start job_id output_file=$WORK_DIR/hi.out
    start=$(now)
    submit --output="$output_file" --wrap='echo hi'
    job_id=$JOB_ID
    wait_for "job $job_id (echo hi) to be COMPLETED in sacct" job_has_state "$job_id" COMPLETED
    log "echo hi: job $job_id COMPLETED in sacct $(seconds_between "$start" "$(now)") s after sbatch"
    [[ "$(cat "$output_file")" == hi ]] || fail "job $job_id wrote '$(cat "$output_file")' to $output_file, expected 'hi'"
}

check_requeue() {
    local job_id output_file=$WORK_DIR/requeue.out
    submit --requeue --output="$output_file" --open-mode=append "$WORK_DIR/events.sh"
    job_id=$JOB_ID
    wait_for "job $job_id to start" has_event "$output_file" "start restart=0"

    local requeue_time
    requeue_time=$(now)
    scontrol requeue "$job_id" || fail "scontrol requeue $job_id failed"
    wait_for "job $job_id to run again with SLURM_RESTART_COUNT=1" has_event "$output_file" "start restart=1"
    log "requeue: job $job_id ran again with SLURM_RESTART_COUNT=1" \
        "$(seconds_between "$requeue_time" "$(event_time "$output_file" "start restart=1")") s after scontrol requeue"

    wait_for "job $job_id to be COMPLETED after its rerun" job_has_state "$job_id" COMPLETED
    job_has_state "$job_id" REQUEUED || fail "sacct shows no REQUEUED run of job $job_id: $(job_states "$job_id" | tr '\n' ' ')"
}

check_preemption() {
    local low_id urgent_id output_file=$WORK_DIR/preempted.out
    submit --requeue --partition=debug --cpus-per-task=1 --time=10 --signal=B:USR1@60 \
        --output="$output_file" --open-mode=append "$WORK_DIR/events.sh"
    low_id=$JOB_ID
    wait_for "job $low_id on debug to start" has_event "$output_file" "start restart=0"

    local submit_time
    submit_time=$(now)
    submit --partition=urgent --exclusive --output="$WORK_DIR/urgent.out" --wrap='date +%s.%N; sleep 2'
    urgent_id=$JOB_ID
    wait_for "job $low_id to receive USR1 or SIGTERM" \
        eval "has_event '$output_file' 'USR1 restart=0' || has_event '$output_file' 'TERM restart=0'"
    wait_for "job $urgent_id on urgent to be COMPLETED" job_has_state "$urgent_id" COMPLETED
    wait_for "job $low_id to run again with SLURM_RESTART_COUNT=1" has_event "$output_file" "start restart=1"

    local usr1_time term_time urgent_start_time rerun_time
    usr1_time=$(event_time "$output_file" "USR1 restart=0")
    term_time=$(event_time "$output_file" "TERM restart=0")
    urgent_start_time=$(head -n 1 "$WORK_DIR/urgent.out")
    rerun_time=$(event_time "$output_file" "start restart=1")
    if [[ -n $usr1_time ]]; then
        log "preemption: job $low_id got USR1 $(seconds_between "$submit_time" "$usr1_time") s after sbatch of job $urgent_id"
    else
        log "preemption: job $low_id got no USR1, only SIGTERM"
    fi
    if [[ -n $term_time ]]; then
        log "preemption: job $low_id got SIGTERM $(seconds_between "$submit_time" "$term_time") s after sbatch of job $urgent_id"
    fi
    log "preemption: job $urgent_id started $(seconds_between "$submit_time" "$urgent_start_time") s after its sbatch"
    log "preemption: job $low_id ran again $(seconds_between "$submit_time" "$rerun_time") s after sbatch of job $urgent_id"

    job_has_state "$low_id" PREEMPTED || fail "sacct shows no PREEMPTED run of job $low_id: $(job_states "$low_id" | tr '\n' ' ')"
    wait_for "job $low_id to be COMPLETED after its rerun" job_has_state "$low_id" COMPLETED
}

main() {
    local start
    start=$(now)
    check_cluster
    write_event_script
    check_trivial_job
    check_requeue
    check_preemption
    log "all checks passed in $(seconds_between "$start" "$(now)") s"
    rm -rf "$WORK_DIR"
}

main "$@"
