#!/usr/bin/env bash
# Start, stop and inspect a local Apache Kafka (KRaft) on 127.0.0.1: one node by
# default, or a cluster of N nodes.
#
#   kafka.sh fetch | start | stop | status | restart
#   kafka.sh kill [NODE]                   SIGKILL (kill -9) a node, by its recorded PID
#   kafka.sh start-node NODE | stop-node NODE   start one node (and wait) / SIGTERM one node
#
# The broker's jars come from Maven Central (pom.xml beside this script) and
# are cached in $STREAMGUARD_KAFKA_LIB; its data, log and PID file live in
# $STREAMGUARD_KAFKA_HOME. `stop` and `kill` signal only the PIDs that `start` recorded.
#
# Single node (STREAMGUARD_KAFKA_NODES=1, the default): server.properties, home
# .run/kafka, client port STREAMGUARD_KAFKA_PORT (9092), controller port
# STREAMGUARD_KAFKA_CONTROLLER_PORT (client port + 1). `kill` needs no NODE (or 1).
#
# Cluster (STREAMGUARD_KAFKA_NODES=N, N >= 3): N JVMs from cluster.properties, each
# process.roles=broker,controller with node.id=i (1..N) and a static quorum of all N;
# replication factor 3, min.insync.replicas 2. Node i lives in $STREAMGUARD_KAFKA_HOME/node-i
# (default home .run/kafka-cluster) and listens on
#     client port      STREAMGUARD_KAFKA_PORT + 2*(i-1)              (9092, 9094, 9096, ...)
#     controller port  STREAMGUARD_KAFKA_CONTROLLER_PORT + 2*(i-1)   (9093, 9095, 9097, ...)
# `start`, `stop`, `status` and `restart` act on all nodes; kill/start-node/stop-node on one.
# Each node's heap is STREAMGUARD_KAFKA_HEAP (512m in a cluster, 1g for a single node).
#
#   STREAMGUARD_KAFKA_NODES=3 STREAMGUARD_KAFKA_PORT=29092 deploy/kafka/kafka.sh start
#   STREAMGUARD_KAFKA_NODES=3 STREAMGUARD_KAFKA_PORT=29092 deploy/kafka/kafka.sh kill 2
#   STREAMGUARD_KAFKA_NODES=3 STREAMGUARD_KAFKA_PORT=29092 deploy/kafka/kafka.sh start-node 2
#   (bootstrap servers: 127.0.0.1:29092,127.0.0.1:29094,127.0.0.1:29096)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
nodes=${STREAMGUARD_KAFKA_NODES:-1}
if ! [[ $nodes =~ ^[0-9]+$ ]] || ((nodes == 0 || nodes == 2)); then
  # Two nodes can hold neither a fault-tolerant quorum nor three replicas.
  echo "kafka: STREAMGUARD_KAFKA_NODES must be 1 or at least 3, not '$nodes'" >&2
  exit 2
fi
if ((nodes == 1)); then
  home=${STREAMGUARD_KAFKA_HOME:-$repo/.run/kafka}
  heap=${STREAMGUARD_KAFKA_HEAP:-1g}
else
  home=${STREAMGUARD_KAFKA_HOME:-$repo/.run/kafka-cluster}
  heap=${STREAMGUARD_KAFKA_HEAP:-512m}
fi
port=${STREAMGUARD_KAFKA_PORT:-9092}
controller_port=${STREAMGUARD_KAFKA_CONTROLLER_PORT:-$((port + 1))}
lib=${STREAMGUARD_KAFKA_LIB:-$repo/.run/kafka-lib}

all_nodes=()
for ((i = 1; i <= nodes; i++)); do all_nodes+=("$i"); done

# The node the functions below act on; select_node sets these. A single node keeps
# its files directly in $home, as it always has.
node=1 node_home=$home node_port=$port node_controller_port=$controller_port
pidfile='' logfile='' conf='' java_cmd=()
log_mark=() # per node: the size of its log before this start, so readiness ignores older runs

select_node() {
  node=$1
  if ((nodes == 1)); then
    node_home=$home node_port=$port node_controller_port=$controller_port
  else
    node_home=$home/node-$node
    node_port=$((port + 2 * (node - 1)))
    node_controller_port=$((controller_port + 2 * (node - 1)))
  fi
  pidfile=$node_home/broker.pid
  logfile=$node_home/broker.log
  conf=$node_home/server.properties
  java_cmd=(java -Xms256m "-Xmx$heap" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true
    "-Dlog4j2.configurationFile=$here/log4j2.properties" "-Dkafka.log.file=$logfile" -cp "$lib/*")
}

log() {
  if ((nodes == 1)); then printf 'kafka: %s\n' "$*" >&2; else printf 'kafka node-%s: %s\n' "$node" "$*" >&2; fi
}

# Gone, or a zombie (PID 1 may take seconds to reap a broker whose parent shell has
# exited), is not running; but a zombie whose other threads are still exiting ("l" in
# its state) still holds its ports and files.
alive() {
  kill -0 "$1" 2>/dev/null || return 1
  local stat; stat=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
  [[ $stat != Z* || $stat == *l* ]]
}

running_pid() {
  [[ -f $pidfile ]] || return 1
  local pid; pid=$(cat "$pidfile")
  alive "$pid" || return 1
  echo "$pid"
}

fetch() {
  local stamp=$lib/.pom-sha
  local want; want=$(sha256sum "$here/pom.xml" | cut -d' ' -f1)
  if [[ -f $stamp && $(cat "$stamp") == "$want" ]]; then return 0; fi
  log "resolving the broker's jars from Maven Central into $lib"
  rm -rf "$lib" && mkdir -p "$lib"
  mvn -q -B -Dstyle.color=never -f "$here/pom.xml" dependency:copy-dependencies \
    -DoutputDirectory="$lib" -DincludeScope=runtime
  echo "$want" >"$stamp"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# id@host:port of every node's controller listener: the static KRaft quorum.
voters() {
  local i out=()
  for i in "${all_nodes[@]}"; do out+=("$i@127.0.0.1:$((controller_port + 2 * (i - 1)))"); done
  local IFS=,; echo "${out[*]}"
}

write_config() {
  mkdir -p "$node_home/data"
  if ((nodes == 1)); then
    sed -e "s|@DATA_DIR@|$home|g" -e "s|@PORT@|$port|g" -e "s|@CONTROLLER_PORT@|$controller_port|g" \
      "$here/server.properties" >"$conf"
  else
    sed -e "s|@NODE_ID@|$node|g" -e "s|@DATA_DIR@|$node_home|g" -e "s|@PORT@|$node_port|g" \
      -e "s|@CONTROLLER_PORT@|$node_controller_port|g" -e "s|@VOTERS@|$(voters)|g" \
      "$here/cluster.properties" >"$conf"
  fi
}

# All nodes of a cluster must be formatted with one cluster id, kept in $home/cluster.id.
# If that file is lost, take the id from a node formatted before, or that node could never rejoin.
cluster_id() {
  local idfile=$home/cluster.id meta
  if [[ ! -s $idfile ]]; then
    for meta in "$home"/node-*/data/meta.properties; do
      [[ -f $meta ]] && sed -n 's/^cluster\.id=//p' "$meta" >"$idfile" && [[ -s $idfile ]] && break
    done
  fi
  [[ -s $idfile ]] || "${java_cmd[@]}" kafka.tools.StorageTool random-uuid >"$idfile"
  cat "$idfile"
}

format_storage() {
  [[ -f $node_home/data/meta.properties ]] && return 0
  log "formatting KRaft storage in $node_home/data"
  local id
  if ((nodes == 1)); then id=$("${java_cmd[@]}" kafka.tools.StorageTool random-uuid); else id=$(cluster_id); fi
  "${java_cmd[@]}" kafka.tools.StorageTool format -t "$id" -c "$conf" >/dev/null
}

launch() {
  log_mark[node]=$(stat -c %s "$logfile" 2>/dev/null || echo 0)
  # setsid: the broker must outlive the shell (and make) that started it.
  setsid "${java_cmd[@]}" kafka.Kafka "$conf" >>"$node_home/broker.out" 2>&1 </dev/null &
  echo $! >"$pidfile"
}

# Start the given nodes that are not running, then wait for each. All are launched
# before any is awaited: a cluster node cannot finish starting until a quorum is up.
start_nodes() {
  local i pid todo=()
  for i in "$@"; do
    select_node "$i"
    if pid=$(running_pid); then log "already running (pid $pid) on 127.0.0.1:$node_port"; continue; fi
    if port_open "$node_port"; then log "127.0.0.1:$node_port is taken by a process this script did not start"; exit 1; fi
    if ((nodes > 1)) && port_open "$node_controller_port"; then
      log "127.0.0.1:$node_controller_port is taken by a process this script did not start"; exit 1
    fi
    todo+=("$i")
  done
  for i in "${todo[@]}"; do
    select_node "$i"
    fetch
    write_config
    format_storage
    launch
  done
  for i in "${todo[@]}"; do
    select_node "$i"
    wait_ready
  done
}

wait_ready() {
  local deadline=$((SECONDS + ${STREAMGUARD_KAFKA_START_TIMEOUT:-120}))
  # Only this run's part of the log counts: an earlier run (one killed with -9, say)
  # logged "Kafka Server started" too.
  local from=$((${log_mark[node]:-0} + 1))
  until port_open "$node_port" && grep -q "Kafka Server started" < <(tail -c "+$from" "$logfile" 2>/dev/null); do
    if ! running_pid >/dev/null; then log "broker exited; see $logfile and $node_home/broker.out"; exit 1; fi
    if ((SECONDS > deadline)); then log "broker not ready in time; see $logfile"; exit 1; fi
    sleep 0.5
  done
  log "ready on 127.0.0.1:$node_port (pid $(cat "$pidfile"), log $logfile)"
}

# SIGTERM the given nodes, all at once (a cluster's last nodes keep the quorum that
# the others' controlled shutdown needs), then wait up to 60 s for each.
stop_nodes() {
  local i pid pids=()
  for i in "$@"; do
    select_node "$i"
    if ! pid=$(running_pid); then log "not running"; rm -f "$pidfile"; continue; fi
    kill -TERM "$pid"
    pids[i]=$pid
  done
  for i in "${!pids[@]}"; do
    select_node "$i"
    pid=${pids[i]}
    for _ in $(seq 1 120); do
      alive "$pid" || { rm -f "$pidfile"; log "stopped (pid $pid)"; continue 2; }
      sleep 0.5
    done
    log "pid $pid did not stop in 60 s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$pidfile"
  done
}

# kill -9: no controlled shutdown, no flush; what a crash or the OOM killer does.
kill_node() {
  select_node "$1"
  local pid
  if ! pid=$(running_pid); then log "not running"; rm -f "$pidfile"; return 0; fi
  kill -KILL "$pid"
  for _ in $(seq 1 40); do
    alive "$pid" || { rm -f "$pidfile"; log "killed (pid $pid) with SIGKILL"; return 0; }
    sleep 0.25
  done
  log "pid $pid still alive 10 s after SIGKILL"
  exit 1
}

status() {
  if ((nodes == 1)); then
    select_node 1
    if pid=$(running_pid); then echo "running (pid $pid) on 127.0.0.1:$port"; else echo "not running"; return 3; fi
    return 0
  fi
  local i pid down=0
  for i in "${all_nodes[@]}"; do
    select_node "$i"
    if pid=$(running_pid); then
      echo "node-$i: running (pid $pid) on 127.0.0.1:$node_port"
    else
      echo "node-$i: not running"; down=1
    fi
  done
  ((down == 0)) || return 3
}

# NODE for kill/start-node/stop-node: 1..N; a single node may leave it out.
node_arg() {
  local n=${1:-}
  if [[ -z $n ]] && ((nodes == 1)); then echo 1; return 0; fi
  if ! [[ $n =~ ^[0-9]+$ ]] || ((n < 1 || n > nodes)); then
    echo "kafka: NODE must be 1..$nodes, not '$n' (STREAMGUARD_KAFKA_NODES=$nodes)" >&2
    exit 2
  fi
  echo "$n"
}

select_node 1
case "${1:-}" in
  fetch) fetch ;;
  start) start_nodes "${all_nodes[@]}" ;;
  stop) stop_nodes "${all_nodes[@]}" ;;
  restart) stop_nodes "${all_nodes[@]}"; start_nodes "${all_nodes[@]}" ;;
  status) status ;;
  kill) n=$(node_arg "${2:-}"); kill_node "$n" ;;
  start-node) n=$(node_arg "${2:-}"); start_nodes "$n" ;;
  stop-node) n=$(node_arg "${2:-}"); stop_nodes "$n" ;;
  *) echo "usage: $0 fetch|start|stop|restart|status|kill [NODE]|start-node NODE|stop-node NODE" >&2; exit 2 ;;
esac
