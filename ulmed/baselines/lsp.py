"""Training-free, mask-coded synthetic noise (LSP-style, adapted to segmentation).

Linear-separable synthetic perturbations (Yu et al., KDD 2022, "Availability Attacks Create
Shortcuts") give every class its own fixed random pattern; a network learns "pattern ->
class" long before it learns the objects. For segmentation the class is per position: each
position takes the value of *its* class's pattern, so the noise draws the mask as a
texture. Patterns are random ``+-1`` blocks of ``block`` positions, repeated with period
``tile``, scaled to the budget; they are drawn from the run seed only, so every image of a
data set shares the same code (as LSP's class-wise patterns do).

On a medical volume (DICOM, NIfTI) the code stays off the air around the body
(:func:`ulmed.core.body.body_mask`). ``grid="size:N"`` draws the 2D code on the working
grid of a trainer that resizes to ``N x N`` (:mod:`ulmed.core.grid`).

Records without a mask use a whole-image class 0 (a plain periodic pattern); records with a
class label use that label's pattern everywhere (the original, classification form).

``style="nyquist"`` replaces the random blocks by the Nyquist patterns of
:func:`ulmed.core.patterns.nyquist_coded`: the foreground is drawn with the checkerboard (one
pattern per class), the background is left as it is. On 2D data (HC18 segmentation,
PneumoniaMNIST classification) it is the stronger code, survives flips, brightness jitter and
JPEG far better, and, touching only the foreground, is the less visible one. On labelled
volumes (NIfTI with ``--masks``) it is the code a 3D network that convolves at full resolution
first (SegResNet, nnU-Net's architecture) learns through random patches and flips, where the
blocks are learned by none (docs/grid.md, issue 16). The default style ``auto`` therefore uses
``nyquist`` for 2D images and labelled volumes, and ``blocks`` for volumes without labels (a
DICOM export), where no measured code has an effect. ``style="offset"`` lifts each foreground
class by a constant (:func:`ulmed.core.patterns.offset_coded`): it survives every warp and
resize by construction, yet victims ignore it (docs/results.md, issue 16); it stays as a
reference construction.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ulmed.choices import StrEnum, look_up, names
from ulmed.core.body import body_mask
from ulmed.core.grid import PREIMAGE_QUANTILE, WorkingGrid, nearest_labels, preimage
from ulmed.core.method import METHODS, ProtectionMethod
from ulmed.core.patterns import mask_coded, nyquist_coded, offset_coded
from ulmed.errors import ConfigError
from ulmed.io.record import Record


class Style(StrEnum):
    """Which code lsp draws."""

    #: ``nyquist`` for 2D images and labelled volumes, ``blocks`` for volumes without labels.
    AUTO = "auto"
    #: Fixed-phase periodic random blocks per class (LSP).
    BLOCKS = "blocks"
    #: The foreground's classes drawn with checkerboard-like Nyquist patterns.
    NYQUIST = "nyquist"
    #: Each foreground class lifted or lowered by a constant (:func:`ulmed.core.patterns.offset_coded`).
    OFFSET = "offset"


#: The style values (for help texts).
STYLES: tuple[str, ...] = names(Style)
#: The working grid ``grid="auto"`` protects 2D images for: a trainer that resizes to 128 x 128,
#: the size at which the code was measured to survive (docs/grid.md); the code made for it also
#: reaches a trainer at 256, which sees it as a pattern of period 4.
AUTO_GRID = "size:128"
#: Working-grid positions per step of the code on a working grid (docs/grid.md: cell 2 gave Dice
#: ratios 0.14 at 256, 0.84 at 64 and 0.33 with torch at 128 where cell 1 gave 0.35, 1.01 and 0.60;
#: at Pillow 128 the two are within seed noise, means 0.53 and 0.45).
GRID_CELL = 2


@METHODS.register("lsp")
class MaskCodedPatterns(ProtectionMethod):
    """Training-free class/mask-coded patterns (LSP-style): classes as Nyquist patterns, label-free volumes as blocks.

    Args:
        tile: Period of the pattern, in positions.
        block: Size of the constant blocks inside a period.
        style: ``auto`` (default: ``nyquist`` for 2D images and labelled volumes, ``blocks``
            for volumes without labels);
            ``blocks`` (the fixed-phase code above); ``nyquist``: each foreground class its
            Nyquist pattern (the checkerboard for the first), the background untouched;
            ``tile`` and ``block`` unused; ``offset``: each foreground class lifted or lowered
            by a constant, the same on every grid (measured without effect: docs/results.md).
        grid: The trainer's working grid (:class:`ulmed.core.grid.WorkingGrid`): ``auto``
            (default: :data:`AUTO_GRID` for 2D images with the Nyquist code, native for the
            rest), ``native`` (the code on the file's own pixels) or ``size:N[,M...]`` for a 2D trainer that
            resizes to ``N x N``: the Nyquist code is drawn on each working grid that
            shrinks the image and mapped back to native pixels by :func:`ulmed.core.grid.preimage`.
            Volumes and the ``blocks`` style need ``native``.
        fit: How that trainer fits an image into ``N x N``: ``letterbox`` or ``stretch``.
        cell: Positions per step of the Nyquist code. None (default): :data:`GRID_CELL` on a
            working grid (a pattern of period 4 there, which keeps twice what the grid's own
            checkerboard keeps through an antialiased resize and was learned more), 1 on the
            native grid (the file's own checkerboard).
        psnr: A floor in dB on each record's PSNR against its budget range (the robust range of
            a volume): a code whose root mean square would exceed ``10^(-psnr/20)`` of that range
            is scaled down to it (:func:`ulmed.core.budget.psnr_share`). None (default): the budget's
            floor (the default budget ``auto`` sets 38 dB on images and 40 dB on DICOM and NIfTI records).
            With a larger budget (``--eps 16/255 --set psnr=40``) a sparse code, such as the
            Nyquist code on a volume's labels, takes the largest amplitude the PSNR allows.
    """

    name = "lsp"
    citation = 'Yu et al., "Availability Attacks Create Shortcuts", KDD 2022 (adapted here to segmentation masks)'
    norm_reason = "its patterns are sign codes at the full per-position budget, an L-inf construction"

    def __init__(self, *args: Any, tile: int = 8, block: int = 1, style: str = "auto", grid: str = "auto",
                 fit: str = "letterbox", cell: int | None = None, psnr: float | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if tile < 1 or block < 1 or block > tile:
            raise ConfigError(f"need 1 <= block <= tile, got block={block}, tile={tile}")
        self.tile, self.block, self.style = tile, block, look_up(style, Style, "style")
        self.auto_grid = str(grid).strip().lower() == "auto"
        self.grid = WorkingGrid.parse(AUTO_GRID if self.auto_grid else grid, fit)
        if cell is not None and (not isinstance(cell, int) or cell < 1):
            raise ConfigError(f"cell must be an integer >= 1, got {cell!r}")
        if not self.grid.is_native and not self.auto_grid and self.style is Style.BLOCKS:
            raise ConfigError(f"--grid {self.grid.spec} draws the Nyquist code on the trainer's grid; "
                              "style 'blocks' needs --grid native")
        self.cell = cell
        if psnr is not None and (isinstance(psnr, bool) or not isinstance(psnr, (int, float)) or not 0 < psnr < 200):
            raise ConfigError(f"psnr must be a number of dB in (0, 200), got {psnr!r}")
        self.psnr = None if psnr is None else float(psnr)

    def protect(self, record: Record) -> Record:
        """:meth:`ProtectionMethod.protect`; the image goes to [0, 1] only for the code that reads it.

        Only the Nyquist code on a working grid (its pre-image) depends on the image; the blocks
        (volumes) and offset codes do not, so a DICOM series is not converted for nothing. Under
        a ``psnr`` floor the code is scaled down and quantised within the budget scaled alike.
        """
        eps = self.budget.in_unit(record.mapping)
        code = self._code(record, record.unit_image() if self._grid_shapes(record) else None, eps)
        factor = self.floor_share(record, code)
        code *= factor  # quantised within the budget's same share, so rounding to stored steps keeps the floor
        return self.apply(record, code, eps, share=factor)

    def perturbation(self, record: Record, unit_image: np.ndarray | None, eps: float) -> np.ndarray:
        """``eps`` times the code of each position's class (scaled down to the PSNR floor, if any)."""
        code = self._code(record, unit_image, eps)
        code *= self.floor_share(record, code)
        return code

    def psnr_floor(self, record: Record) -> float | None:
        """The ``psnr`` option where given, else the budget's floor (``auto``: 38 dB on images, 40 dB on DICOM
        and NIfTI)."""
        return self.psnr if self.psnr is not None else super().psnr_floor(record)

    def _grid_shapes(self, record: Record) -> list[tuple[tuple[int, int], tuple[int, int]]]:
        """The working grids the Nyquist code of ``record`` is drawn on, with where each starts in the trainer's
        frame (:meth:`ulmed.core.grid.WorkingGrid.placements`; []: its own pixels, or another code)."""
        if self.style is Style.OFFSET or record.spatial_dims != 2:
            return []
        if self.style in (Style.NYQUIST, Style.AUTO):
            return self.grid.placements(record.spatial_shape)
        return []

    def _nyquist(self, record: Record) -> bool:
        """Whether ``record`` gets the Nyquist code: that style, or ``auto`` on a 2D image or a labelled volume."""
        if self.style is not Style.AUTO:
            return self.style is Style.NYQUIST
        return record.spatial_dims == 2 or isinstance(record.target, np.ndarray)

    def _code(self, record: Record, unit_image: np.ndarray | None, eps: float) -> np.ndarray:
        """:meth:`perturbation`; ``unit_image`` may be None where :meth:`_grid_shapes` gives none."""
        if self.style is Style.OFFSET:  # flat inside each class: the same on every working grid
            return eps * offset_coded(record.target, record.channels, record.spatial_shape)
        if record.spatial_dims != 2 and not self.grid.is_native and not self.auto_grid:
            raise ConfigError(f"--grid {self.grid.spec} is for 2D images; volumes take --grid native for now")
        if self._nyquist(record):
            shapes = self._grid_shapes(record)
            if not shapes:
                return eps * nyquist_coded(record.target, record.channels, record.spatial_shape, self.cell or 1)
            cell = self.cell or GRID_CELL
            # in the phase of the trainer's frame: a letterbox pads each aspect ratio by its own offset
            codes = [eps * nyquist_coded(_labels_at(record.target, shape), record.channels, shape, cell, origin)
                     for shape, origin in shapes]
            if unit_image is None:
                unit_image = record.unit_image()
            return preimage(unit_image, codes, eps)
        body = body_mask(record)  # air around a medical volume is left alone
        code = mask_coded(record.target, record.channels, record.spatial_shape, self.tile, self.block, self.seed)
        code *= eps  # a new array: scaled in place (float32, as ``eps * code``), no volume-sized temporaries
        if body is not None:
            code *= body
        return code

    def params(self) -> dict[str, Any]:
        """Parameters that define the output (the grid only when it is not the native one)."""
        out = dict(super().params())
        if self.style is Style.OFFSET:  # one code on every grid: no tile, block, grid or cell
            return {**out, "style": "offset", **({"psnr": self.psnr} if self.psnr is not None else {})}
        if self.style is Style.NYQUIST:
            out["style"] = "nyquist"
        else:
            out.update({"style": "auto"} if self.style is Style.AUTO else {}, tile=self.tile, block=self.block)
        if self.style is not Style.BLOCKS and not self.grid.is_native:
            out.update({"grid": "auto", "grid_2d": self.grid.spec} if self.auto_grid else {"grid": self.grid.spec})
            out.update(fit=self.grid.fit.value, cell=self.cell or GRID_CELL, preimage="adjoint",
                       preimage_quantile=PREIMAGE_QUANTILE, phase="frame")  # the code's phase: the trainer's frame
            if self.cell is None:  # images the grid does not shrink keep their own checkerboard
                out["cell_native"] = 1
        elif self.cell not in (None, 1):
            out["cell"] = self.cell
        return {**out, "psnr": self.psnr} if self.psnr is not None else out


def _labels_at(target: np.ndarray | int | None, shape: tuple[int, int]) -> np.ndarray | int | None:
    """A mask or label map on the working grid (:func:`ulmed.core.grid.nearest_labels`); other targets as they are."""
    return nearest_labels(target, shape) if isinstance(target, np.ndarray) else target
