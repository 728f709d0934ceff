"""The step runner against `generate`: rows that join at different steps, with different prompt
lengths, caps, options and adapters, decode exactly what `generate` gives each alone (greedy), on
an encoder-decoder base (T5) and on decoder-only ones (Llama: rotary positions; GPT-2: absolute
positions, which left padding would shift if positions were not counted per row)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration

from persona_serving.runner import CausalFamily, Decoding, EncoderDecoderFamily, Row, StepRunner, runner_family
from personafleet.family import ModelFamily

VOCAB, PAD, EOS = 200, 0, 1


@pytest.fixture(scope="module")
def model() -> T5ForConditionalGeneration:
    """A random T5 whose greedy replies vary token to token (a large init spreads the logits)."""
    torch.manual_seed(0)
    config = T5Config(vocab_size=VOCAB, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2, num_heads=4,
                      decoder_start_token_id=PAD, pad_token_id=PAD, eos_token_id=EOS, initializer_factor=8.0)
    return T5ForConditionalGeneration(config).eval()


def causal_model(shape: str):
    """A random decoder-only model whose greedy replies vary token to token."""
    torch.manual_seed(0)
    if shape == "llama":
        config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, pad_token_id=PAD, eos_token_id=EOS,
                             bos_token_id=2, initializer_range=0.5)
        return LlamaForCausalLM(config).eval()
    config = GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, eos_token_id=EOS, bos_token_id=EOS,
                        initializer_range=0.2)  # GPT-2 has no pad token: PAD only fills masked columns
    return GPT2LMHeadModel(config).eval()


@pytest.fixture(scope="module", params=["t5", "llama", "gpt2"])
def any_model(request, model):
    return model if request.param == "t5" else causal_model(request.param)


def runner_for(model, select=lambda adapters: {}) -> StepRunner:
    family = ModelFamily("seq2seq" if model.config.is_encoder_decoder else "causal", model.config.model_type)
    return StepRunner(model, runner_family(model, family, PAD), select)


def prompts(*lengths: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(sum(lengths))
    return [torch.randint(2, VOCAB, (n,), generator=generator).tolist() for n in lengths]


def alone(model, prompt: list[int], cap: int, **options) -> list[int]:
    """`generate` for this prompt alone (EOS never stops it: caps decide the length), cut to the reply."""
    with torch.inference_mode():
        output = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                max_new_tokens=cap, eos_token_id=VOCAB + 1, pad_token_id=PAD, **options)
    return output[0, 1 if model.config.is_encoder_decoder else len(prompt):].tolist()


def drive(runner: StepRunner, rows: dict[int, list[Row]], caps: dict[str, int]) -> dict[str, list[int]]:
    """Join `rows[step]` at each step, one token per live row per step, retire rows at their cap."""
    got: dict[str, list[int]] = {row.id: [] for joining in rows.values() for row in joining}
    widths = []
    for step in range(max(caps.values()) + max(rows) + 1):
        for tokens in (runner.step(), runner.admit(rows.get(step, []))):
            for row, token in tokens.items():
                got[row].append(token)
        runner.retire({row for row in runner.ids if len(got[row]) >= caps[row]})
        widths.append(runner.cached_tokens)
    assert len(runner) == 0 and runner.cached_tokens == 0, "every row retired, every cache freed"
    return got


def test_rows_joining_at_different_steps_decode_what_generate_gives_each_alone(any_model):
    texts = prompts(5, 17, 9, 3, 12)
    caps = {"a": 12, "b": 6, "c": 20, "d": 9, "e": 15}
    rows = [Row(name, text, Decoding()) for name, text in zip(caps, texts)]
    got = drive(runner_for(any_model), {0: rows[:2], 2: rows[2:3], 7: rows[3:]}, caps)
    for row in rows:
        assert got[row.id] == alone(any_model, row.input_ids, caps[row.id]), row.id
    assert len({tuple(tokens) for tokens in got.values()}) == len(rows)  # the replies really differ


def test_each_row_keeps_its_own_options(any_model):
    """A repetition-penalty row, a plain greedy row and a top-k=1 sampling row (which must pick the
    argmax, so it is checkable) share steps; each matches `generate` with its own options (a causal
    row's penalty counts its prompt too, as `generate`'s input_ids hold it)."""
    texts = prompts(8, 4, 11)
    options = [{"repetition_penalty": 1.8}, {}, {"do_sample": True, "top_k": 1, "temperature": 0.7}]
    rows = [Row(str(i), text, Decoding.from_options(o)) for i, (text, o) in enumerate(zip(texts, options))]
    got = drive(runner_for(any_model), {0: rows[:1], 1: rows[1:]}, {"0": 14, "1": 14, "2": 14})
    assert got["0"] == alone(any_model, texts[0], 14, repetition_penalty=1.8)
    assert got["0"] != alone(any_model, texts[0], 14), "the penalty changed something"
    assert got["1"] == alone(any_model, texts[1], 14)
    assert got["2"] == alone(any_model, texts[2], 14)


def test_retiring_frees_rows_and_the_columns_no_row_needs(model):
    runner = StepRunner(model, EncoderDecoderFamily(model.config, PAD))
    old, long_prompt = prompts(4, 30)
    runner.admit([Row("old", old, Decoding()), Row("wide", long_prompt, Decoding())])
    for _ in range(5):
        runner.step()
    runner.admit([Row("new", old, Decoding())])
    assert runner.batch.self_mask.shape == (3, 6) and runner.batch.source_mask.shape == (3, 30)
    runner.retire({"old", "wide"})
    # Only "new" is left: one self column (its start token), its own 4 source columns.
    assert runner.ids == ["new"] and runner.batch.self_mask.shape == (1, 1) and runner.batch.source_mask.shape == (1, 4)
    layer = runner.batch.cache.cross_attention_cache.layers[0]
    assert layer.keys.shape[0] == 1 and layer.keys.shape[-2] == 4
    assert runner.cached_tokens == 5
    runner.retire({"new"})
    assert runner.batch is None


@pytest.mark.parametrize("shape", ["llama", "gpt2"])
def test_a_causal_row_caches_its_prompt_and_retiring_frees_the_columns_no_row_needs(shape):
    model = causal_model(shape)
    runner = runner_for(model)
    assert isinstance(runner.family, CausalFamily) and runner.family.last_only == {"logits_to_keep": 1}
    short, wide = prompts(4, 30)
    runner.admit([Row("short", short, Decoding()), Row("wide", wide, Decoding())])
    assert runner.batch.source_mask is None and runner.batch.self_mask.shape == (2, 30)  # prompts, left-padded
    assert runner.batch.self_mask.sum(dim=1).tolist() == [4, 30]
    for _ in range(5):
        runner.step()
    runner.admit([Row("new", short, Decoding())])
    # The new row's prompt ends where the others' newest token does: 35 columns, its 4 on the right.
    assert runner.batch.self_mask.shape == (3, 35) and runner.batch.self_mask.sum(dim=1).tolist() == [9, 35, 4]
    runner.retire({"wide"})
    assert runner.batch.self_mask.shape == (2, 9) and runner.cached_tokens == 18  # "short": 4 + 5 tokens
    layer = runner.batch.cache.layers[0]
    assert layer.keys.shape[0] == 2 and layer.keys.shape[-2] == 9
    runner.retire({"short", "new"})
    assert runner.batch is None


def test_every_forward_names_the_rows_adapters_first(model):
    calls = []
    runner = StepRunner(model, EncoderDecoderFamily(model.config, PAD), lambda adapters: calls.append(list(adapters)) or {})
    a, b = prompts(3, 6)
    runner.admit([Row("a", a, Decoding(), adapter=3)])
    runner.step()
    runner.admit([Row("b", b, Decoding(), adapter=5)])
    runner.step()
    assert calls == [[3], [3], [5], [3, 5]]


@pytest.fixture(scope="module")
def two_personas(tiny_base: Path, fleet_store: Path):
    """The fleet's model with two real personas in its slots (devops-dude and pm-life, trained apart)."""
    from persona_serving.fleet import FleetModel
    from tests.fixtures.torchserve import OTHER_PERSONA, PERSONA

    fleet = FleetModel(str(tiny_base), torch.device("cpu"), torch.float32)
    slots = {name: fleet.slot(fleet.load(fleet_store, name, 1)) for name in (PERSONA, OTHER_PERSONA)}
    return fleet, list(slots.values())


def test_rows_of_different_personas_in_one_step_match_their_single_persona_replies(two_personas):
    """The handler's seam: before every forward pass the runner hands the live rows' slots to the
    slot layers (`FleetModel.set_row_slots`), rows joining and leaving included."""
    fleet, (one, two) = two_personas
    tokenizer, model = fleet.tokenizer, fleet.model
    messages = ["привет, как дела?", "что с релизом", "деплой упал опять", "кто сломал прод"]
    rows = [Row(str(i), fleet.encode(m), Decoding(), adapter=a) for i, (m, a) in enumerate(zip(messages, [one, two, two, one]))]
    runner = StepRunner(model, EncoderDecoderFamily(model.config, tokenizer.pad_token_id),
                        lambda slots: fleet.set_row_slots(list(slots)) or {})
    got = drive(runner, {0: rows[:2], 3: rows[2:]}, {row.id: 10 for row in rows})

    def alone_as(row: Row, slot: int) -> list[int]:
        fleet.set_row_slots([slot])
        with torch.inference_mode():
            output = model.generate(input_ids=torch.tensor([row.input_ids]), max_new_tokens=10,
                                    eos_token_id=len(tokenizer) + 1, pad_token_id=tokenizer.pad_token_id)
        return output[0, 1:].tolist()

    for row in rows:
        assert got[row.id] == alone_as(row, row.adapter), row.id
    assert any(alone_as(row, two if row.adapter == one else one) != got[row.id] for row in rows), \
        "the adapters answer differently, so the rows really used their own"
