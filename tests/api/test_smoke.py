from typing import Any

FJ = "application/fhir+json"


def test_create_read(client: Any) -> None:
    r = client.post("/fhir/Patient", json={"resourceType": "Patient", "name": [{"family": "Dupont"}]},
                    headers={"Content-Type": FJ})
    assert r.status_code == 201, r.text
    loc = r.headers["location"]
    assert "/_history/1" in loc
    body = r.json()
    r2 = client.get(f"/fhir/Patient/{body['id']}")
    assert r2.status_code == 200
    assert r2.json()["name"][0]["family"] == "Dupont"
    assert r2.headers["etag"] == 'W/"1"'
