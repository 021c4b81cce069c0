"""ABCI over a socket: framing and connections. The app behind it sees only requests and responses."""
