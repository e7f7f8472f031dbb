"""Deterministic generator of realistic patient records as FHIR transaction Bundles.

    python bench/datagen.py --patients 10 --seed 42 --out /tmp/records    # one bundle per patient

``generate`` returns a list; ``records`` is the same sequence as an endless iterator (for
benchmarks that load a growing database in steps: the first N records are always the same).
``upper_every=N`` writes the names of every N-th patient (0, N, 2N...) the way some older
systems do, in unaccented capitals (``HELENE LEFEVRE``), without changing anything else.

Each record: Patient (INS identifier, accented French names), Encounters, Observations (vital signs
with blood-pressure components, weight, height, BMI, glycaemia, and lab results with reference
ranges), Conditions, AllergyIntolerances, Immunizations, MedicationStatements and
DocumentReferences (with a small Binary). Same seed, same bundles.
"""

from __future__ import annotations

import argparse
import base64
import itertools
import random
import unicodedata
import uuid
from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson

FAMILIES = ["Lefèvre", "Dubois", "Müller", "Martin", "Bernard", "Thomas", "Petit", "Robert", "Richard", "Durand",
            "Léger", "Fournier", "Girard", "Bonnet", "Dupont", "Lambert", "Fontaine", "Rousseau", "Vincent", "Gaël"]
GIVEN_F = ["Hélène", "Zoé", "Chloé", "Léa", "Inès", "Anaïs", "Maëlle", "Camille", "Élodie", "Agnès"]
GIVEN_M = ["Jérôme", "François", "Noël", "Loïc", "Raphaël", "Hugo", "Théo", "Benoît", "Cédric", "André"]
CITIES = [("Paris", "75011"), ("Lyon", "69003"), ("Marseille", "13005"), ("Besançon", "25000"), ("Nîmes", "30000")]

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
SNOMED = "http://snomed.info/sct"
CAT = "http://terminology.hl7.org/CodeSystem/observation-category"

VITALS = [  # code, display, unit, ucum code, low, high
    ("29463-7", "Body weight", "kg", "kg", 45.0, 110.0),
    ("8302-2", "Body height", "cm", "cm", 150.0, 195.0),
    ("39156-5", "Body mass index", "kg/m2", "kg/m2", 18.0, 35.0),
    ("8867-4", "Heart rate", "/min", "/min", 50.0, 110.0),
    ("8310-5", "Body temperature", "Cel", "Cel", 36.0, 39.5),
]
LABS = [
    ("2345-7", "Glucose [Mass/volume] in Serum or Plasma", "g/L", "g/L", 0.6, 1.6, 0.7, 1.1),
    ("2093-3", "Cholesterol [Mass/volume] in Serum or Plasma", "g/L", "g/L", 1.2, 3.0, 1.5, 2.0),
    ("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", "g/dL", 10.0, 17.0, 12.0, 16.0),
    ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", "mg/dL", 0.5, 1.5, 0.6, 1.2),
    ("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%", "%", 4.5, 9.0, 4.0, 6.0),
]
CONDITIONS = [("44054006", "Diabetes mellitus type 2"), ("38341003", "Hypertensive disorder"),
              ("195967001", "Asthma"), ("55822004", "Hyperlipidemia"), ("35489007", "Depressive disorder")]
ALLERGIES = [("91936005", "Allergy to penicillin", "medication", "high"),
             ("91935009", "Allergy to peanuts", "food", "high"),
             ("232347008", "Dander (animal) allergy", "environment", "low")]
VACCINES = [("3400930007352", "REPEVAX"), ("3400935947868", "GARDASIL 9"), ("3400936405009", "PRIORIX"),
            ("3400930211155", "INFANRIXHEXA"), ("3400927775134", "VAXIGRIP TETRA")]
MEDS = [("860975", "metformin 500 MG Oral Tablet"), ("314076", "lisinopril 10 MG Oral Tablet"),
        ("617312", "atorvastatin 20 MG Oral Tablet"), ("745752", "albuterol 0.09 MG/ACTUAT inhaler")]
DOC_TYPES = [("11488-4", "Consult note"), ("18842-5", "Discharge summary"), ("11502-2", "Laboratory report"),
             ("18748-4", "Diagnostic imaging study"), ("87273-9", "Immunization note")]


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _when(rng: random.Random, start: date, end: date) -> datetime:
    span = (end - start).days
    d = start + timedelta(days=rng.randrange(max(span, 1)))
    return datetime(d.year, d.month, d.day, rng.randrange(7, 19), rng.choice([0, 15, 30, 45]),
                    tzinfo=timezone(timedelta(hours=rng.choice([1, 2]))))


def _entry(full: str, res: dict[str, Any]) -> dict[str, Any]:
    return {"fullUrl": full, "resource": res, "request": {"method": "POST", "url": res["resourceType"]}}


def _q(value: float, unit: str, code: str) -> dict[str, Any]:
    return {"value": round(value, 2), "unit": unit, "system": UCUM, "code": code}


def legacy_caps(name: str) -> str:
    """``Hélène`` -> ``HELENE``: unaccented capitals, as some older systems write names."""
    return "".join(c for c in unicodedata.normalize("NFKD", name) if not unicodedata.combining(c)).upper()


def patient_record(rng: random.Random, index: int, obs_per_patient: int = 40, *,
                   upper_names: bool = False) -> dict[str, Any]:
    """One transaction Bundle holding a whole patient record (``upper_names``: see :func:`legacy_caps`)."""
    female = rng.random() < 0.5
    birth = date(1930, 1, 1) + timedelta(days=rng.randrange(30000))
    city, zipc = rng.choice(CITIES)
    pu = f"urn:uuid:{_uuid(rng)}"
    nir = f"{2 if female else 1}{birth.year % 100:02d}{birth.month:02d}{rng.randrange(10**9):09d}{index % 100:02d}"
    family, given = rng.choice(FAMILIES), rng.choice(GIVEN_F if female else GIVEN_M)
    if upper_names:
        family, given = legacy_caps(family), legacy_caps(given)
    pat = {"resourceType": "Patient",
           "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.8", "value": nir[:15]}],
           "name": [{"use": "official", "family": family, "given": [given]}],
           "gender": "female" if female else "male", "birthDate": birth.isoformat(),
           "address": [{"line": [f"{rng.randrange(1, 120)} rue de la République"], "city": city,
                        "postalCode": zipc, "country": "FR"}]}
    entries = [_entry(pu, pat)]
    subj = {"reference": pu}
    start, end = date(2015, 1, 1), date(2026, 6, 30)
    encs = []
    for _ in range(rng.randrange(2, 6)):
        eu = f"urn:uuid:{_uuid(rng)}"
        t = _when(rng, start, end)
        encs.append(eu)
        entries.append(_entry(eu, {
            "resourceType": "Encounter", "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": subj, "period": {"start": t.isoformat(), "end": (t + timedelta(minutes=30)).isoformat()}}))
    for _ in range(obs_per_patient):
        t = _when(rng, start, end)
        kind = rng.random()
        if kind < 0.25:
            obs = {"resourceType": "Observation", "status": "final",
                   "category": [{"coding": [{"system": CAT, "code": "vital-signs"}]}],
                   "code": {"coding": [{"system": LOINC, "code": "85354-9", "display": "Blood pressure panel"}]},
                   "subject": subj, "effectiveDateTime": t.isoformat(),
                   "component": [
                       {"code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
                        "valueQuantity": _q(rng.uniform(100, 170), "mmHg", "mm[Hg]")},
                       {"code": {"coding": [{"system": LOINC, "code": "8462-4"}]},
                        "valueQuantity": _q(rng.uniform(60, 100), "mmHg", "mm[Hg]")}]}
        elif kind < 0.6:
            code, disp, unit, ucum, lo, hi = rng.choice(VITALS)
            obs = {"resourceType": "Observation", "status": "final",
                   "category": [{"coding": [{"system": CAT, "code": "vital-signs"}]}],
                   "code": {"coding": [{"system": LOINC, "code": code, "display": disp}]},
                   "subject": subj, "effectiveDateTime": t.isoformat(),
                   "valueQuantity": _q(rng.uniform(lo, hi), unit, ucum)}
        else:
            code, disp, unit, ucum, lo, hi, rlo, rhi = rng.choice(LABS)
            v = rng.uniform(lo, hi)
            obs = {"resourceType": "Observation", "status": "final",
                   "category": [{"coding": [{"system": CAT, "code": "laboratory"}]}],
                   "code": {"coding": [{"system": LOINC, "code": code, "display": disp}]},
                   "subject": subj, "effectiveDateTime": t.isoformat(), "valueQuantity": _q(v, unit, ucum),
                   "interpretation": [{"coding": [{
                       "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                       "code": "H" if v > rhi else ("L" if v < rlo else "N")}]}],
                   "referenceRange": [{"low": _q(rlo, unit, ucum), "high": _q(rhi, unit, ucum)}]}
        if encs and rng.random() < 0.5:
            obs["encounter"] = {"reference": rng.choice(encs)}
        entries.append(_entry(f"urn:uuid:{_uuid(rng)}", obs))
    for code, disp in rng.sample(CONDITIONS, rng.randrange(0, 3)):
        entries.append(_entry(f"urn:uuid:{_uuid(rng)}", {
            "resourceType": "Condition",
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                           "code": "active"}]},
            "code": {"coding": [{"system": SNOMED, "code": code, "display": disp}]}, "subject": subj,
            "onsetDateTime": _when(rng, birth + timedelta(days=6000), end).isoformat()}))
    for code, disp, cat, crit in rng.sample(ALLERGIES, rng.randrange(0, 2)):
        entries.append(_entry(f"urn:uuid:{_uuid(rng)}", {
            "resourceType": "AllergyIntolerance", "category": [cat], "criticality": crit,
            "code": {"coding": [{"system": SNOMED, "code": code, "display": disp}]}, "patient": subj}))
    for code, disp in rng.sample(VACCINES, rng.randrange(1, 4)):
        entries.append(_entry(f"urn:uuid:{_uuid(rng)}", {
            "resourceType": "Immunization", "status": "completed",
            "vaccineCode": {"coding": [{"system": "urn:oid:1.2.250.1.213.2.3.1", "code": code, "display": disp}]},
            "patient": subj, "occurrenceDateTime": _when(rng, start, end).isoformat(),
            "lotNumber": f"L{rng.randrange(10**6):06d}", "protocolApplied": [{"doseNumberPositiveInt": 1}]}))
    for code, disp in rng.sample(MEDS, rng.randrange(0, 3)):
        entries.append(_entry(f"urn:uuid:{_uuid(rng)}", {
            "resourceType": "MedicationStatement", "status": "active",
            "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                                                      "code": code, "display": disp}]},
            "subject": subj, "effectiveDateTime": _when(rng, start, end).isoformat()}))
    for _ in range(rng.randrange(1, 4)):
        code, disp = rng.choice(DOC_TYPES)
        bu = f"urn:uuid:{_uuid(rng)}"
        text = f"Compte rendu {disp} — patient {index}".encode()
        entries.append(_entry(bu, {"resourceType": "Binary", "contentType": "text/plain",
                                   "data": base64.b64encode(text).decode()}))
        entries.append(_entry(f"urn:uuid:{_uuid(rng)}", {
            "resourceType": "DocumentReference", "status": "current",
            "type": {"coding": [{"system": LOINC, "code": code, "display": disp}]},
            "category": [{"coding": [{"system": "urn:oid:1.2.250.1.213.1.1.4.1", "code": "REPORTS"}]}],
            "subject": subj, "date": _when(rng, start, end).isoformat(),
            "content": [{"attachment": {"contentType": "text/plain", "url": bu, "size": len(text),
                                        "title": disp}}]}))
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def records(seed: int = 42, obs_per_patient: int = 40, *, upper_every: int = 0) -> Iterator[dict[str, Any]]:
    """Endless, deterministic sequence of patient records; its first N items are ``generate(N, ...)``."""
    rng = random.Random(seed)
    for i in itertools.count():
        yield patient_record(rng, i, obs_per_patient, upper_names=bool(upper_every) and i % upper_every == 0)


def generate(patients: int, seed: int = 42, obs_per_patient: int = 40, *,
             upper_every: int = 0) -> list[dict[str, Any]]:
    return list(itertools.islice(records(seed, obs_per_patient, upper_every=upper_every), patients))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patients", type=int, default=10)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--obs", type=int, default=40, help="observations per patient")
    ap.add_argument("--upper-every", type=int, default=0,
                    help="write every N-th patient's names in unaccented capitals (0: never)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for i, bundle in enumerate(generate(args.patients, args.seed, args.obs, upper_every=args.upper_every)):
        (args.out / f"record-{i:05d}.json").write_bytes(orjson.dumps(bundle, option=orjson.OPT_INDENT_2))
    print(f"wrote {args.patients} bundles to {args.out}")


if __name__ == "__main__":
    main()
