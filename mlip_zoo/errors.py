"""Every exception mlip-zoo raises, in one place.

Each one also subclasses the builtin it behaves like, so ``except FileNotFoundError`` keeps
working for callers who do not know our names, and each message says what to do next.
"""

from __future__ import annotations


class MlipZooError(Exception):
    """Root of every mlip-zoo error."""


class CardError(MlipZooError, ValueError):
    """A model card is malformed or inconsistent. The message names the file and the field."""


class UnknownModelError(MlipZooError, KeyError):
    """No card has this key."""

    def __str__(self) -> str:  # KeyError would otherwise print the message in quotes
        return str(self.args[0])


class UnknownFamilyError(MlipZooError, KeyError):
    """A card names a family no adapter is registered for."""

    def __str__(self) -> str:
        return str(self.args[0])


class MissingExtraError(MlipZooError, ImportError):
    """The family's Python package is not installed."""


class WeightsError(MlipZooError, OSError):
    """Weights could not be obtained or verified."""


class WeightsNotAvailableError(WeightsError, FileNotFoundError):
    """No source could provide the file (offline and not cached, 404, no mirror...)."""


class ChecksumMismatchError(WeightsError):
    """A file's sha256 differs from the card (or the lock). The file is quarantined, never loaded."""


class UntrustedCheckpointError(WeightsError, PermissionError):
    """A checkpoint needs full unpickling (which can run code) and the card does not say ``trusted: true``."""


class DownloadError(MlipZooError, OSError):
    """A file could not be downloaded: unreachable, refused, or cut short (the partial file is kept,
    and the same command resumes it)."""


class DownloadChecksumError(DownloadError, ValueError):
    """A downloaded file's checksum differs from the published one or the one pinned in a lock
    file. Nothing is kept."""


class PredictionError(MlipZooError, RuntimeError):
    """A model could not produce a valid prediction for one structure."""

    def __init__(self, message: str, *, structure: str | int | None = None):
        super().__init__(message)
        self.structure = structure


class UnsupportedElementError(PredictionError, ValueError):
    """A structure contains an element outside the card's ``elements``."""


class NonFiniteOutputError(PredictionError, ArithmeticError):
    """A model returned NaN or infinity."""


class PropertyNotSupportedError(PredictionError, NotImplementedError):
    """The model does not compute the requested property (e.g. stress)."""


class CapabilityNotSupportedError(MlipZooError, NotImplementedError):
    """The card does not declare a capability a method needs (e.g. ``test_time_training``)."""


class TrainingLabelError(MlipZooError, ValueError):
    """Labels given for (test-time) training do not fit the structures: count, shape or NaN."""


class ConformanceError(PredictionError):
    """A model raised while the conformance kit checked it; the message names the check and structure."""


class UnknownTaskError(MlipZooError, KeyError):
    """No task config has this key."""

    def __str__(self) -> str:
        return str(self.args[0])


class ConfigError(MlipZooError, ValueError):
    """A task or run config is malformed. The message names the file."""


class DatasetError(MlipZooError, ValueError):
    """A dataset cannot be read or lacks what the task needs. The message names file and record."""


class UntrustedDataError(DatasetError, PermissionError):
    """Reading this dataset means unpickling, which can run code: needs --trust-pickle."""


class InvalidStructureError(PredictionError, ValueError):
    """A structure no potential can be asked about (empty, NaN positions, overlapping atoms, a
    singular periodic cell). Named, with the structure's id, before any model sees it."""


class OutputError(MlipZooError, OSError):
    """Results could not be written (read-only folder, disk full). Finished work is kept."""


class MetricError(MlipZooError, ValueError):
    """A task's metrics are inconsistent (e.g. its bootstrap fast path disagrees with ``metrics()``).
    The message names the task and the metric."""


class EnvError(MlipZooError, RuntimeError):
    """A model's isolated Python environment cannot be used (e.g. its Dask workers did not start)."""


class EnvBuildError(EnvError):
    """A model's isolated environment could not be built. ``requirement`` names the requirement pip
    failed on and ``log`` the full build log."""

    def __init__(self, message: str, *, requirement: str, log=None):
        super().__init__(message)
        self.requirement = requirement
        self.log = log


class ClusterError(MlipZooError, RuntimeError):
    """The Dask cluster a run used went away (scheduler lost) or kept killing the workers of one
    shard. The message names the scheduler or the shard; finished shards are kept and a rerun resumes."""
