"""A real S3 API on loopback for the object-store tests: moto's server, fake credentials.

``s3_endpoint`` (from ``privet.testing``) starts ``moto.server.ThreadedMotoServer`` once
per session on 127.0.0.1 (random port; nothing leaves the machine). ``s3`` gives each test its own bucket, the
AWS_* variables that point the SDK at the server (``monkeypatch``ed for in-process code,
``s3.env`` for subprocesses), and a private staging folder for local working copies.
The secret key is a marker: tests grep every written file and object for it.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for remote_support
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))  # for engine_support

from remote_support import ACCESS_KEY, SECRET_KEY  # noqa: E402

from privet.testing import privet_host  # noqa: E402,F401  (a host with the core's built-ins)

_buckets = itertools.count(1)


# ``s3_endpoint`` (moto's server on 127.0.0.1, once per session) comes from privet.testing.


class S3:
    """One bucket on the loopback server, with boto3 to look at it from outside."""

    def __init__(self, endpoint: str, folder: Path) -> None:
        import boto3

        self.endpoint = endpoint
        self.bucket = f"privet-test-{os.getpid()}-{next(_buckets)}"
        self.folder = folder
        self.env = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                    "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL_S3": endpoint,
                    "AWS_EC2_METADATA_DISABLED": "true",
                    "PRIVET_STAGING_DIR": str(folder / "staging")}
        self.client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                                   aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)
        self.client.create_bucket(Bucket=self.bucket)

    def url(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{key}".rstrip("/")

    def put(self, key: str, data: bytes) -> str:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data)
        return self.url(key)

    def get(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def keys(self, prefix: str = "") -> list[str]:
        """Object keys under ``prefix`` (pyarrow's empty "folder/" objects left out)."""
        out = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            out.extend(o["Key"] for o in page.get("Contents", []) if not o["Key"].endswith("/"))
        return sorted(out)

    def cli(self, *args: str, env: dict[str, str] | None = None,
            timeout: float = 180) -> subprocess.CompletedProcess:
        """The real launcher, pointed at this server, with no installed plugins."""
        base = {k: v for k, v in os.environ.items() if not k.startswith(("PRIVET_", "AWS_"))}
        base.update(self.env, PRIVET_LOAD_PLUGINS="", XDG_CACHE_HOME=str(self.folder / "xdg-cache"))
        return subprocess.run([*launcher(), *args], env={**base, **(env or {})}, cwd=self.folder,
                              capture_output=True, text=True, timeout=timeout)


def launcher() -> list[str]:
    script = Path(sys.executable).with_name("privet")
    return [str(script)] if script.exists() else [sys.executable, "-m", "privet"]


@pytest.fixture
def s3(s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A fresh bucket; the AWS_* variables set for in-process code too."""
    from privet import objectstore

    store = S3(s3_endpoint, tmp_path)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    for name, value in store.env.items():
        monkeypatch.setenv(name, value)
    objectstore.configure(None)
    yield store
    objectstore.configure(None)


@pytest.fixture(scope="module")
def module_s3(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> S3:
    """A bucket shared by the tests of one module (for one reference run they compare to)."""
    return S3(s3_endpoint, tmp_path_factory.mktemp("s3"))


@pytest.fixture
def privet_cli(s3: S3) -> Callable[..., subprocess.CompletedProcess]:
    return s3.cli
