"""A real server process (uvicorn, embedded SecantusDB on disk) driven by FHIR clients written by others."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fhir_server.store.embedded import free_port


class ServerProcess:
    def __init__(self, data_dir: Path, port: int) -> None:
        self.data_dir = data_dir
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None
        self.base = f"http://127.0.0.1:{port}/fhir"
        self.database = f"e2e_{port}"

    def start(self) -> None:
        env = {**os.environ, "FHIR_SERVER_DATA_DIR": str(self.data_dir), "FHIR_SERVER_PORT": str(self.port),
               "FHIR_SERVER_BASE_URL": self.base, "FHIR_SERVER_AUTH": "off", "FHIR_SERVER_SECRET_KEY": "e2e",
               "FHIR_SERVER_MONGODB_DATABASE": self.database}
        self.proc = subprocess.Popen([sys.executable, "-m", "fhir_server.cli", "serve"], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "server exited during start-up"
            try:
                if httpx.get(f"{self.base}/metadata", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise AssertionError("server did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("data"), free_port())
    srv.start()
    yield srv
    srv.stop()


def _engine_children(pid: int) -> set[int]:
    """Process ids of the SecantusDB engines started by the server process ``pid``."""
    out = subprocess.run(["ps", "-eo", "pid,ppid,args"], capture_output=True, text=True).stdout
    found = set()
    for line in out.splitlines()[1:]:
        parts = line.split(None, 2)
        if len(parts) == 3 and parts[1] == str(pid) and "secantus" in parts[2]:
            found.add(int(parts[0]))
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True,
                          text=True).stdout.strip()[:1] not in ("Z", "")


def test_fhirpy_crud(server: ServerProcess) -> None:
    from fhirpy import SyncFHIRClient

    fc = SyncFHIRClient(server.base, extra_headers={"Accept": "application/fhir+json"})
    pat = fc.resource("Patient", name=[{"family": "Martin", "given": ["Zoé"]}], gender="female")
    pat.save()
    assert pat.id and pat["meta"]["versionId"] == "1"
    fetched = fc.reference("Patient", pat.id).to_resource()
    assert fetched["name"][0]["given"] == ["Zoé"]
    fetched["gender"] = "other"
    fetched.save()
    assert fc.reference("Patient", pat.id).to_resource()["meta"]["versionId"] == "2"
    found = fc.resources("Patient").search(_id=pat.id).fetch()
    assert [p.id for p in found] == [pat.id]
    fetched.delete()
    assert httpx.get(f"{server.base}/Patient/{pat.id}").status_code == 410


def test_fhirclient_read_and_update(server: ServerProcess) -> None:
    from fhirclient import client as fclient
    from fhirclient.models.patient import Patient

    smart = fclient.FHIRClient(settings={"app_id": "e2e", "api_base": server.base})
    created = httpx.post(f"{server.base}/Patient", json={"resourceType": "Patient", "name": [{"family": "Roux"}]},
                         headers={"Content-Type": "application/fhir+json"}).json()
    p = Patient.read(created["id"], smart.server)
    assert p.name[0].family == "Roux"
    p.gender = "male"
    p.update(smart.server)
    assert Patient.read(created["id"], smart.server).gender == "male"
    new = Patient({"name": [{"family": "Nouveau"}]})
    new.create(smart.server)
    hist = httpx.get(f"{server.base}/Patient/_history").json()
    assert any(e["resource"]["name"][0]["family"] == "Nouveau" for e in hist["entry"] if "resource" in e)


def test_restart_keeps_data_and_stops_engine(tmp_path: Path) -> None:
    srv = ServerProcess(tmp_path, free_port())
    srv.start()
    r = httpx.post(f"{srv.base}/Patient", json={"resourceType": "Patient", "name": [{"family": "Durable"}]},
                   headers={"Content-Type": "application/fhir+json"})
    pid = r.json()["id"]
    assert srv.proc is not None
    engines = _engine_children(srv.proc.pid)
    if not os.environ.get("MONGODB_URI"):
        assert len(engines) == 1, "the server runs the embedded engine as its own process"
    srv.stop()
    time.sleep(0.5)
    assert not any(_alive(p) for p in engines), "the embedded engine must stop with the server"
    srv.port = free_port()
    srv.base = f"http://127.0.0.1:{srv.port}/fhir"
    srv.start()
    try:
        again = httpx.get(f"{srv.base}/Patient/{pid}").json()
        assert again["name"][0]["family"] == "Durable"
    finally:
        srv.stop()
