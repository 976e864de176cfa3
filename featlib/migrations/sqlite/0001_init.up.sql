-- featlib catalog, SQLite (the embedded default): metadata only (SPEC §7, §9).
-- Timestamps are ISO-8601 UTC text (fixed width, so they sort), JSON is text.

CREATE TABLE datasets (
    id               TEXT PRIMARY KEY,
    status           TEXT NOT NULL DEFAULT 'building'
                     CHECK (status IN ('building', 'ready', 'failed')),
    request          TEXT NOT NULL DEFAULT '{}' CHECK (json_type(request) = 'object'),
    registry_version TEXT,
    symbols          TEXT NOT NULL DEFAULT '[]' CHECK (json_type(symbols) = 'array'),
    counts           TEXT NOT NULL DEFAULT '{}' CHECK (json_type(counts) = 'object'),
    quality          TEXT NOT NULL DEFAULT '{}' CHECK (json_type(quality) = 'object'),
    timings          TEXT NOT NULL DEFAULT '{}' CHECK (json_type(timings) = 'object'),
    warnings         TEXT NOT NULL DEFAULT '[]' CHECK (json_type(warnings) = 'array'),
    error            TEXT,
    out_dir          TEXT,
    data_hash        TEXT,
    created_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f000+00:00', 'now')),
    updated_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f000+00:00', 'now'))
) WITHOUT ROWID;
CREATE INDEX datasets_created_at ON datasets (created_at DESC, id DESC);
CREATE INDEX datasets_registry_version ON datasets (registry_version);
CREATE INDEX datasets_status ON datasets (status);

CREATE TABLE feature_registry_versions (
    version                TEXT PRIMARY KEY,
    file_path              TEXT NOT NULL,
    is_active              INTEGER NOT NULL DEFAULT 0 CHECK (is_active IN (0, 1)),
    validated_at           TEXT,
    validation_errors      TEXT NOT NULL DEFAULT '[]'
                           CHECK (json_type(validation_errors) = 'array'),
    loaded_at              TEXT,
    created_at             TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f000+00:00', 'now')),
    created_by             TEXT,
    activated_by           TEXT,
    activation_reason      TEXT,
    previous_version       TEXT,
    rollback_from          TEXT,
    compatibility_warnings TEXT NOT NULL DEFAULT '[]'
                           CHECK (json_type(compatibility_warnings) = 'array'),
    breaking_changes       TEXT NOT NULL DEFAULT '[]'
                           CHECK (json_type(breaking_changes) = 'array')
) WITHOUT ROWID;
-- at most one active version
CREATE UNIQUE INDEX feature_registry_versions_one_active
    ON feature_registry_versions (is_active) WHERE is_active = 1;

CREATE TABLE registry_audit (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    version      TEXT NOT NULL,
    action       TEXT NOT NULL
                 CHECK (action IN ('created', 'updated', 'activated', 'rolled_back', 'deleted')),
    actor        TEXT NOT NULL,
    reason       TEXT,
    from_version TEXT,
    at           TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f000+00:00', 'now'))
);
CREATE INDEX registry_audit_version ON registry_audit (version, id);

-- append-only: rows can be added, never changed or removed
CREATE TRIGGER registry_audit_no_update BEFORE UPDATE ON registry_audit
BEGIN
    SELECT RAISE(ABORT, 'registry_audit is append-only (UPDATE refused)');
END;
CREATE TRIGGER registry_audit_no_delete BEFORE DELETE ON registry_audit
BEGIN
    SELECT RAISE(ABORT, 'registry_audit is append-only (DELETE refused)');
END;

CREATE TABLE data_quality_reports (
    id         TEXT PRIMARY KEY,
    symbol     TEXT NOT NULL,
    "start"    TEXT NOT NULL,
    "end"      TEXT NOT NULL,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f000+00:00', 'now')),
    report     TEXT NOT NULL CHECK (json_type(report) = 'object'),
    CHECK ("end" > "start")
) WITHOUT ROWID;
CREATE INDEX data_quality_reports_symbol ON data_quality_reports (symbol, created_at DESC);
