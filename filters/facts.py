"""Facts about one person: short strings (a date of birth, a street address, an employer) masked only where the
person is named.

A fact is a term (`filters.automaton`, reader mode) that is active only when the person is named:
- at decode time (`filters.vllm_plugin`, `quell_facts`): the request carries each target's names and facts; the
  plugin reads the request's prompt (the conversation as the model sees it) once, when the request arrives, and adds
  the facts of every target it names to the request's mask terms. A prompt that does not name the person leaves its
  facts free at decode time (the names themselves are usually masked terms, so the answer cannot name them either);
- in the per-choice text backstop (`filters.surface.SurfaceLayer.armed_by`): the same rule as the plugin, the facts of
  every target the request's prompt names are compiled in as that request's terms (streams and JSON alike);
- by concept: a target with a `concept` on a policy that screens input is armed too when the input screen's semantic
  layers recognise the person in the prompt without their name (any action, `flag` included); the gateway sends
  those facts inline as `quell_armed_facts` and arms them in its backstop;
- in reports (`SurfaceLayer.fact_decisions`: moderations, the admin test route): a fact is a detection when the
  prompt or the answer names the person (any of the target's terms, as the terms match).

Written forms (`fact_forms`): terms already ignore separators and case ("12 Baker St." and "12 baker st" alike). A
date given as ISO `YYYY-MM-DD` also stands for its common written forms: day-month-year and month-day-year in
digits, English month names and their three-letter abbreviations, with and without ordinal suffixes ("March 12th,
1985"). A street address ending in a street type (Street, Avenue, Road, ...) also stands for its abbreviation and the
other way round. Other languages' month names are not generated (list them as further facts).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

ARMED_FACTS_KEY = "quell_armed_facts"
"""The plugin's `vllm_xargs` key for fact forms armed whatever the prompt names: the gateway sends the facts of a
person its input screen recognised by their concept (`SurfaceLayer.armed_fact_forms`)."""
MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
          "november", "december")  # fmt: skip
STREET_TYPES = {"street": "st", "avenue": "ave", "road": "rd", "boulevard": "blvd", "drive": "dr", "lane": "ln",
                "court": "ct", "place": "pl", "square": "sq", "terrace": "ter"}  # fmt: skip
_ISO_DATE = re.compile(r"^\s*(\d{4})-(\d{2})-(\d{2})\s*$")


def _ordinal(day: int) -> str:
    suffix = "th" if 11 <= day % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"


def date_forms(date: dt.date) -> tuple[str, ...]:
    """Common written forms of a date (separators do not matter to terms, so one form per digit/word order)."""
    d, m, y = date.day, date.month, date.year
    forms = [f"{y:04d}-{m:02d}-{d:02d}", f"{d:02d}/{m:02d}/{y}", f"{m:02d}/{d:02d}/{y}", f"{d}/{m}/{y}",
             f"{m}/{d}/{y}"]  # fmt: skip
    for month in (MONTHS[m - 1], MONTHS[m - 1][:3]):
        for day in (str(d), _ordinal(d)):
            forms += [f"{day} {month} {y}", f"{month} {day} {y}", f"{day} of {month} {y}"]
    return tuple(dict.fromkeys(forms))


def fact_forms(fact: str) -> tuple[str, ...]:
    """The terms a fact stands for (module docstring); ValueError for an ISO-looking date that is not a date."""
    found = _ISO_DATE.match(fact)
    if found:
        try:
            date = dt.date(int(found[1]), int(found[2]), int(found[3]))
        except ValueError as exc:
            raise ValueError(f"fact {fact!r} looks like a YYYY-MM-DD date but is not one: {exc}") from None
        return date_forms(date)
    forms = [fact]
    words = fact.rstrip(". ").split()
    if len(words) >= 2:
        last = words[-1].lower()
        for full, short in STREET_TYPES.items():
            if last == full:
                forms.append(" ".join([*words[:-1], short]))
            elif last == short:
                forms.append(" ".join([*words[:-1], full]))
    return tuple(forms)


@dataclass(frozen=True)
class FactGroup:
    """One target's names and the written forms of its facts."""

    target_id: str
    names: tuple[str, ...]
    facts: tuple[str, ...]
    """Every written form of every fact."""

    @classmethod
    def of(cls, target_id: str, names: list[str], facts: list[str]) -> FactGroup:
        forms = [form for fact in facts for form in fact_forms(fact)]
        return cls(target_id, tuple(names), tuple(dict.fromkeys(forms)))
