"""Embedding, the versioned index store, retrieval, and the Ray Data build job."""

from __future__ import annotations

import numpy as np
import pytest

from knowledge.chunking import embed_text
from knowledge.corpus import load_documents
from knowledge.embedding import get_embedder
from knowledge.index_store import INDEX_FORMAT, IndexFormatError, IndexNotFound, IndexStore
from knowledge.retrieval import IndexSearcher, diagnosis_bias
from knowledge.sections import document_sections
from tests.test_knowledge_sample_corpus import write_sample_corpus


@pytest.fixture(scope="module")
def embedder():
    return get_embedder()


def _rows(n: int, components=("valve",)) -> list[dict]:
    return [
        {
            "chunk_id": f"d{i}#000",
            "document_id": f"d{i}",
            "title": f"Doc {i}",
            "heading_path": f"Doc {i}",
            "text": f"text {i}",
            "components": list(components),
            "tags": ["t"],
        }
        for i in range(n)
    ]


def _blocks(n: int) -> list[dict]:
    """One section of one paragraph per document ``d{i}``, heading as the chunk's."""
    return [
        {
            "section_id": f"d{i}#",
            "document_id": f"d{i}",
            "title": f"Doc {i}",
            "heading_path": f"Doc {i}",
            "anchor": "",
            "section_position": 0,
            "position": 0,
            "kind": "paragraph",
            "text": f"text {i}",
            "components": ["valve"],
            "tags": ["t"],
        }
        for i in range(n)
    ]


def _publish(store, n: int, seed: int = 0, fingerprint: str = "a", **kwargs):
    return store.publish(
        _unit(n, seed=seed),
        _rows(n),
        blocks=_blocks(n),
        block_vectors=_unit(n, seed=seed + 100),
        model="m",
        corpus_fingerprint=fingerprint * 64,
        **kwargs,
    )


def _unit(n: int, dims: int = 8, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, dims)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_embeddings_are_normalised_float32(embedder):
    vecs = embedder.embed(["valve shifts late", "pump leaks internally"])
    assert vecs.dtype == np.float32 and vecs.shape == (2, 384)
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    with pytest.raises(TypeError):
        embedder.embed("not a list")


def test_publish_load_and_versions(tmp_path):
    store = IndexStore(tmp_path / "store")
    with pytest.raises(IndexNotFound, match="build_index"):
        store.load()
    first = _publish(store, 5)
    second = _publish(store, 6, seed=1, fingerprint="b")
    assert store.list_versions() == [first["version"], second["version"]]
    assert store.latest_version() == second["version"]
    loaded = store.load("latest")
    assert loaded.index.ntotal == 6 and loaded.manifest["n_chunks"] == 6 and loaded.manifest["dims"] == 8
    assert list(loaded.chunks["components"][0]) == ["valve"]
    assert store.load(first["version"]).index.ntotal == 5
    store.set_latest(first["version"])
    assert store.load().version == first["version"]
    with pytest.raises(IndexNotFound, match="not found"):
        store.load("v-missing")


def test_sections_and_their_block_vectors_travel_with_the_index(tmp_path):
    blocks = _blocks(3)
    blocks.insert(1, {**blocks[0], "position": 1, "kind": "list", "text": "- second block of doc zero"})
    block_vecs = _unit(4, seed=7)
    store = IndexStore(tmp_path)
    with pytest.raises(ValueError, match="one 8-dim vector per block"):
        store.publish(
            _unit(3), _rows(3), blocks=blocks, block_vectors=block_vecs[:3], model="m", corpus_fingerprint="e" * 64
        )
    manifest = store.publish(
        _unit(3), _rows(3), blocks=blocks, block_vectors=block_vecs, model="m", corpus_fingerprint="e" * 64
    )
    assert manifest["format"] == INDEX_FORMAT and manifest["n_blocks"] == 4
    searcher = IndexSearcher(store.load())
    ((section, vectors),) = searcher.sections("d0")
    assert [(b.kind, b.text) for b in section.blocks] == [
        ("paragraph", "text 0"),
        ("list", "- second block of doc zero"),
    ]
    assert np.allclose(vectors, block_vecs[:2]) and section.section_id == "d0#" and section.kind == "overview"
    assert np.allclose(searcher.sections("d2")[0][1], block_vecs[3:])
    assert {h.document_id: h.section_id for h in searcher.search(_unit(3)[0], k=3)} == {
        f"d{i}": f"d{i}#" for i in range(3)
    }
    assert searcher.sections("missing") == []
    assert searcher.term_scores("second block")["d0#"] > 0


def test_an_index_of_the_older_format_is_refused_with_the_reason(tmp_path):
    import json

    store = IndexStore(tmp_path)
    old = _publish(store, 3)
    manifest_path = tmp_path / old["version"] / "manifest.json"
    manifest_path.write_text(json.dumps({**old, "format": 2}))  # as format 2 wrote it: sentences, no sections
    with pytest.raises(IndexFormatError, match="format 2.*Rebuild it with `python -m pipelines.build_index`"):
        store.load()
    assert issubclass(IndexFormatError, IndexNotFound)  # serving treats it as "no usable index"


def test_large_corpora_get_an_ivf_index(tmp_path):
    store = IndexStore(tmp_path)
    vecs = _unit(400, dims=16)
    manifest = store.publish(
        vecs,
        _rows(400),
        blocks=[],
        block_vectors=np.zeros((0, 16)),
        model="m",
        corpus_fingerprint="c" * 64,
        ivf_threshold=100,
    )
    assert manifest["index_type"] == "IndexIVFFlat"
    searcher = IndexSearcher(store.load())
    hit = searcher.search(vecs[123], k=1)[0]
    assert hit.document_id == "d123" and hit.score == pytest.approx(1.0, abs=1e-4)


def test_a_failed_publish_leaves_latest_and_versions_unchanged(tmp_path, monkeypatch):
    store = IndexStore(tmp_path)
    good = _publish(store, 3)
    real_pipe = store.fs.pipe_file

    def disk_full_on_metadata(path, data, **kw):  # injected I/O failure after index.faiss was written
        if path.endswith("chunks.parquet"):
            raise OSError(28, "No space left on device")
        return real_pipe(path, data, **kw)

    monkeypatch.setattr(store.fs, "pipe_file", disk_full_on_metadata)
    with pytest.raises(OSError, match="No space"):
        _publish(store, 4, fingerprint="b")
    assert store.latest_version() == good["version"]
    assert store.list_versions() == [good["version"]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["LATEST", good["version"]]  # temp folder removed
    assert store.load().index.ntotal == 3


def test_filters_one_hit_per_document_and_preference(tmp_path):
    vecs = _unit(6, dims=8)
    rows = _rows(6)
    for i, row in enumerate(rows):
        row["document_id"] = f"doc{i // 2}"  # two chunks per document
        row["components"] = ["pump"] if i >= 4 else ["valve"]
    store = IndexStore(tmp_path)
    store.publish(vecs, rows, blocks=[], block_vectors=np.zeros((0, 8)), model="m", corpus_fingerprint="d" * 64)
    searcher = IndexSearcher(store.load())
    hits = searcher.search(vecs[0], k=5)
    assert [h.document_id for h in hits].count("doc0") == 1 and len(hits) == 3
    assert hits[0].chunk_id == "d0#000"
    pump_only = searcher.search(vecs[0], k=5, components=["pump"])
    assert {h.document_id for h in pump_only} == {"doc2"}
    assert searcher.search(vecs[0], k=5, tags=["nope"]) == []
    plain = {h.document_id: h.score for h in searcher.search(vecs[0], k=3)}
    preferred = {h.document_id: h.score for h in searcher.search(vecs[0], k=3, prefer_components=["pump"])}
    assert preferred["doc2"] == pytest.approx(plain["doc2"] + 0.05, abs=1e-5)
    assert preferred["doc0"] == pytest.approx(plain["doc0"], abs=1e-6)


def test_diagnosis_bias_words_and_components():
    words, components = diagnosis_bias(
        {"affected_components": ["valve"], "anomaly_type": "valve_lag", "severity": "critical"}
    )
    assert components == ["valve"] and "valve lag" in words
    assert diagnosis_bias(None) == ("", [])


@pytest.mark.ray
def test_build_index_with_ray_data_then_query(ray_cluster, tmp_path, embedder):
    from pipelines.build_index import build_index

    docs = write_sample_corpus(tmp_path / "kb")
    store_uri = tmp_path / "indexes"
    manifest = build_index([docs], store_uri, max_tokens=80, overlap_tokens=16, embed_actors=1, batch_size=8)
    assert manifest["n_documents"] == 4 and manifest["n_chunks"] >= 8
    assert manifest["model"] == "all-MiniLM-L6-v2" and manifest["dims"] == 384
    assert manifest["chunks_per_s"] > 0

    loaded = IndexStore(store_uri).load()
    assert manifest["n_blocks"] == len(loaded.block_vectors) == len(loaded.blocks) > manifest["n_documents"]
    searcher = IndexSearcher(loaded)
    for document_id in searcher.documents():  # split and embedded in the Ray Data job, as in process
        doc = next(d for d in load_documents([docs]) if d.id == document_id)
        expected = document_sections(doc.id, doc.title, doc.text, doc.components, doc.tags)
        got = searcher.sections(document_id)
        assert [s for s, _ in got] == expected, document_id
        for section, vectors in got:
            texts = [embed_text(section.heading_path, b.text) for b in section.blocks]
            assert np.allclose(vectors, embedder.embed(texts), atol=1e-4), section.section_id
    query = embedder.embed(["the oil keeps getting hotter during the shift"])[0]
    hits = searcher.search(query, k=3)
    assert hits[0].document_id == "cooler-fouling", [h.document_id for h in hits]
    assert hits[0].heading_path.startswith("Cooler fouling")
    valve = searcher.search(
        embedder.embed(["how do I measure the coil voltage at the connector"])[0], k=1, components=["valve"]
    )
    assert valve[0].document_id == "valve-lag" and "Repair" in valve[0].heading_path

    # A later build that fails (a broken document) publishes nothing.
    (docs / "zz-broken.md").write_text("---\nid: [oops\n---\ntext\n")
    with pytest.raises(Exception, match="zz-broken.md"):
        build_index([docs], store_uri, embed_actors=1)
    store = IndexStore(store_uri)
    assert store.latest_version() == manifest["version"] and store.list_versions() == [manifest["version"]]


@pytest.mark.ray
def test_ensure_index_builds_only_when_there_is_no_usable_index(ray_cluster, tmp_path):
    import json

    from configs.settings import Settings
    from pipelines.build_index import ensure_index

    settings = Settings(
        index_store_uri=str(tmp_path / "indexes"), knowledge_dirs=[write_sample_corpus(tmp_path / "kb")]
    )
    built = ensure_index(settings, embed_actors=1, batch_size=16)
    assert built is not None and built["format"] == INDEX_FORMAT and built["n_documents"] == 4
    store = IndexStore(settings.index_store_uri)
    assert store.latest_version() == built["version"]
    assert ensure_index(settings, embed_actors=1) is None  # present: nothing built
    assert store.list_versions() == [built["version"]]

    path = tmp_path / "indexes" / built["version"] / "manifest.json"
    path.write_text(json.dumps({**built, "format": 2}))  # an index from before section blocks
    rebuilt = ensure_index(settings, embed_actors=1, batch_size=16)
    assert rebuilt is not None and rebuilt["version"] != built["version"]
    assert store.load().version == rebuilt["version"]
