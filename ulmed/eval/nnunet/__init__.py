"""nnU-Net v2 as a victim, run as a user runs it: raw data set, nnU-Net's plans, trainer and predictor.

:func:`run_nnunet` writes nnU-Net's raw layout from (image, label) pairs, plans, preprocesses,
trains nnU-Net's own trainer on a short :class:`NnunetSchedule` and predicts the clean test
cases, all in a worker process (nnunetv2 reads its folders from the environment at import;
this package never imports it), then scores the predictions with MONAI's Dice. Install with
``pip install "ulmed[nnunet]"``.
"""

from ulmed.eval.nnunet.raw import RawDataset, write_raw_dataset
from ulmed.eval.nnunet.runner import CONFIGURATIONS, NNUNET_VICTIMS, NnunetFailed, run_nnunet
from ulmed.eval.nnunet.schedule import NnunetSchedule

__all__ = ["CONFIGURATIONS", "NNUNET_VICTIMS", "NnunetFailed", "NnunetSchedule", "RawDataset", "run_nnunet",
           "write_raw_dataset"]
