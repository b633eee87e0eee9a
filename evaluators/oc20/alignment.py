"""Energies compared like with like, and the zero-shot per-element alignment.

**Kinds.** A record's energy label (S2EF: ``atoms.calc.results["energy"]``; IS2RE:
``atoms.info["y_relaxed"]``) is of the kind ``atoms.info["energy_kind"]`` says: ``total`` (the
default when absent) or ``adsorption``, with ``atoms.info["reference_energy"]`` (eV, optional)
such that total = adsorption + reference. A card's ``energy_target`` says which kind its model
predicts (``TARGET_KIND``). The label a prediction is scored against is the label of the model's
kind: as it is, or with the reference added back (total model) or taken off (adsorption model).
Where the dataset holds no reference the two cannot be compared like with like: the record is
refused unless the alignment is on, and then only the aligned energy metrics are scored (the raw
ones are undefined for it, never a number of mixed kinds).

**Alignment** (as LAMBench scores zero-shot energies, lambench/models/ase_models.py): a model
trained on other DFT settings (or another energy zero) is compared after removing a per-element
linear reference fitted by least squares, ``E_aligned = E_pred - sum_e n_e c_e`` with ``c``
minimising ``sum_i (E_pred,i - E_label,i - sum_e n_ie c_e)^2`` over the calibration structures:
no intercept (as LAMBench), the minimum-norm solution (``numpy.linalg.lstsq``, singular values
below 1e-10 of the largest dropped, LAMBench's rcond). Unlike LAMBench, the fit never sees the
structures it scores: the calibration subset, declared in the task's options, is the
``ceil(fraction * n)`` rows (at most ``max_rows``) with the smallest ``sha256("<seed>:<id>")``,
a rule anyone can re-derive from the ids. The aligned metrics are over the other rows. A row
whose composition is not a combination of the calibration rows' compositions (an element the
calibration never saw) has no determined aligned energy: it is left out of the aligned metrics,
and ``aligned_coverage`` reports the share of rows scored. The fitted reference is a constant of
the scoring, as the task's thresholds are: the bootstrap intervals treat it as fixed (resamples
draw the scored rows; the reference is not refitted), so they do not include the fit's own
uncertainty.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from ase.data import atomic_numbers, chemical_symbols
from pydantic import BaseModel, ConfigDict, Field

from mlip_zoo.evaluators.base import Terms

KINDS = ("total", "adsorption")
# card energy_target -> the kind of label it is scored against
TARGET_KIND = {"total": "total", "oc20-adsorption": "adsorption"}
METHOD = ("per-element linear reference E_pred - sum_e n_e c_e, least squares on the calibration rows' "
          "errors, no intercept, minimum-norm (rcond 1e-10), as LAMBench")
RCOND = 1e-10
FIT = b"mlipzoo.alignment"  # schema metadata of reduced rows that carry their fitted reference
_Z = 128  # atomic numbers are below this (they are stored as uint8)


class Calibration(BaseModel):
    """The declared calibration subset (task option ``alignment``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    fraction: float = Field(gt=0, lt=1)  # of the evaluated rows ...
    max_rows: int = Field(gt=0)  # ... but no more than this many
    seed: int = Field(0, ge=0)


def _option_hint() -> str:
    return ("switch the alignment on: drop --no-align (it is on in the task config), or set "
            "options.alignment: {fraction, max_rows, seed} in a run config")


def label_kind(atoms) -> str:
    return str(atoms.info.get("energy_kind", "total"))


def check_record(atoms) -> str | None:
    """Why a record's energy kind or reference cannot be read (None when it can)."""
    kind = atoms.info.get("energy_kind", "total")
    if kind not in KINDS:
        return f"info['energy_kind'] is {kind!r}; it must be one of {', '.join(KINDS)} (absent means total)"
    ref = atoms.info.get("reference_energy")
    if ref is not None:
        try:
            ok = math.isfinite(float(ref))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            return f"info['reference_energy'] is {ref!r}; it must be a finite energy in eV (or absent)"
    return None


def reference_of(atoms) -> float | None:
    ref = atoms.info.get("reference_energy")
    return None if ref is None else float(ref)


def refusal(atoms, energy_target: str, aligned: bool) -> str | None:
    """Why this model's energies cannot be scored against this record (None when they can):
    the kinds differ, no reference converts one into the other, and the alignment is off."""
    kind, want = label_kind(atoms), TARGET_KIND[energy_target]
    if kind == want or reference_of(atoms) is not None or aligned:
        return None
    return (f"the dataset holds {kind} energies (energy_kind {kind!r}) with no reference energy "
            f"(info['reference_energy']), and the model predicts {want} energies (card energy_target "
            f"{energy_target!r}): they cannot be compared like with like. To score the per-element aligned energy "
            f"instead, {_option_hint()}; or use a dataset that carries each structure's reference energy")


def comparable_labels(table: pa.Table, label: str = "energy_true") -> tuple[np.ndarray, np.ndarray]:
    """Per row, the label of the kind the model predicts, and whether there is one.

    Kinds are read from the rows (``energy_kind``, ``energy_pred_kind``; null means total), so the
    metrics stay a function of the predictions file alone."""
    values = np.asarray(table.column(label).to_numpy(zero_copy_only=False), dtype=float)
    have = pc.fill_null(table.column("energy_kind"), "total").to_numpy(zero_copy_only=False)
    want = pc.fill_null(table.column("energy_pred_kind"), "total").to_numpy(zero_copy_only=False)
    ref_col = table.column("energy_reference")
    has_ref = pc.is_valid(ref_col).to_numpy(zero_copy_only=False)
    ref = np.asarray(pc.fill_null(ref_col, 0.0).to_numpy(zero_copy_only=False), dtype=float)
    same = have == want
    added = (have == "adsorption") & (want == "total") & has_ref
    taken = (have == "total") & (want == "adsorption") & has_ref
    out = np.where(added, values + ref, np.where(taken, values - ref, values))
    return out, same | added | taken


def compositions(numbers: pa.ChunkedArray | pa.Array) -> tuple[pa.Array, pa.Array]:
    """A list column of atomic numbers per row as two list columns: each row's distinct
    elements and how many atoms of each (what the alignment needs of a row, a few numbers)."""
    numbers = numbers.combine_chunks() if isinstance(numbers, pa.ChunkedArray) else numbers
    lengths = pc.fill_null(pc.list_value_length(numbers), 0).to_numpy().astype(np.int64)
    flat = pc.list_flatten(numbers).to_numpy(zero_copy_only=False).astype(np.int64)
    row = np.repeat(np.arange(lengths.size), lengths)
    keys, counts = np.unique(row * _Z + flat, return_counts=True)
    offsets = np.zeros(lengths.size + 1, dtype=np.int32)
    np.cumsum(np.bincount(keys // _Z, minlength=lengths.size), out=offsets[1:])
    return (pa.ListArray.from_arrays(pa.array(offsets), pa.array((keys % _Z).astype(np.uint8))),
            pa.ListArray.from_arrays(pa.array(offsets), pa.array(counts.astype(np.int32))))


def _triplets(elements: pa.ChunkedArray, counts: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, Z, count) of every element of every row."""
    lengths = pc.fill_null(pc.list_value_length(elements), 0).to_numpy().astype(np.int64)
    z = pc.list_flatten(elements).to_numpy(zero_copy_only=False).astype(np.int64)
    n = pc.list_flatten(counts).to_numpy(zero_copy_only=False).astype(float)
    return np.repeat(np.arange(lengths.size), lengths), z, n


def calibration_ids(ids: list[str] | pa.Array | pa.ChunkedArray, settings: Calibration) -> list[str]:
    """The declared calibration subset of these ids (see the module docstring), sorted."""
    unique = pc.unique(pa.chunked_array([pa.array(ids, pa.string())]) if isinstance(ids, list)
                       else pc.cast(ids, pa.string())).to_pylist()
    k = min(settings.max_rows, math.ceil(settings.fraction * len(unique)))
    return sorted(sorted(unique, key=lambda i: hashlib.sha256(f"{settings.seed}:{i}".encode()).digest())[:k])


def _in(ids: pa.ChunkedArray, chosen: list[str]) -> np.ndarray:
    return pc.is_in(pc.cast(ids, pa.string()), value_set=pa.array(chosen, pa.string())).to_numpy(zero_copy_only=False)


def fit(rows: pa.Table, settings: Calibration) -> dict[str, Any]:
    """The alignment of reduced rows (``align:*`` columns): the calibration ids, the coefficients
    fitted on those of them that were scored ok, and the basis of the compositions they span."""
    chosen = calibration_ids(rows.column("id"), settings)
    ok = pc.equal(rows.column("status"), "ok").to_numpy(zero_copy_only=False)
    # a calibration row whose error is not finite cannot enter a least-squares fit (n_fitted says so)
    finite = np.isfinite(_numbers(rows, "align:pred") - _numbers(rows, "align:label"))
    use = np.flatnonzero(ok & finite & _in(rows.column("id"), chosen))
    # one row per id: the same id twice (rows drawn with replacement) must not weigh twice
    use = use[np.unique(np.asarray(rows.column("id").take(pa.array(use)).to_pylist(), dtype=str),
                        return_index=True)[1]] if use.size else use
    part = rows.take(pa.array(np.sort(use), pa.int64()))
    row, z, n = _triplets(part.column("align:elements"), part.column("align:counts"))
    elements = np.unique(z)
    matrix = np.zeros((part.num_rows, elements.size))
    np.add.at(matrix, (row, np.searchsorted(elements, z)), n)
    error = _numbers(part, "align:pred") - _numbers(part, "align:label")
    coefficients = np.zeros(elements.size)
    basis = np.zeros((elements.size, 0))
    if part.num_rows and elements.size:
        coefficients = np.linalg.lstsq(matrix, error, rcond=RCOND)[0]
        _, s, vt = np.linalg.svd(matrix, full_matrices=False)
        basis = vt[s > RCOND * s[0]].T if s[0] > 0 else basis
    return {"method": METHOD, "intercept": False, "calibration": settings.model_dump(),
            "calibration_ids": chosen, "n_fitted": int(part.num_rows), "rank": int(basis.shape[1]),
            "coefficients": {chemical_symbols[int(e)]: float(c) for e, c in zip(elements, coefficients, strict=True)},
            "_basis": basis.tolist()}


def with_fit(rows: pa.Table, settings: Calibration) -> pa.Table:
    """The rows, carrying their fitted alignment in the schema metadata (kept by ``take``, so
    every resample scores with the same reference); rows that carry one already are returned."""
    meta = rows.schema.metadata or {}
    if FIT in meta:
        return rows
    return rows.replace_schema_metadata({**meta, FIT: json.dumps(fit(rows, settings)).encode()})


def fitted(rows: pa.Table) -> dict[str, Any] | None:
    """What a result records of the fit (provenance): method, calibration rule and ids, coefficients."""
    meta = rows.schema.metadata or {}
    if FIT not in meta:
        return None
    data = json.loads(meta[FIT])
    data.pop("_basis")
    return data


def _numbers(table: pa.Table, column: str) -> np.ndarray:
    return np.asarray(pc.fill_null(table.column(column), 0.0).to_numpy(zero_copy_only=False), dtype=float)


def aligned_terms(rows: pa.Table, ok: np.ndarray, energy_threshold: float, mse: bool) -> Terms:
    """Per-row terms (over the ok rows, as ``_ok_terms``) of the aligned metrics of fitted rows:
    ``energy_mae_aligned`` (and ``energy_mse_aligned``), ``energy_within_threshold_aligned`` for
    IS2RE or ``energy_forces_within_threshold_aligned`` for S2EF (``align:within`` holds the
    force criterion), and ``aligned_coverage``, over the rows outside the calibration subset."""
    data = json.loads(rows.schema.metadata[FIT])
    needed = ["id", *(c for c in rows.column_names if c.startswith("align:"))]
    part = rows.select(needed).filter(pa.array(ok))  # the few columns it reads, not a copy of every term
    scored = ~_in(part.column("id"), data["calibration_ids"])
    row, z, n = _triplets(part.column("align:elements"), part.column("align:counts"))
    elements = np.array([atomic_numbers[symbol] for symbol in data["coefficients"]], dtype=np.int64)
    basis = np.asarray(data["_basis"], dtype=float).reshape(elements.size, data["rank"])
    coefficient = np.zeros(_Z)
    coefficient[elements] = list(data["coefficients"].values())
    shift = np.bincount(row, weights=n * coefficient[z], minlength=part.num_rows)
    # determined iff the composition lies in the span of the calibration compositions: its
    # squared norm equals that of its projection on the basis (an unseen element never does)
    column = np.full(_Z, -1)
    column[elements] = np.arange(elements.size)
    norm = np.bincount(row, weights=n * n, minlength=part.num_rows)
    projected = np.zeros(part.num_rows)
    seen = column[z] >= 0
    for j in range(basis.shape[1]):
        along = np.bincount(row[seen], weights=n[seen] * basis[column[z[seen]], j], minlength=part.num_rows)
        projected += along ** 2
    has_atoms = norm > 0
    covered = has_atoms & (norm - projected <= 1e-9 * norm)
    use = scored & covered
    error = np.where(use, _numbers(part, "align:pred") - shift - _numbers(part, "align:label"), 0.0)
    de = np.abs(error)
    within = np.where(use, de < energy_threshold, False)
    numel = use.astype(float)
    terms: Terms = {"energy_mae_aligned": (de, numel)}
    if mse:
        terms["energy_mse_aligned"] = (de ** 2, numel)
        terms["energy_within_threshold_aligned"] = (within.astype(float), numel)
    else:
        forces = _numbers(part, "align:within") > 0
        terms["energy_forces_within_threshold_aligned"] = ((within & forces).astype(float), numel)
    terms["aligned_coverage"] = (use.astype(float), scored.astype(float))
    return terms
