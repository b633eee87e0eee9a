"""mlip-zoo: a model zoo and leaderboard harness for machine-learned interatomic potentials."""

import os
from importlib.metadata import PackageNotFoundError, version

# The harness's linear algebra is 3x3 cells and small graphs: OpenBLAS's extra threads only spin.
# Measured on a loaded 2-core machine, one EMT FIRE + FrechetCellFilter relaxation took 20x more CPU
# with OpenBLAS's default threads than with one. Set before numpy loads (here, or in the workers,
# which inherit it); an explicit user setting wins. Torch's own threads are set per worker.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

try:
    __version__ = version("mlip-zoo")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
