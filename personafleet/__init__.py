"""personafleet core: the contract every part shares (records, prompt, inference API, errors).

This package must stay light: no torch, transformers or aiogram imports here, so that the
CLI, the bot and the operator can import it cheaply.
"""

__version__ = "0.1.0"
