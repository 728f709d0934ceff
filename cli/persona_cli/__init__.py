"""`persona`: the composition root. One command-line entry point for every step; it only parses
arguments and calls the parts. One module per command group, each importing only its own part
(and that lazily, inside the command, so `persona --help` stays fast); the core `personafleet`
imports none of this (tests/core/test_imports.py holds the graph to that)."""
