"""Evaluation: imperceptibility now; victims, defenses and reports in the evaluation issue."""

from ulmed.eval.imperceptibility import imperceptibility

__all__ = ["imperceptibility"]
