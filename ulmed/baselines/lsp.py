"""Training-free, mask-coded synthetic noise (LSP-style, adapted to segmentation).

Linear-separable synthetic perturbations (Yu et al., KDD 2022, "Availability Attacks Create
Shortcuts") give every class its own fixed random pattern; a network learns "pattern ->
class" long before it learns the objects. For segmentation the class is per position: each
position takes the value of *its* class's pattern, so the noise draws the mask as a
texture. Patterns are random ``+-1`` blocks of ``block`` positions, repeated with period
``tile``, scaled to the budget; they are drawn from the run seed only, so every image of a
data set shares the same code (as LSP's class-wise patterns do).

Records without a mask use a whole-image class 0 (a plain periodic pattern); records with a
class label use that label's pattern everywhere (the original, classification form).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ulmed.core.method import METHODS, ProtectionMethod
from ulmed.core.patterns import mask_coded
from ulmed.errors import ConfigError
from ulmed.io.record import Record


@METHODS.register("lsp")
class MaskCodedPatterns(ProtectionMethod):
    """Training-free class/mask-coded patterns (LSP-style baseline): each position carries its class's code.

    Args:
        tile: Period of the pattern, in positions.
        block: Size of the constant blocks inside a period.
    """

    name = "lsp"
    citation = 'Yu et al., "Availability Attacks Create Shortcuts", KDD 2022 (adapted here to segmentation masks)'

    def __init__(self, *args: Any, tile: int = 8, block: int = 1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if tile < 1 or block < 1 or block > tile:
            raise ConfigError(f"need 1 <= block <= tile, got block={block}, tile={tile}")
        self.tile, self.block = tile, block

    def perturbation(self, record: Record, unit_image: np.ndarray, eps: float) -> np.ndarray:
        """``eps`` times the pattern of each position's class."""
        return eps * mask_coded(record.target, record.channels, record.spatial_shape, self.tile, self.block, self.seed)

    def params(self) -> dict[str, Any]:
        """Parameters that define the output."""
        return {**super().params(), "tile": self.tile, "block": self.block}
