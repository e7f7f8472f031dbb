"""The benchmark data generator is deterministic and produces valid, loadable records."""

from __future__ import annotations

from typing import Any

import orjson

from bench.datagen import generate

H = {"Content-Type": "application/fhir+json"}


def test_same_seed_same_records() -> None:
    assert orjson.dumps(generate(3, seed=7)) == orjson.dumps(generate(3, seed=7))
    assert orjson.dumps(generate(3, seed=7)) != orjson.dumps(generate(3, seed=8))


def test_records_load_as_transactions(client: Any) -> None:
    for bundle in generate(2, seed=1, obs_per_patient=10):
        r = client.post("/fhir", json=bundle, headers=H)
        assert r.status_code == 200, r.text
        assert all(e["response"]["status"] == "201 Created" for e in r.json()["entry"])
