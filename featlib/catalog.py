"""Catalog: the metadata database — datasets, feature-registry versions with their audit trail,
and data-quality reports. Metadata only: feature sets live in YAML, datasets in Parquet.

    catalog = open_catalog("data/catalog.db")               # embedded default: SQLite, WAL
    catalog = open_catalog("postgresql://user@host/db")     # deployment: PostgreSQL

Both backends serve the same API (and run the same tests). The schema is versioned SQL in
`featlib/migrations/{sqlite,postgres}/NNNN_name.{up,down}.sql`, applied up to the latest on
open; `migrate(n)` goes up or down to version n. Timestamps come back as UTC datetimes, JSON
columns as Python objects. Refused operations raise CatalogError (a ValueError), unknown ids
KeyError (`get_*` return None), malformed input ValueError.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from featlib.schema import check_symbol

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
STATUSES = ("building", "ready", "failed")

_SEMVER = re.compile(r"^\d+\.\d+\.\d+$")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_MIGRATION_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.(up|down)\.sql$")

# dataset columns a caller may set, with the JSON type of the JSON ones (None: text)
_DATASET_FIELDS: dict[str, type | None] = {
    "status": None,
    "request": dict,
    "registry_version": None,
    "symbols": list,
    "counts": dict,
    "quality": dict,
    "timings": dict,
    "warnings": list,
    "error": None,
    "out_dir": None,
    "data_hash": None,
}
_VERSION_JSON = ("validation_errors", "compatibility_warnings", "breaking_changes")
_JSON_KINDS: dict[str, type] = {
    **{k: v for k, v in _DATASET_FIELDS.items() if v is not None},
    **dict.fromkeys(_VERSION_JSON, list),
    "report": dict,
}
_JSON_COLUMNS = frozenset(_JSON_KINDS)
_TS_COLUMNS = frozenset(
    {"created_at", "updated_at", "validated_at", "loaded_at", "at", "start", "end", "applied_at"}
)
_BOOL_COLUMNS = frozenset({"is_active"})


class CatalogError(ValueError):
    """An operation the catalog refuses; the message says why."""


class CatalogUnavailable(CatalogError):
    """The catalog database cannot be reached or opened."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _new_id(prefix: str) -> str:
    return f"{prefix}-{_now():%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:12]}"


def _check_id(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _ID.match(value):
        raise ValueError(
            f"{what} id {value!r} is not valid (1-128 of letters, digits, '.', '_', '-', "
            "starting with a letter or digit)"
        )
    return value


def _check_version(value: Any) -> str:
    if not isinstance(value, str) or not _SEMVER.match(value):
        raise ValueError(f"registry version {value!r} is not MAJOR.MINOR.PATCH (e.g. 1.2.0)")
    return value


def _check_status(value: Any) -> str:
    if value not in STATUSES:
        raise ValueError(f"dataset status {value!r} is not one of {', '.join(STATUSES)}")
    return value


def _check_text(value: Any, name: str, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if isinstance(value, Path):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    return value


def _check_limit(limit: Any) -> int:
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 10_000:
        raise ValueError(f"limit must be an integer from 1 to 10000, got {limit!r}")
    return limit


def _as_utc(value: Any, name: str) -> dt.datetime:
    """A timezone-aware datetime or epoch milliseconds, as a UTC datetime."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"{name} must be timezone-aware (UTC), got naive {value}")
        return value.astimezone(dt.UTC)
    if isinstance(value, int) and not isinstance(value, bool):
        return dt.datetime.fromtimestamp(value / 1000, dt.UTC)
    raise ValueError(f"{name} must be an aware datetime or epoch milliseconds, got {value!r}")


def _dumps(value: Any, name: str, kind: type) -> str:
    """Strict JSON text of a field (no NaN/Infinity: PostgreSQL's jsonb refuses them)."""
    if not isinstance(value, kind):
        raise ValueError(f"{name} must be a JSON {kind.__name__}, got {type(value).__name__}")
    try:
        return json.dumps(value, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} is not storable as JSON: {exc}") from exc


def _normalise(column: str, value: Any) -> Any:
    """A value as it reads back from the catalog (to tell whether an upsert changes it)."""
    if column in _TS_COLUMNS and value is not None:
        return _as_utc(value, column)
    if column in _JSON_COLUMNS and value is not None:
        return json.loads(json.dumps(value))
    return value


def _check_dataset_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(fields) - set(_DATASET_FIELDS))
    if unknown:
        raise ValueError(
            f"unknown dataset field(s) {', '.join(unknown)}; known: {', '.join(_DATASET_FIELDS)}"
        )
    out: dict[str, Any] = {}
    for name, value in fields.items():
        if name == "status":
            out[name] = _check_status(value)
        elif name == "registry_version":
            out[name] = None if value is None else _check_version(value)
        elif name == "symbols":
            if not isinstance(value, list | tuple):
                raise ValueError(f"symbols must be a list of symbols, got {value!r}")
            out[name] = [check_symbol(s) for s in value]
        elif _DATASET_FIELDS[name] is not None:
            out[name] = value
        else:
            out[name] = _check_text(value, name, optional=True)
    return out


def dataset_fields(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The catalog fields of a dataset from the metadata `featlib.dataset.build` returns."""
    counts = {k: metadata[k] for k in ("splits", "folds", "rows") if k in metadata}
    timings = dict(metadata.get("timings_s", {}))
    if "peak_rss_mb" in metadata:
        timings["peak_rss_mb"] = metadata["peak_rss_mb"]
    fields: dict[str, Any] = {
        "status": metadata.get("status", "ready"),
        "request": metadata.get("request", {}),
        "registry_version": metadata.get("registry_version"),
        "symbols": list(metadata.get("symbols", [])),
        "counts": counts,
        "quality": dict(metadata.get("quality", {})),
        "timings": timings,
        "warnings": list(metadata.get("warnings", [])),
    }
    data_hash = metadata.get("input", {}).get("data_hash")
    if data_hash:
        fields["data_hash"] = data_hash
    return fields


def migrations(folder_name: str) -> list[tuple[int, str, str, str]]:
    """(version, name, up SQL, down SQL) of one migrations folder (sqlite, postgres), in order."""
    folder = MIGRATIONS_DIR / folder_name
    found: dict[int, dict[str, str]] = {}
    names: dict[int, str] = {}
    for path in sorted(folder.glob("*.sql")):
        match = _MIGRATION_FILE.match(path.name)
        if not match:
            raise RuntimeError(f"{path}: not NNNN_name.up.sql / NNNN_name.down.sql")
        version, name, direction = int(match[1]), match[2], match[3]
        if names.setdefault(version, name) != name:
            raise RuntimeError(f"{folder}: migration {version:04d} has two names")
        found.setdefault(version, {})[direction] = path.read_text()
    steps = []
    for expected, version in enumerate(sorted(found), start=1):
        if version != expected:
            raise RuntimeError(f"{folder}: migration {expected:04d} is missing")
        if set(found[version]) != {"up", "down"}:
            raise RuntimeError(f"{folder}: migration {version:04d} needs both up and down")
        steps.append((version, names[version], found[version]["up"], found[version]["down"]))
    if not steps:
        raise RuntimeError(f"{folder}: no migrations found")
    return steps


class Catalog:
    """The catalog API over one backend; get one from `open_catalog`."""

    backend: str
    migrations_folder: str
    target: str
    _migrations_table: str

    # ---- backend hooks -------------------------------------------------------------------

    def _tx(self, write: bool = True) -> Any:
        """A context manager yielding a connection inside one transaction."""
        raise NotImplementedError

    def _rows(self, conn: Any, sql: str, params: tuple = ()) -> list[dict[str, Any]]:
        raise NotImplementedError

    def _exec(self, conn: Any, sql: str, params: tuple = ()) -> int:
        raise NotImplementedError

    def _script(self, conn: Any, sql: str) -> None:
        raise NotImplementedError

    def _lock_migrations(self, conn: Any) -> None:
        raise NotImplementedError

    def _lock_registry(self, conn: Any) -> None:
        raise NotImplementedError

    def _json(self, text: str) -> Any:
        raise NotImplementedError

    def _ts(self, value: dt.datetime) -> Any:
        raise NotImplementedError

    def _bool(self, value: bool) -> Any:
        raise NotImplementedError

    def _load_json(self, value: Any) -> Any:
        raise NotImplementedError

    def _load_ts(self, value: Any) -> dt.datetime:
        raise NotImplementedError

    def close(self) -> None:
        """Release held connections (the catalog stays usable)."""

    # ---- shared plumbing -----------------------------------------------------------------

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.target}>"

    def _one(self, conn: Any, sql: str, params: tuple = ()) -> dict[str, Any] | None:
        rows = self._rows(conn, sql, params)
        return rows[0] if rows else None

    def _decode(self, row: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in row.items():
            if value is None:
                out[key] = None
            elif key in _JSON_COLUMNS:
                out[key] = self._load_json(value)
            elif key in _TS_COLUMNS:
                out[key] = self._load_ts(value)
            elif key in _BOOL_COLUMNS:
                out[key] = bool(value)
            else:
                out[key] = value
        return out

    def _encode(self, column: str, value: Any) -> Any:
        if value is None:
            return None
        if column in _JSON_COLUMNS:
            return self._json(_dumps(value, column, _JSON_KINDS[column]))
        if column in _TS_COLUMNS:
            return self._ts(_as_utc(value, column))
        if column in _BOOL_COLUMNS:
            return self._bool(bool(value))
        return value

    def _insert(self, conn: Any, table: str, values: Mapping[str, Any], key: str) -> int:
        columns = ", ".join(f'"{c}"' for c in values)
        marks = ", ".join("?" for _ in values)
        params = tuple(self._encode(c, v) for c, v in values.items())
        sql = f"INSERT INTO {table} ({columns}) VALUES ({marks}) ON CONFLICT ({key}) DO NOTHING"
        return self._exec(conn, sql, params)

    def _update(
        self, conn: Any, table: str, key: str, ident: str, values: Mapping[str, Any]
    ) -> int:
        sets = ", ".join(f'"{c}" = ?' for c in values)
        params = (*(self._encode(c, v) for c, v in values.items()), ident)
        return self._exec(conn, f"UPDATE {table} SET {sets} WHERE {key} = ?", params)

    def _audit(
        self,
        conn: Any,
        version: str,
        action: str,
        actor: str,
        reason: str | None = None,
        from_version: str | None = None,
    ) -> None:
        self._exec(
            conn,
            "INSERT INTO registry_audit (version, action, actor, reason, from_version, at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (version, action, actor, reason, from_version, self._ts(_now())),
        )

    # ---- migrations ----------------------------------------------------------------------

    def schema_version(self) -> int:
        """The latest applied migration (0: empty catalog)."""
        with self._tx() as conn:
            self._lock_migrations(conn)
            self._script(conn, self._migrations_table)
            row = self._one(conn, "SELECT max(version) AS v FROM schema_migrations")
        return int(row["v"] or 0) if row else 0

    def migrate(self, target: int | None = None) -> int:
        """Apply up or down migrations, one transaction each, until `target` (default latest)."""
        steps = migrations(self.migrations_folder)
        latest = steps[-1][0]
        if target is None:
            target = latest
        if not isinstance(target, int) or isinstance(target, bool) or not 0 <= target <= latest:
            raise ValueError(f"migration target must be 0..{latest}, got {target!r}")
        while True:
            with self._tx() as conn:
                self._lock_migrations(conn)
                self._script(conn, self._migrations_table)
                applied = [
                    int(r["version"])
                    for r in self._rows(conn, "SELECT version FROM schema_migrations")
                ]
                current = max(applied, default=0)
                if sorted(applied) != list(range(1, current + 1)) or current > latest:
                    raise CatalogError(
                        f"catalog {self.target} has migrations {sorted(applied)} applied; this "
                        f"featlib knows 1..{latest} (a newer featlib created it?)"
                    )
                if current == target:
                    return current
                if current < target:
                    version, name, up, _down = steps[current]
                    self._script(conn, up)
                    self._exec(
                        conn,
                        "INSERT INTO schema_migrations (version, name, applied_at) "
                        "VALUES (?, ?, ?)",
                        (version, name, self._ts(_now())),
                    )
                else:
                    version, _name, _up, down = steps[current - 1]
                    self._script(conn, down)
                    self._exec(conn, "DELETE FROM schema_migrations WHERE version = ?", (version,))

    # ---- datasets ------------------------------------------------------------------------

    def create_dataset(self, record: Mapping[str, Any]) -> str:
        """Record a dataset (status defaults to building); returns its id (generated if absent)."""
        if not isinstance(record, Mapping):
            raise ValueError(f"a dataset record is a mapping, got {type(record).__name__}")
        fields = dict(record)
        ident = _check_id(fields.pop("id", None) or _new_id("ds"), "dataset")
        values = {"status": "building", **_check_dataset_fields(fields)}
        now = _now()
        with self._tx() as conn:
            inserted = self._insert(
                conn,
                "datasets",
                {"id": ident, **values, "created_at": now, "updated_at": now},
                "id",
            )
        if not inserted:
            raise CatalogError(f"dataset {ident} already exists")
        return ident

    def update_dataset(self, id: str, **fields: Any) -> dict[str, Any]:
        """Change a dataset's fields (e.g. status, counts, error); returns the updated record."""
        _check_id(id, "dataset")
        if not fields:
            raise ValueError("update_dataset needs at least one field to change")
        values = {**_check_dataset_fields(fields), "updated_at": _now()}
        with self._tx() as conn:
            if not self._update(conn, "datasets", "id", id, values):
                raise KeyError(f"no dataset {id} in the catalog")
            row = self._one(conn, "SELECT * FROM datasets WHERE id = ?", (id,))
        assert row is not None
        return self._decode(row)

    def get_dataset(self, id: str) -> dict[str, Any] | None:
        """One dataset's record, or None."""
        _check_id(id, "dataset")
        with self._tx(write=False) as conn:
            row = self._one(conn, "SELECT * FROM datasets WHERE id = ?", (id,))
        return self._decode(row) if row else None

    def list_datasets(
        self, status: str | None = None, registry_version: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Datasets, newest first, optionally of one status and/or registry version."""
        where, params = [], []
        if status is not None:
            where.append("status = ?")
            params.append(_check_status(status))
        if registry_version is not None:
            where.append("registry_version = ?")
            params.append(_check_version(registry_version))
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        sql = f"SELECT * FROM datasets {clause}ORDER BY created_at DESC, id DESC LIMIT ?"
        with self._tx(write=False) as conn:
            rows = self._rows(conn, sql, (*params, _check_limit(limit)))
        return [self._decode(r) for r in rows]

    def datasets_using(self, version: str) -> list[str]:
        """Ids of every dataset built (or being built) with a registry version, newest first."""
        _check_version(version)
        with self._tx(write=False) as conn:
            rows = self._rows(
                conn,
                "SELECT id FROM datasets WHERE registry_version = ? "
                "ORDER BY created_at DESC, id DESC",
                (version,),
            )
        return [r["id"] for r in rows]

    # ---- feature registry versions -------------------------------------------------------

    def upsert_version(
        self,
        version: str,
        file_path: str | Path,
        *,
        validated_at: dt.datetime | int | None = None,
        validation_errors: list[str] | None = None,
        loaded_at: dt.datetime | int | None = None,
        compatibility_warnings: list[str] | None = None,
        breaking_changes: list[str] | None = None,
        by: str = "system",
    ) -> dict[str, Any]:
        """Record a registry version's file and validation (None leaves a field as it was)."""
        _check_version(version)
        file_path = _check_text(file_path, "file_path")
        _check_text(by, "by")
        given = {
            "validated_at": validated_at,
            "validation_errors": validation_errors,
            "loaded_at": loaded_at,
            "compatibility_warnings": compatibility_warnings,
            "breaking_changes": breaking_changes,
        }
        values = {"file_path": file_path, **{k: v for k, v in given.items() if v is not None}}
        for name in _VERSION_JSON:
            if name in values:
                _dumps(values[name], name, list)
        with self._tx() as conn:
            self._lock_registry(conn)
            try:
                old = self._version_row(conn, version)
            except KeyError:
                old = None
            if old is not None:
                changed = {k: v for k, v in values.items() if old[k] != _normalise(k, v)}
                if changed:
                    self._update(conn, "feature_registry_versions", "version", version, changed)
                    self._audit(
                        conn, version, "updated", by, "changed: " + ", ".join(sorted(changed))
                    )
            else:
                row = {"version": version, **values, "created_at": _now(), "created_by": by}
                self._insert(conn, "feature_registry_versions", row, "version")
                self._audit(conn, version, "created", by)
            return self._version_row(conn, version)

    def _version_row(self, conn: Any, version: str) -> dict[str, Any]:
        row = self._one(
            conn, "SELECT * FROM feature_registry_versions WHERE version = ?", (version,)
        )
        if row is None:
            raise KeyError(f"no registry version {version} in the catalog")
        return self._decode(row)

    def get_version(self, version: str) -> dict[str, Any] | None:
        """One registry version's record, or None."""
        _check_version(version)
        with self._tx(write=False) as conn:
            try:
                return self._version_row(conn, version)
            except KeyError:
                return None

    def list_versions(self) -> list[dict[str, Any]]:
        """Every recorded registry version, oldest (lowest) version first."""
        with self._tx(write=False) as conn:
            rows = self._rows(conn, "SELECT * FROM feature_registry_versions")
        decoded = [self._decode(r) for r in rows]
        return sorted(decoded, key=lambda r: tuple(int(p) for p in r["version"].split(".")))

    def active_version(self) -> str | None:
        """The active registry version, or None when none is active."""
        with self._tx(write=False) as conn:
            row = self._one(
                conn,
                "SELECT version FROM feature_registry_versions WHERE is_active = ?",
                (self._bool(True),),
            )
        return row["version"] if row else None

    def _active(self, conn: Any) -> dict[str, Any] | None:
        row = self._one(
            conn, "SELECT * FROM feature_registry_versions WHERE is_active = ?", (self._bool(True),)
        )
        return self._decode(row) if row else None

    @staticmethod
    def _check_usable(row: Mapping[str, Any]) -> None:
        if row["validated_at"] is None:
            raise CatalogError(
                f"registry version {row['version']} has not been validated; sync its file first"
            )
        if row["validation_errors"]:
            raise CatalogError(
                f"registry version {row['version']} failed validation: "
                + "; ".join(map(str, row["validation_errors"]))
            )

    def _switch(self, conn: Any, old: str | None, new: str, values: Mapping[str, Any]) -> None:
        if old is not None:
            self._update(conn, "feature_registry_versions", "version", old, {"is_active": False})
        self._update(
            conn, "feature_registry_versions", "version", new, {"is_active": True, **values}
        )

    def activate(
        self, version: str, by: str, reason: str, *, acknowledge_breaking: bool = False
    ) -> dict[str, Any]:
        """Make `version` the one active version (the previous one is remembered for rollback)."""
        _check_version(version)
        _check_text(by, "by")
        _check_text(reason, "reason")
        with self._tx() as conn:
            self._lock_registry(conn)
            row = self._version_row(conn, version)
            if row["is_active"]:
                return row
            self._check_usable(row)
            if row["breaking_changes"] and not acknowledge_breaking:
                raise CatalogError(
                    f"registry version {version} has breaking changes ("
                    + "; ".join(map(str, row["breaking_changes"]))
                    + "); activate it with acknowledge_breaking=True"
                )
            current = self._active(conn)
            old = current["version"] if current else None
            self._switch(
                conn,
                old,
                version,
                {
                    "activated_by": by,
                    "activation_reason": reason,
                    "previous_version": old,
                    "rollback_from": None,
                },
            )
            self._audit(conn, version, "activated", by, reason, old)
            return self._version_row(conn, version)

    def rollback(self, by: str, reason: str) -> dict[str, Any]:
        """Reactivate the active version's previous version; returns its record."""
        _check_text(by, "by")
        _check_text(reason, "reason")
        with self._tx() as conn:
            self._lock_registry(conn)
            current = self._active(conn)
            if current is None:
                raise CatalogError("no registry version is active: nothing to roll back")
            previous = current["previous_version"]
            if previous is None:
                raise CatalogError(
                    f"registry version {current['version']} has no previous version to roll back to"
                )
            try:
                target = self._version_row(conn, previous)
            except KeyError:
                raise CatalogError(
                    f"previous version {previous} is no longer in the catalog"
                ) from None
            self._check_usable(target)
            self._switch(
                conn,
                current["version"],
                previous,
                {
                    "activated_by": by,
                    "activation_reason": reason,
                    "rollback_from": current["version"],
                },
            )
            self._audit(conn, previous, "rolled_back", by, reason, current["version"])
            return self._version_row(conn, previous)

    def delete_version(
        self, version: str, *, by: str = "system", reason: str | None = None
    ) -> None:
        """Forget a registry version; refused while active, the rollback target, or in use."""
        _check_version(version)
        _check_text(by, "by")
        with self._tx() as conn:
            self._lock_registry(conn)
            row = self._version_row(conn, version)
            if row["is_active"]:
                raise CatalogError(
                    f"registry version {version} is active; activate another one first"
                )
            current = self._active(conn)
            if current and current["previous_version"] == version:
                raise CatalogError(
                    f"registry version {version} is the rollback target of the active "
                    f"version {current['version']}"
                )
            using = self._rows(
                conn,
                "SELECT id FROM datasets WHERE registry_version = ? AND status <> 'failed' "
                "ORDER BY created_at DESC, id DESC",
                (version,),
            )
            if using:
                ids = [r["id"] for r in using]
                shown = ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
                raise CatalogError(
                    f"registry version {version} is in use by {len(ids)} dataset(s): {shown}"
                )
            self._exec(conn, "DELETE FROM feature_registry_versions WHERE version = ?", (version,))
            self._audit(conn, version, "deleted", by, reason)

    def audit(self, version: str | None = None) -> list[dict[str, Any]]:
        """The registry audit trail, oldest first, optionally for one version."""
        with self._tx(write=False) as conn:
            if version is None:
                rows = self._rows(conn, "SELECT * FROM registry_audit ORDER BY id")
            else:
                rows = self._rows(
                    conn,
                    "SELECT * FROM registry_audit WHERE version = ? ORDER BY id",
                    (_check_version(version),),
                )
        return [self._decode(r) for r in rows]

    # ---- data-quality reports ------------------------------------------------------------

    def save_quality_report(
        self,
        symbol: str,
        start: dt.datetime | int,
        end: dt.datetime | int,
        report: Mapping[str, Any],
    ) -> str:
        """Store a data-quality report for a symbol and period; returns its id."""
        check_symbol(symbol)
        if _as_utc(end, "end") <= _as_utc(start, "start"):
            raise ValueError(f"report period end {end} is not after start {start}")
        ident = _new_id("dq")
        row = {
            "id": ident,
            "symbol": symbol,
            "start": start,
            "end": end,
            "created_at": _now(),
            "report": dict(report),
        }
        with self._tx() as conn:
            self._insert(conn, "data_quality_reports", row, "id")
        return ident

    def get_quality_report(self, id: str) -> dict[str, Any] | None:
        """One stored report (with its body), or None."""
        _check_id(id, "quality report")
        with self._tx(write=False) as conn:
            row = self._one(conn, "SELECT * FROM data_quality_reports WHERE id = ?", (id,))
        return self._decode(row) if row else None

    def list_quality_reports(
        self, symbol: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Stored reports, newest first, without their bodies (get_quality_report has them)."""
        columns = 'id, symbol, "start", "end", created_at'
        params: tuple = ()
        clause = ""
        if symbol is not None:
            clause, params = "WHERE symbol = ? ", (check_symbol(symbol),)
        sql = (
            f"SELECT {columns} FROM data_quality_reports {clause}"
            "ORDER BY created_at DESC, id DESC LIMIT ?"
        )
        with self._tx(write=False) as conn:
            rows = self._rows(conn, sql, (*params, _check_limit(limit)))
        return [self._decode(r) for r in rows]


class SQLiteCatalog(Catalog):
    """The embedded catalog: one SQLite file in WAL mode, a connection per operation; writers
    take the write lock up front (BEGIN IMMEDIATE) and wait up to `timeout` seconds for it."""

    backend = "sqlite"
    migrations_folder = "sqlite"
    _migrations_table = (
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
    )

    def __init__(self, path: str | Path, *, timeout: float = 30.0):
        self.path = Path(path)
        self.target = str(self.path)
        self.timeout = timeout
        if self.path.is_dir():
            raise CatalogUnavailable(f"catalog path {self.path} is a directory, not a file")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        mode = self._use_wal()
        if mode != "wal":
            raise CatalogUnavailable(
                f"catalog {self.path} cannot use WAL journaling (got {mode!r}); "
                "put it on a local filesystem"
            )

    def _use_wal(self) -> str:
        """Switch the file to WAL (persistent); the switch skips the busy handler, so retry."""
        deadline = time.monotonic() + self.timeout
        conn = self._connect()
        try:
            while True:
                try:
                    mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
                    if mode == "wal":
                        return mode
                    return conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) or time.monotonic() > deadline:
                        raise CatalogUnavailable(f"cannot open catalog {self.path}: {exc}") from exc
                    time.sleep(0.01)
        finally:
            conn.close()

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, timeout=self.timeout, autocommit=True)
            conn.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.Error as exc:
            raise CatalogUnavailable(f"cannot open catalog {self.path}: {exc}") from exc
        conn.row_factory = sqlite3.Row
        return conn

    @contextmanager
    def _tx(self, write: bool = True) -> Iterator[sqlite3.Connection]:
        conn = self._connect()
        try:
            try:
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            except sqlite3.OperationalError as exc:
                raise CatalogUnavailable(
                    f"catalog {self.path}: {exc} (another writer held it over {self.timeout} s)"
                ) from exc
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            conn.close()

    def _rows(self, conn: sqlite3.Connection, sql: str, params: tuple = ()) -> list[dict[str, Any]]:
        return [dict(r) for r in conn.execute(sql, params).fetchall()]

    def _exec(self, conn: sqlite3.Connection, sql: str, params: tuple = ()) -> int:
        return conn.execute(sql, params).rowcount

    def _script(self, conn: sqlite3.Connection, sql: str) -> None:
        conn.executescript(sql)

    def _lock_migrations(self, conn: sqlite3.Connection) -> None:
        """BEGIN IMMEDIATE already serialises writers."""

    def _lock_registry(self, conn: sqlite3.Connection) -> None:
        """BEGIN IMMEDIATE already serialises writers."""

    def _json(self, text: str) -> str:
        return text

    def _ts(self, value: dt.datetime) -> str:
        return value.astimezone(dt.UTC).isoformat(timespec="microseconds")

    def _bool(self, value: bool) -> int:
        return int(value)

    def _load_json(self, value: Any) -> Any:
        return json.loads(value)

    def _load_ts(self, value: Any) -> dt.datetime:
        return dt.datetime.fromisoformat(value).astimezone(dt.UTC)


class PostgresCatalog(Catalog):
    """The deployment catalog: PostgreSQL through psycopg 3, a few pooled connections per
    process, tables in the first schema of the connection's search_path."""

    backend = "postgresql"
    migrations_folder = "postgres"
    _migrations_table = (
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        "version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL)"
    )

    def __init__(self, dsn: str, *, timeout: float = 30.0, max_idle: int = 4):
        self.dsn = dsn
        self.timeout = timeout
        self.max_idle = max_idle
        info = conninfo_to_dict(dsn)
        self.target = (
            f"postgresql://{info.get('user', '')}@{info.get('host', 'localhost')}:"
            f"{info.get('port', 5432)}/{info.get('dbname', '')}"
        )
        self._connect_args: dict[str, Any] = (
            {} if "connect_timeout" in info else {"connect_timeout": max(1, round(timeout))}
        )
        self._idle: list[psycopg.Connection] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def _checkout(self) -> psycopg.Connection:
        with self._lock:
            if self._pid != os.getpid():  # forked: the parent's sockets are not ours to use
                self._idle, self._pid = [], os.getpid()
            while self._idle:
                conn = self._idle.pop()
                if not conn.closed:
                    return conn
        try:
            return psycopg.connect(
                self.dsn, autocommit=True, row_factory=dict_row, **self._connect_args
            )
        except psycopg.OperationalError as exc:
            detail = (str(exc).strip() or type(exc).__name__).splitlines()[0]
            raise CatalogUnavailable(
                f"cannot connect to the PostgreSQL catalog {self.target}: {detail}"
            ) from exc

    def _checkin(self, conn: psycopg.Connection) -> None:
        healthy = not conn.closed and conn.info.transaction_status == TransactionStatus.IDLE
        with self._lock:
            if healthy and self._pid == os.getpid() and len(self._idle) < self.max_idle:
                self._idle.append(conn)
                return
        conn.close()

    @contextmanager
    def _tx(self, write: bool = True) -> Iterator[psycopg.Connection]:
        conn = self._checkout()
        try:
            with conn.transaction():
                yield conn
        finally:
            self._checkin(conn)

    def close(self) -> None:
        """Close the idle pooled connections."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def __del__(self) -> None:
        if getattr(self, "_pid", None) == os.getpid():  # a forked child leaves them alone
            self.close()

    def _rows(self, conn: psycopg.Connection, sql: str, params: tuple = ()) -> list[dict[str, Any]]:
        cur = conn.execute(sql.replace("?", "%s"), params)
        return list(cur.fetchall()) if cur.description else []

    def _exec(self, conn: psycopg.Connection, sql: str, params: tuple = ()) -> int:
        return conn.execute(sql.replace("?", "%s"), params).rowcount

    def _script(self, conn: psycopg.Connection, sql: str) -> None:
        conn.execute(sql)

    def _lock_migrations(self, conn: psycopg.Connection) -> None:
        row = self._one(conn, "SELECT current_schema() AS schema")
        schema = row["schema"] if row else None
        if schema is None:
            path = self._one(conn, "SHOW search_path")
            raise CatalogUnavailable(
                f"catalog {self.target}: no schema of the search_path "
                f"({path['search_path'] if path else '?'}) exists; create it first"
            )
        self._exec(
            conn,
            "SELECT pg_advisory_xact_lock(hashtext(?))",
            (f"featlib.catalog.migrations:{schema}",),
        )

    def _lock_registry(self, conn: psycopg.Connection) -> None:
        """Registry writers run one at a time (readers are not blocked)."""
        self._exec(conn, "LOCK TABLE feature_registry_versions IN SHARE ROW EXCLUSIVE MODE")

    def _json(self, text: str) -> Jsonb:
        return Jsonb(text, dumps=lambda s: s)

    def _ts(self, value: dt.datetime) -> dt.datetime:
        return value.astimezone(dt.UTC)

    def _bool(self, value: bool) -> bool:
        return value

    def _load_json(self, value: Any) -> Any:
        return value

    def _load_ts(self, value: Any) -> dt.datetime:
        return value.astimezone(dt.UTC)


def open_catalog(target: str | Path, *, timeout: float = 30.0) -> Catalog:
    """Open (and migrate to the latest schema) the catalog at a file path, `sqlite:///path`
    (SQLAlchemy style: `sqlite:////abs/path`) or a `postgresql://` DSN."""
    if isinstance(target, Path):
        catalog: Catalog = SQLiteCatalog(target, timeout=timeout)
    elif not isinstance(target, str) or not target.strip():
        raise ValueError(f"catalog must be a file path or a postgresql:// DSN, got {target!r}")
    elif target.startswith(("postgresql://", "postgres://")):
        catalog = PostgresCatalog(target, timeout=timeout)
    else:
        path = target
        if target.startswith("sqlite:"):
            if not target.startswith("sqlite:///") or len(target) == len("sqlite:///"):
                raise ValueError(
                    f"catalog {target!r}: write sqlite:///relative/path or sqlite:////absolute/path"
                )
            path = target[len("sqlite:///") :]
        elif "://" in target:
            raise ValueError(
                f"catalog {target!r}: unsupported scheme (use a file path, sqlite:///path or "
                "postgresql://...)"
            )
        if path == ":memory:":
            raise ValueError("an in-memory catalog cannot be shared; give a file path")
        catalog = SQLiteCatalog(path, timeout=timeout)
    catalog.migrate()
    return catalog
