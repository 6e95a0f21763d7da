"""Reading images for ``privet predict``: a file, a folder, or a listing of paths.

Each input comes with its location (the file's path, or ``list.csv:3``) so that an
unreadable one becomes an error entry naming it while the others are predicted. A file
that resolves outside the folder or listing's folder (a symlink, ``..``) is an
``outside_root`` error entry and is never opened. No
decoding here: the bundle's cleaners and the model's ``encode_inputs`` do that.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import privet
from privet.io import outside_root

from .sources import IMAGE_SUFFIXES

LISTING_SUFFIXES = (".jsonl", ".jsonl.gz", ".ndjson", ".csv", ".csv.gz")
Located = tuple[str, "privet.Record | privet.BadRecord"]


def _is_listing(path: Path) -> bool:
    return path.name.lower().endswith(LISTING_SUFFIXES)


def _image(file: Path, rel: str, field: str) -> privet.Record | privet.BadRecord:
    try:
        return {field: file.read_bytes(), "path": rel}
    except FileNotFoundError:
        return privet.BadRecord("missing_file", rel)
    except OSError as err:
        return privet.BadRecord("unreadable_file", rel, str(err.strerror or err))


def read_image_inputs(path: Path, field: str = "image") -> Iterator[Located]:
    """``(location, record)`` with the image's bytes in ``field`` and its ``path``."""
    if not path.exists():
        raise privet.UsageError(f"input not found: {path}; pass an image, a folder of images, "
                                f"or a .csv/.jsonl file with a 'path' column")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        if not files:
            raise privet.UsageError(f"{path}: the folder holds no files to predict")
        for file in files:
            rel = file.relative_to(path).as_posix()
            if outside_root(file, path):
                yield rel, privet.BadRecord("outside_root", rel, f"resolves outside {path}; not read")
            elif file.suffix.lower() in IMAGE_SUFFIXES:
                yield rel, _image(file, rel, field)
            else:
                yield rel, privet.BadRecord("unsupported_extension", rel,
                                            f"not one of {', '.join(IMAGE_SUFFIXES)}")
        return
    if _is_listing(path):
        from privet.io import read_records  # imported lazily: core's JSONL/CSV reader

        for location, item in read_records(path):
            if isinstance(item, privet.BadRecord) or field in item:
                yield location, item
                continue
            rel = item.get("path")
            if not isinstance(rel, str) or not rel:
                yield location, privet.BadRecord("missing_path", location,
                                                 "each row needs a 'path' to an image")
                continue
            if outside_root(path.parent / rel, path.parent):
                yield location, privet.BadRecord("outside_root", location,
                                                 f"{rel} resolves outside {path.parent}; not read")
                continue
            image = _image(path.parent / rel, rel, field)
            if isinstance(image, privet.BadRecord):
                yield location, privet.BadRecord(image.reason, location, rel)
            else:
                yield location, {**item, **image}
        return
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise privet.UsageError(f"{path}: not an image ({', '.join(IMAGE_SUFFIXES)}), a folder "
                                f"or a .csv/.jsonl listing")
    yield path.name, _image(path, path.name, field)
