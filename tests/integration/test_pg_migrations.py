"""The PostgreSQL store's schema migrations against a real PostgreSQL (tests/pg_fixtures.py): applied once,
re-applied as a no-op, concurrent runs safe, a failing migration leaves nothing, a schema of another
version refused by the store and by ``migrate``; ``facesearch-index db migrate|status`` exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import psycopg
import pytest

from facesearch.errors import PreconditionError, Reason, UnavailableError
from facesearch.store.postgres import LATEST, MIGRATIONS, Migration, PgStore, PoolSettings, check_schema, migrate
from facesearch.store.postgres.migrations import current_version
from tests.pg_fixtures import *  # noqa: F403
from tests.pg_fixtures import PgServer, free_port

REPO = Path(__file__).resolve().parents[2]
FAST = PoolSettings(timeout_s=3.0, connect_timeout_s=2)


def _tables(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
    return {r[0] for r in rows}


def test_migrate_applies_every_migration_once_and_again_is_a_no_op(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        assert current_version(conn) == 0
        first = migrate(conn)
        assert (first.before, first.after, first.applied) == (0, LATEST, tuple(m.version for m in MIGRATIONS))
        again = migrate(conn)
        assert (again.before, again.after, again.applied) == (LATEST, LATEST, ())
        assert check_schema(conn) == LATEST
        rows = conn.execute("SELECT version FROM schema_version ORDER BY version").fetchall()
    assert [r[0] for r in rows] == [m.version for m in MIGRATIONS]
    assert {"identities", "faces", "changes", "tombstones", "erasures", "audit_log", "idempotency_keys"} <= _tables(
        pg_dsn
    )


def test_concurrent_migrations_apply_each_version_exactly_once(pg_dsn: str) -> None:
    reports = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def run() -> None:
        try:
            with psycopg.connect(pg_dsn) as conn:
                barrier.wait()
                reports.append(migrate(conn))
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(len(r.applied) for r in reports) == [0, 0, 0, len(MIGRATIONS)]


def test_a_failing_migration_leaves_the_schema_as_it_was(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        migrate(conn)
        broken = (*MIGRATIONS, Migration(LATEST + 1, "half", "CREATE TABLE half_done (x int); SELECT * FROM nowhere"))
        with pytest.raises(psycopg.errors.UndefinedTable):
            migrate(conn, migrations=broken)
        assert current_version(conn) == LATEST
    assert "half_done" not in _tables(pg_dsn)


def test_a_store_refuses_an_unmigrated_and_a_newer_schema(pg_dsn: str) -> None:
    with pytest.raises(PreconditionError, match="db migrate") as older:
        PgStore.open(pg_dsn, contract_id="c", d=4, pool=FAST)
    assert older.value.reason is Reason.STORE_SCHEMA
    with psycopg.connect(pg_dsn) as conn:
        migrate(conn)
        conn.execute("INSERT INTO schema_version (version, name) VALUES (%s, 'from the future')", (LATEST + 1,))
        conn.commit()
    with pytest.raises(PreconditionError, match=f"reads up to {LATEST}") as newer:
        PgStore.open(pg_dsn, contract_id="c", d=4, pool=FAST)
    assert newer.value.reason is Reason.STORE_SCHEMA
    with psycopg.connect(pg_dsn) as conn, pytest.raises(PreconditionError) as refused:
        migrate(conn)
    assert refused.value.reason is Reason.STORE_SCHEMA


def test_a_store_is_bound_to_one_model_contract(pg_dsn: str) -> None:
    from facesearch.errors import ContractMismatchError

    with psycopg.connect(pg_dsn) as conn:
        migrate(conn)
    with PgStore.open(pg_dsn, contract_id="model-a", d=4, pool=FAST) as store:
        first_id = store.store_id
    with PgStore.open(pg_dsn, contract_id="model-a", d=4, pool=FAST) as store:
        assert store.store_id == first_id  # made once, kept
    with pytest.raises(ContractMismatchError, match="model-a"):
        PgStore.open(pg_dsn, contract_id="model-b", d=4, pool=FAST)
    with pytest.raises(ContractMismatchError):
        PgStore.open(pg_dsn, contract_id="model-a", d=8, pool=FAST)


def test_a_store_that_cannot_be_reached_is_unavailable(pg_server: PgServer) -> None:
    dead = f"postgresql://facesearch:{pg_server.password}@127.0.0.1:{free_port()}/postgres"
    with pytest.raises(UnavailableError) as err:
        PgStore.open(dead, contract_id="c", d=4, pool=PoolSettings(timeout_s=1.0, connect_timeout_s=1))
    assert err.value.reason is Reason.STORE_UNAVAILABLE
    assert pg_server.password not in str(err.value)  # the password never appears in a message


def _index(*args: str, store: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "FACESEARCH_STORE"}
    if store is not None:
        env["FACESEARCH_STORE"] = store
    return subprocess.run(
        [sys.executable, "-m", "indexer", *args],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )


def test_db_commands_migrate_and_report_status_with_exit_codes(pg_dsn: str) -> None:
    before = _index("db", "status", store=pg_dsn)
    assert before.returncode == 1, before.stderr
    assert json.loads(before.stdout)["schema_version"] == 0
    done = _index("db", "migrate", "--store", pg_dsn, store=None)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["applied"] == [m.version for m in MIGRATIONS]
    again = _index("db", "migrate", store=pg_dsn)
    assert again.returncode == 0 and json.loads(again.stdout)["applied"] == []
    status = _index("db", "status", store=pg_dsn)
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["current"] and report["schema_version"] == LATEST and "***" in report["store"]
    assert report["replicas"] == [] and report["counts"]["faces"] == 0
    assert pg_dsn not in status.stdout  # password hidden
    usage = _index("db", "status", store=None)
    assert usage.returncode == 2 and "BAD_ARGS" in usage.stderr
    bad = _index("db", "status", store="mysql://somewhere/db")
    assert bad.returncode == 2 and "BAD_CONFIG" in bad.stderr
