# Shared by scripts/serve and scripts/test: make ./.venv with the project installed.
# Sourced, not run. Needs only Python 3.11+ on PATH.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

find_python() {
  for candidate in "${PYTHON:-}" python3 python3.13 python3.12 python3.11 python; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  echo "switchboard needs Python 3.11 or newer on PATH (or set PYTHON=...)" >&2
  return 1
}

ensure_venv() {  # $1: pip extras, e.g. "" or "[test]"
  local extras="$1" py stamp want
  py="$(find_python)"
  if [ ! -x .venv/bin/python ]; then
    "$py" -m venv .venv
  fi
  # Reinstall when the project's metadata or its compiled core changes (an
  # editable install builds src/switchboard/relay/_core.pyx in place).
  want="$(cat pyproject.toml src/switchboard/relay/_core.pyx | sha256sum | cut -c1-16)$extras"
  stamp=".venv/.switchboard-installed"
  if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".$extras"
    echo "$want" > "$stamp"
  fi
}
