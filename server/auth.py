"""Credentials: hashed bearer tokens with scopes, client-certificate subjects with scopes, and reloads.

Token file (``FACESEARCH_AUTH_TOKENS_FILE``), one token a line, ``#`` comments and blank lines skipped::

    # name    scopes            sha256 of the secret
    frontdoor identify          sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
    ops       admin,candidates  sha256:...

``facesearch-server token new --name NAME --scopes identify,read`` mints a secret, prints it once and
the line to append (``--append FILE`` appends it). Secrets are 256 random bits, so one sha256 of
them is as good as a slow hash; a presented token is hashed and compared with every entry's digest
in constant time (no early exit), so timing says nothing about which entry is near.

The older format, a plain token alone on a line, still works (compatibility): each such token is
held as a principal named ``legacy-token-N`` with the ``admin`` scope, and loading the file logs a
deprecation warning. Convert with ``facesearch-server token hash``.

Client-certificate scopes (``FACESEARCH_TLS_CLIENT_SCOPES``; needs ``FACESEARCH_TLS_CLIENT_CA``),
one client a line, the certificate subject's common name then its scopes (a CN may hold spaces)::

    billing-frontend identify
    ops console      admin

Both files are read again when they change (checked every ``FACESEARCH_AUTH_RELOAD_S`` seconds)
and on SIGHUP; a new file that is broken is refused with an error in the log, and the previous
credentials stay in force.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from facesearch.errors import FaceSearchError, InvalidInputError, PermissionDeniedError, Reason, UnauthenticatedError
from server.principal import ANONYMOUS, IMPLIED_BY_ADMIN, Principal, Scope, parse_scopes

log = logging.getLogger(f"facesearch.{__name__}")

HASH_PREFIX = "sha256:"
SECRET_PREFIX = "fst_"  # facesearch token: easy to spot in a leaked config or a secret scanner
LEGACY_SCOPES = parse_scopes("admin", where="legacy token")
PUBLIC = Principal("public", frozenset())  # the caller of a public method (health), whoever it is


def new_secret() -> str:
    """A fresh bearer token: 256 random bits, URL-safe."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def digest_of(secret: str) -> str:
    """``sha256:<hex>`` of a secret, as the token file holds it."""
    return HASH_PREFIX + hashlib.sha256(secret.encode()).hexdigest()


def token_line(name: str, scopes: Iterable[Scope], secret: str) -> str:
    check_name(name, where="--name")
    return f"{name} {','.join(sorted(s.value for s in scopes))} {digest_of(secret)}"


def check_name(name: str, *, where: str) -> None:
    if not name or not name.isprintable() or any(c.isspace() for c in name) or len(name) > 128:
        raise InvalidInputError(
            f"{where}: a token name is 1..128 printable characters without spaces, got {name!r}",
            reason=Reason.BAD_CONFIG,
        )


@dataclass(frozen=True, slots=True)
class TokenEntry:
    principal: Principal
    digest: bytes  # sha256 of the secret
    legacy: bool = False  # a plain token in the old format


@dataclass(frozen=True, slots=True)
class TokenTable:
    entries: tuple[TokenEntry, ...]

    @property
    def legacy(self) -> int:
        return sum(e.legacy for e in self.entries)

    def find(self, secret: str) -> Principal | None:
        """The principal whose digest matches ``secret``: every entry is compared, in constant time."""
        given = hashlib.sha256(secret.encode()).digest()
        found: Principal | None = None
        for entry in self.entries:
            if hmac.compare_digest(given, entry.digest):
                found = entry.principal
        return found


def parse_token_file(text: str, *, where: str) -> TokenTable:
    """Lines ``name scopes sha256:<hex>``, or (old format) a plain token alone on a line."""
    entries: list[TokenEntry] = []
    names: set[str] = set()
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        here = f"{where} line {number}"
        words = line.split()
        if len(words) == 1:  # the old format: the token itself
            secret = words[0]
            name = f"legacy-token-{number}"
            entry = TokenEntry(Principal(name, LEGACY_SCOPES), hashlib.sha256(secret.encode()).digest(), legacy=True)
        elif len(words) == 3 and words[2].startswith(HASH_PREFIX):
            name, scopes, hashed = words
            check_name(name, where=here)
            hexdigest = hashed.removeprefix(HASH_PREFIX)
            if len(hexdigest) != 64 or any(c not in "0123456789abcdefABCDEF" for c in hexdigest):
                raise InvalidInputError(f"{here}: expected sha256:<64 hex digits>", reason=Reason.BAD_CONFIG)
            parsed = parse_scopes(scopes, where=here)
            if not parsed:
                raise InvalidInputError(f"{here}: token {name!r} has no scopes", reason=Reason.BAD_CONFIG)
            entry = TokenEntry(Principal(name, parsed), bytes.fromhex(hexdigest))
        else:
            raise InvalidInputError(
                f"{here}: expected 'NAME SCOPES sha256:HEX' (or a plain token alone, the old format)",
                reason=Reason.BAD_CONFIG,
            )
        if name in names:
            raise InvalidInputError(f"{here}: token name {name!r} appears twice", reason=Reason.BAD_CONFIG)
        names.add(name)
        entries.append(entry)
    if not entries:
        raise InvalidInputError(f"{where} holds no tokens", reason=Reason.BAD_CONFIG)
    return TokenTable(tuple(entries))


@dataclass(frozen=True, slots=True)
class ClientTable:
    """Client-certificate common names -> principals (named ``cert:CN``)."""

    clients: Mapping[str, Principal]


def parse_client_scopes(text: str, *, where: str) -> ClientTable:
    clients: dict[str, Principal] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        here = f"{where} line {number}"
        words = line.rsplit(None, 1)
        if len(words) != 2:
            raise InvalidInputError(f"{here}: expected 'COMMON-NAME SCOPES'", reason=Reason.BAD_CONFIG)
        subject, scopes = words[0].strip(), parse_scopes(words[1], where=here)
        if subject in clients:
            raise InvalidInputError(f"{here}: subject {subject!r} appears twice", reason=Reason.BAD_CONFIG)
        clients[subject] = Principal(f"cert:{subject}", scopes)
    return ClientTable(clients)


T = TypeVar("T")


class WatchedFile(Generic[T]):
    """A credentials file parsed at start (errors end start-up) and again whenever it changes."""

    def __init__(self, path: Path, parse: Callable[[str], T], what: str) -> None:
        self.path = path
        self.what = what
        self._parse = parse
        self._stamp = self._stat()
        self.value: T = parse(path.read_text())
        self.reloads = 0

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def reload(self, *, force: bool = False) -> bool:
        """Read the file again if it changed (or ``force``); a broken file keeps the old value. True if reloaded."""
        stamp = self._stat()
        if not force and stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            value = self._parse(self.path.read_text())
        except (OSError, UnicodeDecodeError, FaceSearchError) as err:
            log.error("%s %s not reloaded, the previous one stays in force: %s", self.what, self.path, err)
            return False
        self.value = value
        self.reloads += 1
        log.info("%s %s reloaded", self.what, self.path)
        return True


class Authenticator:
    """Who a call is: a bearer token, else a client certificate's subject; or anyone where auth is off.

    With no token file and no client-scopes file, every caller is :data:`~server.principal.ANONYMOUS`
    (named ``cert:CN`` when it presents a client certificate), which may do all but see candidates.
    """

    def __init__(self, tokens: WatchedFile[TokenTable] | None, clients: WatchedFile[ClientTable] | None) -> None:
        self.tokens = tokens
        self.clients = clients

    @classmethod
    def from_files(cls, tokens_file: Path | None, client_scopes_file: Path | None) -> Authenticator:
        tokens = clients = None
        if tokens_file is not None:
            where = f"FACESEARCH_AUTH_TOKENS_FILE {tokens_file}"
            tokens = WatchedFile(tokens_file, lambda text: parse_token_file(text, where=where), "token file")
            warn_legacy(tokens.value, tokens_file)
        if client_scopes_file is not None:
            where = f"FACESEARCH_TLS_CLIENT_SCOPES {client_scopes_file}"
            clients = WatchedFile(
                client_scopes_file, lambda text: parse_client_scopes(text, where=where), "client scopes file"
            )
        return cls(tokens, clients)

    @property
    def enabled(self) -> bool:
        return self.tokens is not None or self.clients is not None

    def reload(self, *, force: bool = False) -> None:
        if self.tokens is not None and self.tokens.reload(force=force):
            warn_legacy(self.tokens.value, self.tokens.path)
        if self.clients is not None:
            self.clients.reload(force=force)

    def principal(self, metadata: Mapping[str, str], auth_context: Mapping[str, Iterable[bytes]]) -> Principal:
        """The caller, from the call's metadata and TLS auth context; raises UNAUTHENTICATED or PERMISSION_DENIED."""
        cn = _common_name(auth_context)
        if not self.enabled:
            return Principal(f"cert:{cn}", IMPLIED_BY_ADMIN) if cn else ANONYMOUS
        header = metadata.get("authorization")
        if header is not None and self.tokens is not None:
            scheme, _, secret = header.partition(" ")
            if scheme.lower() != "bearer" or not secret.strip():
                raise UnauthenticatedError(
                    "malformed authorization metadata: send 'authorization: Bearer <token>'", reason=Reason.BAD_TOKEN
                )
            found = self.tokens.value.find(secret.strip())
            if found is None:
                raise UnauthenticatedError("invalid bearer token", reason=Reason.BAD_TOKEN)
            return found
        if cn is not None and self.clients is not None:
            client = self.clients.value.clients.get(cn)
            if client is None:
                raise PermissionDeniedError(
                    f"client certificate CN={cn!r} has no scopes in FACESEARCH_TLS_CLIENT_SCOPES",
                    reason=Reason.CLIENT_NOT_MAPPED,
                )
            return client
        if self.tokens is None:
            raise UnauthenticatedError(
                "no client certificate: this server authenticates callers by certificate", reason=Reason.MISSING_TOKEN
            )
        raise UnauthenticatedError(
            "missing bearer token: send metadata 'authorization: Bearer <token>'", reason=Reason.MISSING_TOKEN
        )


def warn_legacy(table: TokenTable, path: Path) -> None:
    if table.legacy:
        log.warning(
            "DEPRECATED: %s holds %d plain token(s) (the old format): each is accepted with the admin scope; "
            "store them hashed with scopes instead: `facesearch-server token hash --file %s`",
            path,
            table.legacy,
            path,
        )


def _common_name(auth_context: Mapping[str, Iterable[bytes]]) -> str | None:
    for value in auth_context.get("x509_common_name", ()):
        return value.decode(errors="replace")
    return None
