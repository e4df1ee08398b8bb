"""Finite-element fields driving the nonlinear McKean-Vlasov process (1.7).

The process (1.7) moves with ``-b_k grad g^eps(t, Y)``, where ``g^eps`` comes from the nonlocal
PDE (1.5). Here ``g`` is a scalar Lagrange ``fem.Function`` (degree ``p``) and
:class:`FEGradientField` evaluates ``grad g`` at arbitrary points: a callable ``grad_g(t, y)``
for :class:`fem_crossdiff.particles.FieldDrift`. :class:`FETimeGradientField` interpolates
linearly in time between stored snapshots ``(t_j, g_j)`` so that ``Y`` can be driven by the PDE
solution over ``[0, T]``.

Exactness. ``grad g`` is interpolated once into the discontinuous vector space
``DG_{p-1}``, which contains it exactly (the gradient of a P1 function is piecewise constant,
that of a P2 function piecewise linear on affine cells), and that function is evaluated at the
points. So the evaluation is exact to round-off; the only ambiguity is for points lying on a
face shared by two cells, where the gradient jumps and the owning cell (chosen by the mesh
partition) decides (probability zero for random points).

Parallel evaluation (collective: every rank calls with its own points, any number, possibly
none). The particles of :mod:`fem_crossdiff.particles` are split over the ranks by global index,
the mesh by cells, so a particle usually lies in another rank's cells.
``geometry.determine_point_ownership`` (with the points padded to shape ``(n, 3)``: ``(n,
gdim)`` arrays are silently misread) names the owning rank of every point; the points, with
their positions in the caller's array, are sent there by one ``Alltoallv``; the owner finds the
containing owned cell (bounding-box tree, exact collision test; the closest owned cell for
points within ``padding`` outside the mesh), evaluates the gradients and sends them back by a
second ``Alltoallv``. The memory per rank stays proportional to its points and cells, unlike
gathering the whole field; the result does not depend on the number of ranks (up to the face
ambiguity above). Points outside the mesh by more than ``padding`` get the value
``outside_value`` (default 0, as for a field that vanishes outside the domain) or raise, see
``outside``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import ufl

from fem_crossdiff.compat import MPI, fem, geometry, interpolation_points

__all__ = ["FEGradientField", "FETimeGradientField", "gradient_function"]

_OUTSIDE = ("zero", "raise")


def gradient_function(g) -> fem.Function:
    """``grad g`` interpolated (exactly) into the vector space ``DG_{p-1}``.

    Args:
        g: A scalar Lagrange ``fem.Function`` of degree ``p >= 1`` on an affine mesh.

    Returns:
        A new ``fem.Function`` holding ``grad g``.

    Raises:
        ValueError: if ``g`` is not a scalar function of degree >= 1.
    """
    V = g.function_space
    if V.dofmap.index_map_bs != 1 or len(V.element.value_shape) != 0:
        raise ValueError("g must be a scalar fem.Function (one value per point)")
    degree = V.element.basix_element.degree
    if degree < 1:
        raise ValueError(f"g must have polynomial degree >= 1 (its gradient is used), got {degree}")
    msh = V.mesh
    gdim = msh.geometry.dim
    W = fem.functionspace(msh, ("Discontinuous Lagrange", degree - 1, (gdim,)))
    grad = fem.Function(W, name="grad_g")
    grad.interpolate(fem.Expression(ufl.grad(g), interpolation_points(W)))
    grad.x.scatter_forward()
    return grad


class _PointEvaluator:
    """Collective evaluation of functions on one mesh at points held by any rank."""

    def __init__(self, msh, padding: float, outside: str):
        if outside not in _OUTSIDE:
            raise ValueError(f"outside must be one of {_OUTSIDE}, got {outside!r}")
        padding = float(padding)
        if not (np.isfinite(padding) and padding >= 0.0):
            raise ValueError(f"padding must be a finite number >= 0, got {padding!r}")
        self.msh, self.padding, self.outside = msh, padding, outside
        self.comm = msh.comm
        tdim = msh.topology.dim
        self.owned = np.arange(msh.topology.index_map(tdim).size_local, dtype=np.int32)
        self.tree = geometry.bb_tree(msh, tdim, entities=self.owned)
        self.mid_tree = geometry.create_midpoint_tree(msh, tdim, self.owned)

    def _as_points(self, y) -> np.ndarray:
        gdim = self.msh.geometry.dim
        y = np.asarray(y, dtype=np.float64)
        if y.ndim == 1 and gdim == 1:
            y = y[:, None]
        if y.ndim != 2 or y.shape[1] != gdim:
            raise ValueError(f"points must have shape (n, {gdim}), got {np.shape(y)}")
        if not np.all(np.isfinite(y)):
            raise ValueError("points must be finite")
        out = np.zeros((y.shape[0], 3))
        out[:, :gdim] = y
        return out

    def _cells(self, x3: np.ndarray) -> np.ndarray:
        """Owned cell containing each (received) point; the closest owned cell otherwise."""
        cells = np.full(x3.shape[0], -1, dtype=np.int32)
        if x3.shape[0] == 0 or self.owned.size == 0:
            return cells
        cand = geometry.compute_collisions_points(self.tree, x3)
        coll = geometry.compute_colliding_cells(self.msh, cand, x3)
        off = np.asarray(coll.offsets)
        found = np.diff(off) > 0
        cells[found] = np.asarray(coll.array)[off[:-1][found]]
        if not np.all(found):
            # points the ownership search accepted within ``padding`` of the boundary
            miss = np.flatnonzero(~found)
            cells[miss] = geometry.compute_closest_entity(
                self.tree, self.mid_tree, self.msh, x3[miss])
        return cells

    def __call__(self, funcs: Sequence, y) -> list[np.ndarray]:
        """Values of every function in ``funcs`` at this rank's points ``y`` (collective).

        Returns:
            One array ``(n, value_size)`` per function, in the order of ``y``.
        """
        comm, size = self.comm, self.comm.size
        x3 = self._as_points(y)
        n = x3.shape[0]
        own = geometry.determine_point_ownership(self.msh, x3, self.padding, self.owned)
        owner = np.asarray(own.src_owner, dtype=np.int64).reshape(-1)
        lost = comm.allreduce(int(np.count_nonzero(owner < 0)), op=MPI.SUM)
        if lost and self.outside == "raise":
            raise ValueError(f"{lost} points lie outside the mesh (padding {self.padding})")
        inside = np.flatnonzero(owner >= 0)
        order = inside[np.argsort(owner[inside], kind="stable")]
        send_counts = np.bincount(owner[order], minlength=size).astype(np.int64)
        recv_counts = np.empty(size, dtype=np.int64)
        comm.Alltoall(send_counts, recv_counts)
        sdispl = np.concatenate(([0], np.cumsum(send_counts)[:-1]))
        rdispl = np.concatenate(([0], np.cumsum(recv_counts)[:-1]))
        send_pts = np.ascontiguousarray(x3[order])
        recv_pts = np.empty((int(recv_counts.sum()), 3))
        comm.Alltoallv([send_pts, (send_counts * 3, sdispl * 3), MPI.DOUBLE],
                       [recv_pts, (recv_counts * 3, rdispl * 3), MPI.DOUBLE])
        cells = self._cells(recv_pts)
        results = []
        for f in funcs:
            vs = int(np.prod(f.function_space.element.value_shape, dtype=int))
            vals = np.zeros((recv_pts.shape[0], vs))
            if recv_pts.shape[0]:
                vals[:] = np.asarray(f.eval(recv_pts, cells)).reshape(-1, vs)
            back = np.empty((order.size, vs))
            comm.Alltoallv([np.ascontiguousarray(vals), (recv_counts * vs, rdispl * vs),
                            MPI.DOUBLE],
                           [back, (send_counts * vs, sdispl * vs), MPI.DOUBLE])
            out = np.zeros((n, vs))
            out[order] = back
            results.append(out)
        return results


class FEGradientField:
    """``grad g`` of a fixed FE field at arbitrary points: ``grad_g(t, y)`` for ``FieldDrift``.

    Args:
        g: Scalar Lagrange ``fem.Function`` (degree >= 1), e.g. ``solver.potential_field()``;
            its gradient is copied at construction (later changes of ``g`` are not seen).
        padding: Points within this distance outside the mesh count as inside (reflected
            particles sit exactly on the walls).
        outside: ``"zero"`` (default): points farther outside get a zero gradient;
            ``"raise"``: a ValueError on every rank.

    Calling the object is collective over the mesh communicator.
    """

    def __init__(self, g, padding: float = 1e-10, outside: str = "zero"):
        self.grad = gradient_function(g)
        self.dim = g.function_space.mesh.geometry.dim
        self._eval = _PointEvaluator(g.function_space.mesh, padding, outside)

    def __call__(self, t: float, y: np.ndarray) -> np.ndarray:
        """``grad g(y)`` for this rank's points ``y`` of shape ``(M, d)`` (``t`` is ignored)."""
        return self._eval([self.grad], y)[0]


class FETimeGradientField:
    """``grad g(t, y)`` interpolated linearly in time between FE snapshots ``(t_j, g_j)``.

    For ``t_j <= t <= t_{j+1}``: ``(1 - lam) grad g_j(y) + lam grad g_{j+1}(y)`` with
    ``lam = (t - t_j) / (t_{j+1} - t_j)``; constant extrapolation outside ``[t_0, t_last]``.
    Euler-Maruyama evaluates the drift at the left end of each step, so snapshots at the
    particle step times make the drift exactly the PDE field at those times.

    Args:
        snapshots: ``[(t_j, g_j), ...]`` with increasing times, all ``g_j`` in the same
            scalar Lagrange space; each gradient is copied at construction.
        padding: As for :class:`FEGradientField`.
        outside: As for :class:`FEGradientField`.

    Raises:
        ValueError: for no snapshots, non-increasing times or snapshots on different spaces.
    """

    def __init__(self, snapshots: Sequence, padding: float = 1e-10, outside: str = "zero"):
        snaps = list(snapshots)
        if not snaps:
            raise ValueError("snapshots must hold at least one (t, g) pair")
        times = np.array([float(t) for t, _ in snaps])
        if not np.all(np.isfinite(times)) or np.any(np.diff(times) <= 0):
            raise ValueError(f"snapshot times must be finite and increasing, got {times}")
        V = snaps[0][1].function_space
        if any(g.function_space is not V for _, g in snaps):
            raise ValueError("all snapshots must live in the same function space")
        self.times = times
        self.grads = [gradient_function(g) for _, g in snaps]
        self.dim = V.mesh.geometry.dim
        self._eval = _PointEvaluator(V.mesh, padding, outside)

    def _bracket(self, t: float) -> tuple[int, int, float]:
        times = self.times
        if t <= times[0]:
            return 0, 0, 0.0
        if t >= times[-1]:
            return times.size - 1, times.size - 1, 0.0
        j = int(np.searchsorted(times, t, side="right")) - 1
        lam = (t - times[j]) / (times[j + 1] - times[j])
        tol = 1e-12 * max(1.0, abs(t))
        if lam * (times[j + 1] - times[j]) <= tol:
            return j, j, 0.0
        if (1.0 - lam) * (times[j + 1] - times[j]) <= tol:
            return j + 1, j + 1, 0.0
        return j, j + 1, float(lam)

    def __call__(self, t: float, y: np.ndarray) -> np.ndarray:
        """``grad g(t, y)`` for this rank's points ``y`` of shape ``(M, d)`` (collective).

        ``t`` must be the same on every rank (it is in :func:`fem_crossdiff.particles.state.step`).
        """
        j0, j1, lam = self._bracket(float(t))
        if j0 == j1:
            return self._eval([self.grads[j0]], y)[0]
        v0, v1 = self._eval([self.grads[j0], self.grads[j1]], y)
        return (1.0 - lam) * v0 + lam * v1
