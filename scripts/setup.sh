#!/usr/bin/env bash
# Idempotent set-up of .venv: a Python >= 3.12 venv holding the project (editable) with the
# DOLFINx 0.11 wheel stack, gmsh and the test/dev tools. A second run finds the stamp and
# returns in well under a second.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
venv="$here/.venv"
stamp="$venv/.fem-crossdiff-installed"
want=$(cat "$here/pyproject.toml" "$here/scripts/setup.sh" | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/python" ]; then
  exit 0
fi
py=$(bash "$here/scripts/find_python.sh") || {
  bash "$here/scripts/build_python.sh" || {
    echo "fem-crossdiff set-up: no Python >= 3.12 found (checked \$PYTHON, python3.12/3.13 on PATH, pyenv versions) and none could be built. DOLFINx 0.11 wheels need Python >= 3.12: install one and rerun with PYTHON=/path/to/python3.12" >&2
    exit 3
  }
  py=$(bash "$here/scripts/find_python.sh") || { echo "fem-crossdiff set-up: the built Python was not usable" >&2; exit 3; }
}
echo "fem-crossdiff set-up: venv from $py" >&2
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 12))'; then
  rm -rf "$venv"
  "$py" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$here[wheels,test,dev]"
"$venv/bin/python" -c "import fem_crossdiff.compat as c; c.check_versions(); print('fem-crossdiff set-up:', c.version_report())" >&2
echo "$want" > "$stamp"
