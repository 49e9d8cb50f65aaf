#!/usr/bin/env bash
# Start, stop and inspect a single-node Apache Kafka broker (KRaft) on 127.0.0.1.
#
#   kafka.sh fetch | start | stop | status | restart
#
# The broker's jars come from Maven Central (pom.xml beside this script) and
# are cached in $STREAMGUARD_KAFKA_LIB; its data, log and PID file live in
# $STREAMGUARD_KAFKA_HOME. `stop` signals only the PID that `start` recorded.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
home=${STREAMGUARD_KAFKA_HOME:-$repo/.run/kafka}
port=${STREAMGUARD_KAFKA_PORT:-9092}
controller_port=${STREAMGUARD_KAFKA_CONTROLLER_PORT:-$((port + 1))}
heap=${STREAMGUARD_KAFKA_HEAP:-1g}
lib=${STREAMGUARD_KAFKA_LIB:-$repo/.run/kafka-lib}
pidfile=$home/broker.pid
logfile=$home/broker.log
conf=$home/server.properties

log() { printf 'kafka: %s\n' "$*" >&2; }

running_pid() {
  [[ -f $pidfile ]] || return 1
  local pid; pid=$(cat "$pidfile")
  kill -0 "$pid" 2>/dev/null || return 1
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

write_config() {
  mkdir -p "$home/data"
  sed -e "s|@DATA_DIR@|$home|g" -e "s|@PORT@|$port|g" -e "s|@CONTROLLER_PORT@|$controller_port|g" \
    "$here/server.properties" >"$conf"
}

java_cmd=(java -Xms256m "-Xmx$heap" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true
  "-Dlog4j2.configurationFile=$here/log4j2.properties" "-Dkafka.log.file=$logfile" -cp "$lib/*")

format_storage() {
  [[ -f $home/data/meta.properties ]] && return 0
  log "formatting KRaft storage in $home/data"
  local id; id=$("${java_cmd[@]}" kafka.tools.StorageTool random-uuid)
  "${java_cmd[@]}" kafka.tools.StorageTool format -t "$id" -c "$conf" >/dev/null
}

start() {
  if pid=$(running_pid); then log "already running (pid $pid) on 127.0.0.1:$port"; return 0; fi
  if port_open "$port"; then log "127.0.0.1:$port is taken by a process this script did not start"; exit 1; fi
  fetch
  write_config
  format_storage
  # setsid: the broker must outlive the shell (and make) that started it.
  setsid "${java_cmd[@]}" kafka.Kafka "$conf" >>"$home/broker.out" 2>&1 </dev/null &
  echo $! >"$pidfile"
  wait_ready
}

wait_ready() {
  local deadline=$((SECONDS + ${STREAMGUARD_KAFKA_START_TIMEOUT:-120}))
  until port_open "$port" && grep -q "Kafka Server started" "$logfile" 2>/dev/null; do
    if ! running_pid >/dev/null; then log "broker exited; see $logfile and $home/broker.out"; exit 1; fi
    if ((SECONDS > deadline)); then log "broker not ready in time; see $logfile"; exit 1; fi
    sleep 0.5
  done
  log "ready on 127.0.0.1:$port (pid $(cat "$pidfile"), log $logfile)"
}

stop() {
  local pid
  if ! pid=$(running_pid); then log "not running"; rm -f "$pidfile"; return 0; fi
  kill -TERM "$pid"
  for _ in $(seq 1 120); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; log "stopped (pid $pid)"; return 0; }
    sleep 0.5
  done
  log "pid $pid did not stop in 60 s; killing it"
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$pidfile"
}

status() {
  if pid=$(running_pid); then echo "running (pid $pid) on 127.0.0.1:$port"; else echo "not running"; return 3; fi
}

case "${1:-}" in
  fetch) fetch ;;
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  status) status ;;
  *) echo "usage: $0 fetch|start|stop|restart|status" >&2; exit 2 ;;
esac
