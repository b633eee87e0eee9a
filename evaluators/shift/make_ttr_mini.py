"""Generate ttr-mini (EMT labels): the first few test structures of every shift-mini split.

The ``ttr`` task predicts each structure several times and test-time trains on all of them, so
it runs on a small, balanced slice of shift-mini's test set: the first ``PER_SPLIT`` records of
each split (none, element, force_norm, connectivity), unchanged (same ids, info and EMT labels).
Its reference (training) set stays shift-mini's ``train.json``. Not a published benchmark.

Run ``python -m mlip_zoo.evaluators.shift.make_ttr_mini [--out DIR] [--per-split N]``; the output
is byte-identical for the same shift-mini test.json (whose sha256 the manifest records).
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
from pathlib import Path

from mlip_zoo.evaluators.data import iter_records, resolve_dataset
from mlip_zoo.evaluators.oc20.make_mini import ase_json_db

LABEL = "ttr-mini (EMT labels)"
PER_SPLIT = 4
SOURCE = ("shift-mini", "test.json")


def generate(out: Path, per_split: int = PER_SPLIT) -> dict:
    source = resolve_dataset(*SOURCE)  # checked against shift-mini's manifest
    chosen, counts = [], {}
    for atoms in iter_records(source.path):
        split = atoms.info["split"]
        if counts.get(split, 0) < per_split:
            counts[split] = counts.get(split, 0) + 1
            for key in ("id", "unique_id"):  # the database's own row bookkeeping, not the record's
                atoms.info.pop(key, None)
            chosen.append(atoms)
    out.mkdir(parents=True, exist_ok=True)
    manifest = {
        "name": "ttr-mini", "label": LABEL,
        "description": (f"{LABEL}: not a published benchmark. The first {per_split} test structures of each "
                        "shift-mini split (32-atom EMT-metal structures: controls, held-out elements, hot frames, "
                        "slabs and clusters), for the ttr task; its reference set is shift-mini's train.json."),
        "generator": "mlip_zoo.evaluators.shift.make_ttr_mini", "labelled_by": "emt",
        "source": {"dataset": SOURCE[0], "file": SOURCE[1], "sha256": source.sha256},
        "per_split": per_split, "splits": counts,
        "files": {"test.json": {"sha256": ase_json_db(out / "test.json", chosen), "n": len(chosen)}},
        "energy": "total EMT energy, eV",
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> None:
    default_out = Path(str(importlib.resources.files("mlip_zoo.configs"))) / "datasets" / "ttr-mini"
    parser = argparse.ArgumentParser(description=f"Generate {LABEL} from shift-mini's test set.")
    parser.add_argument("--out", type=Path, default=default_out, help=f"output folder (default {default_out})")
    parser.add_argument("--per-split", type=int, default=PER_SPLIT)
    args = parser.parse_args(argv)
    manifest = generate(args.out, args.per_split)
    entry = manifest["files"]["test.json"]
    print(f"{LABEL} -> {args.out}: {entry['n']} structures, sha256 {entry['sha256']}")


if __name__ == "__main__":
    main()
