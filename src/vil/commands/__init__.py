"""Subcommands of the ``vil`` command line (see ``vil.cli``)."""
