"""The model family seam (issue 22): which family a base is, and the three things the family decides."""

from __future__ import annotations

import pytest

from personafleet.errors import PersonaError
from personafleet.family import IGNORE_INDEX, ModelFamily, family_of
from personafleet.prompt import PromptTemplate, Turn, render_prompt

CAUSAL = ModelFamily("causal", "llama")
SEQ2SEQ = ModelFamily("seq2seq", "t5")


@pytest.mark.parametrize(("config", "family"), [
    ({"model_type": "t5", "is_encoder_decoder": True, "architectures": ["T5ForConditionalGeneration"]}, "seq2seq"),
    ({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}, "causal"),  # ruGPT-3, ruDialoGPT
    ({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}, "causal"),
    ({"model_type": "llama"}, "causal"),  # no architectures: llama has a causal-LM class only
    ({"model_type": "t5", "is_encoder_decoder": True}, "seq2seq"),
])
def test_the_family_is_read_from_the_config(config, family):
    assert family_of(config) == family


@pytest.mark.parametrize("config", [
    {"model_type": "bert", "architectures": ["BertForMaskedLM"]},
    {"model_type": "bert"},  # BERT has a causal-LM head class too, and a masked one: not a chat base
    {"model_type": "llava", "architectures": ["LlavaForConditionalGeneration"]},
    {},
])
def test_a_base_whose_family_cannot_be_told_is_refused_naming_what_was_seen(config):
    with pytest.raises(PersonaError, match="cannot tell the model family of my/base") as error:
        family_of(config, "my/base")
    assert str(config.get("model_type", "?")) in str(error.value) and "\n" not in str(error.value)


def test_a_causal_example_is_one_sequence_with_the_loss_on_the_reply_only():
    prompt, reply = [5, 6, 7], [8, 9, 1]
    assert CAUSAL.training_example(prompt, reply) == ([5, 6, 7, 8, 9, 1], [IGNORE_INDEX] * 3 + [8, 9, 1])
    assert SEQ2SEQ.training_example(prompt, reply) == (prompt, reply)


def test_generate_output_is_cut_to_the_new_tokens():
    import torch

    causal_output = torch.tensor([[0, 0, 5, 6, 21, 22, 1], [3, 4, 5, 6, 23, 1, 0]])  # left-padded prompts of width 4
    assert CAUSAL.reply_tokens(causal_output, 4).tolist() == [[21, 22, 1], [23, 1, 0]]
    seq2seq_output = torch.tensor([[0, 21, 22, 1]])  # the decoder start token first
    assert SEQ2SEQ.reply_tokens(seq2seq_output, 9).tolist() == [[21, 22, 1]]


class _Tokenizer:
    """What `encode_prompts` uses of a tokenizer: a call, the special ids and the truncation side."""

    eos_token_id, bos_token_id = 1, 2
    truncation_side = "right"

    def __init__(self, append_eos: bool, prepend_bos: bool):
        self.append_eos, self.prepend_bos = append_eos, prepend_bos

    def __call__(self, texts, max_length, truncation):
        assert self.truncation_side == "left"
        rows = [[2] * self.prepend_bos + [int(word) for word in text.split()] + [1] * self.append_eos for text in texts]
        return {"input_ids": [row[-max_length:] for row in rows]}


def test_a_causal_prompt_never_ends_with_eos_nor_starts_with_two_bos():
    t5_style = _Tokenizer(append_eos=True, prepend_bos=False)  # the tiny causal base's tokenizer
    assert CAUSAL.encode_prompts(t5_style, ["7 8 9"], 16) == [[7, 8, 9]]
    assert SEQ2SEQ.encode_prompts(t5_style, ["7 8 9"], 16) == [[7, 8, 9, 1]]  # the encoder reads EOS
    llama_style = _Tokenizer(append_eos=False, prepend_bos=True)
    assert CAUSAL.encode_prompts(llama_style, ["2 7 8"], 16) == [[2, 7, 8]]  # a chat template wrote BOS
    assert CAUSAL.encode_prompts(llama_style, ["5 6 7 8 9"], 3) == [[7, 8, 9]]  # cut at the start
    assert t5_style.truncation_side == "right"  # the tokenizer is left as it was


TURNS = [Turn(role="user", text="привет"), Turn(role="persona", text="здарова"), Turn(role="user", text="как дела?")]


def test_a_causal_base_without_a_chat_template_gets_the_plain_template():
    class NoChat:
        chat_template = None

    template = CAUSAL.default_template(NoChat())
    assert template.style == "plain" and SEQ2SEQ.default_template(NoChat()) == PromptTemplate()
    prompt = render_prompt(template, "Я DevOps.", TURNS)
    assert prompt.splitlines() == ["Я DevOps. Продолжи диалог:", "Собеседник: привет", "Ты: здарова",
                                   "Собеседник: как дела?", "Ты:"]
    assert CAUSAL.chat_formatter(NoChat()) is None


def test_a_chat_template_renders_the_persona_as_the_assistant():
    class Chat:
        chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}<assistant>"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            assert tokenize is False and add_generation_prompt is True
            return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"

    template = CAUSAL.default_template(Chat())
    assert template.style == "chat"
    prompt = render_prompt(template, "Я DevOps.", TURNS, facts=["Работаю в Яндексе"], chat=CAUSAL.chat_formatter(Chat()))
    assert prompt == ("<system>Я DevOps. Работаю в Яндексе. Продолжи диалог:<user>привет<assistant>здарова"
                      "<user>как дела?<assistant>")
    with pytest.raises(PersonaError, match="has no chat template"):
        render_prompt(template, "Я DevOps.", TURNS)


def test_the_seq2seq_prompt_is_unchanged():
    assert render_prompt(PromptTemplate(), "Я DevOps.", TURNS[-1:]).splitlines() == [
        "<SC6>Я DevOps. Продолжи диалог:", "Собеседник: как дела?", "Ты: <extra_id_0>"]
