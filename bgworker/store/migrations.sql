-- Migration bookkeeping (bgworker.store.migrations): which numbered files of migrations/
-- are applied. These run before any migration, so they touch only their own table.

-- name: migration_lock
-- Transaction-scoped: released at commit or rollback, so a crashed run holds nothing.
SELECT pg_advisory_xact_lock($1);

-- name: create_migration_table
CREATE TABLE IF NOT EXISTS bgworker_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now());

-- name: migration_table_exists
SELECT to_regclass('bgworker_migrations') IS NOT NULL;

-- name: applied_migrations
SELECT version FROM bgworker_migrations;

-- name: record_migration
INSERT INTO bgworker_migrations (version, name) VALUES ($1, $2);
