#!/usr/bin/env bash
# A single-node Slurm on localhost, for tests and for trying the sbatch scripts on a laptop.
#
#   tools/local_slurm.sh install          # apt-get the Debian packages that are missing (root)
#   tools/local_slurm.sh start [--accounting]
#   eval "$(tools/local_slurm.sh env)"    # exports SLURM_CONF for sbatch/squeue/sacct
#   tools/local_slurm.sh stop             # stops the daemons this script started, by PID
#
# Everything (config, state, spool, logs, PID files, munge socket, MariaDB data) lives under
# $PRIME_SLURM_DIR (default /tmp/prime-slurm-$UID). Nothing is started through systemd and
# nothing is stopped by name: `stop` signals only the PIDs recorded by `start`.
# --accounting adds MariaDB + slurmdbd, so that `sacct` (which nemo-run polls for job status)
# knows finished jobs. Leaves out: multiple nodes, GPUs (gres), cgroups.
set -euo pipefail

DIR=${PRIME_SLURM_DIR:-/tmp/prime-slurm-$(id -u)}
HOST=$(hostname -s)
CTLD_PORT=${PRIME_SLURM_CTLD_PORT:-6817}
SLURMD_PORT=${PRIME_SLURM_SLURMD_PORT:-6818}
DBD_PORT=${PRIME_SLURM_DBD_PORT:-6819}
DB_PORT=${PRIME_SLURM_DB_PORT:-3307}
PACKAGES=(slurmctld slurmd slurm-client munge)
ACCOUNTING_PACKAGES=(slurmdbd mariadb-server)
export SLURM_CONF=$DIR/etc/slurm.conf

die() { echo "local_slurm.sh: $*" >&2; exit 1; }

alive() { [ -s "$DIR/run/$1.pid" ] && kill -0 "$(cat "$DIR/run/$1.pid")" 2>/dev/null; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local deadline=$((SECONDS + $1)) what=$2; shift 2
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || die "timed out waiting for $what (logs in $DIR/log)"
    sleep 0.3
  done
}

cmd_install() {
  local want=("${PACKAGES[@]}") missing=()
  [ "${1:-}" = --accounting ] && want+=("${ACCOUNTING_PACKAGES[@]}")
  for p in "${want[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" = 0 ] || die "need root to apt-get install ${missing[*]}"
  apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null; }
}

write_slurm_conf() {  # $1 = 1 when accounting is on
  local cpus mem_mb
  cpus=$(nproc --all)  # not plain nproc: it obeys OMP_NUM_THREADS
  mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 3 / 4 ))
  cat > "$SLURM_CONF" <<EOF
ClusterName=prime
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/run/munge.socket
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
MinJobAge=600
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
  if [ "$1" = 1 ]; then
    cat >> "$SLURM_CONF" <<EOF
AccountingStorageType=accounting_storage/slurmdbd
# For slurmdbd, the "password" names the munge socket (slurm.conf(5)).
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
AccountingStoragePass=$DIR/run/munge.socket
JobAcctGatherType=jobacct_gather/none
EOF
  fi
}

start_munge() {
  alive munged && return 0
  install -d -o munge -g munge -m 700 "$DIR/munge"
  chown munge:munge "$DIR/run"
  runuser -u munge -- test -w "$DIR/munge" \
    || die "user munge cannot reach $DIR: every parent directory must be world-searchable (o+x)"
  # munged refuses a socket dir writable by others; $DIR/run is 755 and owned by munge.
  runuser -u munge -- /usr/sbin/munged --socket="$DIR/run/munge.socket" \
    --pid-file="$DIR/run/munged.pid" --log-file="$DIR/munge/munged.log" \
    --seed-file="$DIR/munge/munged.seed" --key-file=/etc/munge/munge.key --force
  wait_for 10 munged alive munged
}

start_mariadb() {
  alive mariadb && return 0
  if [ ! -d "$DIR/mysql/mysql" ]; then
    mariadb-install-db --datadir="$DIR/mysql" --user=root --skip-test-db >"$DIR/log/mariadb-install.log" 2>&1 \
      || die "mariadb-install-db failed, see $DIR/log/mariadb-install.log"
  fi
  # Detached, and without the caller's stdout, so that a caller capturing output is not held open.
  setsid /usr/sbin/mariadbd --no-defaults --user=root --datadir="$DIR/mysql" --port="$DB_PORT" \
    --bind-address=127.0.0.1 --socket="$DIR/run/mysql.sock" --pid-file="$DIR/run/mariadb.pid" \
    --log-error="$DIR/log/mariadb.log" --skip-name-resolve </dev/null >/dev/null 2>&1 &
  wait_for 30 mariadb mariadb --socket="$DIR/run/mysql.sock" -e "select 1"
  mariadb --socket="$DIR/run/mysql.sock" -e "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
}

start_slurmdbd() {
  alive slurmdbd && return 0
  cat > "$DIR/etc/slurmdbd.conf" <<EOF
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket=$DIR/run/munge.socket
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
PidFile=$DIR/run/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
EOF
  chmod 600 "$DIR/etc/slurmdbd.conf"
  /usr/sbin/slurmdbd  # reads slurmdbd.conf next to $SLURM_CONF
  wait_for 30 slurmdbd sacctmgr -n list cluster
  sacctmgr -i add cluster prime >/dev/null 2>&1 || true  # already present on a restart
}

cmd_start() {
  local accounting=0
  [ "${1:-}" = --accounting ] && accounting=1
  for p in slurmctld slurmd munged; do command -v "/usr/sbin/$p" >/dev/null || die "/usr/sbin/$p missing: run '$0 install' first"; done
  mkdir -p "$DIR"/{etc,state,spool,log,run}
  write_slurm_conf "$accounting"
  start_munge
  if [ "$accounting" = 1 ]; then start_mariadb; start_slurmdbd; fi
  alive slurmctld || /usr/sbin/slurmctld -f "$SLURM_CONF"
  alive slurmd || /usr/sbin/slurmd -f "$SLURM_CONF"
  wait_for 30 "node $HOST idle" bash -c "sinfo -h -n $HOST -o %T | grep -qx idle"
  echo "export SLURM_CONF=$SLURM_CONF"
}

cmd_stop() {
  local name pid
  for name in slurmd slurmctld slurmdbd mariadb munged; do
    [ -s "$DIR/run/$name.pid" ] || continue
    pid=$(cat "$DIR/run/$name.pid")
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid"
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
      kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    fi
    rm -f "$DIR/run/$name.pid"
  done
}

cmd_status() {
  local name
  for name in munged mariadb slurmdbd slurmctld slurmd; do
    if alive "$name"; then echo "$name running (pid $(cat "$DIR/run/$name.pid"))"; else echo "$name stopped"; fi
  done
}

case "${1:-}" in
  install) shift; cmd_install "$@" ;;
  start) shift; cmd_start "$@" ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  env) echo "export SLURM_CONF=$SLURM_CONF" ;;
  *) echo "usage: $0 {install|start|stop|status|env} [--accounting]" >&2; exit 2 ;;
esac
