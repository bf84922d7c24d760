#!/usr/bin/env bash
# A one-node Slurm cluster on this machine for the Slurm tests (pytest -m slurm): Debian's slurmctld,
# slurmd, munge, and slurmdbd on MariaDB for accounting (sacct), all as root, no systemd, no cgroups.
#   bash scripts/slurm_local.sh up       # install the packages when missing, start; idempotent
#   bash scripts/slurm_local.sh down     # stop what `up` started (pid files in the state folder); idempotent
#   bash scripts/slurm_local.sh status   # exit 0 and print the slurm.conf path when up, else exit 1
# Clients need SLURM_CONF=<state folder>/slurm.conf (printed by up and status).
# Every file lives in the state folder ($GN_SLURM_DIR, default /tmp/gn-detect-slurm): config, munge key,
# spool, logs, pid files, the MariaDB data; except munge's socket, which stays at its standard place
# (/run/munge/munge.socket.2): Slurm 22.05's connections to slurmdbd ignore AuthInfo's socket=.
set -euo pipefail

DIR="${GN_SLURM_DIR:-/tmp/gn-detect-slurm}"
CONF="$DIR/slurm.conf"
CLUSTER=gnlocal
DB_PORT="${GN_SLURM_DB_PORT:-3316}"
MUNGE_SOCKET=/run/munge/munge.socket.2
PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
# name -> the pid file of each daemon, in start order
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)

say() { echo "[slurm_local] $*"; }
die() { echo "[slurm_local] $*" >&2; exit 1; }

pid_of() { local f="$DIR/run/$1.pid"; [ -s "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null && cat "$f"; }

install_packages() {
  local missing=()
  for p in "${PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ "${#missing[@]}" -eq 0 ] && return 0
  [ "$(id -u)" -eq 0 ] || die "missing Debian packages ${missing[*]}; run as root (apt-get install)"
  say "installing ${missing[*]}"
  apt-get update -q >/dev/null
  # policy-rc.d keeps the packages' own services from starting: this script starts what it needs
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}

write_configs() {
  mkdir -p "$DIR"/{run,log,spool/ctld,spool/d,munge}
  chmod 700 "$DIR/munge"
  [ -s "$DIR/munge/munge.key" ] || { head -c 1024 /dev/urandom > "$DIR/munge/munge.key"; chmod 400 "$DIR/munge/munge.key"; }
  local node host
  host="$(hostname -s)"
  node="$(slurmd -C | head -1)"
  # AuthInfo cred_expire=10: a requeued job may start 10 s after it ended (default 120 s).
  cat > "$CONF" <<EOF
ClusterName=$CLUSTER
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=10
StateSaveLocation=$DIR/spool/ctld
SlurmdSpoolDir=$DIR/spool/d
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
JobRequeue=1
ReturnToService=2
MinJobAge=300
KillWait=10
InactiveLimit=0
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
$node State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
  cat > "$DIR/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
PidFile=$DIR/run/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=root
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$DIR/slurmdbd.conf"
}

wait_for() {  # wait_for SECONDS WHAT COMMAND...
  local n="$1" what="$2"; shift 2
  for _ in $(seq "$((n * 5))"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  die "$what did not come up within ${n}s; see $DIR/log/"
}

start_mariadb() {
  if [ ! -d "$DIR/mysql/mysql" ]; then
    mariadb-install-db --user=root --datadir="$DIR/mysql" --auth-root-authentication-method=normal \
      --skip-test-db >"$DIR/log/mariadb-install.log" 2>&1 || die "mariadb-install-db failed; see $DIR/log/mariadb-install.log"
  fi
  # skip-grant-tables: only this machine reaches the port (127.0.0.1), and no user setup is needed
  setsid mariadbd --no-defaults --user=root --datadir="$DIR/mysql" --socket="$DIR/run/mysql.sock" \
    --pid-file="$DIR/run/mariadbd.pid" --bind-address=127.0.0.1 --port="$DB_PORT" --skip-grant-tables \
    --innodb-buffer-pool-size=32M --log-error="$DIR/log/mariadb.log" </dev/null >/dev/null 2>&1 &
  wait_for 60 "mariadbd" mariadb-admin --no-defaults --socket="$DIR/run/mysql.sock" ping
}

up() {
  if status >/dev/null 2>&1; then say "already up: export SLURM_CONF=$CONF"; return 0; fi
  down >/dev/null 2>&1 || true
  install_packages
  write_configs
  local t0=$SECONDS
  # every daemon's output goes to its log: none may hold the caller's stdout (a CI log pipe) open
  [ -S "$MUNGE_SOCKET" ] && munge -n >/dev/null 2>&1 && die "a munged not started by this script answers on $MUNGE_SOCKET; stop it first"
  mkdir -p "$(dirname "$MUNGE_SOCKET")"
  munged --force --socket="$MUNGE_SOCKET" --key-file="$DIR/munge/munge.key" \
    --pid-file="$DIR/run/munged.pid" --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/seed" \
    </dev/null >/dev/null 2>>"$DIR/log/munged.log" || die "munged did not start; see $DIR/log/munged.log"
  start_mariadb
  export SLURM_CONF="$CONF"  # slurmdbd reads slurmdbd.conf beside it
  slurmdbd </dev/null >/dev/null 2>>"$DIR/log/slurmdbd.log" || die "slurmdbd did not start; see $DIR/log/slurmdbd.log"
  wait_for 60 "slurmdbd" sacctmgr -n list cluster
  sacctmgr -i add cluster "$CLUSTER" >/dev/null 2>&1 || true
  # -c: a clean controller state, no jobs left from an earlier `up`
  slurmctld -c -f "$CONF" </dev/null >/dev/null 2>>"$DIR/log/slurmctld.log" || die "slurmctld did not start; see $DIR/log/slurmctld.log"
  wait_for 30 "slurmctld" scontrol ping
  slurmd -f "$CONF" </dev/null >/dev/null 2>>"$DIR/log/slurmd.log" || die "slurmd did not start; see $DIR/log/slurmd.log"
  wait_for 30 "the node" bash -c "sinfo -h -o %t | grep -qx idle"
  say "up in $((SECONDS - t0)) s: export SLURM_CONF=$CONF"
}

down() {
  local i name pid stopped=()
  for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
    name="${DAEMONS[$i]}"
    pid="$(pid_of "$name" || true)"
    [ -n "$pid" ] || { rm -f "$DIR/run/$name.pid"; continue; }
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
    rm -f "$DIR/run/$name.pid"
    stopped+=("$name")
  done
  say "down${stopped:+ (stopped ${stopped[*]})}"
}

status() {
  for name in "${DAEMONS[@]}"; do pid_of "$name" >/dev/null || { echo "$name not running" >&2; return 1; }; done
  SLURM_CONF="$CONF" scontrol ping >/dev/null 2>&1 || { echo "slurmctld does not answer" >&2; return 1; }
  echo "$CONF"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) die "usage: bash scripts/slurm_local.sh up|down|status" ;;
esac
