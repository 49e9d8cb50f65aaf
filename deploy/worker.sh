#!/usr/bin/env bash
# Start and stop local streamguard workers in the background, one PID file each.
#
#   worker.sh start [N]   start worker N (default 1): data .run/worker-N, web port 6065+N
#   worker.sh stop        stop every worker this script started (by recorded PID only)
#   worker.sh status
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
run=$repo/.run
py=$repo/.venv/bin/python

log() { printf 'worker: %s\n' "$*" >&2; }

# The local secret `make` wrote, unless the caller set one.
if [[ -z ${STREAMGUARD_HASH_KEY:-} && -s $run/hash_key ]]; then
  export STREAMGUARD_HASH_KEY=$(cat "$run/hash_key")
fi

start() {
  local n=${1:-1} pidfile=$run/worker-$1.pid port=$((6065 + ${1:-1}))
  mkdir -p "$run"
  if [[ -f $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    log "worker $n already running (pid $(cat "$pidfile"))"; return 0
  fi
  setsid "$repo/.venv/bin/streamguard" worker --data-dir "$run/worker-$n" --web-port "$port" \
    >>"$run/worker-$n.log" 2>&1 </dev/null &
  echo $! >"$pidfile"
  local deadline=$((SECONDS + 120))
  until "$py" -c "import json,sys,urllib.request as u; sys.exit(0 if json.load(u.urlopen('http://127.0.0.1:$port/streamguard/stats/', timeout=2))['ready'] else 1)" 2>/dev/null; do
    if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then log "worker $n exited; see $run/worker-$n.log"; exit 1; fi
    if ((SECONDS > deadline)); then log "worker $n not ready in time; see $run/worker-$n.log"; exit 1; fi
    sleep 0.5
  done
  log "worker $n ready (pid $(cat "$pidfile"), http://127.0.0.1:$port/streamguard/stats/, log $run/worker-$n.log)"
}

stop() {
  shopt -s nullglob
  for pidfile in "$run"/worker-*.pid; do
    local pid; pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid"
      for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
      if kill -0 "$pid" 2>/dev/null; then log "pid $pid did not stop in 30 s; killing it"; kill -KILL "$pid"; fi
      log "stopped $(basename "$pidfile" .pid) (pid $pid)"
    fi
    rm -f "$pidfile"
  done
}

status() {
  shopt -s nullglob
  for pidfile in "$run"/worker-*.pid; do
    local pid; pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then echo "$(basename "$pidfile" .pid): running (pid $pid)"
    else echo "$(basename "$pidfile" .pid): not running"; fi
  done
}

case "${1:-}" in
  start) start "${2:-1}" ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start [N]|stop|status" >&2; exit 2 ;;
esac
