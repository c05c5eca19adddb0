#!/usr/bin/env bash
# A local, single-node Apache Kafka broker (KRaft, broker+controller combined) run straight
# from the Apache Kafka jars that Maven resolves: no Docker, no Kafka distribution tarball.
# See deploy/kafka/README.md.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"

KAFKA_VERSION="${KAFKA_VERSION:-4.4.0}"
CACHE_ROOT="${TOPK_KAFKA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/topk/kafka}"
LIBS="$CACHE_ROOT/$KAFKA_VERSION/libs"
DEFAULT_DIR="${TOPK_KAFKA_DIR:-$REPO/.services/kafka}"   # .services/ is git-ignored
DEFAULT_PORT=9092
KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms128m -Xmx512m}"
START_TIMEOUT="${KAFKA_START_TIMEOUT:-60}"   # seconds to wait for the broker to accept clients
STOP_TIMEOUT="${KAFKA_STOP_TIMEOUT:-30}"     # seconds between SIGTERM and SIGKILL

BROKER_MAIN=kafka.Kafka
STORAGE_MAIN=kafka.tools.StorageTool

usage() {
  cat <<EOF
Usage: deploy/kafka/kafka.sh COMMAND [OPTIONS]

A local single-node Apache Kafka $KAFKA_VERSION broker (KRaft mode), run from the jars that
Maven resolves (deploy/kafka/pom.xml). Needs java (17+) and mvn.

Commands:
  install                 Resolve the broker's jars into $LIBS
                          (a no-op when they are already there).
  start [OPTIONS]         Install if needed, write server.properties, format the storage
                          (only the first time), start the broker in the background and wait
                          until it answers a metadata request. Prints KAFKA_BOOTSTRAP=host:port.
                          If the broker of that --dir is already running, just prints it.
      --port P            Client port (default: the port this --dir used last time, else
                          $DEFAULT_PORT if free, else a free port). 0 = pick a free port.
      --controller-port Q KRaft controller port (default: as last time, else a free port).
      --dir D             State dir: server.properties, data/, kafka.log, kafka.pid
                          (default: $DEFAULT_DIR).
  stop [--dir D]          SIGTERM, wait up to ${STOP_TIMEOUT}s, then SIGKILL. Data is kept.
  status [--dir D]        Exit 0 and print KAFKA_BOOTSTRAP=... if running, else exit 3.
  --help                  This text.

Restart: 'stop' then 'start' with the same --dir keeps topics and offsets (the storage is
formatted only once) and reuses the same ports unless told otherwise.

Environment: KAFKA_VERSION ($KAFKA_VERSION), TOPK_KAFKA_CACHE (jar cache root, default
~/.cache/topk/kafka), TOPK_KAFKA_DIR (default --dir), KAFKA_HEAP_OPTS ($KAFKA_HEAP_OPTS),
KAFKA_START_TIMEOUT ($START_TIMEOUT), KAFKA_STOP_TIMEOUT ($STOP_TIMEOUT),
KAFKA_PROBE_PYTHON (a python with kafka-python for the readiness probe; default: the first of
\$REPO/.venv/bin/python, \$VIRTUAL_ENV/bin/python, python3, /tmp/venv/bin/python that imports kafka;
'none': wait for the port and the broker's 'Kafka Server started' log line only).
EOF
}

log() { echo "kafka.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------------------------- install
libs_ready() { [[ -f "$LIBS/.complete" ]]; }

cmd_install() {
  [[ $# -eq 0 ]] || die "install takes no arguments"
  if libs_ready; then
    log "Kafka $KAFKA_VERSION jars already in $LIBS"
    return 0
  fi
  command -v mvn >/dev/null || die "mvn not found (apt-get install maven)"
  command -v java >/dev/null || die "java not found (apt-get install openjdk-17-jre-headless)"
  mkdir -p "$CACHE_ROOT/$KAFKA_VERSION"
  # Serialise concurrent installs (parallel test workers, two shells).
  exec 8>"$CACHE_ROOT/$KAFKA_VERSION/.install.lock"
  flock 8
  if libs_ready; then exec 8>&-; return 0; fi
  local tmp="$LIBS.tmp.$$" t0=$SECONDS
  rm -rf "$tmp"
  log "resolving org.apache.kafka:kafka_2.13:$KAFKA_VERSION with Maven into $LIBS ..."
  if ! mvn -q -B -Dstyle.color=never -f "$HERE/pom.xml" -Dkafka.version="$KAFKA_VERSION" \
        dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp" >&2; then
    rm -rf "$tmp"
    die "mvn could not resolve Kafka $KAFKA_VERSION"
  fi
  [[ -f "$tmp/kafka_2.13-$KAFKA_VERSION.jar" ]] || die "kafka_2.13-$KAFKA_VERSION.jar missing after mvn"
  touch "$tmp/.complete"
  rm -rf "$LIBS"
  mv "$tmp" "$LIBS"
  exec 8>&-   # releases the lock (and keeps the fd out of the broker's process)
  log "installed $(ls "$LIBS" | wc -l) jars in $((SECONDS - t0))s"
}

# ---------------------------------------------------------------------------------- helpers
port_in_use() { # port -> 0 if something listens on 127.0.0.1:port
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

free_port() { # a port that is free now (the kernel's choice)
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

random_cluster_id() { # Kafka Uuid: 16 random bytes, base64url without padding, not starting with '-'
  local id
  while :; do
    id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
    [[ ${#id} -eq 22 && "$id" != -* ]] && { echo "$id"; return; }
  done
}

conf_port() { # dir -> client port written in its server.properties ("" if none)
  [[ -f "$1/server.properties" ]] || return 0
  sed -n 's|^advertised.listeners=PLAINTEXT://127.0.0.1:\([0-9]*\)$|\1|p' "$1/server.properties" | tail -n 1
}

conf_cport() { # dir -> controller port written in its server.properties ("" if none)
  [[ -f "$1/server.properties" ]] || return 0
  sed -n 's|^controller.quorum.voters=1@127.0.0.1:\([0-9]*\)$|\1|p' "$1/server.properties" | tail -n 1
}

read_pid() { # dir -> pid of the running broker of that dir, or fail
  local pidf="$1/kafka.pid" pid
  [[ -f "$pidf" ]] || return 1
  pid="$(cat "$pidf")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  # Guard against a recycled pid: it must be our broker, started with this dir's config.
  local cmd; cmd="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
  [[ "$cmd" == *"$BROKER_MAIN $1/server.properties"* ]] || return 1
  echo "$pid"
}

probe_python() {
  local c
  [[ "${KAFKA_PROBE_PYTHON:-}" != none ]] || return 1
  for c in "${KAFKA_PROBE_PYTHON:-}" "$REPO/.venv/bin/python" "${VIRTUAL_ENV:+$VIRTUAL_ENV/bin/python}" \
           "$(command -v python3 || true)" /tmp/venv/bin/python; do
    [[ -n "$c" && -x "$c" ]] || continue
    "$c" -c 'import kafka' 2>/dev/null && { echo "$c"; return 0; }
  done
  return 1
}

# A real client round trip: a metadata request that must list this broker.
PROBE='
import sys, time
from kafka import KafkaAdminClient
bootstrap, deadline = sys.argv[1], time.time() + float(sys.argv[2])
err = None
while time.time() < deadline:
    try:
        a = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="topk-kafka-probe",
                             request_timeout_ms=5000)
        try:
            brokers = a.describe_cluster()["brokers"]
        finally:
            a.close()
        if brokers:
            sys.exit(0)
        err = "no brokers in metadata"
    except Exception as e:
        err = repr(e)
    time.sleep(0.5)
print("probe failed: %s" % err, file=sys.stderr)
sys.exit(1)
'

parse_dir_opts() { # sets DIR, PORT, CPORT from options
  DIR="$DEFAULT_DIR"; PORT=""; CPORT=""
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --dir) DIR="${2:?--dir needs a value}"; shift 2 ;;
      --dir=*) DIR="${1#*=}"; shift ;;
      --port) PORT="${2:?--port needs a value}"; shift 2 ;;
      --port=*) PORT="${1#*=}"; shift ;;
      --controller-port) CPORT="${2:?--controller-port needs a value}"; shift 2 ;;
      --controller-port=*) CPORT="${1#*=}"; shift ;;
      -h|--help) usage; exit 0 ;;
      *) die "unknown option: $1 (see --help)" ;;
    esac
  done
  mkdir -p "$DIR"
  DIR="$(cd "$DIR" && pwd)"
}

# ---------------------------------------------------------------------------------- start
cmd_start() {
  parse_dir_opts "$@"
  local t0=$SECONDS pid props="$DIR/server.properties"
  if pid="$(read_pid "$DIR")"; then
    log "already running (pid $pid, dir $DIR)"
    echo "KAFKA_BOOTSTRAP=127.0.0.1:$(conf_port "$DIR")"
    return 0
  fi
  [[ "$PORT" =~ ^[0-9]*$ && "$CPORT" =~ ^[0-9]*$ ]] || die "ports must be numbers"
  libs_ready || cmd_install
  command -v java >/dev/null || die "java not found"

  # Ports: explicit > what this dir used last time > 9092 (client) / free port.
  local prev_port prev_cport
  prev_port="$(conf_port "$DIR")"; prev_cport="$(conf_cport "$DIR")"
  if [[ -z "$PORT" ]]; then
    if [[ -n "$prev_port" ]]; then PORT="$prev_port"
    elif ! port_in_use "$DEFAULT_PORT"; then PORT="$DEFAULT_PORT"
    else PORT="$(free_port)"; log "port $DEFAULT_PORT is busy, using $PORT"
    fi
  elif [[ "$PORT" == 0 ]]; then
    PORT="$(free_port)"
  fi
  if [[ -z "$CPORT" ]]; then CPORT="${prev_cport:-$(free_port)}"
  elif [[ "$CPORT" == 0 ]]; then CPORT="$(free_port)"
  fi
  while [[ "$CPORT" == "$PORT" ]]; do CPORT="$(free_port)"; done
  port_in_use "$PORT" && die "port $PORT is already in use"
  port_in_use "$CPORT" && die "controller port $CPORT is already in use"

  mkdir -p "$DIR/data"
  cat >"$props" <<EOF
# Written by deploy/kafka/kafka.sh start: a single-node KRaft broker+controller on 127.0.0.1.
# 'start' reads the ports back from advertised.listeners and controller.quorum.voters.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CPORT
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CPORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
log.dirs=$DIR/data
num.partitions=4
auto.create.topics.enable=true
delete.topic.enable=true
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=4
log.retention.hours=168
EOF
  cat >"$DIR/log4j2.properties" <<'EOF'
status = warn
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = STDOUT
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
EOF

  local jvm=(java $KAFKA_HEAP_OPTS -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExitOnOutOfMemoryError
             -Djava.awt.headless=true -Dlog4j2.configurationFile="$DIR/log4j2.properties"
             -Dkafka.logs.dir="$DIR" -cp "$LIBS/*")

  # Format only once: a formatted dir (meta.properties) keeps its topics and offsets.
  if [[ ! -f "$DIR/data/meta.properties" ]]; then
    local cid; cid="$(random_cluster_id)"
    log "formatting $DIR/data (cluster id $cid)"
    "${jvm[@]}" "$STORAGE_MAIN" format -t "$cid" -c "$props" >>"$DIR/kafka.log" 2>&1 \
      || { tail -n 20 "$DIR/kafka.log" >&2; die "storage format failed (see $DIR/kafka.log)"; }
  fi

  echo "===== start $(date -Is) port=$PORT controller=$CPORT" >>"$DIR/kafka.log"
  local first_line; first_line=$(( $(wc -l <"$DIR/kafka.log") + 1 ))
  # setsid: the broker outlives this shell and ignores the caller's Ctrl-C; all three standard
  # streams are redirected so that a caller capturing our output does not wait for the broker.
  setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' kafka-start "$DIR/kafka.pid" \
    "${jvm[@]}" "$BROKER_MAIN" "$props" </dev/null >>"$DIR/kafka.log" 2>&1 &
  local launcher=$!

  # Wait (bounded) until it accepts clients.
  local deadline=$((SECONDS + START_TIMEOUT)) py
  py="$(probe_python || true)"
  [[ -n "$py" ]] || log "no python with kafka-python: waiting for the port and the 'started' log line only"
  while :; do
    pid="$(cat "$DIR/kafka.pid" 2>/dev/null || echo "$launcher")"
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 15 "$DIR/kafka.log" | cut -c1-300 >&2
      die "broker exited during start (see $DIR/kafka.log)"
    fi
    (( SECONDS < deadline )) || { tail -n 15 "$DIR/kafka.log" | cut -c1-300 >&2; cmd_stop --dir "$DIR" || true
                                  die "broker not ready after ${START_TIMEOUT}s"; }
    if port_in_use "$PORT"; then
      if [[ -n "$py" ]]; then
        "$py" -c "$PROBE" "127.0.0.1:$PORT" "$((deadline - SECONDS))" && break
      elif tail -n "+$first_line" "$DIR/kafka.log" | grep -c "Kafka Server started" >/dev/null; then
        break
      fi
    fi
    sleep 0.2
  done
  log "Kafka $KAFKA_VERSION ready on 127.0.0.1:$PORT in $((SECONDS - t0))s (pid $pid, dir $DIR, log $DIR/kafka.log)"
  echo "KAFKA_BOOTSTRAP=127.0.0.1:$PORT"
}

# ---------------------------------------------------------------------------------- stop/status
cmd_stop() {
  parse_dir_opts "$@"
  local pid
  if ! pid="$(read_pid "$DIR")"; then
    log "not running (dir $DIR)"
    rm -f "$DIR/kafka.pid"
    return 0
  fi
  kill -TERM "$pid"
  local deadline=$((SECONDS + STOP_TIMEOUT))
  while kill -0 "$pid" 2>/dev/null && (( SECONDS < deadline )); do sleep 0.2; done
  if kill -0 "$pid" 2>/dev/null; then
    log "no exit ${STOP_TIMEOUT}s after SIGTERM: SIGKILL $pid"
    kill -KILL "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  fi
  rm -f "$DIR/kafka.pid"
  log "stopped (pid $pid)"
}

cmd_status() {
  parse_dir_opts "$@"
  local pid
  if pid="$(read_pid "$DIR")"; then
    log "running (pid $pid, dir $DIR)"
    echo "KAFKA_BOOTSTRAP=127.0.0.1:$(conf_port "$DIR")"
    return 0
  fi
  log "not running (dir $DIR)"
  return 3
}

case "${1:-}" in
  install) shift; cmd_install "$@" ;;
  start) shift; cmd_start "$@" ;;
  stop) shift; cmd_stop "$@" ;;
  status) shift; cmd_status "$@" ;;
  -h|--help|help) usage ;;
  "") usage >&2; exit 2 ;;
  *) log "unknown command: $1"; usage >&2; exit 2 ;;
esac
