"""The shared perturbation engine: budgets, projection, devices, the method interface."""

from ulmed.core.budget import Budget
from ulmed.core.method import METHODS, ProtectionMethod

__all__ = ["METHODS", "Budget", "ProtectionMethod"]
