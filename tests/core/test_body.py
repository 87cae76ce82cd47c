import numpy as np
from PIL import Image

from ulmed.baselines.lsp import MaskCodedPatterns
from ulmed.baselines.random_noise import RandomNoise
from ulmed.core.body import body_mask
from ulmed.io.nifti import read_nifti
from ulmed.io.record import IntensityMapping, Record


def _in_air(real_data, tmp_path) -> Record:
    """A real hippocampus MR crop placed in a field of air (zeros), as a head sits in its scan."""
    import nibabel as nib

    path = sorted((real_data / "msd_hippocampus" / "images").glob("*.nii*"))[0]
    img = nib.load(path)
    data = np.asarray(img.dataobj).astype(np.int16)
    padded = np.zeros(tuple(s + 20 for s in data.shape), np.int16)
    padded[10:-10, 10:-10, 10:-10] = data
    nib.save(nib.Nifti1Image(padded, img.affine), tmp_path / "head.nii.gz")
    return read_nifti(tmp_path / "head.nii.gz", "head")


def test_the_body_covers_the_anatomy_and_leaves_the_air_around_it(real_data, tmp_path):
    rec = _in_air(real_data, tmp_path)
    body = body_mask(rec)
    assert body is not None and body.shape == (1, *rec.spatial_shape)
    assert not body[0, :5].any() and not body[0, :, :5].any()  # air more than the margin away from the crop
    assert body[0, 12:-12, 12:-12, 12:-12].mean() > 0.95


def test_training_free_methods_leave_the_air_of_a_volume_alone(real_data, tmp_path):
    rec = _in_air(real_data, tmp_path)
    air = ~body_mask(rec)[0]
    for method in (MaskCodedPatterns("8/255"), RandomNoise("8/255")):
        out = method.protect(rec)
        moved = np.abs(out.image[0].astype(np.int64) - rec.image[0].astype(np.int64))
        assert moved[air].max() == 0 and moved[~air].mean() > 0, method.name


def test_images_have_no_body_mask(real_data):
    img = np.asarray(Image.open(real_data / "hc18/images/012_HC.png"))[None]
    assert body_mask(Record("i", img, IntensityMapping(0, 255, 0, 255, 1), 2, "image")) is None


def test_grow_equals_scipy_binary_dilation():
    from scipy.ndimage import binary_dilation

    from ulmed.core.body import grow

    rng = np.random.default_rng(3)
    for shape in ((1, 9, 11, 13), (1, 1, 17, 5), (2, 6, 7), (1, 1, 1, 4), (23,)):
        for density in (0.0, 0.02, 0.3):
            mask = rng.random(shape) < density
            if mask.size > 2:
                mask.reshape(-1)[[0, -1]] = True  # corners: the border counts as False
            for steps in (0, 1, 2, 3):
                want = binary_dilation(mask, iterations=steps) if steps else mask
                assert np.array_equal(grow(mask, steps), want), (shape, density, steps)
