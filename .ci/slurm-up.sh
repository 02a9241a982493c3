#!/usr/bin/env bash
# A single-node Slurm on this machine, for the Slurm tests (tests/test_slurm.py) and for trying
# `mmbench run --executor slurm` without a cluster.
#
#   .ci/slurm-up.sh          install (Debian's slurm-wlm + munge, as root), configure and start munged,
#                            slurmctld and slurmd; wait until `sinfo` shows the node idle. Idempotent:
#                            a Slurm that already answers is left as it is.
#   .ci/slurm-up.sh down     stop only the daemons this script started (their pids are in $STATE).
#   .ci/slurm-up.sh status   print sinfo.
#
# Exit status 0 when Slurm answers; otherwise non-zero with a one-line reason (the Slurm tests then skip).
set -uo pipefail

STATE=${MMBENCH_SLURM_STATE:-/var/lib/mmbench-slurm}
CONF=/etc/slurm/slurm.conf
PARTITION=${MMBENCH_SLURM_PARTITION:-debug}
say() { echo "slurm-up: $*" >&2; }
die() { say "$*"; exit 1; }

node_idle() {
    local s
    s=$(timeout 10 sinfo -h -o '%t' 2>/dev/null | head -1)
    [[ "$s" == idle* || "$s" == mix* || "$s" == alloc* ]]
}

stop() {
    [ -d "$STATE" ] || { say "nothing started by this script"; return 0; }
    for d in slurmd slurmctld munged; do
        f="$STATE/$d.pid"
        [ -f "$f" ] || continue
        pid=$(cat "$f")
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && grep -q "$d" "/proc/$pid/comm" 2>/dev/null; then
            kill "$pid" && say "stopped $d (pid $pid)"
        fi
        rm -f "$f"
    done
}

start_daemon() {  # name, pidfile the daemon writes, command...
    local name=$1 pidfile=$2
    shift 2
    if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        return 0  # already running (started by us or by someone else: not recorded, so `down` leaves it)
    fi
    "$@" || die "could not start $name ($*); see /var/log/slurm/ and /var/log/munge/"
    for _ in $(seq 50); do
        [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null && break
        sleep 0.2
    done
    [ -f "$pidfile" ] || die "$name did not start; see /var/log/slurm/ and /var/log/munge/"
    cp "$pidfile" "$STATE/$name.pid"
}

up() {
    if node_idle; then say "Slurm already answers: $(sinfo -h -o '%P %D %t' | head -1)"; return 0; fi
    [ "$(id -u)" = 0 ] || die "needs root to install and start Slurm (run as root, or use your cluster's Slurm)"
    if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
        command -v apt-get >/dev/null || die "no apt-get: install slurm-wlm and munge with your package manager"
        say "installing slurm-wlm and munge with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null || die "apt-get update failed"
        apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null || die "apt-get install slurm-wlm munge failed"
    fi
    mkdir -p "$STATE" /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge /var/log/munge /var/lib/munge
    # munge: a key, owned by the munge user, and its socket directory.
    if [ ! -s /etc/munge/munge.key ]; then
        mkdir -p /etc/munge
        if command -v mungekey >/dev/null; then mungekey --create --keyfile=/etc/munge/munge.key >/dev/null 2>&1; fi
        [ -s /etc/munge/munge.key ] || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 2>/dev/null
    fi
    if id munge >/dev/null 2>&1; then
        chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge
        chmod 0700 /etc/munge; chmod 0400 /etc/munge/munge.key; chmod 0755 /run/munge
        start_daemon munged /run/munge/munged.pid runuser -u munge -- /usr/sbin/munged
    else
        chmod 0400 /etc/munge/munge.key
        start_daemon munged /run/munge/munged.pid /usr/sbin/munged --force
    fi
    # slurm.conf: one node (this machine), one partition; only written when absent or written by us.
    local host cpus mem_mb
    host=$(hostname -s)
    cpus=$(nproc --all)
    mem_mb=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.8}' /proc/meminfo)
    if [ ! -f "$CONF" ] || grep -q "written by mmbench .ci/slurm-up.sh" "$CONF"; then
        cat > "$CONF" <<EOF
# written by mmbench .ci/slurm-up.sh: a single-node Slurm for tests
ClusterName=mmbench
SlurmctldHost=$host
AuthType=auth/munge
SlurmUser=root
SlurmdUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Memory limits (--mem) are enforced by polling the job's processes (no cgroups needed).
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=1
JobAcctGatherParams=OverMemoryKill
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
MinJobAge=3600
KillWait=10
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    fi
    start_daemon slurmctld /run/slurmctld.pid /usr/sbin/slurmctld
    start_daemon slurmd /run/slurmd.pid /usr/sbin/slurmd
    for _ in $(seq 60); do
        if node_idle; then say "up: $(sinfo -h -o '%P %D %t %c cpus %m MB' | head -1)"; return 0; fi
        sleep 1
    done
    scontrol update nodename="$host" state=resume >/dev/null 2>&1
    sleep 2
    node_idle || die "node $host is not idle after 60 s: $(sinfo -h -o '%t %E' 2>&1 | head -1); see /var/log/slurm/"
    say "up: $(sinfo -h -o '%P %D %t' | head -1)"
}

case "${1:-up}" in
    up|start) up ;;
    down|stop) stop ;;
    status) sinfo ;;
    *) die "usage: $0 [up|down|status]" ;;
esac
