"""From a model's relaxed energy to the formation energy Matbench Discovery scores.

Facts carried over from matbench-discovery: MP elemental reference energies are rounded to 4
decimals (``get_e_form_per_atom`` with ``mp_elemental_ref_energies``); the model's raw energy and
relaxed structure replace those of the WBM ``ComputedStructureEntry`` and pymatgen's
``MaterialsProject2020Compatibility`` (``clean=True``) corrects it before the formation energy is
taken. EMT-labelled sets skip the corrections: they are fitted to PBE/PBE+U energies only.
"""

from __future__ import annotations

from collections import Counter
from functools import lru_cache

from ase import Atoms

from mlip_zoo.errors import PredictionError

REF_DECIMALS = 4


def e_form_per_atom(energy: float, symbols: list[str], e_refs: dict[str, float]) -> float:
    """(E - sum_el n_el * e_ref_el) / N, in eV/atom."""
    counts = Counter(symbols)
    return (energy - sum(n * e_refs[el] for el, n in counts.items())) / len(symbols)


@lru_cache(maxsize=1)
def _mp2020():
    from pymatgen.entries.compatibility import MaterialsProject2020Compatibility

    return MaterialsProject2020Compatibility()


def mp2020_corrected_energy(atoms: Atoms, energy: float, parameters: dict, material_id: str) -> float:
    """The MP2020-corrected total energy of ``atoms`` at the model's raw ``energy``."""
    from pymatgen.entries.computed_entries import ComputedStructureEntry
    from pymatgen.io.ase import AseAtomsAdaptor

    entry = ComputedStructureEntry(structure=AseAtomsAdaptor.get_structure(atoms), energy=energy,
                                   parameters=dict(parameters), entry_id=material_id)
    processed = _mp2020().process_entry(entry, clean=True)
    if processed is None:
        raise PredictionError(f"{material_id}: MaterialsProject2020Compatibility rejected the entry "
                              f"(run parameters {sorted(parameters)}); it counts as unstable")
    return float(processed.energy)
