"""Chain modules, each owning a state prefix, its messages' handlers and its queries."""
