"""PNG/TIFF/JPEG reader/writer on real HC18 ultrasound images and masks."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from ulmed.errors import InputError, OutputError
from ulmed.io.images import read_image, read_mask, write_image
from ulmed.io.kinds import output_relpath

DATA = Path(__file__).resolve().parents[1] / "data"
HC18 = DATA / "hc18"
NAMES = ["005_HC.png", "012_HC.png", "100_HC.png"]



def _image(name: str = NAMES[0]) -> Path:
    return HC18 / "images" / name


def _mask(name: str = NAMES[0]) -> Path:
    return HC18 / "masks" / name


def _pixels(path: Path) -> np.ndarray:
    if path.suffix.lower() in (".tif", ".tiff"):
        return tifffile.imread(path)
    with Image.open(path) as im:
        return np.asarray(im)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _perturb(shape: tuple[int, ...], levels: float, top: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """+-levels grey levels (as a unit-space delta) on a random 20% of pixels."""
    rng = np.random.default_rng(seed)
    moved = rng.random(shape) < 0.2
    sign = np.where(rng.random(shape) < 0.5, -1.0, 1.0)
    return (moved * sign * levels / top).astype(np.float32), moved


def assert_perturbation_survives(src: Path, out: Path, levels: float = 3.0) -> None:
    """Write a known perturbation and check every pixel is within one step of the intended value."""
    rec = read_image(src, key=src.name)
    top = rec.mapping.high
    delta, moved = _perturb(rec.image.shape, levels, top)
    protected = rec.with_perturbation(delta)
    write_image(protected, out)
    back = read_image(out, key=out.name)
    assert back.image.dtype == rec.image.dtype
    assert np.abs(back.image - protected.image).max() <= 0.5 + 1e-6  # rounding to the nearest level
    np.testing.assert_array_equal(back.image[~moved], rec.image[~moved])
    inside = moved & (rec.image >= levels) & (rec.image <= top - levels)  # not clipped at 0 or top
    assert inside.any()
    np.testing.assert_array_equal(np.abs(back.image[inside].astype(np.int64) - rec.image[inside]), levels)


@pytest.mark.parametrize("name", NAMES)
def test_png_zero_round_trip_is_pixel_identical(name: str, tmp_path: Path) -> None:
    src = _image(name)
    rec = read_image(src, key=f"images/{name}", mask_path=_mask(name))
    with Image.open(src) as im:
        mode, size, pixels = im.mode, im.size, np.asarray(im)
    assert rec.kind == "image" and rec.spatial_dims == 2 and rec.image.shape == (1, size[1], size[0])
    assert (rec.mapping.low, rec.mapping.high, rec.mapping.quantum) == (0.0, 255.0, 1.0)
    assert rec.mapping.native_to_unit_eps(8) == pytest.approx(8 / 255)
    out = tmp_path / output_relpath(Path(rec.key))
    write_image(rec.with_perturbation(np.zeros(rec.image.shape, np.float32)), out)
    assert out.name == name and sorted(p.name for p in out.parent.iterdir()) == [name]
    with Image.open(out) as back:
        assert back.format == "PNG" and back.mode == mode and back.size == size
        np.testing.assert_array_equal(np.asarray(back), pixels)


@pytest.mark.parametrize("name", NAMES[:2])
def test_png_known_perturbation(name: str, tmp_path: Path) -> None:
    assert_perturbation_survives(_image(name), tmp_path / name)


def test_mask_values_as_stored() -> None:
    rec = read_image(_image(), key="a", mask_path=_mask())
    np.testing.assert_array_equal(rec.target, _pixels(_mask()))
    assert set(np.unique(rec.target)) == {0, 255}
    assert np.issubdtype(rec.target.dtype, np.integer)
    np.testing.assert_array_equal(read_mask(_mask(), rec.spatial_shape), rec.target)


def test_mask_of_wrong_size_is_refused(tmp_path: Path) -> None:
    small = tmp_path / "small_mask.png"
    Image.fromarray(_pixels(_mask())[:-10]).save(small)
    with pytest.raises(InputError) as err:
        read_image(_image(), key="a", mask_path=small)
    assert str(small) in str(err.value) and str(_image()) in str(err.value)
    assert "does not match" in str(err.value)


def test_tiff_16_bit_round_trip(tmp_path: Path) -> None:
    src = tmp_path / "in" / "hc16.tif"
    src.parent.mkdir()
    wide = _pixels(_image()).astype(np.uint16) * 257
    tifffile.imwrite(src, wide, photometric="minisblack", resolution=(43.2, 43.2), resolutionunit="CENTIMETER")
    rec = read_image(src, key="hc16.tif")
    assert rec.image.dtype == np.uint16 and rec.mapping.high == 65535.0
    out = tmp_path / "out" / "hc16.tif"
    write_image(rec, out)
    with tifffile.TiffFile(out) as tf:
        page = tf.pages[0]
        assert page.dtype == np.uint16 and page.photometric == tifffile.PHOTOMETRIC.MINISBLACK
        assert page.resolution == pytest.approx((43.2, 43.2), rel=1e-6)
        assert page.resolutionunit == tifffile.RESUNIT.CENTIMETER
        np.testing.assert_array_equal(page.asarray(), wide)
    assert_perturbation_survives(src, tmp_path / "pert" / "hc16.tif", levels=3 * 257)


def test_png_16_bit_round_trip(tmp_path: Path) -> None:
    src = tmp_path / "hc16.png"
    Image.fromarray(_pixels(_image()).astype(np.uint16) * 257).save(src)
    rec = read_image(src, key="hc16.png")
    assert rec.image.dtype == np.uint16 and rec.mapping.high == 65535.0
    write_image(rec, tmp_path / "out" / "hc16.png")
    np.testing.assert_array_equal(_pixels(tmp_path / "out" / "hc16.png"), _pixels(src))
    assert_perturbation_survives(src, tmp_path / "pert" / "hc16.png", levels=1000)


def test_rgb_png_round_trip(tmp_path: Path) -> None:
    grey = _pixels(_image())
    rgb = np.dstack([grey, np.flipud(grey), 255 - grey])
    src = tmp_path / "rgb.png"
    Image.fromarray(rgb).save(src)
    rec = read_image(src, key="rgb.png")
    assert rec.image.shape == (3, *grey.shape)
    np.testing.assert_array_equal(rec.image[2], 255 - grey)
    write_image(rec, tmp_path / "out" / "rgb.png")
    with Image.open(tmp_path / "out" / "rgb.png") as back:
        assert back.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(back), rgb)
    assert_perturbation_survives(src, tmp_path / "pert" / "rgb.png")


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_alpha_is_kept_untouched(suffix: str, tmp_path: Path) -> None:
    grey = _pixels(_image())
    rgba = np.dstack([grey, grey, grey, _pixels(_mask())])
    src = tmp_path / f"rgba{suffix}"
    if suffix == ".png":
        Image.fromarray(rgba).save(src)
    else:
        tifffile.imwrite(src, rgba, photometric="rgb", extrasamples=["unassalpha"])
    rec = read_image(src, key=src.name)
    assert rec.image.shape == (3, *grey.shape) and rec.meta["alpha"]
    delta = np.full(rec.image.shape, 5 / 255, np.float32)
    out = tmp_path / "out" / src.name
    write_image(rec.with_perturbation(delta), out)
    back = _pixels(out)
    assert back.shape == rgba.shape
    np.testing.assert_array_equal(back[..., 3], rgba[..., 3])
    np.testing.assert_array_equal(back[..., :3], np.minimum(rgba[..., :3].astype(int) + 5, 255))


def test_jpeg_input_becomes_lossless_png(tmp_path: Path) -> None:
    src = tmp_path / "in" / "scan.jpg"
    src.parent.mkdir()
    Image.fromarray(_pixels(_image())).save(src, quality=90)
    rec = read_image(src, key="scan.jpg")
    delta, _ = _perturb(rec.image.shape, 2.0, 255.0)
    protected = rec.with_perturbation(delta)
    out = tmp_path / "out" / output_relpath(Path(rec.key))
    assert out.suffix == ".png"
    write_image(protected, out)
    with Image.open(out) as back:
        assert back.format == "PNG" and back.mode == "L"
        np.testing.assert_array_equal(np.asarray(back), np.rint(protected.image[0]).astype(np.uint8))
    with pytest.raises(OutputError, match=r"\.png"):
        write_image(protected, tmp_path / "out" / "scan.jpg")


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_truncated_file_is_refused(suffix: str, tmp_path: Path) -> None:
    whole = tmp_path / f"whole{suffix}"
    if suffix == ".png":
        whole.write_bytes(_image().read_bytes())
    else:
        tifffile.imwrite(whole, _pixels(_image()))
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(InputError) as err:
        read_image(cut, key=cut.name)
    assert str(cut) in str(err.value) and "truncated" in str(err.value)


def test_unsupported_layouts_are_refused(tmp_path: Path) -> None:
    palette = tmp_path / "palette.png"
    Image.fromarray(_pixels(_image())).convert("P").save(palette)
    with pytest.raises(InputError, match="convert"):
        read_image(palette, key="palette.png")
    with pytest.raises(InputError, match="not found"):
        read_image(tmp_path / "absent.png", key="absent.png")


def test_inputs_are_never_modified(tmp_path: Path) -> None:
    files = [_image(n) for n in NAMES] + [_mask(n) for n in NAMES]
    before = {p: (_sha(p), p.stat().st_mtime_ns) for p in files}
    for name in NAMES:
        rec = read_image(_image(name), key=name, mask_path=_mask(name))
        delta, _ = _perturb(rec.image.shape, 4.0, 255.0)
        write_image(rec.with_perturbation(delta), tmp_path / name)
    assert {p: (_sha(p), p.stat().st_mtime_ns) for p in files} == before


def test_an_image_the_system_refuses_to_read_is_not_called_truncated(monkeypatch: pytest.MonkeyPatch) -> None:
    import ulmed.io.images

    path = Path(__file__).resolve().parents[1] / "data/hc18/images/005_HC.png"

    def refused(fp, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(fp))

    monkeypatch.setattr(ulmed.io.images.Image, "open", refused)
    with pytest.raises(InputError, match=r"cannot be read \(Permission denied\); check its permissions") as err:
        read_image(path, key="005_HC.png")
    assert "truncated" not in str(err.value)
