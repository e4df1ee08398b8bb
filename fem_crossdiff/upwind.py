"""Positivity-preserving edge fluxes for P1 on simplices (the default scheme for (1.1)).

Why this scheme. Standard Galerkin (consistent or lumped mass) produces negative densities for
segregated or compactly supported data, and log-density unknowns fail for small ``sigma`` and
at ``sigma = 0`` (measured, see ``docs/positivity.md``). We use an edge-based finite-volume
form of lumped P1 with the stiffness weights ``w_ij = -K_ij`` and fractional-flow upwinding:

    R_k,i = m_i d_t rho_k,i + sum_{j ~ i} G_k,ij,
    G_k,ij = b_k w_ij c_k,up F_ij + sigma w_ij (rho_k,i - rho_k,j),
    F_ij = (S_i + S_j)/2 (P_i - P_j),   c_k = rho_k / S,

where ``up`` is the node with the larger pressure. ``c_k F`` approximates ``rho_k grad P``
(``c_k S = rho_k``), so the scheme is consistent with Definition 1.5, and:

* mass: ``G_k,ji = -G_k,ij`` (each edge moves mass from one node to the other), so every
  species' mass is conserved to round-off at every Newton iterate's converged solution;
* positivity: with ``w_ij >= 0`` (Delaunay triangulations in 2D; right-angled/acute meshes in
  general) the implicit-Euler step is an M-matrix system in each species: where ``rho_k,i = 0``
  the outgoing fluxes vanish (``c_k,i = 0``) and the incoming ones are >= 0, hence
  ``rho_k^{n+1} >= 0`` for every ``sigma >= 0``, including the porous-medium limit ``sigma = 0``;
* equal mobilities: summing ``a_k G_k`` gives exactly the same scheme for ``u = sum a_k rho_k``
  with one species (``sum_k a_k c_k = 1``), the discrete analogue of Theorem 1.8's reduction;
* non-integer ``m``: only nodal values ``P_i = S_i^(m-1)`` appear, never ``S^(m-3)``.

Non-Delaunay meshes (most tetrahedral meshes: about a fifth of the edges of a gmsh ball have
``w_ij < 0``, whatever gmsh's 3D algorithm or optimiser; ``docs/tets.md``). On such an edge the
flux moves mass against the gradient and can empty a node. By default (``negative_edges =
"voronoi"``) the weights on tetrahedra are those of the circumcentric (Voronoi) dual
(:func:`circumcentric_weights`: a two-point flux through the dual face, >= 0 by construction on
Delaunay meshes, negative on about 1% of the edges of gmsh's default ball), and the fluxes of
the remaining negative edges are multiplied by a limiter ``theta_k`` that is 1 unless the node
the mass leaves holds less than a quarter of the other node's density, and vanishes when it
is empty (:func:`positivity_limiter`): positivity and conservation hold as above. ``"front"``
applies the same limiter to P1's own negative weights (consistent wherever the density varies
by less than a factor 4 across an edge); the older ``"limit"`` limits whenever the source is
the emptier node, which is inconsistent (3D Barenblatt rate about 0.75, against 1.5 for
``"voronoi"`` and 1.35 for ``"front"``); dropping those edges leaves an O(1) error.

The price is first-order numerical diffusion ``~ h |grad P| / 2`` in the species fractions
(the total density ``S`` is transported centrally). BDF2 is not positivity preserving in general
(a negative history coefficient): the stepper checks the minimum and rejects such steps.

The edge weights are computed once per mesh from the owned cells; contributions of edges that
touch ghost vertices are added through PETSc's reverse ghost update (vectors) and off-process
stash (matrices), so the scheme is partition independent.
"""

from __future__ import annotations

import numpy as np

from fem_crossdiff.compat import MPI, PETSc, fem, la
from fem_crossdiff.errors import ParameterError
from fem_crossdiff.params import DEFAULT_LIMITER, LIMITERS, NEGATIVE_EDGE_MODES, ModelParams


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


class BlockPattern:
    """A block-CSR edge pattern written into PETSc matrices by COO assembly.

    Subclasses hold ``_indptr`` and ``_indices`` over ``nloc`` local nodes, blocks ``n x n``.

    The first :meth:`set_matrix` on a matrix gives it the pattern
    (``MatSetPreallocationCOOLocal``: local indices through the matrix's local-to-global map;
    contributions to rows owned elsewhere are summed by PETSc); later calls only pass values
    (``MatSetValuesCOO``, no index search), which is cheaper than block-CSR insertion. The
    values replace the matrix's, so nothing else may be assembled into it before.
    """

    #: Handle of the matrix that has the pattern (callbacks get a new Python wrapper per call).
    coo_handle = None

    def coo_local_indices(self) -> tuple[np.ndarray, np.ndarray]:
        """Local row and column indices of every entry of the pattern, in value order."""
        n = self.n
        brow = np.repeat(np.arange(self.nloc, dtype=np.int64), np.diff(self._indptr))
        bcol = np.asarray(self._indices, dtype=np.int64)
        r = np.arange(n)
        shape = (brow.size, n, n)
        rows = np.broadcast_to(brow[:, None, None] * n + r[None, :, None], shape)
        cols = np.broadcast_to(bcol[:, None, None] * n + r[None, None, :], shape)
        return rows.ravel().astype(PETSc.IntType), cols.ravel().astype(PETSc.IntType)

    def set_matrix(self, A: PETSc.Mat, data: np.ndarray) -> None:
        """Set ``A`` to the block values ``data`` (``nnzb`` blocks in pattern order)."""
        if self.coo_handle != A.handle:
            A.setPreallocationCOOLocal(*self.coo_local_indices())
            self.coo_handle = A.handle
        A.setValuesCOO(data.reshape(-1), addv=PETSc.InsertMode.INSERT_VALUES)


class UpwindFlux(BlockPattern):
    """Edge-flux residual and Jacobian of the upwind scheme on a blocked P1 space.

    Args:
        V: Blocked P1 space with one component per species.
        params: Model coefficients.
        negative_edges: Treatment of negative-weight edges, see :func:`edge_weights`.
    """

    def __init__(self, V: fem.FunctionSpace, params: ModelParams,
                 negative_edges: str = "voronoi"):
        self.params = params
        self.n = params.n
        if V.dofmap.index_map_bs != self.n:
            raise ValueError(f"space has block size {V.dofmap.index_map_bs}, need {self.n}")
        self.I, self.J, self.W, self._lim, self.negative_edges = edge_weights(V, negative_edges)
        self._beta = limiter_ratio(negative_edges)
        self.nloc = V.dofmap.index_map.size_local + V.dofmap.index_map.num_ghosts
        self.a = np.asarray(params.a)
        self.b = np.asarray(params.b)
        self.law = params.law
        self._build_pattern()

    def _build_pattern(self):
        # Block-CSR pattern of the four blocks (ii, ij, ji, jj) of every edge, built once.
        # Edges are unique, so the off-diagonal blocks (ij), (ji) of an edge own one slot each
        # and are written directly; only the diagonal blocks need a sum over edges (bincount).
        I, J, nloc = self.I.astype(np.int64), self.J.astype(np.int64), self.nloc
        nE = I.size
        rows = np.concatenate([I, I, J, J])
        cols = np.concatenate([I, J, I, J])
        keys, inv = np.unique(rows * nloc + cols, return_inverse=True)
        brow = keys // nloc
        bcol = keys % nloc
        diag = np.flatnonzero(brow == bcol)
        self._diag_node = brow[diag]
        # CSR slot -> source row of the block values (ij blocks, ji blocks, diagonal blocks)
        self._gather = np.empty(keys.size, dtype=np.int64)
        self._gather[np.concatenate([inv[nE:2 * nE], inv[2 * nE:3 * nE], diag])] = np.arange(
            keys.size)
        self._indptr = np.zeros(nloc + 1, dtype=PETSc.IntType)
        np.cumsum(np.bincount(brow, minlength=nloc), out=self._indptr[1:])
        self._indices = bcol.astype(PETSc.IntType)
        self._nnzb = keys.size
        # both edge ends in one index array: one bincount per component sums over edges
        self._IJ = np.concatenate([self.I, self.J])
        self._cache_key = None
        self._cache = None
        self._src = None
        self._data = None

    def _edge_terms(self, rho: np.ndarray):
        """Edge fluxes ``G`` (E, n) and the intermediate edge quantities of the Jacobian.

        SNES evaluates the residual and then the Jacobian at the same iterate: the edge terms of
        the last state are kept and reused when ``rho`` is unchanged.
        """
        key = self._cache_key
        if key is not None and np.array_equal(key, rho):
            return self._cache
        p = self.params
        ri, rj = rho[self.I], rho[self.J]
        Si = np.maximum(ri @ self.a, 0.0)
        Sj = np.maximum(rj @ self.a, 0.0)
        Pi, Pj = self.law.pressure(Si), self.law.pressure(Sj)
        up_i = Pi >= Pj
        r_up = np.where(up_i[:, None], ri, rj)
        S_up = np.where(up_i, Si, Sj)
        safe = S_up > 1e-300
        inv_S = np.where(safe, 1.0 / np.where(safe, S_up, 1.0), 0.0)
        c = r_up * inv_S[:, None]  # fractions c_k at the upstream node
        dP = Pi - Pj
        Sm = 0.5 * (Si + Sj)
        F = Sm * dP
        q = (self.b * c) * F[:, None] + p.sigma * (ri - rj)  # G = w q
        G = self.W[:, None] * q
        lim = limit_fluxes(G, q, ri, rj, self._lim, self._beta)
        out = G, (ri, rj, Si, Sj, Pi, Pj, up_i, c, inv_S, F, Sm, dP, lim)
        self._cache_key = rho.copy()
        self._cache = out
        return out

    def residual(self, rho: np.ndarray) -> np.ndarray:
        """Edge part of the residual on local (owned + ghost) nodes, shape ``(nloc, n)``.

        Args:
            rho: Local nodal values, shape ``(nloc, n)``.
        """
        G, _ = self._edge_terms(rho)
        R = np.empty((self.nloc, self.n))
        both = np.concatenate([G, -G])
        for k in range(self.n):
            R[:, k] = np.bincount(self._IJ, both[:, k], self.nloc)
        return R

    def jacobian_blocks(self, rho: np.ndarray) -> np.ndarray:
        """Block-CSR values ``(nnzb, n, n)`` of the edge part of the Jacobian."""
        out = np.empty((self._nnzb, self.n * self.n))
        self._fill_blocks(rho, out)
        return out.reshape(-1, self.n, self.n)

    def _held_factor_blocks(self, terms):
        """Edge blocks of a face fraction ``c_f = c_up + phi/2 (c_dn - c_up)``, ``phi`` held.

        Shared by the reconstructed schemes (:class:`MusclFlux`, ``afc.AfcFlux``), whose
        ``_edge_terms`` give ``terms = (c_i, c_j, S_i, S_j, 1/S_i, 1/S_j, up_i, phi, c_f, F,
        S_m, dP, lim, ...)``.

        Returns:
            ``(u_i, u_j, d_i, d_j, b w)``: ``J_end = u_end a^T + diag(d_end)`` for the layout of
            :meth:`_write_blocks`, and the per-edge mobility weights ``b_k w_e``.
        """
        p, w = self.params, self.W
        ci, cj, Si, Sj, inv_i, inv_j, up_i, phi, cf, F, Sm, dP, lim = terms[:13]
        dPi, dPj = self.law.derivative(Si), self.law.derivative(Sj)
        alpha_i = 0.5 * dP + Sm * dPi  # dF / dS at either end
        alpha_j = 0.5 * dP - Sm * dPj
        # d c_f / d rho_end = lam_end (I - c_end a^T) / S_end, lam = 1 - phi/2 upstream,
        # phi/2 downstream; so J_end = b w (c_f alpha_end - lam_end g_end c_end) a^T
        # + diag(b w lam_end g_end) with g_end = F / S_end.
        lam_i = np.where(up_i, 1.0 - 0.5 * phi, 0.5 * phi)
        lam_j = 1.0 - lam_i
        gi = lam_i * F * inv_i
        gj = lam_j * F * inv_j
        bw = w[:, None] * self.b
        ui = bw * (cf * alpha_i[:, None] - gi[:, None] * ci)
        uj = bw * (cf * alpha_j[:, None] - gj[:, None] * cj)
        sw = (p.sigma * w)[:, None]
        di = bw * gi[:, None] + sw
        dj = bw * gj[:, None] - sw
        self._limit_factors(lim, ui, uj, di, dj)
        return ui, uj, di, dj, bw

    def _limit_factors(self, lim, ui, uj, di, dj) -> None:
        """Apply the positivity flux limiter ``theta`` to block factors, in place.

        ``G_lim = theta G`` on the limited edges, so ``J_end = theta J_end + dtheta/drho G``
        with the second term diagonal (``lim = (theta, G dtheta_i, G dtheta_j)`` from
        :func:`limit_fluxes`; nothing to do when ``lim`` is None).
        """
        if lim is None:
            return
        e, (theta, g_dth_i, g_dth_j) = self._lim, lim
        ui[e] *= theta
        uj[e] *= theta
        di[e] = theta * di[e] + g_dth_i
        dj[e] = theta * dj[e] + g_dth_j

    def _fill_blocks(self, rho: np.ndarray, out: np.ndarray):
        """Write the block-CSR values into ``out`` (nnzb, n * n); work arrays are reused."""
        p, w = self.params, self.W
        _, (ri, rj, Si, Sj, Pi, Pj, up_i, c, inv_S, F, Sm, dP, lim) = self._edge_terms(rho)
        # Per edge, each block is rank one plus diagonal (why: dF/drho is a multiple of a and
        # dc/drho = (I - c a^T)/S), so J_i[k, l] = u_k a_l beta_i + delta_kl d_i[k] with
        # u_k = b_k w c_k, and likewise for J_j; only n-vectors are summed over edges.
        dPi, dPj = self.law.derivative(Si), self.law.derivative(Sj)
        alpha_i = 0.5 * dP + Sm * dPi
        alpha_j = 0.5 * dP - Sm * dPj
        g = F * inv_S  # upstream derivative of c_k F, without b_k w
        g_i = np.where(up_i, g, 0.0)
        g_j = g - g_i
        beta_i = alpha_i - g_i
        beta_j = alpha_j - g_j
        u = (w[:, None] * self.b) * c  # (E, n)
        wb_g_i = (w * g_i)[:, None] * self.b
        wb_g_j = (w * g_j)[:, None] * self.b
        sw = (p.sigma * w)[:, None]
        di = wb_g_i + sw
        dj = wb_g_j - sw
        if lim is not None:
            # limited edges: theta_k scales row k of both blocks, and d(theta_k)/d(rho_k)
            # adds G_k dtheta_k to the diagonals
            e, (theta, g_dth_i, g_dth_j) = self._lim, lim
            u[e] *= theta
            di[e] = theta * di[e] + g_dth_i
            dj[e] = theta * dj[e] + g_dth_j
        ui = u * beta_i[:, None]
        uj = u * beta_j[:, None]
        self._write_blocks(ui, uj, di, dj, out)

    def _write_blocks(self, ui: np.ndarray, uj: np.ndarray, di: np.ndarray, dj: np.ndarray,
                      out: np.ndarray) -> None:
        """Block-CSR values from per-edge blocks ``J_i = ui a^T + diag(di)`` (and ``J_j``).

        ``J_i`` (``J_j``) is the derivative of the edge flux ``G_ij`` (E, n) with respect to
        the values at the first (second) end.
        """
        n, a = self.n, self.a
        # Blocks are written contiguously in edge/node order, then gathered once into CSR
        # order (why: a gather through a fixed permutation is several times faster than
        # scattering into CSR slots).
        nE, nloc, nn = ui.shape[0], self.nloc, n * n
        if self._src is None:  # why reuse: fresh 10-100 MB arrays cost page faults every call
            self._src = np.empty((2 * nE + self._diag_node.size, n, n))
        src = self._src
        np.multiply(uj[:, :, None], a, out=src[:nE])  # (i, j) gets J_j
        np.multiply(ui[:, :, None], -a, out=src[nE:2 * nE])  # (j, i) gets -J_i
        flat = src.reshape(-1, nn)
        flat[:nE, :: n + 1] += dj
        flat[nE:2 * nE, :: n + 1] -= di
        # diagonal blocks: node i collects J_i of its edges as first end, -J_j as second end
        both_u, both_d = np.concatenate([ui, -uj]), np.concatenate([di, -dj])
        U = np.empty((nloc, n))
        D = np.empty((nloc, n))
        for k in range(n):
            U[:, k] = np.bincount(self._IJ, both_u[:, k], nloc)
            D[:, k] = np.bincount(self._IJ, both_d[:, k], nloc)
        diag = src[2 * nE:]
        np.multiply(U[self._diag_node][:, :, None], a, out=diag)
        flat[2 * nE:, :: n + 1] += D[self._diag_node]
        np.take(flat, self._gather, axis=0, out=out)

    def _write_dense(self, Ji: np.ndarray, Jj: np.ndarray, out: np.ndarray) -> None:
        """Block-CSR values from full per-edge blocks ``J_i``, ``J_j`` ``(E, n, n)``.

        The layout of :meth:`_write_blocks`: ``(i, j)`` gets ``J_j``, ``(j, i)``
        gets ``-J_i``, the diagonal block of a node the sum of ``J_i`` over the edges it
        starts and of ``-J_j`` over those it ends.
        """
        nE, nn, nloc = Ji.shape[0], self.n * self.n, self.nloc
        both = np.concatenate([Ji, -Jj]).reshape(2 * nE, nn)
        D = np.empty((nloc, nn))
        for k in range(nn):
            D[:, k] = np.bincount(self._IJ, both[:, k], nloc)
        src = np.concatenate([Jj.reshape(nE, nn), -Ji.reshape(nE, nn), D[self._diag_node]])
        np.take(src, self._gather, axis=0, out=out)

    def add_jacobian(self, A: PETSc.Mat, rho: np.ndarray):
        """Set ``A`` to the edge Jacobian (COO assembly: it replaces every entry of ``A``)."""
        if self._data is None:
            self._data = np.empty((self._nnzb, self.n * self.n))
        self._fill_blocks(rho, self._data)
        self.set_matrix(A, self._data)


# LIMITERS (from params, where the study files' schema reads it): the slope limiters of
# :class:`MusclFlux`, as functions of the ratio ``r`` of the upstream to the edge difference;
# each returns ``phi(r)`` in ``[0, 2]``, with ``phi(1) = 1`` (second order on smooth data)
# except ``"compressive"`` (``phi(1) = 2``). ``"sensor"`` also depends on the size of the jump
# along the edge (:func:`sensor_weight`): van Leer's where it is small, 1.93 at ``r = 1``
# where it is large. ``"smooth"`` (:func:`smooth_limiter`, :func:`smooth_clamped`) is a
# function of both differences and of the edge length, without branches; ``"smooth-sensor"``
# (:func:`smooth_sensor_limiter`) is the sensor's blend of it with the front limiter
# regularised the same way, and takes a sharper minimum with the clamp
# (:func:`compact_clamped`).

#: The ``"sensor"`` limiter: the weight of its front limiter rises from 0 to 1 as the scaled
#: jump ``a_k |c_k,dn - c_k,up|`` (in ``[0, 1]``: ``a_k c_k`` lies in ``[0, 1]``) goes from the
#: first to the second value (``docs/schemes.md``).
SENSOR_BAND = (0.15, 0.4)
#: The slope ``K`` at ``r = 0`` of the sensor's front limiter ``2 tanh(K r / 2)^+``
#: (``"compressive"``, ``min(2 r, 2)^+``, has 2): the steeper, the faster a contact's upstream
#: tail decays (``docs/schemes.md``).
SENSOR_SLOPE = 4.0


def sensor_weight(jump: np.ndarray, derivative: bool = False,
                  band: tuple[float, float] = SENSOR_BAND):
    """The front weight ``w`` of the ``"sensor"`` limiter (and ``dw / d jump``).

    ``w = t^2 (3 - 2 t)``, ``t = (jump - z0) / (z1 - z0)`` clipped to ``[0, 1]``
    (``band = (z0, z1)``, :data:`SENSOR_BAND` by default): once continuously differentiable,
    so that the limited flux keeps a continuous derivative across the band's ends. On smooth
    data the jump is ``O(h)``, below ``z0`` on fine enough meshes, and the limiter is exactly
    van Leer's; at a contact discontinuity kept a few cells wide it is ``O(1)``.
    """
    z0, z1 = band
    t = np.clip((jump - z0) / (z1 - z0), 0.0, 1.0)
    w = t * t * (3.0 - 2.0 * t)
    if not derivative:
        return w
    return w, 6.0 * t * (1.0 - t) / (z1 - z0)


def _sensor_parts(up: np.ndarray, dn: np.ndarray, slopes: bool):
    """Van Leer's and the front limiter's ``phi`` (or ``phi'(r)``) for ``"sensor"``.

    The front limiter is ``2 tanh(K r / 2)`` for ``r > 0`` (0 below): slope ``K`` at 0 and
    smooth for ``r > 0``, so that Newton meets no second kink (``min(K r, 2)`` has one at
    ``r = 2 / K``).
    """
    free = dn == 0.0
    r = up / np.where(free, 1.0, dn)
    t = np.tanh(0.5 * SENSOR_SLOPE * np.maximum(r, 0.0))
    if not slopes:
        return slope_limiter("vanleer", up, dn), np.where(free, 2.0, 2.0 * t)
    # at the kink r = 0 the derivative from the right (as slope_limiter_slope)
    front = np.where((r >= 0.0) & ~free, SENSOR_SLOPE * (1.0 - t * t), 0.0)
    return slope_limiter_slope("vanleer", up, dn), front


#: The power ``p`` (even) of the ``"smooth"`` limiter's smooth minimum with the clamp,
#: ``(x^-p + y^-p)^(-1/p)``: the larger, the closer to ``min(x, y)`` (``2^(-1/p)`` of it
#: where ``x = y``) and the sharper its turn.
SMOOTH_P = 2
#: The ``"smooth"`` limiter's scale: on an edge of length ``h`` the scaled fraction
#: differences are compared with ``eps = (K h / L)^(3/2)`` (Venkatakrishnan's ``eps^2 = (K
#: h)^3``, with ``h`` relative to the diameter ``L`` of the mesh's bounding box, as the
#: fractions are dimensionless), ``K =`` this value (``docs/muscl-newton.md``).
SMOOTH_K = 4.0
#: ``"smooth-sensor"``'s minimum with the clamp (:func:`compact_clamped`): its relative
#: width on smooth data and at fronts. 1 is the widest (a p-mean's curvature, 3 Newton
#: iterations at 1e6 unknowns), 0.2 nearly ``min`` (the sensor's overlap rate at fronts);
#: the width goes from the first to the second as the scaled jump ``|dn|`` crosses
#: :data:`SMOOTH_SENSOR_WIDTH_BAND` (``docs/muscl-newton.md``).
SMOOTH_SENSOR_WIDTH = (1.0, 0.2)
#: The jumps over which :func:`compact_clamped`'s width goes from smooth to front: lower than
#: :data:`SENSOR_BAND`, as the clamp binds in a contact's thin tails, where the jumps are small.
SMOOTH_SENSOR_WIDTH_BAND = (0.008, 0.04)


def smooth_limiter(up: np.ndarray, dn: np.ndarray, eps2: np.ndarray,
                   derivative: bool = False):
    """Van Leer regularised at the scale ``eps`` (the ``"smooth"`` limiter), in product form.

    ``phi = (p + s) / (dn^2 + s)``, ``p = up dn``, ``s = sqrt(p^2 + eps^4)`` (van Leer's
    ``(p + |p|) / (dn^2 + |p|)`` with ``|p|`` replaced by ``s >= |p|``): infinitely
    differentiable in ``(up, dn)`` (the denominator is ``>= eps^2``), in ``[0, 2)`` (``p <=
    s``), exactly 1 at ``up = dn`` (``r = 1``), tending to 1 where ``|up|, |dn| << eps`` (the
    central face value, second order, no branch) and to van Leer's where ``|up dn| >>
    eps^2``. Why: van Leer's kink at ``r = 0`` and its jump at ``dn = 0`` (from 2 to 0 across
    ``dn = 0`` at fixed ``up``) flip on edges whose differences are of the size of a Newton
    correction, and make the residual only piecewise smooth there.

    Args:
        up: The difference across the upstream node (scaled: ``a_k D_k,up``).
        dn: The difference along the edge (``a_k (c_k,dn - c_k,up)``), same shape.
        eps2: ``eps^2``, broadcastable against ``dn``.
        derivative: Also return ``d phi / d up`` and ``d phi / d dn``.
    """
    pr = up * dn
    s = np.sqrt(pr * pr + eps2 * eps2)
    num, den = pr + s, dn * dn + s
    phi = num / den
    if not derivative:
        return phi
    t = pr / s
    inv2 = 1.0 / (den * den)
    d_up = dn * ((1.0 + t) * den - num * t) * inv2
    d_dn = (up * (1.0 + t) * den - num * (2.0 * dn + up * t)) * inv2
    return phi, d_up, d_dn


def smooth_clamped(x: np.ndarray, dn: np.ndarray, c: np.ndarray, delta: np.ndarray,
                   derivative: bool = False, p: int | None = None):
    """``g = (x^-p + clamp^-p)^(-1/p)``, ``clamp = 2 A / |dn|``, ``A = sqrt(c^2 + d^2) - d``.

    The ``"smooth"`` limiter's clamp: a smooth minimum of the limiter ``x >= 0`` and the
    clamp, ``<=`` both, so ``|c_f - c_up| = g |dn| / 2 <= A <= |c|`` (positivity, as the
    clamp ``min(x, 2 |c| / |dn|)`` of the other limiters); ``A`` is ``|c|`` with its kink at
    ``c = 0`` rounded at the scale ``d = delta`` (a species exactly 0 at the upstream node: there
    ``g`` is 0 with a zero derivative, not a one-sided kink). Written ``g = 2 x A / ((x
    dn)^p + (2 A)^p)^(1/p)`` (``p =`` :data:`SMOOTH_P`, even), smooth in ``dn`` across 0
    (there ``g = x``; also where ``A = dn = 0``: a species absent at both ends does not
    constrain).

    Args:
        x: The limiter's value ``phi_lim >= 0``.
        dn: ``a_k (c_k,dn - c_k,up)``.
        c: ``a_k c_k,up``.
        delta: The rounding scale (``eps``), broadcastable.
        derivative: Also return ``dg / dx``, ``dg / d dn`` (at fixed ``x``) and ``dg / dc``.
        p: The power (even; :data:`SMOOTH_P` if None).

    Returns:
        ``(g, clamp)``, or ``(g, clamp, dg_dx, dg_ddn, dg_dc)``.
    """
    root = np.sqrt(c * c + delta * delta)
    A = c * c / (root + delta)  # sqrt(c^2 + delta^2) - delta without cancellation
    P = SMOOTH_P if p is None else p
    D = ((x * dn) ** P + (2.0 * A) ** P) ** (1.0 / P)
    free = D == 0.0
    inv = 1.0 / np.where(free, 1.0, D)
    g = np.where(free, x, 2.0 * x * A * inv)
    big = dn != 0.0
    clamp = np.where(big, 2.0 * A / np.where(big, np.abs(dn), 1.0), np.inf)
    if not derivative:
        return g, clamp
    q = 2.0 * A * inv  # 2 A / D in [0, 1]
    xi = x * inv
    dg_dx = np.where(free, 1.0, q ** (P + 1))
    dg_ddn = np.where(free, 0.0, -q * x * xi * (xi * dn) ** (P - 1))
    dg_dA = 2.0 * xi * (xi * dn) ** P
    dA_dc = c / np.where(root > 0.0, root, 1.0)
    dg_dc = np.where(free, 0.0, dg_dA * dA_dc)
    return g, clamp, dg_dx, dg_ddn, dg_dc


def compact_clamped(x: np.ndarray, dn: np.ndarray, c: np.ndarray, delta: np.ndarray,
                    derivative: bool = False):
    """``"smooth-sensor"``'s clamp: ``g = 2 x A / M``, ``M`` a smooth max of ``x |dn|, 2 A``.

    The same clamp as :func:`smooth_clamped` (``A = sqrt(c^2 + d^2) - d``, ``d = delta``,
    ``clamp = 2 A / |dn|``, ``g <= min(x, clamp)``, so ``|c_f - c_up| <= |c|``), with a
    smooth minimum that equals ``min(x, clamp)`` outside a band around ``x = clamp``: with
    ``a = x |dn|``, ``b = 2 A`` scaled by ``max(a, b)``, ``y = a - b``, ``k = omega (a +
    b)``, ``M = max(a, b) + k s^2 / 4``, ``s = (1 - |y| / k)^+`` (a quadratic blend: once
    differentiable with a Lipschitz derivative, enough for Newton's quadratic convergence).
    ``M >= max(a, b)`` and is homogeneous of degree 1. A p-mean ``(x^-p + clamp^-p)^(-1/p)``
    falls short of the minimum by ``(min / max)^p / p`` even far from the crossing (10% at
    ``p = 2``, ``clamp = 2 x``) and smears a contact's tail; this one by at most ``omega / 4``
    and only where ``x`` and the clamp are within the factor ``(1 + omega) / (1 - omega)``.
    The relative width ``omega`` goes from :data:`SMOOTH_SENSOR_WIDTH`'s first value to its
    second as ``|dn|`` crosses :data:`SMOOTH_SENSOR_WIDTH_BAND` (:func:`sensor_weight`'s
    blend): a wide turn (low curvature, few Newton iterations) on smooth data, a sharp one at
    fronts. Where ``max(a, b) < 1e-150`` (the correction ``g dn / 2`` is below round-off of
    any fraction) ``g = min(x, clamp)`` without the blend, whose ratios would overflow.

    Args:
        x: The limiter's value ``phi_lim >= 0``.
        dn: ``a_k (c_k,dn - c_k,up)``.
        c: ``a_k c_k,up``.
        delta: The rounding scale of ``|c|`` (``eps``), broadcastable.
        derivative: Also return ``dg / dx``, ``dg / d dn`` (at fixed ``x``; the width's
            dependence on ``|dn|`` included) and ``dg / dc``.

    Returns:
        ``(g, clamp)``, or ``(g, clamp, dg_dx, dg_ddn, dg_dc)``.
    """
    root = np.sqrt(c * c + delta * delta)
    A = c * c / (root + delta)  # sqrt(c^2 + delta^2) - delta without cancellation
    w_smooth, w_front = SMOOTH_SENSOR_WIDTH
    wgt, dwgt = sensor_weight(np.abs(dn), derivative=True, band=SMOOTH_SENSOR_WIDTH_BAND)
    omega = w_smooth + (w_front - w_smooth) * wgt
    a, b = x * np.abs(dn), 2.0 * A
    mx = np.maximum(a, b)
    big = dn != 0.0
    clamp = np.where(big, 2.0 * A / np.where(big, np.abs(dn), 1.0), np.inf)
    tiny = mx < 1e-150
    scale = np.where(tiny, 1.0, mx)
    a1, b1 = np.where(tiny, 0.0, a / scale), np.where(tiny, 0.0, b / scale)  # the max is 1
    y = a1 - b1
    k = omega * (a1 + b1)  # >= omega where not tiny
    band = np.abs(y) < k
    s = np.where(band, 1.0 - np.abs(y) / np.where(band, k, 1.0), 0.0)
    q, dq = 0.25 * s * s, 0.5 * s
    M = np.where(tiny, 1.0, 0.5 * (a1 + b1 + np.abs(y)) + k * q)  # >= 1 where not tiny
    g = np.where(tiny, np.minimum(x, clamp), x * b1 / M)
    if not derivative:
        return g, clamp
    sg = np.sign(y)
    # dM/da1, dM/db1 (k ds/da1 = -sg + omega (1 - s), k ds/db1 = sg + omega (1 - s): no
    # division by k), dM/domega
    Ma = 0.5 * (1.0 + sg) + omega * q + dq * (-sg + omega * (1.0 - s))
    Mb = 0.5 * (1.0 - sg) + omega * q + dq * (sg + omega * (1.0 - s))
    Mw = (a1 + b1) * (q + dq * (1.0 - s))
    inv_M2 = 1.0 / (M * M)
    dg_dx = np.where(tiny, np.where(x <= clamp, 1.0, 0.0), b1 / M - a1 * b1 * Ma * inv_M2)
    # x / max(a, b) = a1 / |dn| where dn != 0 (where dn = 0, a1 = 0: Ma = 0, M = b1 = 1),
    # below 2e150 as max(a, b) >= 1e-150
    x_mx = np.where(big & ~tiny, a1 / np.where(big, np.abs(dn), 1.0), 0.0)
    sd = np.sign(dn)
    dg_ddn = -x * b1 * inv_M2 * (x_mx * Ma + np.where(tiny, 0.0, Mw) * (w_front - w_smooth)
                                 * dwgt) * sd
    dA_dc = c / np.where(root > 0.0, root, 1.0)
    dg_dc = 2.0 * x_mx * (M - b1 * Mb) * inv_M2 * dA_dc
    return g, clamp, dg_dx, dg_ddn, dg_dc


#: The limiters without branches (:class:`MusclFlux` compares the scaled differences with
#: ``eps`` per edge and takes :func:`smooth_clamped` for the clamp).
SMOOTH_LIMITERS = ("smooth", "smooth-sensor")


def smooth_front_limiter(up: np.ndarray, dn: np.ndarray, eps2: np.ndarray,
                         derivative: bool = False):
    """The sensor's front limiter ``2 tanh(K r / 2)^+`` regularised at the scale ``eps``.

    ``phi = 2 tanh(K q / 2)``, ``q = (p + s) / (2 (dn^2 + eps^2))``, ``p = up dn``, ``s =
    sqrt(p^2 + eps^4)`` (:func:`smooth_limiter`'s ``s``; ``K =`` :data:`SENSOR_SLOPE`):
    ``q`` is ``r^+ = (p + |p|) / (2 dn^2)`` with ``|p|`` replaced by ``s``, so the kink of
    ``r^+`` at ``r = 0`` is rounded at ``|up dn| ~ eps^2`` and ``dn = 0`` needs no division
    (there ``q = 1/2``). In ``[0, 2)``, analytic in ``(up, dn)``.

    Args:
        up: ``a_k D_k,up``.
        dn: ``a_k (c_k,dn - c_k,up)``, same shape.
        eps2: ``eps^2``, broadcastable against ``dn``.
        derivative: Also return ``d phi / d up`` and ``d phi / d dn``.
    """
    pr = up * dn
    s = np.sqrt(pr * pr + eps2 * eps2)
    den = 2.0 * (dn * dn + eps2)
    num = pr + s
    th = np.tanh(0.5 * SENSOR_SLOPE * num / den)
    if not derivative:
        return 2.0 * th
    t = pr / s
    f = SENSOR_SLOPE * (1.0 - th * th) / (den * den)  # d phi / d q over den^2
    return 2.0 * th, f * dn * (1.0 + t) * den, f * (up * (1.0 + t) * den - 4.0 * num * dn)


def smooth_sensor_limiter(up: np.ndarray, dn: np.ndarray, eps2: np.ndarray,
                          derivative: bool = False):
    """The ``"smooth-sensor"`` limiter: ``(1 - w) phi_smooth + w phi_front``.

    ``phi_smooth`` = :func:`smooth_limiter`, ``phi_front`` = :func:`smooth_front_limiter`,
    ``w = sensor_weight(|dn|)`` (the ``"sensor"``'s blend, ``|dn| = a_k |c_k,dn - c_k,up|``
    the scaled jump): on smooth data (jumps ``O(h)`` below ``SENSOR_BAND[0]``) exactly the
    ``"smooth"`` limiter, at a contact a few cells wide the compressive front limiter, and
    without the kinks of ``"sensor"`` (``w`` is C1 and flat near ``dn = 0``, both limiters
    analytic). In ``[0, 2)``.

    Args:
        up: ``a_k D_k,up``.
        dn: ``a_k (c_k,dn - c_k,up)``, same shape.
        eps2: ``eps^2``, broadcastable against ``dn``.
        derivative: Also return ``d phi / d up`` and ``d phi / d dn`` (the weight's
            ``dw / d jump sign(dn) (phi_front - phi_smooth)`` included).
    """
    jump = np.abs(dn)
    if not derivative:
        sm, fr = smooth_limiter(up, dn, eps2), smooth_front_limiter(up, dn, eps2)
        return sm + sensor_weight(jump) * (fr - sm)
    w, dw = sensor_weight(jump, derivative=True)
    sm, sm_u, sm_v = smooth_limiter(up, dn, eps2, derivative=True)
    fr, fr_u, fr_v = smooth_front_limiter(up, dn, eps2, derivative=True)
    return (sm + w * (fr - sm), sm_u + w * (fr_u - sm_u),
            sm_v + w * (fr_v - sm_v) + dw * np.sign(dn) * (fr - sm))


def slope_limiter(name: str, up: np.ndarray, dn: np.ndarray,
                  jump: np.ndarray | None = None) -> np.ndarray:
    """``phi(up / dn)`` of the limiter ``name``, 2 (no constraint) where ``dn = 0``.

    Written with products instead of the ratio so that ``dn = 0`` needs no division: a
    species that is constant along the edge does not constrain the common limiter.
    ``"sensor"`` needs the scaled jump ``jump = a_k |dn|`` (same shape as ``dn``): it is
    ``(1 - w) phi_vanleer + w 2 tanh(K r / 2)^+`` with ``w = sensor_weight(jump)`` and
    ``K =`` :data:`SENSOR_SLOPE`, in ``[0, 2]`` and 0 for ``r <= 0``.
    """
    if name == "sensor":
        if jump is None:
            raise ValueError("the 'sensor' limiter needs the scaled jump a_k |dn|")
        smooth, front = _sensor_parts(up, dn, slopes=False)
        w = sensor_weight(jump)
        return smooth + w * (front - smooth)
    if name in SMOOTH_LIMITERS:
        raise ValueError(f"the {name!r} limiter needs its scale eps: use smooth_limiter or "
                         "smooth_sensor_limiter")
    pr = up * dn
    dn2 = dn * dn
    free = dn2 == 0.0
    safe = np.where(free, 1.0, dn2)
    if name == "vanleer":  # (r + |r|) / (1 + |r|)
        phi = (pr + np.abs(pr)) / np.where(free, 1.0, dn2 + np.abs(pr))
    elif name == "minmod":  # max(0, min(1, r))
        phi = np.clip(pr / safe, 0.0, 1.0)
    elif name == "vanalbada":  # (r^2 + r) / (r^2 + 1) for r > 0
        phi = np.where(pr > 0.0, (up * up + pr) / np.where(free, 1.0, up * up + dn2), 0.0)
    elif name == "superbee":  # max(0, min(2r, 1), min(r, 2))
        r = pr / safe
        phi = np.maximum(0.0, np.maximum(np.minimum(2 * r, 1.0), np.minimum(r, 2.0)))
    elif name == "compressive":  # min(2r, 2)^+: the upper edge of the TVD region
        phi = np.clip(2.0 * pr / safe, 0.0, 2.0)
    else:
        raise ValueError(f"limiter must be one of {LIMITERS}, got {name!r}")
    return np.where(free, 2.0, phi)


def slope_limiter_slope(name: str, up: np.ndarray, dn: np.ndarray,
                        jump: np.ndarray | None = None) -> np.ndarray:
    """``phi_lim'(r)`` at ``r = up / dn`` (0 where ``dn = 0``: there ``phi = 2`` is constant).

    At the kinks (``r = 0`` for all, ``r = 1`` for minmod/compressive, ``r = 1/2, 1, 2`` for
    superbee) this is the one-sided derivative from the right (``r > kink``), except at
    ``r = 0`` where the right derivative is taken too: a derivative of 0 there would make the
    Newton linearisation blind to a slope that starts to open. For ``"sensor"`` it is the
    derivative at a fixed jump (the one with respect to the jump:
    :func:`slope_limiter_jump_slope`).
    """
    if name == "sensor":
        smooth, front = _sensor_parts(up, dn, slopes=True)
        w = sensor_weight(jump)
        return smooth + w * (front - smooth)
    if name in SMOOTH_LIMITERS:
        raise ValueError(f"the {name!r} limiter needs its scale eps: use smooth_limiter or "
                         "smooth_sensor_limiter")
    free = dn == 0.0
    r = up / np.where(free, 1.0, dn)
    pos = r >= 0.0
    if name == "vanleer":
        x = 1.0 / (1.0 + np.abs(r))  # no overflow of (1 + |r|)^2 at huge r
        d = np.where(pos, 2.0 * x * x, 0.0)
    elif name == "minmod":
        d = np.where(pos & (r < 1.0), 1.0, 0.0)
    elif name == "vanalbada":
        d = np.where(pos, (1.0 + 2.0 * r - r * r) / (r * r + 1.0) ** 2, 0.0)
    elif name == "superbee":
        d = np.where(pos & (r < 0.5), 2.0, np.where((r >= 1.0) & (r < 2.0), 1.0, 0.0))
    elif name == "compressive":
        d = np.where(pos & (r < 1.0), 2.0, 0.0)
    else:
        raise ValueError(f"limiter must be one of {LIMITERS}, got {name!r}")
    return np.where(free, 0.0, d)


def slope_limiter_jump_slope(name: str, up: np.ndarray, dn: np.ndarray,
                             jump: np.ndarray) -> np.ndarray:
    """``d phi / d jump`` at a fixed ratio ``r = up / dn`` (0 for every limiter but ``"sensor"``).

    For ``"sensor"``: ``(phi_front(r) - phi_smooth(r)) dw / d jump``; 0 where ``dn = 0`` (both
    limiters are 2 there).
    """
    if name != "sensor":
        return np.zeros(np.shape(dn))
    smooth, front = _sensor_parts(up, dn, slopes=False)
    _, dw = sensor_weight(jump, derivative=True)
    return dw * (front - smooth)


class NodalGradient:
    """Recovered nodal gradients of P1 data: volume-weighted averages of the cell gradients.

    ``g_i = sum_{T ni i} |T| grad(c)|_T / sum_{T ni i} |T|``, exact for linear data. The
    operator is a sparse matrix per direction over this rank's owned cells; contributions of
    cells on other ranks arrive through a reverse and a forward scatter (collective), so the
    gradient of every local node, ghosts included, is the one of the whole mesh.

    Args:
        V: Blocked P1 space (its index map carries the communication).
        n: Number of columns of the data (species).
    """

    def __init__(self, V: fem.FunctionSpace, n: int):
        from scipy.sparse import csr_matrix

        from fem_crossdiff.compat import la

        dofs, X, grads, vol = p1_cell_gradients(V)
        imap = V.dofmap.index_map
        self.nloc = imap.size_local + imap.num_ghosts
        self.gdim, self.n = X.shape[1], n
        self.X = X
        nv = dofs.shape[1]
        rows = np.repeat(dofs, nv, axis=1).ravel()  # node i of the cell ...
        cols = np.tile(dofs, (1, nv)).ravel()  # ... gets vol * grad(phi_p) c_p
        self.ops = []
        for g in range(self.gdim):
            vals = np.repeat(vol[:, None], nv * nv, axis=1) * np.tile(grads[:, :, g], (1, nv))
            self.ops.append(csr_matrix((vals.ravel(), (rows, cols)),
                                       shape=(self.nloc, self.nloc)))
        self._vec = la.vector(imap, bs=n * self.gdim)
        self._add = la.InsertMode.add
        w = la.vector(imap, bs=1)
        w.array[:] = np.bincount(dofs.ravel(), np.repeat(vol, nv), self.nloc)
        w.scatter_reverse(self._add)
        w.scatter_forward()
        self._inv_vol = 1.0 / w.array.copy()

    def __call__(self, c: np.ndarray) -> np.ndarray:
        """Nodal gradients ``(nloc, n, gdim)`` of the local nodal values ``c`` ``(nloc, n)``."""
        out = self._vec.array.reshape(self.nloc, self.n, self.gdim)
        for g, op in enumerate(self.ops):
            out[:, :, g] = op @ c
        self._vec.scatter_reverse(self._add)
        self._vec.scatter_forward()
        return self._vec.array.reshape(self.nloc, self.n, self.gdim) * self._inv_vol[:, None,
                                                                                     None]


class MusclFlux(UpwindFlux):
    """Upwind edge fluxes with a limited second-order reconstruction of the species fractions.

    ``G_k,ij = b_k w_ij c_k,f F_ij + sigma w_ij (rho_k,i - rho_k,j)`` as in
    :class:`UpwindFlux`, with the upstream fraction ``c_k,up`` replaced by the face value

        c_k,f = c_k,up + phi / 2 (c_k,dn - c_k,up),
        phi = min_k min(phi_lim(r_k), clamp_k),   r_k = D_k,up / (c_k,dn - c_k,up),

    where ``D_k,up = 2 grad(c_k)_up . (x_dn - x_up) - (c_k,dn - c_k,up)`` is the difference
    across the upstream node along the edge ("extended edge" value from the recovered nodal
    gradient, exact on uniform 1D meshes), and ``phi_lim`` a TVD limiter (:data:`LIMITERS`;
    ``"sensor"`` also depends on the scaled jump ``a_k |c_k,dn - c_k,up|``; ``"smooth"``
    replaces the limiter and the clamp's minimum by smooth functions, see
    :func:`smooth_limiter` and :func:`smooth_clamped`).

    Why one ``phi`` for all species: ``sum_k a_k (c_k,dn - c_k,up) = 0``, so
    ``sum_k a_k c_k,f = 1`` and ``sum_k a_k G_k`` is exactly the one-species scheme for
    ``u = sum_k a_k rho_k`` (the reduction of Theorem 1.8 survives the reconstruction). The
    limiter is multiplied by ``kappa = 2 S_i S_j / (S_i^2 + S_j^2)`` (``1 - O(h^2)`` on smooth
    data), which takes it continuously to 0 towards vacuum, where ``c_k`` is undefined.

    Why the clamp: ``clamp_k = 2 |c_k,up| / |c_k,dn - c_k,up|``, so ``|c_k,f - c_k,up| <=
    |c_k,up|``: ``c_k,f`` has the sign of ``c_k,up`` and tends to zero with it. Then no mass
    leaves a node with ``rho_k < 0`` towards a node with ``rho_k >= 0``, which is what the
    positivity proof of implicit Euler needs (``docs/schemes.md``), and the face value is
    continuous where a species vanishes. Where ``c_k,up >> h |grad c_k|`` it is inactive.

    :meth:`add_jacobian` assembles the frozen-limiter Jacobian (``phi`` and the gradients
    held, the edge pattern of the first-order scheme); :meth:`exact_derivatives` gives the
    exact one (assembled with the distance-2 pattern by
    :class:`fem_crossdiff.models.muscl.ExactJacobian`); :meth:`residual` is exact.

    Args:
        V: Blocked P1 space with one component per species.
        params: Model coefficients.
        negative_edges: Treatment of negative-weight edges, see :func:`edge_weights`.
        limiter: One of :data:`LIMITERS` (default ``"smooth-sensor"``).
    """

    def __init__(self, V: fem.FunctionSpace, params: ModelParams, negative_edges: str = "voronoi",
                 limiter: str = DEFAULT_LIMITER):
        if limiter not in LIMITERS:
            raise ValueError(f"limiter must be one of {LIMITERS}, got {limiter!r}")
        super().__init__(V, params, negative_edges)
        self.limiter = limiter
        self.comm = V.mesh.comm
        self.grad = NodalGradient(V, self.n)
        X = self.grad.X
        self._d = X[self.J] - X[self.I]  # (E, gdim), from the first to the second end
        #: Total density below which the fractions are regularised in the slopes.
        self.vacuum_scale = 0.0
        if limiter in SMOOTH_LIMITERS:  # eps^2 = (K h / L)^3 per edge (h its length), (E, 1)
            h = np.linalg.norm(self._d, axis=1)
            from fem_crossdiff.mollify import _global_mesh_sizes

            L = _global_mesh_sizes(V.mesh)[1]  # collective
            self._eps2 = ((SMOOTH_K * h / L) ** 3)[:, None]

    def set_vacuum_scale(self, rho: np.ndarray, rel: float = 1e-3) -> None:
        """``vacuum_scale = rel * max S`` of the state ``rho`` (collective; once per step)."""
        smax = float((rho @ self.a).max(initial=0.0))
        self.vacuum_scale = rel * self.comm.allreduce(smax, op=MPI.MAX)
        self._cache_key = None

    def _edge_terms(self, rho: np.ndarray):
        """Edge fluxes and the frozen-limiter quantities of the Jacobian (collective).

        The cache test is reduced over the ranks: the gradient recovery communicates, so all
        ranks must take the same branch.
        """
        key = self._cache_key
        hit = key is not None and key.shape == rho.shape and np.array_equal(key, rho)
        if self.comm.allreduce(hit, op=MPI.LAND):
            return self._cache
        p, a = self.params, self.a
        S = rho @ a
        ok = S > 1e-300
        inv_node = np.where(ok, 1.0 / np.where(ok, S, 1.0), 0.0)
        c = rho * inv_node[:, None]  # fractions at every node (0 in vacuum)
        # the slopes are taken of fractions regularised near vacuum, rho / sqrt(S^2 + d^2):
        # the true fraction jumps when an empty node starts to fill, and through the
        # gradients that jump would reach the limiter of every neighbouring edge
        d2 = self.vacuum_scale ** 2
        c_reg = rho / np.sqrt(S * S + d2)[:, None] if d2 > 0.0 else c
        grad = self.grad(c_reg)  # (nloc, n, gdim)
        # the gathers to the edges' ends and to the upstream end, one compiled pass each
        # (muscl_kernels: the numpy gathers, np.where and einsum took 0.1 s per residual at
        # 252k unknowns): ri, rj, ci, cj = rho, c at the ends, Si, Sj = max(S, 0), inv_i, inv_j
        from fem_crossdiff.models.muscl_kernels import edge_gather, upstream_terms

        nE, n = self.I.size, self.n
        ri, rj, ci, cj = (np.empty((nE, n)) for _ in range(4))
        Si, Sj, inv_i, inv_j = (np.empty(nE) for _ in range(4))
        edge_gather(self.I, self.J, rho, c, S, inv_node, ri, rj, ci, cj, Si, Sj, inv_i, inv_j)
        Pi, Pj = self.law.pressure(Si), self.law.pressure(Sj)
        up_i = Pi >= Pj
        # c_up, d_dn = c_dn - c_up, d_vec (up -> dn), d_up = 2 grad(c)_up . d_vec - d_dn
        c_up, d_dn, d_up = (np.empty((nE, n)) for _ in range(3))
        d_vec = np.empty_like(self._d)
        upstream_terms(self.I, self.J, up_i, ci, cj, self._d, grad, c_up, d_dn, d_vec, d_up)
        jump = np.abs(d_dn) * a  # a_k c_k lies in [0, 1]: the jump's scale (the sensor's)
        if self.limiter in SMOOTH_LIMITERS:
            # in the scaled differences a_k d (the same for both species of a pair: sum_k
            # a_k d_k = 0), and a smooth minimum with the clamp (no branch to flip)
            eps2 = self._eps2
            phi_lim = self._smooth_limiter(d_up * a, d_dn * a, eps2)
            phi_k, clamp = self._smooth_clamp(phi_lim, d_dn * a, c_up * a, np.sqrt(eps2))
        else:
            phi_lim = slope_limiter(self.limiter, d_up, d_dn, jump)
            # |c_f - c_up| <= |c_up| on every edge: c_f has the sign of c_up and tends to 0
            # with it from both sides (a clamp on one side only jumps at c_up = 0 and Newton
            # cycles)
            big = np.abs(d_dn) > 0.0
            clamp = np.where(big, 2.0 * np.abs(c_up) / np.where(big, np.abs(d_dn), 1.0),
                             np.inf)
            phi_k = np.minimum(phi_lim, clamp)
        # kappa = 2 S_i S_j / (S_i^2 + S_j^2) = 1 - O(h^2) where S is smooth, 0 in vacuum:
        # the correction fades continuously where c is undefined (a switch at S = 0 makes
        # the residual discontinuous while a node fills, and Newton cycles)
        s2 = Si * Si + Sj * Sj
        kappa = np.where(s2 > 0.0, 2.0 * Si * Sj / np.where(s2 > 0.0, s2, 1.0), 0.0)
        Phi = np.minimum(phi_k.min(axis=1), 2.0)
        phi = Phi * kappa
        cf = c_up + (0.5 * phi)[:, None] * d_dn
        dP = Pi - Pj
        Sm = 0.5 * (Si + Sj)
        F = Sm * dP
        q = (self.b * cf) * F[:, None] + p.sigma * (ri - rj)
        G = self.W[:, None] * q
        lim = limit_fluxes(G, q, ri, rj, self._lim, self._beta)
        out = G, (ci, cj, Si, Sj, inv_i, inv_j, up_i, phi, cf, F, Sm, dP, lim)
        # what the exact Jacobian needs besides (kept by reference: no extra work)
        self._aux = dict(S=S, inv_node=inv_node, c_up=c_up, d_dn=d_dn, d_up=d_up,
                         d_vec=d_vec, jump=jump, phi_lim=phi_lim, clamp=clamp, phi_k=phi_k,
                         Phi=Phi, kappa=kappa, s2=s2, d2=d2)
        self._cache_key = rho.copy()
        self._cache = out
        return out

    def _fill_blocks(self, rho: np.ndarray, out: np.ndarray):
        """Frozen-limiter Jacobian: ``phi`` and the gradients held, ``c_i, c_j, S, P`` exact."""
        ui, uj, di, dj, _ = self._held_factor_blocks(self._edge_terms(rho)[1])
        self._write_blocks(ui, uj, di, dj, out)

    def exact_derivatives(self, rho: np.ndarray):
        """The exact derivatives of the edge fluxes ``G`` (E, n), limiter included.

        ``G_e`` depends on the values at its ends directly (fractions, pressure, ``kappa``,
        the limiter's arguments ``c_dn - c_up`` and ``c_up``) and, through ``D_up``, on the
        recovered gradient of the fraction of the limiting species ``k*`` (the argmin of
        ``phi_k``) at the upstream node. ``phi`` is piecewise smooth (min over species, the
        limiter's and the clamp's kinks, the switch of the upstream node): on each piece the
        derivative is the classical one, at a kink the one-sided derivative of the branch
        taken by the residual.

        Returns:
            ``(Ji, Jj, Y, kstar, up_i)``: ``Ji[e, k, l] = dG_e,k / drho_l`` at the first end,
            ``Jj`` at the second, ``Y`` (E, n) with ``dG_e,k / d grad(c_reg,k*)_up = Y[e, k]
            d_vec[e]`` (``d_vec`` from the upstream to the downstream node), ``kstar`` (E,)
            and the upstream flag (E,).
        """
        p, a, b, w = self.params, self.a, self.b, self.W
        n = self.n
        _, (ci, cj, Si, Sj, inv_i, inv_j, up_i, phi, cf, F, Sm, dP, lim) = self._edge_terms(rho)
        x = self._aux
        nE = ci.shape[0]
        ar = np.arange(nE)
        kstar = np.argmin(x["phi_k"], axis=1)
        Phi, kappa = x["Phi"], x["kappa"]
        if self.limiter in SMOOTH_LIMITERS:  # every term weighted: no branch, no division
            A_up, A_dn, A_c = self._smooth_coefficients(ar, kstar)
            act = np.ones(nE, dtype=bool)
        else:
            A_up, A_dn, A_c, act = self._branch_coefficients(ar, kstar)
        # phi's derivative reaches species k through d_dn,k dphi ~ d_dn,k / d_dn,k*; with
        # sum_k a_k d_dn,k = 0 the ratio is O(1) (for two species exactly a_k* / a_k), unless
        # d_dn,k* is at round-off level (a fraction equal to 1 or 0 up to 1e-16), where it
        # is noise and reached 1e80 (measured: Newton diverged). There phi is held, as in the
        # frozen Jacobian: the residual is unchanged, the neglected term moves G by round-off.
        # (the test of act against round-off, the coefficients per end, kappa's derivative,
        # the blocks and Y: one compiled pass, muscl_kernels.exact_blocks; its docstring
        # gives the formulas and tests/test_schemes.py their numpy form)
        from fem_crossdiff.models.muscl_kernels import exact_blocks

        Ji, Jj, Y = np.empty((nE, n, n)), np.empty((nE, n, n)), np.empty((nE, n))
        exact_blocks(self.I, self.J, x["S"], up_i, act, A_up, A_dn, A_c, kstar, x["d_dn"],
                     ci, cj, inv_i, inv_j, Si, Sj, self.law.derivative(Si),
                     self.law.derivative(Sj), dP, Sm, phi, kappa, Phi, F, cf, w, a, b,
                     float(p.sigma), max(1e-9 * self.vacuum_scale, 1e-300), Ji, Jj, Y)
        eye = np.eye(n)
        if lim is not None:
            e, (theta, g_dth_i, g_dth_j) = self._lim, lim
            Ji[e] *= theta[:, :, None]
            Jj[e] *= theta[:, :, None]
            Ji[e] += g_dth_i[:, :, None] * eye
            Jj[e] += g_dth_j[:, :, None] * eye
            Y[e] *= theta
        return Ji, Jj, Y, kstar, up_i

    def _branch_coefficients(self, ar: np.ndarray, kstar: np.ndarray):
        """``d Phi / d (D_up, c_dn - c_up, c_up)`` of species ``k*`` on the branch taken.

        The limiter ``phi_lim(r)`` or the clamp ``2 |c_up| / |dd|``, whichever is smaller; at
        a kink the one-sided derivative (:func:`slope_limiter_slope`). Returns the three
        coefficients and where they apply (``act``: not at ``phi = 2`` nor ``dd ~ 0``).
        """
        x, a = self._aux, self.a
        act = x["phi_k"][ar, kstar] < 2.0  # else phi = 2 kappa, no limiter derivative
        du, dd, cu = x["d_up"][ar, kstar], x["d_dn"][ar, kstar], x["c_up"][ar, kstar]
        use_clamp = x["clamp"][ar, kstar] < x["phi_lim"][ar, kstar]
        # limiter branch: phi(r), r = du / dd
        jump = x["jump"][ar, kstar]
        slope = slope_limiter_slope(self.limiter, du, dd, jump)
        tiny = np.abs(dd) < 1e-150  # no 1/dd^2 overflow (the term is held there, see below)
        safe_dd = np.where(tiny, 1.0, dd)
        inv_dd = 1.0 / safe_dd
        r = du * inv_dd
        A_up = np.where(use_clamp, 0.0, slope * inv_dd)
        # the sensor's weight depends on jump = a_k* |dd| besides r
        dphi_jump = slope_limiter_jump_slope(self.limiter, du, dd, jump) * a[kstar]
        A_dn = np.where(use_clamp, 0.0, -slope * r * inv_dd + dphi_jump * np.sign(dd))
        # clamp branch: 2 |c_up| / |dd| (at c_up = 0 the derivative towards c_up > 0)
        sg = np.where(cu >= 0.0, 1.0, -1.0)
        A_dn = np.where(use_clamp, -np.where(tiny, 0.0, x["clamp"][ar, kstar]) * inv_dd, A_dn)
        A_c = np.where(use_clamp, 2.0 * sg * np.abs(inv_dd), 0.0)
        act &= ~tiny
        return A_up, A_dn, A_c, act

    @property
    def _smooth_limiter(self):
        """:func:`smooth_limiter` or :func:`smooth_sensor_limiter` (by :attr:`limiter`)."""
        return smooth_sensor_limiter if self.limiter == "smooth-sensor" else smooth_limiter

    @property
    def _smooth_clamp(self):
        """:func:`smooth_clamped` or :func:`compact_clamped` (``"smooth-sensor"``)."""
        return compact_clamped if self.limiter == "smooth-sensor" else smooth_clamped

    def _smooth_coefficients(self, ar: np.ndarray, kstar: np.ndarray):
        """``d Phi / d (D_up, c_dn - c_up, c_up)`` of species ``k*`` for the smooth limiters.

        ``Phi = g(x(u, v), v, c)`` in the scaled ``u = a D_up``, ``v = a (c_dn - c_up)``,
        ``c = a c_up`` (:func:`smooth_limiter` or :func:`smooth_sensor_limiter`, then
        :func:`smooth_clamped` or :func:`compact_clamped`): the chain rule through both the
        limiter and the clamp, each weighted by the smooth minimum's derivative (for
        ``"smooth-sensor"`` the jump ``|v|`` of the sensor's weight is part of ``dx / dv``,
        that of the clamp's width part of ``dg / dv``).
        """
        x, ak = self._aux, self.a[kstar]
        u, v, c = (x[key][ar, kstar] * ak for key in ("d_up", "d_dn", "c_up"))
        eps2 = self._eps2[:, 0]
        phi_lim, dx_du, dx_dv = self._smooth_limiter(u, v, eps2, derivative=True)
        _, _, g_x, g_v, g_c = self._smooth_clamp(phi_lim, v, c, np.sqrt(eps2), derivative=True)
        return ak * g_x * dx_du, ak * (g_x * dx_dv + g_v), ak * g_c

    def c_reg_derivative(self) -> np.ndarray:
        """``d c_reg,k / d rho_l`` (nloc, n, n) at every local node, at the last state.

        ``c_reg = rho / sqrt(S^2 + d^2)`` (``rho / S`` without the regularisation).
        """
        x, a = self._aux, self.a
        S, d2 = x["S"], x["d2"]
        rho = self._cache_key
        eye = np.eye(self.n)[None]
        if d2 > 0.0:
            inv = 1.0 / np.sqrt(S * S + d2)
            return (eye * inv[:, None, None]
                    - (rho * (S * inv ** 3)[:, None])[:, :, None] * a[None, None, :])
        inv = x["inv_node"]
        c = rho * inv[:, None]
        return (eye - c[:, :, None] * a[None, None, :]) * inv[:, None, None]
