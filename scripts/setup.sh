#!/usr/bin/env bash
# Bootstrap a fresh Debian 12 machine for cutover: system packages, .venv, the
# project in editable mode, cloudbox (patched for 3.11) and the npm servers.
#
# Idempotent and cheap when everything is there already: apt is only touched for
# missing packages, `pip install -e` only re-runs when pyproject.toml is newer than
# .cache/setup.stamp (touched at the end of every complete run). Quiet on success;
# on failure it names the step and prints the tail of .cache/setup.log.
# Run as root (apt-get), or with sudo available.
set -Eeuo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
mkdir -p .cache
LOG=.cache/setup.log
STAMP=.cache/setup.stamp
: >"$LOG"
STEP="start"

fail() {
  local code=$1
  {
    echo "scripts/setup.sh: FAILED (exit $code) at step: $STEP"
    echo "--- last lines of $LOG ---"
    tail -n 40 "$LOG"
  } >&2
  exit "$code"
}
trap 'fail $?' ERR

# run STEP-NAME CMD...: run CMD with its output in the log only.
run() {
  STEP=$1
  shift
  echo "+ $*" >>"$LOG"
  "$@" >>"$LOG" 2>&1
}

die() {
  echo "scripts/setup.sh: $*" >&2
  exit 1
}

# --- Python interpreter for .venv (>= 3.11) ---------------------------------------
PY=""
if [[ ! -x .venv/bin/python ]]; then
  for candidate in "${PYTHON:-}" python3.11 python3; do
    [[ -n $candidate ]] && command -v "$candidate" >/dev/null || continue
    if "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      PY=$(command -v "$candidate")
      break
    fi
  done
  [[ -n $PY ]] || die "no Python >= 3.11 found (set PYTHON=/path/to/python3.11)"
fi

# --- System packages (only the missing ones) --------------------------------------
packages=(unixodbc unixodbc-dev tdsodbc odbc-postgresql libsqliteodbc postgresql chromium)
# node/npm often come from elsewhere (nodesource, a tarball): keep whatever works.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  packages+=(nodejs npm)
fi
# Debian's own python3 needs python3-venv to create a venv (ensurepip).
if [[ -n $PY ]] && ! "$PY" -c 'import ensurepip' 2>/dev/null; then
  packages+=(python3-venv)
fi
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' ||
    missing+=("$pkg")
done
if ((${#missing[@]})); then
  SUDO=()
  if [[ $EUID -ne 0 ]]; then
    command -v sudo >/dev/null || die "not root and no sudo: cannot apt-get install ${missing[*]}"
    SUDO=(sudo)
  fi
  run "apt-get update" "${SUDO[@]}" apt-get update -q
  run "apt-get install ${missing[*]}" "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

STEP="check node version"
node_major=$(node -p 'process.versions.node.split(".")[0]')
if ((node_major < 20)); then
  echo "scripts/setup.sh: WARNING: Node $(node --version) found; unleash-server 7.5.1 needs" \
    "Node >= 20 (e.g. NodeSource's nodejs 20)" >&2
fi

# --- .venv and the project ---------------------------------------------------------
if [[ ! -x .venv/bin/python ]]; then
  run "create .venv with $PY" "$PY" -m venv .venv
fi
if [[ ! $STAMP -nt pyproject.toml ]]; then
  run "pip install -e .[dev]" .venv/bin/python -m pip install -q -e '.[dev]'
fi

# cloudbox declares Python >= 3.14 but works on 3.11 with one patched line.
if ! .venv/bin/python -c 'import importlib.metadata as m, sys
sys.exit(m.version("cloudbox") != "0.2.3")' 2>/dev/null; then
  run "pip install cloudbox==0.2.3" .venv/bin/python -m pip install -q --no-deps \
    --ignore-requires-python cloudbox==0.2.3
fi
run "patch cloudbox" .venv/bin/python -c \
  'from cutover.services._install import patch_cloudbox; patch_cloudbox()'

# reqlite and unleash-server into .cache/node (skipped when the versions match).
run "npm install reqlite unleash-server" .venv/bin/python -c \
  'from cutover.services._install import ensure_node_packages; ensure_node_packages()'

# Only a complete run marks the machine as set up (the Makefile's target, too).
touch "$STAMP"
