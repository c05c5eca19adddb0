#!/usr/bin/env bash
# Apache Beam's Prism runner, built from the Go module proxy (the SDK's own download of a
# prebuilt binary from a release page fails without internet). See deploy/prism/README.md.
set -euo pipefail

BEAM_VERSION="${BEAM_VERSION:-2.77.0}"
CACHE_ROOT="${TOPK_PRISM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/topk/prism}"
BIN_DIR="$CACHE_ROOT/v$BEAM_VERSION/bin"
BIN="$BIN_DIR/prism"
PKG="github.com/apache/beam/sdks/v2/go/cmd/prism"

usage() {
  cat <<USAGE
Usage: deploy/prism/prism.sh COMMAND

Builds Apache Beam's Prism runner $BEAM_VERSION with 'go install' from the Go module proxy.

Commands:
  install   Build the binary into $BIN_DIR (a no-op when it is already there).
            The first build downloads ~300 MB of Go modules and compiles for a few minutes.
  path      Print the binary's path (exit 3 if not installed). Use it as
            --runner=PrismRunner --prism_location="\$(deploy/prism/prism.sh path)".
  --help    This text.

Environment: BEAM_VERSION ($BEAM_VERSION; must match the installed apache-beam),
TOPK_PRISM_CACHE (default ~/.cache/topk/prism), plus Go's own (GOPROXY, GOMODCACHE, GOCACHE).
USAGE
}

log() { echo "prism.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

ready() { [[ -x "$BIN" && -f "$BIN_DIR/.complete" ]]; }

cmd_install() {
  if ready; then
    log "Prism $BEAM_VERSION already at $BIN"
    return 0
  fi
  command -v go >/dev/null || die "go not found (apt-get install golang, or a Go toolchain >= 1.24)"
  mkdir -p "$BIN_DIR"
  # Serialise concurrent installs (parallel test workers, two shells).
  exec 8>"$BIN_DIR/.install.lock"
  flock 8
  if ready; then exec 8>&-; return 0; fi
  local tmp="$BIN_DIR/tmp.$$" t0=$SECONDS
  rm -rf "$tmp"; mkdir -p "$tmp"
  log "building $PKG@v$BEAM_VERSION (go install; first time takes minutes) ..."
  # -mod=mod: resolve the module's own go.mod from the proxy; GOBIN puts the binary in our
  # cache instead of ~/go/bin; GOFLAGS from the caller are kept otherwise.
  if ! GOBIN="$tmp" GOFLAGS="${GOFLAGS:+$GOFLAGS }-mod=mod" go install "$PKG@v$BEAM_VERSION" >&2; then
    rm -rf "$tmp"
    die "go install $PKG@v$BEAM_VERSION failed"
  fi
  mv -f "$tmp/prism" "$BIN"
  rm -rf "$tmp"
  touch "$BIN_DIR/.complete"
  exec 8>&-
  log "installed $BIN in $((SECONDS - t0))s"
}

cmd_path() {
  ready || { log "Prism $BEAM_VERSION is not installed (run: deploy/prism/prism.sh install)"; exit 3; }
  echo "$BIN"
}

case "${1:-}" in
  install) shift; [[ $# -eq 0 ]] || die "install takes no arguments"; cmd_install ;;
  path) shift; [[ $# -eq 0 ]] || die "path takes no arguments"; cmd_path ;;
  -h|--help|help) usage ;;
  *) usage >&2; exit 2 ;;
esac
