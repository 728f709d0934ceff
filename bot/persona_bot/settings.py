"""The bot's configuration: environment variables, validated once at start.

Kubernetes hands a Deployment its configuration as environment variables (secrets included), so
that is the only source; a bad value stops the bot with one line naming the variable, before
anything connects anywhere.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from personafleet.errors import PersonaError
from personafleet.names import PERSONA_NAME_PATTERN

# Telegram's format: the bot's numeric id, a colon, then the secret part.
BOT_TOKEN_PATTERN = re.compile(r"^\d+:[A-Za-z0-9_-]+$")
# Telegram allows 1-256 of these characters in a webhook's secret_token.
WEBHOOK_SECRET_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,256}$")


class BotSettings(BaseModel):
    """One field per environment variable (the variable is the field's name in upper case)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bot_token: SecretStr = Field(description="token from @BotFather")
    database_url: SecretStr = Field(description="postgresql://user:password@host:port/db")
    inference_url: str = Field(description="TorchServe inference API base URL")
    inference_model: str = Field("fleet", min_length=1, description="TorchServe model of the fleet (the persona goes in the body)")
    inference_token: SecretStr | None = Field(None, description="bearer token for the inference API")
    inference_token_file: Path | None = Field(None, description="file holding the token (re-read on rotation)")
    inference_timeout: float = Field(20.0, gt=0, description="seconds per model call attempt")
    inference_retries: int = Field(1, ge=0, le=5, description="extra attempts when the model is unavailable")
    persona: str = Field("devops-dude", pattern=PERSONA_NAME_PATTERN, description="default persona of a chat")
    personas: tuple[str, ...] = Field((), description="comma-separated personas /persona may switch to")
    telegram_api_url: str | None = Field(None, description="custom Bot API server base URL")
    bot_mode: Literal["polling", "webhook"] = Field("polling", description="polling (getUpdates) or webhook")
    webhook_url: str | None = Field(None, description="public https URL Telegram posts updates to")
    webhook_secret: SecretStr | None = Field(None, description="secret Telegram sends with every update")
    webhook_port: int = Field(8080, ge=0, le=65535, description="port of the webhook server; 0 = any free port")
    listen_host: str = Field("127.0.0.1", description="address the webhook and metrics servers bind")
    metrics_port: int = Field(9090, ge=0, le=65535, description="/metrics, /healthz, /readyz; 0 = any free port")
    rate_limit_messages: int = Field(5, ge=1, description="messages a user may send per window")
    rate_limit_seconds: float = Field(10.0, gt=0, description="the rate limit's window")
    max_reply_chars: int = Field(1000, ge=1, le=4096, description="longer model replies are cut")
    max_reply_tokens: int = Field(128, ge=1, description="generation cap sent with every request")
    database_timeout: float = Field(3.0, gt=0, description="seconds to connect or run one query")
    feedback_export_role: str | None = Field(
        None, pattern=r"^[a-z_][a-z0-9_]{0,62}$",
        description="read-only role `persona export-feedback` runs as (training Jobs); the bot creates it after migrating")
    feedback_export_password: SecretStr | None = Field(None, description="that role's password")
    shutdown_grace_seconds: float = Field(20.0, ge=0, description="time in-flight updates get on SIGTERM")
    voice: bool = Field(True, description="answer voice messages, audio files and video notes (through the ASR model)")
    asr_url: str | None = Field(None, description="inference API serving the `asr` model (default: INFERENCE_URL)")
    asr_timeout: float = Field(30.0, gt=0, description="seconds per transcription")
    asr_language: str | None = Field(None, pattern=r"^[a-z]{2,3}$",
                                     description="language to transcribe in (default: the one the ASR archive forces)")
    voice_max_seconds: float = Field(60.0, gt=0, description="longer voice messages are politely refused")
    voice_max_bytes: int = Field(20 * 1024 * 1024, gt=0, le=20 * 1024 * 1024,
                                 description="larger files are refused (the Bot API downloads at most 20 MB)")

    @field_validator("bot_token")
    @classmethod
    def _token_shape(cls, value: SecretStr) -> SecretStr:
        if not BOT_TOKEN_PATTERN.match(value.get_secret_value()):
            raise ValueError("must look like 123456789:AA... (the token @BotFather gives)")
        return value

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: SecretStr) -> SecretStr:
        if urlsplit(value.get_secret_value()).scheme not in ("postgres", "postgresql"):
            raise ValueError("must be a postgresql://user:password@host:port/database URL")
        return value

    @field_validator("inference_url", "telegram_api_url", "webhook_url", "asr_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError("must be an http(s)://host[:port] URL")
        return value

    @field_validator("personas", mode="before")
    @classmethod
    def _split_personas(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(name.strip() for name in value.split(",") if name.strip())
        return value

    @field_validator("personas")
    @classmethod
    def _persona_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not re.match(PERSONA_NAME_PATTERN, name):
                raise ValueError(f"{name!r} is not a persona name (lower-case letters, digits, '-')")
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _secret_shape(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not WEBHOOK_SECRET_PATTERN.match(value.get_secret_value()):
            raise ValueError("must be 1-256 characters of A-Z, a-z, 0-9, '_' and '-'")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> BotSettings:
        if self.inference_token is not None and self.inference_token_file is not None:
            raise ValueError("INFERENCE_TOKEN and INFERENCE_TOKEN_FILE: set one, not both")
        if self.inference_token_file is not None and not self.inference_token_file.is_file():
            raise ValueError(f"INFERENCE_TOKEN_FILE: {self.inference_token_file} is not a readable file")
        if (self.feedback_export_role is None) != (self.feedback_export_password is None):
            raise ValueError("FEEDBACK_EXPORT_ROLE and FEEDBACK_EXPORT_PASSWORD: set both or neither")
        if self.personas and self.persona not in self.personas:
            raise ValueError(f"PERSONA: {self.persona!r} is not one of PERSONAS ({', '.join(self.personas)})")
        if self.bot_mode == "webhook":
            if self.webhook_url is None or self.webhook_secret is None:
                raise ValueError("BOT_MODE=webhook needs WEBHOOK_URL and WEBHOOK_SECRET")
            if self.webhook_port and self.webhook_port == self.metrics_port:
                raise ValueError("WEBHOOK_PORT and METRICS_PORT must differ")
        return self

    @property
    def available_personas(self) -> tuple[str, ...]:
        return self.personas or (self.persona,)

    @property
    def webhook_path(self) -> str:
        """The path the webhook server listens on: the path of WEBHOOK_URL."""
        return urlsplit(self.webhook_url or "").path or "/"


def load_settings(environ: Mapping[str, str] | None = None) -> BotSettings:
    """Settings from the environment; any problem becomes one `PersonaError` line."""
    environ = os.environ if environ is None else environ
    names = {name.upper(): name for name in BotSettings.model_fields}
    values = {names[key]: value for key, value in environ.items() if key in names and value != ""}
    try:
        return BotSettings.model_validate(values)
    except ValidationError as exc:
        raise PersonaError(f"bad bot configuration: {_describe(exc)}") from None


def _describe(exc: ValidationError) -> str:
    error = exc.errors()[0]
    message = error["msg"].removeprefix("Value error, ")
    if not error["loc"]:  # a model-level check names its variables itself
        return message
    variable = str(error["loc"][0]).upper()
    if error["type"] == "missing":
        return f"{variable} is not set ({BotSettings.model_fields[str(error['loc'][0])].description})"
    return f"{variable}: {message}"
