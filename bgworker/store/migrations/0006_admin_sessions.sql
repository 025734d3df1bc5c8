-- The admin console's server-side state (bgworker.web.admin_auth, OWASP Session Management
-- Cheat Sheet): a session is a random id the server can end (logout, a password change),
-- not a signed value that stays valid until it expires.

-- Values made once and shared by every server process: the key that signs the login form's
-- CSRF token (random, never the password) and the scrypt hash of the admin password (its
-- change ends every session). Never the password itself.
CREATE TABLE bgworker_admin_secrets (
    name       text PRIMARY KEY,
    value      bytea NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- One row per logged-in browser. The cookie holds a random token; only its SHA-256 is
-- stored, so a read of this table gives no usable cookie.
CREATE TABLE bgworker_admin_sessions (
    token_hash bytea PRIMARY KEY,
    username   text NOT NULL,
    csrf       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
CREATE INDEX bgworker_admin_sessions_expiry ON bgworker_admin_sessions (expires_at);
