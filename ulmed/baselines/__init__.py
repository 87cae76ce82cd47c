"""Baseline methods on the shared core; importing this package registers them."""

from ulmed.baselines.em import ErrorMinimising
from ulmed.baselines.lsp import MaskCodedPatterns
from ulmed.baselines.random_noise import NoPerturbation, RandomNoise

__all__ = ["ErrorMinimising", "MaskCodedPatterns", "NoPerturbation", "RandomNoise"]
