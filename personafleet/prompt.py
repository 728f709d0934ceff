"""The prompt: how a persona and a conversation become the model's input text.

Training (`persona train`) and serving (the TorchServe handler) both call `render_prompt`,
so the model sees at serving time exactly the input shape it was trained on. The template is
saved next to every trained adapter and packaged into every .mar.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from personafleet.records import DialogueRecord

Role = Literal["user", "persona"]


class Turn(BaseModel):
    """One turn of a conversation as the model sees it: the persona's own, or anyone else's."""

    model_config = ConfigDict(extra="forbid")

    role: Role
    text: str


# The context budget, one for the whole pipeline: `persona prepare` builds records with it, the
# prompt keeps it, the bot keeps that much history. A model sees at serving time what it was
# trained on (the seeds used 3 turns).
CONTEXT_TURNS = 3
CONTEXT_CHARS = 500


class PromptTemplate(BaseModel):
    """The words around the conversation. Defaults follow SiberianPersonaFred's dialogue prompt."""

    model_config = ConfigDict(extra="forbid")

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
                kept.append(Turn(role=turn.role, text=turn.text[-max_chars:]))
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
    template: PromptTemplate, persona_description: str, turns: Sequence[Turn], facts: Sequence[str] = ()
) -> str:
    """Render the model input for the persona's next reply after `turns` (oldest first); `facts`
    (from `personafleet.knowledge.retrieve`) follow the description. No facts: the description alone."""
    description = " ".join(filter(None, (persona_description.strip(), facts_text(facts))))
    lines = [f"{template.prefix}{description} {template.instruction}".strip()]
    for turn in fit_context(turns, template.max_context_turns, template.max_context_chars):
        label = template.persona_label if turn.role == "persona" else template.user_label
        lines.append(f"{label}: {turn.text}")
    lines.append(f"{template.persona_label}: {template.answer_marker}")
    return "\n".join(lines)


def record_turns(record: DialogueRecord) -> list[Turn]:
    """A record's context as turns: the reply's author speaks as the persona, everyone else as the user."""
    persona_author = record.reply.author
    return [
        Turn(role="persona" if u.author == persona_author else "user", text=u.text)
        for u in record.context
    ]
