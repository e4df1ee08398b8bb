#!/usr/bin/env bash
# The whole suite serially, then again under `mpiexec -n 2` (one pytest process per rank for
# the whole suite: solvers free their PETSc objects and communicators, see
# fem_crossdiff.problem.free_released); fails if either run fails or collects no test.
# NP=3 (or any count) runs the MPI pass on that many ranks. Prints pytest's closing lines.
set -u
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
py=.venv/bin/python
mpiexec=.venv/bin/mpiexec
np=${NP:-2}
echo "== pytest, serial =="
"$py" -m pytest -q "$@"; s=$?
echo "== pytest, mpiexec -n $np =="
"$mpiexec" -n "$np" "$py" -m pytest -q "$@"; p=$?
echo "== serial exit $s, mpiexec -n $np exit $p =="
[ "$s" -eq 0 ] && [ "$p" -eq 0 ]
