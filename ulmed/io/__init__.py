"""Readers and writers: DICOM, NIfTI and 2D image data sets, all producing :class:`Record`."""

from ulmed.io.base import WriteOptions
from ulmed.io.record import IntensityMapping, Record

__all__ = ["IntensityMapping", "Record", "WriteOptions"]
