"""Empirical measures on finite-element spaces, FE densities as weighted samples, FE distances.

An empirical measure ``mu_N = 1/N sum_i delta_{X_i}`` is given by its points, spread over the
ranks in any way (each rank passes the points it holds; ``N`` is the global count). The
projections below send each point to the rank owning the cell that contains it
(:func:`locate_points`, built on ``geometry.determine_point_ownership``) and return a
``fem.Function``; their result does not depend on the number of ranks, except for a point lying
exactly on a face shared by two cells, whose cell is then chosen by the partition (probability
zero for random points; it only matters for the DG0 histogram).

Mass conservation (total integral of the result, for points inside the mesh):

* :func:`empirical_dg0_histogram`: exactly ``N_inside / N`` (1 when every point is inside).
* :func:`empirical_l2_projection`: exactly ``N_inside / N`` up to the linear-solver
  tolerance, because Lagrange basis functions sum to one: ``int u_h = 1^T M u = 1^T b``.
* :func:`mollified_density`: ``V^eps * mu_N`` has mass 1 only when every kernel support
  ``B(X_i, eps)`` lies inside the domain (mass is lost across the wall otherwise), and its
  nodal interpolant only up to the interpolation error ``O((h / eps)^2)``.

Points outside the mesh: by default (``outside="raise"``) a ``ValueError`` gives their global
count; ``outside="drop"`` ignores them but keeps the normalisation ``1/N`` with ``N`` counting
all points, so the result has mass ``N_inside / N`` (mass that left the domain stays lost).

FE densities become weighted samples (quadrature points times quadrature weights) with
:func:`density_to_weighted_samples`, to be compared with particles by
:mod:`fem_crossdiff.particles.distances`. :func:`lp_distance` and :func:`empirical_lp_distance` give
``L^p`` distances (UFL integrals, summed over ranks), :func:`density_moments` the moments.
"""

from __future__ import annotations

from dataclasses import dataclass

import basix
import numpy as np
import ufl
from scipy.spatial import cKDTree

from fem_crossdiff.compat import MPI, PETSc, fem, geometry, la
from fem_crossdiff.mollifiers import get_mollifier
from fem_crossdiff.particles.distances import Moments
from fem_crossdiff.problem import wrapped_vectors

__all__ = [
    "LocatedPoints",
    "locate_points",
    "empirical_dg0_histogram",
    "empirical_l2_projection",
    "mollified_density",
    "density_to_weighted_samples",
    "lp_distance",
    "empirical_lp_distance",
    "density_moments",
    "exact_lp_error",
]

_OUTSIDE = ("raise", "drop")


def _as_points(points: np.ndarray, gdim: int) -> np.ndarray:
    x = np.asarray(points, dtype=np.float64)
    if x.ndim == 1 and gdim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[1] != gdim:
        raise ValueError(
            f"points must have shape (n, {gdim}) for this mesh, got shape {np.shape(points)}"
        )
    if not np.all(np.isfinite(x)):
        raise ValueError("points must be finite")
    return np.ascontiguousarray(x)


@dataclass(frozen=True)
class LocatedPoints:
    """Points moved to the ranks owning their cells.

    Attributes:
        points: Points owned by this rank, shape ``(k, 3)`` (padded with zeros to 3D).
        cells: Local (owned) indices of the cells containing them, shape ``(k,)``.
        n_global: Number of points given on all ranks together (``N``).
        n_outside: Number of those points outside the mesh, over all ranks.
    """

    points: np.ndarray
    cells: np.ndarray
    n_global: int
    n_outside: int


def locate_points(msh, points: np.ndarray, outside: str = "raise",
                  padding: float = 1e-10) -> LocatedPoints:
    """Send each point to the rank that owns the cell containing it (collective).

    Args:
        msh: The mesh (``tdim == gdim``).
        points: This rank's points, shape ``(n, gdim)`` (``(n,)`` allowed in 1D); any
            distribution over the ranks, including none at all on some ranks.
        outside: ``"raise"`` (default): a ValueError with the global count of points outside
            the mesh; ``"drop"``: ignore them (they are still counted in ``n_global``).
        padding: Absolute bounding-box padding for the ownership search; points within
            roughly this distance of the boundary count as inside.

    Returns:
        The :class:`LocatedPoints` of this rank.

    Raises:
        ValueError: for points outside the mesh when ``outside == "raise"`` (on all ranks).
    """
    if outside not in _OUTSIDE:
        raise ValueError(f"outside must be one of {_OUTSIDE}, got {outside!r}")
    comm = msh.comm
    x = _as_points(points, msh.geometry.dim)
    n_cells = msh.topology.index_map(msh.topology.dim).size_local
    # The C++ routine reads rows of 3 coordinates whatever its docstring says ((n, gdim)
    # arrays are silently misread), hence the zero padding.
    x3 = np.zeros((x.shape[0], 3))
    x3[:, : x.shape[1]] = x
    # Only owned cells, so that every point has exactly one owner even with ghosted meshes.
    own = geometry.determine_point_ownership(
        msh, x3, float(padding), np.arange(n_cells, dtype=np.int32)
    )
    n_global = comm.allreduce(x.shape[0], op=MPI.SUM)
    n_outside = comm.allreduce(int(np.count_nonzero(np.asarray(own.src_owner) < 0)), op=MPI.SUM)
    if n_outside and outside == "raise":
        raise ValueError(
            f"{n_outside} of {n_global} points lie outside the mesh; "
            "pass outside='drop' to ignore them"
        )
    pts = np.asarray(own.dest_points, dtype=np.float64).reshape(-1, 3)
    cells = np.asarray(own.dest_cells, dtype=np.int32)
    return LocatedPoints(pts, cells, int(n_global), int(n_outside))


def empirical_dg0_histogram(msh, points: np.ndarray, outside: str = "raise",
                            padding: float = 1e-10):
    """Cell histogram of ``mu_N`` on DG0: density ``count_K / (N |K|)`` on each cell ``K``.

    Conserves mass exactly: the integral is ``N_inside / N`` to rounding (1 when every point
    is inside). Collective.

    Args:
        msh: The mesh.
        points: This rank's points, shape ``(n, gdim)``.
        outside: ``"raise"`` or ``"drop"``, see :func:`locate_points`.
        padding: Bounding-box padding for the point search.

    Returns:
        A DG0 ``fem.Function``.
    """
    loc = locate_points(msh, points, outside, padding)
    W = fem.functionspace(msh, ("DG", 0))
    vol = fem.assemble_vector(fem.form(ufl.TestFunction(W) * ufl.dx))
    rho = fem.Function(W, name="histogram")
    if loc.n_global == 0:
        return rho
    n_cells = msh.topology.index_map(msh.topology.dim).size_local
    counts = np.bincount(loc.cells, minlength=n_cells).astype(np.float64)
    dofs = W.dofmap.list[:n_cells, 0]
    rho.x.array[dofs] = counts / (loc.n_global * vol.array[dofs])
    rho.x.scatter_forward()
    return rho


def _basis_values(V, cells: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Values of the cell basis functions of ``V`` at ``pts`` (in ``cells``): ``(k, ndofs)``."""
    msh = V.mesh
    gdim, tdim = msh.geometry.dim, msh.topology.dim
    geo = msh.geometry
    xg = geo.x[geo.dofmaps[0][cells]][:, :, :gdim]
    x = pts[:, :gdim]
    affine = geo.cmaps[0].degree == 1 and msh.topology.cell_name() in (
        "interval", "triangle", "tetrahedron")
    if affine:
        # x = v0 + sum_k xi_k (v_k - v0) on affine simplices: a batch of small solves.
        jac = np.transpose(xg[:, 1:, :] - xg[:, :1, :], (0, 2, 1))
        xi = np.linalg.solve(jac, (x - xg[:, 0, :])[:, :, None])[:, :, 0]
    else:
        xi = np.empty((x.shape[0], tdim))
        for c in np.unique(cells):
            sel = np.flatnonzero(cells == c)
            xi[sel] = geo.cmaps[0].pull_back(x[sel], xg[sel[0]])
    return V.element.basix_element.tabulate(0, xi)[0, :, :, 0]


def _check_scalar_lagrange(V) -> None:
    if len(V.value_shape) != 0:
        raise ValueError(f"V must be a scalar space, got value shape {V.value_shape}")
    if V.element.needs_dof_transformations:
        raise ValueError("V needs dof transformations; use a Lagrange space of degree <= 2")
    if V.mesh.geometry.dim != V.mesh.topology.dim:
        raise ValueError("manifold meshes (gdim > tdim) are not supported")


def empirical_l2_projection(V, points: np.ndarray, outside: str = "raise",
                            padding: float = 1e-10, rtol: float = 1e-14,
                            pc_type: str = "jacobi"):
    """Exact L2 projection of ``mu_N`` onto a Lagrange space ``V`` (typically P1).

    Solves ``M u = b`` with ``b_j = 1/N sum_i phi_j(X_i)`` (each point handled by the rank owning
    its cell, contributions to shared dofs summed over ranks) by CG with a Jacobi (or GAMG)
    preconditioner to relative residual ``rtol``. Conserves mass exactly up to that tolerance,
    since ``sum_j phi_j = 1``: ``int u = 1^T M u = 1^T b = N_inside / N``. The projection of a
    point mass is not positive (it oscillates), so clip before using it as a measure.

    Args:
        V: Scalar Lagrange function space (no dof transformations: degree 1 or 2).
        points: This rank's points, shape ``(n, gdim)``.
        outside: ``"raise"`` or ``"drop"``, see :func:`locate_points`.
        padding: Bounding-box padding for the point search.
        rtol: Relative residual tolerance of CG.
        pc_type: PETSc preconditioner, ``"jacobi"`` or ``"gamg"``.

    Returns:
        The projection as a ``fem.Function`` on ``V``.

    Raises:
        RuntimeError: if CG does not converge.
    """
    _check_scalar_lagrange(V)
    if pc_type not in ("jacobi", "gamg"):
        raise ValueError(f"pc_type must be 'jacobi' or 'gamg', got {pc_type!r}")
    if not 0.0 < rtol < 1.0:
        raise ValueError(f"rtol must be in (0, 1), got {rtol!r}")
    loc = locate_points(V.mesh, points, outside, padding)
    rhs = fem.Function(V)
    if loc.cells.size:
        phi = _basis_values(V, loc.cells, loc.points)
        dofs = V.dofmap.list[loc.cells]
        np.add.at(rhs.x.array, dofs.ravel(), phi.ravel() / loc.n_global)
    rhs.x.scatter_reverse(la.InsertMode.add)
    rhs.x.scatter_forward()

    u, v = ufl.TrialFunction(V), ufl.TestFunction(V)
    mass = fem.petsc.assemble_matrix(fem.form(u * v * ufl.dx))
    mass.assemble()
    uh = fem.Function(V, name="l2_projection")
    ksp = PETSc.KSP().create(V.mesh.comm)
    try:
        ksp.setOperators(mass)
        ksp.setType("cg")
        ksp.getPC().setType(pc_type)
        ksp.setTolerances(rtol=rtol, atol=0.0, max_it=5000)
        with wrapped_vectors(rhs.x, uh.x) as (b, x):
            ksp.solve(b, x)
        reason, its = ksp.getConvergedReason(), ksp.getIterationNumber()
    finally:
        ksp.destroy()
        mass.destroy()
    if reason <= 0:
        raise RuntimeError(f"mass-matrix CG did not converge (reason {reason}, {its} its)")
    uh.x.scatter_forward()
    return uh


def mollified_density(V, points: np.ndarray, eps: float, kernel: str = "poly4"):
    """Nodal values ``u(x_j) = 1/N sum_i V^eps(x_j - X_i)`` of ``V^eps * mu_N`` on a Lagrange space.

    Each rank sends its points only to the ranks whose owned-node bounding box, widened by
    ``eps``, contains them (boxes are exchanged, points go point-to-point; no rank receives
    all points), then sums the kernel over the points within ``eps`` of each owned node with a
    ``cKDTree``. Points need not lie inside the mesh. Mass: ``V^eps * mu_N`` has mass 1 only if
    every ball ``B(X_i, eps)`` lies inside the domain (mass leaks through the wall otherwise),
    and the interpolant only up to ``O((h / eps)^2)``.

    Args:
        V: Scalar Lagrange function space.
        points: This rank's points, shape ``(n, gdim)``.
        eps: Kernel radius ``> 0``.
        kernel: Name of a kernel of :mod:`fem_crossdiff.mollifiers` (``"bump"``, ``"poly4"``).

    Returns:
        The interpolant as a ``fem.Function`` on ``V``.
    """
    _check_scalar_lagrange(V)
    moll = get_mollifier(kernel)
    eps = float(eps)
    if not (eps > 0.0 and np.isfinite(eps)):
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
    comm = V.mesh.comm
    gdim = V.mesh.geometry.dim
    x = _as_points(points, gdim)
    n_global = comm.allreduce(x.shape[0], op=MPI.SUM)
    n_owned = V.dofmap.index_map.size_local * V.dofmap.index_map_bs
    nodes = V.tabulate_dof_coordinates()[:n_owned, :gdim]
    if n_owned:
        box = np.concatenate([nodes.min(axis=0) - eps, nodes.max(axis=0) + eps])
    else:
        box = np.concatenate([np.full(gdim, np.inf), np.full(gdim, -np.inf)])
    boxes = comm.allgather(box)

    send = []
    for b in boxes:
        inside = np.all((x >= b[:gdim]) & (x <= b[gdim:]), axis=1)
        send.append(np.ascontiguousarray(x[inside]))
    counts = comm.alltoall([s.shape[0] for s in send])
    recv = [np.empty((c, gdim)) for c in counts]
    reqs = []
    for r in range(comm.size):
        if r == comm.rank:
            recv[r] = send[r]
            continue
        if counts[r]:
            reqs.append(comm.Irecv(recv[r], source=r, tag=7101))
        if send[r].shape[0]:
            reqs.append(comm.Isend(send[r], dest=r, tag=7101))
    MPI.Request.Waitall(reqs)
    near = np.concatenate(recv, axis=0)

    rho = fem.Function(V, name="mollified")
    if n_owned and near.shape[0]:
        pairs = cKDTree(nodes).sparse_distance_matrix(cKDTree(near), eps, output_type="ndarray")
        vals = moll.radial(pairs["v"], eps, gdim)
        rho.x.array[:n_owned] = np.bincount(pairs["i"], weights=vals, minlength=n_owned)
        rho.x.array[:n_owned] /= n_global
    rho.x.scatter_forward()
    return rho


def _quadrature_degree(rho, extra: int = 0) -> int:
    return int(rho.function_space.ufl_element().embedded_superdegree) + extra


def density_to_weighted_samples(rho, quadrature_degree: int | None = None,
                                gather: str = "root",
                                clip_negative: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Turn an FE density into a weighted sample: quadrature points and ``rho(x_q) w_q |det J|``.

    The weights integrate ``rho`` exactly on affine cells when ``quadrature_degree >=`` the
    degree of ``rho``; default: that degree + 2 (more points, a finer representation of the
    measure). The set of (point, weight) pairs does not depend on the partition; its order does.

    Args:
        rho: Scalar ``fem.Function``.
        quadrature_degree: Degree of the basix quadrature rule on each cell.
        gather: ``"root"`` (default): everything on rank 0, empty arrays elsewhere; ``"all"``:
            the full sample on every rank; ``"none"``: each rank keeps its owned cells' part.
        clip_negative: Set negative weights (undershoots of the FE density) to 0, which
            changes the mass; otherwise they are returned as they are (and the distances of
            :mod:`fem_crossdiff.particles.distances` reject them).

    Returns:
        ``(points (n, gdim), weights (n,))``.
    """
    if gather not in ("root", "all", "none"):
        raise ValueError(f"gather must be 'root', 'all' or 'none', got {gather!r}")
    msh = rho.function_space.mesh
    gdim, tdim = msh.geometry.dim, msh.topology.dim
    if gdim != tdim:
        raise ValueError("manifold meshes (gdim > tdim) are not supported")
    q = _quadrature_degree(rho, 2) if quadrature_degree is None else int(quadrature_degree)
    if q < 0:
        raise ValueError(f"quadrature_degree must be >= 0, got {quadrature_degree!r}")
    cell = getattr(basix.CellType, msh.topology.cell_name())
    xq, wq = basix.make_quadrature(cell, q)
    cells = np.arange(msh.topology.index_map(tdim).size_local, dtype=np.int32)
    pts = fem.Expression(ufl.SpatialCoordinate(msh), xq).eval(msh, cells).reshape(-1, gdim)
    vals = fem.Expression(rho, xq).eval(msh, cells).reshape(cells.size, -1)
    det = fem.Expression(abs(ufl.JacobianDeterminant(msh)), xq).eval(msh, cells)
    w = (vals * det.reshape(cells.size, -1) * wq[None, :]).ravel()
    if clip_negative:
        w = np.maximum(w, 0.0)
    if gather == "none":
        return pts, w
    comm = msh.comm
    if gather == "all":
        return np.concatenate(comm.allgather(pts)), np.concatenate(comm.allgather(w))
    all_pts, all_w = comm.gather(pts, root=0), comm.gather(w, root=0)
    if comm.rank == 0:
        return np.concatenate(all_pts), np.concatenate(all_w)
    return np.empty((0, gdim)), np.empty(0)


def _integrate(msh, expr, degree: int) -> float:
    dx = ufl.Measure("dx", domain=msh, metadata={"quadrature_degree": int(degree)})
    local = fem.assemble_scalar(fem.form(expr * dx))
    return float(msh.comm.allreduce(local, op=MPI.SUM))


def lp_distance(rho1, rho2, p: float = 2.0, quadrature_degree: int | None = None) -> float:
    """``||rho1 - rho2||_{L^p}`` on the mesh of ``rho1`` (collective, summed over ranks).

    Args:
        rho1: ``fem.Function``.
        rho2: ``fem.Function`` on the same mesh (any space) or a UFL expression on it, e.g. an
            exact density written with ``ufl.SpatialCoordinate``.
        p: ``p >= 1``.
        quadrature_degree: Quadrature degree; default ``p *`` (largest degree) ``+ 2``. For
            ``p = 1`` the integrand ``|rho1 - rho2|`` has kinks inside cells, which quadrature
            resolves only approximately unless they lie on cell boundaries.

    Returns:
        The distance.
    """
    p = float(p)
    if not (p >= 1.0 and np.isfinite(p)):
        raise ValueError(f"p must be a finite number >= 1, got {p!r}")
    msh = rho1.function_space.mesh
    deg = _quadrature_degree(rho1)
    if isinstance(rho2, fem.Function):
        if rho2.function_space.mesh is not msh:
            raise ValueError("rho1 and rho2 must live on the same mesh")
        deg = max(deg, _quadrature_degree(rho2))
    q = int(np.ceil(p * deg)) + 2 if quadrature_degree is None else int(quadrature_degree)
    diff = rho1 - rho2
    # Even integer powers need no abs (smooth integrand, exact quadrature for polynomials).
    val = _integrate(msh, diff * diff if p == 2.0 else abs(diff) ** p, q)
    return max(val, 0.0) ** (1.0 / p)


def empirical_lp_distance(points: np.ndarray, rho, p: float = 2.0, projection: str = "l2",
                          outside: str = "raise",
                          quadrature_degree: int | None = None) -> float:
    """``L^p`` distance between a particle cloud (projected on the mesh of ``rho``) and ``rho``.

    Args:
        points: This rank's points, shape ``(n, gdim)``.
        rho: ``fem.Function`` density.
        p: ``p >= 1``.
        projection: ``"dg0"`` (:func:`empirical_dg0_histogram`) or ``"l2"``
            (:func:`empirical_l2_projection` onto P1).
        outside: ``"raise"`` or ``"drop"``, see :func:`locate_points`.
        quadrature_degree: Passed to :func:`lp_distance`.

    Returns:
        The distance (collective).
    """
    msh = rho.function_space.mesh
    if projection == "dg0":
        proj = empirical_dg0_histogram(msh, points, outside)
    elif projection == "l2":
        proj = empirical_l2_projection(fem.functionspace(msh, ("Lagrange", 1)), points, outside)
    else:
        raise ValueError(f"projection must be 'dg0' or 'l2', got {projection!r}")
    return lp_distance(proj, rho, p, quadrature_degree)


def density_moments(rho, quadrature_degree: int | None = None) -> Moments:
    """Mass, mean, second moment and covariance of an FE density (UFL integrals, collective).

    Args:
        rho: Scalar ``fem.Function``.
        quadrature_degree: Default: degree of ``rho`` + 2 (exact on affine cells).

    Returns:
        :class:`fem_crossdiff.particles.distances.Moments`, mean and second moment normalised
        by the mass.
    """
    msh = rho.function_space.mesh
    gdim = msh.geometry.dim
    q = _quadrature_degree(rho, 2) if quadrature_degree is None else int(quadrature_degree)
    x = ufl.SpatialCoordinate(msh)
    mass = _integrate(msh, rho, q)
    mean = np.array([_integrate(msh, x[i] * rho, q) for i in range(gdim)]) / mass
    second = np.array([[_integrate(msh, x[i] * x[j] * rho, q) for j in range(gdim)]
                       for i in range(gdim)]) / mass
    return Moments(mass, mean, second, second - np.outer(mean, mean))


def _collapsed_rule(tdim: int, s: int, q: int) -> tuple[np.ndarray, np.ndarray]:
    """Composite rule on the reference simplex: barycentric points ``(N, tdim+1)``, weights.

    ``s`` sub-intervals per axis of the unit cube with ``q`` Gauss-Legendre points each, mapped
    onto the simplex by the collapsed (Duffy) map ``x = a, y = b (1-a), z = c (1-a)(1-b)``.
    The map is polynomial, so the rule converges like a composite rule also for integrands
    with kinks inside the cell (where a single high-degree rule stalls at O(1) relative error).
    """
    g, gw = np.polynomial.legendre.leggauss(q)
    t = ((np.arange(s)[:, None] + 0.5 * (g[None, :] + 1.0)) / s).ravel()
    tw = np.tile(0.5 * gw / s, s)
    axes = np.meshgrid(*([t] * tdim), indexing="ij")
    wts = np.meshgrid(*([tw] * tdim), indexing="ij")
    a = [ax.ravel() for ax in axes]
    w = np.prod([wt.ravel() for wt in wts], axis=0)
    if tdim == 1:
        x = [a[0]]
    elif tdim == 2:
        x, w = [a[0], a[1] * (1 - a[0])], w * (1 - a[0])
    else:
        x = [a[0], a[1] * (1 - a[0]), a[2] * (1 - a[0]) * (1 - a[1])]
        w = w * (1 - a[0]) ** 2 * (1 - a[1])
    bary = np.column_stack([1.0 - np.sum(x, axis=0), *x])
    return bary, w


def exact_lp_error(u, exact, p: float = 1.0, subdivisions: int | None = None,
                   degree: int = 3, where=None) -> float:
    """``||u - exact||_{L^p}`` of a P1 function against an exact profile (collective).

    Unlike :func:`lp_distance` against the interpolant of ``exact``, this measures the error
    against the profile itself, including the best-approximation error of P1. Profiles with
    compact support (Barenblatt) are not smooth at the edge of their support, where a
    single Gauss rule would err by as much as the quantity measured: the cells where
    ``exact`` is zero at some test points (vertices and Gauss points) and positive at others
    get a composite rule of ``subdivisions`` per axis (default 64 / 16 / 4 in 1D / 2D / 3D),
    every other cell a ``degree``-point Gauss rule per axis (collapsed to the simplex).

    Args:
        u: Scalar P1 ``fem.Function`` on affine simplices.
        exact: Callable ``x (3, N) -> (N,)`` (the convention of ``Function.interpolate``),
            vectorised; it may be non-smooth only where it vanishes.
        p: ``p >= 1``.
        subdivisions: Sub-intervals per axis of the composite rule in the flagged cells.
        degree: Gauss points per axis and sub-interval.
        where: Optional callable ``x (3, N) -> bool (N,)``: integrate only where it holds
            (e.g. away from a front; cells cut by its boundary get the plain Gauss rule).

    Returns:
        The distance, summed over the owned cells of every rank.
    """
    p = float(p)
    if not (p >= 1.0 and np.isfinite(p)):
        raise ValueError(f"p must be a finite number >= 1, got {p!r}")
    V = u.function_space
    msh = V.mesh
    tdim = msh.topology.dim
    if V.element.basix_element.degree != 1 or V.dofmap.index_map_bs != 1:
        raise ValueError("exact_lp_error needs a scalar P1 function")
    if msh.geometry.dim != tdim or msh.topology.cell_name() not in (
            "interval", "triangle", "tetrahedron"):
        raise ValueError("exact_lp_error needs affine simplices with gdim == tdim, got "
                         f"{msh.topology.cell_name()} in {msh.geometry.dim}D")
    s = subdivisions or {1: 64, 2: 16, 3: 4}[tdim]
    ncells = msh.topology.index_map(tdim).size_local
    dofs = V.dofmap.list[:ncells]
    X = V.tabulate_dof_coordinates()
    xc, vals = X[dofs], u.x.array[dofs]  # (nc, tdim+1, 3), (nc, tdim+1)
    E = xc[:, 1:, :tdim] - xc[:, :1, :tdim]  # gdim == tdim
    det = np.abs(np.linalg.det(E)) if tdim > 1 else np.abs(E[:, 0, 0])

    def integrate(cells, bary, w):
        total = 0.0
        for lo in range(0, cells.size, max(1, 2_000_000 // bary.shape[0])):
            c = cells[lo: lo + max(1, 2_000_000 // bary.shape[0])]
            pts = np.einsum("qv,cvg->cqg", bary, xc[c])
            ex = np.asarray(exact(pts.reshape(-1, 3).T)).reshape(c.size, -1)
            diff = np.abs(vals[c] @ bary.T - ex) ** p
            if where is not None:
                diff *= np.asarray(where(pts.reshape(-1, 3).T)).reshape(c.size, -1)
            total += float(np.sum(diff @ w * det[c]))
        return total

    bary, w = _collapsed_rule(tdim, 1, degree)
    test = np.concatenate([np.eye(tdim + 1), bary])
    ex = np.asarray(exact(np.einsum("qv,cvg->cqg", test, xc).reshape(-1, 3).T))
    ex = ex.reshape(ncells, -1)
    front = np.any(ex <= 0.0, axis=1) & np.any(ex > 0.0, axis=1)
    local = integrate(np.flatnonzero(~front), bary, w)
    local += integrate(np.flatnonzero(front), *_collapsed_rule(tdim, s, degree))
    return float(msh.comm.allreduce(local, op=MPI.SUM)) ** (1.0 / p)
