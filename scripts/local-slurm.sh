#!/usr/bin/env bash
# scripts/local-slurm.sh — a real one-host SLURM cluster (4 logical nodes n1..n4, partition `debug`)
# for hpcllm's tests, CI, and anyone who wants to try `hpcllm submit --cluster localslurm` without
# a cluster. Needs root and Debian/Ubuntu (slurm + munge come from apt when missing).
#
#   scripts/local-slurm.sh up       install if needed, write the config, start munged, slurmctld and
#                                   one slurmd per logical node; returns when all nodes are idle.
#                                   Running it again only starts what is not running.
#   scripts/local-slurm.sh down     cancel every job, stop exactly the daemons `up` started (their
#                                   pid files), undo the /etc/hosts and /etc/slurm changes.
#   scripts/local-slurm.sh status   our daemons and whether they live; sinfo and squeue.
#   scripts/local-slurm.sh env      `export SLURM_CONF=...` for `eval "$(scripts/local-slurm.sh env)"`.
#
# State lives in $HPCLLM_SLURM_DIR (default /tmp/hpcllm-slurm): etc/slurm.conf, munge/ (our own key
# and socket: a system munged, if any, is left alone), pid/, log/ (daemon logs and jobcomp.txt, one
# line per finished job), state/, spool/.
#
# Why the config looks the way it does:
#  - Four slurmd on one host (Debian builds slurmd with MULTIPLE_SLURMD): one port each, all with
#    NodeAddr=127.0.0.1. Jobs see the real host name in `hostname`; SLURMD_NODENAME says which
#    logical node they run on. n1..n4 go into /etc/hosts so rendezvous endpoints like n2:29500 resolve.
#  - AuthInfo cred_expire=5: after a node failure slurmctld holds a requeued job back for
#    cred_expire+1 s (default 121 s). Short scheduler intervals start jobs within a second or two.
#  - proctrack/linuxproc: works without cgroups (containers) and, like the sites' proctrack/cgroup,
#    finds every process of a step through the process tree: torchrun starts its workers in
#    sessions of their own, which proctrack/pgid would leave running after a KILL.
#  - task/affinity: steps are bound to the CPUs they were given, as on the sites (where it comes with
#    task/cgroup), so a step that does not restate --cpus-per-task would show it.
#  - KillWait=30 (SLURM's default, what the sites run with; `scontrol show config | grep KillWait`):
#    after the TERM of a scancel or a time limit, processes have 30 s before KILL.
#  - Accounting as on the sites: our own MariaDB (datadir mysql/, 127.0.0.1:$DB_PORT; a system
#    MariaDB, if any, is left alone) behind slurmdbd (port $DBD_PORT), AccountingStorageEnforce=
#    limits,qos. `up` creates the cluster, account `hpcllm` (root's default; QoS normal, hpcllm_small,
#    hpcllm_wide), account `hpcllm_budget` with GrpTRESMins=cpu=$BUDGET_CPU_MIN (what `hpcllm plan`
#    compares a grid with), and two QoS with node windows like Leonardo's: hpcllm_small 1-2 nodes,
#    30 min; hpcllm_wide 3-4 nodes (MinTRESPerJob node=3), 10 min; both DenyOnLimit (sbatch refuses a
#    job outside the window rather than leaving it pending, so tests see the answer at once). Usage is counted by
#    priority/multifactor (GrpTRESMins needs it), recomputed every minute, never decayed.
#    HPCLLM_SLURM_ACCOUNTING=0 leaves all of this out (then `sacct` does not work).
#  - Finished jobs also stay visible to `scontrol show job` for MinJobAge seconds and are appended
#    to log/jobcomp.txt.
#  - More than one instance (HPCLLM_SLURM_DIR and the port variables): only the default one
#    (/tmp/hpcllm-slurm) links /etc/slurm/slurm.conf, and `down` keeps the shared n1..n4 line of
#    /etc/hosts while a slurmctld of another instance still runs.
#  - ReturnToService=1: a slurmd that comes back makes its node usable again; a node set DOWN by
#    hand comes back with `scontrol update nodename=nX state=resume`.
set -euo pipefail

STATE_DIR=${HPCLLM_SLURM_DIR:-/tmp/hpcllm-slurm}
NODE_NAMES=(n1 n2 n3 n4)
NODE_CPUS=${HPCLLM_SLURM_CPUS:-2}          # per logical node; the host may be oversubscribed
NODE_MEM_MB=${HPCLLM_SLURM_MEM_MB:-2048}
CTLD_PORT=${HPCLLM_SLURM_CTLD_PORT:-16817}
FIRST_SLURMD_PORT=${HPCLLM_SLURM_SLURMD_PORT:-16901}   # n1 gets this port, n2 the next, ...
MIN_JOB_AGE=${HPCLLM_SLURM_MIN_JOB_AGE:-300}
KILL_WAIT=${HPCLLM_SLURM_KILL_WAIT:-30}    # seconds between TERM and KILL, as on the sites
READY_TIMEOUT_S=${HPCLLM_SLURM_READY_TIMEOUT:-60}
ACCOUNTING=${HPCLLM_SLURM_ACCOUNTING:-1}
DBD_PORT=${HPCLLM_SLURM_DBD_PORT:-16819}
DB_PORT=${HPCLLM_SLURM_DB_PORT:-16306}
BUDGET_CPU_MIN=${HPCLLM_SLURM_BUDGET_CPU_MIN:-600}   # GrpTRESMins of account hpcllm_budget: 5 node-hours
DEFAULT_STATE_DIR=/tmp/hpcllm-slurm
SLURM_CONF_FILE=$STATE_DIR/etc/slurm.conf
DBD_CONF_FILE=$STATE_DIR/etc/slurmdbd.conf   # slurmdbd reads it beside $SLURM_CONF
DB_DIR=$STATE_DIR/mysql
DB_SOCKET=$DB_DIR/mysqld.sock
DB_PASS_FILE=$STATE_DIR/etc/db.pass
CLUSTER_NAME=hpcllm-local
MUNGE_DIR=$STATE_DIR/munge
MUNGE_SOCKET=$MUNGE_DIR/munged.sock
HOSTS_TAG="# hpcllm local-slurm nodes"
export SLURM_CONF=$SLURM_CONF_FILE

say() { printf '[local-slurm %s] %s\n' "$(date +%T)" "$*" >&2; }
fail() { say "error: $*"; exit 1; }

# A daemon is ours when its pid file names a live process with the expected command name, so a
# recycled pid (or someone else's slurmctld) is never touched.
live_pid() {   # live_pid PIDFILE COMM
  local pidfile=$1 comm=$2 pid
  [[ -s $pidfile ]] || return 0
  pid=$(tr -cd '0-9' <"$pidfile")
  [[ -n $pid && -r /proc/$pid/comm && $(</proc/"$pid"/comm) == "$comm" ]] && echo "$pid"
  return 0
}

stop_daemons() {   # stop_daemons COMM PIDFILE...: TERM each, wait up to 10 s, then KILL
  local comm=$1 pidfile pid waited; shift
  local pids=()
  for pidfile in "$@"; do
    pid=$(live_pid "$pidfile" "$comm")
    [[ -z $pid ]] && continue
    say "stopping $comm pid $pid"
    kill -TERM "$pid" 2>/dev/null || true
    pids+=("$pid")
  done
  for pid in "${pids[@]}"; do
    for waited in $(seq 100); do [[ -e /proc/$pid ]] || break; sleep 0.1; done
    [[ -e /proc/$pid ]] && { say "$comm $pid still alive: KILL"; kill -KILL "$pid" 2>/dev/null || true; }
  done
  rm -f "$@"
}

ensure_packages() {
  local have=1 exe packages=(slurmctld slurmd slurm-client munge)
  ((ACCOUNTING)) && packages+=(slurmdbd mariadb-server)
  for exe in slurmctld slurmd sbatch munged; do command -v "$exe" >/dev/null || have=0; done
  if ((ACCOUNTING)); then
    for exe in slurmdbd mariadbd mariadb-install-db; do command -v "$exe" >/dev/null || have=0; done
  fi
  ((have)) && return 0
  command -v apt-get >/dev/null || fail "some of ${packages[*]} are missing and there is no apt-get: install them yourself"
  say "installing ${packages[*]} (apt-get)"
  # Debian would start the packages' own services; a policy-rc.d that says "no" keeps them off
  # (we start our own daemons on our own ports). Remove it only if we created it.
  local policy=/usr/sbin/policy-rc.d created=0
  if [[ ! -e $policy ]]; then printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod 755 "$policy"; created=1; fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
  ((created)) && rm -f "$policy"
  return 0
}

write_slurm_conf() {
  mkdir -p "$STATE_DIR"/{etc,pid,log,state,spool}
  local last_port=$((FIRST_SLURMD_PORT + ${#NODE_NAMES[@]} - 1))
  cat >"$SLURM_CONF_FILE.new" <<EOF
# Written by scripts/local-slurm.sh (hpcllm): ${#NODE_NAMES[@]} logical nodes on this host. Re-run \`up\` to rewrite.
ClusterName=hpcllm-local
SlurmctldHost=$(hostname -s)(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=5
StateSaveLocation=$STATE_DIR/state
SlurmdSpoolDir=$STATE_DIR/spool/%n
SlurmctldPidFile=$STATE_DIR/pid/slurmctld.pid
SlurmdPidFile=$STATE_DIR/pid/slurmd-%n.pid
SlurmctldLogFile=$STATE_DIR/log/slurmctld.log
SlurmdLogFile=$STATE_DIR/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
MpiDefault=none
SwitchType=switch/none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_interval=1,bf_interval=1,kill_invalid_depend
ReturnToService=1
MinJobAge=$MIN_JOB_AGE
KillWait=$KILL_WAIT
InactiveLimit=0
Waittime=0
SlurmdTimeout=30
MessageTimeout=10
$(accounting_conf)
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE_DIR/log/jobcomp.txt
NodeName=n[1-${#NODE_NAMES[@]}] NodeHostname=localhost NodeAddr=127.0.0.1 Port=$FIRST_SLURMD_PORT-$last_port CPUs=$NODE_CPUS RealMemory=$NODE_MEM_MB State=UNKNOWN
PartitionName=debug Nodes=n[1-${#NODE_NAMES[@]}] Default=YES MaxTime=INFINITE State=UP
EOF
  mv "$SLURM_CONF_FILE.new" "$SLURM_CONF_FILE"
}

accounting_conf() {   # the accounting lines of slurm.conf
  if ((ACCOUNTING)); then
    cat <<EOF
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
AccountingStoragePass=$MUNGE_SOCKET
AccountingStorageEnforce=limits,qos
PriorityType=priority/multifactor
PriorityDecayHalfLife=0
PriorityUsageResetPeriod=NONE
PriorityCalcPeriod=1
PriorityWeightAge=1000
EOF
  else
    echo "AccountingStorageType=accounting_storage/none"
  fi
}

write_dbd_conf() {
  [[ -s $DB_PASS_FILE ]] || (umask 077 && head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$DB_PASS_FILE")
  (
    umask 077
    cat >"$DBD_CONF_FILE.new" <<EOF
# Written by scripts/local-slurm.sh (hpcllm): slurmdbd over our own MariaDB.
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
DbdHost=localhost
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$STATE_DIR/pid/slurmdbd.pid
LogFile=$STATE_DIR/log/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$(<"$DB_PASS_FILE")
StorageLoc=slurm_acct_db
EOF
  )
  mv "$DBD_CONF_FILE.new" "$DBD_CONF_FILE"
}

db() { mariadb --no-defaults --socket="$DB_SOCKET" -uroot "$@"; }

start_mariadb() {
  [[ -n $(live_pid "$DB_DIR/mariadbd.pid" mariadbd) ]] && return 0
  if [[ ! -d $DB_DIR/data/mysql ]]; then
    say "creating the accounting database in $DB_DIR"
    install -d -o mysql -g mysql -m 0750 "$DB_DIR" "$DB_DIR/data"
    mariadb-install-db --no-defaults --user=mysql --datadir="$DB_DIR/data" --auth-root-authentication-method=socket \
      --skip-test-db >"$STATE_DIR/log/mariadb-install.log" 2>&1 ||
      fail "mariadb-install-db failed: see $STATE_DIR/log/mariadb-install.log"
  fi
  say "starting mariadbd on 127.0.0.1:$DB_PORT"
  # A test cluster wants no durability: no flush per commit, no doublewrite, a small buffer pool.
  setsid mariadbd --no-defaults --user=mysql --datadir="$DB_DIR/data" --socket="$DB_SOCKET" --port="$DB_PORT" \
    --bind-address=127.0.0.1 --pid-file="$DB_DIR/mariadbd.pid" --log-error="$STATE_DIR/log/mariadbd.log" \
    --skip-name-resolve --innodb-buffer-pool-size=32M --innodb-log-file-size=16M \
    --innodb-flush-log-at-trx-commit=0 --innodb-doublewrite=0 --skip-log-bin --performance-schema=OFF \
    </dev/null >/dev/null 2>&1 &
  local i
  for i in $(seq 300); do db -e 'select 1' >/dev/null 2>&1 && break; sleep 0.1; done
  db -e 'select 1' >/dev/null 2>&1 || fail "mariadbd did not start: see $STATE_DIR/log/mariadbd.log"
  local pass; pass=$(<"$DB_PASS_FILE")
  db -e "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
         ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
         GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
}

start_slurmdbd() {
  [[ -n $(live_pid "$STATE_DIR/pid/slurmdbd.pid" slurmdbd) ]] && return 0
  say "starting slurmdbd on port $DBD_PORT"
  slurmdbd || fail "slurmdbd did not start: see $STATE_DIR/log/slurmdbd.log"
  local start=$SECONDS
  while ((SECONDS - start < READY_TIMEOUT_S)); do
    timeout 10 sacctmgr -n show cluster >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  fail "slurmdbd does not answer sacctmgr: see $STATE_DIR/log/slurmdbd.log"
}

sacctmgr_ensure() {   # sacctmgr_ensure "SHOW ARGS" "ADD ARGS": add only what SHOW does not list
  # shellcheck disable=SC2086  # word lists on purpose
  [[ -n $(sacctmgr -nP $1 2>/dev/null) ]] && return 0
  # shellcheck disable=SC2086
  sacctmgr -i $2 >/dev/null || fail "sacctmgr $2 failed"
}

ensure_associations() {
  sacctmgr_ensure "show cluster $CLUSTER_NAME format=Cluster" "add cluster $CLUSTER_NAME"
  sacctmgr_ensure "show qos hpcllm_small format=Name" "add qos hpcllm_small MaxTRESPerJob=node=2 MaxWall=00:30:00 Flags=DenyOnLimit"
  sacctmgr_ensure "show qos hpcllm_wide format=Name" \
    "add qos hpcllm_wide MinTRESPerJob=node=3 MaxTRESPerJob=node=4 MaxWall=00:10:00 Flags=DenyOnLimit"
  sacctmgr_ensure "show account hpcllm format=Account" "add account hpcllm Description=hpcllm Organization=hpcllm"
  sacctmgr_ensure "show account hpcllm_budget format=Account" \
    "add account hpcllm_budget Description=budget Organization=hpcllm GrpTRESMins=cpu=$BUDGET_CPU_MIN"
  local acct
  for acct in hpcllm hpcllm_budget; do
    sacctmgr_ensure "show assoc where user=root account=$acct format=User" \
      "add user root Account=$acct DefaultAccount=hpcllm QOS=normal,hpcllm_small,hpcllm_wide DefaultQOS=normal"
  done
}

start_munge() {
  [[ -n $(live_pid "$MUNGE_DIR/munged.pid" munged) ]] && return 0
  # munged refuses a key or directory not owned by it or writable by others; clients need x here.
  install -d -o munge -g munge -m 0755 "$MUNGE_DIR"
  if [[ ! -s $MUNGE_DIR/munge.key ]]; then
    head -c 1024 /dev/urandom >"$MUNGE_DIR/munge.key"
    chown munge:munge "$MUNGE_DIR/munge.key"
    chmod 0400 "$MUNGE_DIR/munge.key"
  fi
  rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
  say "starting munged"
  runuser -u munge -- /usr/sbin/munged --socket="$MUNGE_SOCKET" --key-file="$MUNGE_DIR/munge.key" \
    --pid-file="$MUNGE_DIR/munged.pid" --log-file="$MUNGE_DIR/munged.log" --seed-file="$MUNGE_DIR/munged.seed"
  munge -n -S "$MUNGE_SOCKET" | unmunge -S "$MUNGE_SOCKET" >/dev/null || fail "munge does not work: see $MUNGE_DIR/munged.log"
}

start_slurmctld() {
  [[ -n $(live_pid "$STATE_DIR/pid/slurmctld.pid" slurmctld) ]] && return 0
  say "starting slurmctld on port $CTLD_PORT"
  # -c: clear saved state, so no job or DOWN node from an earlier session survives a restart.
  slurmctld -c -f "$SLURM_CONF_FILE" || fail "slurmctld did not start: see $STATE_DIR/log/slurmctld.log"
}

start_slurmds() {
  local node
  for node in "${NODE_NAMES[@]}"; do
    [[ -n $(live_pid "$STATE_DIR/pid/slurmd-$node.pid" slurmd) ]] && continue
    mkdir -p "$STATE_DIR/spool/$node"
    say "starting slurmd $node"
    slurmd -f "$SLURM_CONF_FILE" -N "$node" || fail "slurmd $node did not start: see $STATE_DIR/log/slurmd-$node.log"
  done
}

other_instance_runs() {   # a live slurmctld started by this script from another state folder
  local pid
  for pid in $(pgrep -x slurmctld || true); do
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "-f .*/etc/slurm.conf" && return 0
  done
  return 1
}

hosts_add() {
  grep -qF "$HOSTS_TAG" /etc/hosts && return 0
  # Appended in place, never replaced: in containers /etc/hosts is often a bind mount.
  echo "127.0.0.1 ${NODE_NAMES[*]} $HOSTS_TAG" >>/etc/hosts
}

hosts_remove() {
  grep -qF "$HOSTS_TAG" /etc/hosts 2>/dev/null || return 0
  local rest; rest=$(grep -vF "$HOSTS_TAG" /etc/hosts || true)
  printf '%s\n' "$rest" >/etc/hosts
}

etc_link_add() {
  # Lets plain `sinfo`/`sbatch` (and hpcllm) find the cluster without SLURM_CONF, but only for the
  # default instance, and only when /etc/slurm/slurm.conf is free or already our link.
  local etc=/etc/slurm/slurm.conf
  [[ $STATE_DIR == "$DEFAULT_STATE_DIR" ]] || return 0
  if [[ ! -e $etc && ! -L $etc ]] || [[ -L $etc && $(readlink "$etc") == "$SLURM_CONF_FILE" ]]; then
    mkdir -p /etc/slurm && ln -sfn "$SLURM_CONF_FILE" "$etc"
  else
    say "$etc belongs to another set-up: use  export SLURM_CONF=$SLURM_CONF_FILE"
  fi
}

etc_link_remove() {
  local etc=/etc/slurm/slurm.conf
  if [[ -L $etc && $(readlink "$etc") == "$SLURM_CONF_FILE" ]]; then rm -f "$etc"; fi
  return 0
}

wait_until_idle() {
  local start=$SECONDS lines
  while ((SECONDS - start < READY_TIMEOUT_S)); do
    lines=$(sinfo --noheader --Node --partition=debug --format='%N %T' 2>/dev/null | sort -u || true)
    if [[ $(grep -c ' idle$' <<<"$lines" || true) -eq ${#NODE_NAMES[@]} ]]; then
      say "${#NODE_NAMES[@]} nodes idle after $((SECONDS - start)) s"
      return 0
    fi
    if grep -Eq ' (down|drain|drained|draining)' <<<"$lines"; then
      scontrol update nodename="n[1-${#NODE_NAMES[@]}]" state=resume >/dev/null 2>&1 || true
    fi
    sleep 0.3
  done
  printf '%s\n' "$lines" >&2
  fail "nodes not idle after $READY_TIMEOUT_S s: see $STATE_DIR/log/"
}

cmd_up() {
  ((EUID == 0)) || fail "must run as root (slurmd starts jobs as their users; munged runs as munge)"
  local start=$SECONDS
  ensure_packages
  # slurmctld reads the config at start: rewrite it only while ours is not running.
  [[ -z $(live_pid "$STATE_DIR/pid/slurmctld.pid" slurmctld) ]] && write_slurm_conf
  start_munge
  if ((ACCOUNTING)) && ! grep -q '^AccountingStorageType=accounting_storage/slurmdbd' "$SLURM_CONF_FILE"; then
    # slurmctld runs with a config written before accounting was asked for (or by an older version
    # of this script): sacctmgr could not reach a slurmdbd through it. Leave the cluster as it is.
    say "warning: the running slurmctld was started without accounting: down, then up, to add it"
  elif ((ACCOUNTING)); then
    local t0=$SECONDS
    write_dbd_conf
    start_mariadb
    start_slurmdbd
    ensure_associations
    say "accounting (MariaDB, slurmdbd, associations) ready after $((SECONDS - t0)) s"
  fi
  start_slurmctld
  start_slurmds
  hosts_add
  etc_link_add
  wait_until_idle
  say "up in $((SECONDS - start)) s (config: $SLURM_CONF_FILE)"
}

cmd_down() {
  if [[ -n $(live_pid "$STATE_DIR/pid/slurmctld.pid" slurmctld) ]]; then
    local jobs; jobs=$(squeue --noheader --format=%A 2>/dev/null || true)
    if [[ -n $jobs ]]; then
      say "cancelling jobs: $(echo $jobs)"
      # shellcheck disable=SC2086  # one id per word
      scancel $jobs 2>/dev/null || true
      local i
      for i in $(seq 100); do
        [[ -z $(squeue --noheader --states=R,CG,CF --format=%A 2>/dev/null) ]] && break
        sleep 0.2
      done
    fi
  fi
  local node pidfiles=()
  for node in "${NODE_NAMES[@]}"; do pidfiles+=("$STATE_DIR/pid/slurmd-$node.pid"); done
  stop_daemons slurmd "${pidfiles[@]}"
  stop_daemons slurmctld "$STATE_DIR/pid/slurmctld.pid"
  stop_daemons slurmdbd "$STATE_DIR/pid/slurmdbd.pid"
  stop_daemons mariadbd "$DB_DIR/mariadbd.pid"
  stop_daemons munged "$MUNGE_DIR/munged.pid"
  etc_link_remove
  if other_instance_runs; then
    say "another local-slurm instance still runs: /etc/hosts keeps its n1..n4 line"
  else
    hosts_remove
  fi
  say "down"
}

cmd_status() {
  local node
  printf '%-10s %s\n' munged "$(live_pid "$MUNGE_DIR/munged.pid" munged)"
  printf '%-10s %s\n' mariadbd "$(live_pid "$DB_DIR/mariadbd.pid" mariadbd)"
  printf '%-10s %s\n' slurmdbd "$(live_pid "$STATE_DIR/pid/slurmdbd.pid" slurmdbd)"
  printf '%-10s %s\n' slurmctld "$(live_pid "$STATE_DIR/pid/slurmctld.pid" slurmctld)"
  for node in "${NODE_NAMES[@]}"; do
    printf '%-10s %s\n' "slurmd $node" "$(live_pid "$STATE_DIR/pid/slurmd-$node.pid" slurmd)"
  done
  [[ -n $(live_pid "$STATE_DIR/pid/slurmctld.pid" slurmctld) ]] || { echo "cluster is down"; return 3; }
  sinfo --Node --format='%N %P %T %c %m'
  squeue
}

case ${1:-} in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  env) echo "export SLURM_CONF=$SLURM_CONF_FILE" ;;
  *) echo "usage: $0 up|down|status|env" >&2; exit 2 ;;
esac
