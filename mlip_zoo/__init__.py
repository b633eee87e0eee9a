"""mlip-zoo: a model zoo and leaderboard harness for machine-learned interatomic potentials."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mlip-zoo")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
