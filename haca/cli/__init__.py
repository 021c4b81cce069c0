"""The `haca` command line (typer + rich); every command takes --home and --json."""
