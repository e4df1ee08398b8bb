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
# Under MPI the suite runs in two processes: each freed solver leaves a few MPI communicators
# behind (PETSc keeps its objects for a collective clean-up), and one process running every
# test reached MPICH's limit of 2048 (exit 15).
first=$(ls tests/test_*.py | awk -F/ '$2 < "test_n"')
second=$(ls tests/test_*.py | awk -F/ '$2 >= "test_n"')
echo "== pytest, mpiexec -n 2 (1/2) =="
"$mpiexec" -n 2 "$py" -m pytest -q "$@" $first; p1=$?
echo "== pytest, mpiexec -n 2 (2/2) =="
"$mpiexec" -n 2 "$py" -m pytest -q "$@" $second; p2=$?
p=$(( p1 != 0 ? p1 : p2 ))
echo "== serial exit $s, mpiexec -n 2 exit $p =="
# pytest exits 5 when it collected nothing: that is a failure here too.
[ "$s" -eq 0 ] && [ "$p" -eq 0 ]
