"""``facesearch enroll|identify|verify|delete|list``: client calls to a running server.

Connection options (every command): ``--target HOST:PORT`` ($FACESEARCH_TARGET, default
localhost:50051; several replicas of one gallery comma-separated, ``HOST:PORT,HOST:PORT``, each
call balanced round-robin over those that answer), ``--token``/``--token-file``
($FACESEARCH_TOKEN) for bearer auth, ``--tls`` with ``--ca-cert``/``--client-cert``/``--client-key``,
``--timeout`` seconds, ``--json``.

``identify --max-fpir X`` holds the rate of people who are not enrolled that get matched
to someone at X (e.g. 0.01) at the server's current gallery size; ``--max-fmr X`` holds the
false-match rate per comparison (both: the stricter wins). Both need a calibrated bundle on
the server; without them the server's default applies. ``--min-similarity`` is a raw cosine.

``identify --json`` prints one JSON object per image, in input order, a stable contract::

    {"path": "a.jpg", "faces": [{"box": [x1, y1, x2, y2], "detection_score": 1.02,
      "match": {"identity_id": "alice", "name": "Alice", "similarity": 0.94, "normalised_score": 0.081} | null,
      "candidates": [{"identity_id": "alice", "name": "Alice", "similarity": 0.94, "face_id": "17",
                      "normalised_score": 0.081}, ...],
      "threshold": {"kind": "max_fpir", "value": 0.0288, "score_kind": "normalised", "gallery_size": 417,
                    "fmr": 2.4e-05, "fpir": 0.01, "capped": false, "reason": "FPIR 1% at gallery size 417 -> ..."}}],
     "detection": {"min_face_px": 152, "scanned_pixels": 3395484, "limited": true}}

``similarity`` is the raw cosine with the identity's best face; ``normalised_score`` the
open-set decision score (null if the server has none); ``threshold`` the threshold the
decision used (``kind``: min_similarity | max_fmr | max_fpir | default; ``score_kind``: raw
| normalised; ``fmr``/``fpir`` null when uncalibrated), the same for every face of a photo.
``detection`` says what the server's detector searched in the photo: faces down to
``min_face_px`` (a box side, in the photo's pixels); ``limited`` when its detection budget made
that larger than its default (a large photo); null from a server that does not say.
``--min-face PX`` asks for smaller faces (``identify`` and ``enroll``), up to the server's cost limit.
Keys are only ever added. An image that could not be read or identified has ``"faces": []``
and an extra ``"error": {"reason": ..., "message": ...}``; the exit status is then 1.

``enroll`` adds faces to an identity that exists only with ``--append`` (IDENTITY_EXISTS
otherwise). Each enroll carries a request id (``--request-id``, default a fresh UUID) and is
retried with it on UNAVAILABLE and DEADLINE_EXCEEDED, so it never enrolls twice; rerunning a
failed command with the same ``--request-id`` returns the first result if it did go through.
A server that cannot be reached (or cannot write now) ends the command with one line saying so
(exit status 2).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from facesearch.errors import ExitCode, FaceSearchError, InvalidInputError, Reason, UnavailableError, exit_code

COMMANDS = ("enroll", "identify", "verify", "delete", "list")


def _connection_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("connection")
    g.add_argument(
        "--target",
        default=None,
        help="server HOST:PORT, or replicas HOST:PORT,HOST:PORT (round-robin) [$FACESEARCH_TARGET, localhost:50051]",
    )
    g.add_argument("--token", default=None, help="bearer token [$FACESEARCH_TOKEN]")
    g.add_argument("--token-file", type=Path, default=None, help="file holding the bearer token")
    g.add_argument("--tls", action="store_true", help="use TLS (system roots unless --ca-cert)")
    g.add_argument("--ca-cert", type=Path, default=None, help="CA certificate(s) to trust, PEM")
    g.add_argument("--client-cert", type=Path, default=None, help="client certificate for mutual TLS, PEM")
    g.add_argument("--client-key", type=Path, default=None, help="client private key for mutual TLS, PEM")
    g.add_argument("--timeout", type=float, default=60.0, help="seconds per call (default 60)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _min_face_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--min-face",
        type=int,
        default=None,
        metavar="PX",
        help="smallest face to search for, in the photo's pixels (default: the server's, within its "
        "detection budget; the reply says what was searched)",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("enroll", help="enroll photos of one person into a server")
    p.add_argument("--identity", required=True, help="the person's id")
    p.add_argument("--name", default=None, help="display name")
    p.add_argument("--create-only", action="store_true", help="fail if the identity already exists")
    p.add_argument(
        "--append", action="store_true", help="add the faces to an identity that exists (else IDENTITY_EXISTS)"
    )
    p.add_argument(
        "--request-id",
        default=None,
        metavar="ID",
        help="idempotency key (default: a fresh UUID); rerunning with the same id and photos after a failure "
        "returns the first result instead of enrolling twice",
    )
    p.add_argument("--use-largest-face", action="store_true", help="enroll the largest face of group photos")
    _min_face_option(p)
    p.add_argument("images", nargs="+", type=Path, help="photos of the person")
    _connection_options(p)

    p = subparsers.add_parser("identify", help="who is in these photos (streamed to the server)")
    p.add_argument("images", nargs="*", type=Path, help="photos")
    p.add_argument(
        "--list", type=Path, dest="list_file", default=None, help="file with one photo path per line (or a folder)"
    )
    p.add_argument("--top-k", type=int, default=5, help="identities per face (default 5)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--min-similarity", type=float, default=None, help="raw cosine threshold (default: the server's)")
    g.add_argument(
        "--max-fpir",
        type=float,
        default=None,
        metavar="X",
        help="false-positive identification rate to hold: the fraction of people not enrolled "
        "that get matched to someone (e.g. 0.01), at the current gallery size",
    )
    p.add_argument(
        "--max-fmr",
        type=float,
        default=None,
        metavar="X",
        help="false-match rate per comparison to hold (e.g. 1e-5); with --max-fpir the stricter wins",
    )
    p.add_argument("--largest-only", action="store_true", help="only the largest face of each photo")
    _min_face_option(p)
    _connection_options(p)

    p = subparsers.add_parser("verify", help="are these the same person (photo vs photo, or vs an identity)")
    p.add_argument("image", type=Path, help="the probe photo")
    p.add_argument("reference", nargs="?", type=Path, default=None, help="the reference photo")
    p.add_argument("--identity", default=None, help="compare with this enrolled identity instead")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--min-similarity", type=float, default=None, help="cosine threshold (default: the server's)")
    g.add_argument("--max-fmr", type=float, default=None, metavar="X", help="false-match rate to hold (e.g. 1e-4)")
    _connection_options(p)

    p = subparsers.add_parser("delete", help="delete an identity (or some faces) from a server")
    p.add_argument("identity", nargs="?", default=None, help="the identity to delete with all its faces")
    p.add_argument("--faces", nargs="+", default=None, metavar="FACE_ID", help="delete only these faces")
    _connection_options(p)

    p = subparsers.add_parser("list", help="list the identities of a server")
    p.add_argument("--page-size", type=int, default=500, help="identities per request (default 500)")
    _connection_options(p)


def dispatch(args: argparse.Namespace) -> int | None:
    """Run a client command; ``None`` if ``args.command`` is not one of them."""
    if args.command not in COMMANDS:
        return None
    try:
        with _connect(args) as client:
            return int(_RUN[args.command](client, args))
    except FaceSearchError as err:
        if getattr(args, "json", False):
            print(json.dumps({"error": {"reason": err.reason, "message": err.message}}))
        if isinstance(err, UnavailableError):
            target = args.target or os.environ.get("FACESEARCH_TARGET") or "localhost:50051"
            print(
                f"facesearch {args.command}: error: the server at {target} is unavailable ({err.reason}): "
                f"{err.message}. Is it running and reachable (--target, $FACESEARCH_TARGET)? Retry later"
                + (" with the same --request-id" if args.command == "enroll" else ""),
                file=sys.stderr,
            )
            return exit_code(err)
        print(f"facesearch {args.command}: error: {err.message} ({err.reason})", file=sys.stderr)
        return exit_code(err)


def _connect(args: argparse.Namespace) -> Any:
    from facesearch.client.service_client import DEFAULT_TARGET, FaceSearchClient  # noqa: PLC0415 - keep CLI start fast

    token = args.token or os.environ.get("FACESEARCH_TOKEN") or None
    if args.token_file is not None:
        try:
            token = args.token_file.read_text().strip()
        except OSError as err:
            raise InvalidInputError(f"--token-file {args.token_file}: {err}", reason=Reason.BAD_TOKEN_FILE) from err
    target = args.target or os.environ.get("FACESEARCH_TARGET") or DEFAULT_TARGET
    return FaceSearchClient(
        target,
        token=token,
        tls=args.tls,
        ca_cert=args.ca_cert,
        client_cert=args.client_cert,
        client_key=args.client_key,
        timeout=args.timeout,
    )


def _out(args: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    print(json.dumps(data) if args.json else text, flush=True)


# -- commands ------------------------------------------------------------------------------------
def _enroll(client: Any, args: argparse.Namespace) -> int:
    r = client.enroll(
        args.identity,
        [_read(p) for p in args.images],
        name=args.name,
        create_only=args.create_only,
        use_largest_face=args.use_largest_face,
        sources=[str(p) for p in args.images],
        min_face_px=args.min_face,
        append=args.append,
        request_id=args.request_id,
    )
    images = [
        {
            "path": str(args.images[i.index]),
            "accepted": i.accepted,
            "face_id": i.face_id or None,
            "reject_reason": i.reject_reason or None,
            "message": i.message,
            "detection": detection_json(i.detection),
        }
        for i in r.images
    ]
    data = {
        "identity_id": r.identity_id,
        "created": r.created,
        "face_ids": r.face_ids,
        "face_count": r.face_count,
        "images": images,
    }
    lines = [
        f"{r.identity_id}: enrolled {len(r.face_ids)} of {len(images)} photos"
        f"{' (new identity)' if r.created else ''}, {r.face_count} faces in all"
    ]
    lines += [f"  rejected {i['path']}: {i['reject_reason']} ({i['message']})" for i in images if not i["accepted"]]
    _out(args, data, "\n".join(lines))
    return ExitCode.OK if r.face_ids else ExitCode.FAILED


def _paths(args: argparse.Namespace) -> list[Path]:
    paths = list(args.images)
    if args.list_file is not None:
        from facesearch.jobs.image_list import read_image_list  # noqa: PLC0415

        paths.extend(read_image_list(args.list_file))
    if not paths:
        raise InvalidInputError("identify: name photos, or --list FILE", reason=Reason.NO_IMAGES)
    return paths


def _score(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def threshold_json(t: Any) -> dict[str, Any]:
    """The ``threshold`` object of ``identify --json``."""
    return {
        "kind": t.kind,
        "value": round(t.value, 4),
        "score_kind": t.score_kind,
        "gallery_size": t.gallery_size,
        "fmr": None if t.fmr is None else float(f"{t.fmr:.3g}"),
        "fpir": None if t.fpir is None else float(f"{t.fpir:.3g}"),
        "capped": t.capped,
        "reason": t.reason,
    }


def identify_json(path: str, result: Any) -> dict[str, Any]:
    """The ``identify --json`` object of one photo (the stable contract)."""
    faces = []
    threshold = threshold_json(result.threshold)
    for f in result.faces:
        m = f.match
        faces.append(
            {
                "box": [round(v, 2) for v in f.box],
                "detection_score": round(f.detection_score, 4),
                "match": None
                if m is None
                else {
                    "identity_id": m.identity_id,
                    "name": m.name,
                    "similarity": round(m.similarity, 4),
                    "normalised_score": _score(m.normalised_score),
                },
                "candidates": [
                    {
                        "identity_id": c.identity_id,
                        "name": c.name,
                        "similarity": round(c.similarity, 4),
                        "face_id": c.face_id,
                        "normalised_score": _score(c.normalised_score),
                    }
                    for c in f.candidates
                ],
                "threshold": threshold,
            }
        )
    return {"path": path, "faces": faces, "detection": detection_json(result.detection)}


def detection_json(scope: Any) -> dict[str, Any] | None:
    """The ``detection`` object of ``identify --json`` (None: the server did not say)."""
    if scope is None:
        return None
    return {"min_face_px": scope.min_face_px, "scanned_pixels": scope.scanned_pixels, "limited": scope.limited}


def _searched(scope: Any) -> str:
    return "" if scope is None else f"  [faces >= {scope.min_face_px} px searched]"


def _describe(c: Any, score_kind: str) -> str:
    if score_kind == "normalised" and c.normalised_score is not None:
        return f"{c.normalised_score:.3f} normalised, similarity {c.similarity:.3f}"
    return f"{c.similarity:.3f}"


def _identify_text(path: str, result: Any) -> str:
    if not result.faces:
        return f"{path}: no face{_searched(result.detection)}"
    parts = []
    kind = result.threshold.score_kind
    for f in result.faces:
        box = ",".join(f"{v:.0f}" for v in f.box)
        if f.match is not None:
            who = f"{f.match.name or f.match.identity_id} ({f.match.identity_id}) {_describe(f.match, kind)}"
        else:
            best = f.candidates[0] if f.candidates else None
            who = "unknown" + (f" (closest {best.identity_id} {_describe(best, kind)})" if best else "")
        parts.append(f"[{box}] {who}")
    limited = _searched(result.detection) if result.detection is not None and result.detection.limited else ""
    return f"{path}: " + "; ".join(parts) + f"  [threshold {result.threshold.value:.4f} {kind}]{limited}"


def _identify(client: Any, args: argparse.Namespace) -> int:
    paths = _paths(args)
    unreadable: dict[int, FaceSearchError] = {}

    def items() -> Iterator[tuple[str, bytes]]:
        for i, p in enumerate(paths):
            try:
                data = p.read_bytes()
            except OSError as err:
                unreadable[i] = InvalidInputError(
                    f"cannot read {p}: {err.strerror or err}", reason=Reason.IMAGE_UNREADABLE
                )
                continue
            yield str(i), data

    failed = 0
    printed = 0

    def emit(i: int, result: Any, error: FaceSearchError | None) -> None:
        nonlocal failed
        path = str(paths[i])
        if error is not None:
            failed += 1
            data = {"path": path, "faces": [], "error": {"reason": error.reason, "message": error.message}}
            _out(args, data, f"{path}: error: {error.message} ({error.reason})")
        else:
            _out(args, identify_json(path, result), _identify_text(path, result))

    for item in client.identify_stream(
        items(),
        top_k=args.top_k,
        min_similarity=args.min_similarity,
        largest_only=args.largest_only,
        max_fpir=args.max_fpir,
        max_fmr=args.max_fmr,
        min_face_px=args.min_face,
    ):
        i = int(item.tag)
        while printed < i:  # photos skipped before this one could not be read
            emit(printed, None, unreadable[printed])
            printed += 1
        emit(i, item.result, item.error)
        printed = i + 1
    while printed < len(paths):
        emit(printed, None, unreadable.get(printed) or InvalidInputError("no reply", reason=Reason.NO_REPLY))
        printed += 1
    return ExitCode.FAILED if failed else ExitCode.OK


def _verify(client: Any, args: argparse.Namespace) -> int:
    if (args.reference is None) == (args.identity is None):
        raise InvalidInputError("verify: give a reference photo or --identity ID (one of them)", reason=Reason.BAD_ARGS)
    r = client.verify(
        _read(args.image),
        reference_image=_read(args.reference) if args.reference else None,
        identity_id=args.identity,
        min_similarity=args.min_similarity,
        max_fmr=args.max_fmr,
    )
    data = {
        "decision": r.decision,
        "same": r.same,
        "similarity": round(r.similarity, 4),
        "min_similarity": round(r.min_similarity, 4),
        "reference_face_id": r.reference_face_id or None,
    }
    if r.threshold is not None:
        data["threshold"] = threshold_json(r.threshold)
    _out(args, data, f"{r.decision} similarity {r.similarity:.3f} (threshold {r.min_similarity:.3f})")
    return ExitCode.OK


def _delete(client: Any, args: argparse.Namespace) -> int:
    if args.faces:
        n = client.delete_faces(args.faces)
        _out(args, {"faces_deleted": n}, f"deleted {n} faces")
        return ExitCode.OK
    if not args.identity:
        raise InvalidInputError("delete: name an identity, or --faces FACE_ID...", reason=Reason.BAD_ARGS)
    n = client.delete_identity(args.identity)
    _out(args, {"identity_id": args.identity, "faces_deleted": n}, f"deleted {args.identity} and its {n} faces")
    return ExitCode.OK


def _list(client: Any, args: argparse.Namespace) -> int:
    for ident in client.list_identities(page_size=args.page_size):
        data = {
            "identity_id": ident.identity_id,
            "name": ident.name,
            "face_count": ident.face_count,
            "metadata": ident.metadata,
        }
        _out(args, data, f"{ident.identity_id}\t{ident.name}\t{ident.face_count}")
    return ExitCode.OK


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise InvalidInputError(f"cannot read {path}: {err.strerror or err}", reason=Reason.IMAGE_UNREADABLE) from err


_RUN = {"enroll": _enroll, "identify": _identify, "verify": _verify, "delete": _delete, "list": _list}
