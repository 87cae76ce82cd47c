"""DICOM reader and writer: one image series in, one :class:`~ulmed.io.record.Record` out, and back.

The work is done in one module per job; this module gathers their public names:

* :mod:`ulmed.io.dicom_scan`: :func:`scan_dicom` sorts files into image series (in slice order),
  non-image objects (SR, SEG, RTSTRUCT, PR, KO, DICOMDIR, ...: the pipeline copies them) and bad files.
* :mod:`ulmed.io.dicom_read`: :func:`read_series` gives a channel-first record of modality values
  (stored x RescaleSlope + RescaleIntercept).
* :mod:`ulmed.io.dicom_write`: :func:`write_series` writes every instance back as a derived series
  with new deterministic UIDs (:func:`new_uid`), optionally de-identified (:mod:`ulmed.io.deidentify`).
* :mod:`ulmed.io.dicom_dataset`: one file as a pydicom dataset (recognise, read, header values, write);
  :mod:`ulmed.io.dicom_pixels`: what a header says about its pixel data.
"""

from __future__ import annotations

from ulmed.io.dicom_dataset import CODECS_HINT, is_dicom_file
from ulmed.io.dicom_read import DicomHandle, read_series
from ulmed.io.dicom_scan import DicomScan, DicomSeries, scan_dicom, series_key_hash
from ulmed.io.dicom_write import new_uid, write_series

__all__ = ["CODECS_HINT", "DicomHandle", "DicomScan", "DicomSeries", "is_dicom_file", "new_uid", "read_series",
           "scan_dicom", "series_key_hash", "write_series"]
