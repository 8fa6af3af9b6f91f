#!/usr/bin/env bash
# Make this checkout ready to run: system packages, .venv with ciliumlite (editable, [dev]),
# and the BPF objects. Quiet when there is nothing to do; safe to run any number of times.
#
#   scripts/bootstrap.sh            (run by `make bootstrap`, `make test`, `make demo`, ...)
#
# Environment: PYTHON (default python3) creates the venv; VENV (default .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
STAMP="$VENV/.ciliumlite-install.stamp"

say() { echo "bootstrap: $*"; }
die() { echo "bootstrap: error: $*" >&2; exit 1; }

# 1. System packages and mounts (root installs; anyone can check).
if [ "$(id -u)" -eq 0 ]; then
  bash scripts/install-system-deps.sh
elif ! bash scripts/install-system-deps.sh --check; then
  die "system dependencies are missing; run as root: sudo make bootstrap"
fi

# 2. The virtualenv.
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV ($("$PYTHON" --version 2>&1))"
  "$PYTHON" -m venv "$VENV" || die "'$PYTHON -m venv $VENV' failed"
  rm -f "$STAMP"
fi

# 3. ciliumlite installed editable from this checkout, with the dev extras (scapy among them). Reinstall when the
#    packaging files change (stamp = their hash) or when `ciliumlite` does not resolve to this tree
#    (found without importing it, so a broken import in the package does not trigger a reinstall).
want=$(cat pyproject.toml setup.py | sha256sum | cut -d' ' -f1)
have=$(cat "$STAMP" 2>/dev/null || true)
resolves_here() {
  "$VENV/bin/python" - "$ROOT" <<'EOF' 2>/dev/null
import importlib.util, os, sys
spec = importlib.util.find_spec("ciliumlite")
origin = getattr(spec, "origin", None) or ""
sys.exit(0 if origin and os.path.realpath(origin).startswith(os.path.realpath(sys.argv[1]) + os.sep) else 1)
EOF
}
# scapy (the fuzzer's decoder, [dev]) is checked by import too: a venv made before it was a
# dependency gets it even when the stamp matches.
if [ "$want" != "$have" ] || ! resolves_here || ! "$VENV/bin/python" -c "import scapy" 2>/dev/null; then
  say "installing ciliumlite into $VENV (pip install -e '.[dev]')"
  log=$(mktemp /tmp/ciliumlite-pip.XXXXXX)
  if ! "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[dev]' >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    die "pip install failed (full log: $log)"
  fi
  rm -f "$log"
  echo "$want" >"$STAMP"
fi

# 4. The BPF objects (datapath and test programs). Prints only what it compiles.
log=$(mktemp /tmp/ciliumlite-cmake.XXXXXX)
if ! { [ -f build/CMakeCache.txt ] || cmake -S . -B build; } >"$log" 2>&1 || ! cmake --build build >>"$log" 2>&1; then
  cat "$log" >&2
  rm -f "$log"
  die "building the BPF objects failed (cmake -S . -B build && cmake --build build)"
fi
grep -E '\] BPF |warning:' "$log" | sed 's/^\[ *[0-9]*%\] /bootstrap: built /' || true
rm -f "$log"
