-- featlib catalog, PostgreSQL: metadata only (SPEC §7, §9). Tables live in the first schema
-- of the connection's search_path. Timestamps are timestamptz (UTC), JSON is jsonb.

CREATE TABLE datasets (
    id               text PRIMARY KEY,
    status           text NOT NULL DEFAULT 'building'
                     CHECK (status IN ('building', 'ready', 'failed')),
    request          jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(request) = 'object'),
    registry_version text,
    symbols          jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(symbols) = 'array'),
    counts           jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(counts) = 'object'),
    quality          jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(quality) = 'object'),
    timings          jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(timings) = 'object'),
    warnings         jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(warnings) = 'array'),
    error            text,
    out_dir          text,
    data_hash        text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX datasets_created_at ON datasets (created_at DESC, id DESC);
CREATE INDEX datasets_registry_version ON datasets (registry_version);
CREATE INDEX datasets_status ON datasets (status);

CREATE TABLE feature_registry_versions (
    version                text PRIMARY KEY,
    file_path              text NOT NULL,
    is_active              boolean NOT NULL DEFAULT false,
    validated_at           timestamptz,
    validation_errors      jsonb NOT NULL DEFAULT '[]'
                           CHECK (jsonb_typeof(validation_errors) = 'array'),
    loaded_at              timestamptz,
    created_at             timestamptz NOT NULL DEFAULT now(),
    created_by             text,
    activated_by           text,
    activation_reason      text,
    previous_version       text,
    rollback_from          text,
    compatibility_warnings jsonb NOT NULL DEFAULT '[]'
                           CHECK (jsonb_typeof(compatibility_warnings) = 'array'),
    breaking_changes       jsonb NOT NULL DEFAULT '[]'
                           CHECK (jsonb_typeof(breaking_changes) = 'array')
);
-- at most one active version
CREATE UNIQUE INDEX feature_registry_versions_one_active
    ON feature_registry_versions (is_active) WHERE is_active;

CREATE TABLE registry_audit (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    version      text NOT NULL,
    action       text NOT NULL
                 CHECK (action IN ('created', 'updated', 'activated', 'rolled_back', 'deleted')),
    actor        text NOT NULL,
    reason       text,
    from_version text,
    at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX registry_audit_version ON registry_audit (version, id);

-- append-only: rows can be added, never changed or removed
CREATE FUNCTION registry_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'registry_audit is append-only (% refused)', TG_OP;
END
$$;
CREATE TRIGGER registry_audit_append_only
    BEFORE UPDATE OR DELETE ON registry_audit
    FOR EACH ROW EXECUTE FUNCTION registry_audit_append_only();
CREATE TRIGGER registry_audit_no_truncate
    BEFORE TRUNCATE ON registry_audit
    FOR EACH STATEMENT EXECUTE FUNCTION registry_audit_append_only();

CREATE TABLE data_quality_reports (
    id         text PRIMARY KEY,
    symbol     text NOT NULL,
    "start"    timestamptz NOT NULL,
    "end"      timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    report     jsonb NOT NULL CHECK (jsonb_typeof(report) = 'object'),
    CHECK ("end" > "start")
);
CREATE INDEX data_quality_reports_symbol ON data_quality_reports (symbol, created_at DESC);
