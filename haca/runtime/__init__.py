"""Model runtimes used by inference nodes (never by validators)."""
