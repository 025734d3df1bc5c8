-- The database itself (bgworker.store.connection).

-- name: create_database_statement
-- CREATE DATABASE takes no parameters: PostgreSQL builds the statement, quoting the name
-- as an identifier where it must (%I, like quote_ident), so no name can inject SQL.
SELECT format('CREATE DATABASE %I', $1::text);

-- name: backend_pid
-- The server process behind the connection, for this statement: behind a pooler in
-- transaction mode it may change between two (connection.transaction_pooled).
SELECT pg_backend_pid();
