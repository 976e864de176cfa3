"""The catalog on both backends: every test runs on an SQLite file and on a real PostgreSQL
schema of its own (FEATLIB_TEST_POSTGRES, default postgresql://postgres@127.0.0.1:5432/test)."""

from __future__ import annotations

import datetime as dt
import itertools
import multiprocessing as mp
import os
import re
import sqlite3
import traceback
import uuid
from collections.abc import Iterator
from contextlib import closing
from typing import Any
from urllib.parse import quote

import psycopg
import pytest

from featlib.catalog import (
    Catalog,
    CatalogError,
    CatalogUnavailable,
    dataset_fields,
    migrations,
    open_catalog,
)

pytestmark = pytest.mark.integration

PG_BASE = os.environ.get("FEATLIB_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
TABLES = {"datasets", "feature_registry_versions", "registry_audit", "data_quality_reports"}
NOW = dt.datetime(2024, 7, 18, 12, 0, tzinfo=dt.UTC)
_schemas = itertools.count()


@pytest.fixture(scope="session")
def pg_admin() -> Iterator[tuple[psycopg.Connection, str]]:
    """A connection to the test server and this session's schema prefix; drops its schemas."""
    try:
        admin = psycopg.connect(PG_BASE, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        problem = str(exc).strip()
    else:
        problem = ""
    if problem:
        pytest.fail(
            f"PostgreSQL is not reachable at {PG_BASE}: {problem}\n"
            "Start the server (CI starts it) or point FEATLIB_TEST_POSTGRES at one.",
            pytrace=False,
        )
    prefix = f"featlib_test_{uuid.uuid4().hex[:10]}"
    yield admin, prefix
    leftovers = admin.execute(
        "SELECT nspname FROM pg_namespace WHERE starts_with(nspname, %s)", (prefix,)
    ).fetchall()
    for (schema,) in leftovers:
        admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
    admin.close()


def _dsn(schema: str) -> str:
    separator = "&" if "?" in PG_BASE else "?"
    return f"{PG_BASE}{separator}options={quote(f'-c search_path={schema}')}"


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    """A fresh, empty catalog location: an SQLite file, or a PostgreSQL schema of its own."""
    if request.param == "sqlite":
        yield str(tmp_path / "catalog.db")
        return
    admin, prefix = request.getfixturevalue("pg_admin")
    schema = f"{prefix}_{next(_schemas)}"
    admin.execute(f'CREATE SCHEMA "{schema}"')
    yield _dsn(schema)
    admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def catalog(target: str) -> Iterator[Catalog]:
    with open_catalog(target) as opened:
        yield opened


def _raw(target: str, sql: str) -> list[tuple]:
    """Run SQL on the catalog's database directly, bypassing featlib.catalog."""
    if target.startswith("postgresql://"):
        with psycopg.connect(target, autocommit=True) as conn:
            cur = conn.execute(sql)
            return cur.fetchall() if cur.description else []
    with closing(sqlite3.connect(target, autocommit=True)) as conn:
        return conn.execute(sql).fetchall()


def _tables(target: str) -> set[str]:
    if target.startswith("postgresql://"):
        sql = (
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        )
    else:
        sql = "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite%'"
    return {row[0] for row in _raw(target, sql)}


DB_ERRORS = (psycopg.Error, sqlite3.Error)


def _validated(catalog: Catalog, version: str, **extra: Any) -> dict[str, Any]:
    return catalog.upsert_version(
        version,
        f"registry/versions/feature_registry_v{version}.yaml",
        validated_at=NOW,
        validation_errors=[],
        **extra,
    )


# ---- datasets -------------------------------------------------------------------------------


def test_dataset_round_trip_keeps_json_and_times(catalog: Catalog):
    request = {
        "symbols": ["BTCUSDT", "ETHUSDT"],
        "start": 1_641_168_000_000,
        "target": {"type": "classification", "horizon": "5m", "threshold": 0.001},
        "note": "données ✓",
    }
    before = dt.datetime.now(dt.UTC)
    ident = catalog.create_dataset(
        {
            "request": request,
            "registry_version": "1.2.0",
            "symbols": ["BTCUSDT", "ETHUSDT"],
            "out_dir": "data/datasets/jan",
        }
    )
    got = catalog.get_dataset(ident)
    assert set(got) == {  # the whole record, every field the catalog keeps
        "id",
        "status",
        "request",
        "registry_version",
        "symbols",
        "counts",
        "quality",
        "timings",
        "warnings",
        "error",
        "out_dir",
        "data_hash",
        "created_at",
        "updated_at",
    }
    assert got["out_dir"] == "data/datasets/jan" and got["data_hash"] is None
    assert got["id"] == ident and ident.startswith("ds-")
    assert got["status"] == "building"
    assert got["request"] == request
    assert got["symbols"] == ["BTCUSDT", "ETHUSDT"]
    assert got["counts"] == {} and got["warnings"] == [] and got["error"] is None
    assert got["created_at"].tzinfo == dt.UTC
    assert before <= got["created_at"] <= dt.datetime.now(dt.UTC)
    assert got["updated_at"] == got["created_at"]

    counts = {"splits": {"train": {"rows": 31_000, "purged": 5}, "test": {"rows": 0}}}
    quality = {"nulls": {"rsi_14": 0.25}, "constant": [], "class_balance": [0.3, 0.4, 0.3]}
    updated = catalog.update_dataset(
        ident,
        status="ready",
        counts=counts,
        quality=quality,
        timings={"plan": 0.01, "total": 1.5},
        warnings=["test split is empty"],
        data_hash="ab" * 32,
    )
    assert updated == catalog.get_dataset(ident)
    assert updated["status"] == "ready"
    assert updated["counts"] == counts and updated["quality"] == quality
    assert updated["timings"] == {"plan": 0.01, "total": 1.5}
    assert updated["warnings"] == ["test split is empty"]
    assert updated["request"] == request  # untouched fields stay
    assert updated["created_at"] == got["created_at"] < updated["updated_at"]

    failed = catalog.update_dataset(ident, status="failed", error="disk full")
    assert (failed["status"], failed["error"]) == ("failed", "disk full")

    assert catalog.get_dataset("ds-unknown") is None
    with pytest.raises(KeyError, match="no dataset ds-unknown"):
        catalog.update_dataset("ds-unknown", status="ready")
    with pytest.raises(CatalogError, match="already exists"):
        catalog.create_dataset({"id": ident})


def test_list_datasets_newest_first_with_filters(catalog: Catalog):
    ids = [
        catalog.create_dataset({"id": f"jan-{i}", "registry_version": v, "status": s})
        for i, (v, s) in enumerate(
            [("1.0.0", "ready"), ("1.2.0", "building"), ("1.2.0", "ready"), (None, "failed")]
        )
    ]
    assert [d["id"] for d in catalog.list_datasets()] == ids[::-1]
    assert [d["id"] for d in catalog.list_datasets(status="ready")] == ["jan-2", "jan-0"]
    assert [d["id"] for d in catalog.list_datasets(registry_version="1.2.0")] == [
        "jan-2",
        "jan-1",
    ]
    assert [d["id"] for d in catalog.list_datasets("ready", "1.2.0")] == ["jan-2"]
    assert [d["id"] for d in catalog.list_datasets(limit=2)] == ["jan-3", "jan-2"]
    assert catalog.datasets_using("1.2.0") == ["jan-2", "jan-1"]
    assert catalog.datasets_using("9.9.9") == []


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"status": "done"}, "status 'done' is not one of building, ready, failed"),
        ({"colour": "red"}, "unknown dataset field"),
        ({"id": "../../etc"}, "dataset id '../../etc' is not valid"),
        ({"registry_version": "latest"}, "not MAJOR.MINOR.PATCH"),
        ({"symbols": ["btc usdt"]}, "not a symbol"),
        ({"request": ["not", "an", "object"]}, "request must be a JSON dict"),
        ({"quality": {"corr": float("nan")}}, "quality is not storable as JSON"),
        ({"warnings": [object()]}, "warnings is not storable as JSON"),
        ({"out_dir": ""}, "out_dir must be a non-empty string"),
    ],
)
def test_invalid_dataset_records_are_refused_and_nothing_is_written(
    catalog: Catalog, record: dict, message: str
):
    with pytest.raises(ValueError, match=message):
        catalog.create_dataset(record)
    assert catalog.list_datasets() == []
    ident = catalog.create_dataset({})
    if "id" not in record:
        with pytest.raises(ValueError, match=message):
            catalog.update_dataset(ident, **record)
    assert catalog.get_dataset(ident)["status"] == "building"


def test_status_is_checked_by_the_api_and_by_the_database(catalog: Catalog, target: str):
    with pytest.raises(ValueError, match="status 'done'"):
        catalog.list_datasets(status="done")
    with pytest.raises(ValueError, match="limit must be"):
        catalog.list_datasets(limit=0)
    with pytest.raises(ValueError, match="at least one field"):
        catalog.update_dataset(catalog.create_dataset({}))
    ident = catalog.create_dataset({})
    with pytest.raises(DB_ERRORS, match=r"(?i)check"):
        _raw(target, f"UPDATE datasets SET status = 'done' WHERE id = '{ident}'")
    assert catalog.get_dataset(ident)["status"] == "building"


def test_dataset_fields_from_build_metadata(catalog: Catalog):
    metadata = {
        "format_version": 1,
        "status": "ready",
        "request": {"symbols": ["BTCUSDT"], "start": 0, "end": 60_000, "resolution": "1m"},
        "registry_version": "1.2.0",
        "symbols": ["BTCUSDT"],
        "splits": {"train": {"start": "2022-01-03T00:00:00Z", "rows": 10, "purged": 1}},
        "rows": {"grid": 12, "written": 10},
        "input": {"data_hash": "f" * 64, "files": 3},
        "timings_s": {"plan": 0.1, "total": 0.9},
        "peak_rss_mb": 512.5,
        "warnings": ["validation split is empty"],
    }
    ident = catalog.create_dataset({"out_dir": "data/datasets/x", **dataset_fields(metadata)})
    got = catalog.get_dataset(ident)
    assert got["status"] == "ready" and got["registry_version"] == "1.2.0"
    assert got["counts"] == {"splits": metadata["splits"], "rows": metadata["rows"]}
    assert got["timings"] == {"plan": 0.1, "total": 0.9, "peak_rss_mb": 512.5}
    assert got["data_hash"] == "f" * 64
    assert got["warnings"] == ["validation split is empty"]


# ---- feature registry versions --------------------------------------------------------------


def test_upsert_version_records_and_audits_only_changes(catalog: Catalog):
    first = catalog.upsert_version("1.0.0", "registry/versions/a.yaml", by="alice")
    assert first["is_active"] is False and first["created_by"] == "alice"
    assert first["validated_at"] is None and first["validation_errors"] == []
    catalog.upsert_version("1.0.0", "registry/versions/a.yaml", by="bob")  # nothing changed
    later = NOW + dt.timedelta(hours=1)
    second = catalog.upsert_version(
        "1.0.0",
        "registry/versions/a.yaml",
        validated_at=later,
        validation_errors=["rsi_14: unknown parameter 'span'"],
        compatibility_warnings=["adds rsi_14"],
        by="bob",
    )
    assert second["validated_at"] == later
    assert second["validation_errors"] == ["rsi_14: unknown parameter 'span'"]
    assert second["compatibility_warnings"] == ["adds rsi_14"]
    assert second["created_by"] == "alice" and second["created_at"] == first["created_at"]
    assert catalog.get_version("1.0.0") == second
    assert catalog.get_version("3.0.0") is None
    trail = catalog.audit("1.0.0")
    assert [(a["action"], a["actor"]) for a in trail] == [("created", "alice"), ("updated", "bob")]
    assert trail[1]["reason"] == "changed: compatibility_warnings, validated_at, validation_errors"
    catalog.upsert_version("1.10.0", "b.yaml")
    catalog.upsert_version("1.9.0", "c.yaml")
    assert [v["version"] for v in catalog.list_versions()] == ["1.0.0", "1.9.0", "1.10.0"]
    with pytest.raises(ValueError, match="naive"):
        catalog.upsert_version("1.0.0", "a.yaml", validated_at=dt.datetime(2024, 1, 1))


def test_activate_and_rollback_keep_one_active_version_with_an_audit_trail(
    catalog: Catalog, target: str
):
    for version in ("1.0.0", "1.1.0", "1.2.0"):
        _validated(catalog, version)
    assert catalog.active_version() is None
    with pytest.raises(CatalogError, match="nothing to roll back"):
        catalog.rollback("ops", "oops")

    first = catalog.activate("1.0.0", "alice", "initial set")
    assert first["is_active"] and first["previous_version"] is None
    with pytest.raises(CatalogError, match=re.escape("1.0.0 has no previous version")):
        catalog.rollback("ops", "oops")
    second = catalog.activate("1.1.0", "bob", "adds order flow")
    assert (second["activated_by"], second["activation_reason"]) == ("bob", "adds order flow")
    assert second["previous_version"] == "1.0.0"
    assert catalog.active_version() == "1.1.0"
    assert [v["version"] for v in catalog.list_versions() if v["is_active"]] == ["1.1.0"]
    assert catalog.activate("1.1.0", "bob", "again") == second  # already active: no change

    back = catalog.rollback("carol", "1.1.0 failed its first computation")
    assert back["version"] == "1.0.0" and back["is_active"]
    assert back["rollback_from"] == "1.1.0" and back["activated_by"] == "carol"
    assert catalog.get_version("1.1.0")["is_active"] is False
    assert catalog.active_version() == "1.0.0"

    third = catalog.activate("1.2.0", "dave", "new set")
    assert third["previous_version"] == "1.0.0" and third["rollback_from"] is None

    trail = [(a["version"], a["action"], a["actor"], a["from_version"]) for a in catalog.audit()]
    assert [t for t in trail if t[1] != "created"] == [
        ("1.0.0", "activated", "alice", None),
        ("1.1.0", "activated", "bob", "1.0.0"),
        ("1.0.0", "rolled_back", "carol", "1.1.0"),
        ("1.2.0", "activated", "dave", "1.0.0"),
    ]
    assert catalog.audit("1.1.0")[-1]["reason"] == "adds order flow"
    assert all(a["at"].tzinfo == dt.UTC for a in catalog.audit())

    # the database itself refuses a second active version and edits of the audit trail
    with pytest.raises(DB_ERRORS, match=r"(?i)unique|duplicate"):
        _raw(
            target, "UPDATE feature_registry_versions SET is_active = TRUE WHERE version = '1.1.0'"
        )
    with pytest.raises(DB_ERRORS, match="append-only"):
        _raw(target, "UPDATE registry_audit SET actor = 'mallory'")
    with pytest.raises(DB_ERRORS, match="append-only"):
        _raw(target, "DELETE FROM registry_audit")
    assert catalog.active_version() == "1.2.0"


def test_activation_refuses_unvalidated_invalid_and_unacknowledged_breaking_versions(
    catalog: Catalog,
):
    catalog.upsert_version("1.0.0", "a.yaml")
    with pytest.raises(CatalogError, match="has not been validated"):
        catalog.activate("1.0.0", "alice", "try")
    catalog.upsert_version("1.0.0", "a.yaml", validated_at=NOW, validation_errors=["x: bad"])
    with pytest.raises(CatalogError, match="failed validation: x: bad"):
        catalog.activate("1.0.0", "alice", "try")
    _validated(catalog, "2.0.0", breaking_changes=["removes rsi_14"])
    with pytest.raises(CatalogError, match="breaking changes \\(removes rsi_14\\)"):
        catalog.activate("2.0.0", "alice", "try")
    assert catalog.active_version() is None
    assert catalog.activate("2.0.0", "alice", "ok", acknowledge_breaking=True)["is_active"]
    with pytest.raises(KeyError, match=re.escape("no registry version 9.9.9")):
        catalog.activate("9.9.9", "alice", "try")
    with pytest.raises(ValueError, match="reason must be a non-empty string"):
        catalog.activate("2.0.0", "alice", "")
    assert [a["action"] for a in catalog.audit() if a["action"] == "activated"] == ["activated"]


def test_delete_version_is_refused_while_in_use(catalog: Catalog):
    for version in ("1.0.0", "1.1.0", "1.2.0"):
        _validated(catalog, version)
    catalog.activate("1.0.0", "alice", "first")
    catalog.activate("1.1.0", "alice", "second")
    building = catalog.create_dataset({"registry_version": "1.2.0"})
    catalog.create_dataset({"registry_version": "1.2.0", "status": "failed"})

    with pytest.raises(CatalogError, match=re.escape("1.1.0 is active")):
        catalog.delete_version("1.1.0")
    with pytest.raises(CatalogError, match=re.escape("1.0.0 is the rollback target of the active")):
        catalog.delete_version("1.0.0")
    with pytest.raises(CatalogError, match=f"in use by 1 dataset\\(s\\): {building}"):
        catalog.delete_version("1.2.0")
    with pytest.raises(KeyError, match=re.escape("no registry version 3.0.0")):
        catalog.delete_version("3.0.0")
    assert {v["version"] for v in catalog.list_versions()} == {"1.0.0", "1.1.0", "1.2.0"}

    catalog.update_dataset(building, status="failed")  # failed builds do not hold a version
    catalog.delete_version("1.2.0", by="ops", reason="never shipped")
    assert catalog.get_version("1.2.0") is None
    assert len(catalog.datasets_using("1.2.0")) == 2  # the records stay
    assert catalog.audit("1.2.0")[-1] | {"id": 0, "at": None} == {
        "id": 0,
        "version": "1.2.0",
        "action": "deleted",
        "actor": "ops",
        "reason": "never shipped",
        "from_version": None,
        "at": None,
    }


# ---- data-quality reports -------------------------------------------------------------------


def test_quality_reports_round_trip(catalog: Catalog):
    report = {"gaps": [{"start": "2024-07-18T01:00:00Z", "minutes": 3}], "coverage": 0.998}
    first = catalog.save_quality_report("BTCUSDT", NOW, NOW + dt.timedelta(days=1), report)
    start_ms = int(NOW.timestamp() * 1000)
    second = catalog.save_quality_report("ETHUSDT", start_ms, start_ms + 3_600_000, {"gaps": []})
    got = catalog.get_quality_report(first)
    assert got["report"] == report and got["symbol"] == "BTCUSDT"
    assert (got["start"], got["end"]) == (NOW, NOW + dt.timedelta(days=1))
    assert catalog.get_quality_report(second)["end"] == NOW + dt.timedelta(hours=1)
    listed = catalog.list_quality_reports()
    assert [r["id"] for r in listed] == [second, first] and "report" not in listed[0]
    assert [r["id"] for r in catalog.list_quality_reports("BTCUSDT")] == [first]
    assert catalog.get_quality_report("dq-missing") is None
    with pytest.raises(ValueError, match="not after start"):
        catalog.save_quality_report("BTCUSDT", NOW, NOW, report)
    with pytest.raises(ValueError, match="not a symbol"):
        catalog.save_quality_report("BTC/USDT", NOW, NOW + dt.timedelta(days=1), report)


# ---- migrations -----------------------------------------------------------------------------


def test_migrations_go_down_to_zero_and_up_again(catalog: Catalog, target: str):
    latest = len(migrations(catalog.migrations_folder))
    assert catalog.schema_version() == latest
    assert _tables(target) == TABLES | {"schema_migrations"}
    catalog.create_dataset({"id": "kept-until-down"})

    assert catalog.migrate(0) == 0
    assert catalog.schema_version() == 0
    assert _tables(target) == {"schema_migrations"}
    assert _raw(target, "SELECT count(*) FROM schema_migrations") == [(0,)]

    assert catalog.migrate() == latest
    assert _tables(target) == TABLES | {"schema_migrations"}
    assert catalog.list_datasets() == []  # down dropped the rows with the tables
    assert catalog.create_dataset({"id": "after-up"}) == "after-up"
    with open_catalog(target) as again:  # reopening an up-to-date catalog changes nothing
        assert again.schema_version() == latest
        assert again.get_dataset("after-up") is not None
    with pytest.raises(ValueError, match=f"migration target must be 0..{latest}"):
        catalog.migrate(latest + 1)


def test_every_migration_has_up_and_down_for_both_backends():
    for folder in ("sqlite", "postgres"):
        steps = migrations(folder)
        assert [s[0] for s in steps] == list(range(1, len(steps) + 1))
        assert all(up.strip() and down.strip() for _v, _n, up, down in steps)
    assert [s[:2] for s in migrations("sqlite")] == [s[:2] for s in migrations("postgres")]


# ---- two processes at once ------------------------------------------------------------------


def _writer(target: str, name: str, n: int, barrier: Any, errors: Any) -> None:
    try:
        barrier.wait(timeout=60)
        with open_catalog(target) as catalog:  # both open a fresh catalog: migrations race too
            ids = [
                catalog.create_dataset(
                    {"id": f"{name}-{i:03d}", "symbols": ["BTCUSDT"], "request": {"i": i}}
                )
                for i in range(n)
            ]
            for i, ident in enumerate(ids):
                catalog.update_dataset(
                    ident, status="ready", counts={"train": {"rows": i}}, warnings=[name]
                )
    except BaseException:
        errors.put(f"{name}: {traceback.format_exc()}")


def _activator(
    target: str, name: str, versions: list[str], rounds: int, barrier: Any, errors: Any
) -> None:
    try:
        with open_catalog(target) as catalog:
            barrier.wait(timeout=60)
            for r in range(rounds):
                catalog.activate(versions[r % len(versions)], name, f"round {r}")
    except BaseException:
        errors.put(f"{name}: {traceback.format_exc()}")


def _run_two(work: Any, args_a: tuple, args_b: tuple) -> None:
    """Run `work` in two spawned processes released together; fail with their tracebacks."""
    ctx = mp.get_context("spawn")
    barrier, errors = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=work, args=(*args, barrier, errors)) for args in (args_a, args_b)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
    hung = [proc for proc in procs if proc.is_alive()]
    for proc in hung:
        proc.kill()
        proc.join()
    problems = []
    while not errors.empty():
        problems.append(errors.get())
    errors.close()
    assert not hung, f"{len(hung)} worker(s) hung"
    assert not problems, "\n".join(problems)
    assert [proc.exitcode for proc in procs] == [0, 0]


def test_two_processes_writing_at_once_lose_nothing(target: str):
    n = 200
    _run_two(_writer, (target, "alpha", n), (target, "beta", n))
    with open_catalog(target) as catalog:
        rows = catalog.list_datasets(limit=1000)
        assert catalog.schema_version() == len(migrations(catalog.migrations_folder))
    assert _raw(target, "SELECT version FROM schema_migrations") == [(1,)]
    assert len(rows) == 2 * n
    assert {r["id"] for r in rows} == {f"{w}-{i:03d}" for w in ("alpha", "beta") for i in range(n)}
    for row in rows:
        i = int(row["id"].split("-")[1])
        assert row["status"] == "ready", row["id"]
        assert row["counts"] == {"train": {"rows": i}} and row["request"] == {"i": i}
        assert row["warnings"] == [row["id"].split("-")[0]]
        assert row["updated_at"] > row["created_at"]
    spans = {
        w: (
            min(r["created_at"] for r in rows if r["id"].startswith(w)),
            max(r["updated_at"] for r in rows if r["id"].startswith(w)),
        )
        for w in ("alpha", "beta")
    }
    (a0, a1), (b0, b1) = spans["alpha"], spans["beta"]
    assert a0 < b1 and b0 < a1, f"the two writers did not overlap: {spans}"


def test_concurrent_activation_leaves_exactly_one_active_version(catalog: Catalog, target: str):
    ours = {"alice": ["1.0.0", "1.0.1", "1.0.2"], "bob": ["2.0.0", "2.0.1", "2.0.2"]}
    for versions in ours.values():
        for version in versions:
            _validated(catalog, version)
    rounds = 40
    _run_two(
        _activator, (target, "alice", ours["alice"], rounds), (target, "bob", ours["bob"], rounds)
    )
    assert _raw(target, "SELECT count(*) FROM feature_registry_versions WHERE is_active") == [(1,)]
    activations = [a for a in catalog.audit() if a["action"] == "activated"]
    assert len(activations) == 2 * rounds
    assert {a["actor"] for a in activations} == {"alice", "bob"}
    # serialised: each activation replaced exactly the version the one before it activated
    assert activations[0]["from_version"] is None
    for before, after in itertools.pairwise(activations):
        assert after["from_version"] == before["version"]
    active = catalog.get_version(catalog.active_version())
    assert active["version"] == activations[-1]["version"]
    assert active["previous_version"] == activations[-1]["from_version"]


# ---- opening ----------------------------------------------------------------------------------


def test_open_catalog_targets(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open_catalog("sqlite:///nested/cat.db") as relative:
        assert relative.backend == "sqlite"
    assert (tmp_path / "nested" / "cat.db").is_file()
    with open_catalog(f"sqlite:///{tmp_path}/abs.db") as absolute:
        assert absolute.schema_version() >= 1
    assert (tmp_path / "abs.db").is_file()
    for bad, message in [
        ("mysql://localhost/db", "unsupported scheme"),
        (":memory:", "in-memory catalog cannot be shared"),
        ("sqlite://", "sqlite:///relative/path"),
        ("", "file path or a postgresql:// DSN"),
    ]:
        with pytest.raises(ValueError, match=message):
            open_catalog(bad)
    with pytest.raises(CatalogUnavailable, match="is a directory"):
        open_catalog(tmp_path)


def test_postgres_errors_are_clear(pg_admin):
    with pytest.raises(
        CatalogUnavailable,
        match=re.escape(
            "cannot connect to the PostgreSQL catalog postgresql://postgres@127.0.0.1:1/test"
        ),
    ):
        open_catalog("postgresql://postgres@127.0.0.1:1/test", timeout=3)
    missing = f"{pg_admin[1]}_missing"
    with pytest.raises(CatalogUnavailable, match=f"no schema of the search_path \\({missing}\\)"):
        open_catalog(_dsn(missing))
