"""``facesearch-index``: build | add | remove | compact | info | verify | rollback.

    facesearch-index build --bundle DIR (--images TREE | --manifest FILE | --embeddings FILE | --from-store)
                           --out ROOT [--memory-budget 8G] [--ray ADDRESS] [--store URL]
    facesearch-index add ROOT (--images TREE | --manifest FILE | --embeddings FILE) [--bundle DIR] [--store URL]
    facesearch-index remove ROOT --identity ID [--identity ID ...] | --identities-file FILE [--bundle DIR]
    facesearch-index compact ROOT [--live-dir DIR] [--bundle DIR]
    facesearch-index info ROOT            the current manifest as JSON on stdout
    facesearch-index verify ROOT          sha256 of every file, consistency, recall re-measured
    facesearch-index rollback ROOT [--to VERSION]
    facesearch-index prune ROOT --keep N | erase-status ROOT [ID] | unerase ROOT ID   (indexer.erasure_commands)
    facesearch-index journal check|repair ROOT   the server's live journal (indexer.journal_commands)
    facesearch-index db migrate|status [--store URL]   a PostgreSQL store's schema (indexer.db_commands)
    facesearch-index audit list|prune ROOT       the audit log: who enrolled/deleted whom (indexer.audit_commands)

With a PostgreSQL store (``--store URL`` or ``FACESEARCH_STORE``) ``build``/``add``/``compact`` read and
write the store and ``remove`` deletes through it (indexer/store_build.py, indexer/store_compact.py).

Every published version carries ``open_set.npz``, the gallery's open-set statistics
(indexer/open_set_stage.py), listed in its manifest.

Photos (``--images``/``--manifest``): a photo with several faces gives its dominant face
(``--embed-options multi_face=dominant``, the default; ``largest`` or ``reject`` instead), and a
photo that cannot be read (missing, empty, truncated, undecodable, over the decode limits) is a
failed row in the version's ``rejects.jsonl``: the build goes on and publishes without it.

Exit status: 0 done; 1 published, but some input rows failed (unreadable photos, bad embedding
rows; listed in ``rejects.jsonl``), or the job failed (verify found problems, a contract
mismatch, a failed worker); 2 bad usage/input; 130 interrupted (rerun the same command to resume
the embedding stage).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from facesearch.errors import ExitCode, FaceSearchError, InvalidInputError, Reason
from facesearch.store.index_artifact import REJECTS_FILE, IndexManifest, read_manifest, resolve_version_dir
from facesearch.store.store_marker import require_store
from facesearch.vision.pipeline import detector_mode
from facesearch.vision.selection import is_failure
from indexer import (
    audit_commands,
    build,
    db_commands,
    erasure_commands,
    journal_commands,
    update,
    verify,
)
from indexer.config import (
    AddConfig,
    BuildConfig,
    EmbedOptions,
    InputSpec,
    RemoveConfig,
    VerifyConfig,
    to_jsonable,
)
from indexer.plan import IndexOptions
from indexer.publish import locked, rollback
from indexer.sizes import format_size, parse_size
from indexer.store_flag import add_store_flag, refuse_with_store, resolve_store

log = logging.getLogger("facesearch.indexer.main")


def default_budget() -> str:
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return "8G"
    return format_size(min(8 << 30, int(total * 0.7))).replace(".00", "")


def _add_input(p: argparse.ArgumentParser, *, required: bool, from_store: bool = False) -> None:
    group = p.add_mutually_exclusive_group(required=required)
    group.add_argument("--images", type=Path, metavar="TREE", help="folder tree, one folder per identity")
    group.add_argument("--manifest", type=Path, metavar="FILE", help="CSV/JSONL: path, identity_id, name, metadata")
    group.add_argument("--embeddings", type=Path, metavar="FILE", help=".npz or .parquet of precomputed embeddings")
    if from_store:
        group.add_argument(
            "--from-store",
            action="store_true",
            help="no input: retrain the index over everything the PostgreSQL store holds (needs --store)",
        )
    add_store_flag(p)


def _add_job_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--memory-budget",
        default=default_budget(),
        metavar="SIZE",
        help="peak memory of the job, e.g. 8G (default: %(default)s)",
    )
    p.add_argument("--ray", metavar="ADDRESS", help="run the embedding stage on Ray Data ('local', 'auto', ray://...)")
    p.add_argument("--keep-chips", action="store_true", help="store aligned face chips (photo pixels) in the store")
    p.add_argument("--workers", type=int, default=0, help="embedding processes / Ray actors (default: all cores)")
    p.add_argument(
        "--index-options",
        default="",
        metavar="K=V,...",
        help="nlist, refine (flat|fp16|sq8), exact_on_disk, flat_max, queries, target_recall_at_1, "
        "target_identity_agreement, margin, train_per_list, seed",
    )
    p.add_argument(
        "--embed-options",
        default="",
        metavar="K=V,...",
        help="min_face, min_blur, shard_size, multi_face (dominant (default), largest or reject), "
        "detector (budget (default) or cascade)",
    )
    p.add_argument("--keep-versions", type=int, default=3, help="published versions kept for rollback")
    p.add_argument("--restart", action="store_true", help="discard an unfinished embedding stage instead of resuming")
    p.add_argument("--threads", type=int, default=0, help="FAISS threads (default: all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


_OPEN_SET_BUNDLE = (
    "model bundle whose open-set calibration sets k and the template rule of open_set.npz "
    "(default: those of the current version)"
)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="facesearch-index", description="Build and manage face index versions.")
    sub = ap.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build a new index version from photos or embeddings")
    b.add_argument("--bundle", type=Path, metavar="DIR", help="model bundle (optional with --embeddings)")
    _add_input(b, required=True, from_store=True)
    b.add_argument("--out", type=Path, required=True, metavar="ROOT", help="index root")
    _add_job_flags(b)
    a = sub.add_parser("add", help="add faces/identities to the current version")
    a.add_argument("root", type=Path)
    a.add_argument("--bundle", type=Path, metavar="DIR")
    _add_input(a, required=True)
    a.add_argument("--retrain", action="store_true", help="full rebuild: train the index anew")
    _add_job_flags(a)
    r = sub.add_parser("remove", help="delete identities (faces, vectors, chips) in a new version")
    r.add_argument("root", type=Path)
    r.add_argument("--identity", action="append", default=[], metavar="ID")
    r.add_argument("--identities-file", type=Path, metavar="FILE", help="one identity id per line")
    r.add_argument("--memory-budget", default=default_budget(), metavar="SIZE")
    r.add_argument("--bundle", type=Path, metavar="DIR", help=_OPEN_SET_BUNDLE)
    add_store_flag(r)
    r.add_argument("--keep-versions", type=int, default=3)
    r.add_argument("--threads", type=int, default=0)
    r.add_argument("--quiet", action="store_true")
    i = sub.add_parser("info", help="the current manifest as JSON")
    i.add_argument("root", type=Path)
    i.add_argument("--version", help="a kept version instead of CURRENT")
    v = sub.add_parser("verify", help="re-check sha256 of every file and re-measure recall")
    v.add_argument("root", type=Path)
    v.add_argument("--version", help="a kept version instead of CURRENT")
    v.add_argument("--queries", type=int, default=0, help="held-out queries (default: as many as the build used)")
    v.add_argument("--seed", type=int, default=-1, help="query sample seed (default: the build's)")
    v.add_argument("--no-recall", action="store_true", help="only check files and consistency")
    v.add_argument("--threads", type=int, default=0)
    v.add_argument("--quiet", action="store_true")
    c = sub.add_parser("compact", help="publish the current version plus the server's live enrollments/deletions")
    c.add_argument("root", type=Path)
    c.add_argument("--live-dir", type=Path, metavar="DIR", help="the server's live journal (default: ROOT/live)")
    c.add_argument("--memory-budget", default=default_budget(), metavar="SIZE")
    c.add_argument("--bundle", type=Path, metavar="DIR", help=_OPEN_SET_BUNDLE)
    add_store_flag(c)
    c.add_argument("--keep-versions", type=int, default=3)
    c.add_argument("--threads", type=int, default=0)
    c.add_argument("--quiet", action="store_true")
    rb = sub.add_parser("rollback", help="point CURRENT at an older kept version")
    rb.add_argument("root", type=Path)
    rb.add_argument("--to", metavar="VERSION", help="default: the version before the current one")
    erasure_commands.add_parsers(sub)
    journal_commands.add_parsers(sub)
    audit_commands.add_parsers(sub)
    db_commands.add_parsers(sub)
    return ap


def _input(args: argparse.Namespace) -> InputSpec | None:
    if getattr(args, "from_store", False):
        return None
    for kind in ("images", "manifest", "embeddings"):
        if getattr(args, kind) is not None:
            return InputSpec(kind, getattr(args, kind))
    raise InvalidInputError("give one of --images, --manifest, --embeddings")


def _embed_options(args: argparse.Namespace) -> EmbedOptions:
    kwargs: dict[str, object] = {
        "ray_address": args.ray,
        "keep_chips": args.keep_chips,
        "workers": args.workers,
    }
    types: dict[str, Callable[[str], object]] = {
        "min_face": int,
        "min_blur": float,
        "shard_size": int,
        "multi_face": str,
        "detector": lambda v: detector_mode(v, "--embed-options detector"),
    }
    for item in filter(None, args.embed_options.split(",")):
        key, _, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if key not in types:
            raise InvalidInputError(f"bad embed option {item!r}; known: {', '.join(types)}")
        try:
            kwargs[key] = types[key](value)
        except ValueError:
            raise InvalidInputError(f"bad value in embed option {item!r}") from None
    return EmbedOptions(**kwargs)  # type: ignore[arg-type]


def summary(command: str, manifest: IndexManifest, vdir: Path) -> str:
    b = manifest.build
    r = manifest.recall
    lines = [
        f"facesearch-index {command}: published {manifest.version} -> {vdir}",
        f"  faces {manifest.ntotal:,}  identities {manifest.n_identities:,}  d {manifest.d}  contract "
        f"{manifest.contract_id}",
        f"  index {manifest.factory}"
        + (f" + {manifest.refine} re-ranking" if manifest.refine else "")
        + (" (+ exact rows on disk)" if manifest.exact_on_disk else "")
        + f"  nlist {manifest.nlist}  search {json.dumps(to_jsonable(manifest.search))}",
    ]
    if r is not None:
        lines.append(
            f"  recall@1 {r.recall_at_1:.4f} (target {r.target_recall_at_1})  "
            f"recall@10 {r.recall_at_10:.4f}  "
            f"identity agreement {r.identity_agreement:.4f} (target {r.target_identity_agreement})  "
            f"on {r.queries} held-out queries: {'met' if r.met else 'NOT MET'}"
        )
    if "input_rows" in b:
        rejected = ", ".join(f"{k} {v}" for k, v in sorted(b.get("rejected", {}).items())) or "none"
        lines.append(
            f"  input rows {b.get('images', b['input_rows']):,}  accepted {b['accepted']:,}  "
            f"rejected {b.get('rejected_total', 0):,} ({rejected})"
        )
    if b.get("erased_rows") or b.get("erased_faces_purged") or b.get("carried_live_faces"):
        lines.append(
            f"  erased subjects: {b.get('erased_rows', 0):,} input rows skipped, {b.get('erased_faces_purged', 0):,} "
            f"faces purged (ledger position {b.get('erasure_seq', 0)}); live faces carried over "
            f"{b.get('carried_live_faces', 0):,}, journal up to #{b.get('live_seq', 0)}"
        )
    if "open_set" in b:
        o = b["open_set"]
        lines.append(
            f"  open-set statistics: {o['identities']:,} identities, k={o['k']}, rule {o['rule']} "
            f"(from the {o['params_from']})"
        )
    if b.get("retrained"):
        lines.append(f"  retrained: {b['retrained']}")
    if "removed_faces" in b:
        lines.append(
            f"  removed {b.get('removed_identity_count', b.get('deleted_identities', 0))} identities, "
            f"{b['removed_faces']} faces"
            + (f"; not found: {', '.join(b['not_found'][:5])}" if b.get("not_found") else "")
        )
    stages = "  ".join(
        f"{k.removesuffix('_s')} {b[k]:.1f}s"
        for k in ("embed_s", "ingest_s", "train_s", "add_s", "tune_s", "write_s", "open_set_s", "total_s")
        if b.get(k)
    )
    lines.append(f"  time: {stages}")
    lines.append(
        f"  peak RSS {format_size(b.get('peak_rss', 0))}  "
        f"index ~{format_size(b.get('index_bytes_estimate', 0))}"
        f" ({b.get('bytes_per_face_estimate', 0):.0f} B/face)"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    # OpenMP threads that spin while waiting crawl when the cores are shared (FAISS then runs
    # 10-50x slower); passive waiting costs little. Only effective before FAISS is first imported.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        print("facesearch-index: interrupted (rerun the same command to resume)", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except InvalidInputError as err:
        print(f"facesearch-index: error ({err.reason}): {err}", file=sys.stderr)
        return ExitCode.ERROR
    except FaceSearchError as err:
        # Not exit_code(err): this tool exits 1 for a job that stopped on anything but its input (a
        # contract mismatch, a corrupt version, a failed worker); kept as it was (README: exit status).
        print(f"facesearch-index: failed ({err.reason}): {err}", file=sys.stderr)
        return ExitCode.FAILED


def _build_config(args: argparse.Namespace) -> BuildConfig:
    return BuildConfig(
        out=args.out,
        input=_input(args),
        bundle=args.bundle,
        memory_budget=parse_size(args.memory_budget),
        index=IndexOptions.parse(args.index_options),
        embed=_embed_options(args),
        keep_versions=args.keep_versions,
        threads=args.threads,
        restart=args.restart,
        progress=not args.quiet,
    )


def _add_config(args: argparse.Namespace) -> AddConfig:
    input_ = _input(args)
    assert input_ is not None
    return AddConfig(
        root=args.root,
        input=input_,
        bundle=args.bundle,
        memory_budget=parse_size(args.memory_budget),
        retrain=args.retrain,
        index=IndexOptions.parse(args.index_options),
        embed=_embed_options(args),
        keep_versions=args.keep_versions,
        threads=args.threads,
        restart=args.restart,
        progress=not args.quiet,
    )


def _remove_config(args: argparse.Namespace) -> RemoveConfig:
    ids = list(args.identity)
    if args.identities_file is not None:
        ids += [ln.strip() for ln in args.identities_file.read_text().splitlines() if ln.strip()]
    return RemoveConfig(
        root=args.root,
        identities=tuple(dict.fromkeys(ids)),
        memory_budget=parse_size(args.memory_budget),
        keep_versions=args.keep_versions,
        threads=args.threads,
        progress=not args.quiet,
        bundle=args.bundle,
    )


def _with_store(args: argparse.Namespace, url: str) -> int:
    """build | add | remove | compact with a PostgreSQL store (indexer.store_build, indexer.store_compact)."""
    if args.command == "remove":
        from indexer import store_build  # noqa: PLC0415 - imports the PostgreSQL driver

        gone = store_build.run_remove(_remove_config(args), url)
        print(
            f"facesearch-index remove: deleted {len(gone.removed)} identities ({gone.faces} faces) through the store "
            f"(up to seq {gone.last_seq}; replicas apply it as a DeleteIdentity)"
            + (f"; not found: {', '.join(gone.not_found[:5])}" if gone.not_found else "")
        )
        return _print_compacted(args.root, gone.result)
    if args.command == "compact":
        if args.live_dir is not None:
            refuse_with_store("--live-dir", "the store's change log is in PostgreSQL, not a directory")
        from indexer.compact import CompactConfig  # noqa: PLC0415
        from indexer.store_compact import run_from_store  # noqa: PLC0415 - imports the PostgreSQL driver

        outcome = run_from_store(
            CompactConfig(
                args.root,
                memory_budget=parse_size(args.memory_budget),
                keep_versions=args.keep_versions,
                threads=args.threads,
                progress=not args.quiet,
                bundle=args.bundle,
            ),
            url,
        )
        return _print_compacted(args.root, outcome)
    from indexer import store_build  # noqa: PLC0415 - imports the PostgreSQL driver

    if args.command == "build":
        job = store_build.run_build(_build_config(args), url)
    else:
        job = store_build.run_add(_add_config(args), url)
    if job.imported is not None:
        i = job.imported
        print(
            f"facesearch-index {args.command}: wrote {i.faces:,} faces to the store ({i.identities:,} identities "
            f"created; {i.duplicates:,} already held, {i.erased:,} of erased subjects skipped), up to seq {i.last_seq}"
        )
    if job.result.job is None:
        print(f"facesearch-index {args.command}: nothing new to publish")
        return ExitCode.OK
    manifest, vdir = job.result.job.manifest, job.result.job.version_dir
    print(summary(args.command, manifest, vdir))
    print(f"  absorbed the store's log up to seq {job.result.live_seq}")
    return rows_status(manifest, vdir)


def _print_compacted(root: Path, outcome: Any) -> int:
    if outcome.job is None:
        print(f"facesearch-index compact: nothing to compact in {root}")
        return ExitCode.OK
    print(summary("compact", outcome.job.manifest, outcome.job.version_dir))
    print(
        f"live changes folded in up to #{outcome.live_seq}: +{outcome.added_faces} faces, "
        f"-{outcome.removed_faces} faces, -{outcome.deleted_identities} identities"
    )
    return ExitCode.OK


def rows_status(manifest: IndexManifest, vdir: Path) -> ExitCode:
    """OK when every input row was read, FAILED (with a note on stderr) when some failed: the photos
    that could not be read or analysed and bad embedding rows, not face-choice or quality rejects."""
    rejected: dict[str, int] = manifest.build.get("rejected", {})
    failed = {reason: n for reason, n in rejected.items() if is_failure(reason)}
    if not failed:
        return ExitCode.OK
    listed = ", ".join(f"{reason} {n}" for reason, n in sorted(failed.items()))
    print(
        f"facesearch-index: {sum(failed.values())} input rows failed ({listed}); published without them, "
        f"see {vdir / REJECTS_FILE}",
        file=sys.stderr,
    )
    return ExitCode.FAILED


def _dispatch(args: argparse.Namespace) -> int:
    if args.command in erasure_commands.COMMANDS:
        return erasure_commands.dispatch(args)
    if args.command in journal_commands.COMMANDS:
        return journal_commands.dispatch(args)
    if args.command in audit_commands.COMMANDS:
        return audit_commands.dispatch(args)
    if args.command in db_commands.COMMANDS:
        return db_commands.dispatch(args)
    if args.command in ("build", "add", "remove", "compact"):
        url = resolve_store(args.store)
        if url is not None:
            return _with_store(args, url)
        # a root published from a PostgreSQL store has its erasures in that store's ledger
        require_store(args.out if args.command == "build" else args.root, f"{args.command}", with_store=False)
        if args.command == "build" and args.from_store:
            raise InvalidInputError(
                "build --from-store needs a PostgreSQL store: pass --store postgresql://... or set FACESEARCH_STORE",
                reason=Reason.BAD_ARGS,
            )
    if args.command == "build":
        result = build.run(_build_config(args))
        print(summary("build", result.manifest, result.version_dir))
        return rows_status(result.manifest, result.version_dir)
    if args.command == "add":
        result = update.run_add(_add_config(args))
        print(summary("add", result.manifest, result.version_dir))
        return rows_status(result.manifest, result.version_dir)
    if args.command == "remove":
        result = update.run_remove(_remove_config(args))
        print(summary("remove", result.manifest, result.version_dir))
        return ExitCode.OK
    if args.command == "info":
        vdir = resolve_version_dir(args.root / args.version if args.version else args.root)
        print((vdir / "manifest.json").read_text().rstrip())
        return ExitCode.OK
    if args.command == "verify":
        report = verify.run(
            VerifyConfig(
                root=args.root,
                version=args.version,
                queries=args.queries,
                recall=not args.no_recall,
                seed=args.seed,
                threads=args.threads,
                progress=not args.quiet,
            )
        )
        print(json.dumps(asdict(report), indent=2))
        return ExitCode.OK if report.ok else ExitCode.FAILED
    if args.command == "compact":
        from indexer.compact import compact  # noqa: PLC0415 - reads the server's journal format

        outcome = compact(
            args.root,
            live_dir=args.live_dir,
            memory_budget=parse_size(args.memory_budget),
            keep_versions=args.keep_versions,
            threads=args.threads,
            progress=not args.quiet,
            bundle=args.bundle,
        )
        return _print_compacted(args.root, outcome)
    if args.command == "rollback":
        with locked(args.root):
            to = rollback(args.root, args.to)
        print(f"facesearch-index rollback: CURRENT -> {to} ({read_manifest(args.root / to).ntotal:,} faces)")
        return ExitCode.OK
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
