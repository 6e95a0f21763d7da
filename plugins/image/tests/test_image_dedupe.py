"""image.dedupe: near-duplicates dropped, the training copy kept, cleaning idempotent."""

from __future__ import annotations

import io

import pytest
from PIL import Image

import privet
from privet_image.imaging import dhash


def rec(data: bytes, path: str) -> dict:
    return {"image": data, "label": "x", "path": path}


def blocky(images, seed: int) -> bytes:
    """A picture of coarse blocks (noise upscaled): its hash survives recompression."""
    return images.save(images.noise(6, 6, seed).resize((96, 96), Image.Resampling.NEAREST))


def is_dropped(cleaner, record) -> bool:
    try:
        cleaner.clean(record)
    except privet.DropRecord as drop:
        assert drop.reason == "duplicate" and drop.bad is False  # filtered, not broken
        return True
    return False


def test_dhash_is_stable_under_rescaling_and_differs_between_pictures(images):
    a = dhash(Image.open(io.BytesIO(blocky(images, 1))))
    a_small = dhash(Image.open(io.BytesIO(blocky(images, 1))).resize((40, 40)))
    b = dhash(Image.open(io.BytesIO(blocky(images, 2))))
    assert bin(a ^ a_small).count("1") <= 4
    assert bin(a ^ b).count("1") > 12


def test_exact_duplicates_are_dropped_and_distinct_images_kept(host, images):
    cleaner = host.make("cleaner", "image.dedupe")
    cleaner.fit([])
    assert not is_dropped(cleaner, rec(images.png(seed=1), "a/1.png"))
    assert not is_dropped(cleaner, rec(images.png(seed=2), "a/2.png"))
    assert is_dropped(cleaner, rec(images.png(seed=1), "b/copy.png"))
    assert cleaner.report() == {"hashed": 3, "duplicates": 1}


def test_near_duplicates_need_a_distance(host, images):
    original, copy = blocky(images, 5), images.save(
        Image.open(io.BytesIO(blocky(images, 5))).resize((50, 50)), "JPEG", quality=60)
    exact = host.make("cleaner", "image.dedupe")
    near = host.make("cleaner", "image.dedupe", {"max_distance": 6})
    for cleaner in (exact, near):
        cleaner.fit([rec(original, "train/a.png")])
    distance = bin(dhash(Image.open(io.BytesIO(original)))
                   ^ dhash(Image.open(io.BytesIO(copy)))).count("1")
    assert 0 < distance <= 6
    assert not is_dropped(exact, rec(copy, "val/a_small.jpg"))
    assert is_dropped(near, rec(copy, "val/a_small.jpg"))
    assert not is_dropped(near, rec(blocky(images, 6), "val/other.png"))


def test_the_training_copy_wins_whatever_the_cleaning_order(host, images):
    cleaner = host.make("cleaner", "image.dedupe")
    train = rec(images.png(seed=7), "train/a.png")
    val = rec(images.png(seed=7), "val/a.png")
    cleaner.fit([train])
    assert is_dropped(cleaner, val)  # cleaned before the training record
    assert not is_dropped(cleaner, train)


def test_cleaning_the_same_record_twice_keeps_it(host, images):
    cleaner = host.make("cleaner", "image.dedupe", {"max_distance": 3})
    record = rec(images.png(seed=8), "a/1.png")
    cleaner.fit([record])
    assert not is_dropped(cleaner, record)
    assert not is_dropped(cleaner, record)
    other = rec(images.png(seed=9), "val/9.png")
    assert not is_dropped(cleaner, other)
    assert not is_dropped(cleaner, other)


def test_duplicates_within_the_training_split_keep_the_first(host, images):
    cleaner = host.make("cleaner", "image.dedupe")
    first, second = rec(images.png(seed=3), "a/1.png"), rec(images.png(seed=3), "a/2.png")
    cleaner.fit([first, second])
    assert is_dropped(cleaner, second)
    assert not is_dropped(cleaner, first)


def test_undecodable_images_are_dropped_with_their_own_reason(host):
    cleaner = host.make("cleaner", "image.dedupe")
    cleaner.fit([rec(b"junk", "a/junk.png")])  # fit skips it, clean reports it
    with pytest.raises(privet.DropRecord, match="undecodable_image"):
        cleaner.clean(rec(b"junk", "a/junk.png"))


def test_hash_size_is_validated(host):
    with pytest.raises(privet.ConfigError, match="hash_size must be between 2 and 8"):
        host.make("cleaner", "image.dedupe", {"hash_size": 16})
