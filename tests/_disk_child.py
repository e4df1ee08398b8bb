"""``crossdiff`` under a file-size limit, or without the free-space check (tests only).

Usage: ``python _disk_child.py MODE ARG -- crossdiff-arguments...``

* ``rlimit BYTES``: ``RLIMIT_FSIZE`` set to BYTES after MPI started (UCX's shared-memory
  files would hit it in ``MPI_Init``), SIGXFSZ ignored so that writes fail with ``EFBIG``;
* ``nocheck -``: :func:`fem_crossdiff.diskio.check_space` disabled, as if the disk filled up
  between the check and the write (exercises the writers' own error handling).
"""

import resource
import signal
import sys

from fem_crossdiff.compat import MPI  # noqa: F401  (MPI starts before the limit)

mode, arg, sep, *args = sys.argv[1:]
assert sep == "--", sys.argv
if mode == "rlimit":
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(arg), int(arg)))
elif mode == "nocheck":
    from fem_crossdiff import diskio

    diskio.check_space = lambda *a, **k: None
else:
    raise SystemExit(f"unknown mode {mode}")

from fem_crossdiff.cli import main  # noqa: E402

sys.exit(main(args))
