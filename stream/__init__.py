"""swim-stream live runtime: capture -> ring buffer -> TV-L1 flow -> fused I3D -> decisions -> outputs."""

import os as _os

# The pipeline runs capture, publishing and metrics threads beside torch's OpenMP pool. Spinning
# OpenMP workers (the default ACTIVE policy) starve those threads and, on a loaded 2-core machine,
# made 2-thread TV-L1 10-40x slower than 1 thread. Must be set before torch loads its OpenMP runtime;
# an explicit setting in the environment wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
