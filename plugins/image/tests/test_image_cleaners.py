"""image.convert, image.resize and image.equalize rewrite the bytes as promised."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

import privet


def decoded(record) -> Image.Image:
    img = Image.open(io.BytesIO(record["image"]))
    img.load()
    return img


def rec(data: bytes) -> dict:
    return {"image": data, "label": "x", "path": "x/a.png"}


def test_convert_turns_cmyk_and_grey_into_rgb(host, images):
    cleaner = host.make("cleaner", "image.convert")
    cmyk = decoded(cleaner.clean(rec(images.cmyk_jpeg())))
    assert cmyk.mode == "RGB" and cmyk.format == "PNG"
    assert cmyk.getpixel((20, 20))[0] > 200 and cmyk.getpixel((20, 20))[1] < 60  # red stays red
    gray = decoded(cleaner.clean(rec(images.gray_png())))
    assert gray.mode == "RGB" and gray.getpixel((3, 3)) == (128, 128, 128)


def test_convert_composites_transparency_onto_the_background(host, images):
    cleaner = host.make("cleaner", "image.convert", {"background": [0, 255, 0]})
    img = decoded(cleaner.clean(rec(images.rgba_png())))
    assert img.mode == "RGB"
    assert img.getpixel((5, 5)) == (0, 255, 0)  # transparent half: background
    assert img.getpixel((35, 5)) == (255, 0, 0)  # opaque half: as drawn


def test_convert_scales_16_bit_grey_instead_of_clipping(host, images):
    arr = np.full((8, 8), 65535 // 2, dtype=np.uint16)
    data = images.save(Image.fromarray(arr))
    img = decoded(host.make("cleaner", "image.convert", {"mode": "L"}).clean(rec(data)))
    assert img.mode == "L" and abs(img.getpixel((0, 0)) - 127) <= 1


def test_convert_applies_the_exif_orientation(host, images):
    img = decoded(host.make("cleaner", "image.convert").clean(rec(images.exif_rotated_jpeg())))
    assert img.size == (20, 60)
    kept = decoded(host.make("cleaner", "image.convert", {"exif_transpose": False})
                   .clean(rec(images.exif_rotated_jpeg())))
    assert kept.size == (60, 20)


def test_convert_keeps_the_original_bytes_when_nothing_changes(host, images):
    cleaner = host.make("cleaner", "image.convert")
    data = images.jpeg()
    assert cleaner.clean(rec(data))["image"] is data
    assert cleaner.report() == {"rewritten": 0, "unchanged": 1}


def test_rewriting_cleaners_drop_undecodable_bytes_with_a_reason(host):
    for name, options in (("image.convert", {}), ("image.resize", {"size": 8}),
                          ("image.equalize", {})):
        with pytest.raises(privet.DropRecord) as info:
            host.make("cleaner", name, options).clean(rec(b"nope"))
        assert info.value.reason == "undecodable_image"


@pytest.mark.parametrize("aspect, size", [("pad", (32, 32)), ("crop", (32, 32)),
                                          ("stretch", (32, 32)), ("keep", (48, 32))])
def test_resize_aspect_policies_give_the_asked_size(host, images, aspect, size):
    cleaner = host.make("cleaner", "image.resize", {"size": 32, "aspect": aspect})
    img = decoded(cleaner.clean(rec(images.png(96, 64))))
    assert img.size == size


def test_resize_pad_fills_the_border_and_keeps_the_picture_centred(host, images):
    wide = images.save(Image.new("RGB", (80, 40), (200, 10, 10)))
    cleaner = host.make("cleaner", "image.resize", {"size": 40, "aspect": "pad",
                                                    "fill": [0, 0, 255]})
    img = decoded(cleaner.clean(rec(wide)))
    assert img.getpixel((20, 2)) == (0, 0, 255)  # top band: fill
    assert img.getpixel((20, 20)) == (200, 10, 10)  # middle: the picture


def test_resize_jpeg_output_and_custom_height(host, images):
    cleaner = host.make("cleaner", "image.resize", {"size": 30, "height": 20, "aspect": "crop",
                                                    "format": "jpeg", "quality": 80})
    img = decoded(cleaner.clean(rec(images.png(90, 90))))
    assert img.format == "JPEG" and img.size == (30, 20)


def test_resize_keep_with_height_is_a_config_error(host):
    with pytest.raises(privet.ConfigError, match="aspect 'keep'"):
        host.make("cleaner", "image.resize", {"size": 32, "height": 10, "aspect": "keep"})


@pytest.mark.parametrize("method, gain", [("hist", 3.0), ("clahe", 1.15)])
def test_equalize_spreads_a_low_contrast_histogram(host, images, method, gain):
    ramp = np.tile(np.linspace(100, 140, 64).astype(np.uint8), (64, 1))
    data = images.save(Image.fromarray(np.stack([ramp] * 3, axis=-1)))
    out = np.asarray(decoded(host.make("cleaner", "image.equalize", {"method": method})
                             .clean(rec(data))))
    assert out.shape == (64, 64, 3)
    assert out.std() > gain * ramp.std()  # CLAHE limits the gain by design
    # Equalised on lightness only: grey stays grey (no colour cast).
    assert np.abs(out[..., 0].astype(int) - out[..., 2].astype(int)).max() <= 3


def test_equalize_works_on_grey_images(host, images):
    ramp = np.tile(np.linspace(60, 90, 32).astype(np.uint8), (32, 1))
    out = decoded(host.make("cleaner", "image.equalize", {"method": "hist"})
                  .clean(rec(images.save(Image.fromarray(ramp)))))
    assert out.mode == "L"
    assert np.asarray(out).max() - np.asarray(out).min() > 200
