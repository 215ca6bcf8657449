"""Who is calling, and what they may do: scopes, the principal, and the call's principal in context.

The edge interceptor (:mod:`server.interceptors`) authenticates a call (bearer token or client
certificate) and sets its :class:`Principal` for the handler with :func:`bind_principal`; the
service reads it with :func:`current_principal` where the answer depends on the caller (which
candidates an Identify reply may show, who goes into the audit log).

Scopes are a closed set. ``admin`` implies every other scope except ``candidates``, which is
opt-in (operators who need to see candidates below the decision threshold).
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from facesearch.errors import InvalidInputError, Reason


class Scope(StrEnum):
    IDENTIFY = "identify"  # Identify, Verify, Detect, StreamIdentify
    READ = "read"  # GetIdentity, ListIdentities, GetStats
    ENROLL = "enroll"  # Enroll (adding faces to an existing identity too, with its flag)
    DELETE = "delete"  # DeleteIdentity, DeleteFaces
    ADMIN = "admin"  # everything above, and reflection
    CANDIDATES = "candidates"  # opt-in: Identify replies also list candidates below the threshold


IMPLIED_BY_ADMIN = frozenset({Scope.IDENTIFY, Scope.READ, Scope.ENROLL, Scope.DELETE, Scope.ADMIN})


def parse_scopes(text: str | Iterable[str], *, where: str) -> frozenset[Scope]:
    """``"identify,read"`` (or an iterable of names) -> scopes; an unknown name is a BAD_CONFIG error
    naming ``where``."""
    names = [n.strip().lower() for n in (text.split(",") if isinstance(text, str) else text)]
    scopes: set[Scope] = set()
    for name in names:
        if not name:
            continue
        try:
            scopes.add(Scope(name))
        except ValueError:
            known = ", ".join(s.value for s in Scope)
            message = f"{where}: unknown scope {name!r} (known: {known})"
            raise InvalidInputError(message, reason=Reason.BAD_CONFIG) from None
    if Scope.ADMIN in scopes:
        scopes |= IMPLIED_BY_ADMIN
    return frozenset(scopes)


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller (or the anonymous one where the server runs without auth)."""

    name: str  # the token's name or the certificate's subject; "anonymous" without auth
    scopes: frozenset[Scope]

    def has(self, scope: Scope) -> bool:
        return scope in self.scopes


# Without auth configured the server listens on loopback only (unless told otherwise), and the local
# caller may do everything except see candidates below the threshold.
ANONYMOUS = Principal("anonymous", IMPLIED_BY_ADMIN)

_current: contextvars.ContextVar[Principal] = contextvars.ContextVar("facesearch_principal", default=ANONYMOUS)


def bind_principal(principal: Principal) -> contextvars.Token[Principal]:
    """Set the principal of the call running in this task (the interceptor does, before the handler)."""
    return _current.set(principal)


def current_principal() -> Principal:
    return _current.get()


def reset_principal(token: contextvars.Token[Principal]) -> None:
    """Undo :func:`bind_principal` (the interceptor does, when the handler is done)."""
    _current.reset(token)
