"""Notifications to patients: the one interface every feature uses to tell a person something happened.

This package owns the notification contract (:class:`Notifier`), the events it carries and, as the
life-cycle issue lands, the durable outbox (written in the writer's transaction, delivered by workers with
leases, retries, backoff and dead letters) and its channels (e-mail, SMS, letter). It may import
``fhir_server.store`` and ``fhir_server.fhir`` only; features (``access``, ``space``, ``rest``) import it.

A notification never carries health content: only the event kind, the space it concerns and neutral
references (who accessed, which thread), so that a letter or an SMS reveals nothing clinical.

Until the outbox exists, :class:`RecordingNotifier` keeps notifications in memory (tests, development)::

    notifier = RecordingNotifier()
    notifier.notify("Patient/123", "professional-first-access", {"actor": "Practitioner/9"})
    assert notifier.sent[0].event == "professional-first-access"
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

__all__ = ["EVENTS", "Notification", "Notifier", "RecordingNotifier"]

#: The events a patient can be notified of (the outbox may add channels, never health content).
EVENTS = frozenset({
    "space-activation",            # a new space: activation code (letter or e-mail)
    "space-closed",
    "space-reopened",
    "new-document",
    "new-message",
    "professional-first-access",   # the first time a professional opens the space
    "emergency-access",            # every access in emergency ("bris de glace") or regulation mode
    "representative-change",       # a legal representative attached or detached
    "majority",                    # the minor turned 18: invitation to activate their own access
    "reminder",                    # agenda reminders (vaccines, screenings)
})


@dataclass(frozen=True, slots=True)
class Notification:
    patient: str                   # "Patient/<id>": the space concerned
    event: str                     # one of EVENTS
    data: dict[str, Any] = field(default_factory=dict)  # neutral references only, no clinical content
    at: datetime = field(default_factory=lambda: datetime.now(UTC))
    key: str | None = None         # idempotency key: the same key is delivered once


class Notifier(Protocol):
    def notify(self, patient: str, event: str, data: dict[str, Any] | None = None, *,
               key: str | None = None, tx: Any = None) -> None:
        """Queue one notification for the patient of ``patient``.

        ``tx``: the store transaction of the change being notified (the outbox row is written in it, so a
        rolled-back change notifies nobody); ``None`` outside a write. ``key`` makes the call idempotent.
        """


class RecordingNotifier:
    """Keeps notifications in memory (tests and the default until the durable outbox is wired)."""

    def __init__(self) -> None:
        self.sent: list[Notification] = []
        self._keys: set[str] = set()
        self._lock = threading.Lock()

    def notify(self, patient: str, event: str, data: dict[str, Any] | None = None, *,
               key: str | None = None, tx: Any = None) -> None:
        if event not in EVENTS:
            raise ValueError(f"unknown notification event {event!r}")
        with self._lock:
            if key is not None:
                if key in self._keys:
                    return
                self._keys.add(key)
            self.sent.append(Notification(patient, event, dict(data or {}), key=key))

    def of(self, patient: str, event: str | None = None) -> list[Notification]:
        return [n for n in self.sent if n.patient == patient and (event is None or n.event == event)]
