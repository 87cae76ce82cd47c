import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ulmed.errors import ConfigError
from ulmed.io.record import IntensityMapping, Record
from ulmed.pipeline.protect import available_methods, build_method, protect_path
from ulmed.segmentation import method as unseg_method
from ulmed.segmentation.method import Fallback, UnSeg
from ulmed.segmentation.prompts import PromptKind


def _diff(a, b):
    return np.asarray(Image.open(a), dtype=np.float64) - np.asarray(Image.open(b), dtype=np.float64)


def test_protect_sample_hc18_through_protect_path(sample_data, checkpoint, tmp_path):
    src = sample_data / "hc18"
    out = tmp_path / "out"
    manifest = protect_path(src / "images", out, method="unseg", eps="8/255", masks=src / "masks",
                            method_options={"generator": checkpoint, "eps_bg": "2/255"})
    data = json.loads((out / "manifest.json").read_text())
    params = data["params"]
    assert params["method"] == "unseg" and params["fallback"] == "box" and params["eps_bg"] == "2/255"
    assert params["generator"] == Path(checkpoint).name and len(params["generator_sha256"]) == 16
    assert str(tmp_path) not in json.dumps(data) and "/" not in params["generator"]  # no local paths
    assert manifest.fit == {}  # every image had a mask
    for name in ("012_HC.png", "015_HC.png", "017_HC.png"):
        d = _diff(out / name, src / "images" / name)
        mask = np.asarray(Image.open(src / "masks" / name)) > 0
        assert d.shape == mask.shape and np.abs(d).max() > 0
        assert np.abs(d[mask]).max() <= 8 + 0.5 and np.abs(d[~mask]).max() <= 2 + 0.5  # one quantisation step
    assert "unseg" in available_methods()


def test_without_masks_the_fallback_is_recorded(sample_data, checkpoint, tmp_path):
    images = tmp_path / "plain"  # without a masks/ folder beside it
    shutil.copytree(sample_data / "hc18" / "images", images)
    m = protect_path(images, tmp_path / "box", method="unseg", method_options={"generator": checkpoint})
    assert m.fit["fallback"] == {"mode": "box", "records": ["012_HC.png", "015_HC.png", "017_HC.png"]}
    assert all("fallback box" in e.reason for e in m.entries if e.status == "written")
    assert np.abs(_diff(tmp_path / "box/012_HC.png", images / "012_HC.png")).max() > 2.5  # full budget everywhere
    m = protect_path(images, tmp_path / "skip", method="unseg",
                     method_options={"generator": checkpoint, "fallback": "skip"})
    assert m.params["fallback"] == "skip" and len(m.fit["fallback"]["records"]) == 3
    assert not np.any(_diff(tmp_path / "skip/012_HC.png", images / "012_HC.png"))


def _record(channels: int, shape: tuple[int, ...], target: bool) -> Record:
    rng = np.random.default_rng(0)
    img = rng.integers(20, 230, size=(channels, *shape)).astype(np.uint8)
    mask = np.zeros(shape, dtype=np.int64)
    mask[..., 5:20, 8:30] = 1
    return Record("r", img, IntensityMapping(0, 255, 0, 255, 1), len(shape), "image", target=mask if target else None)


@pytest.mark.parametrize("channels,shape", [(1, (37, 53)), (3, (40, 31)), (2, (30, 30)), (1, (4, 25, 33))],
                         ids=["grey", "rgb", "two-channel", "volume"])
def test_any_size_grey_rgb_and_volume_slices(checkpoint, channels, shape):
    rec = _record(channels, shape, target=True)
    method = UnSeg("8/255", generator=checkpoint, eps_bg="2/255", prompt="points")
    delta = method.perturbation(rec, rec.unit_image(), 8 / 255)
    assert delta.shape == rec.image.shape
    fg = np.broadcast_to(rec.target > 0, delta.shape)
    assert np.abs(delta[fg]).max() <= 8 / 255 + 1e-6 and np.abs(delta[~fg]).max() <= 2 / 255 + 1e-6
    assert np.abs(delta).max() > 0
    fresh = UnSeg("8/255", generator=checkpoint, eps_bg="2/255", prompt="points")
    again = fresh.perturbation(rec, rec.unit_image(), 8 / 255)
    assert np.array_equal(delta, again)  # seeded per record


def test_a_grey_map_is_the_channel_mean_of_the_generator_scaled_back(checkpoint):
    """The mean is taken at the generator's size, before the scale-back: the same map as after it."""
    import torch

    from ulmed.segmentation.data import letterbox, unletterbox
    from ulmed.segmentation.prompts import whole_image_prompt

    rec = _record(1, (50, 90), target=False)  # no mask: a whole-image box prompt, eps everywhere
    method = UnSeg("8/255", generator=checkpoint, batch_size=4)
    delta = method.perturbation(rec, rec.unit_image(), 8 / 255)
    size = method.generator.spec.img_size
    x, box = letterbox(torch.from_numpy(rec.unit_image()).float()[None].expand(1, 3, -1, -1), size, upscale=False)
    with torch.inference_mode():
        raw = method.generator(x.expand(4, -1, -1, -1), whole_image_prompt(4))[:1]
    expected = unletterbox(raw, box).mean(1).clamp(-1, 1)[0].numpy() * 8 / 255
    unit = rec.unit_image()[0]
    expected = np.clip(unit + expected, 0, 1) - unit  # the valid range, as protect keeps it
    np.testing.assert_allclose(delta[0], expected, atol=1e-6)
    assert np.abs(delta).max() > 1 / 255  # a map, not zeros


def test_options_are_validated(checkpoint, monkeypatch, tmp_path):
    with pytest.raises(ConfigError, match="eps_bg <= eps"):
        build_method("unseg", "2/255", 0, "cpu", generator=checkpoint, eps_bg="4/255")
    with pytest.raises(ConfigError, match="fallback"):
        UnSeg(generator=checkpoint, fallback="ignore")
    with pytest.raises(ConfigError, match="prompt"):
        UnSeg(generator=checkpoint, prompt="scribble")
    upper = UnSeg(generator=checkpoint, prompt="BOX", fallback="Skip")  # choices in any case
    assert upper.prompt is PromptKind.BOX and upper.fallback is Fallback.SKIP
    assert upper.params()["prompt"] == "box" and json.dumps(upper.params()["fallback"]) == '"skip"'
    monkeypatch.setattr(unseg_method, "SHIPPED_GENERATOR", tmp_path / "none.pt")
    with pytest.raises(ConfigError, match="ulmed train-generator"):
        UnSeg()
    zero_bg = UnSeg(generator=checkpoint, eps_bg=0)
    rec = _record(1, (32, 32), target=True)
    delta = zero_bg.perturbation(rec, rec.unit_image(), 8 / 255)
    assert not np.any(delta[:, rec.target == 0]) and zero_bg.params()["eps_bg"] == "0"


def test_rgb_noise_for_colour_images_grey_noise_for_grey_ones_stored_as_rgb(checkpoint):
    method = UnSeg("8/255", generator=checkpoint, eps_bg="2/255")
    colour = _record(3, (40, 31), target=True)
    d = method.perturbation(colour, colour.unit_image(), 8 / 255)
    assert not np.allclose(d[0], d[1])  # a colour image keeps the generator's three channels
    grey = _record(1, (40, 31), target=True)
    as_rgb = Record("r", np.repeat(grey.image, 3, axis=0), grey.mapping, 2, "image", target=grey.target)
    d_rgb = method.perturbation(as_rgb, as_rgb.unit_image(), 8 / 255)
    d_grey = method.perturbation(grey, grey.unit_image(), 8 / 255)
    assert np.allclose(d_rgb[0], d_rgb[1]) and np.allclose(d_rgb[1], d_rgb[2])  # equal channels: the grey noise ...
    assert np.allclose(d_rgb[0], d_grey[0], atol=1e-6)  # ... the same as for the image stored as grey


def _mixed_records(hc18_train_records) -> list[Record]:
    """Real HC18 images of two sizes, stored as floats (one without its mask), an RGB image and a small volume.

    Float records keep every bit of the noise (no quantisation to stored steps), so float
    rounding of the generator that depends on how images share a forward pass would show.
    """
    recs = hc18_train_records(24, 3) + hc18_train_records(40, 2)
    unit = IntensityMapping(0.0, 1.0, 0.0, 1.0, quantum=0.0)
    recs = [Record(r.key, r.image / 255.0, unit, 2, "image", target=r.target) for r in recs]
    recs[1] = Record("no-mask.png", recs[1].image, recs[1].mapping, 2, "image")
    for rec in recs[3:]:
        rec.key = f"40px/{rec.key}"
    rgb = _record(3, (40, 31), target=True)
    rgb.key = "rgb.png"
    vol = _record(1, (5, 25, 33), target=True)
    vol.key = "vol.nii.gz"
    return [*recs, rgb, hc18_train_records(32, 1)[0], vol]


def _counting(method: UnSeg) -> list[int]:
    """The batch size of every forward pass of the method's generator, as it runs."""
    sizes: list[int] = []
    method.generator.register_forward_hook(lambda module, args, out: sizes.append(args[0].shape[0]))
    return sizes


@pytest.mark.parametrize("prompt", ["mask", "points"])
def test_protect_many_equals_protect_one_record_at_a_time(checkpoint, hc18_train_records, prompt):
    records = _mixed_records(hc18_train_records)
    batched = UnSeg("8/255", generator=checkpoint, eps_bg="2/255", prompt=prompt, batch_size=4)
    sizes = _counting(batched)
    many = batched.protect_many(records)
    single = UnSeg("8/255", generator=checkpoint, eps_bg="2/255", prompt=prompt, batch_size=4)
    single_sizes = _counting(single)
    one = [single.protect(r) for r in records]
    for a, b, rec in zip(many, one, records):
        assert a.key == rec.key and np.array_equal(a.image, b.image), rec.key  # byte for byte
        assert np.abs(a.image.astype(float) - rec.image).max() > 0
    assert batched.fallback_records == single.fallback_records == ["no-mask.png"]
    # Every pass holds 4 images (short ones padded). One at a time: a pass per image, two for the
    # volume's 5 slices. Shared, each record's slices whole and in order: 4 images; 2 images (the
    # volume's first 4 slices would not fit); those 4; its last slice; the maskless image's box prompt.
    assert single_sizes == [4] * (7 + 2)
    assert sizes == [4] * 5


def test_the_noise_does_not_depend_on_the_threads_the_process_has(checkpoint, hc18_train_records):
    """Two workers give each process one thread; one worker has all cores: the bytes must agree."""
    import torch

    records = hc18_train_records(24, 4)
    method = UnSeg("8/255", generator=checkpoint, batch_size=4)
    before = torch.get_num_threads()
    try:
        outputs = []
        for n in (2, 1):
            torch.set_num_threads(n)
            outputs.append([method.perturbation(r, r.unit_image(), 8 / 255) for r in records])
    finally:
        torch.set_num_threads(before)
    assert all(np.array_equal(a, b) for a, b in zip(*outputs))
    assert method.params()["threads"] == 1 and torch.get_num_threads() == before
    with pytest.raises(ConfigError, match="threads"):
        UnSeg(generator=checkpoint, threads=0)


def test_batch_hint_is_the_batch_size_and_skip_records_cost_no_pass(checkpoint, hc18_train_records):
    method = UnSeg("8/255", generator=checkpoint, fallback="skip", batch_size=3)
    assert method.batch_hint == 3
    sizes = _counting(method)
    recs = hc18_train_records(24, 2)
    bare = Record("bare.png", recs[0].image, recs[0].mapping, 2, "image")
    out = method.protect_many([bare, *recs])
    assert np.array_equal(out[0].image, bare.image) and sizes == [3]  # two images, padded to the batch size
    assert method.params()["batch_size"] == 3


def test_bf16_stays_in_the_budget_and_is_named_in_the_params(checkpoint, hc18_train_records):
    """bf16 forward passes: within eps, close to fp32's noise, and recorded (fp32 runs keep their params)."""
    records = hc18_train_records(24, 2)
    fp32 = UnSeg("8/255", generator=checkpoint, batch_size=2)
    bf16 = UnSeg("8/255", generator=checkpoint, batch_size=2, precision="BF16")
    for rec in records:
        a = fp32.protect(rec).image - rec.image
        b = bf16.protect(rec).image - rec.image
        assert np.abs(b).max() <= 8 + 1e-9 and np.abs(b).max() > 1  # stored grey levels, in the budget
        assert np.mean(a == b) > 0.9 and not np.array_equal(a, b)  # mostly the same steps, not all
    assert "precision" not in fp32.params() and bf16.params()["precision"] == "bf16"
    with pytest.raises(ConfigError, match="precision"):
        UnSeg(generator=checkpoint, precision="fp8")
