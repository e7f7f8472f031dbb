"""A real server process (uvicorn, embedded SecantusDB on disk) driven by FHIR clients written by others."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.common import ServerProcess


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(data_dir=tmp_path_factory.mktemp("data"), database=f"e2e_{uuid.uuid4().hex[:8]}") as srv:
        yield srv


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
    srv = ServerProcess(data_dir=tmp_path, database=f"e2e_{uuid.uuid4().hex[:8]}").start()
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
    srv.start()  # same data folder and database, new process (and port)
    try:
        again = httpx.get(f"{srv.base}/Patient/{pid}").json()
        assert again["name"][0]["family"] == "Durable"
    finally:
        srv.stop()
