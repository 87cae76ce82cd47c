"""The PGD loop on real data: direction, budgets, position policies, windowed gradients."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.losses import DiceCELoss
from monai.networks.nets import UNet

from ulmed.core.pgd import PGDConfig, WindowedGrad, autograd_grad, cell_sums, perturb, windowed_grad
from ulmed.core.projection import l0_mask_topk
from ulmed.errors import ConfigError

EPS = 8 / 255


@pytest.fixture(scope="module")
def unet() -> torch.nn.Module:
    torch.manual_seed(0)
    net = UNet(spatial_dims=2, in_channels=1, out_channels=1, channels=(4, 8), strides=(2,))
    return net.eval()


@pytest.fixture(scope="module")
def case(unet, hc18_small):
    x, y = hc18_small
    dice_ce = DiceCELoss(sigmoid=True)
    return x, y, (lambda xa: dice_ce(unet(xa), y))


def _check_budget(x: torch.Tensor, delta: torch.Tensor, eps: float | torch.Tensor) -> None:
    assert (delta.abs() <= eps).all()
    assert ((x + delta) >= 0).all() and ((x + delta) <= 1).all()


@pytest.mark.parametrize("minimize", [True, False])
def test_pgd_moves_the_loss_the_asked_way(case, minimize):
    x, _, loss = case
    delta = perturb(x, torch.zeros_like(x), loss, PGDConfig(EPS, EPS / 4, 10, minimize=minimize))
    assert not delta.requires_grad
    _check_budget(x, delta, EPS)
    clean, adv = loss(x).item(), loss(x + delta).item()
    assert (adv < clean - 1e-3) if minimize else (adv > clean + 1e-3)
    assert delta.abs().max() > EPS / 2  # it used the budget


def test_pgd_l2_stays_in_ball_and_minimises(case):
    x, _, loss = case
    delta = perturb(x, torch.zeros_like(x), loss, PGDConfig(0.5, 0.1, 10, norm="l2"))
    assert (delta.flatten(1).norm(dim=1) <= 0.5).all()
    assert loss(x + delta).item() < loss(x).item() - 1e-3


def test_pgd_per_position_eps_map(case):
    x, y, loss = case
    emap = torch.where(y > 0, torch.tensor(16 / 255), torch.tensor(2 / 255))  # a larger budget inside the head
    delta = perturb(x, torch.zeros_like(x), loss, PGDConfig(emap, 2 / 255, 10))
    _check_budget(x, delta, emap)
    assert delta[y > 0].abs().max() > 8 / 255  # the foreground used its larger budget


def test_position_mask_freezes_positions(case):
    x, _, loss = case
    allowed = torch.zeros(1, 1, 32, 32, dtype=torch.bool)
    allowed[..., 8:24, 8:24] = True
    start = torch.full_like(x, 1 / 255)
    delta = perturb(x, start, loss, PGDConfig(EPS, EPS / 4, 5, random_start=True), position_mask=allowed,
                    generator=torch.Generator().manual_seed(0))
    outside = ~allowed.expand_as(x)
    assert torch.equal(delta[outside], start[outside])
    assert (delta[~outside] != start[~outside]).float().mean() > 0.9


def test_float_position_mask_scales_the_step(case):
    x, _, loss = case
    weight = torch.zeros(1, 1, 32, 32)
    weight[..., :16, :] = 1.0
    weight[..., 16:, :16] = 0.5
    step = 2 / 255
    delta = perturb(x, torch.zeros_like(x), loss, PGDConfig(EPS, step, 1), position_mask=weight)
    full, half, frozen = (weight == 1).expand_as(x), (weight == 0.5).expand_as(x), (weight == 0).expand_as(x)
    assert not delta[frozen].any()
    assert delta[full].abs().max() == pytest.approx(step) and delta[half].abs().max() == pytest.approx(step / 2)


def test_select_positions_bounds_l0_by_last_mask(case):
    x, _, loss = case
    calls: list[tuple[int, torch.Tensor | None]] = []

    def select(step, grad, delta):  # the top 10% by |grad|, re-chosen every third step
        mask = None if step % 3 else l0_mask_topk(grad.abs(), 0.1)
        calls.append((step, mask))
        return mask

    delta = perturb(x, torch.zeros_like(x), loss, PGDConfig(EPS, EPS / 4, 7, random_start=True),
                    select_positions=select, generator=torch.Generator().manual_seed(0))
    assert [s for s, _ in calls] == list(range(7))
    chosen = [m for s, m in calls if m is not None]
    assert len(chosen) == 3  # steps 0, 3, 6
    last = chosen[-1].expand_as(x)
    assert not delta[~last].any()
    assert (delta != 0).flatten(1).sum(1).max() <= 103  # ceil(0.1 * 1024)
    assert loss(x + delta).item() < loss(x).item()


def test_random_start_is_reproducible_with_a_generator(case):
    x, _, loss = case

    def run(seed):
        return perturb(x, torch.zeros_like(x), loss, PGDConfig(EPS, EPS / 4, 2, random_start=True),
                       generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


def test_cell_sums_add_each_cell_and_keep_the_shape():
    grad = torch.arange(2 * 5 * 7, dtype=torch.float32).reshape(1, 2, 5, 7)
    out = cell_sums(grad, 2)
    assert out.shape == grad.shape
    assert out[0, 1, 0, 0] == grad[0, 1, :2, :2].sum() and out[0, 1, 1, 1] == out[0, 1, 0, 0]
    assert out[0, 0, 4, 6] == grad[0, 0, 4, 6]  # the corner cell of an axis that 2 does not divide: one position
    assert out[0, 0, 4, 2] == grad[0, 0, 4, 2:4].sum()
    assert torch.equal(cell_sums(grad, 1), grad)
    vol = torch.randn(1, 1, 4, 6, 3)
    assert torch.allclose(cell_sums(vol, 3)[0, 0, 0, 0, 0], vol[0, 0, :3, :3, :3].sum())


def _whole_cells(delta: torch.Tensor, cell: int) -> float:
    """The share of the cells of ``delta`` on which it is one value."""
    cells = delta.unfold(2, cell, cell).unfold(3, cell, cell)  # (B, C, rows / cell, cols / cell, cell, cell)
    return float(((cells.amax((-1, -2)) - cells.amin((-1, -2))) < 1e-7).float().mean())


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_in_cells_moves_whole_cells_and_still_minimises(case, norm):
    x, _, loss = case
    eps = EPS if norm == "linf" else 0.5
    delta = perturb(x, torch.zeros_like(x), loss, PGDConfig(eps, eps / 4, 10, norm=norm, cell=4))
    fine = perturb(x, torch.zeros_like(x), loss, PGDConfig(eps, eps / 4, 10, norm=norm))
    # the valid-range clamp cuts the cells that touch 0 or 1 (the black letterbox border); the rest are whole
    assert _whole_cells(delta, 4) > 0.6 and _whole_cells(fine, 4) < 0.3
    assert delta.abs().max() > eps / 100 and loss(x + delta).item() < loss(x).item() - 1e-3


def test_perturb_refuses_bad_arguments(case):
    x, _, loss = case
    with pytest.raises(ConfigError, match="norm"):
        PGDConfig(EPS, EPS, 1, norm="l1")
    with pytest.raises(ConfigError, match="step_size"):
        PGDConfig(EPS, 0.0, 1)
    with pytest.raises(ConfigError, match="n_steps"):
        PGDConfig(EPS, EPS, -1)
    for cell in (0, 1.5, True):
        with pytest.raises(ConfigError, match="cell"):
            PGDConfig(EPS, EPS, 1, cell=cell)
    with pytest.raises(ConfigError, match="loss_fn or a grad_fn"):
        perturb(x, torch.zeros_like(x), None, PGDConfig(EPS, EPS, 1))
    with pytest.raises(ConfigError, match="does not match"):
        perturb(x, torch.zeros(1, 1, 32, 32), loss, PGDConfig(EPS, EPS, 1))


@pytest.fixture(scope="module")
def volume(real_data: Path) -> tuple[torch.Tensor, torch.Tensor]:
    img = nib.load(real_data / "tiny3d" / "anatomical.nii").get_fdata()
    lab = nib.load(real_data / "tiny3d" / "anatomical_label.nii.gz").get_fdata()
    img = (img - img.min()) / (img.max() - img.min())
    return torch.from_numpy(img.astype(np.float32))[None, None], torch.from_numpy(lab.astype(np.int64))[None]


def test_windowed_gradient_equals_full_gradient_without_context(volume):
    x, y = volume
    assert x.shape == (1, 1, 33, 41, 25)
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(1, 2, kernel_size=1)
    ce = torch.nn.CrossEntropyLoss(reduction="sum")

    def window_loss(xa, window):
        return ce(conv(xa), y[(slice(None), *window)])

    delta = (torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1) * EPS
    full = autograd_grad(lambda xa: ce(conv(xa), y))(x, delta)
    windowed = windowed_grad(x, delta, window_loss, roi_size=(16, 16, 16), overlap=0.5)
    assert len(WindowedGrad(window_loss, (16, 16, 16), 0.5).windows((33, 41, 25))) > 8
    assert full.abs().max() > 0
    assert torch.allclose(windowed, full, atol=1e-5, rtol=0)


def test_windowed_gradient_drives_pgd_on_a_volume(volume):
    x, y = volume[0][..., :32, :40, :24], volume[1][..., :32, :40, :24]  # even sizes: the UNet keeps the shape
    torch.manual_seed(0)
    net = UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8), strides=(2,)).eval()
    ce = torch.nn.CrossEntropyLoss(reduction="sum")
    grad_fn = WindowedGrad(lambda xa, w: ce(net(xa), y[(slice(None), *w)]), roi_size=(16, 16, 16), overlap=0.25)
    delta = perturb(x, torch.zeros_like(x), None, PGDConfig(EPS, EPS / 4, 3), grad_fn=grad_fn)
    _check_budget(x, delta, EPS)
    with torch.no_grad():
        assert ce(net(x + delta), y).item() < ce(net(x), y).item()


def test_step_schedules():
    from ulmed.core.pgd import step_schedule

    assert step_schedule("constant", 0.1, 5) == 0.1
    dynamic = step_schedule("dynamic", 0.1, 5)
    sizes = [dynamic(i) for i in range(5)]
    assert sizes[0] == pytest.approx(0.2) and sizes[-1] == pytest.approx(0.02)
    assert all(a > b for a, b in zip(sizes, sizes[1:]))
    with pytest.raises(ConfigError):
        step_schedule("cyclic", 0.1, 5)
    # perturb takes the schedule: one L-inf step from zero moves every free position by size(0).
    x = torch.full((1, 1, 4, 4), 0.5)
    delta = perturb(x, torch.zeros_like(x), lambda z: (z * 1.0).sum(), PGDConfig(1.0, dynamic, 1))
    assert torch.allclose(delta, torch.full_like(x, -0.2))


def test_default_steps_divide_the_budget_in_one_place():
    from ulmed.core.pgd import LOOP_STEP_DIVISOR, METHOD_STEP_DIVISOR, default_step

    assert (LOOP_STEP_DIVISOR, METHOD_STEP_DIVISOR) == (10, 5)
    assert default_step(0.5) == 0.05 and default_step(0.5, METHOD_STEP_DIVISOR) == 0.1
    assert default_step(8 / 255) == (8 / 255) / 10  # the exact float the loops always used
