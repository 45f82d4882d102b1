#!/usr/bin/env bash
# teardown.sh - stop the single-node Slurm cluster started by
# tests/slurm/setup.sh. Stops ONLY the daemons whose PID files live under
# $SLURM_LOCAL_DIR, and only if the PID still belongs to the expected program
# (checked via /proc/PID/comm). Never kills by name.
#
#   SLURM_LOCAL_DIR    folder used by the setup script      [/tmp/slurm-local]
#   SLURM_LOCAL_PURGE  1 = also delete that folder (config, state, DB, logs) [0]
set -uo pipefail

BASE=${SLURM_LOCAL_DIR:-/tmp/slurm-local}
PURGE=${SLURM_LOCAL_PURGE:-0}
export SLURM_CONF=$BASE/etc/slurm.conf

log() { echo "[slurm-local $(date +%T)] $*" >&2; }
[ -d "$BASE" ] || { log "nothing to do: $BASE does not exist"; exit 0; }

running() {  # running PID: alive and not a zombie
  [ -d "/proc/$1" ] && [ "$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)" != Z ]
}
pid_of() {  # pid_of PIDFILE COMM -> prints PID if alive and its comm is COMM
  local f=$1 comm=$2 p
  [ -s "$f" ] || return 1
  p=$(tr -dc '0-9' < "$f")
  # zombies (dead, waiting for PID 1 to reap them) keep their comm: skip them
  [ -n "$p" ] && [ "$(cat "/proc/$p/comm" 2>/dev/null)" = "$comm" ] && running "$p" && echo "$p"
}
stop_pidfile() {
  local f=$1 comm=$2 p
  if p=$(pid_of "$f" "$comm"); then
    log "stopping $comm (pid $p)"
    kill -TERM "$p" 2>/dev/null
    for _ in $(seq 1 100); do running "$p" || break; sleep 0.2; done   # up to 20 s
    if running "$p"; then
      log "$comm (pid $p) still alive after 20s, sending SIGKILL"; kill -KILL "$p" 2>/dev/null; sleep 0.5
    fi
  elif [ -e "$f" ]; then
    log "$comm: stale pid file $f (process gone or not $comm), removing"
  fi
  rm -f "$f"
}

# 1. cancel jobs still known to our slurmctld, so no slurmstepd outlives slurmd
if pid_of "$BASE/run/slurmctld.pid" slurmctld >/dev/null; then
  JOBS=$(squeue -h -o %A 2>/dev/null | tr '\n' ' ')
  if [ -n "${JOBS// /}" ]; then
    log "cancelling jobs: $JOBS"
    # shellcheck disable=SC2086
    scancel $JOBS 2>/dev/null
    for _ in $(seq 1 75); do   # KillWait=5 in our slurm.conf; allow 15 s
      [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break; sleep 0.2
    done
  fi
fi

# 2. stop daemons in reverse start order
stop_pidfile "$BASE/run/slurmd.pid"         slurmd
stop_pidfile "$BASE/run/slurmctld.pid"      slurmctld
stop_pidfile "$BASE/run/slurmdbd.pid"       slurmdbd
stop_pidfile "$BASE/mysql/mariadbd.pid"     mariadbd
stop_pidfile "$BASE/munge/munged.pid"       munged

# 3. report (do not kill) any job step daemon left behind
LEFT=$(ps -eo pid=,args= | awk '$2 ~ /^slurmstepd/' || true)
[ -n "$LEFT" ] && log "warning: slurmstepd processes still running (not ours to kill by name):"$'\n'"$LEFT"

# 4. remove the /etc/slurm/slurm.conf link only if it points at our config
if [ -L /etc/slurm/slurm.conf ] && [ "$(readlink /etc/slurm/slurm.conf)" = "$SLURM_CONF" ]; then
  rm -f /etc/slurm/slurm.conf; log "removed /etc/slurm/slurm.conf link"
fi

if [ "$PURGE" = 1 ]; then
  if [ -e "$BASE/.slurm-local" ] && [ "$BASE" != / ]; then
    rm -rf -- "$BASE"; log "purged $BASE"
  else
    log "not purging $BASE: marker file .slurm-local missing"
  fi
fi
log "stopped"
