#!/usr/bin/env bash
# setup.sh - bring up a REAL single-node Slurm cluster on localhost, for the
# opt-in Slurm tests (tests/test_slurm.py) and for trying launch.py on one machine.
#
#   bash tests/slurm/setup.sh && . /tmp/slurm-local/env.sh
#   TRACING_SLURM_TESTS=1 python -m pytest -q tests/test_slurm.py
#   bash tests/slurm/teardown.sh
#
# Target: Debian 12 (bookworm), run as root, no systemd as PID 1 (daemons are
# started directly, never via systemctl). Debian packages: slurm-wlm 22.05.8,
# munge 0.5.15, and (with accounting, the default) slurmdbd + MariaDB 10.11.
#
# Idempotent: installs only missing packages, (re)writes the config, starts only
# the daemons that are not already running (PID files under $SLURM_LOCAL_DIR),
# restarts the Slurm daemons if the config changed, and waits until the node is
# idle (and, with accounting, until sacct answers).
#
# Afterwards:   export SLURM_CONF=$SLURM_LOCAL_DIR/etc/slurm.conf
# (also written to $SLURM_LOCAL_DIR/env.sh; and /etc/slurm/slurm.conf is linked
#  to it when that file does not exist yet, so plain `sinfo` works too).
# Stop with teardown.sh (stops only the daemons in these PID files).
#
# Knobs (environment variables):
#   SLURM_LOCAL_DIR         state/config/log folder          [/tmp/slurm-local]
#   SLURM_LOCAL_ACCOUNTING  1 = slurmdbd+MariaDB (sacct works; submitit needs it
#                           to see CANCELLED/FAILED/TIMEOUT states), 0 = none [1]
#   SLURM_LOCAL_PARTITION   partition name                   [debug]
#   SLURM_LOCAL_CPUS        CPUs to advertise; more than the real count turns on
#                           SlurmdParameters=config_overrides (oversubscription) [real]
#   SLURM_LOCAL_MEM_MB      RealMemory of the node            [90% of detected]
#   SLURM_LOCAL_CTLD_PORT / _SLURMD_PORT / _DBD_PORT / _DB_PORT  [6817/6818/6819/13306]
#   SLURM_LOCAL_LINK_ETC    1 = symlink /etc/slurm/slurm.conf if absent [1]
#   SLURM_LOCAL_WAIT_S      readiness timeout per step, seconds [60]
#   SLURM_LOCAL_KEEP_JOBS   1 = keep the jobs that slurmctld recovers from its
#                           state folder when it was found down, e.g. after a
#                           crash or a killed shell (default: cancel them) [0]
set -euo pipefail
umask 022

BASE=${SLURM_LOCAL_DIR:-/tmp/slurm-local}
ACCOUNTING=${SLURM_LOCAL_ACCOUNTING:-1}
PARTITION=${SLURM_LOCAL_PARTITION:-debug}
CTLD_PORT=${SLURM_LOCAL_CTLD_PORT:-6817}
SLURMD_PORT=${SLURM_LOCAL_SLURMD_PORT:-6818}
DBD_PORT=${SLURM_LOCAL_DBD_PORT:-6819}
DB_PORT=${SLURM_LOCAL_DB_PORT:-13306}
LINK_ETC=${SLURM_LOCAL_LINK_ETC:-1}
WAIT_S=${SLURM_LOCAL_WAIT_S:-60}
CLUSTER=localcluster
DB_USER=slurm
DB_PASS=slurmlocal
DB_NAME=slurm_acct_db

log() { echo "[slurm-local $(date +%T)] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root (apt-get, daemons as root)"
case "$BASE" in /*) ;; *) die "SLURM_LOCAL_DIR must be an absolute path" ;; esac
[ "$BASE" != / ] || die "SLURM_LOCAL_DIR must not be /"

T_START=$(date +%s.%N)
elapsed() { awk -v a="$T_START" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1fs", b-a}'; }

# ---------------------------------------------------------------- 1. packages
PKGS=(munge slurmctld slurmd slurm-client)
[ "$ACCOUNTING" = 1 ] && PKGS+=(slurmdbd mariadb-server)
MISSING=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || MISSING+=("$p")
done
if [ ${#MISSING[@]} -gt 0 ]; then
  log "installing: ${MISSING[*]}"
  # Keep the packages' postinst from trying to start services (no init system here).
  POLICY_CREATED=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; POLICY_CREATED=1
  fi
  apt_install() { DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${MISSING[@]}"; }
  if ! apt_install >"/tmp/slurm-local-apt.log" 2>&1; then
    log "apt-get install failed, running apt-get update and retrying"
    apt-get update >>"/tmp/slurm-local-apt.log" 2>&1
    apt_install >>"/tmp/slurm-local-apt.log" 2>&1 || { tail -20 /tmp/slurm-local-apt.log >&2; die "apt-get install failed"; }
  fi
  [ "$POLICY_CREATED" = 1 ] && rm -f /usr/sbin/policy-rc.d
  log "packages installed ($(elapsed))"
fi

# ---------------------------------------------------------------- helpers
running() {  # running PID: alive and not a zombie
  [ -d "/proc/$1" ] && [ "$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)" != Z ]
}
# pid_alive PIDFILE COMM: true if the PID in PIDFILE is alive and its comm is COMM
pid_alive() {
  local f=$1 comm=$2 p
  [ -s "$f" ] || return 1
  p=$(tr -dc '0-9' < "$f")
  # a killed daemon lingers as a zombie until PID 1 reaps it; its comm still matches
  [ -n "$p" ] && [ "$(cat "/proc/$p/comm" 2>/dev/null)" = "$comm" ] && running "$p"
}
stop_pidfile() {  # stop_pidfile PIDFILE COMM  (only that PID, only if it is COMM)
  local f=$1 comm=$2 p
  if pid_alive "$f" "$comm"; then
    p=$(tr -dc '0-9' < "$f"); log "stopping $comm (pid $p)"
    kill -TERM "$p" 2>/dev/null || true
    for _ in $(seq 1 100); do running "$p" || break; sleep 0.2; done
    if running "$p"; then log "$comm (pid $p) ignored SIGTERM, sending SIGKILL"; kill -KILL "$p" 2>/dev/null || true; sleep 0.5; fi
  fi
  rm -f "$f"
}
wait_for() {  # wait_for DESCRIPTION CMD...
  local what=$1; shift
  for _ in $(seq 1 $((WAIT_S * 5))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  die "timed out after ${WAIT_S}s waiting for: $what"
}

# ---------------------------------------------------------------- 2. layout + config
mkdir -p "$BASE"/{etc,log,run,state,spool,munge}
chmod 755 "$BASE" "$BASE/munge"          # munged: socket dir needs o+x, must not be group/other-writable
touch "$BASE/.slurm-local"               # marker used by teardown before any rm -rf

export SLURM_CONF=$BASE/etc/slurm.conf
MUNGE_SOCK=$BASE/munge/munge.socket.2
HOST=$(hostname -s)

# Hardware as slurmd sees it: "NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=24105"
HW=$(slurmd -C | head -1)
hwval() { echo "$HW" | tr ' ' '\n' | sed -n "s/^$1=//p"; }
REAL_CPUS=$(hwval CPUs); REAL_MEM=$(hwval RealMemory)
CPUS=${SLURM_LOCAL_CPUS:-$REAL_CPUS}
MEM_MB=${SLURM_LOCAL_MEM_MB:-$((REAL_MEM * 9 / 10))}
if [ "$CPUS" = "$REAL_CPUS" ]; then
  NODE_HW="CPUs=$CPUS Boards=$(hwval Boards) SocketsPerBoard=$(hwval SocketsPerBoard) CoresPerSocket=$(hwval CoresPerSocket) ThreadsPerCore=$(hwval ThreadsPerCore)"
  OVERRIDES="#SlurmdParameters=config_overrides"
else
  NODE_HW="CPUs=$CPUS"
  OVERRIDES="SlurmdParameters=config_overrides"   # advertise more CPUs than exist
fi
if [ "$ACCOUNTING" = 1 ]; then
  ACCT="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
# For the slurmdbd connection the munge socket comes from AccountingStoragePass,
# NOT from AuthInfo; without this line sacct/sacctmgr/slurmctld try /run/munge/.
AccountingStoragePass=$MUNGE_SOCK"
else
  ACCT="AccountingStorageType=accounting_storage/none"
fi

NEW_CONF=$(cat <<EOF
# Generated by setup.sh - single-node Slurm on localhost
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# cred_expire (default 120s) is also the delay before a requeued job may start again
AuthInfo=socket=$MUNGE_SOCK,cred_expire=10
CredType=cred/munge
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool
SlurmctldPidFile=$BASE/run/slurmctld.pid
SlurmdPidFile=$BASE/run/slurmd.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups anywhere
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
$ACCT
SchedulerType=sched/backfill
# batch_sched_delay=0: start batch jobs at once (default: up to 3s delay);
# sched_interval/bf_interval: periodic passes every 2s (default 60s/30s), so a
# requeued job starts soon after it becomes eligible again
SchedulerParameters=batch_sched_delay=0,sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# memory is a consumable: without a default, a job with no --mem gets the WHOLE node
DefMemPerCPU=1024
# submitit jobs ignore SIGTERM; a cancelled job blocks the node until SIGKILL (default 30s)
KillWait=5
ReturnToService=2
MpiDefault=none
MailProg=/bin/true
$OVERRIDES
NodeName=$HOST NodeAddr=127.0.0.1 $NODE_HW RealMemory=$MEM_MB State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
)
CONF_CHANGED=0 DBD_CONF_CHANGED=0
if [ ! -f "$SLURM_CONF" ] || [ "$(cat "$SLURM_CONF")" != "$NEW_CONF" ]; then
  printf '%s\n' "$NEW_CONF" > "$SLURM_CONF"; CONF_CHANGED=1; log "wrote $SLURM_CONF"
fi
if [ "$ACCOUNTING" = 1 ]; then
  NEW_DBD=$(cat <<EOF
# Generated by setup.sh (slurmdbd reads it from the folder of \$SLURM_CONF)
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCK
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
LogFile=$BASE/log/slurmdbd.log
PidFile=$BASE/run/slurmdbd.pid
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=$DB_USER
StoragePass=$DB_PASS
StorageLoc=$DB_NAME
EOF
)
  if [ ! -f "$BASE/etc/slurmdbd.conf" ] || [ "$(cat "$BASE/etc/slurmdbd.conf")" != "$NEW_DBD" ]; then
    printf '%s\n' "$NEW_DBD" > "$BASE/etc/slurmdbd.conf"; DBD_CONF_CHANGED=1
  fi
  chmod 600 "$BASE/etc/slurmdbd.conf"    # slurmdbd refuses a world-readable config
fi
printf 'export SLURM_CONF=%s\n' "$SLURM_CONF" > "$BASE/env.sh"
if [ "$LINK_ETC" = 1 ]; then
  mkdir -p /etc/slurm
  if [ ! -e /etc/slurm/slurm.conf ] && [ ! -L /etc/slurm/slurm.conf ]; then
    ln -s "$SLURM_CONF" /etc/slurm/slurm.conf; log "linked /etc/slurm/slurm.conf -> $SLURM_CONF"
  elif [ "$(readlink /etc/slurm/slurm.conf || true)" != "$SLURM_CONF" ]; then
    log "note: /etc/slurm/slurm.conf exists and is not ours; export SLURM_CONF=$SLURM_CONF"
  fi
fi

# ---------------------------------------------------------------- 3. munged
if [ ! -s "$BASE/munge/munge.key" ]; then
  dd if=/dev/urandom of="$BASE/munge/munge.key" bs=1024 count=1 status=none
fi
chmod 400 "$BASE/munge/munge.key"
if ! pid_alive "$BASE/munge/munged.pid" munged; then
  log "starting munged"
  munged --socket="$MUNGE_SOCK" --key-file="$BASE/munge/munge.key" \
         --log-file="$BASE/log/munged.log" --pid-file="$BASE/munge/munged.pid" \
         --seed-file="$BASE/munge/munged.seed" --num-threads=4 \
    || { tail -5 "$BASE/log/munged.log" >&2; die "munged failed to start"; }
fi
munge_ok() { munge -S "$MUNGE_SOCK" -n | unmunge -S "$MUNGE_SOCK"; }
wait_for "munged answering on $MUNGE_SOCK" munge_ok

# ---------------------------------------------------------------- 4. MariaDB + slurmdbd
if [ "$ACCOUNTING" = 1 ]; then
  DB_DIR=$BASE/mysql; DB_SOCK=$DB_DIR/mysqld.sock
  mkdir -p "$DB_DIR"
  if [ ! -d "$DB_DIR/data/mysql" ]; then
    log "initialising MariaDB datadir"
    mariadb-install-db --no-defaults --datadir="$DB_DIR/data" --user=root --skip-test-db \
      --auth-root-authentication-method=socket >"$BASE/log/mariadb-install.log" 2>&1 \
      || { tail -20 "$BASE/log/mariadb-install.log" >&2; die "mariadb-install-db failed"; }
  fi
  if ! pid_alive "$DB_DIR/mariadbd.pid" mariadbd; then
    log "starting mariadbd (127.0.0.1:$DB_PORT)"
    setsid mariadbd --no-defaults --datadir="$DB_DIR/data" --socket="$DB_SOCK" \
      --port="$DB_PORT" --bind-address=127.0.0.1 --user=root --pid-file="$DB_DIR/mariadbd.pid" \
      --log-error="$BASE/log/mariadbd.log" --skip-name-resolve \
      --innodb-buffer-pool-size=512M --innodb-lock-wait-timeout=900 \
      </dev/null >/dev/null 2>&1 &
  fi
  wait_for "mariadbd" mariadb-admin --no-defaults -S "$DB_SOCK" -u root ping
  wait_for "mariadbd pid file" pid_alive "$DB_DIR/mariadbd.pid" mariadbd
  mariadb --no-defaults -S "$DB_SOCK" -u root -e "
    CREATE DATABASE IF NOT EXISTS $DB_NAME;
    CREATE USER IF NOT EXISTS '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
    CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
    GRANT ALL ON $DB_NAME.* TO '$DB_USER'@'127.0.0.1';
    GRANT ALL ON $DB_NAME.* TO '$DB_USER'@'localhost';"
  if [ "$DBD_CONF_CHANGED" = 1 ]; then stop_pidfile "$BASE/run/slurmdbd.pid" slurmdbd; fi
  if ! pid_alive "$BASE/run/slurmdbd.pid" slurmdbd; then
    log "starting slurmdbd (127.0.0.1:$DBD_PORT)"
    slurmdbd || { tail -20 "$BASE/log/slurmdbd.log" >&2; die "slurmdbd failed to start"; }
  fi
  wait_for "slurmdbd answering (sacctmgr list cluster)" sacctmgr -n list cluster
fi

# ---------------------------------------------------------------- 5. slurmctld + slurmd
CTLD_WAS_DOWN=0   # slurmctld not running when we came: jobs it recovers are stale
pid_alive "$BASE/run/slurmctld.pid" slurmctld || CTLD_WAS_DOWN=1
if [ "$CONF_CHANGED" = 1 ]; then   # clean restart: running jobs survive it
  stop_pidfile "$BASE/run/slurmd.pid" slurmd
  stop_pidfile "$BASE/run/slurmctld.pid" slurmctld
fi
if ! pid_alive "$BASE/run/slurmctld.pid" slurmctld; then
  log "starting slurmctld (127.0.0.1:$CTLD_PORT)"
  slurmctld -f "$SLURM_CONF" || { tail -20 "$BASE/log/slurmctld.log" >&2; die "slurmctld failed to start"; }
fi
ctld_up() { scontrol ping | grep -q 'is UP'; }
wait_for "slurmctld UP (scontrol ping)" ctld_up
wait_for "slurmctld pid file" pid_alive "$BASE/run/slurmctld.pid" slurmctld
if ! pid_alive "$BASE/run/slurmd.pid" slurmd; then
  log "starting slurmd -N $HOST (127.0.0.1:$SLURMD_PORT)"
  slurmd -f "$SLURM_CONF" -N "$HOST" || { tail -20 "$BASE/log/slurmd.log" >&2; die "slurmd failed to start"; }
fi
wait_for "slurmd pid file" pid_alive "$BASE/run/slurmd.pid" slurmd

# ---------------------------------------------------------------- 6. wait until usable
node_state() { sinfo -h -N -n "$HOST" -o %t 2>/dev/null | head -1; }
RESUMED=0
node_ready() {
  local s; s=$(node_state)
  case "$s" in
    idle|mix|alloc) return 0 ;;
    down*|drain*|drng*|fail*)
      if [ "$RESUMED" = 0 ]; then RESUMED=1; scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true; fi
      return 1 ;;
    *) return 1 ;;
  esac
}
wait_for "node $HOST idle (sinfo)" node_ready
# A slurmctld that was down when we came recovers jobs from $BASE/state; after a
# crash or a killed shell those are stale (shown R with no process behind them)
# and would hold CPUs/memory. Cancel them unless asked not to.
if [ "$CTLD_WAS_DOWN" = 1 ] && [ "${SLURM_LOCAL_KEEP_JOBS:-0}" != 1 ]; then
  STALE=$(squeue -h -o %A | tr '\n' ' ')
  if [ -n "${STALE// /}" ]; then
    log "cancelling jobs recovered from an earlier run: $STALE"
    # shellcheck disable=SC2086
    scancel $STALE || true
    queue_empty() { [ -z "$(squeue -h -o %A)" ]; }
    wait_for "recovered jobs to end" queue_empty
    wait_for "node $HOST idle after cancelling" node_ready
  fi
fi
if [ "$ACCOUNTING" = 1 ]; then
  cluster_registered() { sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; }
  wait_for "cluster $CLUSTER registered in slurmdbd" cluster_registered
  wait_for "sacct answering" sacct -n -X -S now
fi
log "ready in $(elapsed): node $HOST $(node_state), partition $PARTITION, accounting=$ACCOUNTING"
log "use: export SLURM_CONF=$SLURM_CONF   (or: . $BASE/env.sh)"
