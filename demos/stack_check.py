# # Stack check
# A short DOLFINx solve that proves the installed stack works (serial or under mpiexec).

import fem_crossdiff.compat as compat
from fem_crossdiff.log import get_logger

compat.check_versions()
log = get_logger()
log.info("stack: %s", compat.version_report())
