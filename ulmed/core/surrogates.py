"""Surrogate models for the bilevel optimisation, built from MONAI networks by name."""

from __future__ import annotations

from collections.abc import Callable

from monai.networks.nets import DenseNet121, UNet, resnet18
from torch import nn

from ulmed.core.registry import Registry

#: name -> builder(spatial_dims, in_channels, out_channels) -> nn.Module
SURROGATES: Registry[Callable[[int, int, int], nn.Module]] = Registry("surrogate")
#: Which task each surrogate serves.
SURROGATE_TASK = {"unet": "segmentation", "densenet121": "classification", "resnet18": "classification"}
#: Spatial sizes must be multiples of this for the segmentation surrogate (its strides).
UNET_MULTIPLE = 4


@SURROGATES.register("unet")
def _unet(spatial_dims: int, in_channels: int, out_channels: int) -> nn.Module:
    """A small MONAI UNet (16-32-64 channels, two down-samplings): CPU friendly."""
    return UNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels,
                channels=(16, 32, 64), strides=(2, 2), num_res_units=1)


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
    resolution); ResNet-18: its global average pool; DenseNet121: the pool of its head.
    Objectives read it with :class:`ulmed.core.objectives.FeatureTap`.
    """
    if name == "unet":
        return model.model[1]  # type: ignore[index]
    if name == "resnet18":
        return model.avgpool  # type: ignore[return-value]
    if name == "densenet121":
        return model.class_layers.pool  # type: ignore[return-value]
    raise KeyError(f"no feature layer known for surrogate {name!r}")


def build_surrogate(name: str, spatial_dims: int, in_channels: int, out_channels: int) -> nn.Module:
    """Build a registered surrogate."""
    return SURROGATES.get(name)(spatial_dims, in_channels, out_channels)
