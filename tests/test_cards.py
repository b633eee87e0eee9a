"""Model cards: every shipped card is valid, and each class of bad card is refused with the
file and field named."""

from __future__ import annotations

import pytest

from mlip_zoo.errors import CardError, UnknownModelError
from mlip_zoo.zoo.card import builtin_cards_dir, get_card, load_cards, read_card
from mlip_zoo.zoo.registry import check_family, families

SHIPPED = sorted(builtin_cards_dir().glob("*.yaml"))
RUNNABLE = ["chgnet-0.3.0", "chgnet-0.2.0", "chgnet-r2scan", "sevennet-0", "sevennet-l3i5", "sevennet-mf-0",
            "diep-fold1", "emt", "gfn2-xtb"]

MINIMAL = """\
key: {key}
name: Test model
version: "1"
family: emt
license: MIT
targets: EFS
"""


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_card_is_valid(path):
    card = read_card(path)
    check_family(card.family)
    assert card.key == path.stem
    assert card.path == path.resolve()


def test_zoo_has_the_required_cards():
    cards = load_cards()
    assert len(cards) >= 15
    assert set(RUNNABLE) <= set(cards)
    for key in RUNNABLE:
        for wf in cards[key].weight_files:  # offline mirrors are verifiable: every file has a sha256
            assert wf.sha256 and wf.mirrors
    unavailable = [c for c in cards.values() if not c.available]
    assert all(c.unavailable_reason for c in unavailable)


def test_cards_from_mlipzoo_cards_directories(card_dir, monkeypatch, tmp_path):
    card_dir("my-emt", MINIMAL.format(key="my-emt"))
    other = tmp_path / "more"
    other.mkdir()
    (other / "other-emt.yaml").write_text(MINIMAL.format(key="other-emt"))
    monkeypatch.setenv("MLIPZOO_CARDS", f"{card_dir.dir}:{other}")
    cards = load_cards()
    assert {"my-emt", "other-emt", "chgnet-0.3.0"} <= set(cards)


def test_duplicate_key_across_directories_is_an_error(card_dir, monkeypatch):
    card_dir("emt", MINIMAL.format(key="emt"))
    monkeypatch.setenv("MLIPZOO_CARDS", str(card_dir.dir))
    with pytest.raises(CardError, match="already defined by"):
        load_cards()
    with pytest.raises(CardError, match="already defined by"):
        get_card("emt")  # the one-file lookup sees the clash too


def test_unknown_key_suggests_close_matches():
    with pytest.raises(UnknownModelError, match="Did you mean chgnet-0.3.0"):
        get_card("chgnet-0.3")


@pytest.mark.parametrize(
    ("name", "extra", "expected"),
    [
        ("unknown field", "learning_rate: 0.1\n", r"learning_rate: unknown field"),
        ("typo with hint", "licence: MIT\n", r"licence: unknown field \(did you mean 'license'\?\)"),
        ("dotdot filename", "weights:\n  - {filename: ../../etc/passwd, sha256: %s, mirrors: [{url: 'https://x.org/a'}]}\n" % ("a" * 64),
         r"weights.0.filename: .*must not contain '..'"),
        ("absolute filename", "weights:\n  - {filename: /etc/passwd, sha256: %s, mirrors: [{url: 'https://x.org/a'}]}\n" % ("a" * 64),
         r"weights.0.filename: .*must be a relative path"),
        ("package path escape", "weights:\n  - {filename: w.pt, sha256: %s, mirrors: [{package: ase, path: ../../x}]}\n" % ("a" * 64),
         r"weights.0.mirrors.0.*must not contain '..'"),
        ("package without sha256", "weights:\n  - {filename: w.pt, mirrors: [{package: ase, path: w.pt}]}\n",
         r"weights.0: sha256 is required"),
        ("bad sha256", "weights:\n  - {filename: w.pt, sha256: xyz, mirrors: [{package: ase, path: w.pt}]}\n",
         r"weights.0.sha256: String should match pattern"),
        ("hub without revision", "weights:\n  - {filename: w.pt, hf_repo: org/model}\n", r"hf_repo needs a revision"),
        ("no source", "weights:\n  - {filename: w.pt}\n", r"needs a source"),
        ("pickle untrusted", "weights:\n  - {filename: m.model, hf_repo: org/model, revision: main}\n",
         r"m.model\) is a pickle.*set trusted: true"),
        ("unknown element", "elements: [Cu, Xx]\n", r"elements: .*unknown element symbol"),
        ("unavailable without reason", "weights: unavailable\n", r"needs unavailable_reason"),
        ("bad target", "", None),
    ],
    ids=lambda v: v if isinstance(v, str) and " " in v else None,
)
def test_bad_cards_are_refused_naming_the_field(card_dir, name, extra, expected):
    text = MINIMAL.format(key="bad-card") + extra
    if name == "bad target":
        text = text.replace("targets: EFS", "targets: XYZ")
        expected = r"targets: Input should be 'E', 'EF', 'EFS' or 'EFSM'"
    path = card_dir("bad-card", text)
    with pytest.raises(CardError, match=expected) as info:
        read_card(path)
    assert str(path) in str(info.value)


def test_bad_key_pattern_and_file_name(card_dir):
    path = card_dir("Bad_Key", MINIMAL.format(key="Bad_Key"))
    with pytest.raises(CardError, match=r"key: 'Bad_Key' is not a valid key"):
        read_card(path)
    path = card_dir("other-name", MINIMAL.format(key="right-name"))
    with pytest.raises(CardError, match="rename the file to right-name.yaml"):
        read_card(path)


def test_malformed_yaml_names_the_file(card_dir):
    path = card_dir("broken", "key: broken\nname: [unclosed\n")
    with pytest.raises(CardError, match="not valid YAML"):
        read_card(path)
    path = card_dir("listy", "- a\n- b\n")
    with pytest.raises(CardError, match="must be a YAML mapping"):
        read_card(path)


def test_yaml_tags_are_not_executed(card_dir):
    path = card_dir("evil", MINIMAL.format(key="evil") + "description: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(CardError, match="not valid YAML"):
        read_card(path)


def test_unknown_family_is_named_with_suggestion():
    assert {"emt", "chgnet", "sevenn", "diep", "tblite", "ase", "mace", "orb", "mattersim", "fairchem",
            "pet-mad"} <= set(families())
    with pytest.raises(KeyError, match=r"unknown model family 'chgent' \(did you mean 'chgnet'\?\)"):
        check_family("chgent")


def test_matbench_discovery_export_uses_their_keys():
    exported = get_card("sevennet-0").to_matbench_discovery()
    assert exported["model_key"] == "sevennet-0"
    assert exported["targets"] == "EFS_G"
    assert exported["training_set"] == ["MPtrj"]
    assert exported["checkpoint_url"].startswith("https://github.com/MDIL-SNU/SevenNet/")
    assert exported["model_params"] == 842440
    hub = get_card("mace-mp-0b3-medium").to_matbench_discovery()
    assert hub["checkpoint_url"] == ("https://huggingface.co/mace-foundations/mace-mp-0/resolve/main/"
                                     "mace-mp-0b3-medium.model")
