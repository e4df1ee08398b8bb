#!/usr/bin/env bash
# Print the path of a Python >= 3.12 (the DOLFINx wheel is cp312-abi3), or exit 1.
# Order: an explicit $PYTHON, python3.12/python3.13 on PATH, pyenv's versions, then the
# interpreter that scripts/build_python.sh may have built into the cache folder.
set -u
ok() { [ -x "$1" ] && "$1" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1; }
cache="${FEM_CROSSDIFF_CACHE:-$HOME/.cache/fem-crossdiff}"
cands=()
[ -n "${PYTHON:-}" ] && cands+=("$PYTHON")
for v in 3.12 3.13; do p=$(command -v "python$v" 2>/dev/null) && cands+=("$p"); done
root=$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")
for d in "$root"/versions/3.12* "$root"/versions/3.13*; do [ -d "$d" ] && cands+=("$d/bin/python3"); done
cands+=("$cache/python/bin/python3")
for c in "${cands[@]}"; do
  if ok "$c"; then echo "$c"; exit 0; fi
done
exit 1
