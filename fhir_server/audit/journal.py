"""The per-interaction access journal: what the Guard handed out or wrote.

An auditing wrapper opens a :class:`Journal` around one interaction (read, search,
bundle, operation…); the :class:`~fhir_server.access.guard.Guard` notes each resource it
returns or writes; the wrapper then turns the journal into AuditEvents. The journal
lives in a context variable, so nested interactions (a bundle's entries, a
conditional update calling update) share the outermost one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

__all__ = ["Access", "Journal", "current", "note", "note_denial", "opened"]

MAX_ENTRIES = 2000


@dataclass(frozen=True, slots=True)
class Access:
    interaction: str
    type: str
    id: str
    space: str | None
    version: int | None = None


@dataclass
class Journal:
    entries: list[Access] = field(default_factory=list)
    denials: list[tuple[str, str, str]] = field(default_factory=list)  # (interaction, type, reason)
    dropped: int = 0
    written_in_tx: int = 0  # writes already audited inside their own transaction

    def add(self, access: Access) -> None:
        if len(self.entries) < MAX_ENTRIES:
            self.entries.append(access)
        else:
            self.dropped += 1

    def spaces(self) -> list[str | None]:
        seen: dict[str | None, None] = {}
        for e in self.entries:
            seen.setdefault(e.space, None)
        return list(seen)


_current: ContextVar[Journal | None] = ContextVar("fhir_access_journal", default=None)


def current() -> Journal | None:
    return _current.get()


def note(interaction: str, type_: str, id_: str, space: str | None, version: int | None = None) -> None:
    j = _current.get()
    if j is not None:
        j.add(Access(interaction, type_, id_, space, version))


def note_denial(interaction: str, type_: str, reason: str) -> None:
    j = _current.get()
    if j is not None and len(j.denials) < 100:
        j.denials.append((interaction, type_, reason))


@contextmanager
def opened() -> Iterator[tuple[Journal, bool]]:
    """The current journal, opening one if none is open; ``(journal, outermost)``."""
    j = _current.get()
    if j is not None:
        yield j, False
        return
    j = Journal()
    token = _current.set(j)
    try:
        yield j, True
    finally:
        _current.reset(token)
