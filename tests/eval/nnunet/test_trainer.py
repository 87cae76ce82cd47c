"""The short-schedule subclass of nnU-Net's trainer (needs nnunetv2)."""

from __future__ import annotations

import inspect

import pytest

pytest.importorskip("nnunetv2")

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer  # noqa: E402

from ulmed.eval.nnunet.trainer import ShortTrainer, short_trainer  # noqa: E402


def test_short_trainer_is_nnunets_trainer_with_our_schedule():
    cls = short_trainer(3, 7, 2)
    assert issubclass(cls, nnUNetTrainer) and issubclass(cls, ShortTrainer)
    assert cls.__name__ == "nnUNetTrainer_3epochs_7it"
    assert (cls.epochs, cls.iterations, cls.val_iterations) == (3, 7, 2)
    assert short_trainer(1, 1, 1).epochs == 1 and cls.epochs == 3  # each call its own class


def test_init_signature_is_nnunets():
    # nnUNetTrainer records its init arguments by reading the subclass's signature names in its own frame
    ours = list(inspect.signature(ShortTrainer.__init__).parameters)
    theirs = list(inspect.signature(nnUNetTrainer.__init__).parameters)
    assert ours == theirs
