"""Augmenters: seeded per sample (same seed -> same tensors), decode once, never crash."""

from __future__ import annotations

import hashlib
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

import privet
from privet_image import imaging

CHAIN = [("image.random_resized_crop", {"size": 24, "scale": [0.5, 1.0]}),
         ("image.flip", {"horizontal": 0.5, "vertical": 0.5}),
         ("image.rotate", {}),
         ("image.color_jitter", {"hue": 0.1})]


def run_chain(host, data: bytes, seed: int) -> torch.Tensor:
    augmenters = [host.make("augmenter", name, opts) for name, opts in CHAIN]
    model = host.make("model", "image.cnn", {"input_size": 24})
    model.load_state_dict({"classes": ["a", "b"]})
    record = {"image": data, "label": "a", "path": "a/1.png"}
    rng = np.random.default_rng(seed)
    for aug in augmenters:
        record = aug.augment(record, rng)
    return model.encode(record)[0]


def test_same_seed_gives_the_same_tensors_and_another_seed_does_not(host, images):
    data = images.png(64, 48, seed=4)
    a, b = run_chain(host, data, seed=11), run_chain(host, data, seed=11)
    assert a.shape == (3, 24, 24)
    assert torch.equal(a, b)
    assert not torch.equal(a, run_chain(host, data, seed=12))


def test_augmentation_is_the_same_in_a_fresh_process(host, images, tmp_path):
    """What a DataLoader worker of another run computes for the same seed."""
    data = images.png(64, 48, seed=4)
    (tmp_path / "img.png").write_bytes(data)
    script = textwrap.dedent(f"""
        import hashlib, numpy as np
        from privet.testing import make_test_host
        from privet_image import plugin
        host = make_test_host(); host.register_plugin(plugin, "image")
        record = {{"image": open({str(tmp_path / 'img.png')!r}, "rb").read(), "label": "a"}}
        rng = np.random.default_rng(11)
        for name, opts in {CHAIN!r}:
            record = host.make("augmenter", name, opts).augment(record, rng)
        model = host.make("model", "image.cnn", {{"input_size": 24}})
        model.load_state_dict({{"classes": ["a", "b"]}})
        print(hashlib.sha256(model.encode(record)[0].numpy().tobytes()).hexdigest())
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, check=True).stdout.strip()
    here = hashlib.sha256(run_chain(host, data, seed=11).numpy().tobytes()).hexdigest()
    assert out == here


def test_augmenting_leaves_the_global_torch_generator_alone(host, images):
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    run_chain(host, images.png(), seed=1)
    assert torch.equal(torch.rand(3), expected)


def test_a_chain_decodes_the_bytes_once(host, images, monkeypatch):
    calls = []
    real = imaging.decode

    def counting(data, mode=None, **kw):
        calls.append(len(data))
        return real(data, mode, **kw)

    monkeypatch.setattr(imaging, "decode", counting)
    record = {"image": images.png(), "label": "a"}
    rng = np.random.default_rng(0)
    for name, opts in CHAIN:
        record = host.make("augmenter", name, opts).augment(record, rng)
    assert len(calls) == 1
    assert isinstance(record["image"], Image.Image) and record["image"].size == (24, 24)


def test_augmenters_do_not_change_the_input_record(host, images):
    record = {"image": images.png(), "label": "a"}
    host.make("augmenter", "image.flip").augment(record, np.random.default_rng(0))
    assert isinstance(record["image"], bytes)


def test_undecodable_bytes_pass_through_for_encode_to_drop(host):
    record = {"image": b"not an image", "label": "a"}
    out = host.make("augmenter", "image.rotate").augment(record, np.random.default_rng(0))
    assert out["image"] == b"not an image"
    model = host.make("model", "image.cnn")
    model.load_state_dict({"classes": ["a", "b"]})
    with pytest.raises(privet.DropRecord, match="undecodable_image"):
        model.encode(out)


def test_rotation_defaults_to_15_degrees_and_flip_is_a_mirror(host, images):
    rotate = host.make("augmenter", "image.rotate")
    assert rotate.transform().degrees == [-15.0, 15.0]
    img = images.noise(10, 6)
    flip = host.make("augmenter", "image.flip", {"horizontal": 1.0})
    out = flip.augment({"image": img}, np.random.default_rng(0))["image"]
    assert np.array_equal(np.asarray(out), np.asarray(img)[:, ::-1])


def test_augmenters_work_on_tensors_too(host):
    x = torch.randint(0, 256, (3, 40, 40), dtype=torch.uint8)
    out = host.make("augmenter", "image.random_resized_crop", {"size": 16}).augment(
        {"image": x}, np.random.default_rng(0))["image"]
    assert out.shape == (3, 16, 16) and out.dtype == torch.uint8


def test_a_used_augmenter_pickles_for_dataloader_workers(host, images):
    aug = host.make("augmenter", "image.color_jitter")
    aug.augment({"image": images.png()}, np.random.default_rng(0))
    clone = pickle.loads(pickle.dumps(aug))
    a = aug.augment({"image": images.png()}, np.random.default_rng(5))["image"]
    b = clone.augment({"image": images.png()}, np.random.default_rng(5))["image"]
    assert np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("name, options, message", [
    ("image.random_resized_crop", {"scale": [0.5, 1.5]}, "scale must lie within"),
    ("image.color_jitter", {"hue": 0.7}, "hue must be between 0 and 0.5"),
    ("image.flip", {"horizontal": 0, "vertical": 0}, "would do nothing"),
    ("image.rotate", {"fill": [1, 2]}, "fill must be one grey value or three"),
])
def test_bad_options_are_config_errors(host, name, options, message):
    with pytest.raises(privet.ConfigError, match=message):
        host.make("augmenter", name, options)
