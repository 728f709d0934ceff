"""`persona chat` with piped input: one reply per line, the conversation carried along."""

import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_piped_chat_prints_one_reply_per_line(torchserve):
    lines = ["привет", "", "как дела?", "x" * 5000, "пока"]
    result = subprocess.run(
        [sys.executable, "-m", "persona_cli", "chat", "--persona", torchserve.persona,
         "--workdir", str(torchserve.workdir)],  # url and inference token found beside the server
        input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=180,
    )
    replies = result.stdout.split("\n")[:-1]
    assert len(replies) == 4, result.stderr  # the empty line is skipped; the refused one stays a blank
    assert replies[2] == ""
    assert "refused (invalid_request)" in result.stderr and "Traceback" not in result.stderr
    assert result.returncode == 1


def test_conversation_carries_earlier_turns():
    from persona_serving.chat import Conversation

    conversation = Conversation()
    conversation.record("привет", "здорово")
    request = conversation.request("как дела?")
    assert [(t.role, t.text) for t in request.context] == [("user", "привет"), ("persona", "здорово")]
    assert request.message == "как дела?"


async def test_interactive_chat_prints_the_reply_as_it_is_generated(torchserve):
    """On a terminal the reply appears piece by piece; what ends up printed is the final reply."""
    import io

    from persona_serving.chat import chat
    from personafleet.client import InferenceClient

    class Recording(io.StringIO):
        def __init__(self) -> None:
            super().__init__()
            self.pieces: list[str] = []

        def write(self, text: str) -> int:
            self.pieces.append(text)
            return super().write(text)

    out, err = Recording(), io.StringIO()
    async with InferenceClient(torchserve.inference_url, token_file=torchserve.key_file) as client:
        refused = await chat(torchserve.persona, client, ["как там деплой?"], out, err, interactive=True)
    assert refused == 0, err.getvalue()
    printed = out.getvalue()
    assert printed.startswith(f"{torchserve.persona}> ") and printed.endswith("\n")
    assert len([p for p in out.pieces if p.strip()]) >= 3, out.pieces  # prefix, previews, the rest
    assert printed.count("\n") == 1


def test_one_conversation_sends_one_key_and_a_new_conversation_another():
    from persona_serving.chat import Conversation

    first, second = Conversation(), Conversation()
    keys = {first.request("привет").conversation, first.request("как дела?").conversation}
    assert len(keys) == 1 and keys != {second.request("привет").conversation}


def test_facts_and_about_through_the_real_fleet(torchserve, tiny_base):
    """Issue 26: `show_facts` returns the facts retrieved into the prompt (here none: the version
    has no knowledge), only when asked; `about` describes the serving version without generating."""
    import asyncio

    from personafleet.client import InferenceClient
    from personafleet.inference import InferenceRequest

    async def ask():
        async with InferenceClient(torchserve.inference_url, token_file=torchserve.key_file, timeout=120) as client:
            shown = await client.reply(torchserve.persona, InferenceRequest(message="привет", show_facts=True))
            plain = await client.reply(torchserve.persona, InferenceRequest(message="привет"))
            return shown, plain, await client.about(torchserve.persona)

    shown, plain, about = asyncio.run(ask())
    assert shown.facts == [] and plain.facts is None
    assert (about.persona, about.model_version, about.facts) == (torchserve.persona, "1", 0)
    assert about.base == str(tiny_base) and about.trained_at is not None

    result = subprocess.run(
        [sys.executable, "-m", "persona_cli", "chat", "--persona", torchserve.persona,
         "--workdir", str(torchserve.workdir), "--show-facts"],
        input="привет\nкак дела?\n", capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0 and len(result.stdout.splitlines()) == 2  # still one reply per line
    assert result.stderr.splitlines().count("facts: (none retrieved)") == 2
