"""The output folder: one run at a time (a lock file), and no write through a symbolic link.

**Lock.** A run holds ``<folder>/.crossdiff.lock`` from before it touches anything in its
output folder (``--overwrite``'s deletions included) until it ends, also on an error or
SIGINT/SIGTERM. The file is created with ``O_CREAT | O_EXCL`` (atomic: of two runs started
together, one creates it, the other is refused) and holds the owner's pid, host name and
process start time, as JSON. An existing lock is *stale*, and is taken over with a warning,
when its host is this host and its pid is not alive, or is alive but started at another time
(the pid was reused); a lock written by another host is never judged (its pid means nothing
here) and refuses the folder, naming host and pid: remove the file by hand once that run is
known to be gone. A lock file that cannot be read as JSON is a run caught between creating
and filling it when it is younger than :data:`UNREADABLE_GRACE` seconds (refused), else the
leftover of a run killed at that instant (stale). Takeover renames the stale file to a name
of this process, checks that it is still the stale one (else puts it back), then creates the
lock as above, so two runs taking over one stale lock cannot both win. Under MPI, rank 0
takes and releases the lock; the caller broadcasts the verdict.

**Links.** A run never writes through a symbolic link inside its output folder: before a
restart continues in its folder, :func:`find_links` lists every link there (the run is
refused with exit 2 naming them); every writer opens its files with ``O_NOFOLLOW`` and
writes a fresh temporary (``O_CREAT | O_EXCL``, so a link planted at the temporary's name is
never followed either) that replaces the destination only while that is not a link
(:func:`atomic_write`, :func:`open_append`, :func:`reserve_temporary`). A link that appears
during the run fails the run (exit 1, :class:`UnsafePathError`) without following it.

**Temporaries.** Every temporary file written into an output folder is named
``.crossdiff-tmp-<pid>-<name>`` (:func:`temporary_path`); a run killed during a write leaves
one, and the next run in that folder removes them (:func:`remove_temporaries`), with those of
older versions (``.<name>.tmp*``).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["LOCK_NAME", "TMP_PREFIX", "FolderLock", "LockedError", "UnsafePathError",
           "atomic_write", "open_append", "open_read", "reserve_temporary", "replace_file",
           "temporary_path", "ensure_folder", "refuse_link_on_all", "find_links",
           "remove_temporaries", "is_temporary"]

#: The lock file's name, in the output folder.
LOCK_NAME = ".crossdiff.lock"
#: Prefix of every temporary file a run writes into its output folder.
TMP_PREFIX = ".crossdiff-tmp-"
#: Seconds during which an unreadable (being written) lock file still counts as held.
UNREADABLE_GRACE = 30.0

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class LockedError(RuntimeError):
    """The output folder is held by another live run (the message says which)."""


class UnsafePathError(OSError):
    """A write would go through a symbolic link (refused, nothing written)."""

    def __str__(self):
        return f"{self.strerror}: {self.filename}"


# --------------------------------------------------------------------------- safe writers
def _refuse_link(path: Path) -> None:
    if path.is_symlink():
        raise UnsafePathError(errno.ELOOP, "refusing to write through a symbolic link",
                              f"{path} (-> {os.readlink(path)})")


def ensure_folder(path: str | Path) -> Path:
    """Create the folder ``path`` (and its parents) unless it exists; refuse a link there.

    Raises:
        UnsafePathError: ``path`` is a symbolic link (to a folder or not).
    """
    path = Path(path)
    _refuse_link(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _open(path: Path, flags: int, mode: int = 0o666) -> int:
    _refuse_link(path.parent)
    try:
        return os.open(path, flags | _NOFOLLOW | _CLOEXEC, mode)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.EEXIST):
            _refuse_link(path)  # the link's own error (else: a plain ELOOP/EEXIST)
        raise


def temporary_path(path: str | Path) -> Path:
    """The temporary name of ``path`` for this process (same folder, recognisable prefix)."""
    path = Path(path)
    return path.with_name(f"{TMP_PREFIX}{os.getpid()}-{path.name}")


def is_temporary(name: str) -> bool:
    """Whether a file name is a run's temporary (this version's or an older one's)."""
    return name.startswith(TMP_PREFIX) or (name.startswith(".") and ".tmp" in name[1:])


def reserve_temporary(path: str | Path) -> Path:
    """Create ``path``'s temporary as a new, empty regular file and return its name.

    For writers that open the file by name themselves (matplotlib's animation writers):
    the name is then a fresh regular file of this process, not a planted link. A leftover of
    this pid (a killed earlier process with the same pid) is removed first, without following.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.close(_open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
    return tmp


def replace_file(tmp: str | Path, path: str | Path) -> Path:
    """``os.replace(tmp, path)`` unless ``path`` is a symbolic link (then refused, tmp removed)."""
    tmp, path = Path(tmp), Path(path)
    try:
        _refuse_link(path)
        os.replace(tmp, path)
    finally:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
    return path


def atomic_write(path: str | Path, write: Callable, *, fsync: bool = True) -> Path:
    """Write ``path`` through ``write(binary file)`` into a fresh temporary, then rename it.

    The temporary is created with ``O_CREAT | O_EXCL | O_NOFOLLOW``; the rename is refused
    when ``path`` is a symbolic link (:class:`UnsafePathError`): nothing outside the folder
    is ever written, and an interrupted write leaves the old file or the new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = reserve_temporary(path)
    try:
        with open(_open(tmp, os.O_WRONLY | os.O_TRUNC), "wb") as f:
            write(f)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        replace_file(tmp, path)
    finally:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
    return path


def open_append(path: str | Path, *, truncate: bool = False, newline: str | None = ""):
    """A text file opened for appending, never through a symbolic link.

    Created if absent; ``truncate``: emptied first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if truncate else os.O_APPEND)
    return open(_open(path, flags), "w" if truncate else "a", newline=newline,
                encoding="utf-8")


def open_read(path: str | Path, *, newline: str | None = ""):
    """A text file opened for reading, never through a symbolic link."""
    path = Path(path)
    return open(_open(path, os.O_RDONLY), newline=newline, encoding="utf-8")


def refuse_link_on_all(path: str | Path, comm) -> None:
    """Raise :class:`UnsafePathError` on every rank when ``path`` is a link (rank 0 looks).

    For collective writers: every rank raises at the same point, none is left waiting.
    """
    error = None
    if comm.rank == 0:
        try:
            _refuse_link(Path(path))
        except UnsafePathError as err:
            error = err
    error = comm.bcast(error, root=0)
    if error is not None:
        raise error


# --------------------------------------------------------------------------- folder checks
def find_links(folder: str | Path) -> list[str]:
    """Every symbolic link inside ``folder`` (relative paths, sorted; links not followed)."""
    folder = Path(folder)
    found = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        for name in dirs + files:
            p = Path(root) / name
            if p.is_symlink():
                found.append(str(p.relative_to(folder)))
    return sorted(found)


def remove_temporaries(folder: str | Path) -> list[str]:
    """Remove the temporaries of killed runs from ``folder`` and its run subfolders.

    Only regular files and links are removed (links unlinked, never followed); the lock
    file is kept. Returns the removed names, relative to ``folder``.
    """
    folder = Path(folder)
    removed = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs[:] = [d for d in dirs if not d.endswith((".bp", ".h5"))]  # ADIOS2/HDF5 internals
        for name in files:
            p = Path(root) / name
            if name != LOCK_NAME and is_temporary(name):
                p.unlink()
                removed.append(str(p.relative_to(folder)))
    return sorted(removed)


# --------------------------------------------------------------------------- the lock
def _start_time(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux), else None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2:].split()
    return fields[19] if len(fields) > 19 else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


class FolderLock:
    """The lock of one output folder (``<folder>/.crossdiff.lock``), for one process.

    Args:
        folder: The output folder (created if absent when the lock is taken).
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.held = False
        #: The stale lock taken over, in words (None: there was none).
        self.taken_over: str | None = None
        self._record = {"pid": os.getpid(), "host": socket.gethostname(),
                        "start": _start_time(os.getpid()),
                        "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    def _read(self, path: Path) -> dict | None:
        try:
            with open(_open(path, os.O_RDONLY), encoding="utf-8") as f:
                data = json.load(f)
            return data if isinstance(data, dict) else None
        except (OSError, ValueError):
            return None

    def _stale(self, rec: dict | None, path: Path) -> str | None:
        """Why the lock ``rec`` (read from ``path``) is stale, or None when it is held."""
        if rec is None:
            try:
                age = time.time() - path.lstat().st_mtime
            except FileNotFoundError:
                return "gone"
            return (f"unreadable lock file {age:.0f} s old" if age > UNREADABLE_GRACE
                    else None)
        host, pid = rec.get("host"), rec.get("pid")
        if host != self._record["host"] or not isinstance(pid, int) or pid <= 0:
            return None  # another machine's process: cannot be judged from here
        if not _alive(pid):
            return f"pid {pid} on {host} is not running"
        start = rec.get("start")
        if start is not None and _start_time(pid) not in (None, start):
            return f"pid {pid} on {host} is another process now"
        return None

    def describe(self, rec: dict | None) -> str:
        """The holder of a lock record, in words."""
        if rec is None:
            return "a run that is just taking it"
        return (f"crossdiff pid {rec.get('pid')} on host {rec.get('host')}, since "
                f"{rec.get('since', '?')}")

    def acquire(self) -> None:
        """Take the lock (creating the folder if absent).

        Raises:
            LockedError: a live run holds it (the message names it and the lock file).
            OSError: the folder cannot be created or written.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        _refuse_link(self.path)
        data = json.dumps(self._record).encode()
        for _ in range(10):
            try:
                fd = _open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                rec = self._read(self.path)
                why = self._stale(rec, self.path)
                if why is None:
                    raise LockedError(
                        f"is in use by another run ({self.describe(rec)}; lock file "
                        f"{self.path}): wait for it to end or choose another --output (if "
                        "that run is known to be gone, remove the lock file)") from None
                if why != "gone":
                    self._take_over(rec, why)
                continue
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            self.held = True
            return
        raise LockedError(f"is contended: could not take the lock file {self.path}")

    def _take_over(self, rec: dict | None, why: str) -> None:
        """Move the stale lock ``rec`` away, unless another run replaced it meanwhile."""
        aside = self.path.with_name(f"{TMP_PREFIX}{os.getpid()}-{LOCK_NAME}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # someone else removed it: try to create ours
        if self._read(aside) == rec:
            aside.unlink()
            self.taken_over = f"{self.describe(rec)} ({why})"
            return
        try:  # a fresh lock of another run: put it back (unless a third run took the place)
            os.link(aside, self.path)
        except FileExistsError:
            pass
        aside.unlink()

    def release(self) -> None:
        """Remove the lock file if this process holds it (its own record checked)."""
        if not self.held:
            return
        self.held = False
        if self._read(self.path) == self._record:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()

