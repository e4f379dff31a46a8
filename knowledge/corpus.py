"""Read maintenance documents from folders into ``Document`` records.

Supported formats:
  * ``.md``  Markdown with YAML front matter (``id``, ``title``, ``components``, ``tags``)
  * ``.txt`` plain text; id = file stem, title = first non-empty line
  * ``.pdf`` text extracted with pypdf; id = file stem, title = PDF metadata title or stem
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

SUPPORTED_SUFFIXES = (".md", ".markdown", ".txt", ".pdf")


class CorpusError(ValueError):
    """A document that cannot be read; the message always names the file."""


@dataclass(frozen=True)
class Document:
    id: str
    title: str
    text: str
    path: str
    components: tuple[str, ...] = field(default_factory=tuple)
    tags: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["components"] = list(self.components)
        d["tags"] = list(self.tags)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Document:
        return cls(
            id=d["id"],
            title=d["title"],
            text=d["text"],
            path=d["path"],
            components=tuple(d.get("components") or ()),
            tags=tuple(d.get("tags") or ()),
        )


def discover_files(dirs: Iterable[str | Path]) -> list[Path]:
    """All supported files under ``dirs`` (recursive), sorted for reproducible builds."""
    files: list[Path] = []
    for d in dirs:
        root = Path(d)
        if not root.is_dir():
            raise CorpusError(f"knowledge folder {root} does not exist or is not a folder")
        files.extend(
            p
            for p in root.rglob("*")
            if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES and not p.name.startswith(".")
        )
    return sorted(files)


def read_document(path: str | Path) -> Document:
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".md", ".markdown"):
        return _read_markdown(path)
    if suffix == ".txt":
        return _read_text(path)
    if suffix == ".pdf":
        return _read_pdf(path)
    raise CorpusError(f"{path}: unsupported document type {suffix!r}; expected one of {SUPPORTED_SUFFIXES}")


def load_documents(dirs: Iterable[str | Path]) -> list[Document]:
    docs = [read_document(p) for p in discover_files(dirs)]
    check_unique_ids(docs)
    return docs


def check_unique_ids(docs: Iterable[Document]) -> None:
    seen: dict[str, str] = {}
    for doc in docs:
        if doc.id in seen:
            raise CorpusError(f"duplicate document id {doc.id!r} in {seen[doc.id]} and {doc.path}")
        seen[doc.id] = doc.path


def fingerprint_files(files: Iterable[Path]) -> str:
    """A content hash of the corpus, so a manifest says exactly which texts it indexes."""
    h = hashlib.sha256()
    for p in sorted(Path(f) for f in files):
        h.update(p.name.encode())
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def _read_markdown(path: Path) -> Document:
    import frontmatter
    import yaml

    try:
        post = frontmatter.loads(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, ValueError) as exc:
        raise CorpusError(f"{path}: front matter is not valid YAML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise CorpusError(f"{path}: not UTF-8 text: {exc}") from exc
    meta = post.metadata
    missing = [key for key in ("id", "title") if not meta.get(key)]
    if missing:
        raise CorpusError(f"{path}: front matter is missing {', '.join(missing)} (needs id, title, components, tags)")
    return Document(
        id=str(meta["id"]).strip(),
        title=str(meta["title"]).strip(),
        text=post.content.strip(),
        path=str(path),
        components=_string_list(meta.get("components"), "components", path),
        tags=_string_list(meta.get("tags"), "tags", path),
    )


def _read_text(path: Path) -> Document:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError as exc:
        raise CorpusError(f"{path}: not UTF-8 text: {exc}") from exc
    if not text:
        raise CorpusError(f"{path}: empty document")
    title, _, body = text.partition("\n")
    return Document(id=path.stem, title=title.strip(), text=body.strip() or title.strip(), path=str(path))


def _read_pdf(path: Path) -> Document:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(str(path))
        text = "\n\n".join((page.extract_text() or "").strip() for page in reader.pages).strip()
        title = (reader.metadata.title if reader.metadata else None) or path.stem
    except (PdfReadError, OSError, ValueError) as exc:
        raise CorpusError(f"{path}: cannot read PDF: {exc}") from exc
    if not text:
        raise CorpusError(f"{path}: PDF has no extractable text (scanned image?)")
    return Document(id=path.stem, title=str(title).strip(), text=text, path=str(path))


def _string_list(value, key: str, path: Path) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value.strip(),)
    if isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value):
        return tuple(str(v).strip() for v in value)
    raise CorpusError(f"{path}: front matter {key!r} must be a list of strings, got {value!r}")
