"""`persona chat` with piped input: one reply per line, the conversation carried along."""

import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_piped_chat_prints_one_reply_per_line(torchserve):
    lines = ["привет", "", "как дела?", "x" * 5000, "пока"]
    result = subprocess.run(
        [sys.executable, "-m", "persona_cli", "chat", "--persona", torchserve.persona,
         "--workdir", str(torchserve.workdir)],  # url and key file found beside the server
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
