import numpy as np
import pytest
import torch
from PIL import Image

from ulmed.core.grid import Fit, Kernel, WorkingGrid, preimage, resize
from ulmed.core.patterns import nyquist_coded
from ulmed.errors import ConfigError


def test_grid_specs_parse_to_sorted_sizes_and_refuse_anything_else():
    grid = WorkingGrid.parse("size:256, 64,128", fit="Stretch")
    assert grid.sizes == (64, 128, 256) and grid.fit is Fit.STRETCH and grid.spec == "size:64,128,256"
    assert WorkingGrid.parse("native").is_native and WorkingGrid.parse(None).spec == "native"
    for bad in ("size:", "size:a", "spacing:1,1,1", "128", "size:1"):
        with pytest.raises(ConfigError, match="grid|sizes"):
            WorkingGrid.parse(bad)
    with pytest.raises(ConfigError, match="letterbox"):
        WorkingGrid.parse("size:128", fit="box")


def test_working_shapes_follow_the_fit_and_leave_out_sizes_that_do_not_shrink():
    letterbox, stretch = WorkingGrid.parse("size:64,128,512"), WorkingGrid.parse("size:64,128,512", "stretch")
    assert letterbox.shapes_for((270, 400)) == [(43, 64), (86, 128)]  # 512 enlarges: the native code serves it
    assert stretch.shapes_for((270, 400)) == [(64, 64), (128, 128)]
    assert letterbox.shapes_for((28, 28)) == []


def test_a_centred_letterbox_places_each_aspect_ratio_at_its_own_offset_and_a_stretch_at_the_corner():
    letterbox, stretch = WorkingGrid.parse("size:64,128"), WorkingGrid.parse("size:128", "stretch")
    assert letterbox.placements((270, 400)) == [((43, 64), (10, 0)), ((86, 128), (21, 0))]
    assert letterbox.placements((400, 250)) == [((64, 40), (0, 12)), ((128, 80), (0, 24))]  # portrait: columns
    assert letterbox.placements((200, 400))[1] == ((64, 128), (32, 0))  # another height, another phase
    assert stretch.placements((270, 400)) == [((128, 128), (0, 0))]


def _hc18(real_data):
    image = np.asarray(Image.open(real_data / "hc18/images/012_HC.png"), dtype=np.float32)[None] / 255
    mask = np.asarray(Image.open(real_data / "hc18/masks/012_HC.png"))
    return image, mask


def _kept(delta: np.ndarray, code: np.ndarray, kernel: str) -> float:
    """Share of the code a trainer's resize of ``delta`` keeps (projection onto the code)."""
    small = resize(torch.from_numpy(delta)[None], code.shape[-2:], kernel)[0].numpy()
    return float((small * code).sum() / (code * code).sum())


def test_the_preimage_keeps_more_of_the_code_than_an_upsampled_copy_and_the_budget(real_data):
    image, mask = _hc18(real_data)
    eps = 8 / 255
    shape = WorkingGrid.parse("size:128").shapes_for(image.shape[1:])[0]
    small_mask = np.asarray(Image.fromarray(mask).resize(shape[::-1], Image.Resampling.NEAREST))
    code = eps * nyquist_coded(small_mask, 1, shape, cell=2)
    delta = preimage(image, [code], eps)
    assert np.abs(delta).max() <= eps + 1e-7
    assert (image + delta).min() >= -1e-7 and (image + delta).max() <= 1 + 1e-7
    upsampled = torch.nn.functional.interpolate(torch.from_numpy(code)[None], size=image.shape[1:], mode="nearest")
    upsampled = upsampled[0].numpy()
    for kernel in Kernel:
        assert _kept(delta, code, kernel) > _kept(upsampled, code, kernel) - 0.01, kernel
    assert _kept(delta, code, "antialias") > _kept(upsampled, code, "antialias") + 0.01
    # what Pillow's resize (the kernel most 2D loaders use) keeps of it
    pil = lambda a: np.asarray(Image.fromarray(a[0]).resize(shape[::-1], Image.Resampling.BILINEAR))  # noqa: E731
    kept = pil(image + delta) - pil(image)
    assert float((kept * code[0]).sum() / (code * code).sum()) > 0.5


def test_the_sign_preimage_gives_the_largest_projection_and_the_default_less_energy(real_data):
    image, mask = _hc18(real_data)
    eps = 8 / 255
    shape = WorkingGrid.parse("size:128").shapes_for(image.shape[1:])[0]
    small_mask = np.asarray(Image.fromarray(mask).resize(shape[::-1], Image.Resampling.NEAREST))
    code = eps * nyquist_coded(small_mask, 1, shape, cell=2)
    sign, default = preimage(image, [code], eps, quantile=0.0), preimage(image, [code], eps)
    total = lambda d: sum(_kept(d, code, k) for k in Kernel)  # noqa: E731  (what preimage maximises)
    rng = np.random.default_rng(0)
    for other in (default, np.clip(sign + rng.normal(0, eps / 4, sign.shape), -eps, eps).astype(np.float32)):
        inside = np.clip(image + other, 0, 1) - image
        assert total(sign) >= total(inside) - 1e-6
    assert np.mean(default.astype(np.float64) ** 2) < 0.9 * np.mean(sign.astype(np.float64) ** 2)
    assert total(default) > 0.9 * total(sign)
    with pytest.raises(ConfigError, match="quantile"):
        preimage(image, [code], eps, quantile=1.0)


def test_preimage_refuses_mismatched_inputs():
    with pytest.raises(ConfigError, match="channels"):
        preimage(np.zeros((1, 8, 8), np.float32), [np.zeros((3, 4, 4), np.float32)], 0.1)
    with pytest.raises(ConfigError, match="eps"):
        preimage(np.zeros((1, 8, 8), np.float32), [np.zeros((1, 4, 4), np.float32)], 0.0)
    with pytest.raises(ConfigError, match="kernel"):
        preimage(np.zeros((1, 8, 8), np.float32), [np.zeros((1, 4, 4), np.float32)], 0.1, kernels=["lanczos"])


def test_the_preimage_moves_only_positions_within_one_working_pixel_of_the_code():
    image = np.full((1, 60, 90), 0.5, np.float32)
    code = np.zeros((1, 20, 30), np.float32)
    code[0, 8:12, 12:18] = 0.03 * np.where(np.indices((4, 6)).sum(0) % 2 == 0, 1, -1)
    delta = preimage(image, [code], 0.03)
    rows, cols = np.nonzero(delta[0])
    assert rows.size and rows.min() >= 8 * 3 - 3 and rows.max() < 12 * 3 + 3  # 3 native pixels per working pixel
    assert cols.min() >= 12 * 3 - 3 and cols.max() < 18 * 3 + 3


@pytest.mark.parametrize("kernel", list(Kernel))
@pytest.mark.parametrize(("native", "shape"),
                         [((270, 400), (86, 128)), ((97, 61), (31, 40)), ((64, 64), (64, 20)), ((50, 200), (80, 64))])
def test_the_preimage_weights_are_those_of_the_trainers_resize(kernel, native, shape):
    from ulmed.core.grid import adjoint, axis_weights

    rng = np.random.default_rng(1)
    x = rng.random((2, *native))
    rows, cols = axis_weights(native[0], shape[0], kernel), axis_weights(native[1], shape[1], kernel)
    ours = np.stack([rows @ c @ cols.T for c in x])
    theirs = resize(torch.from_numpy(x)[None], shape, kernel)[0].numpy()
    assert np.allclose(ours, theirs, atol=1e-9)
    code = rng.standard_normal((2, *shape))  # the adjoint: <R x, code> == <x, R^T code>
    assert np.isclose((theirs * code).sum(), (x * adjoint(code, native, kernel)).sum())
    by_name = axis_weights(native[1], shape[1], kernel.value)  # a kernel's name gives the same matrix
    assert (by_name != cols).nnz == 0


def test_the_preimage_does_not_load_torch():
    import subprocess
    import sys

    script = ("import sys, numpy as np; from ulmed.core.grid import preimage; "
              "d = preimage(np.full((1, 60, 90), 0.5, np.float32), [np.full((1, 20, 30), 0.03, np.float32)], 0.03); "
              "print(float(np.abs(d).max()), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    assert float(out[0]) > 0 and out[1] == "False"


def test_label_maps_resize_by_nearest_neighbour_in_their_own_dtype():
    from ulmed.core.grid import nearest_labels

    labels = np.zeros((30, 50), np.int64)
    labels[10:20, 10:40] = 70000
    small = nearest_labels(labels, (15, 25))
    assert small.dtype == np.int64 and set(np.unique(small)) == {0, 70000} and small[7, 12] == 70000
    with pytest.raises(ConfigError, match="32-bit"):
        nearest_labels(np.full((4, 4), 2**40), (2, 2))
