"""nnU-Net's own trainer on a short schedule (imported only by the worker: it imports nnunetv2).

:func:`short_trainer` makes a subclass of ``nnUNetTrainer`` that changes nothing but
``num_epochs``, ``num_iterations_per_epoch`` and ``num_val_iterations_per_epoch``: network,
plans, loss, deep supervision, optimiser, poly learning rate and data augmentation stay
nnU-Net's. Its class name carries the schedule (``nnUNetTrainer_2epochs_5it``), like nnU-Net's
own variants (``nnUNetTrainer_5epochs``), and names the results folder.

nnU-Net finds trainers by name only inside its own package; this class is built here and used
directly (:func:`build_trainer`), and the predictor is set up by hand from its checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import torch
from batchgenerators.utilities.file_and_folder_operations import load_json
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

PLANS_IDENTIFIER = "nnUNetPlans"


class ShortTrainer(nnUNetTrainer):
    """``nnUNetTrainer`` whose schedule comes from the class attributes (set by :func:`short_trainer`)."""

    epochs = 1
    iterations = 1
    val_iterations = 1

    def __init__(self, plans: dict, configuration: str, fold: int | str, dataset_json: dict,
                 device: torch.device = torch.device("cuda")) -> None:  # noqa: B008 -- nnU-Net's signature
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = self.epochs
        self.num_iterations_per_epoch = self.iterations
        self.num_val_iterations_per_epoch = self.val_iterations


def short_trainer(epochs: int, iterations: int, val_iterations: int) -> type[ShortTrainer]:
    """A ``nnUNetTrainer`` subclass for ``epochs`` epochs of ``iterations`` (+ ``val_iterations``)."""
    name = f"nnUNetTrainer_{epochs}epochs_{iterations}it"
    attrs = {"epochs": epochs, "iterations": iterations, "val_iterations": val_iterations, "__module__": __name__}
    return type(name, (ShortTrainer,), attrs)


def build_trainer(cls: type[nnUNetTrainer], preprocessed: Path, configuration: str,
                  device: torch.device) -> nnUNetTrainer:
    """The trainer for fold ``all`` of the preprocessed data set folder, as nnU-Net's ``run_training`` builds it."""
    plans = load_json(str(preprocessed / f"{PLANS_IDENTIFIER}.json"))
    plans["continue_training"] = False
    dataset_json = load_json(str(preprocessed / "dataset.json"))
    return cls(plans=plans, configuration=configuration, fold="all", dataset_json=dataset_json, device=device)


def trained_network(trainer: nnUNetTrainer) -> tuple[torch.nn.Module, dict]:
    """A fresh network (no deep supervision) and the finished trainer's weights and mirroring axes.

    The weights come from the trainer in memory (unwrapped from DDP/``torch.compile``, as
    nnU-Net saves them into ``checkpoint_final.pth``), so nothing is read back from disk.
    """
    module = trainer.network.module if hasattr(trainer.network, "module") else trainer.network
    module = getattr(module, "_orig_mod", module)
    weights = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    network = trainer.build_network_architecture(
        trainer.plans_manager, trainer.configuration_manager, trainer.num_input_channels,
        trainer.label_manager.num_segmentation_heads, enable_deep_supervision=False)
    return network, {"network_weights": weights,
                     "inference_allowed_mirroring_axes": trainer.inference_allowed_mirroring_axes}
