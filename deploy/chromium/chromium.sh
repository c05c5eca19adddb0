#!/usr/bin/env bash
# Headless Chromium for the leaderboard page's browser tests (tests/serve/).
# Debian's package, installed with apt when missing; the tests drive it with
# Playwright (PyPI) pointed at /usr/bin/chromium, so no browser is downloaded
# at run time.
set -euo pipefail

CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"

usage() {
  cat <<USAGE
Usage: $(basename "$0") install|path

  install   apt-get install chromium when $CHROMIUM is missing (needs root
            or sudo); a no-op when it is there.
  path      print the browser's path (exit 1 when it is missing).
USAGE
}

case "${1:-}" in
  install)
    if [ -x "$CHROMIUM" ]; then
      exit 0
    fi
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
    echo "installing Debian's chromium (browser tests)" >&2
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium \
      >&2 || { $SUDO apt-get update -q >&2 &&
               $SUDO env DEBIAN_FRONTEND=noninteractive \
                 apt-get install -y -q chromium >&2; }
    ;;
  path)
    [ -x "$CHROMIUM" ] && echo "$CHROMIUM"
    ;;
  -h|--help|"") usage ;;
  *) usage >&2; exit 2 ;;
esac
