"""Reading records from files: the one JSONL/CSV reader of Privet, public for plugins.

The built-in sources, the text and image plugins' sources and ``privet predict`` all read
JSON Lines and CSV through this module, so a bad line gets the same answer everywhere:
a :class:`~privet.BadRecord` whose ``location`` is ``file:line`` and whose ``reason`` is
a stable key (``invalid_utf8``, ``malformed_json``, ``not_an_object``, ``bad_csv_header``,
``missing_column``, ``unreadable_row``, ``wrong_column_count``). Readers yield
``(location, record or BadRecord)``; they stream, so memory does not grow with the file.

It also holds the folder-walking rule every source follows: a file found in a folder
that is a symlink to somewhere outside that folder is never read unless the source's
``follow_symlinks`` option says so (:func:`outside_root`). Standard library only, plus
:mod:`privet.objectstore` for ``s3://`` paths: every reader here streams an object (by
ranged GETs) as it streams a local file, and a folder URL lists its objects.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import sys
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, Sequence

from .components import BadRecord, Record
from .errors import UsageError

__all__ = [
    "CSV_SUFFIXES", "JSONL_SUFFIXES", "Located", "expand_paths", "format_of", "input_files",
    "byte_ranges", "iter_lines", "iter_range_lines", "open_binary", "open_text", "outside_root",
    "read_csv", "read_file", "read_jsonl", "read_records", "FileListing", "ListedFiles",
    "ListedFilesSource", "is_remote", "join_path", "list_tree", "file_size", "read_bytes",
    "open_seekable",
]

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz")
CSV_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".tsv.gz")

Located = tuple[str, "Record | BadRecord"]
"""``(location, item)``: where a record came from (``data.csv:12``) and the record."""


# -- files -------------------------------------------------------------------------------------

def _remote(path: Any) -> bool:
    return str(path).startswith("s3:/")


def is_remote(path: Any) -> bool:
    """True for an ``s3://`` URL (also in the ``s3:/`` spelling ``pathlib.Path`` makes of it)."""
    return _remote(path)


def join_path(root: str | os.PathLike[str], rel: str) -> str:
    """``root/rel`` as a local path, or as a canonical ``s3://`` URL when root is one."""
    if _remote(root):
        from .objectstore import join

        return join(root, rel)
    return str(Path(root) / rel)


def list_tree(root: str | os.PathLike[str]) -> list[str]:
    """Every non-hidden file under a folder (or object under an ``s3://`` prefix), as
    sorted ``/``-separated paths relative to it; hidden folders are not entered. Locally
    symlinked folders are not walked (as ``os.walk``); a missing bucket is one error."""
    if _remote(root):
        from .objectstore import list_files, require_bucket, url_of

        base = url_of(root)
        require_bucket(base)
        rels = (url[len(base) + 1:] for url, _size in list_files(base))
        return sorted(r for r in rels if r and not any(p.startswith(".") for p in r.split("/")))
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        out.extend(os.path.relpath(os.path.join(dirpath, f), root) for f in filenames
                   if not f.startswith("."))
    return sorted(p.replace(os.sep, "/") for p in out)


def file_size(path: str | os.PathLike[str]) -> int:
    """Bytes in a file or object (one HEAD request); FileNotFoundError when there is none,
    so a source can check a size limit before reading anything."""
    if _remote(path):
        from .objectstore import exists, info, url_of

        url = url_of(path)
        if not exists(url):
            raise FileNotFoundError(2, "no such object", url)
        return info(url)[0]
    return os.stat(path).st_size


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    """The raw bytes of a file or object (never gunzipped: an image, a document)."""
    if _remote(path):
        from .objectstore import read_bytes as read_object, url_of

        return read_object(url_of(path))
    return Path(path).read_bytes()


def open_seekable(path: str | os.PathLike[str]) -> IO[bytes]:
    """A seekable binary handle for formats read out of order (Parquet footers and row
    groups): a local file, or an ``s3://`` object fetched by ranged GETs as it is read."""
    if _remote(path):
        from .objectstore import filesystem, retrying, split, url_of

        url = url_of(path)
        bucket, key = split(url)
        return retrying("read", url, lambda: filesystem().open_input_file(f"{bucket}/{key}"))
    return open(path, "rb")


def open_binary(path: str | os.PathLike[str], start: int = 0, end: int | None = None) -> IO[bytes]:
    """Bytes of a local file or an ``s3://`` object (``[start, end)``; ``.gz`` gunzipped whole)."""
    if _remote(path):
        from .objectstore import open_range

        fh: IO[bytes] = open_range(path, start, end)  # type: ignore[assignment]
        return gzip.GzipFile(fileobj=fh, mode="rb") if str(path).endswith(".gz") else fh
    if str(path).endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    fh = open(path, "rb")
    if start:
        fh.seek(start)
    return fh


def open_text(path: str | os.PathLike[str]) -> IO[str]:
    """Open a text file, transparently gunzipping ``.gz``; undecodable bytes raise."""
    return io.TextIOWrapper(open_binary(path), encoding="utf-8", errors="strict", newline="")


def iter_lines(path: str | os.PathLike[str]) -> Iterator[tuple[int, str | None]]:
    """Yield (line number, text) for each line, or (line number, None) if not UTF-8.

    Streams the file (``.gz`` is gunzipped): memory does not grow with its size.
    """
    with open_binary(path) as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError:
                yield lineno, None


def iter_range_lines(path: str | os.PathLike[str], start: int, end: int
                     ) -> Iterator[tuple[int, str | None]]:
    """(byte offset, text or None) of each line that *starts* in ``[start, end)``.

    The line a range starts inside belongs to the range before it, and the range's last
    line runs past ``end`` to its newline: ranges cut anywhere cover every line once, so
    several workers (or ranks) can stream one big file or object side by side.
    """
    begin = max(0, start - 1)
    with open_binary(path, begin) as fh:
        pos = begin
        if start > 0:
            pos += len(fh.readline())  # the end of a line that began before ``start``
        while pos < end:
            raw = fh.readline()
            if not raw:
                return
            try:
                yield pos, raw.decode("utf-8")
            except UnicodeDecodeError:
                yield pos, None
            pos += len(raw)


def byte_ranges(path: str, chunk: int) -> list[tuple[int, int | None]]:
    """``(start, end)`` ranges of at most ``chunk`` bytes covering ``path`` ([(0, None)]
    when it is small, compressed or ``chunk`` is 0)."""
    if chunk <= 0 or path.endswith(".gz"):
        return [(0, None)]
    if _remote(path):
        from .objectstore import info

        size = info(path)[0]
    else:
        size = os.stat(path).st_size
    if size <= chunk:
        return [(0, None)]
    return [(a, min(a + chunk, size)) for a in range(0, size, chunk)]


def outside_root(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> bool:
    """True when ``path`` (found under ``root``) resolves to a file outside ``root``.

    A symlink in a data folder may point anywhere on the machine (``/etc/shadow``, a
    colleague's private data); a source that walks a folder reads only what is really
    inside it unless its options say ``follow_symlinks: true``. ``..`` components and
    absolute paths are caught the same way.
    """
    if _remote(path) or _remote(root):
        return _outside_prefix(path, root)
    try:
        real = Path(path).resolve(strict=False)
        base = Path(root).resolve(strict=False)
    except (OSError, RuntimeError):  # a symlink loop: nothing to read inside root either
        return True
    return real != base and base not in real.parents


def _outside_prefix(path: Any, root: Any) -> bool:
    """An object store has no symlinks, but a name (a manifest row) may still climb out of
    its prefix with ``..`` or name another place altogether."""
    if not (_remote(path) and _remote(root)):
        return True
    from .objectstore import url_of

    p, r = url_of(path), url_of(root)
    return ".." in p.split("/") or not (p == r or p.startswith(r + "/"))


def expand_paths(paths: Iterable[str | os.PathLike[str]], patterns: Sequence[str]
                 ) -> list[tuple[str, str | None]]:
    """``(file, root)`` for each file named directly (root ``None``: the user named it)
    and each file matching ``patterns`` in a named folder (root: that folder), sorted
    per folder. Files are listed, not opened; pair with :func:`outside_root`."""
    out: list[tuple[str, str | None]] = []
    for p in map(Path, paths):
        if _remote(p):
            out.extend(_expand_remote(p, patterns))
        elif p.is_dir():
            found = {str(x) for pattern in patterns for x in p.glob(pattern)
                     if x.is_file() or x.is_symlink()}
            out.extend((f, str(p)) for f in sorted(found))
        else:
            out.append((str(p), None))
    return out


def _expand_remote(path: Path, patterns: Sequence[str]) -> list[tuple[str, str | None]]:
    """An ``s3://`` object as itself, or a prefix as its matching objects (as a folder)."""
    from .errors import DataError
    from .objectstore import glob, is_file, require_bucket, url_of

    url = url_of(path)
    require_bucket(url)
    if is_file(url):
        return [(url, None)]
    found = glob(url, patterns)
    if not found:
        raise DataError(f"{url}: no object matching {', '.join(patterns)} under this prefix; "
                        f"check the URL")
    return [(f, url) for f in found]


class FileListing:
    """The files a source's ``paths`` name, each with the folder it was found in.

    Build it once per source (listing a big folder is not free). :meth:`refusal` is
    what a source's ``read`` yields, instead of opening the file, for a file that
    leaves its folder; :meth:`readable` is what its ``files()`` (the cache fingerprint,
    which hashes contents) may look at.
    """

    def __init__(self, paths: Iterable[str | os.PathLike[str]], patterns: Sequence[str],
                 *, follow_symlinks: bool = False) -> None:
        self.entries = expand_paths(paths, patterns)
        self.roots = dict(self.entries)
        self.follow_symlinks = follow_symlinks

    @property
    def files(self) -> list[str]:
        """Every file listed, readable or not (each becomes a shard, so it is reported)."""
        return [f for f, _root in self.entries]

    def readable(self) -> list[str]:
        return [f for f, _root in self.entries if self.refusal(f) is None]

    def refusal(self, path: str, where: str | None = None) -> BadRecord | None:
        """A BadRecord ``outside_root`` if ``path`` may not be read, else ``None``."""
        root = self.roots.get(path)
        if root is None or self.follow_symlinks or not outside_root(path, root):
            return None
        return BadRecord("outside_root", where or Path(path).name,
                         f"{path} resolves outside {root}; not read (set follow_symlinks: "
                         f"true to read files that symlinks point to)")


class ListedFiles:
    """Mixin for a source whose options hold ``paths`` and ``follow_symlinks``: the listing
    (made once) and ``files()`` for the cache fingerprint, which never hashes a file that
    leaves its folder. Subclasses set ``patterns`` (``("*.jsonl",)``)."""

    patterns: tuple[str, ...] = ()

    def listing(self) -> FileListing:
        cached = getattr(self, "_listing_cache", None)
        if cached is None:
            options = self.options  # type: ignore[attr-defined]
            cached = self._listing_cache = FileListing(
                options.paths, self.patterns, follow_symlinks=options.follow_symlinks)
        return cached

    def files(self) -> list[str]:
        return sorted(self.listing().readable())


class ListedFilesSource(ListedFiles):
    """:class:`ListedFiles` plus one shard per file and the ``outside_root`` refusal:
    a source implements only ``read_file(path)``, yielding ``(file:line, record)``.

    A source whose options have ``chunk_mb`` and which implements ``read_range(path,
    start, end)`` gets files (and ``s3://`` objects) bigger than that cut into byte-range
    shards, so preparation workers and ranks stream one big file side by side.
    """

    def shards(self) -> list[Any]:
        from .components import Shard

        chunk = int(float(getattr(self.options, "chunk_mb", 0) or 0) * (1 << 20))  # type: ignore[attr-defined]
        listing = self.listing()
        out = []
        for p in listing.files:
            if chunk <= 0 or listing.refusal(p) is not None:
                out.append(Shard(p))
                continue
            out.extend(Shard(p, a, b) for a, b in byte_ranges(p, chunk))
        return out

    def read_located(self, shard: Any) -> Iterator[Located]:
        """``(file:line, record or BadRecord)``: the engine names lines with it."""
        refusal = self.listing().refusal(shard.path)
        if refusal is not None:
            yield refusal.location, refusal
            return
        if shard.end is not None:
            yield from self.read_range(shard.path, shard.start, shard.end)
            return
        yield from self.read_file(shard.path)

    def read_range(self, path: str, start: int, end: int) -> Iterator[Located]:
        raise NotImplementedError(f"{type(self).__name__} cannot read byte ranges; set "
                                  f"chunk_mb: 0")

    def read(self, shard: Any) -> Iterator[Record | BadRecord]:
        for _where, item in self.read_located(shard):
            yield item

    def read_file(self, path: str) -> Iterator[Located]:
        raise NotImplementedError(f"{type(self).__name__} must implement read_file(path)")


# -- JSON Lines --------------------------------------------------------------------------------

def read_jsonl(path: str | os.PathLike[str], label: str | None = None, *,
               start: int = 0, end: int | None = None) -> Iterator[Located]:
    """One record (a JSON object) per non-blank line; bad lines become BadRecords.

    ``label`` names the file in locations (default: its file name). With ``end``, only
    the lines that start in bytes ``[start, end)`` (:func:`iter_range_lines`); their
    locations are ``file@OFFSET`` (the line's byte offset: counting the lines before it
    would mean reading the whole file up to there).
    """
    label = label or Path(path).name
    ranged = end is not None
    lines = iter_range_lines(path, start, end) if ranged else iter_lines(path)  # type: ignore[arg-type]
    for lineno, line in lines:
        where = f"{label}@{lineno}" if ranged else f"{label}:{lineno}"
        if line is None:
            yield where, BadRecord("invalid_utf8", where)
            continue
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as err:
            yield where, BadRecord("malformed_json", where, getattr(err, "msg", str(err)))
            continue
        if not isinstance(obj, dict):
            yield where, BadRecord("not_an_object", where, f"got {type(obj).__name__}")
            continue
        yield where, obj


# -- CSV ---------------------------------------------------------------------------------------

def parse_number(value: str) -> object:
    """``int`` or ``float`` if the cell reads as one, ``None`` if empty, else the text."""
    if value == "":
        return None
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


class _Lines:
    """Decodes a CSV file line by line, so one bad byte taints one row, not the file.

    An undecodable line keeps its shape (replacement characters) so quoting stays in
    step; its number is remembered and the row holding it becomes ``invalid_utf8``.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = path
        self.bad: set[int] = set()

    def __iter__(self) -> Iterator[str]:
        with open_binary(self.path) as fh:
            for lineno, raw in enumerate(fh, start=1):
                try:
                    yield raw.decode("utf-8")
                except UnicodeDecodeError:
                    self.bad.add(lineno)
                    yield raw.decode("utf-8", errors="replace")


def _header_problem(header: list[str], required: Sequence[str]) -> tuple[str, str] | None:
    if not header or all(not h.strip() for h in header):
        return "bad_csv_header", "the first line is empty; it must name the columns"
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        return "bad_csv_header", f"column names repeat: {', '.join(map(repr, dupes))}"
    missing = [c for c in required if c not in header]
    if missing:
        return "missing_column", f"no column {', '.join(map(repr, missing))} in header {header}"
    return None


def read_csv(path: str | os.PathLike[str], label: str | None = None, *, delimiter: str = ",",
             parse_numbers: bool = True, required: Sequence[str] = (),
             max_field_chars: int = 10_000_000) -> Iterator[Located]:
    """One record per row, keyed by the header row; bad rows become BadRecords.

    A header that cannot be read (not UTF-8, broken quoting, empty, repeated names) or
    that lacks a ``required`` column gives one BadRecord at ``file:1`` and the file is
    skipped. A row's location is the line it starts on. With ``parse_numbers`` cells
    become ``int``/``float`` where they read as numbers and empty cells ``None``;
    otherwise cells stay strings. ``.tsv`` files use a tab whatever ``delimiter`` says.
    """
    label = label or Path(path).name
    if str(path).lower().endswith((".tsv", ".tsv.gz")):
        delimiter = "\t"
    lines = _Lines(path)
    csv.field_size_limit(min(max_field_chars, sys.maxsize))
    reader = csv.reader(lines, delimiter=delimiter)
    head = f"{label}:1"
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as err:
        yield head, BadRecord("bad_csv_header", head, f"{err}; file skipped")
        return
    if lines.bad:
        yield head, BadRecord("bad_csv_header", head, "not UTF-8; file skipped")
        return
    if reader.line_num > 1:
        yield head, BadRecord("bad_csv_header", head, f"the header runs over {reader.line_num} "
                                                      f"lines (an unclosed quote?); file skipped")
        return
    header = [h.strip() for h in header]
    if header and header[0].startswith("\ufeff"):
        header[0] = header[0][1:]
    problem = _header_problem(header, required)
    if problem is not None:
        yield head, BadRecord(problem[0], head, f"{problem[1]}; file skipped")
        return
    first = reader.line_num + 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            where = f"{label}:{reader.line_num}"
            first = reader.line_num + 1
            yield where, BadRecord("unreadable_row", where, str(err))
            continue
        where, span = f"{label}:{first}", range(first, reader.line_num + 1)
        first = reader.line_num + 1
        if any(n in lines.bad for n in span):
            yield where, BadRecord("invalid_utf8", where)
            continue
        if not row or (len(row) == 1 and not row[0].strip() and len(header) > 1):
            continue
        if len(row) != len(header):
            yield where, BadRecord("wrong_column_count", where,
                                   f"{len(row)} cells, header has {len(header)}")
            continue
        yield where, ({k: parse_number(v) for k, v in zip(header, row)} if parse_numbers
                      else dict(zip(header, row)))


# -- whole inputs (privet predict) -------------------------------------------------------------

def format_of(path: str | os.PathLike[str]) -> str | None:
    """``jsonl`` or ``csv`` from the file name's suffix, else ``None``."""
    name = Path(path).name.lower()
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(CSV_SUFFIXES):
        return "csv"
    return None


def read_file(path: str | os.PathLike[str], label: str | None = None, **csv_options: Any
              ) -> Iterator[Located]:
    """Records of one JSONL or CSV file, picked by its suffix."""
    kind = format_of(path)
    if kind is None:
        raise UsageError(f"{path}: cannot read this kind of file; give a .jsonl or .csv file")
    if kind == "jsonl":
        yield from read_jsonl(path, label)
    else:
        yield from read_csv(path, label, **csv_options)


def input_files(path: str | os.PathLike[str], *, follow_symlinks: bool = False) -> list[Path]:
    """The readable files ``path`` names: itself, or the JSONL/CSV files in a folder.

    Hidden files are skipped, and so are files in the folder that resolve outside it
    unless ``follow_symlinks``.
    """
    path = Path(path)
    if not path.exists():
        raise UsageError(f"input not found: {path}; pass a .jsonl or .csv file or a folder of them")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and format_of(p) is not None
                       and not p.name.startswith(".")
                       and (follow_symlinks or not outside_root(p, path)))
        if not files:
            raise UsageError(f"{path}: no .jsonl or .csv files in this folder")
        return files
    if format_of(path) is None:
        raise UsageError(f"{path}: cannot read this kind of file; the model reads .jsonl or .csv "
                         f"records (its plugin may read other inputs)")
    return [path]


def read_records(path: str | os.PathLike[str]) -> Iterator[Located]:
    """``(location, record or BadRecord)`` for each line or row of a file or folder."""
    root = Path(path)
    for file in input_files(root):
        label = file.relative_to(root).as_posix() if root.is_dir() else file.name
        yield from read_file(file, label)
