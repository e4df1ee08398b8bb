"""Recovered nodal gradients of P1 data (scheme independent)."""

from __future__ import annotations

import numpy as np

from fem_crossdiff.compat import fem, la
from fem_crossdiff.discretisation.edges import p1_cell_gradients

__all__ = ["NodalGradient"]


class NodalGradient:
    """Recovered nodal gradients of P1 data: volume-weighted averages of the cell gradients.

    ``g_i = sum_{T ni i} |T| grad(c)|_T / sum_{T ni i} |T|``, exact for linear data. The
    operator is a sparse matrix per direction over this rank's owned cells; contributions of
    cells on other ranks arrive through a reverse and a forward scatter (collective), so the
    gradient of every local node, ghosts included, is the one of the whole mesh.

    Args:
        V: Blocked P1 space (its index map carries the communication).
        n: Number of columns of the data (species).

    Attributes:
        X: Coordinates of the local nodes ``(nloc, gdim)``.
        inv_vol: ``1 / sum_{T ni i} |T|`` per local node (the averaging weights' denominator).
    """

    def __init__(self, V: fem.FunctionSpace, n: int):
        from scipy.sparse import csr_matrix

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
        self.inv_vol = 1.0 / w.array.copy()

    def __call__(self, c: np.ndarray) -> np.ndarray:
        """Nodal gradients ``(nloc, n, gdim)`` of the local nodal values ``c`` ``(nloc, n)``."""
        out = self._vec.array.reshape(self.nloc, self.n, self.gdim)
        for g, op in enumerate(self.ops):
            out[:, :, g] = op @ c
        self._vec.scatter_reverse(self._add)
        self._vec.scatter_forward()
        return self._vec.array.reshape(self.nloc, self.n, self.gdim) * self.inv_vol[:, None,
                                                                                     None]

