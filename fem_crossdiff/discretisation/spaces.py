"""The blocked species space and the scalar space of one species."""

from __future__ import annotations

import numpy as np

from fem_crossdiff.compat import fem

__all__ = ["species_spaces"]


def species_spaces(msh, degree: int, n: int):
    """The blocked Lagrange space of ``n`` species, the scalar space, and the species dofs.

    Returns:
        ``(V, V0, dofs)``: ``V`` with one component per species, ``V0`` the scalar space with
        the layout of one component, and ``dofs[k]`` the local indices (owned + ghost) of
        species ``k`` in ``V``'s array, in ``V0``'s order.
    """
    V = fem.functionspace(msh, ("Lagrange", degree, (n,)))
    if n == 1:
        V0 = fem.functionspace(msh, ("Lagrange", degree))
        imap = V0.dofmap.index_map
        return V, V0, [np.arange(imap.size_local + imap.num_ghosts, dtype=np.int32)]
    subs = [V.sub(k).collapse() for k in range(n)]
    return V, subs[0][0], [np.asarray(d, dtype=np.int32).ravel() for _, d in subs]
