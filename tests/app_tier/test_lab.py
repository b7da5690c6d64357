"""The app tier for real: PostgreSQL, app copies and nginx on loopback, broken on purpose.

One lab per app and layout, shared by the tests of this module: the WSGI sample (gunicorn, the
default app) and the ASGI sample (uvicorn, named by config: rehearsal/asgi-app.toml through
envconfig and the stacks' mapper), each at stage 4 (nginx in front of 3 copies) and stage 1 (the
app alone). Each test leaves the lab as it found it.
"""

import json
import os
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from app_tier import lab as lab_module
from app_tier.lab import Lab, http_status, wait_for
from app_tier.loadgen import Load

pytestmark = pytest.mark.lab

COPIES = 3
CHEAP_WORK = "/work?n=2000"


# The ASGI app's secrets, as the rehearsal's config names them; on a server they are read at boot.
ASGI_SECRETS = {"API_TOKEN": "lab-token-7f3a", "SIGNING_KEY": "lab-signing-key-91c2"}
LAYOUTS = [("wsgi", 4), ("wsgi", 1), ("asgi", 4), ("asgi", 1)]
STAGE4 = [layout for layout in LAYOUTS if layout[1] == 4]


def layout_id(layout) -> str:
    return f"{layout[0]}-stage{layout[1]}"


def asgi_app():
    """The ASGI sample exactly as config names it: no Python names its start command."""
    from rehearsal.synth import stage2_config
    from stacks.config_mapping import app_spec

    return app_spec(stage2_config())


@pytest.fixture(scope="module", params=LAYOUTS, ids=layout_id)
def lab(request, lab_tools):
    kind, stage = request.param
    app = asgi_app() if kind == "asgi" else None
    with Lab(stage=stage, processes=COPIES, port=0, app=app,
             secret_values=ASGI_SECRETS if kind == "asgi" else None) as running:
        running.kind = kind
        yield running


def get(url: str, headers: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        body = error.read()
        try:
            return error.code, json.loads(body)
        except ValueError:
            return error.code, {"raw": body.decode(errors="replace")}


def parent_pid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def copy_of(lab, pid: int) -> int:
    """The supervised copy that answered: uvicorn serves in its main process, gunicorn in a worker."""
    return pid if pid in lab.app_pids() else parent_pid(pid)


def test_every_copy_serves_under_steady_load(lab):
    with Load(lab.url + CHEAP_WORK, connections=2 * lab.processes) as load:
        wait_for(lambda: len(load.pids()) >= lab.processes, 10, "a response from every copy")
        time.sleep(0.5)
    assert not load.failures()
    assert len(load.pids()) == lab.processes
    # Every pid that answered belongs to one of the supervised copies.
    assert {copy_of(lab, pid) for pid in load.pids()} == set(lab.app_pids())


def test_root_reports_pid_hostname_stage_and_visits(lab):
    status, first = get(lab.url + "/")
    status2, second = get(lab.url + "/")
    assert (status, status2) == (200, 200)
    assert set(first) >= {"pid", "hostname", "stage", "visits"}
    assert first["stage"] == str(lab.stage)
    assert second["visits"] == first["visits"] + 1


@pytest.mark.parametrize("lab", [("asgi", 4), ("asgi", 1)], indirect=True, ids=layout_id)
def test_the_asgi_app_is_the_one_config_names_with_its_environment(lab):
    status, body = get(lab.url + "/")
    assert status == 200
    assert (body["app"], body["server"]) == ("sample_asgi", "uvicorn")
    assert body["greeting"] == lab.app.environment["GREETING"]
    # Names only: the secrets reached the app, their values never leave it.
    assert body["variables_set"] == sorted(["GREETING", *ASGI_SECRETS])
    assert not [value for value in ASGI_SECRETS.values() if value in json.dumps(body)]
    for pid in lab.app_pids():  # what the app's processes hold, as systemd's EnvironmentFile= gives it
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
        assert {name: environ[name.encode()].decode() for name in ASGI_SECRETS} == ASGI_SECRETS
        assert "uvicorn" in Path(f"/proc/{pid}/cmdline").read_text()


@pytest.mark.parametrize("lab", STAGE4, indirect=True, ids=layout_id)  # several copies: stage 4 only
def test_killing_a_copy_under_load_fails_no_request(lab):
    victim = lab.app_pids()[0]  # the copy's main process, the one systemd watches
    restarts_before = lab.restarts()
    with Load(lab.url + CHEAP_WORK, connections=4) as load:
        wait_for(lambda: len(load.pids()) == lab.processes, 10, "every copy serving")
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        copy_health = lab.app_urls()[0] + "/health"
        wait_for(lambda: lab.app_pids()[0] != victim and http_status(copy_health) == 200, 5,
                 "the killed copy to serve again")
        back_after = time.monotonic() - killed_at
        time.sleep(0.5)
    assert not load.failures(), load.failures()[:3]
    assert len(load.responses) > 50
    assert back_after < 5
    assert lab.restarts() == restarts_before + 1
    # The copy is back behind nginx too: every copy answers again.
    with Load(lab.url + CHEAP_WORK, connections=2 * lab.processes) as load:
        wait_for(lambda: len(load.pids()) == lab.processes, 5, "every copy serving after the restart")
    assert not load.failures()


def test_database_outage_keeps_liveness_and_recovers_without_restart(lab):
    pids_before = lab.app_pids()
    status, before = get(lab.url + "/")
    assert status == 200
    lab.stop_database()
    try:
        assert get(lab.url + "/health")[0] == 200
        assert get(lab.url + "/ready")[0] == 503
        status, body = get(lab.url + "/")
        assert status == 503
        assert body["error"] == "database unavailable"
        assert "Traceback" not in json.dumps(body)
    finally:
        lab.start_database()
    wait_for(lambda: http_status(lab.url + "/ready") == 200, 10, "/ready after the database is back")
    status, after = get(lab.url + "/")
    assert status == 200
    assert after["visits"] == before["visits"] + 1  # nothing written before the outage was lost
    assert lab.app_pids() == pids_before  # recovered by reconnecting, not by a restart


@pytest.mark.parametrize("path, expected", [
    ("/no/such/page", 404),
    ("/work?n=abc", 400),
    ("/work?n=-1", 400),
    ("/work?n=999999999999", 400),
])
def test_bad_requests_get_a_4xx_json_answer(lab, path, expected):
    status, body = get(lab.url + path)
    assert status == expected
    assert "error" in body


def test_oversized_header_is_refused(lab):
    status, _ = get(lab.url + "/", headers={"X-Big": "x" * 20_000})
    assert status in (400, 431)
    assert get(lab.url + "/health")[0] == 200


def test_slow_clients_do_not_stop_the_copies(lab):
    pids_before, restarts_before = lab.app_pids(), lab.restarts()
    slow = []
    try:
        # More slow clients than a stage 1 gunicorn copy has threads: nginx (stage 4) holds them all;
        # gunicorn alone (stage 1) holds 3 (with the slow body) and keeps a thread for everyone else;
        # uvicorn's event loop holds them as idle sockets.
        for _ in range(2 if lab.stage == 1 else 20):
            sock = socket.create_connection(("127.0.0.1", lab.port), timeout=5)
            sock.sendall(b"GET / HTTP/1.1\r\nHost: lab\r\nX-Slow: ")  # a header that never ends
            slow.append(sock)
        body = socket.create_connection(("127.0.0.1", lab.port), timeout=5)
        body.sendall(b"POST / HTTP/1.1\r\nHost: lab\r\nContent-Length: 100000\r\n\r\nonly a little")
        slow.append(body)
        for _ in range(10):
            assert get(lab.url + CHEAP_WORK)[0] == 200
    finally:
        for sock in slow:
            sock.close()
    assert lab.app_pids() == pids_before and lab.restarts() == restarts_before


def test_lab_says_which_package_to_install_when_a_tool_is_missing(monkeypatch, capsys):
    # No tool can be uninstalled for a test; make the lab's lookups find nothing instead.
    monkeypatch.setattr(lab_module, "find_nginx", lambda: None)
    monkeypatch.setattr(lab_module, "find_postgres_bin", lambda: None)
    assert lab_module.main(["--stage", "4", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "install the nginx package" in err and "postgresql-15" in err


def test_the_boot_health_gate_passes_against_the_running_layout(lab):
    """The last bootstrap command (what decides the server's CloudFormation signal) reaches the
    service on the layout's port and health path; the lab's layout listens where a server's would."""
    import subprocess

    from app_tier import render

    name, command = render.app_server_commands(lab.layout)[-1]
    assert name == "26-app-healthy" and command.rstrip().endswith("exit 1")
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("argv, message", [
    (["--env", "no-such-env"], "--env no-such-env"),
    (["--start-command", "run-my-app"], "file descriptor 3"),
    (["--app-source", "/nonexistent"], "has no requirements.txt"),
])
def test_lab_says_what_is_wrong_with_the_app_it_is_given(capsys, argv, message):
    assert lab_module.main([*argv, "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_lab_names_an_app_server_missing_from_the_project_venv(lab_tools):
    from app_tier import render
    app = render.AppSpec(start_command="{app_root}/venv/bin/no-such-server --fd {fd} app:app")
    lab = Lab(stage=1, port=0, app=app)
    with pytest.raises(RuntimeError, match="no-such-server, which is not installed here.*requirements-dev.txt"):
        lab.__enter__()
    assert lab.dir is not None and not lab.dir.exists()  # what it had made is gone


# --- restarts and stops: the socket stays open, in-flight requests finish --------------------


def slow_get(url: str, into: dict) -> threading.Thread:
    def run() -> None:
        started = time.monotonic()
        try:
            into["status"], into["body"] = get(url)
        except OSError as error:  # a dropped request (what some tests expect): the caller asserts on it
            into["error"] = repr(error)
        into["seconds"] = time.monotonic() - started
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("lab", [("wsgi", 1), ("asgi", 1)], indirect=True, ids=layout_id)
def test_restarting_the_app_under_load_fails_no_request(lab):
    """A restart (what cfn-hup's update does on stages 1-2) with a slow request in flight and steady
    load: the old copy finishes the slow request, new connections wait in the held socket's backlog
    while the new copy starts, and not one request fails."""
    old = lab.app_pids()[0]
    slow: dict = {}
    with Load(lab.url + "/", connections=4) as load:
        wait_for(lambda: len(load.responses) > 20, 5, "load flowing")
        thread = slow_get(lab.url + "/sleep?ms=1500", slow)
        time.sleep(0.3)  # the slow request is in flight
        lab.restart_copy(0)
        wait_for(lambda: lab.app_pids()[0] != old and http_status(lab.app_urls()[0] + "/health") == 200, 15,
                 "the new copy serving")
        time.sleep(0.5)
        thread.join(10)
    # Answered in full by the old copy, which was already stopping: graceful, not cut off.
    assert slow.get("status") == 200 and slow["body"]["slept_ms"] == 1500, slow
    assert not load.failures(), sorted({r.error or str(r.status) for r in load.failures()})[:3]
    assert len(load.responses) > 50
    assert lab.app_pids()[0] != old


@pytest.mark.parametrize("sig, finishes", [(signal.SIGQUIT, True), (signal.SIGTERM, False)], ids=["SIGQUIT", "SIGTERM"])
def test_nginx_stops_gracefully_only_on_sigquit(lab_tools, sig, finishes):
    """Why the nginx unit's drop-in sets KillSignal=SIGQUIT: nginx finishes an in-flight request on
    SIGQUIT (its graceful shutdown) and drops it on SIGTERM (its fast one), systemd's default."""
    with Lab(stage=4, processes=1, port=0) as lab:
        slow: dict = {}
        thread = slow_get(lab.url + "/sleep?ms=1500", slow)
        time.sleep(0.4)
        lab._nginx.send_signal(sig)
        thread.join(10)
        lab._nginx.wait(10)
    assert (slow.get("status") == 200) is finishes, slow
