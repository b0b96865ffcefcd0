#!/usr/bin/env bash
# Bring up a one-node Slurm cluster on localhost (Debian's packages), for tests/test_sbatch.py and CI.
# Installs slurmctld slurmd munge slurm-client when missing, writes /etc/slurm/slurm.conf for the node
# `localhost` with this machine's real CPUs and memory, starts munged, slurmctld and slurmd, and waits until
# the node is idle. Safe to run again: finished steps are skipped. Needs root for whatever is left to do; exits
# non-zero with a message on failure.
set -euo pipefail

SLURM_CONF_FILE=/etc/slurm/slurm.conf
MARKER="# written by diff-trainer .ci/slurm.sh"
WAIT_SECONDS=${SLURM_WAIT_SECONDS:-60}

die() { echo "slurm.sh: error: $*" >&2; exit 1; }
say() { echo "slurm.sh: $*"; }

node_state() { sinfo --noheader --nodes=localhost --format=%t 2>/dev/null | head -n 1; }

node_ready() { [[ "$(node_state)" =~ ^(idle|mix|alloc)$ ]]; }

need_root() { [[ $(id -u) -eq 0 ]] || die "must run as root to $1 (running as $(id -un))."; }

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null \
    || ! command -v sbatch >/dev/null; then
    command -v apt-get >/dev/null || die "Slurm is not installed and there is no apt-get to install it."
    need_root "install Slurm"
    say "installing slurmctld slurmd munge slurm-client with apt-get..."
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed."
    apt-get install -y -qq --no-install-recommends slurmctld slurmd munge slurm-client >/dev/null \
        || die "apt-get install slurmctld slurmd munge slurm-client failed."
fi

# munge: the shared key authenticates the daemons to each other; munged runs as the munge user.
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    need_root "start munged"
    if [[ ! -s /etc/munge/munge.key ]]; then
        say "creating /etc/munge/munge.key"
        mungekey --create --keyfile=/etc/munge/munge.key
        chown munge:munge /etc/munge/munge.key
        chmod 0400 /etc/munge/munge.key
    fi
    say "starting munged"
    install -d -o munge -g munge -m 0755 /run/munge
    runuser -u munge -- munged || die "munged did not start (see /var/log/munge/munged.log)."
    munge -n | unmunge >/dev/null || die "munged started but does not answer."
fi

# slurm.conf: one node, no cgroups (proctrack/linuxproc, task/none), nothing to account. MinJobAge=16 keeps a
# finished job listed for 16 s, and so makes `sbatch --wait` poll every 8 s instead of at 2, 10, 42, 74... s.
# cred_expire=10: a requeued job waits for its old credential to expire (120 s by default) before it runs again;
# ten seconds is plenty on one node and keeps the requeue test from idling two minutes.
node_hardware=$(slurmd -C | head -n 1 | sed 's/^NodeName=[^ ]*//')
[[ "$node_hardware" == *CPUs=* ]] || die "slurmd -C did not report this machine's hardware."
wanted_conf="$MARKER
ClusterName=localcluster
SlurmctldHost=localhost
SlurmUser=slurm
AuthType=auth/munge
AuthInfo=cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
MinJobAge=16
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=localhost$node_hardware State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP"
if [[ -e $SLURM_CONF_FILE ]] && ! grep -qxF "$MARKER" "$SLURM_CONF_FILE"; then
    if node_ready; then
        say "using the running cluster of $SLURM_CONF_FILE (not written by this script): node localhost is up."
        exit 0
    fi
    die "$SLURM_CONF_FILE exists and was not written by this script; refusing to replace it."
fi
if [[ ! -e $SLURM_CONF_FILE || "$(cat "$SLURM_CONF_FILE")" != "$wanted_conf" ]]; then
    need_root "write $SLURM_CONF_FILE"
    say "writing $SLURM_CONF_FILE ($node_hardware)"
    printf '%s\n' "$wanted_conf" >"$SLURM_CONF_FILE"
    if scontrol ping 2>/dev/null | grep -q 'is UP'; then
        scontrol reconfigure || die "scontrol reconfigure failed."
    fi
fi

pid_alive() { [[ -s $1 && -d /proc/$(cat "$1") ]]; }

if ! pid_alive /run/slurmctld.pid; then
    need_root "start slurmctld"
    install -d -o slurm -g slurm /var/lib/slurm/slurmctld /var/log/slurm
    say "starting slurmctld"
    slurmctld || die "slurmctld did not start (see /var/log/slurm/slurmctld.log)."
fi
if ! pid_alive /run/slurmd.pid; then
    need_root "start slurmd"
    install -d /var/lib/slurm/slurmd
    say "starting slurmd -N localhost"
    slurmd -N localhost || die "slurmd did not start (see /var/log/slurm/slurmd.log)."
fi

for ((second = 0; second < WAIT_SECONDS; second++)); do
    if node_ready; then
        say "the cluster is up: $(sinfo --noheader --format='%P %D %t %c CPUs %m MB')"
        exit 0
    fi
    if [[ "$(node_state)" =~ ^(down|drain|drng|fail)\*?$ ]]; then
        need_root "resume the node"
        scontrol update NodeName=localhost State=RESUME 2>/dev/null || true
    fi
    sleep 1
done
echo "--- slurmctld.log" >&2; tail -n 20 /var/log/slurm/slurmctld.log >&2 || true
echo "--- slurmd.log" >&2; tail -n 20 /var/log/slurm/slurmd.log >&2 || true
die "node localhost is not idle after ${WAIT_SECONDS}s (state: '$(node_state)')."
