"""Versioned SQL migrations of the bot's database: `NNNN_name.sql`, applied in order, each once."""
