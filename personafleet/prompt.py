"""The prompt: how a persona and a conversation become the model's input text.

Training (`persona train`) and serving (the TorchServe handler) both call `render_prompt`,
so the model sees at serving time exactly the input shape it was trained on. The template is
saved next to every trained adapter and packaged into every .mar.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from personafleet.errors import PersonaError
from personafleet.records import DialogueRecord

Role = Literal["user", "persona"]
# A tokenizer's chat template as `render_prompt` uses it: chat messages -> the model's input text.
ChatFormatter = Callable[[list[dict[str, str]]], str]


class Turn(BaseModel):
    """One turn of a conversation as the model sees it: the persona's own, or anyone else's."""

    model_config = ConfigDict(extra="forbid")

    role: Role
    text: str


class TimedTurn(Turn):
    """A turn with the Unix time of its last message and its author: what the bot keeps as
    history, so that the same window and merge rules as `persona prepare` can be applied to it."""

    time: float = Field(0.0, description="0: unknown (kept before times were), outside every window")
    author: str | None = Field(None, description="who wrote it (`user42`); None: the role alone says (the persona)")

    @property
    def speaker(self) -> str:
        """Whom the merge rule compares: consecutive messages of one author are one turn."""
        return self.author or self.role


# The context budget, one for the whole pipeline: `persona prepare` builds records with it, the
# prompt keeps it, the bot keeps that much history. A model sees at serving time what it was
# trained on (the seeds used 3 turns).
CONTEXT_TURNS = 3
CONTEXT_CHARS = 500
# The conversation's shape, also one for the whole pipeline (issue 11.5): `persona prepare`'s
# defaults and the history the bot sends. Seed 003 used a 3-hour window and 200-character messages.
CONTEXT_WINDOW_SECONDS = 3 * 3600.0  # older turns are not a reply's context
MESSAGE_CHARS = 200  # the per-message cap: longer replies are not trained on, longer context turns are cut
# People split one thought into a burst of messages typed within a minute or two; a pause of five
# minutes usually starts a new one. Merging the burst keeps "the persona answers its own message"
# out of the data and gives the model the whole thought as one turn.
MERGE_GAP_SECONDS = 300.0


class PromptTemplate(BaseModel):
    """The words around the conversation. Defaults follow SiberianPersonaFred's dialogue prompt;
    a causal base gets its own default (`personafleet.family`): its chat template (`style: chat`)
    or these labels without the task token and answer marker."""

    model_config = ConfigDict(extra="forbid")

    style: Literal["plain", "chat"] = Field(
        "plain", description="plain: the labelled lines below; chat: the base tokenizer's chat template")
    prefix: str = Field("<SC6>", description="task token FRED-T5 was pre-trained with")
    instruction: str = "Продолжи диалог:"
    user_label: str = "Собеседник"
    persona_label: str = "Ты"
    answer_marker: str = Field("<extra_id_0>", description="the span the model fills in")
    max_context_turns: int = Field(CONTEXT_TURNS, ge=1, description="newest turns kept in the prompt")
    max_context_chars: int = Field(CONTEXT_CHARS, ge=1, description="character budget for those turns")

    def words(self) -> list[str]:
        """The fixed strings of the template (a tokenizer trained for it must know them)."""
        return [self.prefix, self.instruction, self.user_label, self.persona_label, self.answer_marker]


def continues_turn(speaker: str, end: float, next_speaker: str, next_start: float, gap: float) -> bool:
    """Whether a message (or turn) by `next_speaker` starting at `next_start` belongs to the turn
    of `speaker` that ended at `end`: the same speaker, at most `gap` seconds later."""
    return speaker == next_speaker and 0 <= next_start - end <= gap


def join_turn(texts: Sequence[str]) -> str:
    """The text of one turn made of several messages (a prompt line holds one turn: no newlines)."""
    return " ".join(texts)


def cap_text(text: str, max_chars: int) -> str:
    """A turn cut to `max_chars` keeps its end: the part nearest to the reply."""
    return text if len(text) <= max_chars else text[-max_chars:]


def conversation(
    turns: Sequence[TimedTurn],
    now: float,
    *,
    window: float = CONTEXT_WINDOW_SECONDS,
    gap: float = MERGE_GAP_SECONDS,
    max_chars: int = MESSAGE_CHARS,
) -> list[Turn]:
    """Stored turns (oldest first, the newest being the message to answer) shaped as `persona
    prepare` shapes a record's context: turns older than `window` before `now` left out, consecutive
    turns of one author (of one role where no author is known) within `gap` merged, each cut to
    `max_chars`. The newest is always kept."""
    *history, newest = turns
    recent = [turn for turn in history if turn.time >= now - window] + [newest]
    merged: list[TimedTurn] = []
    for turn in recent:
        last = merged[-1] if merged else None
        if last is not None and continues_turn(last.speaker, last.time, turn.speaker, turn.time, gap):
            merged[-1] = turn.model_copy(update={"text": join_turn([last.text, turn.text])})
        else:
            merged.append(turn)
    return [Turn(role=turn.role, text=cap_text(turn.text, max_chars)) for turn in merged]


def fit_context(turns: Sequence[Turn], max_turns: int, max_chars: int) -> list[Turn]:
    """Keep the newest turns that fit both budgets; a turn never gets cut in the middle,
    except the newest one, which is kept (truncated from its start) so there is something to answer."""
    kept: list[Turn] = []
    used = 0
    for turn in reversed(turns):
        if len(kept) == max_turns:
            break
        if used + len(turn.text) > max_chars:
            if not kept:
                kept.append(Turn(role=turn.role, text=cap_text(turn.text, max_chars)))
            break
        kept.append(turn)
        used += len(turn.text)
    kept.reverse()
    return kept


SENTENCE_END = (".", "!", "?", "…")  # a fact ending so is a sentence already; others get a full stop


def facts_text(facts: Sequence[str]) -> str:
    """Facts as sentences of the persona description, where FRED-T5 persona models
    (SiberianPersonaFred) read what they know about themselves; a fact gets a full stop unless it
    already ends a sentence."""
    return " ".join(fact if fact.endswith(SENTENCE_END) else f"{fact}." for fact in facts)


def render_prompt(
    template: PromptTemplate,
    persona_description: str,
    turns: Sequence[Turn],
    facts: Sequence[str] = (),
    chat: ChatFormatter | None = None,
) -> str:
    """Render the model input for the persona's next reply after `turns` (oldest first); `facts`
    (from `personafleet.knowledge.retrieve`) follow the description. No facts: the description alone.

    Plain style: the first line (task token, description, instruction), one `label: text` line per
    turn, then the persona's label and the answer marker. Chat style: the first line as the system
    message, the turns as user/assistant messages, rendered by `chat` (the base's chat template)."""
    description = " ".join(filter(None, (persona_description.strip(), facts_text(facts))))
    first = f"{template.prefix}{description} {template.instruction}".strip()
    kept = fit_context(turns, template.max_context_turns, template.max_context_chars)
    if template.style == "chat":
        if chat is None:
            raise PersonaError("the prompt template's style is chat but the base's tokenizer has no chat template")
        messages = [{"role": "system", "content": first}]
        messages += [{"role": "assistant" if t.role == "persona" else "user", "content": t.text} for t in kept]
        return chat(messages)
    lines = [first]
    for turn in kept:
        label = template.persona_label if turn.role == "persona" else template.user_label
        lines.append(f"{label}: {turn.text}")
    lines.append(f"{template.persona_label}: {template.answer_marker}".rstrip())  # no marker: ends with "Ты:"
    return "\n".join(lines)


def record_turns(record: DialogueRecord) -> list[Turn]:
    """A record's context as turns: the reply's author speaks as the persona, everyone else as the user."""
    persona_author = record.reply.author
    return [
        Turn(role="persona" if u.author == persona_author else "user", text=u.text)
        for u in record.context
    ]
