"""Writing a run's files: a full disk or an I/O error is one clean failure naming the file.

Every writer of a run (the CSV, VTX/XDMF fields, pictures, animations, checkpoints, particle
files) raises :class:`OutputError`, an ``OSError`` whose message is one plain line naming the
file and the cause (``cannot write out/diagnostics.csv: No space left on device (errno
28)``), whatever raised it underneath: Python's ``OSError``, or the ``RuntimeError`` with
terminal colour codes that ADIOS2 and HDF5 raise through DOLFINx.

The field writers need more than catching. When an ADIOS2 write fails, the ``VTXWriter``
stays open and its C++ destructor closes it again, throws again and, as an exception cannot
leave a destructor, ends the process with SIGABRT at the next garbage collection. So:

* before each field write, :func:`check_space` compares a bound on the bytes the write needs
  with the free space of the file system (``os.statvfs``) and with the process' file-size
  limit (``RLIMIT_FSIZE``), and the write is refused, collectively, before ADIOS2 or HDF5 is
  called (:func:`agreed_space_check`);
* when a write fails anyway (the disk filled up between the check and the write), the writer
  is kept alive until the process ends (:func:`disown`), so that its destructor never runs;
  under MPI the failing rank ends the job (:func:`abort_job`): the ranks are no longer in
  step after an exception from the middle of a collective write.
"""

from __future__ import annotations

import errno as _errno
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["OutputError", "plain", "writing", "names_file", "check_space",
           "agreed_space_check", "disown", "abort_job", "SPACE_MARGIN"]

#: Bytes added to every bound of :func:`check_space`: what closing a writer adds (ADIOS2's
#: index and profiling files, the XDMF text) with room to spare.
SPACE_MARGIN = 64 * 1024

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_ERRNO = re.compile(r"errno\s*=?\s*(\d+)")
#: ADIOS2's prefix: ``[date] [ADIOS2 EXCEPTION] <Toolkit> <component> <Call> :``.
_TAGS = re.compile(r"^(\[[^\]]*\]\s*|<[^>]*>\s*)+:?\s*")


def plain(text: str) -> str:
    """``text`` without terminal escape sequences, on one line."""
    return " ".join(_ANSI.sub("", str(text)).split())


class OutputError(OSError):
    """A file of the run could not be written.

    Attributes:
        path: The file (or folder, for a writer of several files).
        reason: The cause in words (``No space left on device``).
        errno: The error number when known (``ENOSPC``, ``EFBIG``, ``EIO``), else None.
    """

    def __init__(self, path: str | Path, reason: str, code: int | None = None):
        super().__init__(code, reason)
        self.path, self.reason = str(path), plain(reason)

    def __str__(self) -> str:
        code = f" (errno {self.errno})" if self.errno else ""
        return f"cannot write {self.path}: {self.reason}{code}"

    def __reduce__(self):
        return (type(self), (self.path, self.reason, self.errno))

    @classmethod
    def from_error(cls, path: str | Path, err: BaseException) -> OutputError:
        """The :class:`OutputError` for ``err`` raised while writing ``path``.

        An ``OSError`` gives its ``strerror`` and ``errno``; a ``RuntimeError`` of ADIOS2 or
        HDF5 its first line without colour codes, with the errno it names (ADIOS2 says
        ``errno = 28: No space left on device``) turned into the system's words.
        """
        if isinstance(err, OutputError):
            return err
        if isinstance(err, OSError):
            return cls(path, err.strerror or plain(str(err)) or type(err).__name__, err.errno)
        text = _TAGS.sub("", plain(str(err)))
        found = _ERRNO.search(text)
        if found:
            code = int(found.group(1))
            return cls(path, os.strerror(code), code)
        return cls(path, text[:300] or type(err).__name__, None)


@contextmanager
def writing(path: str | Path, *, runtime: bool = False, own_name: bool = True
            ) -> Iterator[None]:
    """Turn an ``OSError`` raised in the block into an :class:`OutputError` naming ``path``.

    Args:
        path: The file written in the block.
        runtime: Also turn ``RuntimeError`` (ADIOS2, HDF5 through DOLFINx) into one.
        own_name: Name ``path`` even when the error names another file (the temporary file
            of an atomic write); ``False``: the file the error names, if any (a writer of
            several files in a folder).
    """
    kinds = (OSError, RuntimeError) if runtime else (OSError,)
    try:
        yield
    except OutputError:
        raise
    except kinds as err:
        name = path if own_name else (getattr(err, "filename", None) or path)
        raise OutputError.from_error(name, err) from None


def names_file(write):
    """Decorate ``write(path, ...)`` so that an ``OSError`` it raises names ``path``.

    The error becomes an :class:`OutputError` naming the destination, not the temporary file
    an atomic write was filling.
    """
    import functools

    @functools.wraps(write)
    def wrapper(path, *args, **kwargs):
        with writing(path):
            return write(path, *args, **kwargs)

    return wrapper


def _existing(path: Path) -> Path:
    """``path`` or its nearest existing parent."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_space(path: str | Path, nbytes: int, grows: str | Path | None = None) -> None:
    """Refuse a write of about ``nbytes`` that the disk or the file-size limit cannot take.

    Args:
        path: The file (or folder) written, for the message and the file system.
        nbytes: A bound on the bytes the write adds (:data:`SPACE_MARGIN` is added).
        grows: The file that grows by the write (default ``path`` when it is a file), compared
            with the process' ``RLIMIT_FSIZE``.

    Raises:
        OutputError: ``ENOSPC`` (free space) or ``EFBIG`` (file-size limit).
    """
    need = int(nbytes) + SPACE_MARGIN
    try:
        st = os.statvfs(_existing(Path(path)))
    except OSError as err:
        raise OutputError.from_error(path, err) from None
    free = st.f_bavail * st.f_frsize
    if free < need:
        raise OutputError(path, f"{os.strerror(_errno.ENOSPC)} ({free} bytes free, a write "
                          f"of up to {need} bytes is next)", _errno.ENOSPC)
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    except (ImportError, OSError, ValueError):  # no such limit on this platform
        return
    if limit == resource.RLIM_INFINITY:
        return
    target = Path(grows) if grows is not None else Path(path)
    size = target.stat().st_size if target.is_file() else 0
    if size + need > limit:
        raise OutputError(path, f"{os.strerror(_errno.EFBIG)} (the process' file-size limit "
                          f"is {limit} bytes; {target.name} has {size}, a write of up to "
                          f"{need} bytes is next)", _errno.EFBIG)


def agreed_space_check(comm, path: str | Path, nbytes: int,
                       grows: str | Path | None = None) -> None:
    """:func:`check_space` on rank 0, the verdict raised on every rank (collective).

    Collective writers (ADIOS2, HDF5) must be skipped by every rank or by none.
    """
    error = None
    if comm.rank == 0:
        try:
            check_space(path, nbytes, grows)
        except OutputError as err:
            error = err
    error = comm.bcast(error, root=0)
    if error is not None:
        raise error


def abort_job(comm, err: BaseException) -> None:
    """End the whole job now: a collective writer failed on this rank (``comm.size > 1``).

    ADIOS2 and HDF5 raise from the middle of their collective calls, so the ranks are no
    longer in step: the next collective call of one rank would be matched with another call
    of the others and the job would hang. This rank prints the one line of
    :meth:`fem_crossdiff.failsafe.Agreement.abort` (the CLI's) and calls ``MPI_Abort``; inside
    the time loop the ranks first try to agree, so that when all of them failed the same
    write only rank 0 prints.
    """
    from types import SimpleNamespace

    from fem_crossdiff import failsafe

    agreement = failsafe._state.get("agreement")  # the time loop's (fem_crossdiff.driver)
    if agreement is not None and agreement.comm.size == comm.size:
        # every rank failed the same collective write (a full disk fails them all): they
        # agree on one error, rank 0 alone prints it, and all abort (HDF5 cannot go on after
        # a failed collective write: it asserts at close); a rank still inside the collective
        # call never arrives, and the grace time then aborts the job from here
        try:
            agreement.check(err, interrupts=False)
        except BaseException as agreed:  # noqa: BLE001  (any error: this is the job's end)
            err = agreed
            if comm.rank != 0:
                failsafe._state["aborting"] = True  # one line: rank 0's
    report = failsafe._state.get("report") or failsafe._default_report
    failsafe.Agreement.abort(SimpleNamespace(comm=comm, grace=0.0, report=report), err)


#: Writers whose close failed: kept so that their C++ destructor never runs (see
#: :func:`disown`).
_DISOWNED: list = []


def quiet_hdf5() -> None:
    """Stop HDF5 from printing its own error stack (we report a failed write in one line).

    HDF5 prints a multi-line diagnostic to stderr for every failed call (a full disk met
    inside an XDMF write) before DOLFINx turns it into an exception; the library that DOLFINx
    loaded is asked, through its C API, to print nothing. A no-op where no HDF5 is loaded.
    """
    import ctypes

    try:
        with open("/proc/self/maps") as f:
            libs = sorted({ln.split()[-1] for ln in f if re.search(r"/libhdf5\.so", ln)})
    except OSError:
        return
    for lib in libs:
        try:
            fn = ctypes.CDLL(lib).H5Eset_auto2
        except (OSError, AttributeError):
            continue
        fn.argtypes = [ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p]
        fn(0, None, None)  # H5E_DEFAULT: the default error stack; no printing function


def disown(writer) -> None:
    """Never destroy ``writer`` (a DOLFINx ``VTXWriter`` or ``XDMFFile`` that failed).

    Its C++ destructor would close the file again; after a failed write ADIOS2 throws there,
    which aborts the process (``std::terminate``). One extra reference on the C++ object keeps
    it alive past the interpreter's shutdown; the system closes its files at exit.
    """
    import ctypes

    obj = getattr(writer, "_cpp_object", writer)
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(obj))
    _DISOWNED.append(obj)
