"""UnSeg: a universal unlearnable-noise generator built from Segment Anything.

Importing this package registers the ``unseg`` protection method. Modules:
``builders`` (SAM architectures by name), ``prompts``, ``sam_parts`` (SAM's parts called
with gradients), ``generator`` (frozen SAM + noise head), ``config``, ``train`` (bilevel
training, DDP), ``checkpoint``, ``data`` (letterboxing, training pairs), ``method``.
"""

from ulmed.segmentation.builders import SAM_SPECS, build_named_sam
from ulmed.segmentation.checkpoint import load_generator, save_generator
from ulmed.segmentation.config import UnsegConfig
from ulmed.segmentation.generator import UnsegGenerator
from ulmed.segmentation.method import UnSeg

__all__ = ["SAM_SPECS", "UnSeg", "UnsegConfig", "UnsegGenerator", "build_named_sam", "load_generator", "save_generator"]
