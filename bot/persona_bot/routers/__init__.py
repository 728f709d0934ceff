"""One router per feature; `persona_bot.app` includes them in this order."""
