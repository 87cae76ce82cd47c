"""Error-minimising noise (Huang et al., ICLR 2021, "Unlearnable Examples").

The bilevel min-min loop of :mod:`ulmed.core.bilevel` with every position free to move:
the surrogate learns on the perturbed data, the noise is pushed to make its loss small,
until the surrogate fits the perturbed data (Dice or accuracy threshold). Sample-wise by
default; class-wise (one noise per class label) with ``classwise=True``.
"""

from __future__ import annotations

from ulmed.core.method import METHODS
from ulmed.core.optimised import OptimisedMethod


@METHODS.register("em")
class ErrorMinimising(OptimisedMethod):
    """Error-minimising noise from the min-min loop, sample- or class-wise (baseline)."""

    name = "em"
    citation = 'Huang et al., "Unlearnable Examples: Making Personal Data Unexploitable", ICLR 2021'
