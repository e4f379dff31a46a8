"""Reading documents and cutting them into chunks."""

from __future__ import annotations

import pytest

from knowledge.chunking import Chunker, split_sections
from knowledge.corpus import CorpusError, Document, load_documents, read_document
from tests.test_knowledge_sample_corpus import write_sample_corpus


@pytest.fixture(scope="module")
def chunker() -> Chunker:
    return Chunker(max_tokens=60, overlap_tokens=15)


def _minimal_pdf(text: str) -> bytes:
    """A one-page PDF with ``text`` in Helvetica, with a correct xref table."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for i, obj in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + obj + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def test_markdown_text_and_pdf_documents(tmp_path):
    folder = write_sample_corpus(tmp_path / "kb")
    (folder / "seal-kit.pdf").write_bytes(_minimal_pdf("Replace both rod seals with the cylinder retracted."))
    docs = {d.id: d for d in load_documents([folder])}

    valve = docs["valve-lag"]
    assert (valve.title, valve.components, valve.tags) == ("Valve lag", ("valve",), ("failure-mode", "valve-lag"))
    assert "## Symptoms" in valve.text and "---" not in valve.text.splitlines()[0]
    txt = docs["accumulator"]
    assert txt.title == "Accumulator precharge check" and txt.text.startswith("Discharge the hydraulic side")
    assert "rod seals" in docs["seal-kit"].text


def test_bad_front_matter_names_the_file(tmp_path):
    bad = tmp_path / "broken.md"
    bad.write_text("---\nid: [unclosed\ntitle: x\n---\nbody\n")
    with pytest.raises(CorpusError, match="broken.md"):
        read_document(bad)
    missing = tmp_path / "no-title.md"
    missing.write_text("---\nid: x\n---\nbody\n")
    with pytest.raises(CorpusError, match=r"no-title\.md.*missing title"):
        read_document(missing)


def test_duplicate_ids_are_refused(tmp_path):
    for name in ("a.md", "b.md"):
        (tmp_path / name).write_text("---\nid: same\ntitle: T\n---\nText here.\n")
    with pytest.raises(CorpusError, match="duplicate document id 'same'"):
        load_documents([tmp_path])


def test_sections_follow_headings_and_ignore_code_fences():
    text = "Intro line.\n\n## A\n\nalpha\n\n### A1\n\nsub\n\n```\n# not a heading\n```\n\n## B\n\nbeta\n"
    sections = split_sections(text, "Doc")
    assert [path for path, _ in sections] == ["Doc", "Doc > A", "Doc > A > A1", "Doc > B"]
    assert "# not a heading" in sections[2][1]


def _long_doc() -> Document:
    sentences = " ".join(f"Step {i}: tighten the fitting number {i} to the specified torque." for i in range(40))
    text = f"## Symptoms\n\nThe valve shifts late.\n\n## Repair\n\n{sentences}\n\n## Safety\n\nDepressurise first."
    return Document(id="doc", title="Valve lag", text=text, path="doc.md", components=("valve",), tags=("x",))


def test_chunks_never_cross_headings_and_keep_the_path(chunker):
    chunks = chunker.chunk_document(_long_doc())
    paths = [c.heading_path for c in chunks]
    assert paths[0] == "Valve lag > Symptoms" and paths[-1] == "Valve lag > Safety"
    assert paths.count("Valve lag > Repair") >= 3
    for c in chunks:
        assert c.embed_text.startswith(c.heading_path + "\n")
        assert c.components == ("valve",) and c.document_id == "doc"
        if c.heading_path.endswith("Repair"):
            assert "shifts late" not in c.text and "Depressurise" not in c.text
    assert [c.chunk_id for c in chunks] == [f"doc#{i:03d}" for i in range(len(chunks))]


def test_token_limit_and_overlap(chunker):
    chunks = [c for c in chunker.chunk_document(_long_doc()) if c.heading_path.endswith("Repair")]
    for c in chunks:
        assert chunker.count(c.text) <= 60
        assert chunker.count(c.embed_text) + 2 <= chunker.model_max_tokens
    for previous, current in zip(chunks, chunks[1:]):
        first_sentence = current.text.split(". ")[0]
        assert first_sentence in previous.text, "consecutive chunks should share overlapping text"
        assert current.text != previous.text


def test_a_single_overlong_sentence_is_split_by_tokens(chunker):
    words = " ".join(f"word{i}" for i in range(300))
    chunks = chunker.chunk_document(Document(id="w", title="T", text=words, path="w.txt"))
    assert len(chunks) > 3
    assert all(chunker.count(c.text) <= 60 for c in chunks)
    assert "word0" in chunks[0].text and "word299" in chunks[-1].text
    assert all(not c.text.startswith("##") for c in chunks)


def test_overlap_must_be_smaller_than_chunk():
    with pytest.raises(ValueError, match="overlap_tokens"):
        Chunker(max_tokens=40, overlap_tokens=40)
