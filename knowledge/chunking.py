"""Token-aware, heading-aware chunking.

Chunks never cross a Markdown heading, so each one is about one topic; the heading
path ("Title > Section > Subsection") is kept with the chunk and prefixed to the
text that gets embedded, because a paragraph like "Check the coil voltage" only
means something together with the heading it sits under.

Sizes are counted in the embedding model's own tokens: a chunk longer than the
model's window would be silently truncated at embedding time.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from functools import lru_cache

from knowledge.corpus import Document

HEADING_RE = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
FENCE_RE = re.compile(r"^\s*(```|~~~)")
ITEM_RE = re.compile(r"^\s*([-*+]\s+|\d+[.)]\s+|\|)")
# Split after . ! ? when the next sentence starts like one ("e.g. the" stays whole).
SENTENCE_RE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\"'*`\[])")
PATH_SEP = " > "


@dataclass(frozen=True)
class Chunk:
    chunk_id: str
    document_id: str
    title: str
    heading_path: str
    text: str
    components: tuple[str, ...] = field(default_factory=tuple)
    tags: tuple[str, ...] = field(default_factory=tuple)

    @property
    def embed_text(self) -> str:
        return embed_text(self.heading_path, self.text)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["components"] = list(self.components)
        d["tags"] = list(self.tags)
        return d


def embed_text(heading_path: str, text: str) -> str:
    return f"{heading_path}\n{text}" if heading_path else text


@dataclass(frozen=True)
class _Unit:
    """A piece that is never split further unless it alone exceeds the budget."""

    text: str
    tokens: int
    new_line: bool  # joins the previous unit with a newline (new block/item) or a space (same paragraph)


@lru_cache(maxsize=4)
def load_tokenizer(model_path: str | None = None):
    from transformers import AutoTokenizer

    from knowledge.embedding import default_model_path

    return AutoTokenizer.from_pretrained(model_path or default_model_path(), local_files_only=True)


class Chunker:
    def __init__(self, tokenizer=None, max_tokens: int = 200, overlap_tokens: int = 40, model_max_tokens: int = 256):
        if not 0 <= overlap_tokens < max_tokens:
            raise ValueError(f"overlap_tokens ({overlap_tokens}) must be >= 0 and < max_tokens ({max_tokens})")
        self.tokenizer = tokenizer or load_tokenizer()
        self.max_tokens = max_tokens
        self.overlap_tokens = overlap_tokens
        self.model_max_tokens = model_max_tokens

    def count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    def chunk_document(self, doc: Document) -> list[Chunk]:
        chunks: list[Chunk] = []
        for path, body in split_sections(doc.text, doc.title):
            for text in self._chunk_section(path, body):
                chunks.append(
                    Chunk(
                        chunk_id=f"{doc.id}#{len(chunks):03d}",
                        document_id=doc.id,
                        title=doc.title,
                        heading_path=path,
                        text=text,
                        components=doc.components,
                        tags=doc.tags,
                    )
                )
        return chunks

    def _budget(self, heading_path: str) -> int:
        # The heading prefix and [CLS]/[SEP] share the model window with the body.
        room = self.model_max_tokens - 2 - self.count(heading_path + "\n")
        return max(16, min(self.max_tokens, room))

    def _chunk_section(self, heading_path: str, body: str) -> list[str]:
        budget = self._budget(heading_path)
        overlap = min(self.overlap_tokens, budget // 2)
        units = [u for unit in self._units(body) for u in self._fit(unit, budget)]
        chunks: list[list[_Unit]] = []
        current: list[_Unit] = []
        size = 0
        for unit in units:
            if current and size + unit.tokens > budget:
                chunks.append(current)
                current = self._overlap_tail(current, overlap)
                size = sum(u.tokens for u in current)
                while current and size + unit.tokens > budget:
                    size -= current.pop(0).tokens
            current.append(unit)
            size += unit.tokens
        if current:
            chunks.append(current)
        return [_join(c) for c in chunks]

    def _units(self, body: str) -> list[_Unit]:
        units: list[_Unit] = []
        for block in re.split(r"\n\s*\n", body):
            block = block.strip("\n")
            if not block.strip():
                continue
            lines = block.split("\n")
            if any(ITEM_RE.match(line) for line in lines) or FENCE_RE.match(lines[0]):
                # List items and table rows are units of their own; continuation lines stay attached.
                items: list[str] = []
                for line in lines:
                    if ITEM_RE.match(line) or not items:
                        items.append(line.rstrip())
                    else:
                        items[-1] += "\n" + line.rstrip()
                units.extend(_Unit(i, self.count(i), True) for i in items)
            else:
                paragraph = " ".join(line.strip() for line in lines)
                for i, sentence in enumerate(SENTENCE_RE.split(paragraph)):
                    units.append(_Unit(sentence, self.count(sentence), i == 0))
        return units

    def _fit(self, unit: _Unit, budget: int) -> list[_Unit]:
        """Split a unit longer than the budget: by sentences first, then by token windows."""
        if unit.tokens <= budget:
            return [unit]
        sentences = SENTENCE_RE.split(unit.text)
        if len(sentences) > 1:
            return [
                p
                for i, s in enumerate(sentences)
                for p in self._fit(_Unit(s, self.count(s), unit.new_line and i == 0), budget)
            ]
        pieces = []
        for i, (start, end) in enumerate(self._token_windows(unit.text, budget)):
            text = unit.text[start:end].strip()
            pieces.append(_Unit(text, self.count(text), unit.new_line and i == 0))
        return pieces

    def _token_windows(self, text: str, size: int) -> list[tuple[int, int]]:
        offsets = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)[
            "offset_mapping"
        ]
        windows, i = [], 0
        while i < len(offsets):
            j = min(i + size, len(offsets))
            # Do not end inside a word: back off to the last token that starts one.
            while j < len(offsets) and j > i + 1 and not _starts_word(text, offsets[j][0]):
                j -= 1
            windows.append((offsets[i][0], offsets[j - 1][1]))
            i = j
        return windows

    def _overlap_tail(self, units: list[_Unit], overlap: int) -> list[_Unit]:
        if overlap <= 0:
            return []
        tail: list[_Unit] = []
        size = 0
        for unit in reversed(units):
            if size + unit.tokens > overlap:
                break
            tail.insert(0, unit)
            size += unit.tokens
        if tail:
            return tail
        # The last unit alone is longer than the overlap: carry its final words.
        last = units[-1]
        offsets = self.tokenizer(last.text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)[
            "offset_mapping"
        ]
        k = max(0, len(offsets) - overlap)
        while k < len(offsets) and not _starts_word(last.text, offsets[k][0]):
            k += 1
        if k >= len(offsets):
            return []
        text = last.text[offsets[k][0] :]
        return [_Unit(text, self.count(text), True)]


def split_sections(text: str, title: str) -> list[tuple[str, str]]:
    """(heading path, body) per heading; headings inside code fences are not headings."""
    sections: list[tuple[str, str]] = []
    stack: list[tuple[int, str]] = []
    lines: list[str] = []
    in_fence = False

    def flush():
        body = "\n".join(lines).strip()
        if body:
            names = [title] + [h for _, h in stack if h.strip().lower() != title.strip().lower()]
            sections.append((PATH_SEP.join(names), body))
        lines.clear()

    for line in text.splitlines():
        if FENCE_RE.match(line):
            in_fence = not in_fence
        match = None if in_fence else HEADING_RE.match(line)
        if match:
            flush()
            level = len(match.group(1))
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, match.group(2).strip()))
        else:
            lines.append(line)
    flush()
    return sections


def _starts_word(text: str, char_index: int) -> bool:
    return char_index == 0 or not text[char_index - 1].isalnum()


def _join(units: list[_Unit]) -> str:
    out = units[0].text
    for unit in units[1:]:
        out += ("\n" if unit.new_line else " ") + unit.text
    return out
