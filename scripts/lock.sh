#!/usr/bin/env bash
# Refresh requirements/lock.txt, the exact versions that scripts/setup.sh installs: the project's
# dependencies with the extras wheels, test and dev (the DOLFINx wheel stack, transitively) plus
# requirements/lock.in, resolved by uv as one universal lock for Python >= 3.12. Wheels only: the
# lock is kept only if every pinned package has a wheel for CPython 3.12 and 3.13 on x86-64 Linux
# (glibc >= 2.34, the platform of the dolfinx-solver-real wheel), the two Pythons set-up may use.
# Usage: scripts/lock.sh           every package to its newest version allowed by pyproject.toml
#        scripts/lock.sh --keep    keep the current pins; only add, drop or move what
#                                  pyproject.toml or lock.in now require
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
upgrade=(--upgrade)
case "${1:-}" in
  "") ;;
  --keep) upgrade=() ;;
  *) echo "scripts/lock.sh: unknown argument '$1' (allowed: none, or --keep)" >&2; exit 2 ;;
esac
# Only a venv to hold uv is needed, not an up-to-date one (the lock may be what is out of date).
[ -x .venv/bin/python ] || bash scripts/setup.sh
uv=.venv/bin/uv
if [ ! -x "$uv" ]; then
  # the locking tool lives in .venv but outside the lock: it never runs the project's code
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --only-binary :all: "uv>=0.5"
fi
export UV_PYTHON_DOWNLOADS=never UV_CUSTOM_COMPILE_COMMAND="make lock"
lock=requirements/lock.txt
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# Start from the committed lock so that --keep keeps its pins (uv reads the output file's pins).
[ -f "$lock" ] && cp "$lock" "$tmp/lock.txt"
"$uv" pip compile --quiet pyproject.toml requirements/lock.in --all-extras --universal \
  --python-version 3.12 --only-binary :all: "${upgrade[@]}" -o "$tmp/lock.txt"
pins() { grep -E '^[A-Za-z0-9]' "$1" | sed 's/ *;.*//' | sort; }
for v in 3.12 3.13; do
  # Resolving the lock itself for one interpreter and platform fails if a pin has no wheel there
  # or needs a package the lock lacks.
  if ! "$uv" pip compile --quiet --no-header --no-annotate "$tmp/lock.txt" --python-version "$v" \
       --python-platform x86_64-manylinux_2_34 --only-binary :all: -o "$tmp/check-$v.txt"; then
    echo "scripts/lock.sh: the new lock does not install on CPython $v (x86-64 Linux); $lock unchanged" >&2
    exit 1
  fi
  extra=$(comm -13 <(pins "$tmp/lock.txt") <(pins "$tmp/check-$v.txt"))
  if [ -n "$extra" ]; then
    echo "scripts/lock.sh: on CPython $v the lock needs packages it does not pin: $extra; $lock unchanged" >&2
    exit 1
  fi
done
if [ -f "$lock" ] && cmp -s "$tmp/lock.txt" "$lock"; then
  echo "scripts/lock.sh: $lock is up to date" >&2
else
  cp "$tmp/lock.txt" "$lock"
  echo "scripts/lock.sh: wrote $lock ($(pins "$lock" | wc -l) pins); run 'make setup' to install it" >&2
fi
