"""``decode: gpu``: encoded JPEG batches decoded and augmented on the model's device.

The CPU tests run the device path with ``device="cpu"`` (torchvision's ``decode_jpeg``
on the CPU) and compare it with the Pillow path; the CUDA tests skip without a device.
"""

from __future__ import annotations

import copy
import io
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import privet
from privet_image import augmenters, gpu_decode, models, plugin
from privet_image.shapes import write_folder

pytest_plugins = ["privet.testing"]

CPU = torch.device("cpu")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def jpeg_records(n: int = 6, size: int = 48) -> list[dict]:
    """Smooth JPEG shapes (noise would turn every resampling difference into an error)."""
    from privet_image.shapes import render

    rng = np.random.default_rng(3)
    out = []
    for i in range(n):
        buf = io.BytesIO()
        render(("circle", "square", "triangle")[i % 3], size, rng).save(buf, "JPEG", quality=90)
        out.append({"image": buf.getvalue(), "label": ("circle", "square", "triangle")[i % 3]})
    return out


def chain() -> list[augmenters.TorchvisionAugmenter]:
    return [augmenters.RandomResizedCrop(augmenters.RandomResizedCrop.Options(size=40,
                                                                              scale=[0.5, 1.0])),
            augmenters.RandomFlip(augmenters.RandomFlip.Options(horizontal=0.5, vertical=0.5)),
            augmenters.RandomRotation(augmenters.RandomRotation.Options(degrees=20))]


def model(channels: int = 3) -> models.Cnn:
    m = models.Cnn(models.Cnn.Options(input_size=32, channels=channels))
    m._set_classes(["circle", "square", "triangle"])
    return m


def cpu_batch(records: list[dict], augs: list, m: models.Cnn) -> torch.Tensor:
    """The default path: Pillow decode and transforms in the worker, per-sample rng."""
    out = []
    for i, record in enumerate(records):
        rng = np.random.default_rng([0, 0, i])
        for aug in augs:
            record = aug.augment(record, rng)
        out.append(m.encode(record)[0])
    return torch.stack(out)


def device_path(records: list[dict], augs: list, m: models.Cnn,
                backend: str = "gpu") -> tuple[gpu_decode.DeviceDecoder, gpu_decode.EncodedBatch]:
    """What ``decode: gpu`` does in the worker: seeds only, bytes shipped, then collate."""
    augs = [copy.copy(a) for a in augs]
    for aug in augs:
        aug.defer_to_device()
    m = copy.copy(m)
    decoder = gpu_decode.DeviceDecoder(backend, m.options.channels, [a.apply for a in augs],
                                       m.preprocess)
    m.use_device_decode(decoder)
    items = []
    for i, record in enumerate(records):
        rng = np.random.default_rng([0, 0, i])
        for aug in augs:
            record = aug.augment(record, rng)
        items.append(m.encode(record))
    return decoder, m.collate(items)


def test_batched_jpeg_decode_on_cpu_gives_the_pillow_path_tensors():
    records, augs, m = jpeg_records(), chain(), model()
    expected = cpu_batch(records, augs, m)
    decoder, batch = device_path(records, augs, m)
    assert isinstance(batch, gpu_decode.EncodedBatch) and len(batch) == 6
    assert all(img.data.ndim == 1 and img.fallback is None for img in batch.images)  # bytes
    assert all(len(img.seeds) == 3 for img in batch.images)
    x, y = decoder(batch, CPU)
    assert x.shape == expected.shape == (6, 3, 32, 32) and x.dtype == torch.float32
    assert y.tolist() == [0, 1, 2, 0, 1, 2]
    diff = (x - expected).abs()
    # same crop, flip and angle per image; only tensor vs Pillow resampling differs, most
    # along the rotated edges (grid_sample vs Pillow's bilinear rotate)
    assert diff.mean() < 0.05 and diff.quantile(0.9) < 0.1, (diff.mean(), diff.quantile(0.9))
    assert decoder.counts == {"gpu_decoded": 6}
    # without the rotation the two paths agree to a couple of grey levels everywhere
    decoder, batch = device_path(records, augs[:2], m)
    assert (decoder(batch, CPU)[0] - cpu_batch(records, augs[:2], m)).abs().max() < 0.05
    # and the seeds matter: another sample's seeds give another crop
    shifted = cpu_batch(records[1:] + records[:1], augs[:2], m)
    assert (decoder(batch, CPU)[0][1:] - shifted[:-1]).abs().mean() > 0.05


def test_without_augmenters_the_decoded_pixels_are_identical_to_pillow():
    from torchvision.transforms.v2 import functional as F

    from privet_image.imaging import decode

    records = jpeg_records(3)
    decoder = gpu_decode.DeviceDecoder("gpu", 3, [], lambda x: x)
    pixels = decoder.decode([gpu_decode.encode_image(r["image"], "RGB") for r in records], CPU)
    for got, record in zip(pixels, records):
        assert torch.equal(got, F.pil_to_tensor(decode(record["image"], "RGB")))


def test_grey_models_get_one_channel_from_the_jpeg_decoder():
    records, m = jpeg_records(3), model(channels=1)
    expected = cpu_batch(records, [], m)
    decoder, batch = device_path(records, [], m)
    x, _ = decoder(batch, CPU)
    assert x.shape == (3, 1, 32, 32)
    assert (x - expected).abs().max() < 0.05  # libjpeg's Y channel vs Pillow's luma formula


def test_files_the_gpu_cannot_decode_fall_back_to_pillow_and_are_counted(images):
    records = [{"image": images.png(), "label": "circle"},
               {"image": images.cmyk_jpeg(), "label": "square"},
               {"image": images.exif_rotated_jpeg(), "label": "triangle"},
               {"image": images.jpeg(), "label": "circle"}]
    from torchvision.transforms.v2 import functional as F

    from privet_image.imaging import decode

    decoder, batch = device_path(records, [], model())
    assert [img.fallback for img in batch.images] == ["not_jpeg", "cmyk", "exif_orientation", None]
    for got, record in zip(decoder.decode(batch.images, CPU), records):
        assert torch.equal(got, F.pil_to_tensor(decode(record["image"], "RGB")))
    assert decoder.decode(batch.images, CPU)[2].shape == (3, 60, 20)  # turned upright
    decoder.counts.clear()
    x, _ = decoder(batch, CPU)
    assert x.shape == (4, 3, 32, 32)
    assert decoder.report() == {"backend": "gpu", "cpu_fallback_cmyk": 1,
                                "cpu_fallback_exif_orientation": 1,
                                "cpu_fallback_not_jpeg": 1, "gpu_decoded": 1}


def test_a_jpeg_no_decoder_can_read_is_left_out_of_the_batch_and_counted(images):
    broken = b"\xff\xd8\xff\xe0" + b"\x00\x10JFIF" + b"\x00" * 40  # a header, then nothing
    records = [{"image": images.jpeg(), "label": "circle"}, {"image": broken, "label": "square"},
               {"image": images.jpeg(seed=2), "label": "triangle"}]
    decoder, batch = device_path(records, [], model())
    x, y = decoder(batch, CPU)
    assert x.shape[0] == 2 and y.tolist() == [0, 2]
    assert decoder.counts["undecodable_image"] == 1 and decoder.counts["gpu_decoded"] == 2
    with pytest.raises(privet.DataError, match="image.verify"):
        decoder(gpu_decode.EncodedBatch(batch.images[1:2], torch.tensor([1])), CPU)


def test_jpeg_frame_header_gives_size_and_components(images):
    grey = io.BytesIO()
    Image.new("L", (8, 6), 5).save(grey, "JPEG")
    assert gpu_decode.jpeg_frame(grey.getvalue()) == (6, 8, 1)
    assert gpu_decode.jpeg_frame(images.jpeg(64, 48)) == (48, 64, 3)
    assert gpu_decode.jpeg_frame(images.cmyk_jpeg())[2] == 4
    assert gpu_decode.jpeg_frame(b"\xff\xd8\xff\xe0\x00") is None


def test_a_jpeg_bomb_never_reaches_the_gpu_decoder(images):
    """A header claiming 60000 x 60000 pixels (a 10 GiB decode) goes to Pillow, whose
    decompression-bomb limit drops it in the worker, as on the CPU path."""
    small = images.jpeg(64, 48)
    i = small.index(b"\xff\xc0")  # baseline frame header: height and width follow
    bomb = small[:i + 5] + (60000).to_bytes(2, "big") * 2 + small[i + 9:]
    assert gpu_decode.jpeg_frame(bomb)[:2] == (60000, 60000)
    assert gpu_decode.cpu_reason(bomb) == "too_large"
    with pytest.raises(privet.DropRecord) as drop:
        gpu_decode.encode_image(bomb, "RGB")
    assert drop.value.reason == "undecodable_image" and "DecompressionBomb" in str(drop.value)


def test_the_step_decodes_and_example_inputs_stay_on_the_cpu():
    records, augs, m = jpeg_records(4), chain(), model()
    decoder, batch = device_path(records, augs, m)
    m.use_device_decode(decoder)
    module = m.build()
    out = m.step(module, batch)
    assert out.count == 4 and torch.isfinite(out.loss_sum)
    assert m.batch_size_of(batch) == 4
    (x,) = m.example_inputs(batch)
    assert x.shape == (4, 3, 32, 32) and x.device.type == "cpu"
    assert m.report()["decode"]["gpu_decoded"] == 8


def test_the_decode_option_is_validated_and_defaults_to_cpu(host, tmp_path):
    from privet.config import load_config

    write_folder(tmp_path / "d", per_class=2, size=16)
    raw = {"data": {"source": {"name": "image.folder", "options": {"root": str(tmp_path / "d")}}},
           "model": "image.cnn"}
    assert load_config(data=raw, catalog=host.catalog).options["data.source"].decode == "cpu"
    raw["data"]["source"]["options"]["decode"] = "nvjpeg"
    with pytest.raises(privet.ConfigError, match="data.source.options.decode"):
        load_config(data=raw, catalog=host.catalog)


def fake_run(tmp_path: Path, augs: list, m, device=CPU) -> SimpleNamespace:
    from privet_image.sources import ImageFolder

    write_folder(tmp_path / "d", per_class=1, size=16)
    source = ImageFolder(ImageFolder.Options(root=tmp_path / "d", decode="gpu"))
    return SimpleNamespace(components=SimpleNamespace(source=source, augmenters=augs, model=m),
                           device=device, loaded=SimpleNamespace(file="p.yaml", lines={
                               "data.source.options.decode": 7}))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_decode_gpu_without_cuda_is_one_config_error_naming_the_option(tmp_path):
    with pytest.raises(privet.ConfigError) as err:
        gpu_decode.configure(fake_run(tmp_path, chain(), model()))
    assert str(err.value) == ("p.yaml:7: data.source.options.decode: decode: gpu requires CUDA, "
                              "and this machine has no CUDA device; use decode: cpu (the default)")
    source = fake_run(tmp_path / "again", [], model()).components.source
    for first_calls_of_a_run in (source.files, source.shards):  # before the data is prepared
        with pytest.raises(privet.ConfigError, match="decode: gpu requires CUDA"):
            first_calls_of_a_run()


def test_augmenters_the_gpu_path_cannot_run_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_decode, "check_cuda", lambda *a, **k: None)

    class Custom(privet.Augmenter):
        name = "acme.sharpen"

        def augment(self, record, rng):
            return record

    with pytest.raises(privet.ConfigError, match=r"data.augmenters.1 \(acme.sharpen\)"):
        gpu_decode.configure(fake_run(tmp_path, [chain()[0], Custom()], model()))


def shapes_pipeline(root: Path, decode: str, device: str = "cpu", **train) -> dict:
    return {
        "name": f"decode-{decode}", "seed": 0, "plugins": {"required": ["image"]},
        "data": {"source": {"name": "image.folder", "options": {"root": str(root),
                                                                "decode": decode}},
                 "augmenters": [{"name": "image.random_resized_crop",
                                 "options": {"size": 32, "scale": [0.7, 1.0]}}, "image.flip"],
                 "split": {"method": "random", "val": 0.25}},
        "model": {"name": "image.cnn", "options": {"widths": [8, 16]}},
        "train": {"epochs": 1, "batch_size": 8, "device": device, "log_every_n_steps": 100,
                  **train},
    }


@pytest.fixture
def image_host(privet_host):
    privet_host.register_plugin(plugin, "image")
    return privet_host


def test_a_run_with_the_device_path_forced_on_cpu_trains_and_reports_the_decoders(
        image_host, run_pipeline, tmp_path, monkeypatch):
    """The whole plumbing (hook, workers' seeds, collate, step, report, cache key) on the
    CPU: only the CUDA check is lifted."""
    monkeypatch.setattr(gpu_decode, "check_cuda", lambda *a, **k: None)
    root = tmp_path / "shapes"
    write_folder(root, per_class=8, size=32, seed=1, fmt="jpeg")
    (root / "circle" / "extra.png").write_bytes(_png(Image.new("RGB", (32, 32), (9, 9, 9))))
    config = shapes_pipeline(root, "gpu")
    config["data"]["num_workers"] = 1  # encoded batches cross the worker queue
    gpu = run_pipeline(config)
    gpu.assert_success()
    decode = gpu.report["model"]["decode"]
    # one epoch: every image decoded once, in training or validation
    assert decode == {"backend": "gpu", "gpu_decoded": 24, "cpu_fallback_not_jpeg": 1}
    cpu = run_pipeline(shapes_pipeline(root, "cpu"))
    cpu.assert_success()
    assert "decode" not in cpu.report["model"]
    caches = {yaml.safe_load((o.run_dir / "manifest.json").read_text())["data_cache"]
              for o in (gpu, cpu)}
    assert len(caches) == 2  # the decode mode is part of the cache fingerprint


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_privet_run_with_decode_gpu_without_cuda_prints_one_line_and_exits_2(tmp_path):
    root = tmp_path / "shapes"
    write_folder(root, per_class=2, size=16, fmt="jpeg")
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(yaml.safe_dump(shapes_pipeline(root, "gpu", device="auto")))
    out = subprocess.run([sys.executable, "-m", "privet", "run", str(pipeline)],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 2, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("privet: error: ") and "decode: gpu requires CUDA" in lines[-1]
    assert "data.source.options.decode" in lines[-1] and "Traceback" not in out.stderr
    assert not list((tmp_path / "runs").glob(".cache/*"))  # nothing was prepared


# -- on a CUDA device ----------------------------------------------------------------------


@needs_cuda
@pytest.mark.parametrize("backend", ["gpu", pytest.param("dali", marks=pytest.mark.skipif(
    not gpu_decode.dali_available(), reason="needs NVIDIA DALI"))])
def test_gpu_decoded_batches_match_the_cpu_path(backend):
    records, augs, m = jpeg_records(8), chain(), model()
    expected = cpu_batch(records, augs, m)
    decoder, batch = device_path(records, augs, m, backend)
    x, y = decoder(batch, torch.device("cuda"))
    assert x.device.type == "cuda" and y.device.type == "cuda"
    assert decoder.counts[f"{backend}_decoded"] == 8
    # against the same tensor ops on the CPU: only nvjpeg vs libjpeg-turbo differs
    on_cpu, _ = decoder(batch, CPU)
    assert (x.cpu() - on_cpu).abs().mean() < 0.02
    # against Pillow: the CPU test's bounds (rotated edges), plus the decoder's grey levels
    diff = (x.cpu() - expected).abs()
    assert diff.mean() < 0.06 and diff.quantile(0.9) < 0.15, (diff.mean(), diff.quantile(0.9))


@needs_cuda
def test_a_short_training_run_decodes_on_the_gpu(image_host, run_pipeline, tmp_path):
    root = tmp_path / "shapes"
    write_folder(root, per_class=16, size=32, seed=1, fmt="jpeg")
    outcome = run_pipeline(shapes_pipeline(root, "gpu", device="cuda", epochs=2))
    outcome.assert_success()
    assert outcome.report["model"]["decode"]["gpu_decoded"] == 2 * 48
    assert np.isfinite(outcome.report["final"]["val/loss"])
