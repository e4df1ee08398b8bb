"""Reference cost: one DOLFINx Poisson solve (P1, Dirichlet, CG + GAMG), shared by the benchmarks.

The benchmarks compare the cost of one implicit step of the cross-diffusion solver with this
solve at the same number of unknowns, on the same machine and ranks, so that the ratio measures
the scheme and not the hardware. Forms are compiled and the matrix (its sparsity) is created
before the clock starts, as they would be reused by a time loop; the timed part is what every
solve pays: matrix and right-hand side assembly with the boundary condition, GAMG set-up and the
CG iterations.
"""

from __future__ import annotations

import time

import numpy as np
import ufl

from fem_crossdiff.compat import MPI, PETSc, fem, mesh

#: Relative residual tolerance of the reference CG solve (a typical engineering accuracy).
POISSON_RTOL = 1e-8


def square_side_for(unknowns: int) -> int:
    """Cells per side ``n`` of ``create_unit_square(n, n)`` with about ``unknowns`` P1 vertices."""
    return max(1, int(round(np.sqrt(unknowns))) - 1)


class PoissonReference:
    """A P1 Poisson problem ``-Lap u = f`` on the unit square, ``u = 0`` on the boundary.

    The constructor compiles the forms, creates the matrix and does one untimed solve (JIT of the
    assembly kernels, PETSc's first-use costs); :meth:`timed_solve` then reassembles matrix and
    right-hand side and rebuilds the GAMG hierarchy from scratch every time, as a fresh solve
    would. The benchmarks interleave these solves with the steps they compare against, so both
    see the same load on a shared machine.

    Args:
        comm: MPI communicator.
        n: Cells per side (``(n + 1)^2`` unknowns).
    """

    def __init__(self, comm, n: int):
        self.comm = comm
        msh = mesh.create_unit_square(comm, n, n)
        V = fem.functionspace(msh, ("Lagrange", 1))
        u, v = ufl.TrialFunction(V), ufl.TestFunction(V)
        x = ufl.SpatialCoordinate(msh)
        self._exact = ufl.sin(ufl.pi * x[0]) * ufl.sin(2 * ufl.pi * x[1])
        f = 5 * ufl.pi**2 * self._exact
        self._a = fem.form(ufl.inner(ufl.grad(u), ufl.grad(v)) * ufl.dx)
        self._L = fem.form(f * v * ufl.dx)
        tdim = msh.topology.dim
        msh.topology.create_connectivity(tdim - 1, tdim)
        facets = mesh.exterior_facet_indices(msh.topology)
        dofs = fem.locate_dofs_topological(V, tdim - 1, facets)
        self._bc = fem.dirichletbc(PETSc.ScalarType(0.0), dofs, V)
        self._A = fem.petsc.create_matrix(self._a)
        self._b = fem.petsc.create_vector(V)
        self.uh = fem.Function(V)
        #: Global number of unknowns.
        self.unknowns = int(V.dofmap.index_map.size_global)
        self._solve()

    def _solve(self) -> int:
        A, b, bc, a = self._A, self._b, self._bc, self._a
        A.zeroEntries()
        fem.petsc.assemble_matrix(A, a, bcs=[bc])
        A.assemble()
        with b.localForm() as bl:
            bl.set(0.0)
        fem.petsc.assemble_vector(b, self._L)
        fem.petsc.apply_lifting(b, [a], bcs=[[bc]])
        b.ghostUpdate(addv=PETSc.InsertMode.ADD, mode=PETSc.ScatterMode.REVERSE)
        bc.set(b.array_w)
        ksp = PETSc.KSP().create(self.comm)
        ksp.setOperators(A)
        ksp.setType("cg")
        ksp.getPC().setType("gamg")
        ksp.setTolerances(rtol=POISSON_RTOL, atol=1e-50, max_it=1000)
        ksp.setUp()
        ksp.solve(b, self.uh.x.petsc_vec)
        its, reason = ksp.getIterationNumber(), ksp.getConvergedReason()
        ksp.destroy()
        if reason <= 0:
            raise RuntimeError(f"Poisson CG did not converge (reason {reason})")
        self.uh.x.scatter_forward()
        return its

    def timed_solve(self) -> tuple[float, int]:
        """One full solve; returns its wall time (maximum over ranks) and CG iterations."""
        self.comm.Barrier()
        t0 = time.perf_counter()
        its = self._solve()
        return self.comm.allreduce(time.perf_counter() - t0, op=MPI.MAX), its

    def error(self) -> float:
        """Relative L2 error of the last solve against the exact solution (a sanity check)."""
        e2 = fem.assemble_scalar(fem.form((self.uh - self._exact) ** 2 * ufl.dx))
        n2 = fem.assemble_scalar(fem.form(self._exact**2 * ufl.dx))
        return float(np.sqrt(self.comm.allreduce(e2, op=MPI.SUM)
                             / self.comm.allreduce(n2, op=MPI.SUM)))
