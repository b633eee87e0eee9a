"""The model zoo: cards, verified weights, and the ``Potential`` every family returns."""

from mlip_zoo.zoo.card import ModelCard, WeightFile, get_card, load_cards, read_card
from mlip_zoo.zoo.potential import CalculatorPotential, Potential, Prediction
from mlip_zoo.zoo.registry import families, load_potential
from mlip_zoo.zoo.weights import resolve_weights

__all__ = [
    "CalculatorPotential", "ModelCard", "Potential", "Prediction", "WeightFile", "families", "get_card",
    "load_cards", "load_potential", "read_card", "resolve_weights",
]
