"""Typed task options: every task declares a pydantic ``Options`` model, checked when its config is
loaded, so a typo in configs/tasks/*.yaml or a run config's ``options:`` is refused on the driver,
naming the file or task, the key and the keys it could have been."""

from __future__ import annotations

import pytest
import yaml

from mlip_zoo.errors import ConfigError
from mlip_zoo.evaluators import base
from mlip_zoo.evaluators.base import TaskConfig, evaluator_for, load_task_config, task_keys


@pytest.mark.parametrize("key", task_keys())
def test_every_shipped_task_has_typed_options(key):
    evaluator = evaluator_for(key)
    assert type(evaluator).Options is not base.NoOptions or not evaluator.config.options
    # the fingerprint hashes the YAML's own mapping, never the model's defaults
    assert evaluator.config.options == yaml.safe_load((base.tasks_dir() / f"{key}.yaml").read_text()).get("options", {})


def _with(key: str, **options) -> TaskConfig:
    config = load_task_config(key)
    return TaskConfig.model_validate({**config.model_dump(), "options": {**config.options, **options}})


def test_unknown_key_is_refused_with_the_known_keys():
    with pytest.raises(ConfigError, match=r"task oc20-s2ef: invalid options: options.energy_treshold: unknown key "
                                          r"\(known: energy_threshold, force_threshold, alignment\)"):
        evaluator_for(_with("oc20-s2ef", energy_treshold=0.02))


def test_nested_unknown_key_names_its_level():
    relax = {**load_task_config("oc20-is2rs").options["relax"], "fmaxx": 0.1}
    with pytest.raises(ConfigError, match=r"options.relax.fmaxx: unknown key \(known: optimizer, fmax, steps"):
        evaluator_for(_with("oc20-is2rs", relax=relax))


def test_mistyped_value_is_refused():
    with pytest.raises(ConfigError, match=r"options.most_stable_n: Input should be a valid integer"):
        evaluator_for(_with("discovery", most_stable_n="many"))
    with pytest.raises(ConfigError, match=r"options.headline_subset"):
        evaluator_for(_with("discovery", headline_subset="unique_prototype"))


def test_yaml_error_names_the_file(tmp_path, monkeypatch):
    text = (base.tasks_dir() / "eos.yaml").read_text().replace("reference_size:", "reference_sizes:")
    (tmp_path / "eos.yaml").write_text(text)
    monkeypatch.setattr(base, "tasks_dir", lambda: tmp_path)
    with pytest.raises(ConfigError) as exc:
        load_task_config("eos")
    assert str(exc.value).startswith(f"{tmp_path / 'eos.yaml'}: invalid options: ")
    assert "options.reference_sizes: unknown key (known: volume_factors, delta_window, reference_size)" in str(exc.value)


def test_tasks_read_typed_options():
    assert evaluator_for("oc20-s2ef").options.energy_threshold == 0.02
    shift = evaluator_for("ood-shift")
    assert shift.options.reference.dataset == "shift-mini" and shift.options.stats.radius == 5.0
    assert shift.options.bins.force_norm[0] == 0.5
    assert evaluator_for("ood-shift-mptrj").options.reference == "mptrj"
