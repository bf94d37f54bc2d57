"""1:1 call signalling (docs/protocol.md, "Calls")."""
