"""``privet serve`` as a user runs it: refusals are one line and exit 2, ``--help`` stays
light, and end to end a real process serves, audits, and survives SIGKILL verifiably."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from privet.testing import wait_for_server

from privet.cli import main

_PROBE = """\
import atexit, sys
atexit.register(lambda: print(sorted(m for m in ("fastapi", "uvicorn", "jwt", "limits",
                                     "prometheus_client") if m in sys.modules), file=sys.stderr))
from privet.cli import main
main(sys.argv[1:])
"""


def test_help_lists_serve_without_importing_the_serve_extra():
    result = subprocess.run([sys.executable, "-c", _PROBE, "--help"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0
    assert "\n  serve " in result.stdout
    assert result.stderr.strip().splitlines()[-1] == "[]"


def test_without_the_extra_serve_names_it_in_one_line(tmp_path):
    code = "import sys; sys.modules['fastapi'] = None\n" + _PROBE
    result = subprocess.run([sys.executable, "-c", code, "serve", str(tmp_path), "--insecure-no-auth"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[0] == "privet: error: privet serve needs fastapi: pip install 'privet[serve]'"


REFUSED = {  # arguments -> a phrase of the one-line error
    "no-auth": ([], "needs JWT auth and --roles-file"),
    "no-auth-public-host": (["--insecure-no-auth", "--host", "0.0.0.0"], "only on a loopback"),
    "plain-http-public-host": (["--roles-file", "r.yaml", "--host", "10.1.2.3"], "in clear"),
    "cert-without-key": (["--insecure-no-auth", "--tls-cert", "c.pem"], "go together"),
    "client-ca-without-cert": (["--insecure-no-auth", "--tls-client-ca", "ca.pem"], "needs --tls-cert"),
    "inputs-without-log": (["--insecure-no-auth", "--audit-inputs"], "need --audit-log"),
    "inputs-without-key": (["--insecure-no-auth", "--audit-inputs", "--audit-log", "a.jsonl"],
                           "never in clear"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_unsafe_setups_are_refused_in_one_line(case, tmp_path, capsys, monkeypatch):
    pytest.importorskip("fastapi")
    monkeypatch.delenv("PRIVET_JWT_SECRET", raising=False)
    args, phrase = REFUSED[case]
    with pytest.raises(SystemExit) as exit:
        main(["serve", str(tmp_path), *args])
    assert exit.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("privet: error: ") and phrase in err[0]


def test_a_taken_port_is_one_clear_error():
    pytest.importorskip("uvicorn")
    import socket

    from privet.errors import UsageError
    from privet.serve.server import listening_socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(UsageError, match="cannot listen on 127.0.0.1:"):
            listening_socket("127.0.0.1", taken.getsockname()[1])




@pytest.mark.slow
def test_a_served_bundle_audits_every_request_and_survives_sigkill(tiny_bundle, records, jwt_kit, tmp_path):
    import httpx

    from privet.audit import verify_log
    from privet.crypto import decode_key, new_key_text
    from privet.serve.server import free_port

    roles = tmp_path / "roles.yaml"
    roles.write_text("roles:\n  analyst: {models: [tiny], actions: [predict, list]}\n")
    audit_text = new_key_text()
    env = {**os.environ, "PRIVET_JWT_SECRET": jwt_kit.SECRET, "PRIVET_AUDIT_KEY": audit_text,
           "OMP_NUM_THREADS": "1"}
    port = free_port()
    log = tmp_path / "audit.jsonl"
    cmd = [sys.executable, "-m", "privet", "--plugin-dir", str(Path(__file__).parents[1]), "serve",
           str(tiny_bundle), "--port", str(port), "--roles-file", str(roles), "--jwt-audience",
           jwt_kit.AUDIENCE, "--audit-log", str(log), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_server(url, proc)
        auth = jwt_kit.auth()

        def one(i: int) -> int:
            try:
                return httpx.post(f"{url}/v1/models/tiny:predict", json={"records": records[i % 40:i % 40 + 1]},
                                  headers=auth, timeout=10).status_code
            except httpx.TransportError:
                return 0  # the server was killed under this request

        first = [one(i) for i in range(5)]
        assert first == [200] * 5
        assert verify_log(log, hmac_key=decode_key(audit_text, "key")).entries == 5
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = [pool.submit(one, i) for i in range(200)]
            time.sleep(0.3)
            proc.send_signal(signal.SIGKILL)
            codes = [a.result() for a in answers]
    finally:
        proc.kill()
        proc.wait(timeout=30)
    summary = verify_log(log, hmac_key=decode_key(audit_text, "key"))  # raises at a bad line
    answered = 5 + sum(c == 200 for c in codes)
    assert summary.entries >= answered  # every answer was audited before it left
    assert not summary.closed

