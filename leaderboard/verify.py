"""Verified submissions (issue #22): re-run a seeded sample of a result's structures with the
model its card pins and compare with the submitted predictions.

Recomputing metrics from a predictions file (``validate``) proves the arithmetic, not the
predictions: a file whose predictions are the reference labels recomputes perfectly. ``verify``
loads the model from its card (weights verified by sha256, in its own environment when the card
needs one), runs the task's own ``Evaluator.run`` on ``sample`` structures drawn from ``seed``
(one structure per shard, through the runner's worker and clusters), and compares each prediction
column the task config's ``verify.tolerance`` names. It writes what it did and found beside the
result (``<task>.verified.json``, see ``evaluators/store.py``); ``validate`` checks that sidecar for
consistency (``check_verification``) and the site shows it next to the number.

A sidecar is a claim, checked only for consistency: what makes it trustworthy is who ran
``verify`` (a maintainer, or the label-gated workflow .github/workflows/verify-submission.yml
running the base branch's code).
"""

from __future__ import annotations

import datetime as dt
import json
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mlip_zoo.errors import MlipZooError
from mlip_zoo.evaluators.base import TaskConfig, Tolerance, VerifySettings, evaluator_for
from mlip_zoo.evaluators.record import ResultRecord
from mlip_zoo.evaluators.store import ResultError, read_record, verification_file
from mlip_zoo.leaderboard.results import check_card, task_of
from mlip_zoo.zoo.weights import atomic_write_text, sha256_of

VERIFICATION_SCHEMA_VERSION = 1


def draw_sample(n_rows: int, size: int, seed: int) -> list[int]:
    """Row indices of the sample, in the order they are re-run: the first ``size`` of a seeded
    permutation, so a run cut short by its time budget checked a prefix of the same sample."""
    return [int(i) for i in np.random.default_rng(seed).permutation(n_rows)[:min(size, n_rows)]]


class StructureCheck(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    index: int  # row of the predictions file (= record of the dataset)
    submitted: str  # status of the submitted row
    rerun: str  # status of the re-run row
    agree: bool
    # column -> the largest |submitted - re-run| and whether every element is within tolerance
    columns: dict[str, dict[str, Any]] = {}
    why: str | None = None  # what disagrees, in words


class VerificationRecord(BaseModel):
    """``<task>.verified.json``: one re-run of a sample of one result."""

    model_config = ConfigDict(extra="forbid")
    schema_version: int = Field(VERIFICATION_SCHEMA_VERSION, ge=1, le=VERIFICATION_SCHEMA_VERSION)
    result: str  # file name of the result verified, beside this file
    model: str
    task: str
    task_version: str
    result_sha256: str  # the result file as it was verified
    predictions_sha256: str  # the predictions verified: validate refuses the sidecar once they change
    card_sha256: str | None
    weights_sha256: dict[str, str]
    task_config_sha256: str
    dataset_sha256: str
    n_rows: int
    seed: int
    sample_size: int  # structures asked for (--sample)
    sample: list[str]  # ids drawn from the seed, in run order
    budget_s: float
    checked: int  # how many of ``sample`` (a prefix) ran within the budget
    tolerance: dict[str, dict[str, float]]
    outcome: Literal["verified", "failed"]
    agreed: int
    disagreements: list[str]
    structures: list[StructureCheck]
    verified_at: str
    wall_time_s: float
    code_version: str
    packages: dict[str, str]
    hardware: dict[str, Any]
    device: str
    environment: dict[str, Any] | None = None

    @property
    def summary(self) -> str:
        if self.outcome == "verified":
            return f"re-run verified ({self.agreed}/{self.checked})"
        return f"re-run disagrees ({len(self.disagreements)} of {self.checked} differ)"


@dataclass
class Verification:
    record: VerificationRecord
    path: Path  # where the sidecar was (or would be) written

    @property
    def ok(self) -> bool:
        return self.record.outcome == "verified"


# ---------------------------------------------------------------------------------------------
# Running a verification


def settings_of(path: Path, config: TaskConfig) -> VerifySettings:
    if config.verify is None:
        raise ResultError(f"{path}: task {config.key} cannot be verified from a sample of its structures (its task "
                          "config has no `verify` block; see the comment there for why)")
    return config.verify


def protocol_of(path: Path, record: ResultRecord, card, options: dict[str, Any]) -> TaskConfig:
    """The task protocol the result was made with: the one whose fingerprint is the recorded
    ``task_config_sha256``, among the task's defaults, the option sets the default run config
    gives the task (diatomics: ``every: 2``) and ``options`` (``--option``), each adapted to the
    card as the runner adapts it (``Evaluator.for_card``)."""
    from mlip_zoo.leaderboard.runs import default_run_config, read_run_config, with_options

    base = task_of(path, record)
    candidates: list[dict[str, Any]] = [options] if options else []
    blocks = read_run_config(default_run_config()).get("runs", [])
    candidates += [b["options"] for b in blocks if record.task in b.get("tasks", []) and b.get("options")]
    candidates.append({})
    for opts in candidates:
        try:
            config = with_options(record.task, opts) if opts else base
            config = evaluator_for(config).for_card(card)
        except MlipZooError as exc:
            if opts is options:
                raise ResultError(f"{path}: --option {opts}: {exc}") from None
            continue
        if config.fingerprint() == record.provenance.task_config_sha256:
            return config
    raise ResultError(f"{path}: the result was made with task options that are neither {record.task}'s defaults nor "
                      "those of the default run config (provenance.task_config_sha256 matches none); pass the run's "
                      "options with --option KEY=VALUE (e.g. --option every=2)")


def _submitted_rows(predictions: Path, indices: list[int]) -> dict[int, dict[str, Any]]:
    """The predictions rows at ``indices``, read a row group at a time."""
    import pyarrow.parquet as pq

    wanted, rows, start = set(indices), {}, 0
    file = pq.ParquetFile(predictions)
    for group in range(file.num_row_groups):
        size = file.metadata.row_group(group).num_rows
        local = sorted(i - start for i in wanted if start <= i < start + size)
        if local:
            table = file.read_row_group(group).take(local)
            rows.update(zip((start + i for i in local), table.to_pylist(), strict=True))
        start += size
    return rows


def _records(dataset: Path, indices: list[int], ids: dict[int, str]) -> dict[int, Any]:
    """The dataset's records at ``indices``, each checked to be the structure its row names."""
    from mlip_zoo.evaluators.data import iter_records, number_records, record_id

    wanted, found = set(indices), {}
    for i, atoms in number_records(iter_records(dataset)):
        if i in wanted:
            if (rid := record_id(atoms, i)) != ids[i]:
                raise ResultError(f"{dataset}: record {i} is {rid!r}, the result's row {i} is {ids[i]!r}: rows are "
                                  "the dataset's records in its order; run `mlipzoo validate` on the result")
            found[i] = atoms
            if len(found) == len(wanted):
                break
    missing = sorted(wanted - set(found))
    if missing:
        raise ResultError(f"{dataset}: has no record {missing[0]}, which the result's predictions hold")
    return found


def compare_rows(submitted: dict[str, Any], rerun: dict[str, Any], tolerance: dict[str, Tolerance],
                 index: int) -> StructureCheck:
    """One structure: both rows failed, or both ok with every tolerance column within bounds."""
    sid, a, b = submitted["id"], submitted["status"], rerun["status"]
    check = StructureCheck(id=sid, index=index, submitted=a, rerun=b, agree=True)
    if a != "ok" or b != "ok":
        if (a == "ok") != (b == "ok"):
            check.agree = False
            check.why = (f"submitted ok, the re-run failed: {rerun.get('reason')}" if a == "ok" else
                         f"submitted as failed ({submitted.get('reason')}), the re-run predicts it")
        return check
    problems = []
    for column, tol in tolerance.items():
        x, y = submitted.get(column), rerun.get(column)
        if x is None or y is None:
            ok, worst = x is None and y is None, None
            if not ok:
                problems.append(f"{column} is {'missing' if x is None else 'present'} in the submitted row, "
                                f"{'missing' if y is None else 'present'} in the re-run")
        else:
            x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
            if x.shape != y.shape:
                ok, worst = False, None
                problems.append(f"{column} has shape {x.shape} submitted, {y.shape} re-run")
            else:
                both_nan = np.isnan(x) & np.isnan(y)
                within = tol.allows(x, y) | both_nan
                ok = bool(within.all())
                diff = np.where(both_nan, 0.0, np.abs(x - y))
                worst = float(np.nanmax(diff)) if diff.size and not np.isnan(diff).all() else (0.0 if ok else None)
                if not ok:
                    problems.append(f"{column} differs by up to {worst if worst is not None else 'NaN'} "
                                    f"(allowed {tol.abs:g} + {tol.rel:g} x |value|)")
        check.columns[column] = {"max_abs_diff": worst, "ok": ok}
    if problems:
        check.agree, check.why = False, "; ".join(problems)
    return check


def verify_result(path: Path, *, sample: int | None = None, seed: int = 0, budget_s: float | None = None,
                  cards: Path | None = None, dataset: Path | None = None, options: dict[str, Any] | None = None,
                  workers: int = 0, env: str = "auto", device: str = "cpu", write: bool = True,
                  progress=None) -> Verification:
    """Re-run ``sample`` structures of the result at ``path`` (default: the task's
    ``verify.sample``) drawn from ``seed``, starting none after ``budget_s`` seconds, and compare;
    writes the sidecar unless ``write`` is False. Raises ResultError when the result cannot be
    verified at all (its predictions torn from the record, another card, another dataset...)."""
    from mlip_zoo.evaluators.clusters import clusters_for, run_shards
    from mlip_zoo.evaluators.plan import RunOptions, make_plan
    from mlip_zoo.evaluators.result import PACKAGES, code_version, hardware, package_versions
    from mlip_zoo.evaluators.store import predictions_file
    from mlip_zoo.evaluators.worker import run_shard

    started, t0 = dt.datetime.now(dt.timezone.utc), time.perf_counter()
    record = read_record(path, migrate=False)
    if record.schema_version < 3 or not record.predictions_sha256:
        raise ResultError(f"{path}: result schema {record.schema_version} does not commit to its predictions' sha256; "
                          "rerun the evaluation before verifying it")
    predictions = predictions_file(path, record)
    if (got := sha256_of(predictions)) != record.predictions_sha256:
        raise ResultError(f"{path}: predictions file {predictions.name} has sha256 {got}, the result committed to "
                          f"{record.predictions_sha256}: a torn pair; rerun the evaluation")
    card = check_card(path, record, cards)
    config = protocol_of(path, record, card, options or {})
    settings = settings_of(path, config)
    size = sample if sample is not None else settings.sample
    budget = budget_s if budget_s is not None else settings.budget_s
    if size < 1 or budget <= 0:
        raise ResultError(f"--sample must be at least 1 and --budget positive (got {size}, {budget})")
    opts = RunOptions(dataset=dataset, workers=workers, env=env, device=device, limit=record.dataset.limit)
    plan = make_plan(card, config, opts)  # the card's weights, verified; its environment, built
    if plan.dataset.sha256 != record.dataset.sha256:
        raise ResultError(f"{path}: the result was evaluated on {record.dataset.name} ({record.dataset.file}, sha256 "
                          f"{record.dataset.sha256}), not {plan.dataset.path} (sha256 {plan.dataset.sha256}); pass "
                          "that dataset with --dataset")
    if plan.weights != record.provenance.weights_sha256:
        raise ResultError(f"{path}: the weights loaded ({plan.weights}) are not those the result records "
                          f"({record.provenance.weights_sha256})")
    indices = draw_sample(record.n_structures, size, seed)
    submitted = _submitted_rows(predictions, indices)
    records = _records(plan.dataset.path, indices, {i: row["id"] for i, row in submitted.items()})
    evaluator = plan.evaluator
    report = progress or (lambda ok, failed: None)

    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory(prefix="mlipzoo-verify-") as tmp:
        shards: list[tuple[int, Path]] = []

        def pending() -> Iterator[tuple[list, Path]]:  # one structure a shard; none started after the budget
            for j, index in enumerate(indices):
                if shards and time.perf_counter() - t0 > budget:
                    return
                shard = Path(tmp) / f"shard-{j:05d}.parquet"
                shards.append((index, shard))
                yield [records[index]], shard

        with clusters_for(plan, opts) as where:
            if where is None:
                for structures, shard in pending():
                    report(*run_shard(plan, structures, str(shard)))
            else:
                run_shards(plan, pending(), where, report)
        reruns = {index: pq.read_table(shard).to_pylist()[0] for index, shard in shards}
    checks = [compare_rows(submitted[i], reruns[i], settings.tolerance, i) for i, _ in shards]
    disagree = [c.id for c in checks if not c.agree]
    env_ = plan.environment
    packages = package_versions()
    if env_ is not None:  # the model ran with the environment's packages
        seen = env_.info()["packages"]
        packages = {name: seen[name] for name in PACKAGES if name in seen}
    verification = VerificationRecord(
        result=path.name, model=record.model, task=record.task, task_version=record.task_version,
        result_sha256=sha256_of(path), predictions_sha256=record.predictions_sha256,
        card_sha256=record.provenance.card_sha256, weights_sha256=dict(plan.weights),
        task_config_sha256=config.fingerprint(), dataset_sha256=plan.dataset.sha256, n_rows=record.n_structures,
        seed=seed, sample_size=size, sample=[submitted[i]["id"] for i in indices], budget_s=budget,
        checked=len(checks), tolerance={k: v.model_dump() for k, v in settings.tolerance.items()},
        outcome="verified" if checks and not disagree else "failed", agreed=len(checks) - len(disagree),
        disagreements=disagree, structures=checks, verified_at=started.isoformat(timespec="seconds"),
        wall_time_s=round(time.perf_counter() - t0, 3), code_version=code_version(), packages=packages,
        hardware=hardware(workers, plan.device), device=plan.device,
        environment={"hash": env_.hash, "requires": list(card.requires)} if env_ is not None else None)
    target = verification_file(path)
    if write:
        atomic_write_text(target, json.dumps(verification.model_dump(mode="json"), indent=2, allow_nan=False) + "\n")
    return Verification(verification, target)


# ---------------------------------------------------------------------------------------------
# Checking a sidecar (validate, the site)


def read_verification(sidecar: Path) -> VerificationRecord:
    try:
        return VerificationRecord.model_validate_json(sidecar.read_text())
    except OSError as exc:
        raise ResultError(f"{sidecar}: cannot read the verification ({exc})") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ResultError(f"{sidecar}: not a verification written by `mlipzoo verify` "
                          f"({'.'.join(map(str, first['loc']))}: {first['msg']}); rerun `mlipzoo verify`") from None


def check_verification(path: Path, record: ResultRecord | None = None) -> VerificationRecord | None:
    """The sidecar of the result at ``path`` (None when it has none), checked for consistency: it
    names this result, verified these predictions (sha256) made with this card, its sample is the
    one its seed draws and its ids are the predictions' rows there, it used the task's current
    tolerances, and its outcome follows from its per-structure findings. Raises ResultError naming
    the inconsistency. It cannot check that the re-run happened: who ran it vouches for that."""
    sidecar = verification_file(path)
    if not sidecar.is_file():
        return None
    v = read_verification(sidecar)
    record = record or read_record(path, migrate=False)
    rerun = "; rerun `mlipzoo verify " + str(path) + "`"

    def bad(why: str) -> ResultError:
        return ResultError(f"{sidecar}: {why}{rerun}")

    if (v.result, v.model, v.task, v.task_version) != (path.name, record.model, record.task, record.task_version):
        raise bad(f"verifies {v.model} on {v.task} {v.task_version} ({v.result}), not this result "
                  f"({record.model} on {record.task} {record.task_version}, {path.name})")
    if v.predictions_sha256 != record.predictions_sha256:
        raise bad(f"verified predictions with sha256 {v.predictions_sha256}; the result now commits to "
                  f"{record.predictions_sha256}: the predictions changed since")
    if (v.card_sha256, v.weights_sha256) != (record.provenance.card_sha256, record.provenance.weights_sha256):
        raise bad("verified with another card or other weights than the result records")
    if v.dataset_sha256 != record.dataset.sha256 or v.task_config_sha256 != record.provenance.task_config_sha256:
        raise bad("verified on another dataset or task protocol than the result records")
    if v.n_rows != record.n_structures:
        raise bad(f"drew its sample from {v.n_rows} rows; the result has {record.n_structures}")
    indices = draw_sample(v.n_rows, v.sample_size, v.seed)
    from mlip_zoo.evaluators.store import predictions_file

    rows = _submitted_rows(predictions_file(path, record), indices)
    drawn = [rows[i]["id"] for i in indices]
    if v.sample != drawn:
        raise bad(f"its sample ({', '.join(v.sample[:3])}...) is not the one seed {v.seed} draws from the "
                  f"predictions ({', '.join(drawn[:3])}...)")
    if not 1 <= v.checked <= len(v.sample) or [s.id for s in v.structures] != v.sample[:v.checked] \
            or [s.index for s in v.structures] != indices[:v.checked]:
        raise bad(f"its {len(v.structures)} checked structures are not the first {v.checked} of its sample")
    config = task_of(path, record)
    current = {k: t.model_dump() for k, t in (config.verify.tolerance if config.verify else {}).items()}
    if v.tolerance != current:
        raise bad(f"used tolerances {v.tolerance}, the task's are now {current}")
    tolerance = {k: Tolerance(**t) for k, t in v.tolerance.items()}
    for s in v.structures:
        statuses_agree = (s.submitted == "ok") == (s.rerun == "ok")
        both_ok = s.submitted == "ok" and s.rerun == "ok"
        if s.submitted != rows[s.index]["status"]:
            raise bad(f"structure {s.id}: records status {s.submitted!r}, its row says {rows[s.index]['status']!r}")
        if both_ok and set(s.columns) != set(tolerance):
            raise bad(f"structure {s.id}: compares columns {sorted(s.columns)}, the tolerances name "
                      f"{sorted(tolerance)}")
        columns_ok = all(c.get("ok") is True for c in s.columns.values()) if both_ok else True
        if s.agree != (statuses_agree and columns_ok):
            raise bad(f"structure {s.id}: `agree` is {s.agree} but its statuses and columns say otherwise")
    disagree = [s.id for s in v.structures if not s.agree]
    outcome = "verified" if not disagree else "failed"
    if v.disagreements != disagree or v.agreed != v.checked - len(disagree) or v.outcome != outcome:
        raise bad(f"outcome {v.outcome!r} ({v.agreed} agreed, disagreements {v.disagreements}) does not follow from "
                  f"its structures ({v.checked - len(disagree)} agree, {disagree})")
    return v
