"""What the user sees when the object store says no: one line, exit code 2, no secret.

Each failure is real: a bucket that does not exist, an IAM user without permissions (moto
enforcing IAM), a closed port, a server answering ``ExpiredToken``, and a store that goes
away in the middle of a run (after which the last complete checkpoint is still there and
resumes).
"""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from remote_support import SECRET_KEY, corpus, pipeline


def _main(argv: list[str], capsys: Any) -> tuple[int, str]:
    from privet.cli import main

    with pytest.raises(SystemExit) as info:
        main(argv)
    return info.value.code, capsys.readouterr().err


def _one_line(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert err.startswith("privet: error: ") and err.strip().count("\n") == 0, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    assert SECRET_KEY not in err


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("where", ["runs_dir", "data"])
def test_a_missing_bucket_is_one_line_naming_it(s3, tmp_path, capsys, where):
    s3.put("data/part-0.jsonl", corpus(30))
    missing = "s3://no-such-bucket-privet"
    path = pipeline(tmp_path, data=s3.url("data") if where == "runs_dir" else f"{missing}/data",
                    runs=f"{missing}/runs" if where == "runs_dir" else s3.url("runs"))
    code, err = _main(["run", str(path)], capsys)
    _one_line(code, err, "s3://no-such-bucket-privet: the bucket does not exist")


def test_access_denied_is_one_line(s3, tmp_path, capsys, monkeypatch):
    import boto3
    from moto.core.authorization import enable_iam_authentication

    s3.put("data/part-0.jsonl", corpus(30))
    iam = boto3.client("iam", endpoint_url=s3.endpoint, region_name="us-east-1")
    iam.create_user(UserName=f"outsider-{s3.bucket}")
    key = iam.create_access_key(UserName=f"outsider-{s3.bucket}")["AccessKey"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    path = pipeline(tmp_path, data=s3.url("data"), runs=s3.url("runs"))
    with enable_iam_authentication():  # a user with no policy: every S3 call is refused
        code, err = _main(["run", str(path)], capsys)
    _one_line(code, err, "access denied", s3.url())
    assert key["SecretAccessKey"] not in err


def test_a_wrong_endpoint_is_retried_then_one_line(s3, tmp_path, capsys):
    s3.put("data/part-0.jsonl", corpus(30))
    dead = f"http://127.0.0.1:{_closed_port()}"
    path = pipeline(tmp_path, data=s3.url("data"), runs=s3.url("runs"),
                    storage={"endpoint": dead, "retries": 2, "backoff_s": 0.01})
    code, err = _main(["run", str(path)], capsys)
    _one_line(code, err, "cannot be reached", dead, "gave up after 3 attempts")


class _ExpiredToken(BaseHTTPRequestHandler):
    """Answers every request as S3 does for an expired session token."""

    BODY = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>ExpiredToken</Code>'
            b"<Message>The provided token has expired.</Message></Error>")

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(400)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", "0" if self.command == "HEAD" else str(len(self.BODY)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(self.BODY)

    do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _answer

    def log_message(self, *args: Any) -> None:
        pass


def test_expired_credentials_are_one_line(s3, tmp_path, capsys):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ExpiredToken)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        path = pipeline(tmp_path, data=s3.url("data"), runs=s3.url("runs"),
                        storage={"endpoint": f"http://127.0.0.1:{server.server_address[1]}"})
        code, err = _main(["run", str(path)], capsys)
    finally:
        server.shutdown()
    _one_line(code, err, "the credentials have expired")


def test_a_store_lost_mid_run_fails_cleanly_and_the_last_checkpoint_resumes(s3, tmp_path, capsys,
                                                                           monkeypatch):
    s3.put("data/part-0.jsonl", corpus(160))
    monkeypatch.setenv("PRIVET_TEST_OUTAGE_AFTER", "2")
    monkeypatch.setenv("PRIVET_TEST_DEAD_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    path = pipeline(tmp_path, data=s3.url("data"), runs=s3.url("runs"), name="outage")
    code, err = _main(["run", str(path)], capsys)
    assert code == 2 and "gave up after 3 attempts" in err, err
    assert err.strip().splitlines()[-1].startswith("privet: error: "), err
    complete = sorted(k.split("/")[3] for k in s3.keys("runs/outage/checkpoints/")
                      if k.endswith("/state.json"))
    assert len(complete) == 2, complete  # the two before the outage, nothing after it

    monkeypatch.delenv("PRIVET_TEST_OUTAGE_AFTER")
    from privet.cli import main

    with pytest.raises(SystemExit) as info:
        main(["resume", s3.url("runs/outage")])
    err = capsys.readouterr().err
    assert info.value.code == 0, err
    assert f"resuming from {complete[-1]}" in err
