"""``privet.testing``: an opt-in pytest plugin for plugin authors.

Enable it with ``pytest_plugins = ["privet.testing"]`` (or ``-p privet.testing``). It
gives a fresh plugin host holding only the core's built-ins plus what the test
registers, and a ``run_pipeline`` helper that runs a whole pipeline in a temp folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest

from .plugins import PluginHost


class TestHost(PluginHost):
    """A plugin host for tests: built-ins only, plus ``register_plugin(obj)`` and
    ``load_installed(NAME, ...)``."""

    __test__ = False  # not a test class, despite the name

    def load_installed(self, *names: str) -> None:
        """Load installed plugins by entry-point name (``"text"``, ``"image"``), through
        the same discovery as ``privet run``: no need to import a plugin's modules.

        Only the named plugins are imported; one that is missing or fails raises.
        """
        wanted = [n for n in names if not (n in self.infos and self.infos[n].status == "loaded")]
        if wanted:
            self.load_entry_points(only=wanted)
        self.require(names, key_path="load_installed")

    def make(self, kind: str, name: str, options: dict[str, Any] | None = None) -> Any:
        """Instantiate a component with options validated like a pipeline file's."""
        from .config import make_converter, structure

        entry = self.catalog.get(kind, name)
        opts = structure(make_converter(), options or {}, entry.cls.Options, prefix=name)
        return entry.cls(opts)


@attrs.define
class PipelineOutcome:
    """What ``run_pipeline`` returns: the run folder, its report, and the error if any."""

    run_dir: Path | None
    report: dict[str, Any]
    error: BaseException | None = None

    def assert_success(self) -> None:
        if self.error is not None:
            raise AssertionError(f"pipeline failed: {type(self.error).__name__}: {self.error}") from self.error
        status = self.report.get("status")
        assert status in ("completed", "stopped_early"), f"run status is {status!r}: {self.report}"


def make_test_host() -> TestHost:
    host = TestHost(strict=True)
    host.load_builtins()
    return host


@pytest.fixture
def privet_host() -> TestHost:
    """A fresh plugin host with the core's built-ins; register your plugin on it."""
    return make_test_host()


@pytest.fixture
def run_pipeline(privet_host: TestHost, tmp_path: Path):
    """Run a pipeline (a dict shaped like a pipeline file) with ``privet_host``'s plugins.

    ``run_pipeline(config, plugins=["text"])`` first loads those installed plugins into
    the host (see :meth:`TestHost.load_installed`), so a test can use another plugin's
    components without importing its modules.

    Returns a :class:`PipelineOutcome`; relative paths resolve against ``base_dir``
    (default: the test's ``tmp_path``), and runs are written under ``tmp_path/runs``.
    """

    def run(config: dict[str, Any], *, base_dir: Path | None = None,
            overrides: list[str] = (), plugins: list[str] = ()) -> PipelineOutcome:
        """``plugins`` names installed plugins to load first (``["text"]``)."""
        from .train.engine import run_from_config

        privet_host.load_installed(*plugins)
        config = dict(config)
        config.setdefault("runs_dir", str(tmp_path / "runs"))
        try:
            run_dir, report = run_from_config(config, host=privet_host,
                                              base_dir=base_dir or tmp_path,
                                              overrides=list(overrides))
        except Exception as err:  # the outcome carries it; assert_success re-raises
            return PipelineOutcome(None, {"status": "failed"}, err)
        return PipelineOutcome(run_dir, report)

    return run


def wait_for_server(url: str, proc: Any, timeout: float = 60) -> None:
    """Wait until a ``privet serve`` started as ``proc`` (a ``subprocess.Popen``) answers
    ``GET {url}/readyz`` with 200; fail with its stderr if it exits, or after ``timeout``."""
    import time

    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.communicate()[1] if proc.stderr else ""
            raise AssertionError(f"the server exited with {proc.returncode}: {err}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"the server at {url} did not become ready in {timeout:g} s")


class S3Bucket:
    """A fresh bucket on the loopback S3 server, seen through boto3 from outside Privet."""

    __test__ = False

    def __init__(self, client: Any) -> None:
        import uuid

        self.client = client
        self.name = f"privet-test-{uuid.uuid4().hex[:12]}"
        client.create_bucket(Bucket=self.name)

    def url(self, key: str = "") -> str:
        return f"s3://{self.name}/{key}".rstrip("/")

    def put(self, key: str, data: bytes) -> str:
        """One object; returns its ``s3://`` URL."""
        self.client.put_object(Bucket=self.name, Key=key, Body=data)
        return self.url(key)

    def upload(self, folder: Path, prefix: str) -> str:
        """Every file under ``folder`` (hidden ones too) as objects under ``prefix``."""
        for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
            self.put(f"{prefix}/{path.relative_to(folder).as_posix()}", path.read_bytes())
        return self.url(prefix)


@pytest.fixture(scope="session")
def s3_endpoint() -> Any:
    """A real S3 API on loopback: moto's server on 127.0.0.1 (random port), once per
    session; the test is skipped when ``moto[server]`` and ``boto3`` are not installed."""
    pytest.importorskip("moto.server")
    pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """An :class:`S3Bucket` of its own, with the ``AWS_*`` variables pointing Privet (and
    any SDK) at the loopback server with fake credentials."""
    import boto3

    from . import objectstore  # settings of an earlier in-process run must not leak in

    env = {"AWS_ACCESS_KEY_ID": "AKIAPRIVETTEST", "AWS_SECRET_ACCESS_KEY": "privet-test-secret",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL_S3": s3_endpoint,
           "AWS_EC2_METADATA_DISABLED": "true"}
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    objectstore.configure(None)
    yield S3Bucket(boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1",
                                aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                                aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"]))
    objectstore.configure(None)
