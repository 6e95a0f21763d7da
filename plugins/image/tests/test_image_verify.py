"""image.verify: every bad image dropped with its reason; repair and quarantine on request."""

from __future__ import annotations

import io

import pytest
from PIL import Image

import privet


def reason_of(cleaner, data: bytes, path: str = "x/img.png") -> str | None:
    try:
        cleaner.clean({"image": data, "label": "x", "path": path})
    except privet.DropRecord as drop:
        return drop.reason
    return None


@pytest.fixture
def verify(host):
    return host.make("cleaner", "image.verify")


def test_good_images_of_every_mode_pass_unchanged(verify, images):
    for i, data in enumerate((images.png(), images.jpeg(), images.cmyk_jpeg(),
                              images.rgba_png(), images.gray_png())):
        record = {"image": data, "label": "x", "path": f"x/{i}.img"}
        assert verify.clean(record) == record
    assert verify.report() == {"checked": 5, "repaired": 0, "quarantined": 0}


def test_report_counts_a_record_cleaned_twice_once(verify, images):
    """The engine cleans training records again for each cleaner that needs fitting."""
    record = {"image": images.png(), "label": "x", "path": "x/a.png"}
    verify.clean(record)
    verify.clean(record)
    assert verify.report()["checked"] == 1


@pytest.mark.parametrize("kind, reason", [
    ("empty", "empty_file"),
    ("text", "not_an_image"),
    ("truncated", "truncated_image"),
    ("bomb", "decompression_bomb"),
    ("crc", "corrupt_image"),
])
def test_bad_images_are_dropped_with_their_reason(verify, images, kind, reason):
    png = bytearray(images.png())
    png[len(png) // 2] ^= 0xFF  # inside the image data: the chunk checksum no longer matches
    data = {"empty": b"", "text": b"plain text named .png\n", "truncated": images.truncated_jpeg(),
            "bomb": images.bomb_png(), "crc": bytes(png)}[kind]
    assert reason_of(verify, data) == reason


def test_drop_detail_names_the_file_and_the_problem(verify, images):
    with pytest.raises(privet.DropRecord) as info:
        verify.clean({"image": images.bomb_png(), "path": "cats/huge.png"})
    assert info.value.detail.startswith("cats/huge.png: 100000x100000 = 10000000000 pixels")


def test_max_pixels_is_configurable_and_applies_to_real_images(host, images):
    big = images.big_blank_png(2000)  # 4 megapixels in a few kilobytes
    assert len(big) < 50_000
    assert reason_of(host.make("cleaner", "image.verify"), big) is None
    strict = host.make("cleaner", "image.verify", {"max_pixels": 1_000_000})
    assert reason_of(strict, big) == "decompression_bomb"


def test_pillow_limits_are_restored_after_checking(verify, images):
    before = Image.MAX_IMAGE_PIXELS
    reason_of(verify, images.bomb_png())
    reason_of(verify, images.png())
    assert Image.MAX_IMAGE_PIXELS == before


def test_min_side_drops_tiny_images_as_filtered_not_bad(host, images):
    cleaner = host.make("cleaner", "image.verify", {"min_side": 41})
    with pytest.raises(privet.DropRecord) as info:
        cleaner.clean({"image": images.png(48, 40), "path": "a.png"})
    assert info.value.reason == "too_small" and info.value.bad is False
    assert reason_of(cleaner, images.png(48, 41)) is None


def test_record_without_bytes_is_dropped(verify):
    with pytest.raises(privet.DropRecord, match="missing_image"):
        verify.clean({"label": "x", "path": "a.png"})


def test_truncated_jpeg_is_repaired_when_asked(host, images):
    cleaner = host.make("cleaner", "image.verify", {"repair_truncated": True})
    out = cleaner.clean({"image": images.truncated_jpeg(), "label": "x", "path": "a.jpg"})
    img = Image.open(io.BytesIO(out["image"]))
    assert img.format == "PNG" and img.size == (64, 64)
    img.load()
    assert cleaner.report()["repaired"] == 1
    # Repair is for truncation only: other damage is still dropped.
    assert reason_of(cleaner, b"not an image") == "not_an_image"


def test_quarantine_keeps_a_copy_of_each_dropped_file_by_reason(host, images, tmp_path):
    folder = tmp_path / "quarantine"
    cleaner = host.make("cleaner", "image.verify", {"quarantine": str(folder)})
    text = b"not an image"
    assert reason_of(cleaner, text, path="dogs/notes.png") == "not_an_image"
    assert reason_of(cleaner, images.truncated_jpeg(), path="../../etc/x.jpg") == "truncated_image"
    assert (folder / "not_an_image" / "dogs" / "notes.png").read_bytes() == text
    assert (folder / "truncated_image" / "etc" / "x.jpg").exists()  # cannot escape the folder
    assert cleaner.report()["quarantined"] == 2
