"""Model cards: the one schema that says what a potential is and where its weights come from.

A card is a YAML file ``<key>.yaml`` in ``configs/models/`` or in any directory listed in
``MLIPZOO_CARDS`` (``os.pathsep``-separated). Unknown keys are errors, so a typo never passes
silently. Nothing here imports a model package or executes anything a card names.
"""

from __future__ import annotations

import datetime as dt
import difflib
import importlib.resources
import os
import re
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

import yaml
from ase.data import chemical_symbols
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from pydantic import (BaseModel, ConfigDict, Discriminator, Field, PrivateAttr, Tag, ValidationError, field_validator,
                      model_validator)

from mlip_zoo.errors import CardError, UnknownModelError
from mlip_zoo.zoo.safe_yaml import StrictLoader, StrictYAMLError, read_bounded_text

KEY_PATTERN = r"^[a-z0-9]+(?:[.-][a-z0-9]+)*$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"
CARDS_ENV = "MLIPZOO_CARDS"
# A card is a page of metadata; anything bigger is a mistake or an attack (a 60 MB card made
# `models list` take 32 s).
CARD_MAX_BYTES = 256 * 1024

Capability = Literal["stress", "magmom", "radius_refinement", "test_time_training", "charge_spin"]

# What the model's energy is. ``total``: the total energy of the structure in its training data's
# reference (every universal potential, EMT, xTB). ``oc20-adsorption``: OC20's adsorption energy,
# the total minus the clean slab and the gas-phase references of the adsorbate's atoms (the S2EF
# and IS2RE targets, so every model trained on OC20's S2EF labels). Tasks compare a model's energy
# with labels of the same kind, or refuse (see evaluators/oc20/alignment.py).
EnergyTarget = Literal["total", "oc20-adsorption"]

# Suffixes whose loading means full unpickling (can run arbitrary code). This only lets `validate`
# ask for `trusted: true` early; the file itself is judged from its bytes before any loading
# (checkpoints.assert_safe_checkpoint), whatever its name or declared format.
PICKLE_SUFFIXES = (".pkl", ".pickle", ".model")
TORCH_SUFFIXES = (".pt", ".pth", ".tar", ".ckpt")

# `family: ase` imports the module a card names, and importing runs that module's code, so only
# these modules (and their submodules) may be named: ASE's in-process numpy calculators. Not all
# of ase.calculators: its FileIOCalculator subclasses run the shell string given as `command`, and
# lammpslib runs LAMMPS input (which has a `shell` command). MLIPZOO_CALCULATOR_MODULES (comma-
# separated, read when used) adds modules on one machine; a card's `trusted: true` admits its own.
CALCULATOR_MODULES_ENV = "MLIPZOO_CALCULATOR_MODULES"
BUILTIN_CALCULATOR_MODULES = tuple(f"ase.calculators.{m}" for m in (
    "emt", "lj", "morse", "eam", "tersoff", "tip3p", "tip4p", "acn", "ff", "harmonic", "idealgas", "h2morse"))
# Keywords that switch a loader to full unpickling (torch.load, numpy.load, transformers).
DESERIALISER_KEYS = frozenset({"allow_pickle", "weights_only", "pickle_module", "pickle_load_args",
                               "trust_remote_code"})
# A string that could name a file: a path separator, a home directory, or a file extension.
_PATH_LIKE = re.compile(r"[/\\]|^~|\.[A-Za-z][A-Za-z0-9_]{0,9}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Author(_Strict):
    name: str
    affiliation: str | None = None
    orcid: str | None = None
    email: str | None = None


class Dates(_Strict):
    published: dt.date | None = None
    added: dt.date | None = None


class PackageMirror(_Strict):
    """A copy of the file shipped inside an installed Python package (our offline mirror)."""

    package: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    path: str

    @field_validator("path")
    @classmethod
    def _relative(cls, value: str) -> str:
        return _safe_relative_path(value)


class UrlMirror(_Strict):
    url: Annotated[str, Field(pattern=r"^https?://\S+$")]


def _mirror_kind(value: Any) -> str:
    return "package" if isinstance(value, PackageMirror) or (isinstance(value, dict) and "package" in value) else "url"


# Tagged unions: a bad entry is reported against the one shape it was meant to have.
Mirror = Annotated[Annotated[PackageMirror, Tag("package")] | Annotated[UrlMirror, Tag("url")],
                   Discriminator(_mirror_kind)]


class WeightFile(_Strict):
    """One file of a model's weights and every place it may be fetched from."""

    filename: str
    hf_repo: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
    revision: str | None = None
    sha256: str | None = Field(default=None, pattern=SHA256_PATTERN)
    size: int | None = Field(default=None, gt=0)
    format: Literal["torch", "pickle", "safetensors", "json", "other"] | None = None
    mirrors: list[Mirror] = []

    @field_validator("filename")
    @classmethod
    def _relative(cls, value: str) -> str:
        return _safe_relative_path(value)

    @model_validator(mode="after")
    def _sources(self) -> WeightFile:
        if not self.hf_repo and not self.mirrors:
            raise ValueError("needs a source: set hf_repo (with revision) or add a mirror")
        if any(isinstance(m, PackageMirror) for m in self.mirrors) and not self.sha256:
            # A Hub or URL file can be pinned by its first download (weights.lock, trust on first
            # use); a package copy has no download to pin, so only the card can tell it apart.
            raise ValueError("sha256 is required when the file has a package mirror (a Hub or URL source "
                             "without one is pinned in weights.lock by `mlipzoo models fetch`)")
        if self.hf_repo and not self.revision:
            raise ValueError("hf_repo needs a revision (a commit sha, or a branch that the lock pins)")
        return self

    @property
    def effective_format(self) -> str:
        name = self.filename.lower()
        if self.format == "pickle" or name.endswith(PICKLE_SUFFIXES):  # a declared format never hides a .pkl
            return "pickle"
        if self.format:
            return self.format
        if name.endswith(TORCH_SUFFIXES):
            return "torch"
        if name.endswith(".safetensors"):
            return "safetensors"
        if name.endswith(".json"):
            return "json"
        return "other"


class ModelCard(_Strict):
    """What a potential is, who made it, what it was trained on, and where its weights live.

    The fields are a superset of matbench-discovery's model card (see ``to_matbench_discovery``).
    """

    key: str = Field(pattern=KEY_PATTERN)
    name: str
    version: str
    family: str = Field(pattern=r"^[a-z0-9]+(?:[_-][a-z0-9]+)*$")
    description: str | None = None
    authors: list[Author] = []
    license: str
    repo: str | None = Field(default=None, pattern=r"^https?://\S+$")
    doi: str | None = None
    paper: str | None = None
    dates: Dates = Dates()
    training_sets: list[str] = []
    # The level of theory whose energies the model reproduces. Reference tasks compare like with
    # like where their data allow (diatomics has r2SCAN curves) and flag the difference otherwise.
    functional: str = "PBE"
    energy_target: EnergyTarget = "total"
    model_params: int | None = Field(default=None, ge=0)
    targets: Literal["E", "EF", "EFS", "EFSM"]
    elements: list[str] = []
    cutoff: float | None = Field(default=None, gt=0)
    capabilities: list[Capability] = []
    weights: Annotated[Annotated[list[WeightFile], Tag("list")] | Annotated[Literal["unavailable"], Tag("unavailable")],
                       Discriminator(lambda v: "unavailable" if isinstance(v, str) else "list")] = []
    unavailable_reason: str | None = None
    # The model's Python environment (see zoo/envs.py): pip requirement strings, and optionally
    # the Python it needs ("3.11" or a specifier such as ">=3.10,<3.13").
    requires: list[str] = []
    python: str | None = None
    trusted: bool = False
    trusted_reason: str | None = None
    lifecycle: Literal["active", "deprecated", "superseded", "archived"] = "active"
    # Family-specific settings handed to the adapter (e.g. CHGNet's model_name, SevenNet's modal).
    options: dict[str, Any] = {}
    # family: ase only: any importable ASE calculator is a model.
    calculator: str | None = Field(default=None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    calculator_kwargs: dict[str, Any] = {}

    _path: Path | None = PrivateAttr(default=None)

    @field_validator("requires")
    @classmethod
    def _requirements(cls, value: list[str]) -> list[str]:
        for i, text in enumerate(value):
            try:
                Requirement(text)
            except InvalidRequirement as exc:
                raise ValueError(f"entry {i} ({text!r}) is not a pip requirement: {exc}") from None
        return value

    @field_validator("python")
    @classmethod
    def _python(cls, value: str | None) -> str | None:
        if value is not None:
            python_specifier(value)
        return value

    @field_validator("elements")
    @classmethod
    def _known_elements(cls, value: list[str]) -> list[str]:
        unknown = [e for e in value if e not in chemical_symbols[1:]]
        if unknown:
            raise ValueError(f"unknown element symbol(s) {unknown}")
        if len(set(value)) != len(value):
            raise ValueError("duplicate element symbols")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ModelCard:
        if self.weights == "unavailable" and not self.unavailable_reason:
            raise ValueError("weights: unavailable needs unavailable_reason (say why, with a source)")
        if self.trusted and not self.trusted_reason:
            raise ValueError("trusted: true needs trusted_reason (why full unpickling is acceptable)")
        if self.family == "ase" and not self.calculator and self.available:
            raise ValueError("family 'ase' needs calculator: 'module:Class'")
        if self.family != "ase" and (self.calculator or self.calculator_kwargs):
            raise ValueError("calculator/calculator_kwargs are only for family 'ase'")
        if not self.trusted:
            for field in ("calculator_kwargs", "options"):
                _refuse_loader_switches(field, getattr(self, field))
        if isinstance(self.weights, list):
            names = [w.filename for w in self.weights]
            if len(set(names)) != len(names):
                raise ValueError("weights: two entries share a filename")
            for i, w in enumerate(self.weights):
                if w.effective_format == "pickle" and not self.trusted:
                    raise ValueError(
                        f"weights.{i} ({w.filename}) is a pickle, and loading it can run code: "
                        "set trusted: true with a trusted_reason once you have reviewed its source"
                    )
        return self

    @property
    def path(self) -> Path | None:
        """The YAML file this card was read from (None for cards built in code)."""
        return self._path

    @property
    def weight_files(self) -> list[WeightFile]:
        return self.weights if isinstance(self.weights, list) else []

    @property
    def available(self) -> bool:
        return self.weights != "unavailable"

    @property
    def stress(self) -> bool:
        return "S" in self.targets

    def to_matbench_discovery(self) -> dict[str, Any]:
        """The same facts under matbench-discovery's model-card keys (their ``models/*/*.yml``)."""
        first = self.weight_files[0] if self.weight_files else None
        url = None
        if first is not None:
            urls = [m.url for m in first.mirrors if isinstance(m, UrlMirror)]
            url = urls[0] if urls else (
                f"https://huggingface.co/{first.hf_repo}/resolve/{first.revision}/{first.filename}"
                if first.hf_repo else None)
        out = {
            "model_name": self.name,
            "model_key": self.key,
            "model_version": self.version,
            "date_added": self.dates.added.isoformat() if self.dates.added else None,
            "date_published": self.dates.published.isoformat() if self.dates.published else None,
            "authors": [a.model_dump(exclude_none=True) for a in self.authors],
            "repo": self.repo,
            "doi": self.doi,
            "paper": self.paper,
            "checkpoint_url": url,
            "license": {"code": None, "checkpoint": self.license},
            "requirements": {r: None for r in self.requires},
            "targets": {"E": "E", "EF": "EF_G", "EFS": "EFS_G", "EFSM": "EFSM_G"}[self.targets],
            "model_params": self.model_params,
            "training_set": list(self.training_sets),
        }
        return {k: v for k, v in out.items() if v not in (None, [], {})}


def _refuse_loader_switches(where: str, value: Any) -> None:
    """Keywords handed to a family's code must not reach a deserialiser: no switch that turns
    unpickling on, and no file other than the card's ``weights`` (which are sha256-pinned and
    judged by their bytes before loading)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if str(key).lower() in DESERIALISER_KEYS:
                raise ValueError(
                    f"{where}.{key}: this keyword steers how a file is deserialised and can switch on "
                    "unpickling, which runs code; remove it (or set trusted: true with a trusted_reason)")
            _refuse_loader_switches(f"{where}.{key}", item)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _refuse_loader_switches(f"{where}.{i}", item)
    elif isinstance(value, str) and _PATH_LIKE.search(value):
        raise ValueError(
            f"{where}: {value!r} looks like a file path or URL, and a file handed to a model's code may be "
            "unpickled; list the file under `weights` (sha256-pinned, checked before loading; family ase "
            "passes it as options.weights_kwarg), or set trusted: true with a trusted_reason")


def calculator_modules() -> tuple[str, ...]:
    """Modules a ``family: ase`` card may name: ASE's built-in in-process calculators plus
    ``MLIPZOO_CALCULATOR_MODULES`` (comma-separated), read now."""
    extra = os.environ.get(CALCULATOR_MODULES_ENV, "")
    return BUILTIN_CALCULATOR_MODULES + tuple(m.strip() for m in extra.split(",") if m.strip())


def check_calculator_module(card: ModelCard) -> bool:
    """Whether ``card.calculator``'s module is on the allow-list, decided from its name alone
    (nothing is imported). A trusted card may name another module (False); an untrusted one
    naming another module raises ``CardError`` naming the file, the field and the fixes."""
    module = (card.calculator or "").partition(":")[0]
    allowed = calculator_modules()
    if any(module == m or module.startswith(m + ".") for m in allowed):
        return True
    if card.trusted:
        return False
    raise CardError(
        f"{card.path or card.key}: calculator: module {module!r} is not on the calculator allow-list, "
        f"and importing it would run its code (allowed: {', '.join(allowed)}). To fix: name one of "
        f"those ASE calculators; or, on your own machine, add the module to {CALCULATOR_MODULES_ENV} "
        "(comma-separated); or, once the module is reviewed, set trusted: true with a trusted_reason")


def python_specifier(value: str) -> SpecifierSet:
    """A card's ``python``: ``"3.11"`` means any 3.11.x; otherwise a PEP 440 specifier (``">=3.10"``)."""
    text = value.strip()
    if not text:
        raise ValueError("empty: leave python out to use mlip-zoo's own Python")
    try:
        return SpecifierSet(f"=={text}.*" if re.fullmatch(r"\d+\.\d+", text) else text)
    except InvalidSpecifier:
        raise ValueError(f"{value!r} is not a Python version: write e.g. \"3.11\" or \">=3.10,<3.13\"") from None


def _safe_relative_path(value: str) -> str:
    p = PurePosixPath(value)
    if not value or p.is_absolute() or value.startswith("\\") or re.match(r"^[A-Za-z]:", value):
        raise ValueError(f"{value!r} must be a relative path inside the repository or package")
    if ".." in p.parts or "\\" in value:
        raise ValueError(f"{value!r} must not contain '..' or backslashes")
    return value


# ---------------------------------------------------------------------------------------------
# Reading cards


def builtin_cards_dir() -> Path:
    return Path(str(importlib.resources.files("mlip_zoo.configs") / "models"))


def card_dirs() -> list[Path]:
    """Where cards are read from: the built-in ones, then every directory in ``MLIPZOO_CARDS``."""
    dirs = [builtin_cards_dir()]
    extra = os.environ.get(CARDS_ENV, "")
    dirs += [Path(d).expanduser() for d in extra.split(os.pathsep) if d.strip()]
    return dirs


def _is_union_tag(loc: tuple, i: int) -> bool:
    """pydantic puts the chosen tag of a tagged union into the error path; hide it from users."""
    prev = loc[i - 1] if i else None
    return (prev == "weights" and loc[i] in ("list", "unavailable")) or (
        isinstance(prev, int) and i >= 2 and loc[i - 2] == "mirrors" and loc[i] in ("package", "url"))


def _format_validation_error(path: Path, err: ValidationError) -> str:
    lines = [f"{path}: invalid model card"]
    for e in err.errors():
        loc = ".".join(str(p) for i, p in enumerate(e["loc"]) if not _is_union_tag(e["loc"], i)) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            fields = sorted(ModelCard.model_fields)
            hint = difflib.get_close_matches(str(e["loc"][-1]), fields, n=1)
            msg = "unknown field" + (f" (did you mean {hint[0]!r}?)" if hint else f"; allowed: {', '.join(fields)}")
        elif e["type"] == "string_pattern_mismatch" and e["loc"][-1] == "key":
            msg = f"{e['input']!r} is not a valid key: use lower-case letters and digits joined by '-' or '.'"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def read_card(path: str | Path) -> ModelCard:
    """Parse and validate one card file; every error names the file and the dotted field."""
    path = Path(path)
    text = read_bounded_text(path, CARD_MAX_BYTES, "model card")
    try:
        data = yaml.load(text, Loader=StrictLoader)
    except StrictYAMLError as exc:
        raise CardError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise CardError(f"{path}: not valid YAML: {exc}") from exc
    except RecursionError:
        raise CardError(f"{path}: YAML nested too deeply for a model card; flatten it") from None
    if not isinstance(data, dict):
        raise CardError(f"{path}: a model card must be a YAML mapping of fields, got {type(data).__name__}")
    try:
        card = ModelCard.model_validate(data)
    except ValidationError as exc:
        raise CardError(_format_validation_error(path, exc)) from None
    if path.stem != card.key:
        raise CardError(f"{path}: key {card.key!r} must match the file name; rename the file to {card.key}.yaml")
    card._path = path.resolve()
    return card


def _clash(path: Path, key: str, first: Path | None) -> CardError:
    return CardError(f"{path}: key {key!r} is already defined by {first}; rename one of them")


def _existing(dirs: list[Path]) -> list[Path]:
    for d in dirs:
        if not d.is_dir():
            raise CardError(f"{d}: card directory does not exist (check {CARDS_ENV})")
    return dirs


def load_cards(dirs: list[Path] | None = None) -> dict[str, ModelCard]:
    """Every card in ``dirs`` (default: ``card_dirs()``), by key. Duplicate keys are an error."""
    cards: dict[str, ModelCard] = {}
    for d in _existing(dirs if dirs is not None else card_dirs()):
        for path in sorted(d.glob("*.yaml")):
            card = read_card(path)
            if card.key in cards:
                raise _clash(path, card.key, cards[card.key].path)
            cards[card.key] = card
    return cards


def get_card(key: str, cards: dict[str, ModelCard] | None = None) -> ModelCard:
    if cards is None:  # a card's file is named by its key: read just that file (the zoo has dozens)
        found = [d / f"{key}.yaml" for d in _existing(card_dirs()) if (d / f"{key}.yaml").is_file()]
        if len(found) > 1:
            raise _clash(found[1], key, found[0])
        if found:
            return read_card(found[0])
        cards = load_cards()
    if key in cards:
        return cards[key]
    hint = difflib.get_close_matches(key, list(cards), n=3)
    suggestion = f" Did you mean {', '.join(hint)}?" if hint else ""
    raise UnknownModelError(f"no model card with key {key!r}.{suggestion} "
                            "`mlipzoo models list` shows every card.")
