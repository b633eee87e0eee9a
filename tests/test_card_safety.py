"""Issue #21: nothing a contributor submits as a model card runs code, and `validate` refuses what
`eval` would. Each class of bad input is a catalogue entry. Crafted files would only create a
marker file if they ever ran; every test asserts the marker never appears."""

from __future__ import annotations

import pickle
import sys
import textwrap
import time

import numpy as np
import pytest
from conftest import sha256
from typer.testing import CliRunner

from mlip_zoo.cli import app
from mlip_zoo.errors import CardError, UntrustedCheckpointError
from mlip_zoo.zoo import card as card_mod
from mlip_zoo.zoo import load_potential, read_card
from mlip_zoo.zoo.registry import families

catalogue = pytest.mark.catalogue
runner = CliRunner()

HEAD = """\
key: {key}
name: {key}
version: "1"
family: {family}
license: MIT
targets: EFS
elements: [Cu]
"""


def card_text(key, family="ase", extra=""):
    return HEAD.format(key=key, family=family) + textwrap.dedent(extra)


class Touch:
    """Unpickling this calls open(marker, "w"): harmless, and visible if it ever happens."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "MARKER-code-ran"
    yield path
    assert not path.exists(), "submitted code ran"


@pytest.fixture
def zoo(tmp_path, monkeypatch, card_dir):
    """Only the test's cards in the zoo (so `models check --all` stays fast), on MLIPZOO_CARDS."""
    empty = tmp_path / "no-builtin-cards"
    empty.mkdir()
    monkeypatch.setattr(card_mod, "builtin_cards_dir", lambda: empty)
    monkeypatch.setenv("MLIPZOO_CARDS", str(card_dir.dir))
    monkeypatch.delenv("MLIPZOO_CALCULATOR_MODULES")  # only ASE's own calculators are allowed
    return card_dir


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


# ---------------------------------------------------------------------------------------------
# calculator: only allow-listed modules are imported, only calculator classes are called


@catalogue
@pytest.mark.parametrize("target", ["os:system", "subprocess:Popen", "builtins:exec", "torch:load", "numpy:load"])
def test_calculator_outside_the_allow_list_is_refused_by_validate(zoo, target, marker):
    path = zoo("bad-calc", card_text("bad-calc", extra=f'calculator: "{target}"\n'))
    result = cli("validate", path)
    assert result.exit_code == 1
    module = target.partition(":")[0]
    assert f"{path.resolve()}: calculator: module {module!r} is not on the calculator allow-list" in result.output
    assert "MLIPZOO_CALCULATOR_MODULES" in result.output and "trusted: true" in result.output


@catalogue
def test_os_system_card_is_never_called_by_validate_check_or_eval(zoo, monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr("os.system", lambda *a, **k: calls.append(a))
    zoo("os-system", card_text("os-system", extra='calculator: "os:system"\ncalculator_kwargs: {command: "echo pwned"}\n'))

    assert cli("validate", zoo.dir).exit_code == 1
    check = cli("models", "check", "--all", "--json")
    assert check.exit_code == 1 and "is not on the calculator allow-list" in check.output
    ev = cli("eval", "os-system", "eos", "--workers", "0", "--wandb", "disabled", "--out", tmp_path / "out")
    assert ev.exit_code == 1 and "is not on the calculator allow-list" in ev.output
    assert calls == []


@catalogue
def test_torch_load_with_pickling_switched_on_is_refused_and_never_called(zoo, monkeypatch, tmp_path):
    torch = pytest.importorskip("torch")
    calls = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(a))
    path = zoo("torch-load", card_text("torch-load", extra="""\
        calculator: "torch:load"
        calculator_kwargs: {f: model, weights_only: false}
        """))

    result = cli("validate", path)
    assert result.exit_code == 1
    assert "calculator_kwargs.weights_only: this keyword steers how a file is deserialised" in result.output
    check = cli("models", "check", "--all")
    assert check.exit_code == 1 and f"{path}: invalid model card" in check.output  # refused before any check
    ev = cli("eval", "torch-load", "eos", "--workers", "0", "--wandb", "disabled", "--out", tmp_path / "out")
    assert ev.exit_code == 1 and "weights_only" in ev.output
    assert calls == []


@catalogue
def test_named_module_is_never_imported_unless_allowed_or_trusted(zoo, tmp_path, monkeypatch, marker):
    site = tmp_path / "site"
    site.mkdir()
    (site / "evil_calc.py").write_text(
        f"open({str(marker)!r}, 'w')  # importing this module runs code\n"
        "from ase.calculators.emt import EMT as Evil\n")
    monkeypatch.syspath_prepend(str(site))
    zoo("evil", card_text("evil", extra='calculator: "evil_calc:Evil"\n'))

    assert "is not on the calculator allow-list" in cli("validate", zoo.dir).output
    assert "is not on the calculator allow-list" in cli("models", "check", "--all", "--json").output
    ev = cli("eval", "evil", "eos", "--workers", "0", "--wandb", "disabled", "--out", tmp_path / "out")
    assert ev.exit_code == 1 and "is not on the calculator allow-list" in ev.output
    assert "evil_calc" not in sys.modules

    # trusted: validate still imports nothing submitted; evaluating it is the reviewer's decision
    zoo("evil", card_text("evil", extra='calculator: "evil_calc:Evil"\n'
                                        "trusted: true\ntrusted_reason: reviewed in PR 1\n"))
    assert cli("validate", zoo.dir).exit_code == 0
    assert "evil_calc" not in sys.modules


@catalogue
def test_allowed_module_attribute_must_be_a_calculator_class_and_is_not_called(zoo, tmp_path, monkeypatch, marker):
    site = tmp_path / "site"
    site.mkdir()
    (site / "calc_factory.py").write_text(
        "def make(**kwargs):\n"
        f"    open({str(marker)!r}, 'w')\n"
        "class NotACalculator:\n"
        "    def __init__(self, **kwargs):\n"
        f"        open({str(marker)!r}, 'w')\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("MLIPZOO_CALCULATOR_MODULES", "calc_factory")
    for attr, kind in (("make", "function"), ("NotACalculator", "type")):
        path = zoo("factory", card_text("factory", extra=f'calculator: "calc_factory:{attr}"\n'))
        result = cli("validate", path)
        assert result.exit_code == 1
        assert (f"calculator: calc_factory:{attr} is a {kind}, not an ASE calculator class" in result.output)
        with pytest.raises(CardError, match="not an ASE calculator class"):
            load_potential(read_card(path))
    sys.modules.pop("calc_factory", None)


@catalogue
def test_calculator_running_an_external_program_needs_trust(zoo, monkeypatch):
    monkeypatch.setenv("MLIPZOO_CALCULATOR_MODULES", "ase.calculators.espresso")
    path = zoo("qe", card_text("qe", extra='calculator: "ase.calculators.espresso:Espresso"\n'))
    result = cli("validate", path)
    assert result.exit_code == 1 and "runs an external program" in result.output


def test_allow_listed_ase_calculator_validates_and_loads(zoo):
    path = zoo("lj", card_text("lj", extra='calculator: "ase.calculators.lj:LennardJones"\n'
                                           "calculator_kwargs: {sigma: 2.3, epsilon: 0.4}\n"))
    assert cli("validate", path).exit_code == 0
    assert load_potential(read_card(path)).calculator.parameters["sigma"] == 2.3


# ---------------------------------------------------------------------------------------------
# keywords: nothing may switch a loader to unpickling or hand it a file


@catalogue
@pytest.mark.parametrize(("family", "extra", "message"), [
    ("ase", 'calculator: "ase.calculators.emt:EMT"\ncalculator_kwargs: {allow_pickle: true}\n',
     "calculator_kwargs.allow_pickle: this keyword steers how a file is deserialised"),
    ("mace", "options: {pickle_module: dill}\n", "options.pickle_module: this keyword steers"),
    ("mattersim", "options: {loader: {Weights_Only: false}}\n", "options.loader.Weights_Only: this keyword steers"),
    ("ase", 'calculator: "ase.calculators.eam:EAM"\ncalculator_kwargs: {potential: /home/u/.cache/mlip-zoo/x/m.pkl}\n',
     "calculator_kwargs.potential: '/home/u/.cache/mlip-zoo/x/m.pkl' looks like a file path"),
    ("sevenn", "options: {model: checkpoint.pth}\n", "options.model: 'checkpoint.pth' looks like a file path"),
    ("pet-mad", "options: {extra: [ok, '~/m']}\n", "options.extra.1: '~/m' looks like a file path"),
    ("fairchem", "options: {url: 'https://example.org/m'}\n", "options.url: 'https://example.org/m' looks like"),
])
def test_loader_switches_and_file_paths_in_keywords_are_refused(card_dir, family, extra, message):
    path = card_dir("kw", card_text("kw", family, extra))
    with pytest.raises(CardError, match="trusted: true") as info:
        read_card(path)
    assert str(path) in str(info.value) and message in str(info.value)
    trusted = card_text("kw", family, extra + "trusted: true\ntrusted_reason: reviewed\n")
    assert read_card(card_dir("kw", trusted)).trusted  # a reviewed card may


# ---------------------------------------------------------------------------------------------
# the loading gate: every family, judged from the file's bytes


@pytest.fixture
def evil_package(tmp_path, monkeypatch):
    """An importable package shipping weights, like chgnet/sevenn ship theirs."""
    root = tmp_path / "site"
    (root / "evilweights").mkdir(parents=True)
    (root / "evilweights" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(root))

    def ship(filename, data: bytes):
        (root / "evilweights" / filename).write_bytes(data)
        return sha256(data)

    yield ship
    sys.modules.pop("evilweights", None)


FAMILY_EXTRA = {"ase": 'calculator: "ase.calculators.emt:EMT"\n', "orb": "options: {model: orb_v3_conservative_inf_mpa}\n"}


def weights_card(card_dir, family, filename, sha, extra=""):
    return read_card(card_dir("gated", card_text("gated", family, FAMILY_EXTRA.get(family, "") + extra + (
        f"weights:\n  - {{filename: {filename}, sha256: {sha}, mirrors: [{{package: evilweights, path: {filename}}}]}}\n"))))


def torch_bytes(obj, tmp_path, **kwargs) -> bytes:
    torch = pytest.importorskip("torch")
    path = tmp_path / "saved.pt"
    torch.save(obj, path, **kwargs)
    return path.read_bytes()


@catalogue
@pytest.mark.parametrize("family", sorted(families()))
def test_every_family_refuses_a_checkpoint_whose_unpickling_runs_code(family, card_dir, evil_package, tmp_path, marker):
    sha = evil_package("model.pt", torch_bytes({"model": Touch(marker)}, tmp_path))
    card = weights_card(card_dir, family, "model.pt", sha)
    with pytest.raises(UntrustedCheckpointError, match=r"model.pt needs full unpickling \(it references io.open\)"
                                                       r".*not loaded.*trusted: true"):
        load_potential(card)


@catalogue
@pytest.mark.parametrize("kind", ["pickle-protocol-0", "pickle-protocol-2", "pickle-protocol-5", "torch-legacy",
                                  "numpy-object-array", "npz-with-object-array"])
def test_pickles_are_found_by_their_bytes_whatever_the_name_or_format(kind, card_dir, evil_package, tmp_path, marker):
    import io

    if kind.startswith("pickle"):
        data = pickle.dumps(Touch(marker), protocol=int(kind[-1]))
    elif kind == "torch-legacy":
        data = torch_bytes({"model": Touch(marker)}, tmp_path, _use_new_zipfile_serialization=False)
    else:
        buffer = io.BytesIO()
        array = np.array([Touch(marker)], dtype=object)
        np.save(buffer, array) if kind.startswith("numpy") else np.savez(buffer, w=np.zeros(2), x=array)
        data = buffer.getvalue()
    # named and declared as inert safetensors: the bytes decide
    card = weights_card(card_dir, "mace", "model.safetensors", evil_package("model.safetensors", data),
                        extra="")
    assert card.weight_files[0].effective_format == "safetensors"
    with pytest.raises(UntrustedCheckpointError, match=r"model.safetensors (is a|holds).*(pickle|Python objects)"):
        load_potential(card)
    assert "evilweights" in cli("validate", card.path).output  # validate reads the local copy the same way
    assert cli("validate", card.path).exit_code == 1


def test_the_crafted_files_are_live(tmp_path):
    """Control: the files the gate refuses really would run code when loaded."""
    live = tmp_path / "live"
    pickle.loads(pickle.dumps(Touch(live)))
    assert live.exists()


@catalogue
def test_pickle_suffix_cannot_be_declared_safetensors(card_dir):
    path = card_dir("pkl", card_text("pkl", "emt", "weights:\n  - {filename: model.pkl, format: safetensors, "
                                                   "hf_repo: org/m, revision: main}\n"))
    with pytest.raises(CardError, match=r"weights.0 \(model.pkl\) is a pickle.*set trusted: true"):
        read_card(path)


def test_safe_files_pass_the_gate_and_trust_skips_it(card_dir, evil_package, tmp_path, marker):
    torch = pytest.importorskip("torch")
    header = b'{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
    for name, data in (("w.pt", torch_bytes({"w": torch.zeros(3)}, tmp_path)),
                       ("w.safetensors", len(header).to_bytes(8, "little") + header + bytes(4))):
        load_potential(weights_card(card_dir, "emt", name, evil_package(name, data)))
    sha = evil_package("model.pt", torch_bytes({"model": Touch(marker)}, tmp_path))
    trusted = weights_card(card_dir, "emt", "model.pt", sha, extra="trusted: true\ntrusted_reason: reviewed\n")
    load_potential(trusted)  # the reviewer's call; EMT itself never opens the file


# ---------------------------------------------------------------------------------------------
# card files: size, aliases, duplicate keys, encoding, nesting


BOMB = """\
options:
  a: &a [x, x, x, x, x, x, x, x, x]
  b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
  c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
  d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
  e: [*d, *d, *d, *d, *d, *d, *d, *d, *d]
"""

BAD_FILES = {
    "alias-bomb": (lambda: card_text("alias-bomb", "emt", BOMB).encode(),
                   "line 10: YAML alias *a is not allowed in a model card"),
    "huge": (lambda: card_text("huge", "emt", "description: '" + "x" * 300_000 + "'\n").encode(),
             "a model card may be at most 256 KiB"),
    "duplicate": (lambda: card_text("duplicate", "emt", "license: GPL-3.0\n").encode(),
                  "line 8: duplicate key 'license' (first set on line 5); keep one of them"),
    "latin1": (lambda: card_text("latin1", "emt", "description: Café\n").encode("latin-1"),
               "not UTF-8 text (byte 107: invalid continuation byte); save the card as UTF-8"),
    "nested": (lambda: card_text("nested", "emt", "options: {a: " + "[" * 50_000 + "]" * 50_000 + "}\n").encode(),
               "YAML nested too deeply for a model card"),
}


@catalogue
@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_card_file_is_refused_and_the_others_still_validate(name, card_dir):
    make, message = BAD_FILES[name]
    bad = card_dir.dir / f"{name}.yaml"
    bad.write_bytes(make())
    card_dir("good", card_text("good", "emt"))
    with pytest.raises(CardError) as info:
        read_card(bad)
    assert str(info.value).startswith(f"{bad}: {message}")
    result = cli("validate", "--json", card_dir.dir)
    assert result.exit_code == 1
    import json

    by_file = {r["file"]: r for r in json.loads(result.stdout)}
    assert by_file[str(card_dir.dir / "good.yaml")]["ok"]
    assert message in by_file[str(bad)]["error"]


@catalogue
def test_alias_bomb_or_huge_card_never_reaches_models_show_or_list(zoo):
    zoo("alias-bomb", card_text("alias-bomb", "emt", BOMB))
    t0 = time.perf_counter()
    show = cli("models", "show", "alias-bomb")
    assert show.exit_code == 1 and "YAML alias *a is not allowed" in show.output
    (zoo.dir / "alias-bomb.yaml").unlink()
    (zoo.dir / "huge.yaml").write_text(card_text("huge", "emt", "description: '" + "x" * 60_000_000 + "'\n"))
    listing = cli("models", "list")
    assert listing.exit_code == 1 and "huge.yaml: a model card may be at most 256 KiB" in listing.output
    assert time.perf_counter() - t0 < 5
