import pytest
import torch

from ulmed.errors import ConfigError
from ulmed.eval.victims import VICTIMS, build_victim, task_of

CASES = [(name, dims) for name in VICTIMS.names() for dims in VICTIMS.get(name).dims]


@pytest.mark.parametrize(("name", "dims"), CASES)
def test_every_victim_builds_and_gives_the_right_shape(name, dims):
    task = task_of(name)
    if name == "unetr":
        spatial = (32, 32) if dims == 2 else (16, 16, 16)  # UNETR takes exactly img_size
    elif task == "segmentation":
        spatial = (28, 20) if dims == 2 else (12, 20, 16)  # not multiples of the net's stride
    else:
        spatial = (28, 28) if dims == 2 else (20, 20, 20)  # below DenseNet's minimum 32
    model = build_victim(name, spatial_dims=dims, in_channels=1, out_channels=3, img_size=spatial, seed=0)
    model.eval()
    with torch.no_grad():
        out = model(torch.rand(2, 1, *spatial))
    expected = (2, 3, *spatial) if task == "segmentation" else (2, 3)
    assert tuple(out.shape) == expected


def test_tasks():
    assert {task_of(n) for n in ("unet", "segresnet", "attention_unet", "unetpp", "unetr")} == {"segmentation"}
    assert {task_of(n) for n in ("densenet121", "resnet18")} == {"classification"}


def test_seeded_build_is_reproducible_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a = build_victim("unet", spatial_dims=2, in_channels=1, out_channels=2, seed=3)
    b = build_victim("unet", spatial_dims=2, in_channels=1, out_channels=2, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "vnet"}, "unknown victim"),
        ({"size": "huge"}, "size"),
        ({"spatial_dims": 1}, "spatial_dims"),
        ({"out_channels": 1}, "out_channels"),
        ({"in_channels": 0}, "in_channels"),
    ],
)
def test_bad_arguments_are_refused(kwargs, match):
    args = {"name": "unet", "spatial_dims": 2, "in_channels": 1, "out_channels": 2} | kwargs
    name = args.pop("name")
    with pytest.raises(ConfigError, match=match):
        build_victim(name, **args)


def test_unetr_needs_an_img_size_in_multiples_of_16():
    with pytest.raises(ConfigError, match="img_size"):
        build_victim("unetr", spatial_dims=3, in_channels=1, out_channels=2)
    with pytest.raises(ConfigError, match="multiple of 16"):
        build_victim("unetr", spatial_dims=3, in_channels=1, out_channels=2, img_size=(20, 20, 20))


def test_size_is_a_choice_in_any_case_and_the_task_a_task():
    from ulmed.core.tasks import Task
    from ulmed.eval.victims import SIZES, VictimSize

    assert SIZES == ("small", "base")
    small = build_victim("unet", spatial_dims=2, in_channels=1, out_channels=2, size="SMALL", seed=0)
    same = build_victim("unet", spatial_dims=2, in_channels=1, out_channels=2, size=VictimSize.SMALL, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(small.state_dict().values(), same.state_dict().values()))
    with pytest.raises(ConfigError, match="small"):  # the message names the choices
        build_victim("unet", spatial_dims=2, in_channels=1, out_channels=2, size="tiny")
    assert task_of("unet") is Task.SEGMENTATION and task_of("resnet18") == "classification"


def _first_conv(model):
    return next(m for m in model.modules() if isinstance(m, torch.nn.Conv3d))


@pytest.mark.parametrize(("name", "strided"), [("unet", True), ("dynunet", False), ("segresnet", False)])
def test_a_checkerboard_shifted_by_one_turns_the_sign_of_a_strided_first_layer_only(name, strided):
    """The claim of the module docstring: what a crop at an odd offset does to a period-2 code."""
    conv = _first_conv(build_victim(name, spatial_dims=3, in_channels=1, out_channels=2, seed=0))
    assert conv.stride == ((2, 2, 2) if strided else (1, 1, 1))
    i, j, k = torch.meshgrid(*(torch.arange(17),) * 3, indexing="ij")
    checker = ((-1.0) ** (i + j + k))[None, None]
    with torch.no_grad():
        bias = conv(torch.zeros_like(checker))
        here, shifted = conv(checker) - bias, conv(checker[..., 1:, :, :]) - bias[..., 1:, :, :]
    if strided:  # the same positions of the code, read one position later: the negative
        n = shifted.shape[2]
        assert torch.allclose(shifted[:, :, 1:n - 1, 1:-1, 1:-1], -here[:, :, 1:n - 1, 1:-1, 1:-1], atol=1e-5)
    else:  # at full resolution the features only move
        assert torch.allclose(shifted[:, :, 1:-1, 1:-1, 1:-1], here[:, :, 2:-1, 1:-1, 1:-1], atol=1e-5)
