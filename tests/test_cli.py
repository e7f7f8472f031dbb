"""The command line: load files and bundles, --help everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from fhir_server import cli
from fhir_server.config import get_settings
from fhir_server.main import build_services
from tests.conftest import make_settings


@pytest.fixture
def env(mongo_uri: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    settings = make_settings(mongo_uri)
    for key, value in {"FHIR_SERVER_MONGODB_URI": mongo_uri, "FHIR_SERVER_MONGODB_DATABASE": settings.mongodb_database,
                       "FHIR_SERVER_AUTH": "off", "FHIR_SERVER_SECRET_KEY": "cli",
                       "FHIR_SERVER_BASE_URL": "http://testserver/fhir"}.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    yield settings
    get_settings.cache_clear()
    svc = build_services(settings)
    svc.repo.drop_everything()
    svc.close()


def test_help_everywhere() -> None:
    runner = CliRunner()
    for args in (["--help"], ["serve", "--help"], ["load", "--help"], ["capability", "--help"],
                 ["cda-report", "--help"], ["reindex", "--help"]):
        result = runner.invoke(cli.app, args)
        assert result.exit_code == 0, result.output
        assert "Usage" in result.output


def test_load_files_and_bundles(env: Any, tmp_path: Path) -> None:
    (tmp_path / "one.json").write_bytes(orjson.dumps({"resourceType": "Patient", "id": "cli-p1"}))
    (tmp_path / "many.ndjson").write_bytes(b"\n".join(orjson.dumps({"resourceType": "Organization", "name": n})
                                                      for n in ("A", "B")))
    (tmp_path / "tx.json").write_bytes(orjson.dumps({
        "resourceType": "Bundle", "type": "transaction",
        "entry": [{"fullUrl": "urn:uuid:0b8a3c1e-5d2f-4a8e-9c1b-2d3e4f5a6b7c",
                   "resource": {"resourceType": "Patient", "name": [{"family": "Tx"}]},
                   "request": {"method": "POST", "url": "Patient"}},
                  {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                                "subject": {"reference": "urn:uuid:0b8a3c1e-5d2f-4a8e-9c1b-2d3e4f5a6b7c"}},
                   "request": {"method": "POST", "url": "Observation"}}]}))
    (tmp_path / "p.xml").write_bytes(b'<Patient xmlns="http://hl7.org/fhir"><id value="cli-x"/></Patient>')
    result = CliRunner().invoke(cli.app, ["load", str(tmp_path)])
    assert result.exit_code == 0, result.output
    svc = build_services(env)
    try:
        db = svc.repo.db
        assert db["Patient"].count_documents({}) == 3
        assert db["Organization"].count_documents({}) == 2
        obs = db["Observation"].find_one({})
        assert obs["res"]["subject"]["reference"].startswith("Patient/")
    finally:
        svc.close()
    (tmp_path / "bad.json").write_bytes(b'{"resourceType": "Patient", "gender": "dragon"}')
    result = CliRunner().invoke(cli.app, ["load", str(tmp_path / "bad.json")])
    assert result.exit_code == 1


def test_load_synthea_bundle(env: Any, shared_dir: Path) -> None:
    bundle = sorted((shared_dir / "samples" / "synthea").rglob("*.json"))[0]
    result = CliRunner().invoke(cli.app, ["load", str(bundle)])
    assert result.exit_code == 0, result.output
    svc = build_services(env)
    try:
        assert svc.repo.db["Patient"].count_documents({}) == 1
        assert svc.repo.db["Observation"].count_documents({}) > 10
    finally:
        svc.close()


def test_cda_report_command() -> None:
    examples = Path(__file__).resolve().parents[1] / "examples" / "cda"
    result = CliRunner().invoke(cli.app, ["cda-report", str(examples)])
    assert result.exit_code == 0, result.output
    assert "Observation" in result.output


def test_reindex_rebuilds_index_values(env: Any) -> None:
    svc = build_services(env)
    try:
        ctx = __import__("fhir_server.rest.context", fromlist=["RequestContext"]).RequestContext("http://testserver/fhir")
        pid = svc.fhir.create(ctx, "Patient", {"resourceType": "Patient", "name": [{"family": "Réindex"}]}).stored.id
        svc.repo.db["Patient"].update_one({"_id": pid}, {"$set": {"ix": {}}})  # as if indexed by an older registry
    finally:
        svc.close()
    result = CliRunner().invoke(cli.app, ["reindex", "Patient"])
    assert result.exit_code == 0, result.output
    svc = build_services(env)
    try:
        doc = svc.repo.db["Patient"].find_one({"_id": pid})
        assert doc["ix"]["family"] == ["reindex"]
    finally:
        svc.close()
    assert CliRunner().invoke(cli.app, ["reindex", "Nope"]).exit_code != 0
