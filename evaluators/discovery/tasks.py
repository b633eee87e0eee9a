"""Matbench Discovery's two structure-relaxation tasks, from one set of relaxations.

- ``discovery`` (IS2RE-SR): relax the WBM initial structure (ASE FIRE + FrechetCellFilter), turn the
  relaxed energy into a formation energy (MP2020-corrected for DFT-labelled data), and classify
  stability against the hull; see metrics.py.
- ``geo-opt``: RMSD and symmetry agreement of the same relaxed structures with the reference ones.

Both tasks produce the same rows, so they share a work key and each structure relaxes once.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from ase import Atoms
from pydantic import BaseModel, ConfigDict, Field

from mlip_zoo.evaluators.base import Evaluator
from mlip_zoo.evaluators.data import record_id
from mlip_zoo.evaluators.discovery import metrics as m
from mlip_zoo.evaluators.discovery.energy import (
    e_form_per_atom,
    mp2020_corrected_energy,
)
from mlip_zoo.evaluators.discovery.wbm import WBM_FORMAT
from mlip_zoo.evaluators.relax import RelaxProtocol, relax_many
from mlip_zoo.zoo.potential import Potential

from mlip_zoo.errors import DatasetError

_INTS = pa.list_(pa.int32())
_VEC = pa.list_(pa.float64())


class GeoOptOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    relax: RelaxProtocol
    # auto: MP2020 for DFT labels, none for EMT-labelled sets (MP2020 is fitted to PBE/PBE+U)
    energy_corrections: Literal["auto", "mp2020", "none"]
    symprecs: list[float] = Field(min_length=1)  # spglib tolerances of the symmetry columns


class DiscoveryOptions(GeoOptOptions):
    most_stable_n: int = Field(gt=0)  # size of the "most_stable" subset
    headline_subset: Literal["full_test_set", "unique_prototypes", "most_stable"]


class _WbmRelaxation(Evaluator):
    Options = GeoOptOptions
    formats = (WBM_FORMAT,)
    schema = pa.schema([
        pa.field("id", pa.string()), pa.field("formula", pa.string()), pa.field("n_atoms", pa.int32()),
        pa.field("status", pa.string()), pa.field("reason", pa.string()), pa.field("seconds", pa.float64()),
        # references, on every row (a failed relaxation still counts: as "predicted unstable")
        pa.field("each_true", pa.float64()), pa.field("e_form_dft", pa.float64()),
        pa.field("unique_prototype", pa.bool_()),
        # the model's relaxation
        pa.field("corrections", pa.string()), pa.field("energy", pa.float64()),
        pa.field("energy_corrected", pa.float64()), pa.field("e_form_pred", pa.float64()),
        pa.field("converged", pa.bool_()), pa.field("steps", pa.int32()),
        pa.field("numbers", _INTS), pa.field("positions", _VEC), pa.field("cell", _VEC),
        # geometry vs the reference structure; symmetry lists follow the config's symprecs
        pa.field("rmsd", pa.float64()), pa.field("spg_pred", _INTS), pa.field("spg_ref", _INTS),
        pa.field("n_ops_pred", _INTS), pa.field("n_ops_ref", _INTS),
    ])

    @property
    def protocol(self) -> RelaxProtocol:
        return self.options.relax

    @property
    def symprecs(self) -> list[float]:
        return list(self.options.symprecs)

    def work_key(self) -> str:
        return ("wbm-relax:" + self.protocol.model_dump_json()
                + f":{self.options.energy_corrections}:{self.symprecs}")

    def accepts(self, atoms: Atoms) -> str | None:
        if "wbm" not in atoms.info or "e_refs" not in atoms.info:
            return ("discovery/geo-opt read WBM-layout data (an initial-atoms extxyz zip with its summary csv "
                    "and elemental references); see `mlipzoo data fetch wbm --help`")
        return None

    def _corrections(self, atoms: Atoms) -> str:
        setting = self.options.energy_corrections
        if setting == "auto":
            # MP2020 is fitted to PBE/PBE+U: it applies to DFT labels, never to EMT-labelled sets.
            return "none" if atoms.info.get("labels") == "EMT" else "mp2020"
        return setting

    def run(self, potential: Potential, records: list[Atoms]) -> list[dict]:
        rows = []
        relaxations = relax_many(records, potential, self.protocol)
        for i, (atoms, (result, seconds)) in enumerate(zip(records, relaxations, strict=True)):
            t0 = time.perf_counter()
            wbm = atoms.info["wbm"]
            row: dict[str, Any] = {
                "id": record_id(atoms, i), "formula": atoms.get_chemical_formula(), "n_atoms": len(atoms),
                "each_true": wbm["each_true"], "e_form_dft": wbm["e_form_dft"],
                "unique_prototype": bool(wbm["unique_prototype"]), "corrections": self._corrections(atoms)}
            try:
                if isinstance(result, Exception):
                    raise result
                relaxed = result.atoms
                energy = result.energy
                if row["corrections"] == "mp2020":
                    if "cse_parameters" not in atoms.info:
                        raise DatasetError(f"{row['id']}: MP2020 corrections need its computed-structure entry "
                                           "(wbm_computed_structure_entries file); none was found")
                    corrected = mp2020_corrected_energy(relaxed, energy, atoms.info["cse_parameters"], row["id"])
                else:
                    corrected = energy
                row.update(
                    status="ok", reason=None, energy=energy, energy_corrected=corrected,
                    e_form_pred=e_form_per_atom(corrected, relaxed.get_chemical_symbols(), atoms.info["e_refs"]),
                    converged=result.converged, steps=result.steps,
                    numbers=relaxed.numbers.tolist(), positions=relaxed.positions.ravel().tolist(),
                    cell=np.asarray(relaxed.cell).ravel().tolist(), **self._geometry(relaxed, atoms.info))
            except Exception as exc:  # recorded, never fatal; the structure scores as unstable
                row.update(status="failed", reason=f"{type(exc).__name__}: {exc}")
            row["seconds"] = seconds + time.perf_counter() - t0  # the relaxation, then its scoring
            rows.append(row)
        return rows

    def _geometry(self, relaxed: Atoms, info: dict) -> dict[str, Any]:
        ref = info.get("dft_relaxed")
        if ref is None:
            return {}
        pred_sym = [m.symmetry(relaxed, s) for s in self.symprecs]
        ref_sym = [m.symmetry(ref, s) for s in self.symprecs]
        return {"rmsd": m.structure_rmsd(relaxed, ref),
                "spg_pred": [s for s, _ in pred_sym], "spg_ref": [s for s, _ in ref_sym],
                "n_ops_pred": [n for _, n in pred_sym], "n_ops_ref": [n for _, n in ref_sym]}


def _floats(values: pa.ChunkedArray, keep: np.ndarray | bool = True) -> np.ndarray:
    """A numeric column as floats, NaN where null or where ``keep`` is False."""
    return np.where(keep, pc.fill_null(pc.cast(values, pa.float64()), np.nan).to_numpy(), np.nan)


class Discovery(_WbmRelaxation):
    # the prediction columns that come from the dataset, not the model (``id`` is always one)
    reference_columns = ("formula", "n_atoms", "each_true", "e_form_dft", "unique_prototype")
    Options = DiscoveryOptions

    def reduce(self, table: pa.Table) -> pa.Table:
        """The columns the metrics read; the relaxed structures (positions, cell) stay in the file."""
        return table.select(["id", "status", "converged", "each_true", "e_form_pred", "e_form_dft", "unique_prototype"])

    def resampler(self, table: pa.Table):
        ok = pc.equal(table.column("status"), "ok").to_numpy(zero_copy_only=False)
        converged = pc.fill_null(table.column("converged"), False).to_numpy(zero_copy_only=False)
        by_subsets = m.DiscoveryResampler(
            _floats(table.column("each_true")), _floats(table.column("e_form_pred"), ok),
            _floats(table.column("e_form_dft")), table.column("unique_prototype").to_numpy(zero_copy_only=False),
            self.options.most_stable_n, tallies=np.column_stack([converged & ok, ok]))
        headline = self.options.headline_subset

        def resampled(counts: np.ndarray) -> dict[str, np.ndarray]:
            by_subset = by_subsets(counts)
            n_converged, n_ok = by_subset.pop("tallies").T
            out = {f"subsets.{name}.{key}": v for name, values in by_subset.items() for key, v in values.items()}
            out.update(by_subset[headline])
            with np.errstate(invalid="ignore", divide="ignore"):
                out["converged_fraction"] = n_converged / n_ok
            return out

        return resampled

    def metrics(self, table: pa.Table) -> dict[str, Any]:
        ok = pc.equal(table.column("status"), "ok").to_numpy(zero_copy_only=False)
        converged = pc.fill_null(table.column("converged"), False).to_numpy(zero_copy_only=False)
        by_subset = m.discovery_metrics(_floats(table.column("each_true")), _floats(table.column("e_form_pred"), ok),
                                        _floats(table.column("e_form_dft")),
                                        table.column("unique_prototype").to_numpy(zero_copy_only=False),
                                        self.options.most_stable_n)
        headline_subset = self.options.headline_subset
        return {**by_subset[headline_subset], "subsets": by_subset, "n_failed": int((~ok).sum()),
                "converged_fraction": float(converged[ok].mean()) if ok.any() else None}


class GeoOpt(_WbmRelaxation):
    # the prediction columns that come from the dataset, not the model (``id`` is always one)
    reference_columns = ("formula", "n_atoms", "each_true", "e_form_dft", "unique_prototype", "spg_ref", "n_ops_ref")

    def reduce(self, table: pa.Table) -> pa.Table:
        """The columns the metrics read; the relaxed structures (positions, cell) stay in the file."""
        return table.select(["id", "status", "rmsd", "spg_pred", "spg_ref", "n_ops_pred", "n_ops_ref"])

    def accepts(self, atoms: Atoms) -> str | None:
        return super().accepts(atoms) or (
            None if "dft_relaxed" in atoms.info else
            "geo-opt needs the reference relaxed structures (the wbm_relaxed_atoms zip) beside the initial ones")

    def _inputs(self, table: pa.Table) -> tuple:
        ok = pc.equal(table.column("status"), "ok").to_numpy(zero_copy_only=False)
        labels = [f"{s:.0e}".replace("e-0", "e-") for s in self.symprecs]

        def column(name: str) -> dict[str, np.ndarray]:  # each symprec's entry of a list column
            return {label: _floats(pc.list_element(table.column(name), k), ok) for k, label in enumerate(labels)}

        return (_floats(table.column("rmsd"), ok), ~ok, column("spg_pred"), column("spg_ref"), column("n_ops_pred"),
                column("n_ops_ref"))

    def metrics(self, table: pa.Table) -> dict[str, Any]:
        return m.geo_opt_metrics(*self._inputs(table))

    def metric_terms(self, table: pa.Table):
        return m.geo_opt_terms(*self._inputs(table))
