"""The wire: messages, tx encoding and query answers shared by chain, node and client."""
