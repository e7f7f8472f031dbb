"""The FHIR server as a real uvicorn process, for benchmarks and end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from fhir_server.store.embedded import EmbeddedMongo, free_port

__all__ = ["ServerProcess", "pct", "start_engine"]


def start_engine() -> tuple[str, EmbeddedMongo | None]:
    """``MONGODB_URI`` when set, else a throw-away SecantusDB process (stop it when done)."""
    uri = os.environ.get("MONGODB_URI")
    if uri:
        return uri, None
    engine = EmbeddedMongo(":memory:")
    return engine.start(), engine


def pct(values: Any, p: float) -> float:
    """The ``p``-th percentile of durations in seconds, in milliseconds (nan when empty)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))] * 1000


class ServerProcess:
    """``fhir-server serve`` in its own process (auth off), on ``mongo_uri`` or the embedded default.

    ``data_dir`` is the embedded engine's data folder (when ``mongo_uri`` is None and the
    environment has no ``MONGODB_URI``); ``env`` adds settings.
    """

    def __init__(self, *, mongo_uri: str | None = None, database: str, data_dir: Path | None = None,
                 env: dict[str, str] | None = None, quiet: bool = True) -> None:
        self.mongo_uri = mongo_uri
        self.database = database
        self.data_dir = data_dir
        self.extra_env = env or {}
        self.quiet = quiet
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.base = ""

    def start(self, timeout: float = 120.0) -> ServerProcess:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}/fhir"
        env = {**os.environ, "FHIR_SERVER_PORT": str(self.port), "FHIR_SERVER_BASE_URL": self.base,
               "FHIR_SERVER_AUTH": "off", "FHIR_SERVER_SECRET_KEY": "e2e", "FHIR_SERVER_LOG_LEVEL": "WARNING",
               "FHIR_SERVER_MONGODB_DATABASE": self.database, **self.extra_env}
        if self.mongo_uri:
            env["MONGODB_URI"] = self.mongo_uri
        if self.data_dir is not None:
            env["FHIR_SERVER_DATA_DIR"] = str(self.data_dir)
        out: Any = subprocess.DEVNULL if self.quiet else None
        self.proc = subprocess.Popen([sys.executable, "-m", "fhir_server.cli", "serve"], env=env, stdout=out,
                                     stderr=out)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("the server exited during start-up")
            try:
                if httpx.get(f"{self.base}/metadata", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("the server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=60)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
