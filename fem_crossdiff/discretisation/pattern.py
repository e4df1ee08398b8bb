"""Block-CSR patterns of edge Jacobians on blocked P1 spaces, and their public writers.

Scheme independent: an edge-flux model gives, per edge, the derivatives of its flux ``G_ij``
(``E x n``) with respect to the values at the two ends; :class:`EdgeBlocks` holds the edges of
the mesh (:func:`~fem_crossdiff.discretisation.edges.edge_weights`), the block pattern of the
four blocks ``(ii, ij, ji, jj)`` of every edge, and writes those derivatives into block-CSR
values (:meth:`EdgeBlocks.write_blocks` for rank-one-plus-diagonal blocks,
:meth:`EdgeBlocks.write_dense` for full ones) and into PETSc matrices by COO assembly
(:meth:`BlockPattern.set_matrix`).
"""

from __future__ import annotations

import numpy as np

from fem_crossdiff.compat import PETSc, fem
from fem_crossdiff.discretisation.edges import edge_weights, limiter_ratio

__all__ = ["BlockPattern", "EdgeBlocks"]


class BlockPattern:
    """A block-CSR edge pattern written into PETSc matrices by COO assembly.

    Subclasses hold ``indptr`` and ``indices`` over ``nloc`` local nodes, blocks ``n x n``.

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
        brow = np.repeat(np.arange(self.nloc, dtype=np.int64), np.diff(self.indptr))
        bcol = np.asarray(self.indices, dtype=np.int64)
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



class EdgeBlocks(BlockPattern):
    """The edges of a blocked P1 space, their weights and the block pattern of their Jacobian.

    Attributes:
        I, J: Local block indices of the edges' ends (``I < J``), ``(E,)``.
        W: This rank's partial weights ``w_ij`` (owned cells), ``(E,)``.
        limited: Indices of the edges whose fluxes the positivity limiter acts on.
        beta: That limiter's ratio (:func:`~fem_crossdiff.discretisation.edges.limiter_ratio`).
        negative_edges: The (approximate) global count of edges of negative total weight.
        nloc: Local (owned + ghost) nodes.
        n: Species (block size).
        a: Volume weights: the blocks of the rank-one writer are ``u a^T + diag(d)``.
        nnzb, indptr, indices: The block-CSR pattern (``nnzb`` blocks over ``nloc`` rows).
        slots: Block ``s`` of the pattern comes from row ``slots[s]`` of the contiguous
            layout of :meth:`write_blocks`: rows ``[0, E)`` the blocks ``(i, j)``, ``[E, 2E)``
            the blocks ``(j, i)``, then one diagonal block per node of ``diag_node``.
        diag_node: The nodes of the diagonal blocks, in that layout's order.
        ends: ``I`` and ``J`` concatenated (one bincount sums over both ends).

    Args:
        V: Blocked P1 space with one component per species.
        a: Volume weights, one per species.
        negative_edges: Treatment of negative-weight edges, see
            :func:`~fem_crossdiff.discretisation.edges.edge_weights`.
    """

    def __init__(self, V: fem.FunctionSpace, a, negative_edges: str = "voronoi"):
        self.a = np.asarray(a)
        self.n = self.a.size
        if V.dofmap.index_map_bs != self.n:
            raise ValueError(f"space has block size {V.dofmap.index_map_bs}, need {self.n}")
        self.I, self.J, self.W, self.limited, self.negative_edges = edge_weights(
            V, negative_edges)
        self.beta = limiter_ratio(negative_edges)
        self.nloc = V.dofmap.index_map.size_local + V.dofmap.index_map.num_ghosts
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
        self.diag_node = brow[diag]
        # CSR slot -> source row of the block values (ij blocks, ji blocks, diagonal blocks)
        self.slots = np.empty(keys.size, dtype=np.int64)
        self.slots[np.concatenate([inv[nE:2 * nE], inv[2 * nE:3 * nE], diag])] = np.arange(
            keys.size)
        self.indptr = np.zeros(nloc + 1, dtype=PETSc.IntType)
        np.cumsum(np.bincount(brow, minlength=nloc), out=self.indptr[1:])
        self.indices = bcol.astype(PETSc.IntType)
        self.nnzb = keys.size
        # both edge ends in one index array: one bincount per component sums over edges
        self.ends = np.concatenate([self.I, self.J])
        self._src = None

    def sum_to_nodes(self, G: np.ndarray) -> np.ndarray:
        """``R_i = sum_j G_ij`` on local nodes, ``(nloc, n)``, from edge fluxes ``G`` ``(E, n)``.

        ``G_ij`` leaves the first end and enters the second (``G_ji = -G_ij``).
        """
        R = np.empty((self.nloc, self.n))
        both = np.concatenate([G, -G])
        for k in range(self.n):
            R[:, k] = np.bincount(self.ends, both[:, k], self.nloc)
        return R

    def write_blocks(self, ui: np.ndarray, uj: np.ndarray, di: np.ndarray, dj: np.ndarray,
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
            self._src = np.empty((2 * nE + self.diag_node.size, n, n))
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
            U[:, k] = np.bincount(self.ends, both_u[:, k], nloc)
            D[:, k] = np.bincount(self.ends, both_d[:, k], nloc)
        diag = src[2 * nE:]
        np.multiply(U[self.diag_node][:, :, None], a, out=diag)
        flat[2 * nE:, :: n + 1] += D[self.diag_node]
        np.take(flat, self.slots, axis=0, out=out)

    def write_dense(self, Ji: np.ndarray, Jj: np.ndarray, out: np.ndarray) -> None:
        """Block-CSR values from full per-edge blocks ``J_i``, ``J_j`` ``(E, n, n)``.

        The layout of :meth:`write_blocks`: ``(i, j)`` gets ``J_j``, ``(j, i)``
        gets ``-J_i``, the diagonal block of a node the sum of ``J_i`` over the edges it
        starts and of ``-J_j`` over those it ends.
        """
        nE, nn, nloc = Ji.shape[0], self.n * self.n, self.nloc
        both = np.concatenate([Ji, -Jj]).reshape(2 * nE, nn)
        D = np.empty((nloc, nn))
        for k in range(nn):
            D[:, k] = np.bincount(self.ends, both[:, k], nloc)
        src = np.concatenate([Jj.reshape(nE, nn), -Ji.reshape(nE, nn), D[self.diag_node]])
        np.take(src, self.slots, axis=0, out=out)
