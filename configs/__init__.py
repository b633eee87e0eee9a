"""Data, not code: model cards, task protocols and run configs, installed as mlip_zoo.configs."""
