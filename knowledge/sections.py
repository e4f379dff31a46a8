"""Documents as sections of whole blocks: the units an answer is made of.

A *section* is the text under one heading (``chunking.split_sections``), with its
heading path and an anchor a reader can open. Its body is split into *blocks*
that are never cut: a paragraph, a whole list (numbered or bulleted, continuation
lines included), a whole table, a code fence. Answers are composed of blocks, so a
procedure keeps all its steps in order and a table keeps all its rows.

Each section has a kind, from its heading and its blocks:

* ``safety``: the document's safety notes;
* ``procedure``: steps to follow (an ordered list that is not a list of causes,
  or a heading that says procedure);
* ``overview``: the text before the first heading, which describes the document;
* ``explanation``: everything else.

A *meta-sentence* talks about the document rather than the equipment ("This
document covers…", "It lists…"); it is never part of an answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from knowledge.chunking import FENCE_RE, PATH_SEP, SENTENCE_RE, split_sections

LIST_ITEM_RE = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+")
ORDERED_ITEM_RE = re.compile(r"^\s*\d+[.)]\s+")
TABLE_ROW_RE = re.compile(r"^\s*\|")
SAFETY_HEADING_RE = re.compile(r"\bsafety\b", re.IGNORECASE)
PROCEDURE_HEADING_RE = re.compile(r"\b(procedure|steps|how to)\b", re.IGNORECASE)
NOT_STEPS_HEADING_RE = re.compile(r"^(causes|two possible reasons|typical|symptoms|definitions)\b", re.IGNORECASE)
META_RE = re.compile(
    r"^(this|the present) (document|guide|note|page|section|chapter|article)\b"
    r"|^(it|this document|this guide) (lists|covers|describes|explains|gives|summarises|summarizes|contains|"
    r"shows|outlines|collects)\b"
    r"|^(the )?(following|sections below|next sections?)\b.*\b(describe|cover|list|explain)"
    r"|\b(is|are) (described|covered|listed|explained) (below|in the (following|next) sections?)\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Block:
    kind: str  # paragraph | list | table | code
    text: str


@dataclass(frozen=True)
class Section:
    section_id: str  # "<document_id>#<anchor>"; the overview's anchor is ""
    document_id: str
    title: str
    heading_path: str
    anchor: str
    position: int  # order within the document
    blocks: tuple[Block, ...]
    components: tuple[str, ...] = field(default_factory=tuple)
    tags: tuple[str, ...] = field(default_factory=tuple)

    @property
    def heading(self) -> str:
        return self.heading_path.split(PATH_SEP)[-1]

    @property
    def kind(self) -> str:
        return section_kind(self.heading_path, self.title, self.blocks)

    @property
    def text(self) -> str:
        return "\n\n".join(b.text for b in self.blocks)


def slug(heading: str) -> str:
    """GitHub's anchor rule: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return re.sub(r" ", "-", text)


def document_sections(document_id: str, title: str, text: str, components=(), tags=()) -> list[Section]:
    """The sections of one document, in order, each with its blocks (meta-sentences removed)."""
    sections: list[Section] = []
    seen: dict[str, int] = {}
    for position, (path, body) in enumerate(split_sections(text, title)):
        anchor = "" if path == title else slug(path.split(PATH_SEP)[-1])
        if anchor:  # repeated headings get -1, -2, … as on GitHub
            count = seen.get(anchor, 0)
            seen[anchor] = count + 1
            anchor = f"{anchor}-{count}" if count else anchor
        blocks = tuple(b for b in (_without_meta(b) for b in split_blocks(body)) if b is not None)
        if not blocks:
            continue
        sections.append(
            Section(
                section_id=f"{document_id}#{anchor}",
                document_id=document_id,
                title=title,
                heading_path=path,
                anchor=anchor,
                position=position,
                blocks=blocks,
                components=tuple(components),
                tags=tuple(tags),
            )
        )
    return sections


def split_blocks(body: str) -> list[Block]:
    """Paragraphs, whole lists, whole tables and code fences, in order."""
    blocks: list[Block] = []
    lines: list[str] = []
    kind: str | None = None

    def flush():
        nonlocal kind
        text = "\n".join(lines).strip("\n")
        if text.strip():
            blocks.append(Block(kind or "paragraph", text if kind in ("list", "table", "code") else _paragraph(text)))
        lines.clear()
        kind = None

    for line in body.splitlines():
        if kind == "code":
            lines.append(line)
            if FENCE_RE.match(line):
                flush()
            continue
        if FENCE_RE.match(line):
            flush()
            kind = "code"
            lines.append(line)
            continue
        if not line.strip():
            if kind != "list":  # a blank line ends a paragraph or table; a list may go on after it
                flush()
            else:
                lines.append(line)
            continue
        if TABLE_ROW_RE.match(line):
            if kind != "table":
                flush()
                kind = "table"
            lines.append(line.rstrip())
        elif LIST_ITEM_RE.match(line):
            if kind != "list":
                flush()
                kind = "list"
            lines.append(line.rstrip())
        elif kind == "list" and (line.startswith((" ", "\t")) and lines and lines[-1].strip()):
            lines.append(line.rstrip())  # a continuation line of the item above
        else:
            if kind in ("list", "table"):
                flush()
            kind = "paragraph"
            lines.append(line.strip())
    flush()
    return [Block(b.kind, b.text.strip("\n")) for b in blocks]


def section_kind(heading_path: str, title: str, blocks) -> str:
    heading = heading_path.split(PATH_SEP)[-1]
    if heading_path == title:
        return "overview"
    if SAFETY_HEADING_RE.search(heading) and not PROCEDURE_HEADING_RE.search(heading):
        return "safety"
    if PROCEDURE_HEADING_RE.search(heading):
        return "procedure"
    ordered = any(b.kind == "list" and ORDERED_ITEM_RE.match(b.text) for b in blocks)
    if ordered and not NOT_STEPS_HEADING_RE.match(heading):
        return "procedure"
    return "explanation"


def is_meta(sentence: str) -> bool:
    return bool(META_RE.search(sentence.strip().lstrip("*_ ")))


def _without_meta(block: Block) -> Block | None:
    if block.kind != "paragraph":
        return block
    kept = [s for s in SENTENCE_RE.split(block.text) if s.strip() and not is_meta(s)]
    return Block("paragraph", " ".join(kept)) if kept else None


def _paragraph(text: str) -> str:
    return " ".join(line.strip() for line in text.splitlines() if line.strip())
