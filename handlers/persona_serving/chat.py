"""`persona chat`: talk to a persona of the fleet from a terminal, through the bot's own client.

Interactive on a terminal, where the reply is printed as it is generated (the stream's previews,
then what the final event adds); with piped input, one message per stdin line and one whole reply
per stdout line (an empty line where a message was refused, so lines stay aligned; the reason goes
to stderr). Either way the conversation keeps the final event's reply, as the bot does.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import TextIO

from pydantic import ValidationError

from persona_serving.server import DEFAULT_WORKDIR, INFERENCE_TOKEN_FILE
from personafleet.client import ENDPOINTS_FILE, InferenceClient, InferenceRejected, InferenceUnavailable
from personafleet.errors import PersonaError
from personafleet.inference import FLEET_MODEL, InferenceRequest, InferenceResponse
from personafleet.names import MAX_CONTEXT_TURNS
from personafleet.prompt import Turn
from personafleet.routing import conversation_key


def local_endpoint(workdir: Path = DEFAULT_WORKDIR) -> tuple[str | None, Path | None]:
    """(inference URL, inference token file) of the server `persona serve` started from `workdir`,
    if any: the inference key alone, as every client gets (never the server's key file)."""
    try:
        endpoints = json.loads((workdir / ENDPOINTS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, None
    token_file = workdir / INFERENCE_TOKEN_FILE
    return endpoints.get("inference"), token_file if token_file.exists() else None


class Conversation:
    """The turns so far, newest last, capped at what one request may carry; its key keeps every
    turn on one version while a canary shares the persona (a new key per conversation)."""

    def __init__(self) -> None:
        self.turns: list[Turn] = []
        self.key = conversation_key(uuid.uuid4())

    def request(self, message: str) -> InferenceRequest:
        return InferenceRequest(context=self.turns[-MAX_CONTEXT_TURNS:], message=message, conversation=self.key)

    def record(self, message: str, reply: str) -> None:
        self.turns += [Turn(role="user", text=message), Turn(role="persona", text=reply)]


async def chat(
    persona: str,
    client: InferenceClient,
    lines: Iterable[str],
    out: TextIO,
    err: TextIO,
    *,
    interactive: bool,
    version: int | None = None,
    show_facts: bool = False,
) -> int:
    """Answer each input line; returns the number of refused messages. With `show_facts`, the facts
    retrieved into each prompt go to `err` after the reply (piped output keeps one line per reply)."""
    conversation, refused = Conversation(), 0
    prompt = "you> " if interactive else ""
    if interactive:
        print(f"Chatting with {persona} (/reset forgets the conversation, Ctrl-D ends).", file=err)
    for line in _prompted(lines, prompt, err):
        message = line.strip()
        if not message:
            continue
        if interactive and message == "/reset":
            conversation = Conversation()
            continue
        try:
            request = conversation.request(message).model_copy(update={"show_facts": show_facts})
            if interactive:
                response = await _print_stream(client.stream(persona, request, version=version), f"{persona}> ", out)
            else:
                response = await client.reply(persona, request, version=version)
        except (InferenceRejected, ValidationError) as exc:
            refused += 1
            reason = f"{exc.error}): {exc.detail}" if isinstance(exc, InferenceRejected) else f"invalid_request): {exc.errors()[0]['msg']}"
            print(f"persona: refused ({reason}", file=err)
            if not interactive:
                print("", file=out, flush=True)
            continue
        except InferenceUnavailable as exc:
            raise PersonaError(str(exc)) from exc
        conversation.record(message, response.reply)
        if not interactive:  # exactly one line per reply, whatever the model generated
            print(" ".join(response.reply.splitlines()), file=out, flush=True)
        if show_facts:
            print(facts_line(response.facts or []), file=err, flush=True)
    return refused


def facts_line(facts: list[str]) -> str:
    """The facts retrieved into a reply's prompt, on one line."""
    return "facts: " + (" | ".join(facts) if facts else "(none retrieved)")


async def _print_stream(events: AsyncIterator, prefix: str, out: TextIO) -> InferenceResponse:
    """Print a reply as it arrives; the final event's reply is the one that counts: what it adds
    to the previews is printed, and if it is not their continuation it is printed whole."""
    shown = ""
    async for event in events:
        if isinstance(event, InferenceResponse):
            rest = event.reply[len(shown):] if event.reply.startswith(shown) else f"\n{prefix}{event.reply}"
            print(("" if shown else prefix) + rest, file=out, flush=True)
            return event
        if event.delta:
            print(("" if shown else prefix) + event.delta, end="", file=out, flush=True)
            shown += event.delta
    raise InferenceUnavailable("the reply stream ended without its final event")  # stream() raises first


def _prompted(lines: Iterable[str], prompt: str, err: TextIO) -> Iterable[str]:
    """The input lines, with the prompt shown before each is read."""
    source = iter(lines)
    while True:
        if prompt:
            print(prompt, end="", file=err, flush=True)
        line = next(source, None)
        if line is None:
            return
        yield line


def run_chat(
    persona: str,
    *,
    url: str | None,
    token_file: Path | None,
    workdir: Path,
    version: int | None,
    timeout: float,
    model: str = FLEET_MODEL,
    show_facts: bool = False,
) -> int:
    local_url, local_key = local_endpoint(workdir)
    url = url or local_url
    if url is None:
        raise PersonaError(f"no --url given and no server started from {workdir} (`persona serve` first)")
    interactive = sys.stdin.isatty()

    async def main() -> int:
        async with InferenceClient(url, token_file=token_file or local_key, timeout=timeout, model=model) as client:
            return await chat(persona, client, sys.stdin, sys.stdout, sys.stderr, interactive=interactive, version=version,
                              show_facts=show_facts)

    return asyncio.run(main())
