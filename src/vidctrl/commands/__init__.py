"""Subcommands of the `vidctrl` CLI, one module each."""
