"""The ``eos`` task: the Δ gauge of each elemental crystal against WIEN2k all-electron PBE.

Per record (one elemental crystal of ASE's dcdft collection, with its WIEN2k V0, B0, B1 in
``info``): the cell is scaled isotropically, fractional positions kept, to each of the protocol's
volume factors times the REFERENCE volume (0.94 ... 1.06, 7 points), and the model predicts the
7 energies in one batch. A row stores the volumes and energies per atom; ``metrics`` refits every
curve (``delta.py``: calcDelta's Birch–Murnaghan fit) and recomputes Δ from them, so a result
reproduces from its predictions file alone. A crystal the model cannot do (an element outside
its card, a curve without a minimum inside the computed volumes) is a failed row with the reason,
counted against ``coverage``, never a NaN in a mean.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from ase import Atoms
from pydantic import BaseModel, ConfigDict, Field

from mlip_zoo.evaluators.base import Evaluator, TaskConfig, Terms
from mlip_zoo.evaluators.uncertainty import sorted_median
from mlip_zoo.evaluators.data import record_id
from mlip_zoo.evaluators.eos.delta import delta, fit_birch_murnaghan, fit_birch_murnaghan_many
from mlip_zoo.zoo.potential import Potential

REFERENCE_KEYS = {"v0_ref": "wien2k_volume", "b0_ref": "wien2k_B", "b1_ref": "wien2k_Bp"}  # row column: info key
MEMO_ROWS = 100_000  # fitted rows kept per evaluator (a few MB)
_VEC = pa.list_(pa.float64())


class Protocol(BaseModel):
    """``options`` of configs/tasks/eos.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    volume_factors: tuple[float, ...] = Field(min_length=4)  # times the reference volume
    delta_window: tuple[float, float]  # Δ's integration range, times the mean V0 of the two curves
    reference_size: int = Field(gt=0)  # crystals in the reference set: coverage = scored / this


@dataclass
class Scores:
    """Every row's fit and Δ (NaN where it has none) and why a row is not scored."""

    element: list[str]
    scored: np.ndarray  # bool
    v0: np.ndarray
    b0: np.ndarray
    b1: np.ndarray
    delta: np.ndarray
    v0_rel_error: np.ndarray
    b0_rel_error: np.ndarray
    reasons: list[str | None]


class EOS(Evaluator):
    # the prediction columns that come from the dataset, not the model (``id`` is always one)
    reference_columns = ("element", "n_atoms", "v0_ref", "b0_ref", "b1_ref")
    schema = pa.schema([
        pa.field("id", pa.string()), pa.field("element", pa.string()), pa.field("n_atoms", pa.int32()),
        pa.field("volumes", _VEC), pa.field("energies", _VEC),  # per atom: Å³, eV
        pa.field("v0_ref", pa.float64()), pa.field("b0_ref", pa.float64()), pa.field("b1_ref", pa.float64()),
        pa.field("status", pa.string()), pa.field("reason", pa.string()), pa.field("seconds", pa.float64()),
    ])

    def __init__(self, config: TaskConfig):
        super().__init__(config)
        self._memo: dict[bytes, tuple[np.ndarray, str | None]] = {}  # row contents -> (V0, B0, B1, Δ), reason

    Options = Protocol

    @property
    def protocol(self) -> Protocol:
        return self.options

    def accepts(self, atoms: Atoms) -> str | None:
        symbols = set(atoms.get_chemical_symbols())
        if len(symbols) != 1:
            return (f"holds {', '.join(sorted(symbols))}; the eos task scores elemental crystals "
                    "(one element per record)")
        bad = [key for key in REFERENCE_KEYS.values()
               if not (isinstance(atoms.info.get(key), (int, float)) and math.isfinite(atoms.info[key]))]
        if bad:
            return (f"info lacks a numeric {', '.join(bad)} (the WIEN2k reference EOS: V0 Å³/atom, B0 GPa, B1); "
                    "write them as in configs/datasets/dcdft-wien2k (python -m mlip_zoo.evaluators.eos.make_dataset)")
        if not atoms.pbc.all():
            return "is not periodic in 3 directions; an equation of state needs a bulk crystal"
        return None

    def run(self, potential: Potential, records: list[Atoms]) -> list[dict]:
        factors, rows = self.protocol.volume_factors, []
        for i, atoms in enumerate(records):
            t0 = time.perf_counter()
            n = len(atoms)
            row: dict[str, Any] = {"id": record_id(atoms, i), "element": atoms.get_chemical_symbols()[0], "n_atoms": n,
                                   **{col: float(atoms.info[key]) for col, key in REFERENCE_KEYS.items()}}
            try:
                batch = [scaled(atoms, f * row["v0_ref"]) for f in factors]
                predictions = potential.predict(batch, properties=("energy",))
                row["volumes"] = [a.get_volume() / n for a in batch]
                row["energies"] = [p.energy / n for p in predictions]
                # Checked here so a curve without a minimum is a named failure in the run's
                # record; metrics() refits it from the stored energies all the same.
                fit_birch_murnaghan(row["volumes"], row["energies"])
                row.update(status="ok", reason=None)
            except Exception as exc:  # recorded, never fatal: one element must not sink a run
                row.update(status="failed", reason=f"{row['element']}: {type(exc).__name__}: {exc}")
            row["seconds"] = time.perf_counter() - t0
            rows.append(row)
        return rows

    def scores(self, table: pa.Table) -> Scores:
        """Refit every row with status ok; the Δ and errors of each against its reference."""
        elements, ids, n = table.column("element").to_pylist(), table.column("id").to_pylist(), table.num_rows
        owner: dict[str, str] = {}
        for rid, el in zip(ids, elements, strict=True):
            if owner.setdefault(el, rid) != rid:
                raise ValueError(f"records {owner[el]} and {rid} are both {el}; the eos task scores one crystal "
                                 "per element (its metrics are keyed by element)")
        ok = np.array([s == "ok" for s in table.column("status").to_pylist()], dtype=bool)
        reasons: list[str | None] = [None if s else (r or "failed")
                                     for s, r in zip(ok, table.column("reason").to_pylist(), strict=True)]
        ref = np.column_stack([table.column(c).to_numpy() for c in REFERENCE_KEYS])
        fit = np.full((n, 4), np.nan)  # V0, B0, B1, Δ
        index = np.flatnonzero(ok)
        if len(index):
            volumes, energies = _curves(table.take(index))
            m = volumes.shape[1]
            rows = np.concatenate([volumes, energies, ref[index]], axis=1)
            keys = [row.tobytes() for row in rows]
            # The bootstrap scores 1000 resamples of the same rows: each distinct row is fitted once.
            new = list({key: j for j, key in enumerate(keys) if key not in self._memo}.values())
            if new:
                fits = fit_birch_murnaghan_many(rows[new, :m], rows[new, m:2 * m])
                d = delta(fits.v0, fits.b0, fits.b1, *rows[new, 2 * m:].T, window=self.protocol.delta_window)
                if len(self._memo) + len(new) > MEMO_ROWS:
                    self._memo.clear()
                for j, values, why in zip(new, np.column_stack([fits.v0, fits.b0, fits.b1, d]), fits.reasons,
                                          strict=True):
                    self._memo[keys[j]] = (values, why)
            for j, key in zip(index, keys, strict=True):
                fit[j], why = self._memo[key]
                if why is not None:
                    reasons[j] = f"{elements[j]}: EOSFitError: {why}"
        scored = np.array([r is None for r in reasons], dtype=bool)
        v0, b0, b1, d = fit.T
        return Scores(elements, scored, v0, b0, b1, d, np.abs(v0 - ref[:, 0]) / ref[:, 0],
                      np.abs(b0 - ref[:, 1]) / ref[:, 1], reasons)

    def metrics(self, table: pa.Table) -> dict[str, Any]:
        s = self.scores(table)
        n_scored = int(s.scored.sum())
        values = list(zip(s.v0.tolist(), s.b0.tolist(), s.b1.tolist(), s.delta.tolist(), strict=True))

        def mean(values: np.ndarray) -> float | None:
            return float(np.mean(values[s.scored])) if n_scored else None

        return {
            "delta_median": float(np.median(s.delta[s.scored])) if n_scored else None,
            "delta_mean": mean(s.delta),
            "v0_rel_error_mean": mean(s.v0_rel_error),
            "b0_rel_error_mean": mean(s.b0_rel_error),
            "coverage": n_scored / self.protocol.reference_size,
            "n_scored": n_scored,
            "elements": {s.element[i]: dict(zip(("V0", "B0", "B1", "delta"), values[i], strict=True))
                         for i in np.flatnonzero(s.scored).tolist()},
            "failures": {s.element[i]: s.reasons[i] for i in np.flatnonzero(~s.scored)},
        }

    def resampler(self, table: pa.Table):
        """``delta_median`` of every resample: the scored rows sorted by Δ once, each resample's
        median read from its cumulative counts (every other estimate is a ratio-of-sums term)."""
        s = self.scores(table)
        rows = np.flatnonzero(s.scored & ~np.isnan(s.delta))
        if rows.size < s.scored.sum():  # a NaN Δ makes np.median NaN: leave it to metrics()
            return None
        rows = rows[np.argsort(s.delta[rows], kind="stable")]
        values = s.delta[rows]
        return lambda counts: {"delta_median": sorted_median(values, counts[:, rows])}

    def metric_terms(self, table: pa.Table) -> Terms:
        """Every mean, the coverage and each element's values as ratios of per-row sums, so the
        bootstrap resamples them at once; only ``delta_median`` is recomputed per resample."""
        s = self.scores(table)
        n = table.num_rows
        scored = s.scored.astype(float)

        def masked(values: np.ndarray) -> np.ndarray:
            return np.where(s.scored, values, 0.0)

        terms: Terms = {
            "delta_mean": (masked(s.delta), scored),
            "v0_rel_error_mean": (masked(s.v0_rel_error), scored),
            "b0_rel_error_mean": (masked(s.b0_rel_error), scored),
            # n_scored / reference_size as a ratio whose denominator sums to 1 over any n rows drawn
            "coverage": (scored / self.protocol.reference_size, np.full(n, 1.0 / n)),
        }
        for element in {s.element[i] for i in np.flatnonzero(s.scored)}:
            rows = np.array([e == element for e in s.element], dtype=float)
            for name, values in (("V0", s.v0), ("B0", s.b0), ("B1", s.b1), ("delta", s.delta)):
                terms[f"elements.{element}.{name}"] = (np.where(rows > 0, values, 0.0), rows)
        return terms


def _curves(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """The volumes and energies of ``table``'s rows as two (rows, points) arrays."""
    curves = []
    for name in ("volumes", "energies"):
        column = table.column(name).combine_chunks()
        lengths = column.value_lengths().to_numpy(zero_copy_only=False)
        if column.null_count or len(set(lengths.tolist())) != 1:
            raise ValueError(f"rows with status ok must each hold the same number of {name}")
        curves.append(column.flatten().to_numpy().reshape(len(table), -1))
    return curves[0], curves[1]


def scaled(atoms: Atoms, volume_per_atom: float) -> Atoms:
    """``atoms`` with its cell scaled isotropically to ``volume_per_atom`` (fractional positions kept)."""
    out = atoms.copy()
    out.calc = None
    factor = (volume_per_atom * len(atoms) / atoms.get_volume()) ** (1.0 / 3.0)
    out.set_cell(atoms.cell * factor, scale_atoms=True)
    return out
