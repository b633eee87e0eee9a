"""What one evaluation is, resolved once on the driver: ``Plan`` = the card, the task's protocol
for that card, the dataset with its sha256, the weights with theirs, the device and the model's
environment. Workers receive the plan and never re-derive any of it.

``RunOptions`` are the user's settings (``mlipzoo eval`` flags): plain values, no live handles;
clusters and progress callbacks are passed to ``evaluate`` beside them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mlip_zoo.errors import ConfigError
from mlip_zoo.evaluators.base import Evaluator, TaskConfig, evaluator_for
from mlip_zoo.evaluators.data import Dataset, resolve_dataset
from mlip_zoo.zoo.card import ModelCard, get_card
from mlip_zoo.zoo.envs import Environment, ensure_environment, needs_environment
from mlip_zoo.zoo.potential import resolve_device


@dataclass(frozen=True)
class RunOptions:
    out: Path = Path("results")
    dataset: Path | None = None
    device: str = "cpu"
    workers: int = 1  # 0 runs in this process, without Dask
    scheduler: str | None = None  # address of a running Dask scheduler
    cluster: str = "local"  # local | slurm
    cluster_config: Path | None = None  # YAML of dask_jobqueue.SLURMCluster keyword arguments
    limit: int | None = None
    trust_pickle: bool = False
    env: str = "auto"  # auto | shared | isolated: where a card with `requires` runs (see zoo/envs.py)
    torch_threads: int | None = None  # per local Dask worker; default cores // workers (no oversubscription)

    def __post_init__(self) -> None:
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 0:
            raise ConfigError(f"workers (--workers) must be 0 (run in this process) or a number of Dask worker "
                              f"processes, not {self.workers!r}")
        if self.cluster not in ("local", "slurm"):
            raise ConfigError(f"unknown --cluster {self.cluster!r}: use local or slurm")

    @property
    def in_process(self) -> bool:
        return self.workers == 0 and not self.scheduler and self.cluster == "local"


@dataclass(frozen=True)
class Plan:
    card: ModelCard
    config: TaskConfig  # the task's protocol for this card (Evaluator.for_card), overrides applied
    dataset: Dataset  # its sha256 computed once, here
    weights: dict[str, str]  # weight file name -> verified sha256
    device: str
    environment: Environment | None  # None: this interpreter
    limit: int | None = None
    trust_pickle: bool = False

    @property
    def evaluator(self) -> Evaluator:
        return _evaluator(self.config.model_dump_json())


_EVALUATORS: dict[str, Evaluator] = {}


def _evaluator(config_json: str) -> Evaluator:
    """The task of a config, built once per process: finding it among the entry points scans every
    installed distribution (~70 ms, a cost per shard otherwise), and a task may cache inputs
    (ood-shift: its training statistics). Kept out of the plan, so it never travels to workers."""
    if config_json not in _EVALUATORS:
        _EVALUATORS[config_json] = evaluator_for(TaskConfig.model_validate_json(config_json))
    return _EVALUATORS[config_json]


def make_plan(model: str | ModelCard, task: str | TaskConfig, opts: RunOptions) -> Plan:
    """Resolve everything an evaluation depends on, failing fast (unknown card, task or dataset,
    weights that do not verify) before any work starts."""
    from mlip_zoo.zoo.weights import resolve_weights

    card = get_card(model) if isinstance(model, str) else model
    config = evaluator_for(task).for_card(card)  # the protocol for this model (ood-shift: auto)
    dataset = resolve_dataset(config.dataset, config.dataset_file, opts.dataset)
    weights = {name: f.sha256 for name, f in resolve_weights(card).items()}
    env = ensure_environment(card)[0] if needs_environment(card, opts.env) else None
    return Plan(card=card, config=config, dataset=dataset, weights=weights, device=resolve_device(opts.device),
                environment=env, limit=opts.limit, trust_pickle=opts.trust_pickle)
