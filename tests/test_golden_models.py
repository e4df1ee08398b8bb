"""Golden values of every registered model: residual, Jacobian and energy on a fixed state.

Why: moving a discretisation between modules (or turning its tuning constants into options)
must not change a single number. Each case builds the solver of one (pde, scheme) pair, with
every limiter of ``"muscl"`` and every assembled Jacobian a model offers, on a serial 8 x 8
unit-square mesh with smooth positive data (no feature at the nodes), evaluates the problem's
residual, its assembled matrix (and, for a matrix-free Jacobian, the operator's product with a
fixed vector) and the energy, and compares them with ``tests/data/golden_models.npz`` to
``1e-13`` relative to the largest value of each array.

The comparison runs on ``COMM_SELF`` meshes: under ``mpiexec`` every rank checks the same
serial problem (the partition independence of the schemes is tested elsewhere), so the stored
numbering is one mesh's. Rows and columns are stored in a canonical order, nodes sorted by
their coordinates, so the data does not depend on DOLFINx's dof numbering.

Regenerate (only when a change of the numbers is intended, and say why in the commit)::

    .venv/bin/python tests/test_golden_models.py --regenerate
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from fem_crossdiff.compat import MPI, PETSc, mesh
from fem_crossdiff.models.muscl.options import LIMITER_CLASSES
from fem_crossdiff.params import ModelParams
from fem_crossdiff.problem import wrapped_vectors

DATA = Path(__file__).resolve().parent / "data" / "golden_models.npz"
#: Relative tolerance of every comparison (to the largest absolute value of the array).
RTOL = 1e-13
PARAMS = ModelParams(a=(1.0, 1.5), b=(1.0, 0.6), m=2.5, sigma=0.05)


def _potential(rho):
    """A lagged potential of the state (the ``"potential"`` model's callable)."""
    return 0.7 * rho[:, 0] - 0.3 * rho[:, 1] ** 2


def _cases() -> dict[str, dict]:
    """Case name -> keyword arguments of :class:`CrossDiffusionSolver`."""
    from fem_crossdiff.models.nonlocal_system import NonlocalParams

    cases = {
        "local-upwind": dict(scheme="upwind"),
        "local-galerkin": dict(scheme="galerkin"),
        "local-afc": dict(scheme="afc"),
        "local-afc-mf-upwind": dict(scheme="afc", jacobian="mf", preconditioner="upwind"),
        "local-muscl-default": dict(scheme="muscl"),
        "local-muscl-frozen": dict(scheme="muscl", jacobian="frozen"),
        "local-muscl-mf": dict(scheme="muscl", jacobian="mf"),
        "local-muscl-direct": dict(scheme="muscl", preconditioner="direct"),
        # the wall treatment named: the stored numbers are "sinkhorn"'s, the default until
        # "diagonal-pc" (tests/test_walls_interior.py checks that one's Jacobian)
        "nonlocal-upwind-linear": dict(nonlocal_params=NonlocalParams(eps=0.4,
                                                                      boundary="sinkhorn")),
        "nonlocal-upwind-implicit": dict(nonlocal_params=NonlocalParams(
            eps=0.4, coupling="implicit", boundary="sinkhorn")),
        "potential-upwind": dict(potential=_potential),
    }
    for lim in LIMITER_CLASSES:  # the exact Jacobian assembled (distance-2 pattern) per limiter
        cases[f"local-muscl-{lim}-exact"] = dict(scheme="muscl", limiter=lim,
                                                 preconditioner="exact")
    return cases


def _initial():
    """Smooth positive data, not symmetric in the mesh (no ties of the upwind direction)."""
    return [lambda x: 0.55 + 0.3 * np.sin(2.1 * x[0] + 0.7 * x[1] + 0.3) * np.cos(1.3 * x[1]),
            lambda x: 0.35 + 0.2 * np.cos(1.7 * x[0] - 1.9 * x[1] + 0.5)]


def _canonical(V, n: int) -> np.ndarray:
    """Canonical index of every local dof: nodes sorted by (x, y), species within a node."""
    X = V.tabulate_dof_coordinates()
    order = np.lexsort((np.round(X[:, 1], 10), np.round(X[:, 0], 10)))
    node = np.empty(order.size, dtype=np.int64)
    node[order] = np.arange(order.size)
    return (node[:, None] * n + np.arange(n)[None, :]).ravel()


def _coo(A: PETSc.Mat, canon: np.ndarray):
    """``(row, col, value)`` of ``A`` in canonical numbering, sorted by (row, col)."""
    indptr, indices, data = A.getValuesCSR()
    rows = np.repeat(np.arange(indptr.size - 1), np.diff(indptr))
    r, c = canon[rows], canon[np.asarray(indices, dtype=np.int64)]
    order = np.lexsort((c, r))
    return r[order], c[order], np.asarray(data)[order]


def evaluate(name: str, kwargs: dict) -> dict[str, np.ndarray]:
    """The residual, Jacobian (COO), operator product and energy of one case (COMM_SELF)."""
    from fem_crossdiff.solver import CrossDiffusionSolver

    msh = mesh.create_unit_square(MPI.COMM_SELF, 8, 8)
    s = CrossDiffusionSolver(msh, PARAMS, linear_solver="iterative", **kwargs)
    s.set_initial(_initial())
    n = PARAMS.n
    canon = _canonical(s.V, n)
    s.model.begin_step(s.rho.x.array.reshape(-1, n))
    with wrapped_vectors(s.rho.x) as rho:  # no cached PETSc vector on the Function
        x = rho.copy()
    b = s.problem.b
    s.snes.computeFunction(x, b)
    out = {}
    res = np.empty(canon.size)
    res[canon] = b.array_r
    out["residual"] = res
    J, P, _ = s.snes.getJacobian()
    s.snes.computeJacobian(x, J, P)
    out["rows"], out["cols"], out["values"] = _coo(P, canon)
    if J.handle != P.handle:  # matrix-free: the operator's product with a fixed vector
        y = x.duplicate()
        v = x.duplicate()
        v.array_w[:] = np.sin(3.0 * canon + 1.0)
        J.mult(v, y)
        prod = np.empty(canon.size)
        prod[canon] = y.array_r
        out["product"] = prod
        for obj in (y, v):
            obj.destroy()
    out["energy"] = np.array([s.energy()])
    x.destroy()
    return {f"{name}/{key}": value for key, value in out.items()}


def _dense(rows, cols, values, size: int) -> np.ndarray:
    M = np.zeros((size, size))
    np.add.at(M, (rows, cols), values)
    return M


@pytest.fixture(scope="module")
def golden():
    """The stored values."""
    with np.load(DATA) as data:
        return dict(data)


@pytest.mark.parametrize("name", sorted(_cases()))
def test_model_matches_golden(name, golden):
    """Residual, assembled Jacobian, operator product and energy equal the stored values."""
    got = evaluate(name, _cases()[name])
    stored = {key: value for key, value in golden.items() if key.startswith(f"{name}/")}
    assert sorted(got) == sorted(stored), f"{name}: stored arrays {sorted(stored)}"

    def close(key):
        ref, new = stored[f"{name}/{key}"], got[f"{name}/{key}"]
        assert ref.shape == new.shape, f"{name}/{key}: shape {new.shape} != {ref.shape}"
        scale = max(float(np.abs(ref).max(initial=0.0)), 1e-300)
        err = float(np.abs(new - ref).max(initial=0.0))
        assert err <= RTOL * scale, f"{name}/{key}: max diff {err:.3e} (scale {scale:.3e})"

    for key in ("residual", "energy", "product"):
        if f"{name}/{key}" in stored:
            close(key)
    size = got[f"{name}/residual"].size
    ref = _dense(stored[f"{name}/rows"], stored[f"{name}/cols"], stored[f"{name}/values"], size)
    new = _dense(got[f"{name}/rows"], got[f"{name}/cols"], got[f"{name}/values"], size)
    scale = float(np.abs(ref).max())
    err = float(np.abs(new - ref).max())
    assert err <= RTOL * scale, f"{name}/jacobian: max diff {err:.3e} (scale {scale:.3e})"


def test_every_registered_model_has_a_golden_case():
    """A model registered in the library without a golden case fails here."""
    from fem_crossdiff.models import entries, select_model

    cases = _cases()
    covered = set()
    for kw in cases.values():
        found, _ = select_model(**kw)
        covered.add((found.pde, found.scheme))
    builtin = {(e.pde, e.scheme) for e in entries() if not e.scheme.endswith("-test")}
    assert builtin <= covered, f"models without a golden case: {sorted(builtin - covered)}"
    limiters = {kw["limiter"] for kw in cases.values() if "limiter" in kw}
    assert limiters == set(LIMITER_CLASSES)


def regenerate() -> None:
    """Write :data:`DATA` from the current code (serial)."""
    arrays = {}
    for name, kwargs in _cases().items():
        arrays.update(evaluate(name, kwargs))
    DATA.parent.mkdir(exist_ok=True)
    np.savez_compressed(DATA, **arrays)
    print(f"wrote {len(arrays)} arrays for {len(_cases())} cases to {DATA}")


if __name__ == "__main__":
    if "--regenerate" in sys.argv[1:]:
        regenerate()
    else:
        sys.exit("usage: python tests/test_golden_models.py --regenerate")
