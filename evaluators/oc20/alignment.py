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
import heapq
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
BLOCK = 1 << 14  # rows hashed or aligned at a time


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
    if counts.max(initial=0) >= 2**16:
        raise ValueError(f"a structure has {counts.max()} atoms of one element; the alignment counts at most 65,535")
    return (pa.ListArray.from_arrays(pa.array(offsets), pa.array((keys % _Z).astype(np.uint8))),
            pa.ListArray.from_arrays(pa.array(offsets), pa.array(counts.astype(np.uint16))))


def _triplets(elements: pa.ChunkedArray, counts: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, Z, count) of every element of every row."""
    lengths = pc.fill_null(pc.list_value_length(elements), 0).to_numpy().astype(np.int64)
    z = pc.list_flatten(elements).to_numpy(zero_copy_only=False).astype(np.int64)
    n = pc.list_flatten(counts).to_numpy(zero_copy_only=False).astype(float)
    return np.repeat(np.arange(lengths.size), lengths), z, n


def calibration_ids(ids: list[str] | pa.Array | pa.ChunkedArray, settings: Calibration) -> list[str]:
    """The declared calibration subset of these ids (see the module docstring), sorted.

    The ids are hashed a block at a time and only the ``k`` smallest digests are kept (a heap of
    at most ``max_rows``): the memory is that of the subset, not of every id."""
    column = pa.chunked_array([pa.array(ids, pa.string())]) if isinstance(ids, list) else pc.cast(ids, pa.string())
    column = column if isinstance(column, pa.ChunkedArray) else pa.chunked_array([column])
    k = min(settings.max_rows, math.ceil(settings.fraction * _distinct(column)))
    heap: list[tuple[int, str]] = []  # (-digest, id): heap[0] holds the largest digest kept
    kept: set[str] = set()
    prefix = f"{settings.seed}:".encode()
    for start in range(0, len(column), BLOCK):
        for rid in column.slice(start, BLOCK).to_pylist():
            if rid is None or rid in kept:  # an id drawn twice counts once
                continue
            key = -int.from_bytes(hashlib.sha256(prefix + rid.encode()).digest(), "big")
            if len(heap) < k:
                heapq.heappush(heap, (key, rid))
                kept.add(rid)
            elif k and key > heap[0][0]:
                kept.discard(heapq.heapreplace(heap, (key, rid))[1])
                kept.add(rid)
    return sorted(kept)


def _distinct(ids: pa.ChunkedArray) -> int:
    """How many distinct non-null ids, from one sort (a hash of every id would cost ~100 B an id)."""
    ids = ids.drop_null()
    if len(ids) < 2:
        return len(ids)
    ordered = ids.take(pc.array_sort_indices(ids))
    return 1 + int(pc.sum(pc.not_equal(ordered.slice(1), ordered.slice(0, len(ordered) - 1))).as_py())


def _in(ids: pa.ChunkedArray, chosen: pa.Array) -> np.ndarray:
    return pc.is_in(pc.cast(ids, pa.string()), value_set=chosen).to_numpy(zero_copy_only=False)


def fit(rows: pa.Table, settings: Calibration) -> tuple[dict[str, Any], np.ndarray]:
    """The alignment of reduced rows (``align:*`` input columns): the calibration ids, the
    coefficients fitted on those of them that were scored ok (the record ``fitted`` returns), and
    the basis of the compositions they span."""
    chosen = calibration_ids(rows.column("id"), settings)
    ok = pc.equal(rows.column("status"), "ok").to_numpy(zero_copy_only=False)
    part = rows.take(pa.array(np.flatnonzero(ok & _in(rows.column("id"), pa.array(chosen, pa.string()))), pa.int64()))
    # a calibration row whose error is not finite cannot enter a least-squares fit (n_fitted says so)
    part = part.filter(pa.array(np.isfinite(_numbers(part, "align:pred") - _numbers(part, "align:label"))))
    # one row per id, the first: the same id twice (rows drawn with replacement) must not weigh twice
    first = np.unique(np.asarray(part.column("id").to_pylist(), dtype=str), return_index=True)[1]
    part = part.take(pa.array(np.sort(first), pa.int64())) if part.num_rows else part
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
            "coefficients": {chemical_symbols[int(e)]: float(c) for e, c in zip(elements, coefficients, strict=True)}
            }, basis


# What the aligned metrics read of a row once the fit is applied (``with_fit``): its aligned
# |error| (0 where not scored) and these flags.
USED, SCORED, FORCES_WITHIN = 1, 2, 4  # in the aligned metrics; outside the calibration subset; S2EF's force criterion
INPUTS = ("align:label", "align:pred", "align:elements", "align:counts", "align:within")


def with_fit(rows: pa.Table, settings: Calibration) -> pa.Table:
    """The rows with their alignment fitted and applied: the fit in the schema metadata (kept by
    ``take``, so every resample scores with the same reference), and the fit's inputs (``INPUTS``,
    ~50 bytes a row) replaced by what the aligned metrics read of each row, ``align:abs_error``
    and ``align:flags`` (9 bytes). Rows that carry a fit already are returned as they are."""
    meta = rows.schema.metadata or {}
    if FIT in meta:
        return rows
    data, basis = fit(rows, settings)
    error, flags = _applied(rows, data, basis)
    out = rows.drop_columns([c for c in INPUTS if c in rows.column_names])
    out = out.append_column("align:abs_error", pa.array(error)).append_column("align:flags", pa.array(flags))
    return out.replace_schema_metadata({**meta, FIT: json.dumps(data).encode()})


def fitted(rows: pa.Table) -> dict[str, Any] | None:
    """What a result records of the fit (provenance): method, calibration rule and ids, coefficients."""
    meta = rows.schema.metadata or {}
    return json.loads(meta[FIT]) if FIT in meta else None


def _applied(rows: pa.Table, data: dict[str, Any], basis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's |aligned error| (0 where it is not scored) and flags, ``BLOCK`` rows at a time
    (the per-element arrays of a block are all this adds). A row is scored when it is ok and
    outside the calibration subset, and used when its composition is also determined: it lies
    in the span of the calibration compositions (an unseen element never does)."""
    ok = pc.equal(rows.column("status"), "ok").to_numpy(zero_copy_only=False)
    chosen = pa.array(data["calibration_ids"], pa.string())
    elements = np.array([atomic_numbers[symbol] for symbol in data["coefficients"]], dtype=np.int64)
    coefficient = np.zeros(_Z)
    coefficient[elements] = list(data["coefficients"].values())
    column = np.full(_Z, -1)
    column[elements] = np.arange(elements.size)
    de, flags = np.zeros(rows.num_rows), np.zeros(rows.num_rows, dtype=np.uint8)
    for start in range(0, rows.num_rows, BLOCK):
        part = rows.slice(start, BLOCK)
        here = slice(start, start + part.num_rows)
        scored = ok[here] & ~_in(part.column("id"), chosen)
        row, z, n = _triplets(part.column("align:elements"), part.column("align:counts"))
        shift = np.bincount(row, weights=n * coefficient[z], minlength=part.num_rows)
        # determined iff its squared norm equals that of its projection on the basis
        norm = np.bincount(row, weights=n * n, minlength=part.num_rows)
        projected = np.zeros(part.num_rows)
        seen = column[z] >= 0
        for j in range(basis.shape[1]):
            along = np.bincount(row[seen], weights=n[seen] * basis[column[z[seen]], j], minlength=part.num_rows)
            projected += along ** 2
        used = scored & (norm > 0) & (norm - projected <= 1e-9 * norm)
        de[here] = np.abs(np.where(used, _numbers(part, "align:pred") - shift - _numbers(part, "align:label"), 0.0))
        within = (pc.fill_null(part.column("align:within"), False).to_numpy(zero_copy_only=False)
                  if "align:within" in part.column_names else False)
        flags[here] = used * USED + scored * SCORED + within * FORCES_WITHIN
    return de, flags


def _numbers(table: pa.Table, column: str) -> np.ndarray:
    return np.asarray(pc.fill_null(table.column(column), 0.0).to_numpy(zero_copy_only=False), dtype=float)


def aligned_terms(rows: pa.Table, energy_threshold: float, mse: bool) -> Terms:
    """Per-row terms (0 on rows not scored) of the aligned metrics of fitted rows (``with_fit``):
    ``energy_mae_aligned`` (and ``energy_mse_aligned``), ``energy_within_threshold_aligned`` for
    IS2RE or ``energy_forces_within_threshold_aligned`` for S2EF, and ``aligned_coverage``, over
    the rows outside the calibration subset."""
    de = np.asarray(rows.column("align:abs_error").to_numpy(zero_copy_only=False), dtype=float)
    flags = rows.column("align:flags").to_numpy(zero_copy_only=False)
    used = (flags & USED) > 0
    numel = used.astype(float)
    within = used & (de < energy_threshold)
    terms: Terms = {"energy_mae_aligned": (de, numel)}
    if mse:
        terms["energy_mse_aligned"] = (de ** 2, numel)
        terms["energy_within_threshold_aligned"] = (within.astype(float), numel)
    else:
        terms["energy_forces_within_threshold_aligned"] = ((within & ((flags & FORCES_WITHIN) > 0)).astype(float), numel)
    terms["aligned_coverage"] = (numel, ((flags & SCORED) > 0).astype(float))
    return terms
