"""Random-noise control: uniform noise at the same budget as the real methods.

It is the baseline every protection must beat: a victim trained on it should do as well
as one trained on clean data, so any drop a real method causes is due to its optimisation.
"""

from __future__ import annotations

import numpy as np

from ulmed.core.body import body_mask
from ulmed.core.method import METHODS, ProtectionMethod, record_seed
from ulmed.core.tasks import NORMS
from ulmed.io.record import Record


@METHODS.register("random")
class RandomNoise(ProtectionMethod):
    """Uniform noise in [-eps, eps], drawn per record from the run seed and the record key (off the air of a volume).

    With an L2 budget the draw is projected onto the L2 ball (scaled to norm ``eps``).
    """

    name = "random"
    citation = ""  # a control: no paper
    norms = NORMS

    def perturbation(self, record: Record, unit_image: np.ndarray, eps: float) -> np.ndarray:
        """Draw the noise for one record (deterministic for a seed and key)."""
        rng = np.random.default_rng(record_seed(self.seed, record.key))
        noise = rng.uniform(-eps, eps, size=unit_image.shape).astype(np.float32)
        body = body_mask(record)  # air around a medical volume is left alone
        return noise if body is None else noise * body


@METHODS.register("none")
class NoPerturbation(ProtectionMethod):
    """A zero perturbation: converts the files (new UIDs, lossless output) without protecting them.

    Useful to check a conversion end to end; never use it to share data.
    """

    name = "none"
    citation = ""  # conversion only: no paper
    norms = NORMS

    def perturbation(self, record: Record, unit_image: np.ndarray, eps: float) -> np.ndarray:
        """Return zeros."""
        return np.zeros_like(unit_image)

    def protect(self, record: Record) -> Record:
        """The record itself: a zero perturbation changes no stored value, so nothing is computed."""
        return record
