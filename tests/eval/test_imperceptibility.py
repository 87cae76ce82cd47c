"""The manifest's imperceptibility figures equal scikit-image's on real images and volumes."""

from __future__ import annotations

import importlib
import math
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from ulmed.errors import ConfigError
from ulmed.eval.imperceptibility import imperceptibility, ssim_window


def _pair(clean: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    noise = rng.choice([-8 / 255, 0.0, 8 / 255], size=clean.shape)
    return clean, np.clip(clean + noise, 0.0, 1.0)


def _hc18(real_data, name: str = "012_HC.png") -> np.ndarray:
    return np.asarray(Image.open(real_data / "hc18/images" / name), dtype=np.float64)[None] / 255


def _volume(real_data) -> np.ndarray:
    v = np.asarray(nib.load(real_data / "msd_hippocampus/images/hippocampus_003.nii.gz").dataobj, dtype=np.float64)
    return ((v - v.min()) / (v.max() - v.min()))[None]


@pytest.mark.parametrize("kind", ["image", "rgb", "volume", "tiny"])
def test_psnr_and_ssim_equal_scikit_image(real_data, kind):
    clean = {
        "image": lambda: _hc18(real_data),
        "rgb": lambda: np.concatenate([_hc18(real_data, "012_HC.png")] * 3)[:, ::-1].copy(),
        "volume": lambda: _volume(real_data),
        "tiny": lambda: _hc18(real_data)[:, 100:105, 200:206],
    }[kind]()
    clean, protected = _pair(clean)
    got = imperceptibility(clean, protected, scale=255.0)
    win = ssim_window(clean.shape[1:])
    expected = structural_similarity(clean, protected, data_range=1.0, channel_axis=0, win_size=win)
    assert got["ssim"] == pytest.approx(expected, abs=1e-12)
    assert got["psnr"] == pytest.approx(peak_signal_noise_ratio(clean, protected, data_range=1.0), abs=1e-9)
    diff = protected - clean
    assert got["linf"] == pytest.approx(8 / 255) and got["linf_native"] == pytest.approx(8.0)
    assert got["l0"] == np.count_nonzero(diff) and got["l2"] == pytest.approx(np.linalg.norm(diff.ravel()))


def test_identical_images_and_metrics_without_ssim(real_data):
    clean = _hc18(real_data)
    same = imperceptibility(clean, clean.copy())
    assert same["psnr"] == float("inf") and same["ssim"] == 1.0 and same["l0"] == 0
    cheap = imperceptibility(*_pair(clean), with_ssim=False)
    assert cheap["ssim"] is None and 30 < cheap["psnr"] < 60
    with pytest.raises(ValueError, match="shapes differ"):
        imperceptibility(clean, clean[:, :10])


def test_the_metrics_load_neither_scipy_stats_nor_scipy_ndimage():
    code = ("import sys, numpy as np; from ulmed.eval.imperceptibility import imperceptibility as f; "
            "f(np.zeros((1, 9, 9)), np.ones((1, 9, 9)));"
            "print(*(m in sys.modules for m in ('scipy.stats', 'scipy.ndimage', 'skimage.metrics')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False", "False"]  # seconds of imports a protection run does not pay


def test_slab_by_slab_equals_whole_and_reads_native_values(real_data, monkeypatch):
    metrics = importlib.import_module("ulmed.eval.imperceptibility")  # the package re-exports a function by that name

    clean, protected = _pair(_volume(real_data), seed=3)
    whole = imperceptibility(clean, protected)
    monkeypatch.setattr(metrics, "SLAB_VALUES", 500)  # dozens of overlapping slabs
    sliced = imperceptibility(clean, protected)
    assert sliced["ssim"] == pytest.approx(whole["ssim"], abs=1e-12) and sliced["l0"] == whole["l0"]
    assert sliced["psnr"] == pytest.approx(whole["psnr"], abs=1e-9)
    native = imperceptibility(clean * 200 - 50, protected * 200 - 50, scale=200.0, to_unit=lambda a: (a + 50) / 200)
    assert native["ssim"] == pytest.approx(whole["ssim"], abs=1e-9)
    assert native["linf_native"] == pytest.approx(200 * 8 / 255)


def test_sampled_ssim_states_its_share_and_stays_close_to_the_full_value(real_data):
    from ulmed.eval.imperceptibility import metrics_options

    clean, protected = _pair(_volume(real_data), seed=5)  # 34 x 52 x 35
    full = imperceptibility(clean, protected, **metrics_options("full"))
    sampled = imperceptibility(clean, protected, ssim_positions=2000)
    assert full["ssim_fraction"] == 1.0 and full["ssim_positions"] == 28 * 46 * 29
    assert 0 < sampled["ssim_fraction"] < 0.1 and sampled["ssim_positions"] < 3000
    assert sampled["ssim"] == pytest.approx(full["ssim"], abs=0.03)
    assert sampled["psnr"] == full["psnr"]  # PSNR stays exact
    assert imperceptibility(clean, protected, **metrics_options("sampled")) == full  # small volumes: all positions
    assert imperceptibility(clean, protected, **metrics_options("none"))["ssim"] is None
    with pytest.raises(ConfigError, match="--metrics must be one of sampled, full, none"):
        metrics_options("fast")
    assert metrics_options("FULL") == metrics_options("full")


def test_metrics_is_a_choice_in_any_case():
    from ulmed.eval.imperceptibility import METRICS, SSIM_SAMPLE, Metrics, metrics_options

    assert METRICS == ("sampled", "full", "none")
    assert metrics_options(Metrics.SAMPLED) == {"with_ssim": True, "ssim_positions": SSIM_SAMPLE}
    assert metrics_options("FULL") == {"with_ssim": True, "ssim_positions": None}
    assert metrics_options("None") == {"with_ssim": False, "ssim_positions": None}


def test_window_means_are_scipys_uniform_filter_on_the_valid_positions():
    from scipy.ndimage import uniform_filter

    from ulmed.eval.imperceptibility import window_means

    rng = np.random.default_rng(11)
    for shape, win in (((512, 300), 7), ((7, 64, 48), 7), ((3, 9, 900), 3), ((40, 5), 5), ((9,), 7), ((6, 6), 1)):
        a = rng.normal(0, 1, shape)
        half = win // 2
        expected = uniform_filter(a, win, mode="constant")[tuple(slice(half, s - half) for s in shape)]
        got = window_means(a, win)
        assert got.shape == tuple(s - win + 1 for s in shape), (shape, win)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-13, err_msg=str((shape, win)))
    assert window_means(np.arange(10.0), 3).tolist() == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]


_L2_BY_THREADS = (
    "import numpy as np; from ulmed.eval.imperceptibility import imperceptibility, sum_squares;"
    "rng = np.random.default_rng(4); clean = rng.random((1, 40, 256, 256));"
    "protected = clean + rng.normal(0, 0.02, clean.shape) ** 3;"
    "print(repr(imperceptibility(clean, protected, with_ssim=False)['l2']), repr(sum_squares(protected.ravel())))"
)


def test_norms_do_not_depend_on_the_blas_thread_count():
    # a long np.dot runs on every core OpenBLAS finds, and its last bits follow the core count
    runs = {
        n: subprocess.run([sys.executable, "-c", _L2_BY_THREADS], capture_output=True, text=True, check=True,
                          env={**os.environ, "OPENBLAS_NUM_THREADS": n, "OMP_NUM_THREADS": n}).stdout
        for n in ("1", "2", "4")
    }
    assert runs["1"] == runs["2"] == runs["4"] and runs["1"].strip()


def test_sum_squares_is_the_sum_of_squares():
    from ulmed.eval.imperceptibility import DOT_VALUES, sum_squares

    rng = np.random.default_rng(2)
    for n in (0, 1, DOT_VALUES - 1, DOT_VALUES, 3 * DOT_VALUES + 5):
        x = rng.normal(0, 1, n)
        assert sum_squares(x) == pytest.approx(math.fsum(x * x), rel=1e-12, abs=0.0)


def test_integer_images_are_measured_exactly_on_their_native_differences():
    """With an affine to_unit, integer images give the float path's figures, L-inf exactly |d|max / scale."""
    from ulmed.eval.imperceptibility import PIECE_VALUES

    rng = np.random.default_rng(5)
    clean = rng.integers(-1000, 2000, size=(1, 3, PIECE_VALUES // 64, 70)).astype(np.int32)  # more than a piece
    protected = clean + rng.integers(-76, 77, size=clean.shape).astype(np.int32)
    low, scale = -1000.0, 2470.0

    def to_unit(a):
        return (np.asarray(a, dtype=np.float64) - low) / scale

    exact = imperceptibility(clean, protected, scale, to_unit=to_unit, affine=True, with_ssim=False)
    floats = imperceptibility(clean, protected, scale, to_unit=to_unit, with_ssim=False)
    assert exact["linf_native"] == 76.0 and exact["linf"] == 76 / scale  # floats: 76.00000000000014
    assert exact["l0"] == floats["l0"] == int(np.count_nonzero(protected != clean))
    for key in ("psnr", "l2", "l2_native", "rms", "linf"):
        assert exact[key] == pytest.approx(floats[key], rel=1e-12), key
    assert exact["l2_native"] == pytest.approx(float(np.sqrt(np.sum((protected - clean).astype(float) ** 2))))
