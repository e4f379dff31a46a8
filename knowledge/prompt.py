"""The assistant prompt, built from ``configs/prompts/maintenance_assistant.txt``.

The template has a ``[system]`` and a ``[user]`` part; the user part takes
``{question}``, ``{diagnosis}`` (empty without one) and ``{passages}``: the sections
``knowledge.grounding`` chose, whole, numbered ``[n]`` the same way as the sources
list returned to the client, so citations can be checked (``knowledge.answer``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

_SYSTEM, _USER = "[system]", "[user]"


@dataclass(frozen=True)
class Prompt:
    system: str
    user: str

    def as_text(self) -> str:
        """Single-string form for backends without chat roles."""
        return f"{self.system}\n\n{self.user}"


@lru_cache(maxsize=8)
def load_template(path: str | Path) -> tuple[str, str]:
    text = Path(path).read_text(encoding="utf-8")
    if _SYSTEM not in text or _USER not in text:
        raise ValueError(f"prompt template {path} needs a '{_SYSTEM}' and a '{_USER}' section")
    system, user = text.split(_USER, 1)
    return system.replace(_SYSTEM, "", 1).strip(), user.strip()


def format_passages(passages: Sequence[dict]) -> str:
    return "\n\n".join(
        f"[{n}] {p.get('title', '')} — {p.get('heading_path', '')} ({p.get('role', 'section')})\n{p.get('text', '')}"
        for n, p in enumerate(passages, start=1)
    )


def format_diagnosis(grounding: dict) -> str:
    focus = grounding.get("focus")
    if not focus:
        return ""
    fields = ", ".join(f"{k}: {v}" for k, v in focus.items() if v not in (None, "", [], {}))
    return f"System diagnosis (latest, from the condition-monitoring models): {grounding.get('lead')} ({fields})\n\n"


def build_prompt(template_path: str | Path, question: str, grounding: dict) -> Prompt:
    """``grounding`` is ``knowledge.grounding.Grounding.to_dict()``."""
    system, user = load_template(str(template_path))
    return Prompt(
        system=system,
        user=user.format(
            question=question.strip(),
            diagnosis=format_diagnosis(grounding),
            passages=format_passages(grounding.get("passages") or []),
        ),
    )
