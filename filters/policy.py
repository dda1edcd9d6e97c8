"""The policy schema operators write (one YAML file per policy), validated by pydantic.

See DESIGN.md "Policies". A policy's version is the sha256 of its canonical form, so two files that say the same
thing have the same version whatever their formatting, and every decision can name `policy_id@version`.
"""

from __future__ import annotations

import hashlib
import json
from enum import StrEnum
from functools import cached_property
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from filters.normalize import word_chars

ID_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
MIN_TERM_WORD_CHARS = 3
"""Shorter terms match inside too much ordinary text ("AI", "X") unless the operator says `allow_short: true`."""


class SurfaceAction(StrEnum):
    MASK = "mask"  # decode time: the model can never emit it (text fallback: redact)
    REDACT = "redact"  # replace the matched span
    STOP = "stop"  # cut the response before the match
    REFUSE = "refuse"  # replace the whole response by the policy's refusal


class ConceptAction(StrEnum):
    REDACT = "redact"
    STOP = "stop"
    REFUSE = "refuse"
    FLAG = "flag"  # annotate and audit only


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Concept(_Strict):
    description: str = Field(min_length=1)
    examples: list[str] = Field(default_factory=list)
    counterexamples: list[str] = Field(default_factory=list)


class Target(_Strict):
    id: str = Field(pattern=ID_PATTERN)
    terms: list[str] = Field(default_factory=list)
    allow_short: bool = False
    concept: Concept | None = None
    on_surface: SurfaceAction = SurfaceAction.MASK
    on_concept: ConceptAction = ConceptAction.REFUSE

    @field_validator("terms")
    @classmethod
    def _terms_can_match(cls, terms: list[str]) -> list[str]:
        for term in terms:
            if not word_chars(term):
                raise ValueError(f"term {term!r} has no letters or digits once normalised, so it can never match")
        return terms

    @model_validator(mode="after")
    def _short_terms_need_consent(self) -> Target:
        if not self.allow_short:
            short = [t for t in self.terms if len(word_chars(t)) < MIN_TERM_WORD_CHARS]
            if short:
                raise ValueError(
                    f"terms {short} have fewer than {MIN_TERM_WORD_CHARS} letters or digits and would match inside "
                    "ordinary text; set allow_short: true on this target if that is intended"
                )
        if not self.terms and self.concept is None:
            raise ValueError("a target needs terms, a concept, or both")
        return self


class Policy(_Strict):
    id: str = Field(pattern=ID_PATTERN)
    description: str = ""
    default: bool = False
    applies_to: list[Literal["input", "output"]] = Field(default_factory=lambda: ["output"], min_length=1)
    refusal: str = Field(default="Sorry, I can't help with that.", min_length=1)
    targets: list[Target] = Field(min_length=1)

    @field_validator("targets")
    @classmethod
    def _unique_target_ids(cls, targets: list[Target]) -> list[Target]:
        seen: set[str] = set()
        for target in targets:
            if target.id in seen:
                raise ValueError(f"target id {target.id!r} appears twice")
            seen.add(target.id)
        return targets

    @cached_property
    def version(self) -> str:
        """sha256 of the canonical form (12 hex digits shown; the full digest is `digest`)."""
        return self.digest[:12]

    @cached_property
    def digest(self) -> str:
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode()).hexdigest()

    @property
    def ref(self) -> str:
        """`id@version`, the name every decision carries."""
        return f"{self.id}@{self.version}"
