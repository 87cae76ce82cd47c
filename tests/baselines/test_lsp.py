import numpy as np
import pytest
from PIL import Image

from ulmed.baselines.lsp import MaskCodedPatterns
from ulmed.core.grid import PREIMAGE_QUANTILE
from ulmed.core.patterns import class_pattern
from ulmed.errors import ConfigError
from ulmed.io.record import IntensityMapping, Record


def _record(real_data) -> Record:
    img = np.asarray(Image.open(real_data / "hc18/images/012_HC.png"))[None]
    mask = np.asarray(Image.open(real_data / "hc18/masks/012_HC.png"))
    return Record("012", img, IntensityMapping(0, 255, 0, 255, 1), 2, "image", target=mask)


def test_pattern_is_periodic_signed_and_class_specific():
    a = class_pattern(0, 1, (20, 20), tile=8, block=2, seed=0)
    b = class_pattern(255, 1, (20, 20), tile=8, block=2, seed=0)
    assert set(np.unique(a)) == {-1.0, 1.0}
    assert np.array_equal(a[:, :8, :8], a[:, 8:16, 8:16])  # period 8
    assert np.array_equal(a[:, 0:2, 0:2], np.full((1, 2, 2), a[0, 0, 0]))  # 2x2 blocks
    assert not np.array_equal(a, b)
    assert np.array_equal(a, class_pattern(0, 1, (20, 20), tile=8, block=2, seed=0))


def test_noise_draws_the_mask_within_budget(real_data):
    rec = _record(real_data)
    out = MaskCodedPatterns("4/255", seed=3, style="blocks").protect(rec)
    delta = out.image[0] - rec.image[0].astype(np.float64)
    assert np.abs(delta).max() <= 4 + 1e-6
    fg = class_pattern(255, 1, rec.spatial_shape, 8, 1, 3)[0]
    bg = class_pattern(0, 1, rec.spatial_shape, 8, 1, 3)[0]
    inside = (rec.target == 255) & (rec.image[0] > 8) & (rec.image[0] < 247)  # away from clipping
    outside = (rec.target == 0) & (rec.image[0] > 8) & (rec.image[0] < 247)
    assert np.allclose(delta[inside], 4 * fg[inside], atol=1e-4)
    assert np.allclose(delta[outside], 4 * bg[outside], atol=1e-4)


def test_unlabelled_and_bad_parameters(real_data):
    rec = _record(real_data)
    rec.target = None
    delta = MaskCodedPatterns("2/255", style="blocks").protect(rec).image - rec.image
    assert np.abs(delta).max() <= 2 + 1e-6 and np.abs(delta).mean() > 1
    with pytest.raises(ConfigError):
        MaskCodedPatterns("2/255", tile=4, block=8)


def test_an_unknown_style_is_refused_naming_the_choices():
    with pytest.raises(ConfigError, match="nyquist"):
        MaskCodedPatterns("8/255", style="band")


def test_nyquist_patterns_are_their_own_shifts_flips_and_rotations_up_to_sign():
    from ulmed.core.patterns import nyquist_corners, nyquist_pattern

    assert nyquist_corners(2) == [(0, 1), (0,), (1,)]
    assert len(nyquist_corners(3)) == 7
    board = nyquist_pattern(1, 1, (8, 8))[0]
    assert np.array_equal(board, np.array([[(-1.0) ** (i + j) for j in range(8)] for i in range(8)]))
    assert np.array_equal(nyquist_pattern(4, 1, (8, 8))[0], -board)  # 2D: three corners, then negatives
    for moved in (np.roll(board, 1, 0), np.roll(board, 3, 1), board[::-1], board[:, ::-1], np.rot90(board)):
        assert np.array_equal(moved, board) or np.array_equal(moved, -board)
    stripes = nyquist_pattern(2, 3, (4, 6))
    assert stripes.shape == (3, 4, 6) and np.array_equal(stripes[0], stripes[2])  # same in every channel
    assert np.array_equal(stripes[0, :, 0], [1, -1, 1, -1]) and np.all(stripes[0] == stripes[0, :, :1])
    with pytest.raises(ValueError):
        nyquist_pattern(0, 1, (4, 4))


def test_a_stride_2_convolution_folds_the_checkerboard_to_a_constant():
    """Why a strided CNN reads the code with one filter: any stride-2 conv maps it to +-constant."""
    import torch

    from ulmed.core.patterns import nyquist_pattern

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1, 4, 3, stride=2, bias=False)
    board = torch.as_tensor(nyquist_pattern(1, 1, (17, 17)))[None]
    out = conv(board)[0].detach()
    assert torch.allclose(out, out[:, :1, :1].expand_as(out), atol=1e-6)
    shifted = conv(board[..., 1:, :16])[0].detach()  # one position down: the sign flips
    assert torch.allclose(shifted, -out[:, :1, :1].expand_as(shifted), atol=1e-6)


def test_nyquist_style_draws_only_the_foreground(real_data):
    from ulmed.core.patterns import nyquist_coded, nyquist_pattern

    rec = _record(real_data)
    m = MaskCodedPatterns("4/255", style="nyquist", grid="native")
    assert m.params()["style"] == "nyquist" and "tile" not in m.params() and "grid" not in m.params()
    delta = m.protect(rec).image[0] - rec.image[0].astype(np.float64)
    assert np.abs(delta).max() <= 4 + 1e-6
    inside = (rec.target == 255) & (rec.image[0] > 8) & (rec.image[0] < 247)
    board = nyquist_pattern(1, 1, rec.spatial_shape)[0]
    assert np.allclose(delta[inside], 4 * board[inside], atol=1e-4)  # 255 counts as class 1
    assert np.all(delta[rec.target == 0] == 0)
    labels = np.zeros((6, 6), dtype=np.int64)
    labels[:2], labels[4:] = 1, 2
    code = nyquist_coded(labels, 1, (6, 6))[0]
    assert np.array_equal(code[:2], nyquist_pattern(1, 1, (6, 6))[0, :2])
    assert np.array_equal(code[4:], nyquist_pattern(2, 1, (6, 6))[0, 4:]) and np.all(code[2:4] == 0)
    assert np.array_equal(nyquist_coded(3, 1, (4, 4)), nyquist_pattern(4, 1, (4, 4)))  # class label c: pattern c+1
    assert np.array_equal(nyquist_coded(None, 2, (4, 4)), nyquist_pattern(1, 2, (4, 4)))
    with pytest.raises(ConfigError, match=">= 0"):
        nyquist_coded(np.full((4, 4), -1), 1, (4, 4))


def test_auto_style_codes_images_and_labelled_volumes_with_nyquist_and_label_free_volumes_with_blocks(real_data):
    from ulmed.core.patterns import mask_coded, nyquist_coded

    m = MaskCodedPatterns("4/255", seed=2, grid="native")
    assert m.params()["style"] == "auto" and m.params()["tile"] == 8
    image = _record(real_data)
    assert np.array_equal(m.perturbation(image, None, 1.0), nyquist_coded(image.target, 1, image.spatial_shape))
    default = MaskCodedPatterns("4/255", seed=2)  # the default grid: the code made for a trainer at 128
    params = default.params()
    assert params["grid"] == "auto" and params["grid_2d"] == "size:128" and params["cell"] == 2
    assert params["preimage"] == "adjoint" and params["preimage_quantile"] == PREIMAGE_QUANTILE
    assert params["phase"] == "frame"  # the code in the phase of the trainer's letterbox frame
    assert "preimage" not in m.params()
    big = _record(real_data)  # an image the grid does not shrink keeps its own checkerboard, as params say
    small = Record("s", big.image[:, 60:160, 100:220], big.mapping, 2, "image", target=big.target[60:160, 100:220])
    assert params["cell_native"] == 1 and "cell_native" not in MaskCodedPatterns("4/255", cell=2).params()
    assert small.target.any() and np.array_equal(default.perturbation(small, None, 1.0),
                                                 nyquist_coded(small.target, 1, small.spatial_shape, 1))
    explicit = MaskCodedPatterns("4/255", seed=2, grid="size:128")
    assert np.allclose(default.perturbation(image, image.unit_image(), 4 / 255),
                       explicit.perturbation(image, image.unit_image(), 4 / 255))
    labels = np.zeros((6, 8, 8), dtype=np.int64)
    labels[2:4, 2:6, 2:6] = 1
    volume = Record("v", np.zeros((1, 6, 8, 8)), IntensityMapping(0, 1, 0, 1, 0), 3, "nifti", target=labels)
    assert np.array_equal(m.perturbation(volume, None, 1.0), nyquist_coded(labels, 1, (6, 8, 8)))
    assert np.array_equal(default.perturbation(volume, None, 1.0), nyquist_coded(labels, 1, (6, 8, 8)))
    assert not default.perturbation(volume, None, 1.0)[0, labels == 0].any()  # the code stays on the labels
    export = Record("d", np.full((1, 6, 8, 8), 0.5), IntensityMapping(0, 1, 0, 1, 0), 3, "dicom")  # no labels
    assert np.array_equal(default.perturbation(export, None, 1.0), mask_coded(None, 1, (6, 8, 8), 8, 1, 2))
    with pytest.raises(ConfigError):
        MaskCodedPatterns("4/255", style="checker")


def test_a_working_grid_code_survives_the_trainers_resize_where_the_native_code_does_not(real_data):
    rec = _record(real_data)
    native, gridded = MaskCodedPatterns("8/255", grid="native"), MaskCodedPatterns("8/255", grid="size:128", cell=2)
    assert gridded.params()["grid"] == "size:128" and gridded.params()["cell"] == 2 and "grid" not in native.params()

    def after_resize(method: MaskCodedPatterns) -> float:  # RMS of the perturbation after Pillow's resize to 128
        out = method.protect(rec).image[0].astype(np.float32)
        small = [np.asarray(Image.fromarray(a).resize((128, 86), Image.Resampling.BILINEAR))
                 for a in (out, rec.image[0].astype(np.float32))]
        return float(np.sqrt(np.mean((small[0] - small[1]) ** 2)))

    assert after_resize(gridded) > 5 * after_resize(native)
    delta = gridded.protect(rec).image[0] - rec.image[0].astype(np.float64)
    assert np.abs(delta).max() <= 8 + 1e-6
    with pytest.raises(ConfigError, match="native"):
        MaskCodedPatterns("8/255", grid="size:128", style="blocks")
    volume = Record("v", np.zeros((1, 6, 8, 8)), IntensityMapping(0, 1, 0, 1, 0), 3, "nifti",
                    target=np.zeros((6, 8, 8), np.int64))
    with pytest.raises(ConfigError, match="2D"):
        MaskCodedPatterns("8/255", grid="size:4").perturbation(volume, volume.image, 0.1)


def test_offset_style_lifts_each_class_by_a_constant_that_a_resize_keeps(real_data):
    rec = _record(real_data)
    m = MaskCodedPatterns("8/255", style="offset")
    assert m.params()["style"] == "offset" and not {"tile", "grid", "cell"} & set(m.params())
    out = m.protect(rec).image[0].astype(np.float64)
    delta = out - rec.image[0].astype(np.float64)
    inside = (rec.target == 255) & (rec.image[0] < 247)
    assert np.allclose(delta[inside], 8, atol=0.5) and np.all(delta[rec.target == 0] == 0)
    small = [np.asarray(Image.fromarray(a.astype(np.float32)).resize((128, 86), Image.Resampling.BILINEAR))
             for a in (out, rec.image[0])]
    rms = float(np.sqrt(np.mean((small[0] - small[1]) ** 2)))
    share = float(np.sqrt(np.mean(np.where(rec.target == 255, 8.0, 0.0) ** 2)))
    assert rms > 0.8 * share  # a flat code is not averaged away by the trainer's resize


def _psnr_robust(clean: Record, protected: Record) -> float:
    diff = protected.image.astype(np.float64) - clean.image.astype(np.float64)
    return float(20 * np.log10(clean.mapping.budget_scale / np.sqrt(np.mean(diff**2))))


def test_a_psnr_floor_gives_the_label_code_the_largest_amplitude_the_floor_allows(real_data):
    from ulmed.io.nifti import read_nifti

    folder = real_data / "msd_hippocampus"
    for name in ("hippocampus_003.nii.gz", "hippocampus_017.nii.gz"):
        rec = read_nifti(folder / "images" / name, name, folder / "labels" / name)
        plain = MaskCodedPatterns("8/255").protect(rec)
        floored = MaskCodedPatterns("32/255", psnr=40).protect(rec)
        # the floor holds on the stored values (quantised within the lowered budget), and binds:
        # a larger amplitude than 8/255's, on the labels only, at about 40 dB
        assert 40.0 <= _psnr_robust(rec, floored) < 40.5 < _psnr_robust(rec, plain)
        moved = floored.image != rec.image
        assert not moved[0, rec.target == 0].any()
        assert np.abs(floored.image - rec.image.astype(np.float64)).max() > np.abs(plain.image - rec.image).max()
        # a floor the code already keeps changes nothing
        loose = MaskCodedPatterns("8/255", psnr=20).protect(rec)
        assert np.array_equal(loose.image, plain.image)


def test_a_psnr_floor_is_recorded_and_a_bad_one_refused():
    assert MaskCodedPatterns("8/255", psnr=40).params()["psnr"] == 40.0
    assert "psnr" not in MaskCodedPatterns("8/255").params()
    assert MaskCodedPatterns("8/255", style="offset", psnr=38).params()["psnr"] == 38.0
    for bad in (0, -3, "40", True, 500):
        with pytest.raises(ConfigError, match="psnr"):
            MaskCodedPatterns("8/255", psnr=bad)


def test_the_default_budget_is_the_measured_labelled_volume_setting(real_data):
    """``auto`` on a labelled volume is ``--eps 16/255 --set psnr=40`` (docs/results.md, issue 16) and on an
    image 8/255 at a 38 dB floor."""
    from ulmed.io.nifti import read_nifti

    folder = real_data / "msd_hippocampus"
    rec = read_nifti(folder / "images/hippocampus_003.nii.gz", "h", folder / "labels/hippocampus_003.nii.gz")
    default = MaskCodedPatterns().protect(rec)
    assert np.array_equal(default.image, MaskCodedPatterns("16/255", psnr=40).protect(rec).image)
    assert 40.0 <= _psnr_robust(rec, default) < 40.5
    assert MaskCodedPatterns().params()["budget"] == "auto" and "psnr" not in MaskCodedPatterns().params()
    assert MaskCodedPatterns(psnr=45).psnr_floor(rec) == 45.0  # the option overrides the budget's floor
    image = _record(real_data)
    assert np.array_equal(MaskCodedPatterns().protect(image).image,
                          MaskCodedPatterns("8/255", psnr=38).protect(image).image)
    assert MaskCodedPatterns().psnr_floor(image) == 38.0 and MaskCodedPatterns("8/255").psnr_floor(image) is None
