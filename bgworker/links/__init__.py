"""Links: signed download and status tokens, and a link's lifecycle (issue, revoke, resend)."""
