"""The FRED-shaped persona end to end (issue 11.4): `persona package` -> a real TorchServe with the
fleet handler -> the bot's `InferenceClient`. The base starts its answers with <extra_id_0>,
as FRED-T5 does: the reply must not show it."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from persona_serving.decoding import decode_replies
from persona_serving.server import ServeOptions, serve_background, stop
from personafleet.client import InferenceClient
from personafleet.inference import GenerationOptions, InferenceRequest
from personafleet.persona import PersonaSpec
from personafleet.prompt import TimedTurn, conversation, render_prompt
from tests.fixtures.fred_model import FRED_PERSONA
from tests.fixtures.torchserve import publish, serve_options

GREEDY = GenerationOptions(max_new_tokens=12, do_sample=False, repetition_penalty=1.0)


@pytest.fixture(scope="module")
def fred_serve(fred_run: Path, fred_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeOptions]:
    root = tmp_path_factory.mktemp("fred-serve")
    publish(fred_run, FRED_PERSONA, 1, root / "store")
    options = serve_options(root / "store", fred_base, root / "serve")
    serve_background(options)
    try:
        yield options
    finally:
        stop(options.workdir)


async def test_the_bots_client_gets_a_reply_without_markers(fred_serve: ServeOptions, fred_run: Path):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    now = 1_700_000_000.0
    turns = conversation([TimedTurn(role="persona", text="ну смотри", time=now - 60),
                          TimedTurn(role="user", text="как перезапустить под?", time=now)], now)
    request = InferenceRequest(persona=FRED_PERSONA, context=turns[:-1], message=turns[-1].text, generation=GREEDY)

    # The same greedy generation outside the server: the raw output holds a marker token.
    persona = PersonaSpec.model_validate_json((fred_run / "persona.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(fred_run)
    model = AutoModelForSeq2SeqLM.from_pretrained(fred_run / "merged")
    prompt = render_prompt(persona.template, persona.description, request.turns())
    output = model.generate(**tokenizer(prompt, return_tensors="pt"), **GREEDY.model_dump(exclude_none=True))
    raw = tokenizer.batch_decode(output[:, 1:], skip_special_tokens=True)[0]
    assert "<extra_id_0>" in raw

    async with InferenceClient(fred_serve.inference_url, token_file=fred_serve.key_file) as client:
        response = await client.reply(FRED_PERSONA, request)
    assert "<extra_id" not in response.reply and "<SC" not in response.reply
    assert response.reply == decode_replies(tokenizer, output[:, 1:])[0]
