"""AuditEvents following IHE Basic Audit Log Patterns (BALP, https://profiles.ihe.net/ITI/BALP/).

One AuditEvent per access and per patient concerned:

* ``type`` ``rest`` (RESTful operation) with the interaction as ``subtype``, or a security
  event (login, token issue/refresh/revocation) typed ``110114 User Authentication`` /
  ``110112 Query`` / ``110113 Security Alert``…;
* ``agent``: the OAuth client (``who.identifier`` = client_id, network address) and the user
  (``who`` = fhirUser, ``altId`` = account, ``policy`` = ``urn:uuid:<token jti>``), the user
  marked ``requestor``; the server itself as destination;
* ``entity``: the patient (role Patient) — which also makes the event part of that patient's
  space (``sp``), so ``AuditEvent?patient=<self>`` is their "who looked at my record" journal —
  then the resources (``Type/id/_history/v``) and, for searches, the query (base64);
* ``outcome``: 0 success, 4 refused or invalid request, 8 server failure.

Writes are audited inside their own transaction (:meth:`Auditor.write_in_tx`); reads,
searches and denials right after the interaction and before the response is sent
(:meth:`Auditor.rest`). A failure to write an AuditEvent fails the request.
"""

from __future__ import annotations

import base64
import logging
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from fhir_server.audit.journal import Journal
from fhir_server.rest.context import Caller, RequestContext
from fhir_server.rest.indexing import Indexer
from fhir_server.store.repository import Repository, Stored, Tx, utcnow

__all__ = ["Auditor", "SecurityEvent"]

log = logging.getLogger("fhir_server.audit")

DCM = "http://dicom.nema.org/resources/ontology/DCM"
EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
RESTFUL = "http://hl7.org/fhir/restful-interaction"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
ROLE_TYPE = "http://terminology.hl7.org/CodeSystem/extra-security-role-type"
CLIENT_ID_SYSTEM = "urn:ietf:params:oauth:client-id"

_ACTION = {"create": "C", "read": "R", "vread": "R", "history": "R", "update": "U", "patch": "U", "delete": "D",
           "search": "E", "operation": "E", "batch": "E", "transaction": "E"}
_SUBTYPE = {"search": "search-type", "history": "history-instance"}
MAX_ENTITIES = 200
MAX_PATIENTS = 100

SecurityEvent = str  # "login" | "logout" | "token" | "refresh" | "revoke" | "introspect" | "authn"
_SECURITY_TYPES = {
    "login": (DCM, "110114", "User Authentication"),
    "logout": (DCM, "110114", "User Authentication"),
    "authn": (DCM, "110113", "Security Alert"),
    "token": (DCM, "110114", "User Authentication"),
    "refresh": (DCM, "110114", "User Authentication"),
    "revoke": (DCM, "110114", "User Authentication"),
    "launch": (DCM, "110114", "User Authentication"),
    "admin": (DCM, "110136", "Security Roles Changed"),
}


def _outcome(status: int) -> str:
    if status < 400:
        return "0"
    return "4" if status < 500 else "8"


class Auditor:
    def __init__(self, repo: Repository, indexer: Callable[[], Indexer], *, observer: str = "fhir-server",
                 site: str = "") -> None:
        self.repo = repo
        self.indexer = indexer
        self.observer = observer
        self.site = site

    # -------------------------------------------------------------- building
    def _agents(self, caller: Caller, address: str | None) -> list[dict[str, Any]]:
        agents: list[dict[str, Any]] = []
        user = caller.fhir_user or (caller.subject if caller.kind not in ("system", "anonymous") else None)
        if user:
            who: dict[str, Any] = {"reference": caller.fhir_user} if caller.fhir_user else {"display": user}
            agent: dict[str, Any] = {
                "type": {"coding": [{"system": ROLE_TYPE, "code": "humanuser", "display": "human user"}]},
                "who": who, "requestor": True,
                "role": [{"text": caller.kind}],
            }
            if caller.subject:
                agent["altId"] = caller.subject
            if caller.token_id:
                agent["policy"] = [f"urn:uuid:{caller.token_id}"]
            agents.append(agent)
        client: dict[str, Any] = {
            "type": {"coding": [{"system": DCM, "code": "110153", "display": "Source Role ID"}]},
            "who": ({"identifier": {"system": CLIENT_ID_SYSTEM, "value": caller.client_id}}
                    if caller.client_id else {"display": "anonymous" if caller.kind == "anonymous" else "unknown"}),
            "requestor": not user,
        }
        if caller.kind == "system" and caller.token_id:
            client["policy"] = [f"urn:uuid:{caller.token_id}"]
        if address:
            client["network"] = {"address": address, "type": "2"}
        agents.append(client)
        agents.append({"type": {"coding": [{"system": DCM, "code": "110152", "display": "Destination Role ID"}]},
                       "who": {"display": self.observer}, "requestor": False})
        return agents

    def _event(self, *, type_coding: dict[str, Any], subtype: list[dict[str, Any]], action: str, outcome: str,
               description: str | None, caller: Caller, address: str | None, patient: str | None,
               entities: list[dict[str, Any]], correlation: str | None, recorded: datetime) -> dict[str, Any]:
        ents: list[dict[str, Any]] = []
        if patient:
            ents.append({"what": {"reference": f"Patient/{patient}"},
                         "type": {"system": ENTITY_TYPE, "code": "1", "display": "Person"},
                         "role": {"system": OBJECT_ROLE, "code": "1", "display": "Patient"}})
        ents.extend(entities)
        event: dict[str, Any] = {
            "resourceType": "AuditEvent",
            "type": type_coding,
            "subtype": subtype,
            "action": action,
            "recorded": recorded.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "outcome": outcome,
            "agent": self._agents(caller, address),
            "source": {"observer": {"display": self.observer},
                       "type": [{"system": SOURCE_TYPE, "code": "4", "display": "Application Server"}]},
        }
        if self.site:
            event["source"]["site"] = self.site
        if description:
            event["outcomeDesc"] = description[:1000]
        if ents:
            event["entity"] = ents
        if correlation:
            event["extension"] = [{"url": "urn:fhir-server:correlation-id", "valueString": correlation}]
        return event

    def _index(self, event: dict[str, Any], patient: str | None) -> dict[str, Any]:
        try:
            ix = dict(self.indexer().index(event))
        except Exception:  # noqa: BLE001 - an indexer bug must not lose the audit record
            log.exception("indexing an AuditEvent failed; using the audit module's own index")
            ix = {}
        mine: dict[str, list[Any]] = {
            "patient": [f"Patient/{patient}"] if patient else [],
            "entity": [e["what"]["reference"] for e in event.get("entity", []) if "what" in e],
            "agent": [a["who"]["reference"] for a in event["agent"] if "reference" in a.get("who", {})],
            "altid": [a["altId"] for a in event["agent"] if "altId" in a],
            "type": [event["type"]["code"], f"{event['type']['system']}|{event['type']['code']}"],
            "subtype": [c["code"] for c in event.get("subtype", [])],
            "action": [event["action"]],
            "outcome": [event["outcome"]],
            "date": [event["recorded"]],
        }
        for key, values in mine.items():
            if values and key not in ix:
                ix[key] = values
        return ix

    def _put(self, tx: Tx, event: dict[str, Any], patient: str | None) -> None:
        id_ = str(uuid.uuid4())
        ts = utcnow()
        event = {"resourceType": "AuditEvent", "id": id_,
                 "meta": {"versionId": "1", "lastUpdated": ts.isoformat(timespec="milliseconds").replace(
                     "+00:00", "Z")},
                 **{k: v for k, v in event.items() if k != "resourceType"}}
        self.repo.put(tx, "AuditEvent", id_, expected=None, version=1, ts=ts, resource=event,
                      ix=self._index(event, patient), owner=patient, method="POST")

    def _write(self, events: list[tuple[dict[str, Any], str | None]]) -> None:
        if not events:
            return

        def op(tx: Tx) -> None:
            for event, patient in events:
                self._put(tx, event, patient)

        self.repo.transaction(op)

    # ------------------------------------------------------------ public API
    def write_in_tx(self, tx: Tx, caller: Caller, interaction: str, stored: Stored) -> None:
        """Audit one write inside the write's own transaction (``Guard.on_write``)."""
        from fhir_server.audit import journal

        entity = {"what": {"reference": f"{stored.type}/{stored.id}/_history/{stored.version}"},
                  "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
                  "role": {"system": OBJECT_ROLE, "code": "4", "display": "Domain Resource"}}
        event = self._event(type_coding={"system": EVENT_TYPE, "code": "rest", "display": "Restful Operation"},
                            subtype=[{"system": RESTFUL, "code": interaction}],
                            action=_ACTION.get(interaction, "E"), outcome="0", description=None, caller=caller,
                            address=caller.claims.get("_address"), patient=stored.owner, entities=[entity],
                            correlation=None, recorded=utcnow())
        self._put(tx, event, stored.owner)
        j = journal.current()
        if j is not None:
            j.written_in_tx += 1

    def rest(self, ctx: RequestContext, interaction: str, type_: str | None, id_: str | None,
             params: list[tuple[str, str]] | None, jr: Journal, status: int, error: str | None = None) -> None:
        """Audit one RESTful interaction from its journal (reads, searches, denials)."""
        caller = ctx.caller
        now = utcnow()
        rest_type = {"system": EVENT_TYPE, "code": "rest", "display": "Restful Operation"}
        sub = [{"system": RESTFUL, "code": _SUBTYPE.get(interaction, interaction)}]
        query_entity: list[dict[str, Any]] = []
        if params is not None and interaction in ("search", "history", "operation"):
            q = urlencode(params)
            query_entity.append({"type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
                                 "role": {"system": OBJECT_ROLE, "code": "24", "display": "Query"},
                                 "description": f"{type_ or ''}?{q}"[:1000],
                                 "query": base64.b64encode(q.encode()).decode()})
        target = []
        if type_ and id_:
            target.append({"what": {"reference": f"{type_}/{id_}"},
                           "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
                           "role": {"system": OBJECT_ROLE, "code": "4", "display": "Domain Resource"}})
        events: list[tuple[dict[str, Any], str | None]] = []
        action = _ACTION.get(interaction, "E")
        if status >= 400 or error:
            desc = error or f"HTTP {status}"
            if jr.denials:
                desc = "; ".join(f"{i} {t}: {r}" for i, t, r in jr.denials[:5])
            patient = caller.patient
            events.append((self._event(type_coding=rest_type, subtype=sub, action=action, outcome=_outcome(status),
                                       description=desc, caller=caller, address=ctx.remote_addr, patient=patient,
                                       entities=target + query_entity, correlation=ctx.correlation_id,
                                       recorded=now), patient))
            self._write(events)
            return
        reads = [e for e in jr.entries if e.interaction not in ("create", "update", "patch", "delete")]
        if jr.written_in_tx and not reads and not query_entity:
            return  # every write already has its AuditEvent, written in its transaction
        by_space: dict[str | None, list[dict[str, Any]]] = {}
        for e in reads:
            ref = f"{e.type}/{e.id}" + (f"/_history/{e.version}" if e.version else "")
            lst = by_space.setdefault(e.space, [])
            if len(lst) < MAX_ENTITIES:
                lst.append({"what": {"reference": ref},
                            "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
                            "role": {"system": OBJECT_ROLE, "code": "4", "display": "Domain Resource"}})
        if not by_space:
            by_space[caller.patient] = []
        desc = f"{jr.dropped} further resources not listed" if jr.dropped else None
        for space, ents in list(by_space.items())[:MAX_PATIENTS]:
            events.append((self._event(type_coding=rest_type, subtype=sub, action=action, outcome="0",
                                       description=desc, caller=caller, address=ctx.remote_addr, patient=space,
                                       entities=ents + query_entity, correlation=ctx.correlation_id,
                                       recorded=now), space))
        self._write(events)

    def security(self, event: SecurityEvent, *, success: bool, caller: Caller, address: str | None = None,
                 patient: str | None = None, description: str | None = None) -> None:
        """Audit a security event: login, token issue/refresh/revocation, authentication failure."""
        system, code, display = _SECURITY_TYPES.get(event, (DCM, "110113", "Security Alert"))
        sub = [{"system": "urn:fhir-server:security-event", "code": event}]
        ev = self._event(type_coding={"system": system, "code": code, "display": display}, subtype=sub,
                         action="E", outcome="0" if success else "4", description=description, caller=caller,
                         address=address, patient=patient, entities=[], correlation=None, recorded=utcnow())
        self._write([(ev, patient)])
