"""Bot accounts, their HTTP API and outgoing webhooks (docs/protocol.md, "Bots")."""
