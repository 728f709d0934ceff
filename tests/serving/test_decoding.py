"""Replies carry no marker token, with either tokenizer shape (issue 11.4)."""

from pathlib import Path

import pytest

from persona_serving.decoding import decode_replies

MARKERS = ("<extra_id_", "<SC", "<LM>", "</s>", "<pad>", "<s>", "<unk>", "<|endoftext|>")


@pytest.mark.parametrize("base", ["tiny_base", "fred_base"])
def test_markers_go_wherever_they_appear_and_the_words_stay(base: str, request: pytest.FixtureRequest):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(request.getfixturevalue(base))
    words = tokenizer("ну смотри, классика", add_special_tokens=False).input_ids
    marker = tokenizer.convert_tokens_to_ids
    sequences = [
        [marker("<extra_id_0>"), *words, tokenizer.eos_token_id, tokenizer.pad_token_id],
        [*words[:2], marker("<SC6>"), *words[2:], marker("<extra_id_1>")],
        [marker("<extra_id_0>"), tokenizer.eos_token_id],
    ]
    replies = decode_replies(tokenizer, sequences)
    assert replies[0] == "ну смотри, классика" and replies[2] == ""
    assert replies[1].replace(" ", "") == "нусмотри,классика"
    assert not [reply for reply in replies if any(m in reply for m in MARKERS)]


def test_the_fred_tokenizer_alone_would_leave_the_sentinel_in(fred_base: Path):
    """What the handler did before: `skip_special_tokens` keeps FRED's plain added tokens."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(fred_base)
    sequence = [tokenizer.convert_tokens_to_ids("<extra_id_0>"), *tokenizer("да").input_ids]
    assert "<extra_id_0>" in tokenizer.batch_decode([sequence], skip_special_tokens=True)[0]
    assert decode_replies(tokenizer, [sequence]) == ["да"]


def test_a_stream_shows_each_new_piece_once_and_holds_back_what_is_not_final():
    from persona_serving.decoding import unseen

    assert unseen("", "привет") == "привет"
    assert unseen("привет", "привет, мир") == ", мир"
    assert unseen("привет", "привет") == ""
    assert unseen("при", "приве\ufffd") == "ве"  # half a letter waits for its second byte
    assert unseen("hello wor", "hello world") == "ld"
    assert unseen("hello  x", "hello x y") == ""  # not a continuation: the final event corrects it
