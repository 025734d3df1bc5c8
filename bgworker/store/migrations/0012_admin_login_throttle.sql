-- The admin console's login throttle (bgworker.web.admin_auth), shared by every server
-- process: a row per login attempt not (yet) followed by a success, by client address.
-- Kept in memory, `serve --workers N` allowed N times the guesses (one count per process).
-- An attempt is recorded before its password is checked, under a per-client lock, so N
-- processes checking at once still check at most the limit; a success deletes its
-- client's rows, and rows older than the window are pruned as attempts come.
CREATE TABLE bgworker_admin_login_failures (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    client    text NOT NULL,
    failed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX bgworker_admin_login_failures_client
    ON bgworker_admin_login_failures (client, failed_at);
CREATE INDEX bgworker_admin_login_failures_age ON bgworker_admin_login_failures (failed_at);
