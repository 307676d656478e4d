"""CLI command modules of the core (see recsvc.cli)."""
