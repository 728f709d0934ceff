"""The persona Telegram bot: aiogram 3 routers over a Postgres conversation store, talking to
the persona models through `personafleet.client.InferenceClient`. Run it with `persona bot`."""
