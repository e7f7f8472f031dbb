"""The embedded default database: SecantusDB run as its own process.

SecantusDB is GPL-2.0. It is started as a separate program
(``python -m secantus --port P --storage-path DIR``) and spoken to over the
MongoDB wire protocol; this module never imports it.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from pymongo import MongoClient
from pymongo.errors import PyMongoError

__all__ = ["EmbeddedMongo", "free_port"]

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedMongo:
    """Start, wait for and stop a SecantusDB server process.

    ``storage_path`` may be ``":memory:"`` for a throw-away store (tests).
    """

    def __init__(self, storage_path: Path | str, *, port: int | None = None, start_timeout: float = 60.0,
                 extra_args: tuple[str, ...] = ()) -> None:
        self.storage_path = str(storage_path)
        self.port = port or free_port()
        self.start_timeout = start_timeout
        self.extra_args = extra_args
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: Path | None = None

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    def start(self) -> str:
        if self.storage_path != ":memory:":
            Path(self.storage_path).mkdir(parents=True, exist_ok=True)
            self._log_file = Path(self.storage_path).parent / f"secantus-{self.port}.log"
        cmd = [sys.executable, "-m", "secantus", "--host", "127.0.0.1", "--port", str(self.port),
               "--storage-path", self.storage_path, "--log-level", "WARNING", *self.extra_args]
        log.info("starting embedded SecantusDB: %s", " ".join(cmd))
        out = open(self._log_file, "ab") if self._log_file else subprocess.DEVNULL  # noqa: SIM115
        self._proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=os.environ.copy(),
                                      start_new_session=True)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"SecantusDB exited with code {self._proc.returncode} (log: {self._log_file})")
            try:
                with MongoClient(self.uri, serverSelectionTimeoutMS=500, connectTimeoutMS=500) as c:
                    c.admin.command("hello")
                log.info("embedded SecantusDB ready on port %d", self.port)
                return self.uri
            except PyMongoError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"SecantusDB did not answer hello within {self.start_timeout}s")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def __enter__(self) -> EmbeddedMongo:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
