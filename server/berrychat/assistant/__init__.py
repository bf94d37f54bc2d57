"""The built-in AI assistant (docs/protocol.md, "Assistant")."""
