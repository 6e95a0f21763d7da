"""S3-compatible object stores (AWS S3, Ceph RGW, MinIO): URLs, settings, errors, retries.

Privet reaches object stores through one maintained filesystem layer, pyarrow's
``S3FileSystem`` (the AWS SDK for C++; pyarrow is already a dependency of the core), chosen
by measurement over fsspec/s3fs (see docs/object-storage.md). This module is the only one
that talks to it: :mod:`privet.storage` mirrors run folders through it, :mod:`privet.io`
reads sources through it, and every failure leaves here as one :class:`ObjectStoreError`
line naming the URL and what to do.

Where settings come from: a pipeline's ``storage:`` section (:func:`configure`), else the
usual AWS places: ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``, ``AWS_REGION`` /
``AWS_DEFAULT_REGION``, and the SDK's credential chain (``AWS_ACCESS_KEY_ID`` ...,
``AWS_PROFILE``, web identity, instance metadata). Credentials are never an option of
Privet, so no config copy, manifest, report or log can hold one.

Local paths of a pipeline are ``pathlib.Path`` objects, which fold ``s3://b/k`` into
``s3:/b/k``; :func:`is_remote` and :func:`url_of` accept both spellings.
"""

from __future__ import annotations

import fnmatch
import io
import os
import re
import time
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

import attrs

from .storage import StorageError

T = TypeVar("T")
SCHEME = "s3://"
#: Objects uploaded after every other one of their folder, deleted before them: a folder
#: is complete exactly when its marker exists (checkpoints, caches, bundles).
MARKERS = ("state.json", "meta.json", "bundle.json")
_CHUNK = 32 << 20  # bytes per ranged GET when streaming an object (fewer, larger requests)


class ObjectStoreError(StorageError):
    """An object store refused or could not be reached; one line, naming the URL."""


@attrs.define(frozen=True)
class StoreSettings:
    """How to reach the store: what ``storage:`` says, else the environment."""

    endpoint: str | None = None  # http(s)://host:port of Ceph RGW / MinIO; None: AWS
    region: str | None = None
    addressing: str | None = None  # "path" | "virtual"; None: the SDK's default
    retries: int = 4  # attempts after the first, on network errors
    backoff_s: float = 0.5  # first wait; doubles per attempt, capped at 8 s
    timeout_s: float = 30.0  # per request


#: The settings, passed to child processes (spawned preparation workers, torchrun
#: workers) as JSON; they hold no secret.
ENV = "PRIVET_STORAGE_SETTINGS"
_fs_cache: dict[tuple[Any, ...], Any] = {}


def _from_env() -> StoreSettings:
    import json

    try:
        return StoreSettings(**json.loads(os.environ.get(ENV) or "{}"))
    except (TypeError, ValueError):
        return StoreSettings()


_settings = _from_env()


def configure(section: Any = None) -> StoreSettings:
    """Use a pipeline's ``storage:`` section (attrs object or dict; None: environment only)."""
    import json

    global _settings
    if section is None:
        _settings = StoreSettings()
        os.environ.pop(ENV, None)
        return _settings
    get = section.get if isinstance(section, dict) else lambda k, d=None: getattr(section, k, d)
    _settings = StoreSettings(endpoint=get("endpoint"), region=get("region"),
                              addressing=get("addressing"),
                              retries=int(get("retries") if get("retries") is not None else 4),
                              backoff_s=float(get("backoff_s") if get("backoff_s") is not None else 0.5))
    os.environ[ENV] = json.dumps(attrs.asdict(_settings))
    return _settings


def settings() -> StoreSettings:
    return _settings


# -- URLs ----------------------------------------------------------------------------------------

def is_remote(path: Any) -> bool:
    """True for ``s3://bucket/key`` (and ``s3:/bucket/key``, what ``Path`` makes of it)."""
    return isinstance(path, (str, os.PathLike)) and str(os.fspath(path)).startswith("s3:/")


def url_of(path: Any) -> str:
    """The canonical ``s3://bucket/key`` spelling (no trailing ``/``)."""
    text = str(os.fspath(path))
    if not text.startswith("s3:/"):
        raise ValueError(f"not an s3:// URL: {text}")
    rest = text[len("s3:/"):].lstrip("/")
    return SCHEME + rest.rstrip("/")


def split(url: Any) -> tuple[str, str]:
    """``(bucket, key)`` of an ``s3://`` URL; a URL without a bucket is refused."""
    rest = url_of(url)[len(SCHEME):]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ObjectStoreError(f"{url}: no bucket in the URL; write s3://BUCKET/PREFIX")
    return bucket, key


def join(url: Any, *parts: str) -> str:
    out = url_of(url)
    for part in parts:
        part = str(part).strip("/")
        if part:
            out = f"{out}/{part}"
    return out


def _fs_path(url: Any) -> str:
    bucket, key = split(url)
    return f"{bucket}/{key}" if key else bucket


# -- the filesystem ------------------------------------------------------------------------------

def endpoint() -> str | None:
    """The endpoint in use: ``storage.endpoint``, else ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``."""
    return (_settings.endpoint or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL") or None)


def check_endpoint(value: str) -> str | None:
    """Why ``value`` is not a usable endpoint URL, or None. Credentials in it are refused:
    the pipeline file is copied into every run folder."""
    m = re.match(r"^(https?)://([^/@\s]+@)?([^/\s]+)/?$", value)
    if not m:
        return "write the endpoint as http(s)://HOST[:PORT], e.g. https://rgw.example.com"
    if m.group(2):
        return ("the endpoint holds credentials (user:secret@); give them through "
                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or an AWS profile instead")
    return None


def filesystem() -> Any:
    """The pyarrow S3 filesystem for the current settings (built once per settings)."""
    s = _settings
    key = (s, endpoint(), _credentials_id())
    fs = _fs_cache.get(key)
    if fs is not None:
        return fs
    from pyarrow import fs as pafs

    # allow_delayed_open: a small object is one PutObject instead of a 3-request multipart
    kwargs: dict[str, Any] = dict(connect_timeout=min(10.0, s.timeout_s), request_timeout=s.timeout_s,
                                  allow_delayed_open=True,
                                  retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=1))
    ep = endpoint()
    if ep:
        problem = check_endpoint(ep)
        if problem:
            raise ObjectStoreError(f"object store endpoint {ep.split('@')[-1]!r}: {problem}")
        scheme, _, hostport = ep.partition("://")
        kwargs.update(endpoint_override=hostport.rstrip("/"), scheme=scheme)
    region = s.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kwargs["region"] = region
    if s.addressing is not None:
        kwargs["force_virtual_addressing"] = s.addressing == "virtual"
    fs = _fs_cache[key] = pafs.S3FileSystem(**kwargs)
    return fs


def _credentials_id() -> str:
    """A digest of the credential variables: a new key or profile gets a new client (the
    SDK reads them when the filesystem is made); never stored or shown."""
    import hashlib

    names = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
             "AWS_REGION", "AWS_DEFAULT_REGION")
    return hashlib.sha256("\0".join(os.environ.get(n, "") for n in names).encode()).hexdigest()


# -- errors and retries --------------------------------------------------------------------------

_NETWORK = ("network_connection", "curlcode", "could not connect", "couldn't connect",
            "connection refused", "timed out", "timeout", "resolve host", "connection reset",
            "broken pipe", "slow_down", "slowdown", "internal_failure", "service_unavailable",
            "http status 500", "http status 502", "http status 503", "http status 504")


def is_network_error(err: BaseException) -> bool:
    text = str(err).lower()
    return isinstance(err, OSError) and any(w in text for w in _NETWORK)


def explain(err: BaseException, url: str, action: str) -> ObjectStoreError:
    """One line for ``err`` raised while ``action``-ing ``url``; secrets never appear."""
    if isinstance(err, ObjectStoreError):
        return err
    text = " ".join(str(err).split()).lower()
    where = endpoint() or "AWS S3"
    bucket = split(url)[0] if is_remote(url) else "?"
    if "no_such_bucket" in text or "nosuchbucket" in text or "bucket does not exist" in text:
        return ObjectStoreError(f"s3://{bucket}: the bucket does not exist at {where}; create it "
                                f"or fix the URL (and storage.endpoint)")
    if "expired" in text:
        return ObjectStoreError(f"cannot {action} {url}: the credentials have expired; refresh "
                                f"them (a new session token, 'aws sso login') and resume")
    if any(w in text for w in ("access_denied", "accessdenied", "invalidaccesskeyid",
                               "signaturedoesnotmatch", "http status 403", "forbidden")):
        return ObjectStoreError(f"cannot {action} {url}: access denied; check the credentials "
                                f"(AWS_ACCESS_KEY_ID/AWS_PROFILE) and the bucket policy")
    if is_network_error(err):
        return ObjectStoreError(f"cannot {action} {url}: the object store at {where} cannot be "
                                f"reached ({_short(err)}); check storage.endpoint and the network")
    if isinstance(err, FileNotFoundError) or "path does not exist" in text:
        return ObjectStoreError(f"{url}: no such object")
    return ObjectStoreError(f"cannot {action} {url}: {_short(err)}")


def _short(err: BaseException) -> str:
    text = " ".join(str(err).split())
    text = re.sub(r"\(Request ID: [^)]*\)", "", text).strip()
    return text[:300] or type(err).__name__


def retrying(action: str, url: str, fn: Callable[[], T]) -> T:
    """``fn()``, retried with exponential backoff on network errors; then one clear error.

    Only network errors are retried: a missing bucket or a refusal will not get better.
    """
    s = _settings
    delay = s.backoff_s
    for attempt in range(s.retries + 1):
        try:
            return fn()
        except ValueError as err:  # pyarrow's ArrowInvalid: a name the store cannot take
            raise ObjectStoreError(f"cannot {action} {url}: {_short(err)}") from err
        except OSError as err:
            if not is_network_error(err):
                raise _diagnosed(err, url, action) from err
            if attempt == s.retries:
                failure = explain(err, url, action)
                raise ObjectStoreError(f"{failure} (gave up after {s.retries + 1} attempts)") from err
            time.sleep(delay)
            delay = min(delay * 2, 8.0)
    raise AssertionError("unreachable")


def _diagnosed(err: OSError, url: str, action: str) -> ObjectStoreError:
    """An answer without an error code (HEAD requests carry no body) is asked again with a
    listing, whose body names the cause (expired token, denied, no bucket)."""
    text = str(err).lower()
    vague = isinstance(err, FileNotFoundError) or ("aws error unknown" in text and "status 4" in text)
    if not vague or not is_remote(url):
        return explain(err, url, action)
    from pyarrow import fs as pafs

    bucket, _key = split(url)
    try:
        filesystem().get_file_info(pafs.FileSelector(bucket, recursive=False, allow_not_found=False))
    except OSError as probe:
        if "path does not exist" in str(probe).lower() or isinstance(probe, FileNotFoundError):
            return ObjectStoreError(f"s3://{bucket}: the bucket does not exist at "
                                    f"{endpoint() or 'AWS S3'}; create it or fix the URL "
                                    f"(and storage.endpoint)")
        return explain(probe, url, action)
    return explain(err, url, action)


# -- operations ----------------------------------------------------------------------------------

def info(url: str) -> tuple[int, str | None]:
    """``(size, etag)`` of an object: what a cache fingerprint needs, without reading it."""
    def head() -> tuple[int, str | None]:
        with filesystem().open_input_file(_fs_path(url)) as fh:
            meta = fh.metadata() or {}
            etag = meta.get("ETag") or meta.get(b"ETag")
            size = fh.size()
        if isinstance(etag, bytes):
            etag = etag.decode("ascii", "replace")
        return size, (etag.strip('"') if etag else None)

    return retrying("read", url, head)


def exists(url: str) -> bool:
    from pyarrow import fs as pafs

    kind = retrying("read", url, lambda: filesystem().get_file_info(_fs_path(url)).type)
    return kind != pafs.FileType.NotFound


def require_bucket(url: str) -> None:
    """One clear error now when ``url``'s bucket is missing, refused or unreachable."""
    from pyarrow import fs as pafs

    bucket, _key = split(url)
    kind = retrying("read", f"{SCHEME}{bucket}", lambda: filesystem().get_file_info(bucket).type)
    if kind == pafs.FileType.NotFound:
        raise ObjectStoreError(f"s3://{bucket}: the bucket does not exist at "
                               f"{endpoint() or 'AWS S3'}; create it or fix the URL "
                               f"(and storage.endpoint)")


def is_file(url: str) -> bool:
    from pyarrow import fs as pafs

    return retrying("read", url, lambda: filesystem().get_file_info(_fs_path(url)).type) == pafs.FileType.File


def list_files(url: str, *, recursive: bool = True) -> list[tuple[str, int]]:
    """``(url, size)`` of every object under prefix ``url``, sorted; [] if there is none."""
    from pyarrow import fs as pafs

    base = url_of(url)
    selector = pafs.FileSelector(_fs_path(base), recursive=recursive, allow_not_found=True)
    infos = retrying("list", base, lambda: filesystem().get_file_info(selector))
    bucket = split(base)[0]
    out = [(f"{SCHEME}{i.path}" if i.path.startswith(bucket + "/") else join(base, i.base_name), i.size)
           for i in infos if i.type == pafs.FileType.File]
    return sorted(out)


def children(url: str) -> list[str]:
    """Names directly under prefix ``url`` (objects and "folders")."""
    from pyarrow import fs as pafs

    base = url_of(url)
    selector = pafs.FileSelector(_fs_path(base), recursive=False, allow_not_found=True)
    infos = retrying("list", base, lambda: filesystem().get_file_info(selector))
    return sorted(i.base_name for i in infos)


def glob(url: str, patterns: Iterable[str]) -> list[str]:
    """Objects directly under prefix ``url`` whose names match a pattern (as ``Path.glob``)."""
    base = url_of(url)
    out = []
    for obj, _size in list_files(base, recursive=False):
        name = obj[len(base) + 1:]
        if "/" not in name and any(fnmatch.fnmatchcase(name, p) for p in patterns):
            out.append(obj)
    return sorted(set(out))


def read_bytes(url: str) -> bytes:
    def get() -> bytes:
        with filesystem().open_input_stream(_fs_path(url)) as fh:
            return fh.read()

    return retrying("read", url, get)


def put_bytes(url: str, data: bytes | bytearray | memoryview) -> None:
    """Write one object (a PUT is atomic: readers see the old object or the new one)."""
    def put() -> None:
        with filesystem().open_output_stream(_fs_path(url)) as fh:
            fh.write(data)

    retrying("write", url, put)


def put_file(local: str | os.PathLike[str], url: str) -> None:
    """Upload a local file as one object."""
    with open(local, "rb") as fh:
        data = fh.read()
    put_bytes(url, data)


def delete(url: str) -> None:
    retrying("delete", url, lambda: filesystem().delete_file(_fs_path(url)))


def delete_prefix(url: str) -> None:
    """Delete every object under ``url``, markers first: a half-deleted folder is never
    taken for a complete one."""
    objects = [u for u, _ in list_files(url)]
    for obj in objects:
        if obj.rsplit("/", 1)[-1] in MARKERS:
            delete(obj)
    if objects:  # then the rest in bulk (pyarrow may leave an empty "folder/" object)
        retrying("delete", url, lambda: filesystem().delete_dir(_fs_path(url)))


def upload_tree(local: str | os.PathLike[str], url: str, *, skip: Callable[[Path], bool] = lambda p: False
                ) -> list[str]:
    """Upload every file under folder ``local`` to prefix ``url``, marker objects last.

    Symlinks are not followed (a run's ``cache`` link stays local). Returns the names.
    """
    root = Path(local)
    files = [p for p in root.rglob("*") if p.is_file() and not p.is_symlink() and not skip(p)
             and not any((root / part).is_symlink() for part in p.relative_to(root).parents
                         if str(part) != ".")]
    files.sort(key=lambda p: (p.name in MARKERS, str(p)))
    names = []
    for p in files:
        rel = p.relative_to(root).as_posix()
        put_file(p, join(url, rel))
        names.append(rel)
    return names


def download(url: str, local: str | os.PathLike[str]) -> Path:
    """Copy one object to a local file (owner-only)."""
    from .storage import Storage

    target = Path(local)
    Storage(target.parent, cipher=None).write_bytes(target.name, read_bytes(url))
    return target


def download_tree(url: str, local: str | os.PathLike[str], *,
                  keep: Callable[[str], bool] = lambda rel: True) -> list[str]:
    """Copy every object under prefix ``url`` whose relative name ``keep`` accepts into
    folder ``local`` (files 0600, folders 0700); names that would leave it are refused."""
    base = url_of(url)
    names = []
    for obj, _size in list_files(base):
        rel = obj[len(base) + 1:]
        parts = rel.split("/")
        if not rel or any(p in ("", ".", "..") for p in parts):
            raise ObjectStoreError(f"{obj}: refused object name (it would leave {local})")
        if keep(rel):
            download(obj, Path(local, *parts))
            names.append(rel)
    return names


class RangeReader(io.RawIOBase):
    """Bytes ``[start, end)`` of an object as a file, fetched by ranged GETs of 32 MiB.

    Wrapped in an ``io.BufferedReader`` by :func:`open_range`, so ``readline`` works and
    several workers or ranks can stream their own slices of one big object.
    """

    def __init__(self, url: str, start: int = 0, end: int | None = None) -> None:
        super().__init__()
        self.url = url
        self._file = retrying("read", url, lambda: filesystem().open_input_file(_fs_path(url)))
        self.size = self._file.size()
        self.pos = start
        self.end = self.size if end is None else min(end, self.size)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self.end - self.pos)
        if n <= 0:
            return 0
        data = retrying("read", self.url, lambda: self._file.read_at(n, self.pos))
        buffer[:len(data)] = data
        self.pos += len(data)
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._file.close()
        super().close()


def open_range(url: Any, start: int = 0, end: int | None = None) -> io.BufferedReader:
    """A buffered binary reader of ``url``'s bytes ``[start, end)`` (the whole object by default)."""
    return io.BufferedReader(RangeReader(url_of(url), start, end), buffer_size=_CHUNK)


def fetch(url: Any, local_dir: str | os.PathLike[str]) -> Path:
    """A local copy of ``url`` inside ``local_dir``: the object itself, or the prefix as a
    folder (for commands whose readers need files: a bundle, predict inputs)."""
    url = url_of(url)
    name = url.rsplit("/", 1)[-1] or split(url)[0]
    target = Path(local_dir) / name
    if is_file(url):
        return download(url, target)
    if not download_tree(url, target):
        bucket, _key = split(url)
        if not exists(f"{SCHEME}{bucket}"):
            raise ObjectStoreError(f"s3://{bucket}: the bucket does not exist at "
                                   f"{endpoint() or 'AWS S3'}; create it or fix the URL")
        raise ObjectStoreError(f"{url}: no such object or prefix")
    return target


def publish(local: str | os.PathLike[str], url: Any) -> None:
    """Replace prefix ``url`` with local folder ``local`` (markers last), or upload one file."""
    url = url_of(url)
    if Path(local).is_dir():
        delete_prefix(url)
        upload_tree(local, url)
    else:
        put_file(local, url)
