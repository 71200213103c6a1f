"""CLI command modules of the engine (see engine/cli.py for the protocol)."""
