#!/usr/bin/env bash
# Local BigQuery emulator (PyPI bqemulator, DuckDB-backed) for the top-K project.
# Runs from its own venv (outside the repo) so its DuckDB pin never constrains the
# project's; clients (google-cloud-bigquery, Beam's WriteToBigQuery) talk to it over
# real HTTP on 127.0.0.1. See deploy/bigquery/README.md.
set -euo pipefail

BQEMU_HOME="${BQEMU_HOME:-$HOME/.cache/topk/bqemulator}"
BQEMU_VENV="${BQEMU_VENV:-$BQEMU_HOME/venv}"
BQEMU_PYTHON="${BQEMU_PYTHON:-python3}"
PIP_CACHE="${PIP_CACHE:-$HOME/.cache/pip}"
BQEMU_STATE_DIR="${BQEMU_STATE_DIR:-$BQEMU_HOME/run}"
BQEMU_START_TIMEOUT="${BQEMU_START_TIMEOUT:-60}"

# Pins: DuckDB's spatial (required) and avro extensions come from PyPI
# so the emulator starts offline (DuckDB would otherwise download them at start-up).
PKGS=(
  "bqemulator==1.4.0"
  "duckdb==1.5.5"
  "duckdb-extension-spatial==1.5.5"
  "duckdb-extensions==1.5.5"
  # Optional for bqemulator (Avro loads/extracts, e.g. Beam FILE_LOADS with
  # temp_file_format=AVRO); without it every start tries a download that fails offline.
  "duckdb-extension-avro==1.5.5"
  # Not a declared dependency of bqemulator (only of its [udf-js]/[all] extras), yet
  # start-up registers numpy-backed UDFs and dies without it.
  "numpy==2.4.6"
)
STAMP="$BQEMU_VENV/.topk-installed"
STAMP_CONTENT="${PKGS[*]}"

REST_PORT=9050
GRPC_PORT=9060
PROJECT=topk-local
DATA_DIR=""
PERSISTENT=0

usage() {
  cat <<EOF
Usage: $(basename "$0") COMMAND [OPTIONS]

Commands:
  install   Create the emulator venv ($BQEMU_VENV) and install
            ${PKGS[*]};
            import DuckDB's spatial + avro extensions from PyPI (offline). No-op when already done.
  start     Start the emulator in the background on 127.0.0.1 (installs first if
            needed), wait until its REST endpoint answers, and print
            BIGQUERY_EMULATOR_HOST=http://127.0.0.1:PORT, GOOGLE_CLOUD_PROJECT=ID
            and GOOGLE_APPLICATION_CREDENTIALS=D/adc.json (offline placeholder
            credentials) on stdout (progress goes to stderr), so
            \`export \$($(basename "$0") start ...)\` sets all three.
            Options:
              --rest-port P   REST port      (default $REST_PORT)
              --grpc-port Q   gRPC port      (default $GRPC_PORT)
              --project ID    project id     (default $PROJECT)
              --dir D         directory for the pid file and log (and the DuckDB
                              file with --persistent)
                              (default $BQEMU_STATE_DIR/<rest-port>)
              --persistent    keep tables in D/data/bqemulator.duckdb across
                              restarts (default: in-memory, empty at each start)
  stop      Stop the emulator started with the same --rest-port/--dir.
  status    Tell whether it runs and answers (exit 0) or not (exit 1).
  env       Print the client environment for a running emulator (same options).
  --help    This text.

Environment: BQEMU_HOME, BQEMU_VENV, BQEMU_PYTHON, PIP_CACHE, BQEMU_STATE_DIR,
BQEMU_START_TIMEOUT (seconds, default $BQEMU_START_TIMEOUT).
EOF
}

die() { echo "emulator.sh: $*" >&2; exit 1; }

parse_opts() {
  while [ $# -gt 0 ]; do
    case "$1" in
      --rest-port) REST_PORT="${2:?--rest-port needs a value}"; shift 2 ;;
      --grpc-port) GRPC_PORT="${2:?--grpc-port needs a value}"; shift 2 ;;
      --project)   PROJECT="${2:?--project needs a value}"; shift 2 ;;
      --dir)       DATA_DIR="${2:?--dir needs a value}"; shift 2 ;;
      --persistent) PERSISTENT=1; shift ;;
      -h|--help)   usage; exit 0 ;;
      *) die "unknown option: $1 (see --help)" ;;
    esac
  done
  [ -n "$DATA_DIR" ] || DATA_DIR="$BQEMU_STATE_DIR/$REST_PORT"
  PID_FILE="$DATA_DIR/bqemulator.pid"
  LOG_FILE="$DATA_DIR/bqemulator.log"
  ADC_FILE="$DATA_DIR/adc.json"
  ENDPOINT="http://127.0.0.1:$REST_PORT"
}

DUCKDB_EXTENSIONS=(spatial avro)
DUCKDB_VERSION=1.5.5

packages_installed() {
  [ -x "$BQEMU_VENV/bin/bqemulator" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$STAMP_CONTENT" ]
}

# DuckDB installs extensions under ~/.duckdb/extensions/vX.Y.Z/<platform>/ (outside the
# venv), so check them separately: a wiped ~/.duckdb must not pass for "installed".
extensions_installed() {
  local ext f
  for ext in "${DUCKDB_EXTENSIONS[@]}"; do
    f=$(compgen -G "$HOME/.duckdb/extensions/v$DUCKDB_VERSION/*/$ext.duckdb_extension" | head -n1) || return 1
    [ -n "$f" ] || return 1
  done
}

cmd_install() {
  if packages_installed && extensions_installed; then
    echo "bqemulator already installed in $BQEMU_VENV"
    return 0
  fi
  local py="$BQEMU_VENV/bin/python"
  if ! packages_installed; then
    echo "installing bqemulator into $BQEMU_VENV ..."
    mkdir -p "$(dirname "$BQEMU_VENV")" "$PIP_CACHE"
    [ -x "$py" ] || "$BQEMU_PYTHON" -m venv "$BQEMU_VENV"
    "$py" -m pip install --cache-dir "$PIP_CACHE" -q --disable-pip-version-check "${PKGS[@]}"
  fi
  # Put the extensions where DuckDB looks for them, then prove DuckDB loads them with
  # autoinstall switched off (i.e. without the network).
  "$py" - "${DUCKDB_EXTENSIONS[@]}" <<'PY'
import sys, duckdb, duckdb_extensions
exts = sys.argv[1:]
for ext in exts:
    duckdb_extensions.import_extension(ext)
con = duckdb.connect()
con.execute("SET autoinstall_known_extensions=false")
for ext in exts:
    con.execute(f"LOAD {ext}")
print("duckdb", duckdb.__version__, "extensions load offline:", ", ".join(exts))
PY
  echo "$STAMP_CONTENT" > "$STAMP"
  echo "bqemulator $("$py" -c 'import importlib.metadata as m; print(m.version("bqemulator"))') installed"
}

# The REST endpoint answers a dataset list for the project (404/200 both mean "up").
answers() {
  "$BQEMU_VENV/bin/python" - "$ENDPOINT" "$PROJECT" <<'PY' >/dev/null 2>&1
import sys, urllib.request, urllib.error
url = f"{sys.argv[1]}/bigquery/v2/projects/{sys.argv[2]}/datasets"
try:
    urllib.request.urlopen(url, timeout=2).read()
except urllib.error.HTTPError:
    pass
PY
}

running_pid() {
  [ -f "$PID_FILE" ] || return 1
  local pid; pid="$(cat "$PID_FILE")"
  # Only a live bqemulator counts (a stale pid may have been reused by something else).
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null \
    && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'bqemulator start' \
    && echo "$pid"
}

# An offline-only authorized_user ADC file (placeholders, never a secret): its
# access token never expires, so google-auth never refreshes (no network).
# Beam's BigQuery IO and `topk ... --sink bigquery` use Application Default
# Credentials; the emulator accepts any token.
write_adc() {
  mkdir -p "$DATA_DIR"
  cat > "$ADC_FILE" <<'JSON'
{"type": "authorized_user", "client_id": "bqemulator-local",
 "client_secret": "not-a-secret", "refresh_token": "not-a-token",
 "token": "bqemulator-local-token", "expiry": "2999-12-31T23:59:59Z"}
JSON
  chmod 600 "$ADC_FILE"
}

print_env() {
  [ -f "$ADC_FILE" ] || write_adc
  echo "BIGQUERY_EMULATOR_HOST=$ENDPOINT"
  echo "GOOGLE_CLOUD_PROJECT=$PROJECT"
  echo "GOOGLE_APPLICATION_CREDENTIALS=$ADC_FILE"
}

cmd_start() {
  parse_opts "$@"
  cmd_install >&2
  mkdir -p "$DATA_DIR"
  if pid="$(running_pid)"; then
    answers || die "pid $pid from $PID_FILE runs but $ENDPOINT does not answer (see $LOG_FILE)"
    echo "bqemulator already running (pid $pid)" >&2
    print_env
    return 0
  fi
  if answers; then
    die "something else already answers on $ENDPOINT"
  fi
  local start_ns; start_ns=$(date +%s%N)
  local storage=(--ephemeral)
  if [ "$PERSISTENT" = 1 ]; then
    mkdir -p "$DATA_DIR/data"
    storage=(--persistent --data-dir "$DATA_DIR/data")
  fi
  # setsid: own process group, so stop ends the server and nothing else.
  # cwd = D: bqemulator also reads a .bqemu.toml from its working directory.
  (cd "$DATA_DIR" && exec setsid "$BQEMU_VENV/bin/bqemulator" start \
      --rest-host 127.0.0.1 --rest-port "$REST_PORT" \
      --grpc-host 127.0.0.1 --grpc-port "$GRPC_PORT" \
      --project "$PROJECT" "${storage[@]}" --log-format json \
      </dev/null >"$LOG_FILE" 2>&1) &
  local pid=$!
  echo "$pid" > "$PID_FILE"
  local deadline=$(( $(date +%s) + BQEMU_START_TIMEOUT ))
  until answers; do
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$PID_FILE"
      tail -n 30 "$LOG_FILE" >&2 || true
      die "bqemulator exited during start-up (log: $LOG_FILE)"
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      tail -n 30 "$LOG_FILE" >&2 || true
      kill -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true
      rm -f "$PID_FILE"
      die "bqemulator did not answer on $ENDPOINT within ${BQEMU_START_TIMEOUT}s"
    fi
    sleep 0.3
  done
  echo "bqemulator started (pid $pid, $(( ($(date +%s%N) - start_ns) / 1000000 )) ms, log $LOG_FILE)" >&2
  print_env
}

cmd_stop() {
  parse_opts "$@"
  local pid
  if ! pid="$(running_pid)"; then
    rm -f "$PID_FILE"
    echo "bqemulator not running ($PID_FILE)"
    return 0
  fi
  kill -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  if kill -0 "$pid" 2>/dev/null; then
    kill -9 -- "-$pid" 2>/dev/null || kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$PID_FILE"
  echo "bqemulator stopped (pid $pid)"
}

cmd_status() {
  parse_opts "$@"
  local pid
  if pid="$(running_pid)" && answers; then
    echo "bqemulator running (pid $pid) at $ENDPOINT"
    return 0
  fi
  if [ -n "${pid:-}" ]; then
    echo "bqemulator pid $pid runs but $ENDPOINT does not answer"
  else
    echo "bqemulator not running"
  fi
  return 1
}

cmd_env() {
  parse_opts "$@"
  print_env
}

case "${1:-}" in
  install) shift; cmd_install "$@" ;;
  start)   shift; cmd_start "$@" ;;
  stop)    shift; cmd_stop "$@" ;;
  status)  shift; cmd_status "$@" ;;
  env)     shift; cmd_env "$@" ;;
  -h|--help|help) usage ;;
  "") usage >&2; exit 2 ;;
  *) die "unknown command: $1 (see --help)" ;;
esac
