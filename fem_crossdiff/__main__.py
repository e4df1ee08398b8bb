"""``python -m fem_crossdiff run|check study.toml``: the same as the ``crossdiff`` command."""

import sys

from fem_crossdiff.cli import main

if __name__ == "__main__":
    sys.exit(main())
