-- The admin console's sessions and secrets (bgworker.store.admin_sessions).

-- name: admin_secret_insert
-- The first server process to start stores its value; the others read it.
INSERT INTO bgworker_admin_secrets (name, value) VALUES ($1, $2)
ON CONFLICT (name) DO NOTHING;

-- name: admin_secret_get
SELECT value FROM bgworker_admin_secrets WHERE name = $1;

-- name: admin_secret_set
INSERT INTO bgworker_admin_secrets (name, value) VALUES ($1, $2)
ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = now();

-- name: admin_session_insert
INSERT INTO bgworker_admin_sessions (token_hash, username, csrf, expires_at)
VALUES ($1, $2, $3, now() + make_interval(secs => $4));

-- name: admin_session_get
SELECT username, csrf FROM bgworker_admin_sessions
WHERE token_hash = $1 AND expires_at > now();

-- name: admin_session_delete
DELETE FROM bgworker_admin_sessions WHERE token_hash = $1;

-- name: admin_sessions_delete_all
DELETE FROM bgworker_admin_sessions;

-- name: admin_sessions_delete_expired
DELETE FROM bgworker_admin_sessions WHERE expires_at <= now();

-- The login throttle (table from migration 0012): failed attempts per client address.

-- name: admin_login_lock
-- One client's attempts are counted and recorded one at a time, across server processes.
SELECT pg_advisory_xact_lock(hashtextextended('bgworker.admin-login:' || $1, 0));

-- name: admin_login_failures_recent
-- $1 client, $2 window in seconds: failures in the window, and the seconds until the
-- oldest of them leaves it.
SELECT count(*) AS failures,
       extract(epoch FROM min(failed_at) + make_interval(secs => $2) - now())::float8 AS wait
FROM bgworker_admin_login_failures
WHERE client = $1 AND failed_at > now() - make_interval(secs => $2);

-- name: admin_login_failure_insert
INSERT INTO bgworker_admin_login_failures (client) VALUES ($1);

-- name: admin_login_failures_clear
DELETE FROM bgworker_admin_login_failures WHERE client = $1;

-- name: admin_login_failures_prune
-- Rows past the window ($1 seconds), a batch at a time; rows another process is deleting
-- are skipped, not waited for (two prunes never deadlock).
DELETE FROM bgworker_admin_login_failures WHERE id IN (
    SELECT id FROM bgworker_admin_login_failures
    WHERE failed_at <= now() - make_interval(secs => $1)
    LIMIT 1000
    FOR UPDATE SKIP LOCKED
);
