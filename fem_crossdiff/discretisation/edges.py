"""P1 edge weights on simplices and the positivity limiter of negative-weight edges.

Scheme independent: the stiffness weights ``w_ij = -K_ij`` (:func:`p1_edge_weights`), the
circumcentric (Voronoi) dual weights of tetrahedral meshes (:func:`circumcentric_weights`,
:func:`dual_volumes`), their sums over the ranks (:func:`total_edge_weights`), the treatment
of edges of negative total weight (:func:`edge_weights`, the modes of
:data:`fem_crossdiff.params.NEGATIVE_EDGE_MODES`) and the flux limiter that keeps positivity on
them (:func:`positivity_limiter`). Every edge-flux model builds on these.
"""

from __future__ import annotations

import numpy as np

from fem_crossdiff.compat import MPI, PETSc, fem, la
from fem_crossdiff.errors import ParameterError
from fem_crossdiff.params import NEGATIVE_EDGE_MODES


def p1_cell_gradients(V: fem.FunctionSpace):
    """Owned cells' vertex dofs, dof coordinates, P1 basis gradients and cell volumes.

    Returns:
        ``(dofs, X, grads, vol)``: ``(ncells, tdim+1)`` local block indices, ``(nloc, gdim)``
        coordinates, ``(ncells, tdim+1, gdim)`` gradients of the barycentric coordinates and
        ``(ncells,)`` volumes. Requires affine simplex cells and a P1 space.
    """
    msh = V.mesh
    tdim = msh.topology.dim
    el = V.element.basix_element
    if el.degree != 1 or msh.topology.cell_name() not in ("interval", "triangle", "tetrahedron"):
        raise ValueError(
            "the upwind scheme needs P1 on simplices (interval, triangle, tetrahedron); got "
            f"degree {el.degree} on {msh.topology.cell_name()}: use scheme='galerkin'"
        )
    ncells = msh.topology.index_map(tdim).size_local
    dofs = V.dofmap.list[:ncells]
    X = V.tabulate_dof_coordinates()[:, : msh.geometry.dim]
    xc = X[dofs]  # (ncells, tdim+1, gdim)
    E = np.transpose(xc[:, 1:, :] - xc[:, :1, :], (0, 2, 1))  # (ncells, gdim, tdim)
    EtE = np.einsum("cgi,cgj->cij", E, E)
    Ginv = np.linalg.solve(EtE, np.transpose(E, (0, 2, 1)))  # rows: grad of lambda_1..tdim
    grads = np.concatenate([-Ginv.sum(axis=1, keepdims=True), Ginv], axis=1)
    vol = np.sqrt(np.linalg.det(EtE)) / np.prod(np.arange(1, tdim + 1))
    return dofs, X, grads, vol


def p1_edge_weights(V: fem.FunctionSpace) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Edges ``(i, j)`` (local block indices, ``i < j``) and weights ``w_ij = -K_ij``.

    ``K`` is the P1 stiffness matrix restricted to this rank's owned cells (summing over ranks
    gives the global ``K``). Requires affine simplex cells and a P1 space.
    """
    dofs, X, grads, vol = p1_cell_gradients(V)
    tdim = dofs.shape[1] - 1
    K = vol[:, None, None] * np.einsum("cpg,cqg->cpq", grads, grads)
    p, q = np.triu_indices(tdim + 1, k=1)
    I = dofs[:, p].ravel()
    J = dofs[:, q].ravel()
    w = -K[:, p, q].ravel()
    lo, hi = np.minimum(I, J), np.maximum(I, J)
    nloc = X.shape[0]
    keys, inv = np.unique(lo.astype(np.int64) * nloc + hi, return_inverse=True)
    W = np.bincount(inv, weights=w, minlength=keys.size)
    return (keys // nloc).astype(np.int32), (keys % nloc).astype(np.int32), W


def _triangle_circumcentres(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Circumcentres ``(N, 3)`` of the triangles ``(a, b, c)`` in 3D (closed form)."""
    u, v = b - a, c - a
    w = np.cross(u, v)
    num = (np.einsum("cg,cg->c", u, u)[:, None] * np.cross(v, w)
           + np.einsum("cg,cg->c", v, v)[:, None] * np.cross(w, u))
    return a + num / (2.0 * np.einsum("cg,cg->c", w, w))[:, None]


def _tetrahedron_circumcentres(xc: np.ndarray) -> np.ndarray:
    """Circumcentres ``(N, 3)`` of the tetrahedra ``xc`` ``(N, 4, 3)`` (closed form)."""
    a = xc[:, 0]
    u, v, w = xc[:, 1] - a, xc[:, 2] - a, xc[:, 3] - a
    sq = [np.einsum("cg,cg->c", e, e)[:, None] for e in (u, v, w)]
    num = sq[0] * np.cross(v, w) + sq[1] * np.cross(w, u) + sq[2] * np.cross(u, v)
    return a + num / (2.0 * np.einsum("cg,cg->c", u, np.cross(v, w)))[:, None]


def circumcentric_weights(V: fem.FunctionSpace):
    """Two-point weights of the circumcentric (Voronoi) dual of a tetrahedral mesh.

    Each tetrahedron ``T`` gives edge ``ij`` the signed area of its part of the dual face,
    the quadrilateral (midpoint of ``ij``, circumcentres of the two faces through ``ij``,
    circumcentre of ``T``), divided by ``|x_j - x_i|``; node ``i`` gets the dual volume
    ``w_ij |x_j - x_i|^2 / 6`` of each of its edges (a pyramid over the face, height half the
    edge). On a Delaunay mesh the pieces of an interior edge add up to its Voronoi face, so
    its weight is ``>= 0`` by construction (unlike ``-K_ij``, which is negative on about a
    quarter of the edges of a Delaunay ball), and ``sum_j w_ij (x_j - x_i) = 0`` at interior
    nodes (the dual cell is closed); the dual volumes partition the domain. Boundary edges
    whose tetrahedra have circumcentres outside can still get ``w_ij < 0``.

    The two-point scheme with these weights is consistent with the dual volumes as lumped
    masses (not with P1's ``|supp phi_i| / 4``).

    Args:
        V: Scalar or blocked P1 space on tetrahedra.

    Returns:
        ``(I, J, W, vol)``: the edges of :func:`p1_edge_weights` (same order), their partial
        weights and the partial dual volumes of the local nodes, both from this rank's owned
        cells (summed over ranks they are the mesh's).
    """
    dofs, X, _, _ = p1_cell_gradients(V)
    if dofs.shape[1] != 4 or X.shape[1] != 3:
        raise ValueError("circumcentric_weights needs tetrahedra in 3D")
    xc = X[dofs]
    cT = _tetrahedron_circumcentres(xc)
    # circumcentre of the face opposite each vertex (each face serves three edges)
    cF = [_triangle_circumcentres(*(xc[:, c] for c in range(4) if c != o)) for o in range(4)]
    nloc = X.shape[0]
    ends, vals, lens = [], [], []
    for a, b in ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)):
        k, l = (c for c in range(4) if c not in (a, b))
        xa, xb, xk, xl = xc[:, a], xc[:, b], xc[:, k], xc[:, l]
        mid = 0.5 * (xa + xb)
        c1, c2 = cF[l], cF[k]  # the faces (a, b, k) and (a, b, l)
        e = xb - xa
        le = np.linalg.norm(e, axis=1)
        # signed area along the edge direction of the triangles (mid, c1, cT) and (mid, cT, c2),
        # oriented so that a tetrahedron containing its circumcentre gives a positive area
        area = 0.5 * np.einsum("cg,cg->c", np.cross(c1 - mid, cT - mid)
                               + np.cross(cT - mid, c2 - mid), e) / le
        orient = np.sign(np.einsum("cg,cg->c", np.cross(xk - mid, xl - mid), e))
        ends.append((dofs[:, a], dofs[:, b]))
        vals.append(area * orient / le)
        lens.append(le)
    I = np.concatenate([p for p, _ in ends]).astype(np.int64)
    J = np.concatenate([q for _, q in ends]).astype(np.int64)
    w = np.concatenate(vals)
    le = np.concatenate(lens)
    keys, inv = np.unique(np.minimum(I, J) * nloc + np.maximum(I, J), return_inverse=True)
    W = np.bincount(inv, weights=w, minlength=keys.size)
    if not np.all(np.isfinite(W)):  # a flat cell has no circumcentre
        raise ValueError("circumcentric_weights: a tetrahedron of zero volume has no "
                         "circumcentre; use negative_edges='front'")
    piece = w * le * le / 6.0  # each end of the edge gets this part of its dual cell
    vol = np.bincount(I, piece, nloc) + np.bincount(J, piece, nloc)
    return (keys // nloc).astype(np.int32), (keys % nloc).astype(np.int32), W, vol


def dual_volumes(V: fem.FunctionSpace) -> np.ndarray:
    """Volumes of the circumcentric dual cells of the owned vertices (collective).

    The partial volumes of :func:`circumcentric_weights` (this rank's owned cells) summed over
    the ranks by a reverse scatter, so the result does not depend on the partition. They sum
    to the volume of the mesh; a vertex whose dual cell is not star-shaped (boundary
    tetrahedra with their circumcentre outside, non-Delaunay edges) can get a small or
    negative volume (none on gmsh's balls: at least 0.6 of P1's lumped mass, measured).

    Args:
        V: Scalar P1 space on tetrahedra.

    Returns:
        ``(size_local,)`` volumes of the owned vertices.
    """
    vol = circumcentric_weights(V)[3]
    imap = V.dofmap.index_map
    vec = la.vector(imap, 1)
    vec.array[:] = vol
    vec.scatter_reverse(la.InsertMode.add)
    return vec.array[: imap.size_local].copy()


def total_edge_weights(V: fem.FunctionSpace, I: np.ndarray, J: np.ndarray,
                       W: np.ndarray) -> np.ndarray:
    """Sum the per-rank partial weights of every local edge over all ranks (collective).

    The partial weights are added into a distributed PETSc matrix (COO assembly, off-process
    entries communicated by PETSc), and each rank reads back the rows of its owned and ghost
    vertices with ``MatCreateSubMatrices``: only neighbouring data moves.
    """
    comm = V.mesh.comm
    imap = V.dofmap.index_map
    nown, nloc = imap.size_local, imap.size_local + imap.num_ghosts
    gidx = imap.local_to_global(np.arange(nloc, dtype=np.int32)).astype(PETSc.IntType)
    A = PETSc.Mat().create(comm=comm)
    A.setSizes(((nown, imap.size_global), (nown, imap.size_global)))
    A.setType(PETSc.Mat.Type.AIJ)
    rows = np.concatenate([gidx[I], gidx[J]]).astype(PETSc.IntType)
    cols = np.concatenate([gidx[J], gidx[I]]).astype(PETSc.IntType)
    A.setPreallocationCOO(rows, cols)
    A.setValuesCOO(np.concatenate([W, W]), addv=PETSc.InsertMode.ADD_VALUES)
    A.assemble()
    order = np.argsort(gidx)
    pos = np.empty(nloc, dtype=np.int64)
    pos[order] = np.arange(nloc)
    iset = PETSc.IS().createGeneral(gidx[order], comm=PETSc.COMM_SELF)
    (S,) = A.createSubMatrices(iset, iset)
    indptr, indices, data = S.getValuesCSR()
    from scipy.sparse import csr_matrix

    csr = csr_matrix((data, indices, indptr), shape=(nloc, nloc))
    total = np.asarray(csr[pos[I], pos[J]]).ravel()
    for obj in (S, iset, A):
        obj.destroy()
    return total


def edge_weights(V: fem.FunctionSpace, negative_edges: str = "voronoi"):
    """Edges, partial weights, and the edges of negative *total* weight.

    On non-Delaunay meshes (common for tetrahedra: about a quarter of the edges of a gmsh
    ball) some ``w_ij = -K_ij`` are negative and the M-matrix argument for positivity fails.
    The sign is decided on the weight summed over ranks, so the treatment is partition
    independent.

    Args:
        V: Blocked or scalar P1 space.
        negative_edges: One of :data:`NEGATIVE_EDGE_MODES`.

    Returns:
        ``(I, J, W, limited, count)``: local edges, partial weights (zero on dropped edges),
        the indices of the edges whose fluxes are to be limited (empty for ``"drop"`` and
        ``"keep"``), and the (approximate) global count of edges with negative total
        weight. With ``"voronoi"`` on tetrahedra the weights are
        :func:`circumcentric_weights` (negative only on the few boundary or non-Delaunay
        edges, which are limited as in ``"front"``), else ``-K_ij``.
    """
    if negative_edges not in NEGATIVE_EDGE_MODES:
        raise ParameterError("negative_edges", negative_edges,
                             f"one of {', '.join(NEGATIVE_EDGE_MODES)}")
    if negative_edges == "voronoi" and V.mesh.topology.dim == 3:
        I, J, W, _ = circumcentric_weights(V)
    else:  # in 2D the circumcentric dual's weights are P1's (cotangent formula); 1D: equal
        I, J, W = p1_edge_weights(V)
    total = total_edge_weights(V, I, J, W)
    scale = V.mesh.comm.allreduce(float(np.abs(total).max(initial=0.0)), op=MPI.MAX)
    neg = total < -1e-12 * scale
    owned = I < V.dofmap.index_map.size_local  # a diagnostic count, not exact across ranks
    count = V.mesh.comm.allreduce(int(np.count_nonzero(neg & owned)))
    if negative_edges == "drop":
        W = np.where(neg, 0.0, W)
    limited = (np.flatnonzero(neg) if limiter_ratio(negative_edges) > 0.0
               else np.empty(0, dtype=np.int64))
    return I, J, W, limited, count


def negative_edges_message(count: int, mode: str) -> str | None:
    """The log line about a non-Delaunay mesh (``None`` when every weight is >= 0)."""
    if not count:
        return None
    if mode == "voronoi":
        return (f"about {count} edges have a negative circumcentric dual weight (boundary or "
                "non-Delaunay); their fluxes are limited next to vacuum fronts")
    what = {"limit": "their fluxes are limited where they leave the emptier node",
            "front": "their fluxes are limited next to vacuum fronts to keep positivity",
            "drop": "they are left out of the fluxes (positive, not consistent)",
            "keep": "positivity is not guaranteed there"}[mode]
    return f"mesh is not Delaunay: about {count} edges have negative stiffness weight; {what}"


#: Ratio ``beta`` of :func:`positivity_limiter` per limiting mode of ``negative_edges``.
LIMITER_RATIO = {"limit": 1.0, "front": 0.25, "voronoi": 0.25}


def limiter_ratio(negative_edges: str) -> float:
    """The ``beta`` of :func:`positivity_limiter` for a ``negative_edges`` mode (0: no limiter)."""
    return LIMITER_RATIO.get(negative_edges, 0.0)


def positivity_limiter(q: np.ndarray, ri: np.ndarray, rj: np.ndarray, beta: float = 1.0):
    """Flux limiter of the edges with negative total weight, and its derivatives.

    On such an edge the flux ``G_k,ij = w_ij q_k`` (``w_ij < 0``, ``q_k`` the edge quantity:
    pressure and diffusion differences) moves mass *against* the gradient, so it can empty a
    node. It is replaced by ``theta_k G_k,ij`` with, for the source node ``s`` (the node the
    mass leaves: ``i`` where ``q_k < 0``) and the other node ``o``:

        theta_k = 1                          if rho_s >= beta rho_o and rho_s > 0,
        theta_k = rho_s^+ / (beta rho_o^+)   if rho_s < beta rho_o,
        theta_k = 0                          if rho_s <= 0.

    Why this keeps positivity (any ``0 < beta <= 1``): at a node where ``rho_k`` is minimal
    and negative every limited outflow vanishes (``theta = 0``), and the unlimited fluxes
    (nonnegative weights) cannot lower it either, so the implicit step leaves no negative
    minimum. ``theta`` is symmetric in the edge, so mass is still conserved exactly.

    Why ``beta`` matters for accuracy. With ``beta = 1`` (mode ``"limit"``) the limiter acts
    on almost every negative edge, since the flux there runs from the emptier node to the
    fuller one: ``theta = 1 - O(h |grad rho| / rho)`` changes each edge flux (``O(h^(d-1))``)
    by a relative ``O(h)``, the size of the whole discrete Laplacian at a node (``O(h^d)``),
    so the local truncation error is ``O(1)``. With ``beta < 1`` (mode ``"front"``,
    ``beta = 1/4``) ``theta = 1`` wherever the two ends differ by less than a factor
    ``1 / beta``: the consistent weights are used unchanged on smooth positive data, and the
    limiter acts only in the few cells next to a vacuum front (an ``O(h)`` band).

    Args:
        q: Edge quantities ``(E, n)`` (the sign gives the direction of the total flux).
        ri: Densities at the first ends ``(E, n)``.
        rj: Densities at the second ends ``(E, n)``.
        beta: Ratio ``0 < beta <= 1`` below which the flux is limited.

    Returns:
        ``(theta, dtheta_i, dtheta_j)``, each ``(E, n)``.
    """
    # q = 0 (an empty upstream node, no flux): the fuller node is the source, theta = 1, the
    # derivative on the side the flux takes when the empty node fills
    src_i = (q < 0.0) | ((q == 0.0) & (ri > rj))
    rs = np.where(src_i, ri, rj)
    ro = np.where(src_i, rj, ri)
    rsp, rop = np.maximum(rs, 0.0), beta * np.maximum(ro, 0.0)
    partial = rsp < rop
    inv_o = np.where(partial, 1.0 / np.where(partial, rop, 1.0), 0.0)
    theta = np.where(partial, rsp * inv_o, np.where(rsp > 0.0, 1.0, 0.0))
    d_s = np.where(partial & (rs >= 0.0), inv_o, 0.0)  # at rho_s = 0: the right derivative
    d_o = -beta * rsp * inv_o * inv_o
    return theta, np.where(src_i, d_s, d_o), np.where(src_i, d_o, d_s)


def limit_fluxes(G: np.ndarray, q: np.ndarray, ri: np.ndarray, rj: np.ndarray,
                 edges: np.ndarray, beta: float = 1.0):
    """Apply :func:`positivity_limiter` in place to the fluxes ``G = w q`` of ``edges``.

    Returns:
        ``None`` if there are no such edges, else ``(theta, G dtheta_i, G dtheta_j)`` on them
        (unlimited ``G``): the Jacobian of ``theta G`` is ``theta dG + G dtheta``.
    """
    if not edges.size:
        return None
    theta, dth_i, dth_j = positivity_limiter(q[edges], ri[edges], rj[edges], beta)
    Ge = G[edges]
    G[edges] = theta * Ge
    return theta, Ge * dth_i, Ge * dth_j
