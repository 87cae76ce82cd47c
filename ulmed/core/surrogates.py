"""Surrogate models for the bilevel optimisation, built from MONAI networks by name."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.metrics import compute_dice
from monai.networks.nets import DenseNet121, DynUNet, UNet, resnet18
from monai.networks.utils import one_hot
from torch import nn

from ulmed.core.registry import Registry
from ulmed.core.tasks import Task

log = logging.getLogger("ulmed")

#: name -> builder(spatial_dims, in_channels, out_channels) -> nn.Module
SURROGATES: Registry[Callable[[int, int, int], nn.Module]] = Registry("surrogate")
#: Which task each surrogate serves.
SURROGATE_TASK = {"unet": Task.SEGMENTATION, "dynunet": Task.SEGMENTATION, "densenet121": Task.CLASSIFICATION,
                  "resnet18": Task.CLASSIFICATION}
#: The surrogate used when none is named, per task.
DEFAULT_SURROGATE = {Task.SEGMENTATION: "unet", Task.CLASSIFICATION: "resnet18"}
#: Spatial sizes must be multiples of this for the segmentation surrogates (their strides).
UNET_MULTIPLE = 4


@SURROGATES.register("unet")
def _unet(spatial_dims: int, in_channels: int, out_channels: int) -> nn.Module:
    """A small MONAI UNet (16-32-64 channels, two down-samplings): CPU friendly."""
    return UNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels,
                channels=(16, 32, 64), strides=(2, 2), num_res_units=1)


def nnunet_like(spatial_dims: int, in_channels: int, out_channels: int, filters: Sequence[int]) -> DynUNet:
    """nnU-Net's architecture (MONAI DynUNet): a full-resolution first stage, then one stride-2 stage per further
    entry of ``filters``, 3-wide kernels, instance norm, leaky ReLU. Sizes must be multiples of
    ``2 ** (len(filters) - 1)``. The ``dynunet`` surrogate and victim are built by it."""
    strides = [1] + [2] * (len(filters) - 1)
    return DynUNet(spatial_dims, in_channels, out_channels, kernel_size=[3] * len(filters), strides=strides,
                   upsample_kernel_size=strides[1:], filters=list(filters), res_block=False)


@SURROGATES.register("dynunet")
def _dynunet(spatial_dims: int, in_channels: int, out_channels: int) -> nn.Module:
    """nnU-Net's architecture, small (16-32-64 channels, :func:`nnunet_like`): a surrogate closer to the
    reference trainer than the UNet, whose first stage is strided."""
    return nnunet_like(spatial_dims, in_channels, out_channels, (16, 32, 64))


@SURROGATES.register("densenet121")
def _densenet(spatial_dims: int, in_channels: int, out_channels: int) -> nn.Module:
    """MONAI DenseNet121 classifier."""
    return DenseNet121(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels)


@SURROGATES.register("resnet18")
def _resnet18(spatial_dims: int, in_channels: int, out_channels: int) -> nn.Module:
    """MONAI ResNet-18 classifier."""
    return resnet18(spatial_dims=spatial_dims, n_input_channels=in_channels, num_classes=out_channels)


def feature_layer(name: str, model: nn.Module) -> nn.Module:
    """The module whose output is a surrogate's last hidden representation.

    UNet: the skip-connection block before the output up-sampling (a feature map at half
    resolution); DynUNet: its last up-sampling block (full resolution, before the output
    convolution); ResNet-18: its global average pool; DenseNet121: the pool of its head.
    Objectives read it with :class:`ulmed.core.objectives.FeatureTap`.
    """
    if name == "unet":
        return model.model[1]  # type: ignore[index]
    if name == "dynunet":
        return model.upsamples[-1]  # type: ignore[index]
    if name == "resnet18":
        return model.avgpool  # type: ignore[return-value]
    if name == "densenet121":
        return model.class_layers.pool  # type: ignore[return-value]
    raise KeyError(f"no feature layer known for surrogate {name!r}")


def build_surrogate(name: str, spatial_dims: int, in_channels: int, out_channels: int) -> nn.Module:
    """Build a registered surrogate."""
    return SURROGATES.get(name)(spatial_dims, in_channels, out_channels)


def dice_metric(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean foreground Dice of the argmax of ``output`` against ``target`` (B, 1, ...)."""
    k = output.shape[1]
    pred = one_hot(output.argmax(1, keepdim=True), k)
    dice = compute_dice(pred, one_hot(target, k), include_background=False, ignore_empty=True)
    value = torch.nanmean(dice)
    return torch.nan_to_num(value, nan=1.0)


def accuracy_metric(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Share of correct class predictions."""
    return (output.argmax(1) == target).float().mean()


#: What the min-min loop measures the surrogate by, per task (higher is better).
TASK_METRIC = {Task.SEGMENTATION: dice_metric, Task.CLASSIFICATION: accuracy_metric}


#: A carried surrogate: the model, its optimiser and its number of outputs.
Carried = tuple[nn.Module, torch.optim.Optimizer, int]


class SurrogateState:
    """The surrogate and optimiser of each group, carried from one chunk of a run to the next.

    A chunked run calls :meth:`get` for each group of each chunk: the first chunk builds
    the surrogate, later chunks train the same one on. :meth:`state_dict` and
    :meth:`load_state_dict` save and restore them between processes (a resumed run), and
    :attr:`fits` counts the chunks seen, so that each chunk draws its own batches.

    Args:
        seed: Seed of a new surrogate's initial weights.
        lr: Adam learning rate of a new surrogate's optimiser.
    """

    def __init__(self, seed: int, lr: float) -> None:
        self.seed = seed
        self.lr = lr
        self.fits = 0
        self._carry: dict[str, Carried] = {}
        #: Saved states loaded by :meth:`load_state_dict`, applied when the group is next seen.
        self._pending: dict[str, dict[str, Any]] = {}

    def get(self, key: str, name: str, dims: int, channels: int, num_classes: int) -> Carried:
        """The group's surrogate and optimiser: carried from the last chunk, loaded, or new.

        A carried surrogate with fewer outputs than this chunk needs is replaced (with a warning).
        """
        carried = self._carry.get(key)
        if carried is not None and carried[2] >= num_classes:
            return carried
        if carried is not None:
            log.warning("%s: this chunk has %d classes, the carried surrogate %d; starting a new surrogate",
                        key, num_classes, carried[2])
        pending = self._pending.pop(key, None)
        if pending is not None:
            num_classes = max(num_classes, int(pending["num_classes"]))
        torch.manual_seed(self.seed)
        model = build_surrogate(name, dims, channels, num_classes)
        optimizer = torch.optim.Adam(model.parameters(), lr=self.lr)
        if pending is not None:
            model.load_state_dict(pending["model"])
            optimizer.load_state_dict(pending["optimizer"])
        self._carry[key] = (model, optimizer, num_classes)
        return self._carry[key]

    def state_dict(self) -> dict[str, Any]:
        """The carried surrogates and optimisers, for resuming a chunked run (tensors only)."""
        groups = {key: {"model": m.state_dict(), "optimizer": o.state_dict(), "num_classes": n}
                  for key, (m, o, n) in self._carry.items()}
        return {"fits": self.fits, "groups": {**self._pending, **groups}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`: the next :meth:`get` of a group loads its saved surrogate."""
        self.fits = int(state["fits"])
        self._carry.clear()
        self._pending = dict(state["groups"])
