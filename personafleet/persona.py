"""A persona: the name it is served under and the description its prompt starts with.

Shared by training (saved into the run), packaging (into the .mar), the bot (/persona)
and the operator (from the PersonaModel spec).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from personafleet.inference import GenerationOptions
from personafleet.names import PERSONA_NAME_PATTERN
from personafleet.prompt import PromptTemplate
from personafleet.reply_rules import ReplyFilterRules

# Production base models (FRED-T5 family). The tiny embedded base from `persona init-base`
# is used on machines without a model hub.
PRODUCTION_BASE_MODEL = "ai-forever/FRED-T5-large"
PERSONA_DIALOGUE_BASE_MODEL = "SiberiaSoft/SiberianPersonaFred"

DEFAULT_DESCRIPTION = "Я инженер DevOps, отвечаю коротко и по делу, иногда шучу."


class PersonaSpec(BaseModel):
    """Everything serving needs to know about a persona besides the weights."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("devops-dude", pattern=PERSONA_NAME_PATTERN)
    description: str = DEFAULT_DESCRIPTION
    template: PromptTemplate = Field(default_factory=PromptTemplate)
    generation: GenerationOptions = Field(
        default_factory=lambda: GenerationOptions(
            max_new_tokens=64, do_sample=True, temperature=0.8, top_p=0.9, repetition_penalty=1.2
        )
    )
    reply_filter: ReplyFilterRules | None = Field(
        None, description="what this persona's replies may not say (serving adds the fleet's rules)")

PERSONA_FILE = "persona.json"
