"""The nonlinear problem of one time step: DOLFINx's ``NonlinearProblem`` over any model.

:class:`CrossDiffusionProblem` subclasses :class:`dolfinx.fem.petsc.NonlinearProblem` and adds
one argument, the model. Its SNES callbacks are module-level functions bound with
:func:`functools.partial` to the data they need (the unknown, the compiled forms, the model and
the time-term diagonal), never to the problem itself: PETSc keeps callbacks on the C side, out
of reach of Python's cycle collector, so a callback holding its problem would keep the problem,
its mesh and their MPI communicators alive for ever.

Residual: ``F(rho) = T(rho) + form part + nodal part``, where ``T`` is the time term (BDF
coefficients, and any source), the form part is the model's UFL form and the nodal part the
model's numpy contributions (summed over ranks by the reverse ghost update). For a lumped model
whose spatial part is all nodal, the time term is kept as numbers (:class:`LumpedTimeTerm`:
the lumped mass is constant), its Jacobian is the diagonal ``c0 m_i`` set once per step size,
and nothing is assembled from UFL in the Newton loop but a source term. Other models assemble
the UFL form and its derivative.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import weakref

import numpy as np

from fem_crossdiff.compat import MPI, PETSc, fem

__all__ = ["CrossDiffusionProblem", "MultigridState", "free_communicators", "free_released",
           "wrapped_vectors"]


class _Tracked:
    """The PETSc communicator of one mesh whose problems go to PETSc's garbage list.

    Every PETSc object that DOLFINx makes for a mesh (matrices, vectors, the SNES) lives on one
    PETSc communicator, a duplicate of the mesh's: ``comm``. Objects freed on a parallel
    communicator wait in its garbage list until ``PETSc.garbage_cleanup`` is called on it
    collectively; the communicator itself is freed with its last object. Once the mesh is gone
    nobody can name that communicator any more, so without this record its garbage, and two MPI
    communicators per mesh, were kept for ever: a long sweep grew by megabytes per case and
    MPICH aborted after about 1000 meshes ("Too many communicators").

    ``anchor`` (an empty vector on ``comm``) keeps the communicator valid for as long as the
    record exists, whatever else is destroyed; :func:`free_released` destroys it, and the
    communicator with it, once the mesh is gone on every rank.
    """

    def __init__(self, msh, comm):
        self.mesh = weakref.ref(msh)
        self.comm = comm
        self.anchor = PETSc.Vec().createMPI((0, PETSc.DECIDE), comm=comm)
        self.group = msh.comm.Get_group()
        self.live = 0  # problems not yet freed
        self.collected = False  # a cycle collection ran since the last problem was freed


def free_communicators(comm, limit: int = 4096) -> int:
    """How many more communicators this process can make: a probe for leaks (collective).

    Duplicates ``comm`` until MPI refuses (errors are returned rather than fatal while it
    probes) or ``limit`` is reached, frees the duplicates, and returns the smallest count over
    the ranks. MPICH has about 2048; a process that keeps communicators of freed solvers sees
    the count fall by two per solver.
    """
    handler = comm.Get_errhandler()
    comm.Set_errhandler(MPI.ERRORS_RETURN)
    made = []
    try:
        while len(made) < limit:
            try:
                made.append(comm.Dup())
            except MPI.Exception:
                break
    finally:
        for c in made:
            c.Free()
        comm.Set_errhandler(handler)
        handler.Free()
    return comm.allreduce(len(made), op=MPI.MIN)


@contextlib.contextmanager
def wrapped_vectors(*vectors):
    """PETSc views of DOLFINx vectors for one block, destroyed at its end on every rank.

    ``Function.x.petsc_vec`` caches a PETSc vector that DOLFINx destroys when the Function is
    freed. A Function held by a reference cycle (a compiled form holds its coefficients) is
    freed by the cycle collector, whose runs differ between ranks; when it destroys the last
    PETSc object of a communicator on one rank only, PETSc frees its duplicate of that
    communicator there, and the next vector on it makes one rank duplicate the communicator
    again while the others do not: the job hangs (seen in the MPI test suite, in the L2
    projection of particles). Views made here live exactly as long as the block, alike on
    every rank.

    Args:
        vectors: :class:`dolfinx.la.Vector` objects (``Function.x``).

    Yields:
        One ``PETSc.Vec`` per vector, sharing its memory.
    """
    from dolfinx.la.petsc import create_vector_wrap

    views = []
    try:
        for x in vectors:
            views.append(create_vector_wrap(x))
        yield views[0] if len(views) == 1 else views
    finally:
        for v in views:
            v.destroy()


#: Agreed key -> record, for every mesh that carried a problem (see :func:`free_released`).
_tracked: dict[int, _Tracked] = {}
_next_key = 0


def _track(msh, petsc_comm) -> int:
    """Record ``msh``'s PETSc communicator (collective on the mesh's communicator).

    The key is agreed over the communicator (the largest next key of its ranks), so every rank
    names the record alike, whatever each rank did on other communicators before.
    """
    global _next_key
    for key, rec in _tracked.items():
        if rec.mesh() is msh:
            rec.live += 1
            return key
    comm = msh.comm
    key = comm.allreduce(_next_key, op=MPI.MAX) if comm.size > 1 else _next_key
    _next_key = key + 1
    rec = _tracked[key] = _Tracked(msh, petsc_comm)
    rec.live = 1
    return key


def _untrack(key: int) -> None:
    """A problem of record ``key`` was freed (local: no communication)."""
    rec = _tracked.get(key)
    if rec is not None:
        rec.live -= 1
        rec.collected = False


def free_released(comm=None) -> int:
    """Destroy the PETSc objects of freed solvers, and their communicators (collective).

    Safe points are where every rank of ``comm`` calls this: each new problem calls it on its
    mesh's communicator, the test suite after every test, sweeps between cases. For every
    recorded mesh communicator with the same ranks as ``comm``, in an order agreed by all ranks,
    PETSc destroys the objects that every rank has freed (PETSc itself agrees on them); when the
    mesh is gone on every rank, the record is dropped with its communicator. Records of other
    groups of ranks (``COMM_SELF`` meshes on some ranks) wait for a call on their own group.

    A mesh still alive after all its problems were freed is usually held only by a reference
    cycle (DOLFINx's compiled forms make some): a cycle collection is run first then.

    Args:
        comm: The communicator all calling ranks share (``None``: ``COMM_WORLD``).

    Returns:
        The number of records dropped on this rank.
    """
    comm = MPI.COMM_WORLD if comm is None else comm
    held = [rec for rec in _tracked.values()
            if rec.live <= 0 and not rec.collected and rec.mesh() is not None]
    if held:  # once per freed problem: a mesh its owner keeps is not collected again and again
        gc.collect()
        for rec in held:
            rec.collected = True
    group = comm.Get_group()
    try:
        mine = [(key, rec.mesh() is None) for key, rec in _tracked.items()
                if MPI.Group.Compare(rec.group, group) != MPI.UNEQUAL]
    finally:
        group.Free()
    if comm.size > 1:
        lists = comm.allgather(mine)
        keys = set.intersection(*(set(k for k, _ in lst) for lst in lists))
        gone = {k for k in keys if all(dict(lst)[k] for lst in lists)}
    else:
        keys, gone = {k for k, _ in mine}, {k for k, dead in mine if dead}
    dropped = 0
    for key in sorted(keys):
        rec = _tracked[key]
        PETSc.garbage_cleanup(rec.comm)
        if key in gone:
            # destroyed in the same agreed order on every rank: with nothing else left on the
            # communicator (the mesh is gone), PETSc frees the communicator with it
            del _tracked[key]
            rec.anchor.destroy()
            rec.group.Free()
            dropped += 1
    return dropped


class MultigridState:
    """When the preconditioner's hierarchy is rebuilt, and how often it was.

    Attributes:
        every_newton: Rebuild before every Newton step (set while a step is retried).
        rebuilds: Number of rebuilds so far.
    """

    def __init__(self):
        self.every_newton = False
        self.rebuilds = 0

    def rebuild(self, snes) -> None:
        """Drop the hierarchy: the next linear solve builds it from the current matrix."""
        snes.getKSP().getPC().reset()
        self.rebuilds += 1


class LumpedTimeTerm:
    """The lumped time term ``m_i (c0 rho_i + c1 rho^n_i + c2 rho^{n-1}_i)``, kept as numbers.

    The lumped mass is constant, so the term needs no UFL assembly: its residual is a vector
    expression and its Jacobian the diagonal ``c0 m_i``, set once per step size.

    Args:
        mass: Lumped mass of every owned entry of the blocked unknown.
        history: The previous states ``[rho^n, rho^{n-1}]`` (functions, read at each call).
        diag: A vector of the Jacobian's row layout (filled with ``c0 m``).
    """

    def __init__(self, mass: np.ndarray, history, diag):
        self.mass, self.history, self.diag = mass, history, diag
        self.c = (1.0, -1.0, 0.0)

    def set_coefficients(self, c0: float, c1: float, c2: float) -> None:
        """BDF coefficients (already divided by ``dt``)."""
        self.c = (c0, c1, c2)
        self.diag.array[:] = c0 * self.mass

    def add_residual(self, rho_owned: np.ndarray, b_owned: np.ndarray) -> None:
        """``b += m (c0 rho + c1 rho^n + c2 rho^{n-1})`` on the owned entries."""
        k = self.mass.size
        c0, c1, c2 = self.c
        t = c0 * rho_owned + c1 * self.history[0].x.array[:k]
        if c2 != 0.0:
            t += c2 * self.history[1].x.array[:k]
        b_owned += self.mass * t


class CallbackData:
    """What the SNES callbacks need, in one holder that the problem empties when it is freed.

    PETSc keeps a freed problem's SNES (and with it the callbacks) on its garbage list until
    the next collective clean-up on the same communicator; callbacks holding the unknown and
    the model directly would keep the mesh and its communicator alive until then, which may be
    never (a new mesh has a new communicator), and MPICH runs out of communicators. Emptying
    the holder is local and immediate.
    """

    __slots__ = ("u", "F", "J", "model", "n", "time_term", "time_diag")

    def __init__(self, **values):
        for name in self.__slots__:
            setattr(self, name, values.get(name))

    def release(self) -> None:
        """Drop every reference."""
        for name in self.__slots__:
            setattr(self, name, None)


def assemble_residual(data: CallbackData, snes, x, b):
    """SNES residual callback: assembled form (if any), nodal contributions, time term."""
    u = data.u
    x.ghostUpdate(addv=PETSc.InsertMode.INSERT, mode=PETSc.ScatterMode.FORWARD)
    fem.petsc.assign(x, u)
    with b.localForm() as bl:
        bl.set(0.0)
        if data.F is not None:
            fem.petsc.assemble_vector(b, data.F)
        R = data.model.residual(u.x.array.reshape(-1, data.n))
        if R is not None:
            bl.array_w[:] += R.reshape(-1)
    b.ghostUpdate(addv=PETSc.InsertMode.ADD, mode=PETSc.ScatterMode.REVERSE)
    if data.time_term is not None:
        bw = b.array_w
        data.time_term.add_residual(u.x.array[: bw.size], bw)


def assemble_jacobian(data: CallbackData, snes, x, J, P):
    """SNES Jacobian callback: form part (if any), nodal part, constant time diagonal."""
    u, model = data.u, data.model
    x.ghostUpdate(addv=PETSc.InsertMode.INSERT, mode=PETSc.ScatterMode.FORWARD)
    fem.petsc.assign(x, u)
    A = P  # the assembled matrix (the preconditioner of a matrix-free J)
    rho = u.x.array.reshape(-1, data.n)
    if data.J is not None:
        A.zeroEntries()
        fem.petsc.assemble_matrix(A, data.J)
        A.assemble()
    else:  # all nodal: the model sets every entry (COO), then the time diagonal is added
        model.add_jacobian(A, rho)
        A.assemble()
    if data.time_diag is not None:
        A.setDiagonal(data.time_diag, addv=PETSc.InsertMode.ADD_VALUES)
    if J is not P:
        model.update_operator(rho)
        J.assemble()


def newton_update(state: MultigridState, snes, it):
    """SNES update callback: drop the multigrid hierarchy when asked to (stale prolongators)."""
    if state.every_newton:
        state.rebuild(snes)


class _Released:
    """Mixin: PETSc objects are released, not destroyed, when the problem is freed.

    DOLFINx's ``__del__`` destroys the SNES and matrices explicitly, and destroying them is
    collective (MUMPS finalises with a collective call): when the ranks free a problem at
    different moments (one rank still holds it in a traceback) the run deadlocks. Left to
    petsc4py, objects on a parallel communicator go to PETSc's garbage list instead, destroyed
    collectively by :func:`free_released` when the next problem is created (or at any other
    point where every rank calls it).
    """

    def __del__(self):
        key = getattr(self, "_tracking_key", None)
        if key is not None:
            _untrack(key)
        data = getattr(self, "_data", None)
        if data is not None:
            data.release()
        shell = getattr(self, "_shell", None)
        if shell is not None:
            release = getattr(shell.getPythonContext(), "release", None)
            if release is not None:
                release()


class CrossDiffusionProblem(_Released, fem.petsc.NonlinearProblem):
    """``NonlinearProblem`` for ``T(rho) + model(rho) = 0``.

    Args:
        time_form: The time term (and any source) as a UFL form.
        u: The unknown (blocked function).
        model: The spatial discretisation (:class:`fem_crossdiff.models.base.Model`).
        mass: For a lumped model, the lumped mass of every entry of the owned part of ``u``
            (the diagonal of the time term per unit ``c0``); ``None`` otherwise.
        history: The previous states (for the time term kept as numbers).
        source_form: The source part of ``time_form`` alone (``None``: no source).
        petsc_options_prefix: Unique options prefix.
        petsc_options: SNES/KSP/PC options.
    """

    def __init__(self, time_form, u, model, *, mass: np.ndarray | None, history=(),
                 source_form=None, petsc_options_prefix: str, petsc_options: dict):
        import ufl

        v = ufl.TestFunction(u.function_space)
        spatial = model.form(u, v)
        F = time_form if spatial is None else time_form + spatial
        msh = u.function_space.mesh
        free_released(msh.comm)  # the problems freed since the last one was made
        super().__init__(F, u, petsc_options_prefix=petsc_options_prefix,
                         petsc_options=petsc_options)
        self._tracking_key = _track(msh, self.solver.getComm())
        n = u.function_space.dofmap.index_map_bs
        self.model = model
        # the constant diagonal replaces the UFL Jacobian only when the whole form is the
        # lumped time term (a model with a form part gets the full UFL derivative)
        self._mass = mass if spatial is None else None
        self.time_diag = self.time_term = None
        F_cb = self.F
        if self._mass is not None:
            self.time_diag = self.A.createVecLeft()
            self.time_term = LumpedTimeTerm(self._mass, history, self.time_diag)
            self.time_term.set_coefficients(1.0, -1.0, 0.0)
            F_cb = None if source_form is None else fem.form(source_form)
        snes = self.solver
        J_form = None if self.time_diag is not None else self.J
        shell = model.jacobian_operator(self.A)
        self.multigrid = MultigridState()
        self._data = CallbackData(u=u, F=F_cb, J=J_form, model=model, n=n,
                                  time_term=self.time_term, time_diag=self.time_diag)
        snes.setFunction(functools.partial(assemble_residual, self._data), self.b)
        snes.setJacobian(functools.partial(assemble_jacobian, self._data),
                         self.A if shell is None else shell, self.A)
        snes.setUpdate(functools.partial(newton_update, self.multigrid))
        self._shell = shell

    def set_time_coefficients(self, c0: float, c1: float, c2: float) -> None:
        """BDF coefficients of a lumped time term kept as numbers (once per step size)."""
        if self.time_term is not None:
            self.time_term.set_coefficients(c0, c1, c2)
