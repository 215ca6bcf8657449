"""``facesearch-server token ...``: mint bearer tokens and convert an old plain-token file.

    facesearch-server token new --name frontdoor --scopes identify [--append FILE]
    facesearch-server token hash --file FILE

``new`` prints the secret once on stdout (only its sha256 is kept: it cannot be shown again) and
the line for the token file, or appends that line to ``--append FILE`` (a running server picks it
up within FACESEARCH_AUTH_RELOAD_S, or at once on SIGHUP). ``hash`` prints FILE with each plain
token of the old format replaced by its hashed line (``legacy-token-N admin sha256:...``), to
write back once the output looks right.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from facesearch.errors import ExitCode, FaceSearchError, InvalidInputError, Reason, exit_code
from server.auth import digest_of, new_secret, parse_token_file, token_line
from server.principal import parse_scopes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facesearch-server token", description="bearer tokens of the server")
    sub = parser.add_subparsers(dest="command", required=True)
    new = sub.add_parser("new", help="mint a token: print the secret once and its line for the token file")
    new.add_argument("--name", required=True, help="who holds it (the access log's principal)")
    new.add_argument("--scopes", required=True, help="comma-separated: identify,read,enroll,delete,admin,candidates")
    new.add_argument("--append", type=Path, metavar="FILE", help="append the line to this token file")
    conv = sub.add_parser("hash", help="print a token file with its plain (old format) tokens hashed")
    conv.add_argument("--file", type=Path, required=True)
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "new":
            return _new(args.name, args.scopes, args.append)
        return _hash(args.file)
    except FaceSearchError as err:
        print(f"facesearch-server token: error: {err}", file=sys.stderr)
        return exit_code(err)


def _new(name: str, scopes_text: str, append: Path | None) -> int:
    scopes = parse_scopes(scopes_text, where="--scopes")
    if not scopes:
        raise InvalidInputError("--scopes names no scope", reason=Reason.BAD_CONFIG)
    secret = new_secret()
    line = token_line(name, scopes, secret)
    if append is None:
        print(secret)
        print(f"# the token file's line (the secret above is shown once, only its sha256 is kept):\n{line}")
        return ExitCode.OK
    text = append.read_text() if append.exists() else ""
    where = f"--append {append}"
    if text.strip():
        parse_token_file(text, where=where)  # refuse to add to a broken file
    candidate = text + ("" if not text or text.endswith("\n") else "\n") + line + "\n"
    parse_token_file(candidate, where=where)  # e.g. the name is taken
    fd = os.open(append, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a") as out:
        out.write(candidate[len(text) :])
    print(secret)
    print(f"# appended to {append}: {line}", file=sys.stderr)
    return ExitCode.OK


def _hash(path: Path) -> int:
    text = path.read_text()
    parse_token_file(text, where=str(path))
    out = []
    for number, raw in enumerate(text.splitlines(), 1):
        words = raw.split()
        if len(words) == 1 and not raw.strip().startswith("#"):
            out.append(f"legacy-token-{number} admin {digest_of(words[0])}")
        else:
            out.append(raw)
    print("\n".join(out))
    return ExitCode.OK
