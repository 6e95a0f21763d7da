"""Image sources: a folder with one subfolder per class, or a CSV/JSONL manifest.

Records hold the encoded file bytes (``image``), the class (``label``, a string) and
the file's path relative to the dataset root (``path``); decoding happens later, in
the cleaners and in DataLoader workers. No Pillow, numpy or torch here: reading bytes
needs none of them, and ``privet plugins`` imports this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Literal, Optional

import attrs

import privet
from privet import OptionValueError, existing_path, positive
from privet.io import (file_size, is_remote, join_path, list_tree, outside_root, read_bytes,
                        read_csv, read_jsonl)

#: File suffixes read as images by default (lower case).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
#: Split values a manifest may use, and what the engine's ``field`` split expects.
SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val",
               "validation": "val", "dev": "val", "test": "test", "testing": "test"}


def _suffixes(_instance: object, attribute: attrs.Attribute, value: list[str]) -> None:
    if not value:
        raise OptionValueError(f"{attribute.name} must name at least one suffix, e.g. ['.png']",
                               attribute.name)
    for s in value:
        if not s.startswith("."):
            raise OptionValueError(f"{attribute.name}: suffix {s!r} must start with a dot, "
                                   f"e.g. '.png'", attribute.name)


def _folder(_instance: object, attribute: attrs.Attribute, value: Path) -> None:
    if not is_remote(value) and value.exists() and not value.is_dir():
        raise OptionValueError(f"{str(value)!r} is not a folder; image.folder needs a folder "
                               f"with one subfolder per class", attribute.name)


def _read_bytes(path: str, limit: int) -> tuple[bytes | None, str]:
    """The file's (or ``s3://`` object's) bytes, or None and the reason it cannot be read.
    The size is checked first (a HEAD request for an object) so a huge one is never read."""
    try:
        size = file_size(path)
        if size > limit:
            return None, f"file_too_large:{size} bytes > max_file_bytes {limit}"
        return read_bytes(path), ""
    except FileNotFoundError:
        return None, "missing_file:"
    except OSError as err:
        return None, f"unreadable_file:{err.strerror or err}"


def _outside(path: str | Path, root: str | Path, where: str) -> privet.BadRecord:
    return privet.BadRecord("outside_root", where, f"{path} resolves outside {root}; not read "
                                                   f"(set follow_symlinks: true to read it)")


def _bad(why: str, location: str) -> privet.BadRecord:
    reason, _, detail = why.partition(":")
    return privet.BadRecord(reason, location, detail)


def _check_decode(mode: str) -> None:
    """``decode: gpu`` on a machine without CUDA fails before the data is prepared (the
    run checks its device again before training, see gpu_decode.configure)."""
    if mode != "cpu":
        from .gpu_decode import check_cuda

        check_cuda(mode, None)


class ImageFolder(privet.Source):
    """A folder with one subfolder per class (``root/cat/1.jpg`` -> label ``cat``).

    Files in nested folders belong to their top-level class folder. Hidden files are
    skipped; other files whose suffix is not in ``extensions`` and files lying directly
    in ``root`` are reported as bad records (``unsupported_extension``,
    ``no_class_folder``) so that nothing is left out silently.
    """

    @attrs.define(frozen=True)
    class Options:
        root: Path = attrs.field(validator=[existing_path, _folder])
        extensions: list[str] = attrs.field(factory=lambda: list(IMAGE_SUFFIXES),
                                            validator=_suffixes)
        #: Files per shard: shards are the unit the engine spreads over ranks and workers.
        files_per_shard: int = attrs.field(default=1000, validator=positive)
        #: Larger files become ``file_too_large`` bad records instead of filling memory.
        max_file_bytes: int = attrs.field(default=64 * 2**20, validator=positive)
        #: Read files that are symlinks to places outside ``root`` (default: an
        #: ``outside_root`` bad record, never read).
        follow_symlinks: bool = False
        #: Where images are decoded: ``cpu`` (Pillow in the DataLoader workers), ``gpu``
        #: (JPEG batches on the GPU with torchvision's nvjpeg decoder, augmenters there
        #: too) or ``dali`` (NVIDIA DALI's decoder where installed). gpu and dali need CUDA.
        decode: Literal["cpu", "gpu", "dali"] = "cpu"

    def _refused(self, rel: str) -> bool:
        root = self.options.root
        return not self.options.follow_symlinks and outside_root(join_path(root, rel), root)

    def _listing(self) -> list[str]:
        """Every non-hidden file under root (a folder or an ``s3://`` prefix), as sorted
        paths relative to root (walked, or listed, once)."""
        cached = getattr(self, "_listing_cache", None)
        if cached is None:
            cached = self._listing_cache = list_tree(self.options.root)
        return cached

    def shards(self) -> list[privet.Shard]:
        _check_decode(self.options.decode)
        listing = self._listing()
        if not listing:
            raise privet.DataError(f"{self.options.root}: no files found; image.folder needs one "
                                   f"subfolder per class holding the images")
        n = self.options.files_per_shard
        return [privet.Shard(join_path(self.options.root, ""), i, min(i + n, len(listing)))
                for i in range(0, len(listing), n)]

    def files(self) -> list[str]:
        _check_decode(self.options.decode)  # the first call of a run: fail before any work
        root = self.options.root
        return [join_path(root, p) for p in self._listing() if not self._refused(p)]

    def read(self, shard: privet.Shard) -> Iterator[privet.Record | privet.BadRecord]:
        root = shard.path
        listing = self._listing()[shard.start:shard.end]
        suffixes = {s.lower() for s in self.options.extensions}
        for rel in listing:
            if "/" not in rel:
                yield privet.BadRecord("no_class_folder", rel,
                                       "files must lie in a subfolder named for their class")
                continue
            if Path(rel).suffix.lower() not in suffixes:
                yield privet.BadRecord("unsupported_extension", rel,
                                       f"suffix not in extensions {sorted(suffixes)}")
                continue
            if self._refused(rel):
                yield _outside(join_path(root, rel), root, rel)
                continue
            data, why = _read_bytes(join_path(root, rel), self.options.max_file_bytes)
            if data is None:
                yield _bad(why, rel)
                continue
            yield {"image": data, "label": rel.split("/", 1)[0], "path": rel}


class Manifest(privet.Source):
    """A CSV or JSONL file listing images: a path, a label and optionally a split.

    Paths are relative to ``root`` (default: the manifest's folder). Each row becomes a
    record ``{image, label, path}``, plus ``split`` (``train``/``val``/``test``) when the
    manifest has a split column, for ``data.split: {method: field, field: split}``. Rows
    with a missing file, label or split become bad records naming the manifest line.
    """

    @attrs.define(frozen=True)
    class Options:
        path: Path = attrs.field(validator=existing_path)
        root: Optional[Path] = attrs.field(default=None, validator=existing_path)
        #: ``auto`` picks from the suffix (``.csv``, ``.jsonl``, optionally ``.gz``).
        format: Literal["auto", "csv", "jsonl"] = "auto"
        path_field: str = "path"
        label_field: str = "label"
        split_field: str = "split"
        delimiter: str = ","
        max_file_bytes: int = attrs.field(default=64 * 2**20, validator=positive)
        #: Read image paths that leave ``root`` (``..``, absolute paths, symlinks to
        #: elsewhere); by default such a row is an ``outside_root`` bad record.
        follow_symlinks: bool = False
        #: Where images are decoded: ``cpu`` (Pillow in the DataLoader workers), ``gpu``
        #: (JPEG batches on the GPU with torchvision's nvjpeg decoder, augmenters there
        #: too) or ``dali`` (NVIDIA DALI's decoder where installed). gpu and dali need CUDA.
        decode: Literal["cpu", "gpu", "dali"] = "cpu"

        def __attrs_post_init__(self) -> None:
            if self.format == "auto" and self.kind is None:
                raise OptionValueError(f"cannot tell the format of {self.path.name!r} from its "
                                       f"suffix; set format: csv or format: jsonl", "format")

        @property
        def kind(self) -> str | None:
            if self.format != "auto":
                return self.format
            suffixes = [s.lower() for s in self.path.suffixes]
            if suffixes and suffixes[-1] == ".gz":
                suffixes.pop()
            last = suffixes[-1] if suffixes else ""
            return {".csv": "csv", ".tsv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}.get(last)

    def shards(self) -> list[privet.Shard]:
        _check_decode(self.options.decode)
        return [privet.Shard(join_path(self.options.path, ""))]

    def files(self) -> list[str]:
        """The manifest and every image it names (their content defines the data)."""
        _check_decode(self.options.decode)  # the first call of a run: fail before any work
        out = [join_path(self.options.path, "")]
        for _where, row in self._rows(self.options.path):
            rel = row.get(self.options.path_field) if isinstance(row, dict) else None
            if isinstance(rel, str) and rel.strip() and not self._refused(rel.strip()):
                out.append(join_path(self._root(), rel.strip()))
        return out

    def _refused(self, rel: str) -> bool:
        root = self._root()
        return not self.options.follow_symlinks and outside_root(join_path(root, rel), root)

    def _root(self) -> Path:
        return self.options.root or self.options.path.parent

    def _rows(self, path: str | Path) -> Iterator[tuple[str, dict | privet.BadRecord]]:
        """``(manifest:line, row)`` through :mod:`privet.io` (cells stay strings)."""
        if self.options.kind == "jsonl":
            return read_jsonl(path)
        return read_csv(path, delimiter=self.options.delimiter, parse_numbers=False)

    def read(self, shard: privet.Shard) -> Iterator[privet.Record | privet.BadRecord]:
        o = self.options
        manifest = shard.path  # a local file or an s3:// object, read through privet.io
        root = self._root()
        for where, row in self._rows(manifest):
            if isinstance(row, privet.BadRecord):
                yield row
                continue
            rel, label = row.get(o.path_field), row.get(o.label_field)
            if not isinstance(rel, str) or not rel.strip():
                yield privet.BadRecord("missing_path", where, f"no {o.path_field!r} value")
                continue
            if label is None or (isinstance(label, str) and not label.strip()):
                yield privet.BadRecord("missing_label", where, f"no {o.label_field!r} value")
                continue
            record: privet.Record = {"label": str(label).strip(), "path": rel.strip()}
            if o.split_field in row:
                raw = row[o.split_field]
                split = SPLIT_NAMES.get(str(raw).strip().lower()) if raw is not None else None
                if split is None:
                    yield privet.BadRecord("bad_split", where,
                                           f"{o.split_field}={raw!r}; use train, val or test")
                    continue
                record["split"] = split
            if self._refused(record["path"]):
                yield _outside(join_path(root, record["path"]), root, where)
                continue
            data, why = _read_bytes(join_path(root, record["path"]), o.max_file_bytes)
            if data is None:
                yield _bad(why, where)
                continue
            record["image"] = data
            yield record
