"""SALM, the sparsity-aware local-masking optimiser; importing this package registers it."""

from ulmed.medical.salm import SALM

__all__ = ["SALM"]
