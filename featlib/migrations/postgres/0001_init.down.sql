-- undo 0001_init: drops every catalog table (their rows go with them)
DROP TABLE data_quality_reports;
DROP TABLE registry_audit;
DROP FUNCTION registry_audit_append_only();
DROP TABLE feature_registry_versions;
DROP TABLE datasets;
