"""`verify --aws`: the HTTP smoke test of the stack's `Url` output, against a tiny server on loopback."""

from __future__ import annotations

import contextlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tools.checks.deploy_checks import FAIL, PASS, http_smoke_checks
from tools.local_aws import cli as local_aws


@contextlib.contextmanager
def _server(status_by_path: dict[str, int]):
    """An HTTP server on 127.0.0.1 (a free port) answering each path with its status; records requests."""
    requests: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            requests.append(self.path)
            status = status_by_path.get(self.path, 404)
            body = b"ok\n" if status == 200 else b"no\n"
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", requests
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def _no_proxy_for_loopback(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


def test_a_service_answering_200_passes_both_checks():
    with _server({"/health": 200, "/": 200}) as (url, requests):
        checks = http_smoke_checks(url, attempts=3, timeout=2, delay=0)
    assert [c.status for c in checks] == [PASS, PASS], checks
    assert [c.name for c in checks] == [f"HTTP GET {url}health answers 200", f"HTTP GET {url} answers 200"]
    assert requests == ["/health", "/"]          # one attempt each: no retry once it answers


def test_a_service_answering_503_fails_after_the_bounded_retries():
    sleeps: list[float] = []
    with _server({"/health": 503, "/": 503}) as (url, requests):
        checks = http_smoke_checks(url, attempts=3, timeout=2, delay=0.5, sleep=sleeps.append)
    assert [c.status for c in checks] == [FAIL, FAIL], checks
    assert "503" in checks[0].detail and "3 attempts" in checks[0].detail
    assert requests == ["/health"] * 3 + ["/"] * 3
    assert sleeps == [0.5, 0.5] * 2              # between attempts, never after the last


def test_a_service_that_recovers_within_the_retries_passes():
    status = {"/health": 503, "/": 200}
    with _server(status) as (url, requests):
        calls = []

        def recover(seconds):
            calls.append(seconds)
            status["/health"] = 200

        checks = http_smoke_checks(url, attempts=3, timeout=2, delay=1, sleep=recover)
    assert [c.status for c in checks] == [PASS, PASS]
    assert requests == ["/health", "/health", "/"] and calls == [1]


def test_nothing_listening_fails_without_hanging():
    with _server({}) as (url, _):
        pass                                      # closed: the port now refuses connections
    checks = http_smoke_checks(url, attempts=2, timeout=1, delay=0)
    assert [c.status for c in checks] == [FAIL, FAIL]
    assert "2 attempts" in checks[1].detail


def test_verify_aws_runs_the_smoke_test(monkeypatch):
    seen = {}

    def fake_verify(session, configs, *, emulator, progress=None, http_smoke=False):
        seen.update(emulator=emulator, http_smoke=http_smoke)
        return [local_aws.StackReport(configs[0].name, configs[0].stack_name, status="CREATE_COMPLETE")]

    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setattr(local_aws, "verify", fake_verify)
    assert local_aws._verify_real_account(local_aws._configs("dev")) == 0
    assert seen == {"emulator": False, "http_smoke": True}
