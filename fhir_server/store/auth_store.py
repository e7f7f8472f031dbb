"""Storage of the authorization server's state (clients, users, codes, tokens, sessions).

Collections, all in the FHIR database, prefixed ``auth_``; every short-lived record
carries ``exp`` (a datetime) with a TTL index, so MongoDB removes it after it expired:

* ``auth_clients``   ``{_id: client_id, …registration}``
* ``auth_users``     ``{_id: username, password_hash, role, fhir_user, …}``
* ``auth_codes``     ``{_id: sha256(code), used: bool, grant: grant_id, …}`` (single use, atomic)
* ``auth_tokens``    ``{_id: jti or sha256(refresh token), kind: access|refresh, grant, revoked, …}``
* ``auth_launches``  ``{_id: launch, used: bool, client_id, user, patient, …}``
* ``auth_jti``       ``{_id: client_id + " " + jti}`` client-assertion replay protection (unique)
* ``auth_sessions``  ``{_id: sha256(session cookie), user, csrf, …}``
* ``auth_pending``   ``{_id: request id, params, csrf, …}`` authorization requests awaiting login/consent

Single-use values (codes, launches, rotated refresh tokens) are consumed with one
``find_one_and_update`` on ``used: false``, so two concurrent uses cannot both succeed.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, ReturnDocument
from pymongo.errors import DuplicateKeyError

from fhir_server.store.repository import Repository

__all__ = ["AuthStore"]


class AuthStore:
    def __init__(self, repo: Repository) -> None:
        self.db = repo.db
        self.clients = self.db["auth_clients"]
        self.users = self.db["auth_users"]
        self.codes = self.db["auth_codes"]
        self.tokens = self.db["auth_tokens"]
        self.launches = self.db["auth_launches"]
        self.jtis = self.db["auth_jti"]
        self.sessions = self.db["auth_sessions"]
        self.pending = self.db["auth_pending"]

    def ensure_indexes(self) -> None:
        for coll in (self.codes, self.tokens, self.launches, self.jtis, self.sessions, self.pending):
            coll.create_index([("exp", ASCENDING)], name="ttl", expireAfterSeconds=0)
        self.tokens.create_index([("grant", ASCENDING)], name="grant")
        self.tokens.create_index([("user", ASCENDING), ("kind", ASCENDING)], name="user_kind")

    # ------------------------------------------------------------ registry
    def put_client(self, doc: dict[str, Any]) -> None:
        self.clients.replace_one({"_id": doc["_id"]}, doc, upsert=True)

    def get_client(self, client_id: str) -> dict[str, Any] | None:
        return self.clients.find_one({"_id": client_id})

    def list_clients(self) -> list[dict[str, Any]]:
        return list(self.clients.find({}).sort("_id", ASCENDING))

    def put_user(self, doc: dict[str, Any]) -> None:
        self.users.replace_one({"_id": doc["_id"]}, doc, upsert=True)

    def get_user(self, username: str) -> dict[str, Any] | None:
        return self.users.find_one({"_id": username})

    def find_user_by_upstream(self, subject: str) -> dict[str, Any] | None:
        return self.users.find_one({"upstream": subject})

    def set_user_fields(self, username: str, fields: dict[str, Any]) -> None:
        self.users.update_one({"_id": username}, {"$set": fields})

    def list_users(self) -> list[dict[str, Any]]:
        return list(self.users.find({}, {"password_hash": 0}).sort("_id", ASCENDING))

    # --------------------------------------------------------------- codes
    def save_code(self, doc: dict[str, Any]) -> None:
        self.codes.insert_one({**doc, "used": False})

    def consume_code(self, key: str) -> tuple[dict[str, Any] | None, bool]:
        """``(record, first_use)``: the code's record and whether this call consumed it."""
        doc = self.codes.find_one_and_update({"_id": key, "used": False}, {"$set": {"used": True}},
                                             return_document=ReturnDocument.BEFORE)
        if doc is not None:
            return doc, True
        return self.codes.find_one({"_id": key}), False

    def peek_code(self, key: str) -> dict[str, Any] | None:
        return self.codes.find_one({"_id": key})

    # -------------------------------------------------------------- tokens
    def save_token(self, doc: dict[str, Any]) -> None:
        self.tokens.insert_one({"revoked": False, "used": False, **doc})

    def get_token(self, key: str) -> dict[str, Any] | None:
        return self.tokens.find_one({"_id": key})

    def use_refresh(self, key: str) -> bool:
        """Mark a rotating refresh token used; False if it already was (a replay)."""
        return self.tokens.find_one_and_update({"_id": key, "used": False, "revoked": False},
                                               {"$set": {"used": True}}) is not None

    def revoke_token(self, key: str) -> None:
        self.tokens.update_one({"_id": key}, {"$set": {"revoked": True}})

    def revoke_grant(self, grant: str) -> int:
        """Revoke every token issued under one authorization (code, refresh chain)."""
        self.codes.update_many({"grant": grant}, {"$set": {"used": True}})
        return self.tokens.update_many({"grant": grant}, {"$set": {"revoked": True}}).modified_count

    def grants_of_user(self, user: str, now: datetime) -> Iterator[dict[str, Any]]:
        """Live tokens of a user, newest first (the management page groups them by grant)."""
        return iter(self.tokens.find({"user": user, "revoked": False, "exp": {"$gt": now}})
                    .sort("iat", -1))

    # ------------------------------------------------------------ launches
    def save_launch(self, doc: dict[str, Any]) -> None:
        self.launches.insert_one({**doc, "used": False})

    def consume_launch(self, launch: str) -> dict[str, Any] | None:
        return self.launches.find_one_and_update({"_id": launch, "used": False}, {"$set": {"used": True}})

    def peek_launch(self, launch: str) -> dict[str, Any] | None:
        return self.launches.find_one({"_id": launch, "used": False})

    # ---------------------------------------------------------- assertions
    def claim_jti(self, client_id: str, jti: str, exp: datetime) -> bool:
        try:
            self.jtis.insert_one({"_id": f"{client_id} {jti}", "exp": exp})
        except DuplicateKeyError:
            return False
        return True

    # ------------------------------------------------- sessions and pending
    def save_session(self, doc: dict[str, Any]) -> None:
        self.sessions.insert_one(doc)

    def get_session(self, key: str) -> dict[str, Any] | None:
        return self.sessions.find_one({"_id": key})

    def delete_session(self, key: str) -> None:
        self.sessions.delete_one({"_id": key})

    def save_pending(self, doc: dict[str, Any]) -> None:
        self.pending.insert_one(doc)

    def get_pending(self, key: str) -> dict[str, Any] | None:
        return self.pending.find_one({"_id": key})

    def delete_pending(self, key: str) -> None:
        self.pending.delete_one({"_id": key})
