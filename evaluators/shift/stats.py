"""Training statistics a test structure's shift is measured against, computed once per reference
set and cached as a small JSON file.

Three axes (Kreiman & Krishnapriyan, 2025):

- **element**: share of the structure's atoms whose element is absent or rare in training
  (rare = below ``rare_fraction`` of all training atoms);
- **force_norm**: mean over atoms of |F_i| of the structure's reference forces (eV/Å);
- **connectivity**: squared distance of the structure's radius-graph Laplacian spectrum from the
  mean training spectrum (see ``spectra``).

For each axis the same score is computed for every training structure; its mean and standard
deviation (population, ddof=0) define the training distribution, and a structure is out of
distribution on an axis when it lies more than one standard deviation from the mean: on either
side for the force norm (unusually small forces are as foreign as large ones), above it for the
element share and the connectivity distance, which already measure distance from training (a
spectrum closer to the training mean than usual is not a shift).

The cache file is keyed by the reference file's sha256 and the statistics config, so a changed
reference or radius is never served stale numbers; a corrupt cache file is recomputed.

**Statistics-only references** (``StatisticsReference``; the one shipped is ``mptrj``): a training
set known from published statistics, not structures, so the rules above, which need every training
structure's score, cannot apply. Each axis gets a rule the statistics decide exactly:

- **element**: share of the structure's atoms whose element is absent from training or below
  ``rare_fraction`` of its atoms; out of distribution when that share is above 0;
- **force_norm** (the force axis; the column keeps its name): share of the structure's free-atom
  force components whose |value| lies in the training's tail, at or above the first edge of the
  training's |force component| histogram; out of distribution when that share exceeds the
  training's own tail share, i.e. the structure's forces are heavier-tailed than training's;
- **connectivity**: unavailable (null score and flag), with the reason the metrics report.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from ase import Atoms
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mlip_zoo.errors import DatasetError
from mlip_zoo.evaluators.shift import spectra

STATS_VERSION = 1
AXES = ("element", "force_norm", "connectivity")
UPPER_ONLY = ("element", "connectivity")  # scores that are distances from training: only large ones shift


class StatsConfig(BaseModel):
    """What the statistics depend on besides the reference file."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    radius: float = Field(default=5.0, gt=0)  # Å, radius graph of the connectivity axis
    max_neighbors: int = Field(default=spectra.MAX_NEIGHBORS, gt=0)
    rare_fraction: float = Field(default=0.01, ge=0, lt=1)  # rarer elements count as shifted


class Moments(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    mean: float
    std: float

    def deviation(self, score: float) -> float:
        """Signed distance from the mean in standard deviations (±inf off a zero-width distribution)."""
        if self.std > 0:
            return (score - self.mean) / self.std
        return 0.0 if score == self.mean else math.copysign(math.inf, score - self.mean)

    def is_ood(self, score: float, *, upper_only: bool = False) -> bool:
        """More than one standard deviation from the mean (above it only, with ``upper_only``)."""
        return (score - self.mean if upper_only else abs(score - self.mean)) > self.std


class Reference(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    file: str
    sha256: str
    n_structures: int
    n_atoms: int


class TrainingStats(BaseModel):
    """The training distribution on the three axes; ``scores``/``is_ood`` place a test structure."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    version: int = STATS_VERSION
    reference: Reference
    config: StatsConfig
    element_fraction: dict[str, float]  # share of all training atoms, per element
    spectrum_mean: list[float]  # mean zero-padded spectrum at config.radius
    element: Moments
    force_norm: Moments
    connectivity: Moments

    def element_shift(self, atoms: Atoms) -> float:
        rare = [self.element_fraction.get(s, 0.0) < self.config.rare_fraction for s in atoms.get_chemical_symbols()]
        return float(np.mean(rare))

    def connectivity_shift(self, atoms: Atoms) -> float:
        spectrum = spectra.laplacian_spectrum(atoms, self.config.radius, self.config.max_neighbors)
        return spectra.spectral_distance(spectrum, np.asarray(self.spectrum_mean))

    def scores(self, atoms: Atoms, forces: np.ndarray) -> dict[str, float]:
        """The structure's score on each axis (``forces``: its reference forces)."""
        return {"element": self.element_shift(atoms), "force_norm": force_norm(forces),
                "connectivity": self.connectivity_shift(atoms)}

    def moments(self, axis: str) -> Moments:
        if axis not in AXES:
            raise KeyError(f"unknown shift axis {axis!r}; axes are {', '.join(AXES)}")
        return getattr(self, axis)

    def is_ood(self, axis: str, score: float) -> bool:
        """Whether ``score`` on ``axis`` lies outside the training distribution (see module doc)."""
        return self.moments(axis).is_ood(score, upper_only=axis in UPPER_ONLY)


def force_norm(forces: np.ndarray) -> float:
    """Mean over atoms of the force vector's norm."""
    return float(np.linalg.norm(np.asarray(forces, dtype=float).reshape(-1, 3), axis=1).mean())


def reference_forces(atoms: Atoms, where: str) -> np.ndarray:
    """The structure's labelled forces, or an error naming it."""
    if atoms.calc is None or "forces" not in getattr(atoms.calc, "results", {}):
        raise DatasetError(f"{where}: needs reference forces (a labelled structure) for the force-norm axis")
    return np.asarray(atoms.calc.results["forces"], dtype=float)


def compute_stats(records: Iterable[Atoms], *, file: str, sha256: str, config: StatsConfig) -> TrainingStats:
    """Statistics of a training set, from one pass over its records."""
    counts: Counter[str] = Counter()
    norms, spectra_ = [], []
    kept: list[list[str]] = []
    for index, atoms in enumerate(records):
        where = f"{file}: record {atoms.info.get('id', index)}"
        if len(atoms) == 0:
            raise DatasetError(f"{where}: has no atoms")
        symbols = atoms.get_chemical_symbols()
        counts.update(symbols)
        kept.append(symbols)
        norms.append(force_norm(reference_forces(atoms, where)))
        spectra_.append(spectra.laplacian_spectrum(atoms, config.radius, config.max_neighbors))
    if not kept:
        raise DatasetError(f"{file}: the reference set is empty; training statistics need structures")
    total = sum(counts.values())
    fraction = {s: counts[s] / total for s in sorted(counts)}
    element = [float(np.mean([fraction[s] < config.rare_fraction for s in symbols])) for symbols in kept]
    mean = spectra.mean_spectrum(spectra_)
    distance = [spectra.spectral_distance(s, mean) for s in spectra_]

    def moments(values) -> Moments:
        return Moments(mean=float(np.mean(values)), std=float(np.std(values)))

    return TrainingStats(reference=Reference(file=file, sha256=sha256, n_structures=len(kept), n_atoms=total),
                         config=config, element_fraction=fraction, spectrum_mean=mean.tolist(),
                         element=moments(element), force_norm=moments(norms), connectivity=moments(distance))


def stats_dir() -> Path:
    from mlip_zoo.zoo.weights import cache_dir

    return cache_dir() / "shift-stats"


def cache_key(sha256: str, config: StatsConfig) -> str:
    blob = json.dumps({"reference": sha256, "config": config.model_dump(), "version": STATS_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def training_stats(reference: Path, config: StatsConfig | None = None, *,
                   cache: Path | None = None) -> tuple[TrainingStats, Path]:
    """The reference set's statistics and the cache file holding them (computed on first use).

    ``reference`` is any dataset file ``iter_records`` reads, with reference forces on every record;
    ``cache`` is the folder for the file (default ``<mlip-zoo cache>/shift-stats``).
    """
    from mlip_zoo.evaluators.data import iter_records, sha256_file
    from mlip_zoo.zoo.weights import atomic_write_text

    config = config or StatsConfig()
    reference = Path(reference)
    if not reference.exists():
        raise DatasetError(f"{reference}: reference (training) set not found; give an existing file")
    digest = sha256_file(reference)
    path = (cache or stats_dir()) / f"{cache_key(digest, config)}.json"
    if path.exists():
        try:
            stats = TrainingStats.model_validate_json(path.read_text())
            if stats.reference.sha256 == digest and stats.config == config:
                return stats, path
        except (OSError, ValidationError):
            pass  # corrupt or foreign: recompute below
    stats = compute_stats(iter_records(reference), file=reference.name, sha256=digest, config=config)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, stats.model_dump_json(indent=1) + "\n")
    return stats, path


# -- statistics-only references ----------------------------------------------------------------

MPTRJ = "mptrj"
MPTRJ_FOLDER = "mptrj-stats"
MPTRJ_COUNTS = "mp-trj-element-counts-by-composition.json"  # element -> atoms over all frames
MPTRJ_HISTS = "mp-trj-hists.json.gz"
# MPtrj has 89 elements; at 1 % of its atoms 72 of them would count as rare. At 1e-4 (about 4,900 of
# its 49.3 M atoms) the rare ones are He, Ne, Ar, Kr, Ac and Pa, each in a few dozen to a few
# thousand atoms: elements a model saw too little of to have learned.
MPTRJ_RARE_FRACTION = 1e-4
# Axes a statistics-only reference cannot place a structure on, and why: the metrics read the
# reason from here when a table's rows hold no score on an axis (MPtrj is the one such reference).
UNAVAILABLE = {"connectivity": "no training structures: MPtrj is shipped as statistics only"}


class StatisticsReference(BaseModel):
    """A training set known only from its statistics (see module doc): scores and OOD rules that
    those statistics decide exactly; axes in ``unavailable`` score None."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    files: dict[str, str]  # file -> sha256, as checked against the folder's manifest
    rare_fraction: float
    element_fraction: dict[str, float]  # share of all training atoms, per element present
    force_edge: float  # eV/Å: |force component| at or above it lies in the training's tail
    force_tail_share: float  # share of all training force components in that tail
    unavailable: dict[str, str]  # axis -> why it has no score

    @property
    def digest(self) -> str:
        """What the scores depend on: the statistics files and the constants of the rules."""
        blob = json.dumps(self.model_dump(exclude={"element_fraction"}), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def element_shift(self, atoms: Atoms) -> float:
        rare = [self.element_fraction.get(s, 0.0) < self.rare_fraction for s in atoms.get_chemical_symbols()]
        return float(np.mean(rare))

    def force_tail(self, forces: np.ndarray, free: np.ndarray) -> float:
        """Share of the free atoms' force components at or above ``force_edge`` in magnitude (0
        without a free atom: no component in the tail)."""
        components = np.abs(np.asarray(forces, dtype=float).reshape(-1, 3)[np.asarray(free, dtype=bool)])
        return float(np.mean(components >= self.force_edge)) if components.size else 0.0

    def scores(self, atoms: Atoms, forces: np.ndarray) -> dict[str, float | None]:
        from mlip_zoo.evaluators.data import free_mask

        out: dict[str, float | None] = {"element": self.element_shift(atoms),
                                        "force_norm": self.force_tail(forces, free_mask(atoms))}
        return {a: None if a in self.unavailable else out[a] for a in AXES}

    def is_ood(self, axis: str, score: float | None) -> bool | None:
        if axis not in AXES:
            raise KeyError(f"unknown shift axis {axis!r}; axes are {', '.join(AXES)}")
        if axis in self.unavailable or score is None:
            return None
        return score > 0 if axis == "element" else score > self.force_tail_share


def mptrj_stats() -> StatisticsReference:
    """MPtrj as matbench-discovery publishes it (``configs/datasets/mptrj-stats``, each file checked
    against its manifest): per-element atom counts, and the histogram of |force component| over
    every atom's x, y and z. That histogram has 300 equal bins from 0 to the largest component; the
    file rounds each bin start to 3 decimals (1.754 for the first edge), so the edge is taken as
    the last bin end over 300 (526.156 / 300 = 1.75385 eV/Å, within 2e-6 of the true one)."""
    import gzip

    from mlip_zoo.evaluators.data import resolve_dataset

    counts_file = resolve_dataset(MPTRJ_FOLDER, MPTRJ_COUNTS).path  # checks every file's sha256
    folder = counts_file.parent
    counts = {s: float(n) for s, n in json.loads(counts_file.read_text()).items() if n}
    with gzip.open(folder / MPTRJ_HISTS, "rt", encoding="utf-8") as f:
        forces = json.load(f)["forces"]
    starts, heights = forces["x"], [y or 0.0 for y in forces["y"]]  # the last entry ends the last bin
    if starts[0] != 0 or len(starts) < 3:
        raise DatasetError(f"{folder / MPTRJ_HISTS}: forces histogram must start at 0 with at least 2 bins")
    total_atoms = sum(counts.values())
    manifest = json.loads((folder / "manifest.json").read_text())
    return StatisticsReference(
        name=MPTRJ, files={name: manifest["files"][name]["sha256"] for name in (MPTRJ_COUNTS, MPTRJ_HISTS)},
        rare_fraction=MPTRJ_RARE_FRACTION, element_fraction={s: n / total_atoms for s, n in sorted(counts.items())},
        force_edge=starts[-1] / (len(starts) - 1), force_tail_share=1.0 - heights[0] / sum(heights),
        unavailable=dict(UNAVAILABLE))


STATISTICS_REFERENCES = {MPTRJ: mptrj_stats}  # name -> loader (options.reference)
