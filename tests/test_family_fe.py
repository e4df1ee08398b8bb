"""The FE and nonlocal levels of the volume-exclusion family (fem_crossdiff.terms).

Exact or peer references only: the logistic ODE on uniform data (rate in dt), the compact
stationary profile under confinement (L1 error decreasing in h), a manufactured solution with
per-species sigma_k (L2 rate in h), positivity and mass with potentials and interactions, the
energy's decrease, and the validation of bad inputs. Serial and under ``mpiexec -n 2``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import ufl
from mpi4py import MPI

from fem_crossdiff.compat import fem, mesh
from fem_crossdiff.errors import ParameterError
from fem_crossdiff.family import Family, Growth, Interaction, Kernel, Potential
from fem_crossdiff.models.nonlocal_system import NonlocalParams
from fem_crossdiff.params import ModelParams
from fem_crossdiff.solver import CrossDiffusionSolver

COMM = MPI.COMM_WORLD


def _rates(errors):
    e = np.asarray(errors)
    return np.log2(e[:-1] / e[1:])


def _nodal_l1(solver, k, exact):
    """Lumped-quadrature ``int |rho_k - exact|`` (owned nodes, reduced)."""
    V0 = solver.V0
    nown = V0.dofmap.index_map.size_local
    x = V0.tabulate_dof_coordinates()[:nown]
    vals = solver.rho.x.array[solver.species_dofs[k]][:nown]
    m = solver._mvec.reshape(-1, solver.params.n)[:, k]
    return COMM.allreduce(float(np.sum(m * np.abs(vals - exact(x)))), op=MPI.SUM)


# ------------------------------------------------------------------------------ 1. growth
G_RATE, P_MAX, RHO0, T_GROWTH = 1.0, 1.5, 0.2, 1.0


def _logistic(t):
    e = math.exp(G_RATE * t)
    return P_MAX * RHO0 * e / (P_MAX + RHO0 * (e - 1.0))


@pytest.mark.parametrize("level", ["upwind", "muscl", "nonlocal"])
def test_logistic_growth_matches_closed_form_at_first_order(level):
    """Uniform data, m = 2, G = g (1 - P / P_M): the logistic ODE, rate 1 in dt.

    Implicit Euler; the growth coefficients are taken at the step's start.
    """
    msh = mesh.create_interval(COMM, 16, [0.0, 1.0])
    fam = Family((0.0,), growth=(Growth("logistic", rate=G_RATE, p_max=P_MAX),))
    kw = ({"nonlocal_params": NonlocalParams(eps=0.25, kernel="poly4")} if level == "nonlocal"
          else {"scheme": level})
    errs = []
    for steps in (8, 16, 32, 64):
        s = CrossDiffusionSolver(msh, ModelParams((1.0,), (1.0,), 2.0), family=fam, **kw)
        s.set_initial([RHO0])
        for _ in range(steps):
            assert s.step(T_GROWTH / steps).accepted
        mn, mx = s.extrema()
        assert mx[0] - mn[0] < 1e-9  # uniform data stay uniform
        errs.append(abs(mx[0] - _logistic(T_GROWTH)))
    rates = _rates(errs)
    assert np.all(np.abs(rates - 1.0) < 0.1), (errs, rates)
    assert errs[-1] < 5e-3


# ------------------------------------------------------------------------------ 2. confinement
def _confinement_error(cells: int) -> float:
    """Relative L1 error at long time: sigma = 0, Phi = x^2 / 2, m = 2, a = b = 1.

    The limit is ``(C - x^2 / 2)_+`` with ``C`` from the mass.
    """
    msh = mesh.create_interval(COMM, cells, [-2.0, 2.0])
    fam = Family((0.0,), potentials=(Potential("x**2 / 2"),))
    s = CrossDiffusionSolver(msh, ModelParams((1.0,), (1.0,), 2.0), scheme="upwind",
                             family=fam)
    s.set_initial([lambda x: 0.3 * np.exp(-2.0 * x[0] ** 2) + 0.05])
    mass = s.masses()[0]
    C = (3.0 * mass / (4.0 * math.sqrt(2.0))) ** (2.0 / 3.0)  # int (C - x^2/2)_+ = mass
    for _ in range(60):  # implicit Euler: any dt, the stationary state does not depend on it
        assert s.step(0.5).accepted
    return _nodal_l1(s, 0, lambda x: np.maximum(C - 0.5 * x[:, 0] ** 2, 0.0)) / mass


def test_confinement_tends_to_compact_stationary_profile():
    errs = [_confinement_error(c) for c in (40, 80, 160)]
    rates = _rates(errs)
    assert errs[-1] < 0.02 and np.all(rates > 0.7), (errs, rates)


def _self_similar(t: float, x: np.ndarray) -> np.ndarray:
    """An exact solution of ``rho_t = (rho^2)_xx + (rho x / 3)_x`` (module test 2b).

    ``rho(t, x) = a B(tau, a x)`` with ``a = e^(t/3)``, ``tau = e^t - 1/2`` and ``B(tau, y) =
    tau^(-1/3) (C - y^2 tau^(-2/3) / 12)_+`` the Barenblatt profile of ``v_tau = (v^2)_yy``:
    ``a' = a / 3`` and ``tau' = a^3`` turn the porous-medium equation into this one.
    """
    a, tau, C = math.exp(t / 3.0), math.exp(t) - 0.5, 0.5
    return a * tau ** (-1.0 / 3.0) * np.maximum(C - (a * x) ** 2 * tau ** (-2.0 / 3.0) / 12.0,
                                                0.0)


def _self_similar_error(cells: int) -> float:
    """Relative L1 error at T = 0.5 of the FE solution with ``b = 2``, ``Phi = x^2 / 6``."""
    msh = mesh.create_interval(COMM, cells, [-3.0, 3.0])
    fam = Family((0.0,), potentials=(Potential("x**2 / 6"),))
    s = CrossDiffusionSolver(msh, ModelParams((1.0,), (2.0,), 2.0), scheme="upwind",
                             family=fam)
    s.set_initial([lambda x: _self_similar(0.0, x[0])])
    T, steps = 0.5, cells // 2
    for _ in range(steps):
        assert s.step(T / steps, "bdf2").accepted
    exact = _self_similar(T, np.linspace(-3.0, 3.0, 20001))
    mass = float(np.sum(exact) * 6.0 / 20000)
    return _nodal_l1(s, 0, lambda x: _self_similar(T, x[:, 0])) / mass


def test_self_similar_confinement_solution_rate():
    """1D ``rho_t = Lap(rho^2) + div(rho grad(x^2 / 6))`` against its exact solution.

    The solution is a rescaled Barenblatt profile (:func:`_self_similar`): measured L1
    convergence in h.
    """
    errs = [_self_similar_error(c) for c in (60, 120, 240)]
    rates = _rates(errs)
    print(f"self-similar confinement: L1 {errs}, rates {rates}")
    assert errs[-1] < 0.01 and np.all(rates > 0.8), (errs, rates)


def _confinement_2d_error(n: int) -> float:
    """2D: relative L1 distance to ``(C - |x|^2 / 2)_+`` at long time (``pi C^2`` = mass)."""
    msh = mesh.create_rectangle(COMM, [[-2.0, -2.0], [2.0, 2.0]], [n, n])
    fam = Family((0.0,), potentials=(Potential("(x**2 + y**2) / 2"),))
    s = CrossDiffusionSolver(msh, ModelParams((1.0,), (1.0,), 2.0), scheme="upwind",
                             family=fam)
    s.set_initial([lambda x: 0.3 * np.exp(-2.0 * (x[0] ** 2 + x[1] ** 2)) + 0.05])
    mass = s.masses()[0]
    C = math.sqrt(mass / math.pi)
    for _ in range(40):
        assert s.step(0.5).accepted
    return _nodal_l1(s, 0, lambda x: np.maximum(C - 0.5 * (x[:, 0] ** 2 + x[:, 1] ** 2),
                                                0.0)) / mass


def test_confinement_2d_tends_to_compact_stationary_profile():
    errs = [_confinement_2d_error(n) for n in (16, 32, 64)]
    rates = _rates(errs)
    print(f"2D confinement: L1 {errs}, rates {rates}")
    assert errs[-1] < 0.07 and np.all(rates > 0.8), (errs, rates)  # measured 0.055, 0.93


# ------------------------------------------------------------------------------ 3. sigma_k
SIGMA = (0.02, 0.2)


def _manufactured_error(cells: int, scheme: str) -> float:
    msh = mesh.create_interval(COMM, cells, [0.0, 1.0])
    x = ufl.SpatialCoordinate(msh)[0]
    T = 0.25

    def exact(t):
        e = ufl.exp(-t)
        return [0.6 + 0.3 * ufl.cos(math.pi * x) * e, 0.5 + 0.25 * ufl.cos(2 * math.pi * x) * e]

    phi = [0.5 * ufl.cos(math.pi * x), x**2 / 2 - x**3 / 3]
    base = (0.6, 0.5)
    b = (1.0, 2.0)

    def source(X, t):
        r = exact(t)
        S = r[0] + r[1]
        out = []
        for k in range(2):
            flux = r[k] * (b[k] * ufl.grad(S) + ufl.grad(phi[k])) + SIGMA[k] * ufl.grad(r[k])
            out.append(-(r[k] - base[k]) - ufl.div(flux))  # d_t r_k = -(r_k - base_k)
        return out

    fam = Family(SIGMA, potentials=(Potential("cos(pi * x) / 2"),
                                    Potential("x**2 / 2 - x**3 / 3")))
    s = CrossDiffusionSolver(msh, ModelParams((1.0, 1.0), b, 2.0), scheme=scheme,
                             family=fam, source=source)
    t0 = fem.Constant(msh, 0.0)
    s.set_initial([fem.Expression(e, s.V0.element.interpolation_points)
                   for e in exact(t0)])
    steps = cells // 2
    for _ in range(steps):
        assert s.step(T / steps).accepted
    t0.value = T
    err = sum(fem.assemble_scalar(fem.form((s.rho[k] - r) ** 2 * ufl.dx(degree=6)))
              for k, r in enumerate(exact(t0)))
    return math.sqrt(COMM.allreduce(err, op=MPI.SUM))


@pytest.mark.parametrize("scheme", ["upwind", "muscl"])
def test_per_species_sigma_manufactured_rate(scheme):
    """Per-species sigma_k: a manufactured solution, first order in h.

    Two species, sigma = (0.02, 0.2), b = (1, 2), Phi = (cos(pi x) / 2, x^2/2 - x^3/3);
    upwind transport, implicit Euler with dt ~ h.
    """
    errs = [_manufactured_error(c, scheme) for c in (20, 40, 80, 160)]
    rates = _rates(errs)
    assert np.all(rates > 0.8) and rates[-1] > 0.9, (errs, rates)


# ------------------------------------------------------------------------------ 4, 5
def _square_case(sigma, scheme="upwind", growth=(), strength=1.0):
    msh = mesh.create_unit_square(COMM, 16, 16, diagonal=mesh.DiagonalType.crossed)
    c = strength
    inter = (Interaction(Kernel("gaussian", 0.15), ((0.5 * c, -0.3 * c), (-0.3 * c, 0.2 * c))),
             Interaction(Kernel("poly4", 0.2), ((-0.2 * c, 0.0), (0.0, 0.3 * c))))
    fam = Family(sigma, potentials=(Potential("((x - 0.5)**2 + (y - 0.5)**2) / 2"),
                                    Potential("x")),
                 interactions=inter, growth=growth)
    s = CrossDiffusionSolver(msh, ModelParams((1.0, 1.0), (1.0, 1.0), 2.0), scheme=scheme,
                             family=fam)
    s.set_initial([lambda x: np.maximum(0.04 - (x[0] - 0.3) ** 2 - (x[1] - 0.4) ** 2, 0) * 20,
                   lambda x: np.maximum(0.05 - (x[0] - 0.6) ** 2 - (x[1] - 0.6) ** 2, 0) * 15])
    return s


@pytest.mark.parametrize("sigma", [(0.0, 0.0), (0.0, 0.05), (0.1, 0.01)])
def test_positivity_and_mass_with_potentials_and_interactions(sigma):
    s = _square_case(sigma)
    m0 = s.masses()
    for _ in range(8):
        info = s.step(0.01)
        assert info.accepted, info.message
        mn, mx = s.extrema()
        assert np.all(mn >= -1e-14 * mx), mn
    np.testing.assert_allclose(s.masses(), m0, rtol=1e-11)


def test_positivity_with_growth_and_muscl():
    s = _square_case((0.0, 0.02), scheme="muscl",
                     growth=(Growth("logistic", rate=2.0, p_max=0.5),
                             Growth("expr", expr="-1 + 0 * P")))
    m0 = s.masses()
    for _ in range(5):
        assert s.step(0.02).accepted
        mn, mx = s.extrema()
        assert np.all(mn >= -1e-14 * mx), mn
    m1 = s.masses()
    assert m1[1] < m0[1] * math.exp(-0.1) * 1.05  # death: the second species decays
    assert m1[1] > 0.0


@pytest.mark.parametrize("negative_edges", ["voronoi", "front"])
def test_tetrahedra_positivity_and_mass(negative_edges):
    """3D: the terms' fluxes on the model's edges (limited ones included) stay positive."""
    msh = mesh.create_box(COMM, [[0, 0, 0], [1, 1, 1]], [6, 6, 6], mesh.CellType.tetrahedron)
    fam = Family((0.0, 0.05), potentials=(Potential("(x**2 + y**2 + z**2) / 2"), None),
                 interactions=(Interaction(Kernel("poly4", 0.6), ((0.3, -0.1), (-0.1, 0.2))),))
    s = CrossDiffusionSolver(msh, ModelParams((1.0, 1.0), (1.0, 1.0), 2.0), scheme="upwind",
                             family=fam, negative_edges=negative_edges)
    s.set_initial([lambda x: np.maximum(0.1 - (x[0] - 0.3) ** 2 - (x[1] - 0.3) ** 2
                                        - (x[2] - 0.3) ** 2, 0.0) * 10,
                   lambda x: 0.2 + 0.1 * x[0] * x[1]])
    m0 = s.masses()
    for _ in range(4):
        assert s.step(0.01).accepted
        mn, mx = s.extrema()
        assert np.all(mn >= -1e-14 * mx), mn
    np.testing.assert_allclose(s.masses(), m0, rtol=1e-11)


@pytest.mark.parametrize("scheme", ["upwind", "muscl"])
def test_energy_decreases_without_growth(scheme):
    """W symmetric, a = b, G = 0: the energy decreases.

    A gradient flow; the lagged interaction keeps the decrease at a modest dt.
    """
    s = _square_case((0.0, 0.02), scheme=scheme, strength=10.0)
    energies = [s.energy()]
    for _ in range(10):
        assert s.step(0.005).accepted
        energies.append(s.energy())
    d = np.diff(energies)
    assert np.all(d <= 1e-12 * abs(energies[0])), (energies, d)
    assert energies[-1] < energies[0] - 1e-4 * abs(energies[0])


def test_nonlocal_takes_the_same_terms():
    msh = mesh.create_unit_square(COMM, 16, 16, diagonal=mesh.DiagonalType.crossed)
    fam = Family((0.0,), potentials=(Potential("((x - 0.5)**2 + (y - 0.5)**2)"),),
                 interactions=(Interaction(Kernel("gaussian", 0.1), ((-0.2,),)),))
    s = CrossDiffusionSolver(msh, ModelParams((1.0,), (1.0,), 2.0), family=fam,
                             nonlocal_params=NonlocalParams(eps=0.15, kernel="poly4"))
    s.set_initial([lambda x: 0.5 + 0.3 * np.sin(3 * x[0]) * np.cos(2 * x[1])])
    m0, e = s.masses(), [s.energy()]
    for _ in range(5):
        assert s.step(0.01).accepted
        e.append(s.energy())
    np.testing.assert_allclose(s.masses(), m0, rtol=1e-11)
    assert np.all(np.diff(e) <= 1e-12 * abs(e[0])), e


# ------------------------------------------------------------------------------ 6. bad inputs
def test_bad_inputs_name_the_key():
    msh = mesh.create_interval(COMM, 8, [0.0, 1.0])
    p1 = ModelParams((1.0,), (1.0,), 2.0)
    with pytest.raises(ParameterError) as err:
        CrossDiffusionSolver(msh, p1, family=Family((0.1, 0.2)))
    assert err.value.key == "family.sigma"
    with pytest.raises(ParameterError) as err:
        CrossDiffusionSolver(msh, p1, scheme="galerkin", family=Family((0.1,)))
    assert err.value.key == "family" and "galerkin" in str(err.value)
    with pytest.raises(ParameterError) as err:
        CrossDiffusionSolver(msh, p1, scheme="galerkin", degree=2, family=Family((0.1,)))
    assert err.value.key == "family" and "degree 2" in str(err.value)
    with pytest.raises(ParameterError) as err:
        CrossDiffusionSolver(msh, p1, family={"sigma": [0.1]})
    assert err.value.key == "family"
    with pytest.raises(ParameterError) as err:
        CrossDiffusionSolver(msh, ModelParams((1.0,), (1.0,), 2.0, 0.3), family=Family((0.1,)))
    assert err.value.key == "sigma"
    small = Family((0.0,), interactions=(Interaction(Kernel("poly4", 0.05), ((1.0,),)),))
    with pytest.raises(ParameterError) as err:
        CrossDiffusionSolver(msh, p1, family=small)
    assert err.value.key == "interactions[0].kernel.length"
