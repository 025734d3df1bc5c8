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
