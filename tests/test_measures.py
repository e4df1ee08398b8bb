"""Empirical measures on FE spaces (fem_crossdiff/measures.py): mass, rates, rank independence.

Every rank draws the same global sample (same seed) and keeps an uneven, rank-dependent slice of
it, so the measure is the same whatever the number of ranks; all asserts read allreduced numbers.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import ufl
from scipy.spatial import cKDTree

from fem_crossdiff.compat import MPI, fem, mesh
from fem_crossdiff.measures import (
    density_moments,
    density_to_weighted_samples,
    empirical_dg0_histogram,
    empirical_l2_projection,
    empirical_lp_distance,
    lp_distance,
    mollified_density,
)
from fem_crossdiff.mollifiers import get_mollifier
from fem_crossdiff.particles.distances import moments, random_directions, sliced_wasserstein


def my_slice(points: np.ndarray, comm) -> np.ndarray:
    """Rank r keeps the points between the fractions (r/size)^2 and ((r+1)/size)^2: uneven."""
    n = points.shape[0]
    lo, hi = (int(n * (k / comm.size) ** 2) for k in (comm.rank, comm.rank + 1))
    return points[lo:hi]


def sample_density(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` samples of f(x, y) = 1 + cos(pi x) cos(pi y) / 2 on the unit square (rejection)."""
    out = np.empty((0, 2))
    while out.shape[0] < n:
        x = rng.random((2 * n, 2))
        f = 1 + 0.5 * np.cos(np.pi * x[:, 0]) * np.cos(np.pi * x[:, 1])
        out = np.concatenate([out, x[rng.random(2 * n) * 1.5 < f]])
    return out[:n]


def exact_density(msh):
    x = ufl.SpatialCoordinate(msh)
    return 1 + 0.5 * ufl.cos(ufl.pi * x[0]) * ufl.cos(ufl.pi * x[1])


def total(comm, u) -> float:
    return comm.allreduce(fem.assemble_scalar(fem.form(u * ufl.dx)), op=MPI.SUM)


def gmax(comm, value) -> float:
    return comm.allreduce(float(np.max(value)) if np.size(value) else 0.0, op=MPI.MAX)


@pytest.mark.parametrize("cell", ["triangle", "quadrilateral"])
def test_total_mass_preserved(comm, cell):
    ct = getattr(mesh.CellType, cell)
    msh = mesh.create_unit_square(comm, 20, 20, ct)
    V = fem.functionspace(msh, ("Lagrange", 1))
    pts = my_slice(np.random.default_rng(1).random((20_000 if cell == "triangle" else 3000, 2)),
                   comm)
    errs = [total(comm, empirical_dg0_histogram(msh, pts)) - 1,
            total(comm, empirical_l2_projection(V, pts)) - 1,
            total(comm, empirical_l2_projection(V, pts, pc_type="gamg")) - 1]
    assert gmax(comm, np.abs(errs)) < 1e-12


def test_points_outside_raise_or_drop(comm):
    msh = mesh.create_unit_square(comm, 12, 12)
    V = fem.functionspace(msh, ("Lagrange", 1))
    allp = np.random.default_rng(2).random((5000, 2))
    allp[:500] += 1.5  # 500 points outside
    pts = my_slice(allp, comm)
    with pytest.raises(ValueError, match="500 of 5000 points lie outside"):
        empirical_dg0_histogram(msh, pts)
    errs = [total(comm, empirical_dg0_histogram(msh, pts, outside="drop")) - 0.9,
            total(comm, empirical_l2_projection(V, pts, outside="drop")) - 0.9]
    assert gmax(comm, np.abs(errs)) < 1e-12


def test_l2_projection_converges_at_monte_carlo_rate(comm):
    # E||P_h mu_N - P_h f||^2 ~ C / N (variance), the bias ||f - P_h f|| ~ h^2 being far
    # smaller here: the L2 error to f decays like N^-1/2. RMS over 3 independent samples.
    msh = mesh.create_unit_square(comm, 16, 16)
    V = fem.functionspace(msh, ("Lagrange", 1))
    f = exact_density(msh)
    ns = np.array([1000, 4000, 16000, 64000])
    rng = np.random.default_rng(3)
    rms = []
    for n in ns:
        errs = [lp_distance(empirical_l2_projection(V, my_slice(sample_density(n, rng), comm)),
                            f, 2) for _ in range(3)]
        rms.append(math.sqrt(np.mean(np.square(errs))))
    slope = np.polyfit(np.log(ns), np.log(rms), 1)[0]
    assert gmax(comm, abs(slope + 0.5)) < 0.1  # stated band: slope in [-0.6, -0.4]
    assert gmax(comm, np.diff(rms)) < 0.0  # monotone decrease


def _max_mismatch(u_world, u_self) -> float:
    """Max |u_world - u_self| over u_world's owned dofs, matched by dof coordinates."""
    vw, vs = u_world.function_space, u_self.function_space
    n_own = vw.dofmap.index_map.size_local
    xw = vw.tabulate_dof_coordinates()[:n_own]
    dist, idx = cKDTree(vs.tabulate_dof_coordinates()).query(xw)
    assert dist.size == 0 or dist.max() < 1e-12
    return float(np.max(np.abs(u_world.x.array[:n_own] - u_self.x.array[idx]), initial=0.0))


def test_same_result_on_any_number_of_ranks(comm):
    allp = np.random.default_rng(4).random((8000, 2)) * 0.98 + 0.01
    mine = my_slice(allp, comm)
    meshes = {"world": mesh.create_unit_square(comm, 14, 14),
              "self": mesh.create_unit_square(MPI.COMM_SELF, 14, 14)}
    res = {}
    for key, msh in meshes.items():
        pts = mine if key == "world" else allp
        V = fem.functionspace(msh, ("Lagrange", 1))
        res[key] = (empirical_dg0_histogram(msh, pts), empirical_l2_projection(V, pts),
                    mollified_density(V, pts, 0.15, "bump"))
    mismatch = [_max_mismatch(w, s) for w, s in zip(res["world"], res["self"], strict=True)]
    scale = [gmax(comm, np.abs(s.x.array)) for s in res["self"]]
    assert gmax(comm, np.array(mismatch) / np.array(scale)) < 1e-10


def test_mollified_density_values_and_mass(comm):
    msh = mesh.create_unit_square(comm, 40, 40)
    V = fem.functionspace(msh, ("Lagrange", 1))
    eps, kernel = 0.1, "poly4"
    # Points in [0.3, 0.7]^2: every kernel support B(X_i, eps) lies inside the square.
    allp = 0.3 + 0.4 * np.random.default_rng(5).random((2000, 2))
    rho = mollified_density(V, my_slice(allp, comm), eps, kernel)
    n_own = V.dofmap.index_map.size_local
    nodes = V.tabulate_dof_coordinates()[:n_own, :2]
    direct = get_mollifier(kernel).value(nodes[:, None, :] - allp[None, :, :], eps).mean(axis=1)
    err_nodes = np.max(np.abs(rho.x.array[:n_own] - direct), initial=0.0)
    mass_err = abs(total(comm, rho) - 1)
    # Uniform points over the whole square: the kernels near the wall lose mass outside.
    leak = 1 - total(comm, mollified_density(
        V, my_slice(np.random.default_rng(6).random((4000, 2)), comm), eps, kernel))
    assert gmax(comm, err_nodes) < 1e-12 * gmax(comm, direct)
    assert gmax(comm, mass_err) < 1e-5  # interpolation error only, measured 5.6e-7
    assert gmax(comm, -leak) < -0.02  # ~ 4 eps * E[leak fraction near the wall], measured 0.05


def test_weighted_samples_and_moments(comm):
    msh = mesh.create_unit_square(comm, 16, 16)
    V = fem.functionspace(msh, ("Lagrange", 1))
    rho = fem.Function(V)
    rho.interpolate(lambda x: 1 + 0.5 * np.cos(np.pi * x[0]) * np.cos(np.pi * x[1]))
    pts, w = density_to_weighted_samples(rho, gather="all")
    m_fe, m_qs = density_moments(rho), moments(pts, w)
    root_pts, root_w = density_to_weighted_samples(rho, gather="root")
    errs = [m_qs.mass - total(comm, rho), m_qs.mass - m_fe.mass,
            *(m_qs.mean - m_fe.mean), *(m_qs.second - m_fe.second).ravel(),
            comm.allreduce(root_w.sum(), op=MPI.SUM) - m_fe.mass,
            comm.allreduce(root_pts.shape[0], op=MPI.SUM) - pts.shape[0]]
    # The constant density 1: mean 1/2, E[x^2] = 1/3, variance 1/12, no correlation.
    one = fem.Function(V)
    one.x.array[:] = 1.0
    m1 = density_moments(one)
    errs += [m1.mass - 1, *(m1.mean - 0.5), *(m1.covariance - np.eye(2) / 12).ravel()]
    assert gmax(comm, np.abs(errs)) < 1e-12


def test_lp_distance_closed_forms(comm):
    msh = mesh.create_unit_square(comm, 8, 8)
    x = ufl.SpatialCoordinate(msh)
    lin = fem.Function(fem.functionspace(msh, ("Lagrange", 1)))
    lin.interpolate(lambda p: p[0])
    half = fem.Function(fem.functionspace(msh, ("DG", 0)))
    half.x.array[:] = 0.5
    # ||x - 1/2||_2 = 1/sqrt(12), ||x - 1/2||_1 = 1/4 (kink on the mesh line x = 1/2).
    errs = [lp_distance(lin, half, 2) - 1 / math.sqrt(12), lp_distance(lin, half, 1) - 0.25,
            lp_distance(lin, x[0] ** 2, 2) - math.sqrt(1 / 3 - 2 / 4 + 1 / 5)]
    assert gmax(comm, np.abs(errs)) < 1e-12


def test_particles_to_density_distances_decrease(comm):
    # Particles of f against the FE density f_h: L1 (DG0 histogram), L2 (P1 projection) and
    # sliced W2 (quadrature sample of f_h) all decay like N^-1/2 (Monte Carlo), RMS of 2 runs.
    msh = mesh.create_unit_square(comm, 12, 12)
    rho = fem.Function(fem.functionspace(msh, ("Lagrange", 1)))
    rho.interpolate(lambda x: 1 + 0.5 * np.cos(np.pi * x[0]) * np.cos(np.pi * x[1]))
    qp, qw = density_to_weighted_samples(rho, gather="root")
    rng = np.random.default_rng(7)
    th = random_directions(2, 48, rng)
    ns = np.array([1000, 4000, 16000])
    out = {"dg0": [], "l2": [], "sw2": []}
    for n in ns:
        runs = {key: [] for key in out}
        for _ in range(2):
            allp = sample_density(int(n), rng)
            mine = my_slice(allp, comm)
            runs["dg0"].append(empirical_lp_distance(mine, rho, 1, "dg0"))
            runs["l2"].append(empirical_lp_distance(mine, rho, 2, "l2"))
            sw = (sliced_wasserstein(allp, qp, 2, wy=qw, directions=th)
                  if comm.rank == 0 else None)
            runs["sw2"].append(comm.bcast(sw, root=0))
        for key, vals in runs.items():
            out[key].append(math.sqrt(np.mean(np.square(vals))))
    slopes = [np.polyfit(np.log(ns), np.log(v), 1)[0] for v in out.values()]
    assert gmax(comm, np.abs(np.array(slopes) + 0.5)) < 0.2  # band: slopes in [-0.7, -0.3]
