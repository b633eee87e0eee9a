"""Test-time training (zoo/ttt.py, Potential.test_time_train) and the ttr task.

The training loop is checked on a tiny torch pair potential (fast); the protocol's own constants
on the real CHGNet and SevenNet weights (slow): with the reference as prior, TTT must lower the
force error, and neither the loaded model nor the weights on disk may change.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms

from mlip_zoo.errors import CapabilityNotSupportedError, TrainingLabelError
from mlip_zoo.evaluators.base import evaluator_for
from mlip_zoo.evaluators.data import datasets_dir, iter_records, resolve_dataset
from mlip_zoo.evaluators import shards as shard_cutting
from mlip_zoo.evaluators.plan import make_plan
from mlip_zoo.evaluators.runner import RunOptions, evaluate
from mlip_zoo.evaluators.shift.make_ttr_mini import generate
from mlip_zoo.zoo import get_card, load_potential
from mlip_zoo.zoo.potential import Potential
from mlip_zoo.zoo.ttt import Trainable, TTTProtocol, _batches, train
from mlip_zoo.zoo.weights import resolve_weights, sha256_of

from labels import near_label

# -- a tiny trainable model: Morse pairs (representation) times a scale (head) ----------------


class _Morse(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Module()
        self.embed.depth = torch.nn.Parameter(torch.tensor(0.3, dtype=torch.float64))
        self.embed.width = torch.nn.Parameter(torch.tensor(1.2, dtype=torch.float64))
        self.embed.r0 = torch.nn.Parameter(torch.tensor(2.7, dtype=torch.float64))
        self.head = torch.nn.Module()
        self.head.scale = torch.nn.Parameter(torch.tensor(1.0, dtype=torch.float64))

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        i, j = torch.triu_indices(len(positions), len(positions), 1)
        r = (positions[i] - positions[j]).norm(dim=-1)
        e = self.embed.depth * (1 - torch.exp(-self.embed.width * (r - self.embed.r0))) ** 2 - self.embed.depth
        return self.head.scale * e.sum()


class _MorsePotential(Potential):
    def __init__(self, module):
        super().__init__(get_card("emt"))
        self.module = module

    def _predict_one(self, atoms, stress):
        energy, forces = _energy_forces(self.module, atoms)
        return float(energy.detach()), forces.detach().numpy(), None


def _energy_forces(module, atoms):
    pos = torch.tensor(atoms.positions, requires_grad=True)
    energy = module(pos)
    (grad,) = torch.autograd.grad(energy, pos, create_graph=module.training)
    return energy, -grad


class _MorseTrainable(Trainable):
    def __init__(self, module):
        import copy

        self.module = copy.deepcopy(module)

    def is_representation(self, parameter_name):
        return parameter_name.startswith("embed.")

    def energy_forces(self, atoms):
        return _energy_forces(self.module, atoms)

    def potential(self):
        return _MorsePotential(self.module)


def _clusters(n: int, *, seed: int = 0) -> list[Atoms]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        atoms = Atoms("Cu6", positions=[[0, 0, 0], [2.5, 0, 0], [0, 2.5, 0], [0, 0, 2.5], [2.5, 2.5, 0], [2.5, 0, 2.5]])
        atoms.positions += rng.normal(0, 0.12, size=(6, 3))
        out.append(atoms)
    return out


def _emt_labels(structures):
    energies, forces = [], []
    for atoms in structures:
        a = atoms.copy()
        a.calc = EMT()
        energies.append(a.get_potential_energy())
        forces.append(a.get_forces())
    return np.array(energies), forces


def _force_mae(potential, structures, forces):
    preds = potential.predict(structures, properties=("energy", "forces"))
    return float(np.mean([np.abs(p.forces - f).mean() for p, f in zip(preds, forces, strict=True)]))


FAST = TTTProtocol(steps=15, lr=1e-4, batch_size=3, clip_grad_norm=10.0, seed=3)


def test_loop_trains_the_representation_only_and_lowers_the_loss():
    structures = _clusters(5)
    energies, forces = _emt_labels(structures)
    module = _Morse()
    start = {n: p.detach().clone() for n, p in module.named_parameters()}
    potential, report = train(_MorseTrainable(module), structures, energies, forces, FAST)
    trained = dict(potential.module.named_parameters())
    assert torch.equal(trained["head.scale"], start["head.scale"])  # the head is frozen
    assert all(not torch.equal(trained[n], start[n]) for n in ("embed.depth", "embed.width", "embed.r0"))
    assert all(torch.equal(p, start[n]) for n, p in module.named_parameters())  # the given model is untouched
    assert report.trained == ["embed"] and report.frozen == ["head"] and report.n_trained_parameters == 3
    assert len(report.losses) == FAST.steps and report.losses[-1] < report.losses[0]
    assert _force_mae(potential, structures, forces) < _force_mae(_MorsePotential(module), structures, forces)
    assert all(p.requires_grad for p in potential.module.parameters())  # flags restored after training


def test_same_seed_same_model_and_the_prior_heads_energy_reference_absorbs_per_element_offsets():
    structures = _clusters(4)
    energies, forces = _emt_labels(structures)
    a, report = train(_MorseTrainable(_Morse()), structures, energies, forces, FAST)
    b, _ = train(_MorseTrainable(_Morse()), structures, energies, forces, FAST)
    for (name, p), q in zip(a.module.named_parameters(), b.module.parameters(), strict=True):
        assert torch.equal(p, q), name
    # An EMT energy is on another scale than the model's: a per-atom offset must change nothing.
    shifted, shifted_report = train(_MorseTrainable(_Morse()), structures, energies + 6 * 3.25, forces, FAST)
    assert shifted_report.energy_reference["Cu"] == pytest.approx(report.energy_reference["Cu"] + 3.25, abs=1e-9)
    for p, q in zip(a.module.parameters(), shifted.module.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-9)


def test_fixed_atoms_are_not_trained_on():
    structures = _clusters(4)
    energies, forces = _emt_labels(structures)
    for atoms in structures:
        atoms.set_constraint(FixAtoms(indices=[0]))
    garbage = [f.copy() for f in forces]
    for f in garbage:
        f[0] = 1e3
    a, _ = train(_MorseTrainable(_Morse()), structures, energies, forces, FAST)
    b, _ = train(_MorseTrainable(_Morse()), structures, energies, garbage, FAST)
    for p, q in zip(a.module.parameters(), b.module.parameters(), strict=True):
        assert torch.equal(p, q)


def test_batches_cycle_the_whole_set_in_a_new_order_each_pass():
    batches = _batches(5, 2, np.random.default_rng(0))
    passes = [[next(batches) for _ in range(3)] for _ in range(2)]
    for batch_list in passes:
        assert [len(b) for b in batch_list] == [2, 2, 1]
        assert sorted(i for b in batch_list for i in b) == [0, 1, 2, 3, 4]
    assert passes[0] != passes[1]


def test_bad_labels_and_missing_capability_are_named_errors():
    structures = _clusters(2)
    energies, forces = _emt_labels(structures)
    with pytest.raises(TrainingLabelError, match="2 structures but 1 energies"):
        train(_MorseTrainable(_Morse()), structures, energies[:1], forces, FAST)
    with pytest.raises(TrainingLabelError, match=r"expected \(6, 3\)"):
        train(_MorseTrainable(_Morse()), structures, energies, [forces[0], forces[1][:3]], FAST)
    with pytest.raises(TrainingLabelError, match="non-finite"):
        train(_MorseTrainable(_Morse()), structures, [energies[0], np.nan], forces, FAST)
    with pytest.raises(CapabilityNotSupportedError, match="emt cannot be test-time trained.*test_time_training"):
        load_potential("emt").test_time_train(structures, energies, forces, steps=1)


# -- real weights: the protocol's constants ---------------------------------------------------


def _cu_cells(n: int) -> list[Atoms]:
    out = []
    for i in range(n):
        atoms = bulk("Cu", "fcc", a=3.61 + 0.02 * i, cubic=True) * (1, 1, 2)
        atoms.rattle(0.15, seed=i)
        out.append(atoms)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("key", ["chgnet-0.3.0", "sevennet-0"])
def test_ttt_with_the_reference_as_prior_lowers_the_force_error_and_changes_no_weights(key):
    torch.set_num_threads(1)
    structures = _cu_cells(4)
    energies, forces = _emt_labels(structures)  # prior = EMT = the reference labels
    potential = load_potential(key)
    (weights,) = resolve_weights(potential.card).values()
    on_disk = sha256_of(weights.path)
    before = potential.predict(structures, properties=("energy", "forces"))
    trained = potential.test_time_train(structures, energies, forces, steps=5)  # lr 1e-5, momentum 0.9, ...
    after = _force_mae(trained, structures, forces)
    assert after < _force_mae(potential, structures, forces)
    assert trained.ttt_report.losses[-1] < trained.ttt_report.losses[0]
    # The loaded model predicts exactly as before, and the file on disk is the card's.
    again = potential.predict(structures, properties=("energy", "forces"))
    for p, q in zip(before, again, strict=True):
        assert p.energy == q.energy and np.array_equal(p.forces, q.forces)
    assert sha256_of(weights.path) == on_disk == potential.card.weights[0].sha256
    # Head frozen, representation moved.
    view = potential._trainable()
    old = dict(view.module.named_parameters())
    new = dict(trained.calculator.model.named_parameters())
    head = [n for n in old if not view.is_representation(n)]
    assert head and all(torch.equal(old[n], new[n]) for n in head)
    assert any(not torch.equal(old[n], new[n]) for n in old if view.is_representation(n))


# -- the ttr task -----------------------------------------------------------------------------


def _shift_subset(tmp_path, per_split: int):
    """The first ``per_split`` structures of each shift-mini test split, as a dataset file."""
    generate(tmp_path / "subset", per_split)
    return tmp_path / "subset" / "test.json"


def test_ttr_mini_regenerates_byte_identical(tmp_path):
    manifest = generate(tmp_path / "ttr-mini")
    committed = json.loads((datasets_dir() / "ttr-mini" / "manifest.json").read_text())
    assert manifest["files"] == committed["files"] and manifest["source"] == committed["source"]
    assert manifest["splits"] == {"none": 4, "element": 4, "force_norm": 4, "connectivity": 4}


def test_ttr_is_one_shard_so_no_number_depends_on_the_worker_count():
    plan = make_plan("emt", "ttr", RunOptions())
    shards = list(shard_cutting.cut(plan))
    assert len(shards) == 1 and len(shards[0][1]) == plan.dataset.n


@pytest.mark.labels
def test_emt_scores_perfectly_and_reports_both_refinements_not_applicable(tmp_path):
    data = _shift_subset(tmp_path, 1)
    record = evaluate("emt", "ttr", RunOptions(out=tmp_path / "out", dataset=data, workers=0))
    m = record.metrics
    assert near_label(m["energy_mae"], "ttr", "energy_mae") and near_label(m["forces_mae"], "ttr", "forces_mae")
    assert record.n_failed == 0
    assert m["radius_n"] == 0 and m["ttt_n"] == 0 and m["ttt_forces_mae"] is None and m["ttt_seconds"] is None
    assert "radius_refinement" in m["not_applicable"]["radius"]
    assert "test_time_training" in m["not_applicable"]["ttt"]
    table = pq.read_table(tmp_path / "out" / "emt" / "ttr.parquet")
    assert set(table.column("ttt_status").to_pylist()) == {"n/a"}


def test_metrics_are_the_stated_formulas_on_a_hand_made_table():
    evaluator = evaluator_for("ttr")
    row = {name: None for name in evaluator.schema.names}
    free = [True, True]
    rows = [
        {**row, "id": "a", "split": "none", "n_atoms": 2, "status": "ok", "seconds": 1.0, "energy_true": 0.0,
         "forces_true": [0.0] * 6, "free": free, "energy_pred": 1.0, "forces_pred": [0.6] * 6,
         "radius_status": "n/a", "radius_reason": "no capability", "prior_energy": 0.0, "prior_forces": [0.1] * 6,
         "prior_seconds": 0.5, "ttt_status": "ok", "ttt_energy": 0.5, "ttt_forces": [0.3] * 6, "ttt_seconds": 2.0},
        {**row, "id": "b", "split": "element", "n_atoms": 2, "status": "ok", "seconds": 1.0, "energy_true": 0.0,
         "forces_true": [0.0] * 6, "free": [True, False], "energy_pred": -2.0, "forces_pred": [0.2] * 3 + [9.0] * 3,
         "radius_status": "n/a", "radius_reason": "no capability", "prior_energy": 0.0, "prior_forces": [0.0] * 6,
         "prior_seconds": 0.5, "ttt_status": "ok", "ttt_energy": -1.0, "ttt_forces": [0.1] * 3 + [9.0] * 3,
         "ttt_seconds": 2.0},
    ]
    m = evaluator.metrics(pa.Table.from_pylist(rows, schema=evaluator.schema))
    assert m["energy_mae"] == pytest.approx((0.5 + 1.0) / 2)  # eV/atom, mean over structures
    assert m["forces_mae"] == pytest.approx((6 * 0.6 + 3 * 0.2) / 9)  # free atoms only, pooled
    assert m["ttt_forces_mae"] == pytest.approx((6 * 0.3 + 3 * 0.1) / 9)
    assert m["ttt_forces_mae_change"] == pytest.approx(m["ttt_forces_mae"] / m["forces_mae"] - 1)
    assert m["ttt_prior_forces_mae_before"] == pytest.approx((6 * 0.5 + 3 * 0.2) / 9)
    assert m["ttt_seconds"] == pytest.approx(5.0) and m["radius_seconds"] is None and m["radius_n"] == 0
    assert m["not_applicable"] == {"radius": "no capability"}
    assert m["splits"]["element"]["ttt_forces_mae"] == pytest.approx(0.1) and m["splits"]["force_norm"]["n"] == 0


@pytest.mark.slow
def test_chgnet_ttr_end_to_end_writes_a_result_whose_metrics_recompute(tmp_path):
    torch.set_num_threads(1)
    data = _shift_subset(tmp_path, 1)
    out = tmp_path / "out"
    record = evaluate("chgnet-0.3.0", "ttr", RunOptions(out=out, dataset=data, workers=0))
    assert record.n_structures == 4 and record.n_failed == 0
    table = pq.read_table(out / "chgnet-0.3.0" / "ttr.parquet")
    assert set(table.column("radius_status").to_pylist()) == {"ok"}
    assert set(table.column("ttt_status").to_pylist()) == {"ok"}
    assert all(3.0 <= r <= 9.0 for r in table.column("radius_cutoff").to_pylist())
    assert all(r <= 6.0 for r in table.column("radius_cutoff_used").to_pylist())  # capped at CHGNet's cutoff
    written = json.loads((out / "chgnet-0.3.0" / "ttr.json").read_text())
    assert json.loads(json.dumps(evaluator_for("ttr").metrics(table))) == written["metrics"]
    m = written["metrics"]
    assert m["ttt_n"] == 4 and m["ttt_seconds"] > 0 and m["radius_seconds"] > 0
    assert written["provenance"]["task_inputs"]["training_reference"]["sha256"]
