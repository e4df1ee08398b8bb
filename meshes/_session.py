"""Run gmsh on rank 0 only, without ever leaving the other ranks waiting in a collective.

Every gmsh call of the package goes through :func:`run_on_root`: rank 0 opens a private gmsh
model (initialising gmsh only if the caller has not), runs a ``populate`` callback, and then
broadcasts success or the error text *before* any collective call, so a gmsh failure raises on
every rank instead of leaving ranks 1.. blocked in ``model_to_mesh``. Options changed here are
restored, the private model removed, and gmsh finalised only when this module initialised it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["GmshError", "import_gmsh", "run_on_root"]

_COUNTER = itertools.count()


class GmshError(RuntimeError):
    """gmsh failed on rank 0; raised on every rank of the communicator."""


def import_gmsh():
    """Return the ``gmsh`` module, or raise a ModuleNotFoundError saying how to get it.

    Returns:
        The imported ``gmsh`` Python module.

    Raises:
        ModuleNotFoundError: gmsh is not installed.
    """
    try:
        import gmsh
    except ModuleNotFoundError as exc:  # pragma: no cover - gmsh is in the [wheels] extra
        raise ModuleNotFoundError(
            "the meshes package needs the gmsh Python module (pip install gmsh)", name="gmsh"
        ) from exc
    return gmsh


class _Session:
    """A private gmsh model on the calling rank; :meth:`close` undoes what :meth:`open` did."""

    def __init__(self, label: str, options: Mapping[str, float]):
        self.gmsh = import_gmsh()
        self.label = f"meshes_{label}_{next(_COUNTER)}"
        self.options = dict(options)
        self.owns_gmsh = False
        self.saved: dict[str, float] = {}
        self.previous_model: str | None = None
        self.model_added = False

    def open(self) -> None:
        g = self.gmsh
        if not g.isInitialized():
            # interruptible=False: gmsh otherwise installs a SIGINT handler, which fails
            # outside the main thread (pytest-timeout, Jupyter kernels, thread pools).
            g.initialize(interruptible=False)
            self.owns_gmsh = True
        else:
            self.previous_model = g.model.getCurrent()
        options = {"General.Terminal": 0.0, **self.options}
        for name, value in options.items():
            if not self.owns_gmsh:
                self.saved[name] = g.option.getNumber(name)
            g.option.setNumber(name, float(value))
        g.model.add(self.label)
        self.model_added = True

    def close(self) -> None:
        g = self.gmsh
        if not g.isInitialized():
            return
        if self.owns_gmsh:
            g.finalize()
            return
        # The caller's gmsh session lives on: leave it exactly as it was found.
        try:
            if self.model_added:
                g.model.setCurrent(self.label)
                g.model.remove()
            if self.previous_model is not None:
                g.model.setCurrent(self.previous_model)
        finally:
            for name, value in self.saved.items():
                g.option.setNumber(name, value)


def run_on_root(
    comm,
    label: str,
    populate: Callable[[Any], None],
    consume: Callable[[Any], Any],
    options: Mapping[str, float] | None = None,
) -> Any:
    """Build a gmsh model on rank 0 and hand it to a collective ``consume`` on every rank.

    Args:
        comm: MPI communicator; collective.
        label: Short name used in the private gmsh model's name and in error messages.
        populate: Called on rank 0 only with the ``gmsh`` module, a fresh current model and the
            ``options`` set; builds geometry, physical groups and (usually) the mesh.
        consume: Called on every rank with ``gmsh.model`` on rank 0 and ``None`` elsewhere,
            only after ``populate`` succeeded on rank 0 (e.g. ``gmshio.model_to_mesh``).
        options: gmsh numeric options for the duration of the call (``General.Terminal`` is
            always 0); restored afterwards when the caller had initialised gmsh.

    Returns:
        Whatever ``consume`` returns, on every rank.

    Raises:
        GmshError: on every rank, if gmsh initialisation or ``populate`` raised on rank 0.
    """
    session = None
    try:
        error = None
        if comm.rank == 0:
            try:
                session = _Session(label, options or {})
                session.open()
                populate(session.gmsh)
            except Exception as exc:  # noqa: BLE001 - re-raised on all ranks below
                error = f"{type(exc).__name__}: {exc}"
        error = comm.bcast(error, root=0)
        if error is not None:
            raise GmshError(f"gmsh failed on rank 0 while building '{label}': {error}")
        return consume(session.gmsh.model if comm.rank == 0 else None)
    finally:
        if session is not None:
            session.close()
