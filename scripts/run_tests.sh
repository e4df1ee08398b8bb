#!/usr/bin/env bash
# The whole suite serially, then again under `mpiexec -n 2`; fails if either fails or if
# either collects no test. Prints pytest's closing lines.
set -u
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
py=.venv/bin/python
mpiexec=.venv/bin/mpiexec
echo "== pytest, serial =="
"$py" -m pytest -q "$@"; s=$?
echo "== pytest, mpiexec -n 2 =="
"$mpiexec" -n 2 "$py" -m pytest -q "$@"; p=$?
echo "== serial exit $s, mpiexec -n 2 exit $p =="
# pytest exits 5 when it collected nothing: that is a failure here too.
[ "$s" -eq 0 ] && [ "$p" -eq 0 ]
