#!/usr/bin/env bash
# Install, start, stop or check a one-node SLURM cluster (Debian 12, slurm 22.05) bound to loopback.
#
# Usage: scripts/slurm-cluster.sh up|down|status
#
# All state (configs, munge key, MariaDB data, spool folders, logs, pid files) lives in
# RUNNER_SLURM_DIR (default /tmp/runner-slurm). `up` also points /etc/slurm/slurm.conf at the
# generated config, so sbatch, squeue and sacct work without SLURM_CONF. `up` is idempotent:
# it installs only missing packages and starts only daemons that are not running.
# Runs as root because it installs packages and starts slurmd, which must be root to run jobs.
set -euo pipefail
export LC_ALL=C

STATE_DIR=${RUNNER_SLURM_DIR:-/tmp/runner-slurm}
CLUSTER_NAME=runner
NODE_NAME=node1
DB_NAME=slurm_acct_db
DB_USER=slurm
READY_TIMEOUT_S=30
PACKAGES=(slurmctld slurmd slurmdbd slurm-client munge mariadb-server)

ETC_DIR=$STATE_DIR/etc
RUN_DIR=$STATE_DIR/run
LOG_DIR=$STATE_DIR/log
MUNGE_DIR=$STATE_DIR/munge
MYSQL_DATA_DIR=$STATE_DIR/mysql
SPOOL_DIR=$STATE_DIR/spool
SLURM_CONF_FILE=$ETC_DIR/slurm.conf
SLURMDBD_CONF_FILE=$ETC_DIR/slurmdbd.conf
MYSQL_CONF_FILE=$ETC_DIR/my.cnf
MUNGE_KEY_FILE=$MUNGE_DIR/munge.key
MUNGE_SOCKET=$RUN_DIR/munge.socket
MYSQL_SOCKET=$RUN_DIR/mysqld.sock
DB_PASSWORD_FILE=$MUNGE_DIR/db-password
SYSTEM_SLURM_CONF=/etc/slurm/slurm.conf

# Daemons and clients find slurmdbd.conf next to the file SLURM_CONF names.
export SLURM_CONF=$SLURM_CONF_FILE

START_TIME_US=${EPOCHREALTIME//[!0-9]/}

# Print one step with the seconds elapsed since the script started.
log() {
    local elapsed_ms=$(((${EPOCHREALTIME//[!0-9]/} - START_TIME_US) / 1000))
    printf '[%3d.%01ds] %s\n' $((elapsed_ms / 1000)) $((elapsed_ms % 1000 / 100)) "$*"
}

die() {
    printf 'slurm-cluster: error: %s\n' "$*" >&2
    exit 1
}

# Print the last lines of a log file to stderr, for the error of a daemon that did not start.
show_log_tail() {
    local log_file=$1
    if [[ -f $log_file ]]; then
        printf -- '--- last 30 lines of %s ---\n' "$log_file" >&2
        tail -n 30 "$log_file" >&2
        printf -- '--- end of %s ---\n' "$log_file" >&2
    else
        printf 'slurm-cluster: %s does not exist\n' "$log_file" >&2
    fi
}

# Wait until a command succeeds, polling every 0.2 s, and return 1 after READY_TIMEOUT_S.
wait_until() {
    local deadline_s=$((SECONDS + READY_TIMEOUT_S))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline_s)); then
            return 1
        fi
        sleep 0.2
    done
}

# Packages

install_packages() {
    local missing=()
    local package
    for package in "${PACKAGES[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$package")
        fi
    done
    if ((${#missing[@]} == 0)); then
        log "packages: already installed"
        return
    fi

    log "packages: installing ${missing[*]}"
    # The package scripts would start Debian's own munged, mariadbd and slurm daemons with the
    # system configs, and those would take the ports and sockets. A policy-rc.d that exits 101
    # is Debian's way to forbid service starts during an install.
    local added_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        added_policy=1
    fi
    local apt_log=$LOG_DIR/apt.log
    local status=0
    {
        apt-get update &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
    } >"$apt_log" 2>&1 || status=$?
    if ((added_policy)); then
        rm -f /usr/sbin/policy-rc.d
    fi
    if ((status != 0)); then
        show_log_tail "$apt_log"
        die "apt-get install of ${missing[*]} failed with exit code $status; see $apt_log"
    fi
    log "packages: installed"
}

# Config files

# Replace a file only when its content changed, so that a warm `up` keeps running daemons.
# Sets CONFIG_CHANGED=1 when the file was written.
write_file() {
    local path=$1 mode=$2 content=$3
    if [[ -f $path ]] && [[ "$(cat "$path")" == "$content" ]]; then
        return
    fi
    local tmp_path
    tmp_path=$(mktemp "$path.XXXXXX")
    printf '%s\n' "$content" >"$tmp_path"
    chmod "$mode" "$tmp_path"
    mv -f "$tmp_path" "$path"
    CONFIG_CHANGED=1
}

# Print the node's CPU topology as slurmd detects it, with RealMemory lowered by 5% so that
# slurmd's own count, which varies by a few MB between boots, never drops below the config.
node_hardware() {
    local detected memory_mb
    detected=$(slurmd -C | head -n 1)
    memory_mb=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$detected")
    [[ -n $memory_mb ]] || die "slurmd -C printed no RealMemory: '$detected'"
    sed -e 's/^NodeName=[^ ]* //' -e "s/RealMemory=[0-9]*/RealMemory=$((memory_mb * 95 / 100))/" <<<"$detected"
}

write_slurm_conf() {
    local hardware
    hardware=$(node_hardware)
    write_file "$SLURM_CONF_FILE" 644 "# Generated by scripts/slurm-cluster.sh; edits are overwritten by the next 'up'.
ClusterName=$CLUSTER_NAME
SlurmctldHost=localhost($BIND_ADDRESS)
# NoCtldInAddrAny and NoInAddrAny bind slurmctld, slurmd and clients to $BIND_ADDRESS, not 0.0.0.0.
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
# root, because the jobs of this test cluster run as root anyway and the state folder is root's.
# A dedicated slurm user would need every spool, log and key path chowned, for no isolation gained.
SlurmUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
# cred_expire=5 (default 120) also sets how long a requeued job pends (reason BeginTime) before
# it may start again: about 7 s in scripts/slurm-smoke.sh on a 2-CPU VM, instead of 2-3 minutes.
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=5
CredType=cred/munge
StateSaveLocation=$SPOOL_DIR/slurmctld
SlurmdSpoolDir=$SPOOL_DIR/slurmd
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# Without cgroups on the test machines, linuxproc tracks job processes by parent pid and
# task/none binds nothing.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
MpiDefault=none
# There is no mail server here, so /bin/true drops --mail-type notices (the default logs errors).
MailProg=/bin/true
SelectType=select/cons_tres
# CR_CPU hands out single CPUs, so two 1-CPU jobs share a 2-CPU node.
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
KillWait=5
JobRequeue=1
ReturnToService=2
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=$BIND_ADDRESS
AccountingStoragePort=6819
# Clients and slurmctld reach slurmdbd with the munge socket named here, not the one in AuthInfo.
AccountingStoragePass=$MUNGE_SOCKET
# A job on 'urgent' requeues the jobs on 'debug' that hold its resources. preempt_send_user_signal
# sends the job's --signal signal at preemption instead of only at its time before the end. With
# GraceTime=0 (the default) that signal and SIGTERM arrive within milliseconds, and SIGKILL
# follows KillWait seconds later.
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldParameters=preempt_send_user_signal
NodeName=$NODE_NAME NodeAddr=$BIND_ADDRESS $hardware State=UNKNOWN
PartitionName=debug Nodes=$NODE_NAME Default=YES PriorityTier=1 MaxTime=INFINITE State=UP
PartitionName=urgent Nodes=$NODE_NAME Default=NO PriorityTier=2 MaxTime=INFINITE State=UP"
}

write_slurmdbd_conf() {
    write_file "$SLURMDBD_CONF_FILE" 600 "# Generated by scripts/slurm-cluster.sh; edits are overwritten by the next 'up'.
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
DbdHost=localhost
DbdAddr=$BIND_ADDRESS
DbdPort=6819
CommunicationParameters=NoInAddrAny
SlurmUser=root
LogFile=$LOG_DIR/slurmdbd.log
PidFile=$RUN_DIR/slurmdbd.pid
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=3306
StorageUser=$DB_USER
StoragePass=$(cat "$DB_PASSWORD_FILE")
StorageLoc=$DB_NAME"
}

write_mysql_conf() {
    # Small InnoDB files keep the data folder near 30 MB, and bind-address keeps MariaDB on loopback.
    write_file "$MYSQL_CONF_FILE" 644 "[mariadbd]
datadir=$MYSQL_DATA_DIR
socket=$MYSQL_SOCKET
pid-file=$RUN_DIR/mysqld.pid
log-error=$LOG_DIR/mysqld.log
user=root
bind-address=127.0.0.1
port=3306
innodb_log_file_size=16M
innodb_buffer_pool_size=64M
innodb_lock_wait_timeout=900"
}

# Point the default slurm.conf path at the generated one, but never replace a regular file there.
link_system_conf() {
    if [[ -L $SYSTEM_SLURM_CONF ]] && [[ "$(readlink "$SYSTEM_SLURM_CONF")" == "$SLURM_CONF_FILE" ]]; then
        return
    fi
    if [[ -e $SYSTEM_SLURM_CONF && ! -L $SYSTEM_SLURM_CONF ]]; then
        die "$SYSTEM_SLURM_CONF is a regular file, not a link made by this script; move it away or set SLURM_CONF=$SLURM_CONF_FILE for every client"
    fi
    mkdir -p "$(dirname "$SYSTEM_SLURM_CONF")"
    ln -sfn "$SLURM_CONF_FILE" "$SYSTEM_SLURM_CONF"
    log "config: linked $SYSTEM_SLURM_CONF -> $SLURM_CONF_FILE"
}

# slurm 22.05 has no bind-address setting. With NoInAddrAny its daemons bind to the address that
# the host name resolves to, so this sets BIND_ADDRESS to it and rejects a non-loopback address.
resolve_bind_address() {
    local host
    host=$(hostname)
    BIND_ADDRESS=$(getent ahostsv4 "$host" | awk 'NR == 1 { print $1 }')
    if [[ $BIND_ADDRESS != 127.* ]]; then
        die "host name '$host' resolves to '${BIND_ADDRESS:-nothing}', not to a 127.x address, so slurm would listen beyond loopback; add '127.0.1.1 $host' to /etc/hosts"
    fi
}

write_configs() {
    mkdir -p "$ETC_DIR" "$RUN_DIR" "$LOG_DIR" "$SPOOL_DIR/slurmctld" "$SPOOL_DIR/slurmd"
    # munged rejects a socket folder that others cannot traverse and a key folder that they can.
    chmod 755 "$STATE_DIR" "$RUN_DIR"
    mkdir -p "$MUNGE_DIR"
    chmod 700 "$MUNGE_DIR"
    if [[ ! -s $DB_PASSWORD_FILE ]]; then
        (umask 077 && od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$DB_PASSWORD_FILE")
    fi

    CONFIG_CHANGED=0
    write_slurm_conf
    SLURM_CONF_CHANGED=$CONFIG_CHANGED
    CONFIG_CHANGED=0
    write_slurmdbd_conf
    SLURMDBD_CONF_CHANGED=$CONFIG_CHANGED
    CONFIG_CHANGED=0
    write_mysql_conf
    MYSQL_CONF_CHANGED=$CONFIG_CHANGED
    if ((SLURM_CONF_CHANGED || SLURMDBD_CONF_CHANGED || MYSQL_CONF_CHANGED)); then
        log "config: written to $ETC_DIR"
    else
        log "config: $ETC_DIR is up to date"
    fi
    link_system_conf
}

# Daemons

# Each daemon runs in the foreground under setsid, so it outlives the shell that ran `up` and $!
# is the daemon's own pid, which goes to RUN_DIR/NAME.pid. Each NAME (munged, mariadbd, slurmdbd,
# slurmctld, slurmd) is also the daemon's process name.

pid_file() {
    echo "$RUN_DIR/$1.pid"
}

# Succeed when the process with this pid is the named daemon and not a zombie. Checking the name
# keeps a stale pid file from pointing at an unrelated process that reused the pid. Zombies count
# as stopped because PID 1 may take a second or two to reap a daemon that `up` left behind.
is_daemon_process() {
    local name=$1 pid=$2 stat
    [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$name" ]] || return 1
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
    [[ $(awk '{ print $3 }' <<<"$stat") != Z ]]
}

# Print the pid of a running daemon, or fail when it is not running.
running_pid() {
    local name=$1 pid
    pid=$(cat "$(pid_file "$name")" 2>/dev/null) || return 1
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    is_daemon_process "$name" "$pid" || return 1
    echo "$pid"
}

stop_daemon() {
    local name=$1 pid
    if ! pid=$(running_pid "$name"); then
        log "$name: not running"
        rm -f "$(pid_file "$name")"
        return
    fi
    kill -TERM "$pid"
    local deadline_s=$((SECONDS + 15))
    while is_daemon_process "$name" "$pid"; do
        if ((SECONDS >= deadline_s)); then
            log "$name: still running 15 s after SIGTERM, sending SIGKILL to pid $pid"
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.2
    done
    rm -f "$(pid_file "$name")"
    log "$name: stopped (pid $pid)"
}

# Start a daemon unless it runs already, then wait until READY_COMMAND succeeds.
# Usage: start_daemon NAME LOG_FILE RESTART READY_COMMAND -- DAEMON_COMMAND...
# RESTART=1 restarts a running daemon, for a config that changed under it. LOG_DIR/NAME.out
# receives the stdout and stderr of this start, which include errors from before LOG_FILE opens.
start_daemon() {
    local name=$1 log_file=$2 restart=$3 ready_command=$4
    shift 5
    local pid
    if pid=$(running_pid "$name"); then
        if ((restart)); then
            log "$name: config changed, restarting pid $pid"
            stop_daemon "$name"
        else
            log "$name: already running (pid $pid)"
            wait_ready "$name" "$log_file" "$ready_command"
            return
        fi
    fi

    setsid "$@" </dev/null >"$LOG_DIR/$name.out" 2>&1 &
    pid=$!
    echo "$pid" >"$(pid_file "$name")"
    # Until setsid has exec'd the daemon, the process still has another name.
    local tries
    for ((tries = 0; tries < 50; tries++)); do
        if is_daemon_process "$name" "$pid" || [[ ! -e /proc/$pid/comm ]]; then
            break
        fi
        sleep 0.1
    done
    wait_ready "$name" "$log_file" "$ready_command"
    log "$name: started (pid $pid)"
}

# Wait until READY_COMMAND succeeds. Fail at once when the daemon exits, or after READY_TIMEOUT_S.
wait_ready() {
    local name=$1 log_file=$2 ready_command=$3
    local deadline_s=$((SECONDS + READY_TIMEOUT_S))
    while running_pid "$name" >/dev/null; do
        if eval "$ready_command" >/dev/null 2>&1; then
            return
        fi
        if ((SECONDS >= deadline_s)); then
            show_startup_output "$name" "$log_file"
            die "$name runs but did not become ready within $READY_TIMEOUT_S s (check: $ready_command); see $log_file"
        fi
        sleep 0.2
    done
    show_startup_output "$name" "$log_file"
    die "$name exited during startup; see $LOG_DIR/$name.out and $log_file"
}

# Show what the last start printed. Slurm daemons in the foreground print every log line there
# too, so the log file is shown only when that output is empty.
show_startup_output() {
    local name=$1 log_file=$2
    if [[ -s $LOG_DIR/$name.out ]]; then
        show_log_tail "$LOG_DIR/$name.out"
    else
        show_log_tail "$log_file"
    fi
}

start_munged() {
    if [[ ! -s $MUNGE_KEY_FILE ]]; then
        mungekey --create --keyfile="$MUNGE_KEY_FILE"
        log "munged: created key $MUNGE_KEY_FILE"
    fi
    start_daemon munged "$LOG_DIR/munged.log" 0 \
        "munge -S '$MUNGE_SOCKET' -n | unmunge -S '$MUNGE_SOCKET'" -- \
        munged --foreground --key-file="$MUNGE_KEY_FILE" --socket="$MUNGE_SOCKET" \
        --pid-file="$RUN_DIR/munged.pid" --log-file="$LOG_DIR/munged.log" \
        --seed-file="$MUNGE_DIR/munged.seed"
}

start_mariadb() {
    if [[ ! -d $MYSQL_DATA_DIR/mysql ]]; then
        rm -rf "$MYSQL_DATA_DIR"
        if ! mariadb-install-db --defaults-file="$MYSQL_CONF_FILE" --auth-root-authentication-method=socket \
            --skip-test-db >"$LOG_DIR/mariadb-install-db.log" 2>&1; then
            show_log_tail "$LOG_DIR/mariadb-install-db.log"
            die "mariadb-install-db failed for data folder $MYSQL_DATA_DIR"
        fi
        log "mariadbd: created data folder $MYSQL_DATA_DIR"
    fi
    start_daemon mariadbd "$LOG_DIR/mysqld.log" "$MYSQL_CONF_CHANGED" \
        "mariadb-admin --socket='$MYSQL_SOCKET' ping" -- \
        mariadbd --defaults-file="$MYSQL_CONF_FILE"

    # root logs in through the socket by unix_socket authentication, so it needs no password.
    local password
    password=$(cat "$DB_PASSWORD_FILE")
    mariadb --socket="$MYSQL_SOCKET" --user=root <<EOF
CREATE DATABASE IF NOT EXISTS $DB_NAME;
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$password';
CREATE USER IF NOT EXISTS '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$password';
ALTER USER '$DB_USER'@'localhost' IDENTIFIED BY '$password';
ALTER USER '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$password';
GRANT ALL ON $DB_NAME.* TO '$DB_USER'@'localhost';
GRANT ALL ON $DB_NAME.* TO '$DB_USER'@'127.0.0.1';
EOF
    log "mariadbd: database $DB_NAME and user $DB_USER ready"
}

start_slurmdbd() {
    start_daemon slurmdbd "$LOG_DIR/slurmdbd.log" "$SLURMDBD_CONF_CHANGED" \
        "sacctmgr --noheader --parsable2 list cluster" -- \
        slurmdbd -D

    # slurmctld registers with slurmdbd only as a cluster that the database already lists.
    if [[ -z "$(sacctmgr --noheader --parsable2 list cluster "$CLUSTER_NAME" format=cluster)" ]]; then
        sacctmgr --immediate add cluster "$CLUSTER_NAME" >/dev/null
        log "slurmdbd: added cluster $CLUSTER_NAME"
    fi
}

start_slurmctld() {
    start_daemon slurmctld "$LOG_DIR/slurmctld.log" "$SLURM_CONF_CHANGED" \
        "scontrol ping | grep -q UP" -- \
        slurmctld -D -f "$SLURM_CONF_FILE"
}

node_state() {
    sinfo --noheader --nodes="$NODE_NAME" --format=%T 2>/dev/null | head -n 1
}

# Succeed when the node responds and accepts jobs (sinfo marks a node that does not respond with *).
node_is_usable() {
    node_state | grep -Eq '^(idle|mixed|allocated|completing|planned)$'
}

# Succeed when a slurmd started at or after this epoch second has registered with slurmctld, so
# that a node state saved from before a slurmd restart does not count.
slurmd_registered_since() {
    local start_time
    start_time=$(scontrol show node "$NODE_NAME" | grep -o 'SlurmdStartTime=[^ ]*' | cut -d= -f2)
    [[ -n $start_time && $start_time != None ]] && (($(date -d "$start_time" +%s) >= $1))
}

start_slurmd() {
    local ready_command="node_state | grep -qv '[*]'"
    if ! running_pid slurmd >/dev/null || ((SLURM_CONF_CHANGED)); then
        ready_command="slurmd_registered_since $(date +%s)"
    fi
    # -N: the machine's host name is not the node name, and need not resolve at all.
    start_daemon slurmd "$LOG_DIR/slurmd.log" "$SLURM_CONF_CHANGED" "$ready_command" -- \
        slurmd -D -f "$SLURM_CONF_FILE" -N "$NODE_NAME"

    # A drain (for example after a job that linuxproc could not kill) survives restarts.
    local state
    state=$(node_state)
    if [[ $state == drain* || $state == down* ]]; then
        scontrol update nodename="$NODE_NAME" state=resume
        log "slurmd: resumed node $NODE_NAME from state $state"
    fi
}

wait_cluster_usable() {
    if ! wait_until node_is_usable; then
        show_log_tail "$LOG_DIR/slurmd.log"
        die "node $NODE_NAME is '$(node_state)', not idle, after $READY_TIMEOUT_S s; see $LOG_DIR/slurmd.log and $LOG_DIR/slurmctld.log"
    fi
    if ! wait_until sacct --noheader --allocations --starttime=now-1minutes; then
        show_log_tail "$LOG_DIR/slurmdbd.log"
        die "sacct failed for $READY_TIMEOUT_S s; see $LOG_DIR/slurmdbd.log"
    fi
    log "cluster: node $NODE_NAME is $(node_state), partitions debug and urgent, sacct answers"
}

# Subcommands

cluster_up() {
    mkdir -p "$LOG_DIR"
    install_packages
    resolve_bind_address
    write_configs
    start_munged
    start_mariadb
    start_slurmdbd
    start_slurmctld
    start_slurmd
    wait_cluster_usable
    log "up: done; state in $STATE_DIR"
}

# Stop the daemons in the reverse order of `up`. Jobs already running keep their slurmstepd
# processes, which reattach to slurmd after the next `up`.
cluster_down() {
    local name
    for name in slurmd slurmctld slurmdbd mariadbd munged; do
        stop_daemon "$name"
    done
}

cluster_status() {
    local name pid failed=0
    for name in munged mariadbd slurmdbd slurmctld slurmd; do
        if pid=$(running_pid "$name"); then
            echo "$name: running (pid $pid)"
        else
            echo "$name: not running"
            failed=1
        fi
    done
    local state
    state=$(node_state || true)
    echo "node $NODE_NAME: ${state:-unknown}"
    if ! node_is_usable; then
        failed=1
    fi
    if sacct --noheader --allocations --starttime=now-1minutes >/dev/null 2>&1; then
        echo "sacct: answers"
    else
        echo "sacct: failed"
        failed=1
    fi
    return "$failed"
}

main() {
    if (($# != 1)); then
        die "expected one subcommand, got $#; usage: $0 up|down|status"
    fi
    if ((EUID != 0)); then
        die "must run as root (it installs packages and starts slurmd); run it with sudo"
    fi
    # slurm.conf and my.cnf take paths unquoted, so a space would split a path into two words.
    if [[ $STATE_DIR != /* || $STATE_DIR =~ [[:space:]] ]]; then
        die "RUNNER_SLURM_DIR='$STATE_DIR' must be an absolute path without spaces; choose another folder"
    fi
    case $1 in
    up) cluster_up ;;
    down) cluster_down ;;
    status) cluster_status ;;
    *) die "unknown subcommand '$1'; usage: $0 up|down|status" ;;
    esac
}

main "$@"
