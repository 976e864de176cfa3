-- undo 0001_init: drops every catalog table (their rows go with them)
DROP TABLE data_quality_reports;
DROP TRIGGER registry_audit_no_delete;
DROP TRIGGER registry_audit_no_update;
DROP TABLE registry_audit;
DROP TABLE feature_registry_versions;
DROP TABLE datasets;
