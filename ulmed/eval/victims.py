"""Victim models: the MONAI networks an unauthorised trainer would fit on protected data.

Every victim is built by name through :data:`VICTIMS` (``name -> VictimSpec``) and
:func:`build_victim`. Two sizes exist: ``"small"`` trains on a laptop CPU in minutes
(e.g. UNet channels (16, 32, 64, 128), strides (2, 2, 2), one residual unit) and
``"base"`` is close to the MONAI tutorials' defaults, meant for a GPU.

Input shapes. Segmentation networks down-sample by a fixed factor (8 for the small UNet,
16 for UNet++ ...). Rather than making every caller pick compatible sizes, each
convolutional victim is wrapped in a thin :class:`FitShape` module that zero-pads the
input up to the next multiple (symmetrically), runs the network and crops the logits back
to the input shape. For classifiers the same wrapper pads inputs smaller than the
network's minimum (DenseNet-121 needs 32 per axis because of its four pooling stages, so
28x28 PneumoniaMNIST is zero-padded to 32x32). UNETR is a vision transformer with a fixed
patch grid: it needs ``img_size`` at build time (each axis a multiple of 16), takes
exactly that input shape (MONAI builds it with ``einops``, a dependency of ulmed).

First layers differ in a way protections notice: MONAI's ``UNet`` (and ``AttentionUnet``)
start with a stride-2 convolution, so a period-2 code reaches their first features with one
sign per sample, turned by a crop at an odd offset or a flip of an even axis; ``segresnet``,
``unetpp`` and ``dynunet`` (nnU-Net's architecture: a full-resolution first stage, instance
norm, leaky ReLU) convolve at full resolution first, where a shift only moves the features.

UNet++ (``BasicUNetPlusPlus``) returns a list of outputs; the wrapper returns only the
final one, so every victim maps ``(B, C_in, *spatial)`` to ``(B, C_out, *spatial)``
(segmentation) or ``(B, C_out)`` (classification).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from monai.networks import nets
from torch import nn

from ulmed.choices import StrEnum, look_up, names
from ulmed.core.registry import Registry
from ulmed.core.surrogates import nnunet_like
from ulmed.core.tasks import Task
from ulmed.errors import ConfigError


class VictimSize(StrEnum):
    """How big a victim network is."""

    #: Trains on a laptop CPU in minutes.
    SMALL = "small"
    #: Close to the MONAI tutorials' defaults, meant for a GPU.
    BASE = "base"


#: The size values, in definition order.
SIZES = names(VictimSize)


@dataclass(frozen=True)
class VictimSpec:
    """A registered victim.

    Args:
        name: Registry name.
        task: What the victim learns (a :class:`~ulmed.core.tasks.Task`).
        dims: Spatial dimensions the network supports.
        build: ``build(spatial_dims, in_channels, out_channels, size, img_size) -> nn.Module``.
    """

    name: str
    task: Task
    dims: tuple[int, ...]
    build: Callable[[int, int, int, VictimSize, tuple[int, ...] | None], nn.Module]


VICTIMS: Registry[VictimSpec] = Registry("victim")


def _victim(name: str, task: str, dims: tuple[int, ...] = (2, 3)) -> Callable:
    """Decorator: register a builder function as a :class:`VictimSpec`."""

    def deco(fn: Callable) -> Callable:
        VICTIMS.register(name)(VictimSpec(name, look_up(task, Task, "task"), dims, fn))
        return fn

    return deco


class FitShape(nn.Module):
    """Zero-pad inputs to a shape the wrapped network accepts; crop segmentation logits back.

    Args:
        net: The MONAI network.
        multiple: Each spatial axis is padded up to a multiple of this.
        min_size: Each spatial axis is padded up to at least this.
        crop: Crop the output back to the input's spatial shape (segmentation).
    """

    def __init__(self, net: nn.Module, multiple: int = 1, min_size: int = 1, crop: bool = True) -> None:
        super().__init__()
        if multiple < 1 or min_size < 1:
            raise ConfigError(f"multiple and min_size must be >= 1, got {multiple} and {min_size}")
        self.net = net
        self.multiple = multiple
        self.min_size = min_size
        self.crop = crop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pad, run, keep the final output if the net returns several, crop back."""
        spatial = x.shape[2:]
        target = [max(self.min_size, -(-s // self.multiple) * self.multiple) for s in spatial]
        before = [(t - s) // 2 for s, t in zip(spatial, target)]
        if any(t != s for s, t in zip(spatial, target)):
            pads: list[int] = []
            for s, t, b in reversed(list(zip(spatial, target, before))):
                pads += [b, t - s - b]  # F.pad wants the last axis first
            x = F.pad(x, pads)
        out = self.net(x)
        if isinstance(out, (list, tuple)):  # UNet++ returns [final] or deep-supervision heads
            out = out[0]
        if self.crop and out.ndim == x.ndim:
            out = out[(slice(None), slice(None)) + tuple(slice(b, b + s) for b, s in zip(before, spatial))]
        return out


@_victim("unet", "segmentation")
def _unet(dims: int, cin: int, cout: int, size: VictimSize, img_size: tuple[int, ...] | None) -> nn.Module:
    channels: tuple[int, ...]
    strides: tuple[int, ...]
    if size is VictimSize.SMALL:
        channels, strides, res = (16, 32, 64, 128), (2, 2, 2), 1
    else:
        channels, strides, res = (32, 64, 128, 256, 512), (2, 2, 2, 2), 2
    net = nets.UNet(dims, cin, cout, channels=channels, strides=strides, num_res_units=res)
    return FitShape(net, multiple=2 ** len(strides))


@_victim("segresnet", "segmentation")
def _segresnet(dims: int, cin: int, cout: int, size: VictimSize, img_size: tuple[int, ...] | None) -> nn.Module:
    if size is VictimSize.SMALL:
        net = nets.SegResNet(dims, init_filters=8, in_channels=cin, out_channels=cout, blocks_down=(1, 2, 2, 2))
    else:
        net = nets.SegResNet(dims, init_filters=16, in_channels=cin, out_channels=cout, blocks_down=(1, 2, 2, 4))
    return FitShape(net, multiple=8)


@_victim("attention_unet", "segmentation")
def _attention_unet(dims: int, cin: int, cout: int, size: VictimSize, img_size: tuple[int, ...] | None) -> nn.Module:
    channels: tuple[int, ...]
    strides: tuple[int, ...]
    if size is VictimSize.SMALL:
        channels, strides = (16, 32, 64, 128), (2, 2, 2)
    else:
        channels, strides = (32, 64, 128, 256, 512), (2, 2, 2, 2)
    net = nets.AttentionUnet(dims, cin, cout, channels=channels, strides=strides)
    return FitShape(net, multiple=2 ** len(strides))


@_victim("unetpp", "segmentation")
def _unetpp(dims: int, cin: int, cout: int, size: VictimSize, img_size: tuple[int, ...] | None) -> nn.Module:
    features = (16, 16, 32, 64, 128, 16) if size is VictimSize.SMALL else (32, 32, 64, 128, 256, 32)
    net = nets.BasicUNetPlusPlus(dims, cin, cout, features=features, deep_supervision=False)
    return FitShape(net, multiple=16)


@_victim("dynunet", "segmentation")
def _dynunet(dims: int, cin: int, cout: int, size: VictimSize, img_size: tuple[int, ...] | None) -> nn.Module:
    """nnU-Net's architecture (MONAI DynUNet): a full-resolution first stage, instance norm, leaky ReLU."""
    filters = (16, 32, 64, 128) if size is VictimSize.SMALL else (32, 64, 128, 256, 320)
    return FitShape(nnunet_like(dims, cin, cout, filters), multiple=2 ** (len(filters) - 1))


@_victim("unetr", "segmentation")
def _unetr(dims: int, cin: int, cout: int, size: VictimSize, img_size: tuple[int, ...] | None) -> nn.Module:
    if img_size is None:
        raise ConfigError("victim 'unetr' needs img_size (the exact input shape, each axis a multiple of 16)")
    if len(img_size) != dims or any(s < 16 or s % 16 for s in img_size):
        raise ConfigError(f"victim 'unetr': img_size {tuple(img_size)} must have {dims} axes, each a multiple of 16")
    feature, hidden, mlp, heads = (8, 192, 384, 4) if size is VictimSize.SMALL else (16, 768, 3072, 12)
    return nets.UNETR(cin, cout, img_size=tuple(img_size), feature_size=feature, hidden_size=hidden, mlp_dim=mlp,
                      num_heads=heads, spatial_dims=dims)


@_victim("densenet121", "classification")
def _densenet121(dims: int, cin: int, cout: int, size: VictimSize, img_size: tuple[int, ...] | None) -> nn.Module:
    # DenseNet-121 topology (6, 12, 24, 16); "small" halves the width (init 32, growth 16).
    if size is VictimSize.SMALL:
        net = nets.DenseNet(dims, cin, cout, init_features=32, growth_rate=16, block_config=(6, 12, 24, 16))
    else:
        net = nets.DenseNet121(spatial_dims=dims, in_channels=cin, out_channels=cout)
    return FitShape(net, min_size=32, crop=False)


@_victim("resnet18", "classification")
def _resnet18(dims: int, cin: int, cout: int, size: VictimSize, img_size: tuple[int, ...] | None) -> nn.Module:
    planes = [16, 32, 64, 128] if size is VictimSize.SMALL else [64, 128, 256, 512]
    net = nets.ResNet("basic", [2, 2, 2, 2], planes, spatial_dims=dims, n_input_channels=cin, num_classes=cout)
    return FitShape(net, min_size=16, crop=False)


def task_of(name: str) -> Task:
    """Task of the victim called ``name`` (:class:`~ulmed.core.tasks.Task`)."""
    return VICTIMS.get(name).task


def build_victim(
    name: str,
    *,
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    size: str | VictimSize = VictimSize.SMALL,
    img_size: Sequence[int] | None = None,
    seed: int | None = None,
) -> nn.Module:
    """Build the victim network called ``name``.

    Args:
        name: A name in :data:`VICTIMS` (``unet``, ``segresnet``, ``attention_unet``, ``unetpp``,
            ``dynunet``, ``unetr``, ``densenet121``, ``resnet18``).
        spatial_dims: 2 or 3.
        in_channels: Image channels.
        out_channels: Number of classes (segmentation: including background, >= 2).
        size: ``"small"`` (CPU friendly) or ``"base"``.
        img_size: Exact input shape; only UNETR needs it.
        seed: When given, the weights are initialised from this seed without touching the
            global torch random state; when None, from the global state.

    Returns:
        The network, in training mode.

    Raises:
        ConfigError: Unknown name or size, unsupported dimension, bad channel counts.
    """
    spec = VICTIMS.get(name)
    size = look_up(size, VictimSize, "victim size")
    if spatial_dims not in spec.dims:
        raise ConfigError(f"victim {name!r} supports spatial_dims {spec.dims}, got {spatial_dims}")
    if in_channels < 1:
        raise ConfigError(f"in_channels must be >= 1, got {in_channels}")
    if out_channels < 2:
        raise ConfigError(f"out_channels must be >= 2 (classes including background), got {out_channels}")
    shape = None if img_size is None else tuple(int(s) for s in img_size)
    if seed is None:
        return spec.build(spatial_dims, in_channels, out_channels, size, shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return spec.build(spatial_dims, in_channels, out_channels, size, shape)
