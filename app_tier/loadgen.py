"""A small HTTP load generator: steady load for the lab's fault tests, and the benchmark's
fallback when wrk is not installed. Keep-alive connections, one thread each; every response
is recorded, so a test can count failures and see which copy (pid) answered.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from dataclasses import dataclass
from typing import Self
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Response:
    status: int | None  # None: the request failed without an HTTP answer
    latency_sec: float
    body: bytes = b""
    error: str | None = None
    at: float = 0.0  # time.monotonic() when it completed: places it in a rollout's timeline

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def pid(self) -> int | None:
        try:
            return json.loads(self.body).get("pid")
        except ValueError:
            return None


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class Load:
    """Steady load on url (path and query included) over `connections` keep-alive connections.

        with Load(url, connections=4) as load:
            ...  # break something
        assert not load.failures()
    """

    def __init__(self, url: str, *, connections: int = 4, timeout_sec: float = 10, pace_sec: float = 0.0) -> None:
        """`pace_sec`: each connection waits this long between requests (steady load, not saturation)."""
        parts = urlsplit(url)
        self._host, self._port = parts.hostname, parts.port or 80
        self._target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._connections, self._timeout, self._pace = connections, timeout_sec, pace_sec
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.responses: list[Response] = []
        self.started = self.stopped = 0.0

    def _worker(self) -> None:
        conn = None
        while not self._stop.is_set():
            if conn is None:
                conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
            begin = time.perf_counter()
            try:
                conn.request("GET", self._target)
                reply = conn.getresponse()
                result = Response(reply.status, time.perf_counter() - begin, reply.read(), at=time.monotonic())
                if reply.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as error:
                result = Response(None, time.perf_counter() - begin, error=repr(error), at=time.monotonic())
                conn.close()
                conn = None
            with self._lock:
                self.responses.append(result)
            if self._pace:
                self._stop.wait(self._pace)
        if conn is not None:
            conn.close()

    def start(self) -> Load:
        self.started = time.perf_counter()
        for i in range(self._connections):
            thread = threading.Thread(target=self._worker, name=f"load-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> list[Response]:
        self._stop.set()
        for thread in self._threads:
            thread.join(self._timeout + 1)
        self.stopped = time.perf_counter()
        return self.responses

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def failures(self) -> list[Response]:
        with self._lock:
            return [r for r in self.responses if not r.ok]

    def pids(self) -> set[int]:
        with self._lock:
            return {r.pid for r in self.responses if r.ok and r.pid is not None}

    def summary(self) -> dict[str, float]:
        """requests/s, p50 and p99 latency (ms) of the successful responses."""
        latencies = [r.latency_sec for r in self.responses if r.ok]
        elapsed = (self.stopped or time.perf_counter()) - self.started
        return {"requests_per_sec": len(latencies) / elapsed if elapsed else 0.0,
                "p50_ms": percentile(latencies, 0.50) * 1000, "p99_ms": percentile(latencies, 0.99) * 1000,
                "failed": len(self.responses) - len(latencies)}
