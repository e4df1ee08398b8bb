#!/usr/bin/env bash
# Idempotent set-up of .venv: a Python >= 3.12 venv holding the project (editable) with the
# DOLFINx 0.11 wheel stack, gmsh and the test/dev tools, each at the exact version that
# requirements/lock.txt pins (`make lock` refreshes it), so two machines test the same stack.
# A second run finds the stamp and returns in well under a second; a changed lock, pyproject.toml
# or set-up script changes the stamp and installs again.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
venv="$here/.venv"
stamp="$venv/.fem-crossdiff-installed"
lock="$here/requirements/lock.txt"
[ -f "$lock" ] || { echo "fem-crossdiff set-up: $lock is missing (restore it from git, or make one with 'make lock')" >&2; exit 3; }
want=$(cat "$here/pyproject.toml" "$here/scripts/setup.sh" "$lock" | sha256sum | cut -c1-16)
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
pipi() { "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$@"; }
# pip first at its locked version (it then installs the rest); wheels only, so a pin without a
# wheel for this Python fails here instead of compiling for minutes.
pin_pip=$(grep -E '^pip==' "$lock" | sed 's/ *;.*//')
pipi --only-binary :all: "$pin_pip"
pipi --only-binary :all: -r "$lock" || {
  echo "fem-crossdiff set-up: installing the pinned versions of $lock failed (above); on Python $("$venv/bin/python" -c 'import platform; print(platform.python_version())') a pin may lack a wheel" >&2
  exit 3
}
# The project without dependencies (all locked above) and built by the locked setuptools: an
# isolated build would fetch the newest setuptools of the day.
pipi --no-deps --no-build-isolation -e "$here"
"$venv/bin/python" -m pip check >&2 || {
  echo "fem-crossdiff set-up: the locked versions do not satisfy pyproject.toml; run 'make lock' (or 'make lock LOCK_ARGS=--keep') and commit requirements/lock.txt" >&2
  exit 3
}
"$venv/bin/python" -c "import fem_crossdiff.compat as c; c.check_versions(); print('fem-crossdiff set-up:', c.version_report())" >&2
echo "$want" > "$stamp"
