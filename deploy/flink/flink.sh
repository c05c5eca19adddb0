#!/usr/bin/env bash
# Local Apache Flink cluster (from the apache-flink PyPI distribution) plus Beam's Flink job
# server jar, for running Beam Python pipelines with --runner=FlinkRunner fully offline.
# See deploy/flink/README.md. Run `deploy/flink/flink.sh --help`.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# ---- versions and locations (all overridable through the environment) ----------------------
FLINK_VERSION="${TOPK_FLINK_VERSION:-1.19.3}"          # apache-flink + apache-flink-libraries
FLINK_MINOR="${FLINK_VERSION%.*}"                       # value for Beam's --flink_version
# Beam Java version of the job server. Beam 2.77's own job server jar is not on the Maven
# Central reachable here; 2.62.0 is the newest Beam whose beam-runners-flink-<minor> and all
# its dependencies resolve (see README). The Python SDK version may differ from it.
JOBSERVER_BEAM_VERSION="${TOPK_FLINK_BEAM_VERSION:-2.62.0}"
CACHE_DIR="${TOPK_FLINK_CACHE:-$HOME/.cache/topk/flink}"
VENV_DIR="${TOPK_FLINK_VENV:-$CACHE_DIR/venv-$FLINK_VERSION}"
RUN_DIR="${TOPK_FLINK_RUN_DIR:-$CACHE_DIR/run}"
PYTHON_BIN="${TOPK_FLINK_PYTHON:-python3}"              # creates the cluster's venv
DL_DIR="$CACHE_DIR/dl"
JOBSERVER_JAR="$CACHE_DIR/beam-runners-flink-$FLINK_MINOR-job-server-$JOBSERVER_BEAM_VERSION.jar"
STATE_FILE="$RUN_DIR/state.env"
# The Flink Kubernetes Operator's CRDs (for checking deploy/k8s offline) come from its API jar.
OPERATOR_VERSION="${TOPK_FLINK_OPERATOR_VERSION:-1.10.0}"
CRD_DIR="$CACHE_DIR/operator-crds-$OPERATOR_VERSION"
MVN=(mvn -B -q -Dstyle.color=never)

die() { echo "flink.sh: $*" >&2; exit 1; }
log() { echo "flink.sh: $*" >&2; }

usage() {
  cat <<EOF
Usage: deploy/flink/flink.sh COMMAND [OPTIONS]

Commands:
  install               Create the Flink venv ($VENV_DIR) with apache-flink==$FLINK_VERSION
                        (--no-deps: cluster only), fetch or build Beam's Flink job server jar
                        into $CACHE_DIR and extract the Flink Kubernetes Operator's CRDs
                        ($OPERATOR_VERSION) into $CRD_DIR. Idempotent.
  start [--rest-port P] [--slots N] [--rpc-port P] [--tm-memory SIZE] [--jm-memory SIZE]
                        Start a JobManager + TaskManager bound to 127.0.0.1 (defaults: rest 8081,
                        4 slots, rpc port picked free, TM 2048m, JM 1024m) with a copy of the conf
                        dir under $RUN_DIR; wait until REST /overview reports a TaskManager and its slots.
  health [--min-slots N] Print REST /overview JSON; exit non-zero if the cluster is down, has no
                        TaskManager or fewer than N task slots in all (default 1).
  stop                  Stop the cluster started by 'start'.
  kill-taskmanager      SIGKILL every TaskManager of the cluster (a crash, for failover tests) and
                        print their pids; jobs restart from their last checkpoint once a
                        TaskManager offers slots again.
  start-taskmanager [--timeout S]
                        Start one more TaskManager and wait (default 60 s) until it is registered
                        (REST /taskmanagers lists a new one); prints its REST id.
  jobserver-jar         Print the job server jar path (non-zero exit if not installed).
  options [--parallelism N] [--environment_type T] [--environment_config C]
                        Print the Beam options that submit a pipeline to this cluster
                        (FlinkRunner, REST address, Flink version, job server jar, LOOPBACK,
                        parallelism 2): topk batch ... \$(deploy/flink/flink.sh options)
  install-sql           Fetch the SQL client's jars (flink-sql-gateway 1.19.1, Kafka SQL
                        connector) into \$CACHE_DIR/sql-jars with mvn and print their paths plus
                        the flink-sql-client / flink-python jars of the distribution's opt/.
  crds                  Print the directory of the operator's CRD YAML files (extracts them first).
  env                   Print shell exports (FLINK_REST, FLINK_VERSION, FLINK_JOB_SERVER_JAR, ...):
                        eval "\$(deploy/flink/flink.sh env)"
  jobserver start [--port P] | jobserver stop
                        Optional long-running Beam job server (default port 8099) for
                        --runner=PortableRunner --job_endpoint=127.0.0.1:P (saves the ~3-5 s JVM
                        start that FlinkRunner pays per pipeline). 'flink.sh stop' stops it too.
  logs                  Print the tail of the JobManager, TaskManager and job server logs.
  -h, --help            This help.

Environment: TOPK_FLINK_VERSION ($FLINK_VERSION), TOPK_FLINK_BEAM_VERSION ($JOBSERVER_BEAM_VERSION),
TOPK_FLINK_CACHE ($CACHE_DIR), TOPK_FLINK_VENV, TOPK_FLINK_RUN_DIR ($RUN_DIR),
TOPK_FLINK_PYTHON ($PYTHON_BIN), JAVA_HOME (Java 11 or 17; Flink $FLINK_MINOR does not support newer).

Beam (Python SDK in the project's venv):
  eval "\$(deploy/flink/flink.sh env)"
  python pipeline.py --runner=FlinkRunner --flink_master=\$FLINK_REST \\
    --flink_version=\$FLINK_VERSION --flink_job_server_jar=\$FLINK_JOB_SERVER_JAR \\
    --environment_type=LOOPBACK --parallelism=2
EOF
}

pyflink_home() {
  # The Flink distribution lives inside the venv's site-packages (pyflink/bin, lib, conf, ...).
  local d
  for d in "$VENV_DIR"/lib/python3*/site-packages/pyflink; do
    if [[ -f "$d/bin/jobmanager.sh" ]] && compgen -G "$d/lib/flink-dist*.jar" >/dev/null; then
      echo "$d"; return 0
    fi
  done
  return 1
}

# ---- install ---------------------------------------------------------------------------------
install_flink() {
  local installed=""
  if [[ -x "$VENV_DIR/bin/python" ]]; then
    installed="$("$VENV_DIR/bin/python" -c 'import importlib.metadata as m; print(m.version("apache-flink"))' 2>/dev/null || true)"
  fi
  if [[ "$installed" == "$FLINK_VERSION" ]] && pyflink_home >/dev/null; then
    log "Flink $FLINK_VERSION already in $VENV_DIR"
    return 0
  fi
  mkdir -p "$DL_DIR"
  [[ -x "$VENV_DIR/bin/python" ]] || "$PYTHON_BIN" -m venv "$VENV_DIR"
  # Download into our own cache dir once, then install from there without the index, so a
  # re-created venv needs no network.
  if ! compgen -G "$DL_DIR/apache_flink-$FLINK_VERSION-*.whl" >/dev/null \
      || ! compgen -G "$DL_DIR/apache[-_]flink[-_]libraries-$FLINK_VERSION*" >/dev/null; then
    log "downloading apache-flink==$FLINK_VERSION and apache-flink-libraries==$FLINK_VERSION (~230-310 MB) into $DL_DIR"
    "$VENV_DIR/bin/python" -m pip download -q --no-deps -d "$DL_DIR" \
      "apache-flink==$FLINK_VERSION" "apache-flink-libraries==$FLINK_VERSION"
  fi
  # apache-flink-libraries 1.x is an sdist: build its wheel once and keep it beside it, so a
  # re-created venv installs from local wheels only (2.x ships a wheel).
  if ! compgen -G "$DL_DIR/apache_flink_libraries-$FLINK_VERSION-*.whl" >/dev/null; then
    log "building the apache-flink-libraries wheel (once)"
    "$VENV_DIR/bin/python" -m pip wheel -q --no-deps -w "$DL_DIR" \
      "$DL_DIR/apache-flink-libraries-$FLINK_VERSION.tar.gz"
  fi
  # --no-deps: the cluster needs only the Java distribution inside the packages. PyFlink's own
  # Python dependencies (it pins apache-beam<2.49 for 1.19) are not needed for the cluster.
  "$VENV_DIR/bin/python" -m pip install -q --no-deps --no-index --find-links "$DL_DIR" \
    --only-binary :all: "apache-flink==$FLINK_VERSION" "apache-flink-libraries==$FLINK_VERSION"
  pyflink_home >/dev/null || die "pyflink distribution not found in $VENV_DIR after install"
  log "Flink $FLINK_VERSION installed: $(pyflink_home)"
}

install_jobserver() {
  if [[ -s "$JOBSERVER_JAR" ]]; then
    log "job server jar already at $JOBSERVER_JAR"
    return 0
  fi
  mkdir -p "$CACHE_DIR"
  local artifact="org.apache.beam:beam-runners-flink-$FLINK_MINOR-job-server:$JOBSERVER_BEAM_VERSION"
  # 1) Beam's published shaded jar, where the Maven repository has it.
  if "${MVN[@]}" -U dependency:copy -Dartifact="$artifact" -DoutputDirectory="$CACHE_DIR" \
      >/dev/null 2>&1 && [[ -s "$JOBSERVER_JAR" ]]; then
    log "fetched $artifact"
    return 0
  fi
  # 2) Build the same shaded jar from beam-runners-flink-<minor> and its dependencies.
  log "$artifact not served; building it from beam-runners-flink-$FLINK_MINOR:$JOBSERVER_BEAM_VERSION"
  local build="$CACHE_DIR/jobserver-build"
  mkdir -p "$build"
  cp "$SCRIPT_DIR/jobserver/pom.xml" "$build/pom.xml"
  local built="$build/target/beam-runners-flink-$FLINK_MINOR-job-server-$JOBSERVER_BEAM_VERSION.jar"
  if ! (cd "$build" && "${MVN[@]}" package -Dbeam.version="$JOBSERVER_BEAM_VERSION" \
      -Dflink.minor="$FLINK_MINOR" >"$build/build.log" 2>&1) || [[ ! -s "$built" ]]; then
    grep -E "ERROR" "$build/build.log" | head -n 20 >&2 || true
    die "job server build failed (log: $build/build.log)"
  fi
  cp "$built" "$JOBSERVER_JAR.tmp" && mv "$JOBSERVER_JAR.tmp" "$JOBSERVER_JAR"
  rm -rf "$build/target"
  log "job server jar at $JOBSERVER_JAR"
}

install_operator_crds() {
  if compgen -G "$CRD_DIR/flinkdeployments.*-v1.yml" >/dev/null; then
    return 0
  fi
  local artifact="org.apache.flink:flink-kubernetes-operator-api:$OPERATOR_VERSION"
  local tmp="$CACHE_DIR/operator-crds.tmp"
  rm -rf "$tmp" && mkdir -p "$tmp"
  "${MVN[@]}" dependency:copy -Dartifact="$artifact" -DoutputDirectory="$tmp" >/dev/null 2>&1 \
    || die "could not resolve $artifact with mvn"
  # The fabric8 CRD generator puts the CRDs into the API jar (apiextensions.k8s.io/v1 files).
  unzip -q -o -j -d "$tmp/crds" "$tmp"/*.jar 'META-INF/fabric8/*-v1.yml' \
    || die "no CRDs in $artifact"
  rm -rf "$CRD_DIR" && mv "$tmp/crds" "$CRD_DIR" && rm -rf "$tmp"
  log "Flink Kubernetes Operator $OPERATOR_VERSION CRDs in $CRD_DIR"
}

cmd_install() {
  command -v java >/dev/null || die "java not found (Java 11 or 17 needed)"
  command -v mvn >/dev/null || die "mvn not found (apt-get install maven)"
  install_flink
  install_jobserver
  install_operator_crds
}

cmd_crds() {
  command -v mvn >/dev/null || die "mvn not found (apt-get install maven)"
  install_operator_crds
  echo "$CRD_DIR"
}

# ---- cluster ---------------------------------------------------------------------------------
free_port() {
  "$PYTHON_BIN" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

port_in_use() { ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }

load_state() {
  [[ -f "$STATE_FILE" ]] || return 1
  # shellcheck disable=SC1090
  source "$STATE_FILE"
}

overview() {  # prints /overview JSON of the cluster at 127.0.0.1:$1
  curl -fsS --max-time 5 "http://127.0.0.1:$1/overview"
}

taskmanagers_of() {  # reads /overview JSON on stdin, prints the taskmanagers count
  sed -n 's/.*"taskmanagers":\([0-9]*\).*/\1/p'
}

flink_env() {  # exports what Flink's bin scripts read
  local home
  home="$(pyflink_home)" || die "Flink not installed in $VENV_DIR: run 'deploy/flink/flink.sh install'"
  export FLINK_HOME="$home"
  export FLINK_CONF_DIR="$RUN_DIR/conf"
  export FLINK_LOG_DIR="$RUN_DIR/log"
  export FLINK_PID_DIR="$RUN_DIR/pid"
  export FLINK_LIB_DIR="$FLINK_HOME/lib"
  export FLINK_IDENT_STRING="topk"
}

cmd_start() {
  local rest_port="${TOPK_FLINK_REST_PORT:-8081}" slots=4 rpc_port="" tm_mem=2048m jm_mem=1024m
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --rest-port) rest_port="$2"; shift 2 ;;
      --slots) slots="$2"; shift 2 ;;
      --rpc-port) rpc_port="$2"; shift 2 ;;
      --tm-memory) tm_mem="$2"; shift 2 ;;
      --jm-memory) jm_mem="$2"; shift 2 ;;
      *) die "start: unknown option $1" ;;
    esac
  done
  [[ "$slots" =~ ^[0-9]+$ && "$slots" -ge 1 ]] || die "--slots must be a positive integer"

  # shellcheck disable=SC2153  # REST_PORT comes from the state file
  if load_state && overview "$REST_PORT" >/dev/null 2>&1; then
    if [[ "$REST_PORT" == "$rest_port" ]]; then
      log "already running at 127.0.0.1:$REST_PORT"
      return 0
    fi
    die "a cluster from $RUN_DIR already runs at 127.0.0.1:$REST_PORT; stop it first"
  fi
  [[ -f "$JOBSERVER_JAR" ]] || log "warning: job server jar missing: run 'flink.sh install'"
  flink_env
  port_in_use "$rest_port" && die "port $rest_port is in use (choose --rest-port)"
  [[ -n "$rpc_port" ]] || rpc_port="$(free_port)"

  # A fresh runtime dir; the conf dir is a copy, the venv's site-packages stays untouched.
  rm -rf "$RUN_DIR"
  mkdir -p "$RUN_DIR"/{log,pid,tmp}
  cp -r "$FLINK_HOME/conf" "$FLINK_CONF_DIR"
  # Flink's own config tool rewrites config.yaml (standard YAML), keeping the Java 17 opts.
  # A stream's state lives in RocksDB (on disk, managed memory) and its checkpoints in files under
  # the run dir: Flink's defaults keep state on the TaskManager's JVM heap, which a catch-up's
  # state outgrows (OutOfMemoryError), and checkpoints in the JobManager's memory, which refuses
  # any checkpoint over 5 MB.
  bash "$FLINK_HOME/bin/config-parser-utils.sh" "$FLINK_CONF_DIR" "$FLINK_HOME/bin" "$FLINK_LIB_DIR" \
    -D jobmanager.rpc.address=127.0.0.1 \
    -D jobmanager.rpc.port="$rpc_port" \
    -D jobmanager.bind-host=127.0.0.1 \
    -D taskmanager.bind-host=127.0.0.1 \
    -D taskmanager.host=127.0.0.1 \
    -D rest.address=127.0.0.1 \
    -D rest.bind-address=127.0.0.1 \
    -D rest.port="$rest_port" \
    -D taskmanager.numberOfTaskSlots="$slots" \
    -D parallelism.default=1 \
    -D jobmanager.memory.process.size="$jm_mem" \
    -D taskmanager.memory.process.size="$tm_mem" \
    -D taskmanager.memory.jvm-metaspace.size=512m \
    -D classloader.check-leaked-classloader=false \
    -D state.backend.type=rocksdb \
    -D state.backend.incremental=true \
    -D state.checkpoint-storage=filesystem \
    -D state.checkpoints.dir="file://$RUN_DIR/checkpoints" \
    -D state.savepoints.dir="file://$RUN_DIR/savepoints" \
    -D io.tmp.dirs="$RUN_DIR/tmp" \
    -D blob.storage.directory="$RUN_DIR/tmp" \
    -D web.tmpdir="$RUN_DIR/tmp" \
    -D env.pid.dir="$FLINK_PID_DIR" \
    -D env.log.dir="$FLINK_LOG_DIR" >/dev/null
  printf '127.0.0.1\n' >"$FLINK_CONF_DIR/masters"
  printf '127.0.0.1\n' >"$FLINK_CONF_DIR/workers"
  cat >"$STATE_FILE" <<EOF
REST_PORT=$rest_port
RPC_PORT=$rpc_port
SLOTS=$slots
FLINK_HOME_PATH=$FLINK_HOME
EOF

  local t0=$SECONDS
  "$FLINK_HOME/bin/jobmanager.sh" start >&2
  "$FLINK_HOME/bin/taskmanager.sh" start >&2
  local json="" n=0 offered=0 deadline=$((SECONDS + ${TOPK_FLINK_START_TIMEOUT:-120}))
  while ((SECONDS < deadline)); do
    if json="$(overview "$rest_port" 2>/dev/null)"; then
      n="$(taskmanagers_of <<<"$json")"
      # A TaskManager is listed before it offers its slots (CI once saw
      # 1 TaskManager, 0 slots): wait for both.
      offered="$(sed -n 's/.*"slots-total":\([0-9]*\).*/\1/p' <<<"$json")"
      [[ "${n:-0}" -ge 1 && "${offered:-0}" -ge "$slots" ]] && break
    fi
    sleep 1
  done
  if [[ "${n:-0}" -lt 1 || "${offered:-0}" -lt "$slots" ]]; then
    log "cluster did not come up within ${TOPK_FLINK_START_TIMEOUT:-120}s; logs:"
    cmd_logs >&2 || true
    cmd_stop || true
    exit 1
  fi
  log "Flink $FLINK_VERSION up in $((SECONDS - t0))s: http://127.0.0.1:$rest_port ($slots slots)"
  echo "$json"
}

cmd_health() {
  local min_slots=1
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --min-slots) min_slots="$2"; shift 2 ;;
      *) die "health: unknown option $1" ;;
    esac
  done
  load_state || die "no cluster state in $RUN_DIR (not started)"
  local json n slots
  json="$(overview "$REST_PORT")" || die "REST API at 127.0.0.1:$REST_PORT does not answer"
  echo "$json"
  n="$(taskmanagers_of <<<"$json")"
  [[ "${n:-0}" -ge 1 ]] || die "no TaskManager registered"
  slots="$(sed -n 's/.*"slots-total":\([0-9]*\).*/\1/p' <<<"$json")"
  [[ "${slots:-0}" -ge "$min_slots" ]] || die "only ${slots:-0} task slots, fewer than $min_slots"
}

cmd_stop() {
  if ! load_state; then
    log "not running (no state in $RUN_DIR)"
    return 0
  fi
  jobserver_stop
  flink_env
  "$FLINK_HOME/bin/taskmanager.sh" stop-all >&2 || true
  "$FLINK_HOME/bin/jobmanager.sh" stop-all >&2 || true
  local f pid
  # flink-daemon.sh waits 10 s and then kills -9; make sure every pid we started is gone.
  for f in "$FLINK_PID_DIR"/*.pid; do
    [[ -f "$f" ]] || continue
    while read -r pid; do
      if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
        kill -9 "$pid" 2>/dev/null || true
      fi
    done <"$f"
    rm -f "$f"
  done
  rm -f "$STATE_FILE"
  log "stopped"
}

TASKMANAGER_PID_FILE_GLOB="flink-*-taskexecutor.pid"

cmd_kill_taskmanager() {
  load_state || die "no cluster state in $RUN_DIR (not started)"
  flink_env
  local f pid killed=""
  for f in "$FLINK_PID_DIR"/$TASKMANAGER_PID_FILE_GLOB; do
    [[ -f "$f" ]] || continue
    while read -r pid; do
      if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
        kill -9 "$pid" 2>/dev/null && killed+="$pid "
      fi
    done <"$f"
    # flink-daemon.sh counts the pids in this file as running instances.
    : >"$f"
  done
  [[ -n "$killed" ]] || die "no running TaskManager found in $FLINK_PID_DIR"
  log "killed TaskManager pid(s) $killed"
  echo "$killed"
}

taskmanager_ids() {  # prints the REST ids of the registered TaskManagers, one per line
  curl -fsS --max-time 5 "http://127.0.0.1:$REST_PORT/taskmanagers" 2>/dev/null \
    | grep -o '"id":"[^"]*"' | cut -d'"' -f4
}

cmd_start_taskmanager() {
  local timeout=60
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --timeout) timeout="$2"; shift 2 ;;
      *) die "start-taskmanager: unknown option $1" ;;
    esac
  done
  load_state || die "no cluster state in $RUN_DIR (not started)"
  flink_env
  local before id deadline=$((SECONDS + timeout))
  before="$(taskmanager_ids || true)"
  "$FLINK_HOME/bin/taskmanager.sh" start >&2
  while ((SECONDS < deadline)); do
    for id in $(taskmanager_ids || true); do
      if ! grep -qxF "$id" <<<"$before"; then
        log "TaskManager $id registered"
        echo "$id"
        return 0
      fi
    done
    sleep 1
  done
  die "no new TaskManager registered within ${timeout}s (see 'flink.sh logs')"
}

JOBSERVER_PID_FILE="$RUN_DIR/pid/jobserver.pid"

jobserver_pid() {  # prints the pid of a running job server started by us
  local pid
  [[ -f "$JOBSERVER_PID_FILE" ]] || return 1
  pid="$(cat "$JOBSERVER_PID_FILE")"
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

jobserver_start() {
  local port=8099
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --port) port="$2"; shift 2 ;;
      *) die "jobserver start: unknown option $1" ;;
    esac
  done
  load_state || die "the cluster is not started ('flink.sh start' first)"
  if jobserver_pid >/dev/null; then
    log "job server already running (pid $(jobserver_pid)) at 127.0.0.1:$(cat "$RUN_DIR/jobserver.port")"
    return 0
  fi
  cmd_jobserver_jar >/dev/null
  port_in_use "$port" && die "port $port is in use (choose --port)"
  mkdir -p "$RUN_DIR/artifacts" "$RUN_DIR/pid" "$RUN_DIR/log"
  # --expansion-port=-1: no Java expansion service; --artifact-port=0: any free port.
  nohup java -jar "$JOBSERVER_JAR" --flink-master="127.0.0.1:$REST_PORT" \
    --job-host=127.0.0.1 --job-port="$port" --artifact-port=0 --expansion-port=-1 \
    --artifacts-dir="$RUN_DIR/artifacts" >"$RUN_DIR/log/jobserver.log" 2>&1 </dev/null &
  echo $! >"$JOBSERVER_PID_FILE"
  echo "$port" >"$RUN_DIR/jobserver.port"
  local deadline=$((SECONDS + 60))
  until port_in_use "$port"; do
    jobserver_pid >/dev/null || { tail -n 30 "$RUN_DIR/log/jobserver.log" >&2; die "job server exited"; }
    ((SECONDS < deadline)) || die "job server did not listen on $port within 60s"
    sleep 0.5
  done
  log "job server up at 127.0.0.1:$port (pid $(jobserver_pid)); use --runner=PortableRunner --job_endpoint=127.0.0.1:$port"
}

jobserver_stop() {
  local pid
  if pid="$(jobserver_pid)"; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
    log "job server stopped"
  fi
  rm -f "$JOBSERVER_PID_FILE" "$RUN_DIR/jobserver.port"
}

cmd_jobserver() {
  local sub="${1:-}"
  [[ $# -gt 0 ]] && shift
  case "$sub" in
    start) jobserver_start "$@" ;;
    stop) jobserver_stop ;;
    *) die "usage: flink.sh jobserver start [--port P] | jobserver stop" ;;
  esac
}

cmd_jobserver_jar() {
  [[ -s "$JOBSERVER_JAR" ]] || die "job server jar not installed ($JOBSERVER_JAR): run 'flink.sh install'"
  echo "$JOBSERVER_JAR"
}

cmd_env() {
  cat <<EOF
export FLINK_REST=127.0.0.1:$(rest_port)
export FLINK_VERSION=$FLINK_MINOR
export FLINK_JOB_SERVER_JAR=$JOBSERVER_JAR
export FLINK_HOME=$(pyflink_home || echo "")
export FLINK_CONF_DIR=$RUN_DIR/conf
EOF
  if jobserver_pid >/dev/null; then
    echo "export FLINK_JOB_ENDPOINT=127.0.0.1:$(cat "$RUN_DIR/jobserver.port")"
  fi
}

rest_port() {  # the running cluster's REST port, else TOPK_FLINK_REST_PORT / 8081
  if load_state; then echo "$REST_PORT"; else echo "${TOPK_FLINK_REST_PORT:-8081}"; fi
}

cmd_options() {
  local parallelism=2 env_type=LOOPBACK env_config=""
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --parallelism) parallelism="$2"; shift 2 ;;
      --environment_type) env_type="$2"; shift 2 ;;
      --environment_config) env_config="$2"; shift 2 ;;
      *) die "options: unknown option $1" ;;
    esac
  done
  [[ "$parallelism" =~ ^[0-9]+$ && "$parallelism" -ge 1 ]] || die "--parallelism must be a positive integer"
  local jar port out
  jar="$(cmd_jobserver_jar)"
  port="$(rest_port)"
  out="--runner=FlinkRunner --flink_master=127.0.0.1:$port --flink_version=$FLINK_MINOR"
  out+=" --flink_job_server_jar=$jar --environment_type=$env_type --parallelism=$parallelism"
  [[ -z "$env_config" ]] || out+=" --environment_config=$env_config"
  echo "$out"
}

cmd_logs() {
  local f
  for f in "$RUN_DIR"/log/*.log "$RUN_DIR"/log/*.out; do
    [[ -f "$f" ]] || continue
    echo "==> $f <=="
    tail -n "${TOPK_FLINK_LOG_LINES:-40}" "$f"
  done
}

# ---- SQL client jars ---------------------------------------------------------------------------
# The PyPI distribution's bin/sql-client.sh needs the SQL gateway jar (1.19.1: newer 1.19.x do not
# resolve from the Maven repository here) plus flink-sql-client / flink-python from its opt/; the
# Kafka connector is passed to it with -j.
SQL_GATEWAY_VERSION="${TOPK_FLINK_SQL_GATEWAY_VERSION:-1.19.1}"
SQL_KAFKA_CONNECTOR="${TOPK_FLINK_SQL_KAFKA_CONNECTOR:-3.2.0-1.19}"
SQL_JAR_DIR="$CACHE_DIR/sql-jars"

cmd_install_sql() {
  command -v mvn >/dev/null || die "mvn not found (apt-get install maven)"
  local home a f
  home="$(pyflink_home)" || die "Flink not installed in $VENV_DIR: run 'deploy/flink/flink.sh install'"
  mkdir -p "$SQL_JAR_DIR"
  for a in "org.apache.flink:flink-sql-gateway:$SQL_GATEWAY_VERSION" \
           "org.apache.flink:flink-sql-connector-kafka:$SQL_KAFKA_CONNECTOR"; do
    f="$SQL_JAR_DIR/$(cut -d: -f2 <<<"$a")-$(cut -d: -f3 <<<"$a").jar"
    if [[ ! -s "$f" ]]; then
      "${MVN[@]}" dependency:copy -Dartifact="$a" -DoutputDirectory="$SQL_JAR_DIR" >&2 \
        || die "could not resolve $a with mvn"
      [[ -s "$f" ]] || die "$a resolved but $f is missing"
      log "fetched $a"
    fi
    echo "$f"
  done
  for a in flink-sql-client flink-python; do
    f="$(compgen -G "$home/opt/$a-*.jar" | head -n 1)" || die "no $a jar in $home/opt"
    echo "$f"
  done
}

main() {
  local cmd="${1:-}"
  [[ $# -gt 0 ]] && shift
  case "$cmd" in
    install) cmd_install "$@" ;;
    start) cmd_start "$@" ;;
    health) cmd_health "$@" ;;
    stop) cmd_stop "$@" ;;
    kill-taskmanager) cmd_kill_taskmanager "$@" ;;
    start-taskmanager) cmd_start_taskmanager "$@" ;;
    jobserver-jar) cmd_jobserver_jar "$@" ;;
    jobserver) cmd_jobserver "$@" ;;
    env) cmd_env "$@" ;;
    options) cmd_options "$@" ;;
    crds) cmd_crds "$@" ;;
    install-sql) cmd_install_sql "$@" ;;
    logs) cmd_logs "$@" ;;
    -h|--help|help) usage ;;
    "") usage >&2; exit 2 ;;
    *) echo "flink.sh: unknown command '$cmd'" >&2; usage >&2; exit 2 ;;
  esac
}

main "$@"
