"""Versioned FAISS indexes in the index store (a local folder, or any fsspec URI).

Layout under ``index_store_uri``::

    LATEST                      the serving version's name (one line)
    <version>/index.faiss       FAISS index over L2-normalised vectors (inner product)
    <version>/chunks.parquet    chunk metadata, row i <-> vector i (retrieval)
    <version>/blocks.parquet    the documents' sections as whole blocks (``knowledge.sections``), in
                                document order: section_id, heading_path, anchor, kind, text, ...
    <version>/block_vectors.npy one L2-normalised vector per block, row i <-> block i (format 3 on)
    <version>/manifest.json     format, version, created, model, dims, n_chunks, n_blocks, fingerprint, ...

Format 3 stores the sections an answer is composed of, block by block, with
vectors embedded at build time, so choosing the sections that answer a question
needs only dot products with the (already embedded) question. Older formats lack
them: loading one fails with ``IndexFormatError``, which says to rebuild
(``pipelines.build_index.ensure_index`` rebuilds it).

Publishing writes everything into a hidden temporary folder, renames it to its
version name, and only then replaces ``LATEST``; a build that fails at any point
before that leaves the serving index untouched. On object stores the rename is a
copy, but the ``LATEST`` write (a single object PUT) is still the commit point.
"""

from __future__ import annotations

import io
import json
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

INDEX_FORMAT = 3  # 3: the sections as whole blocks, with their vectors
MANIFEST_VERSION = INDEX_FORMAT
LATEST = "LATEST"
BLOCK_COLUMNS = ["section_id", "document_id", "title", "heading_path", "anchor", "kind", "text"]
IVF_THRESHOLD = 20_000  # below this an exact flat index is both faster to build and exact


class IndexNotFound(LookupError):
    pass


class IndexFormatError(IndexNotFound):
    """A published version in a format this release cannot serve (no usable index, rebuild it)."""


@dataclass
class LoadedIndex:
    version: str
    index: object  # faiss.Index
    chunks: object  # pandas.DataFrame, row i describes vector i
    manifest: dict
    blocks: object = None  # pandas.DataFrame, row i describes block vector i
    block_vectors: np.ndarray | None = None  # (n_blocks, dims)


def build_faiss_index(vectors: np.ndarray, ivf_threshold: int = IVF_THRESHOLD, nlist: int | None = None):
    """Flat inner-product index, or IVF (inner product) once the corpus is large."""
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dims = vectors.shape
    if n >= ivf_threshold:
        nlist = nlist or max(1, int(4 * np.sqrt(n)))
        nlist = min(nlist, n)  # k-means needs at least one point per list
        quantizer = faiss.IndexFlatIP(dims)
        index = faiss.IndexIVFFlat(quantizer, dims, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
        index.nprobe = min(nlist, max(8, nlist // 8))
    else:
        index = faiss.IndexFlatIP(dims)
    index.add(vectors)
    return index


class IndexStore:
    def __init__(self, uri: str | Path):
        import fsspec

        self.uri = str(uri)
        self.fs, self.root = fsspec.core.url_to_fs(self.uri)
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        self._local = "file" in protocols

    def _path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    # --- reading -------------------------------------------------------------
    def list_versions(self) -> list[str]:
        """Published versions, oldest first (names sort by creation time)."""
        if not self.fs.exists(self.root):
            return []
        names = []
        for entry in self.fs.ls(self.root, detail=True):
            name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
            if (
                entry["type"] == "directory"
                and not name.startswith(".")
                and self.fs.exists(self._path(name, "manifest.json"))
            ):
                names.append(name)
        return sorted(names)

    def latest_version(self) -> str | None:
        path = self._path(LATEST)
        if not self.fs.exists(path):
            return None
        return self.fs.cat_file(path).decode().strip() or None

    def resolve(self, version: str = "latest") -> str:
        if version in (None, "", "latest"):
            resolved = self.latest_version()
            if resolved is None:
                raise IndexNotFound(
                    f"no index has been published under {self.uri}; build one with `python -m pipelines.build_index`"
                )
            return resolved
        if not self.fs.exists(self._path(version, "manifest.json")):
            raise IndexNotFound(
                f"index version {version!r} not found under {self.uri}; available: {self.list_versions()}"
            )
        return version

    def manifest(self, version: str = "latest") -> dict:
        version = self.resolve(version)
        return json.loads(self.fs.cat_file(self._path(version, "manifest.json")))

    def load(self, version: str = "latest") -> LoadedIndex:
        import faiss
        import pandas as pd

        version = self.resolve(version)
        manifest = json.loads(self.fs.cat_file(self._path(version, "manifest.json")))
        found = manifest.get("format")
        if found != INDEX_FORMAT:
            raise IndexFormatError(
                f"index version {version} under {self.uri} has format {found}; this release serves format "
                f"{INDEX_FORMAT} (sections as blocks embedded at build time). Rebuild it with "
                f"`python -m pipelines.build_index` (or `--if-missing`, which rebuilds outdated indexes)"
            )
        raw = self.fs.cat_file(self._path(version, "index.faiss"))
        index = faiss.deserialize_index(np.frombuffer(raw, dtype=np.uint8))
        chunks = pd.read_parquet(io.BytesIO(self.fs.cat_file(self._path(version, "chunks.parquet"))))
        if index.ntotal != len(chunks) or index.ntotal != manifest["n_chunks"]:
            raise ValueError(
                f"index version {version} under {self.uri} is inconsistent: "
                f"{index.ntotal} vectors, {len(chunks)} chunk rows, manifest says {manifest['n_chunks']}"
            )
        blocks = pd.read_parquet(io.BytesIO(self.fs.cat_file(self._path(version, "blocks.parquet"))))
        block_vectors = np.load(
            io.BytesIO(self.fs.cat_file(self._path(version, "block_vectors.npy"))), allow_pickle=False
        )
        if (
            block_vectors.ndim != 2
            or len(block_vectors) != len(blocks)
            or len(blocks) != manifest["n_blocks"]
            or block_vectors.shape[1] != index.d
        ):
            raise ValueError(
                f"index version {version} under {self.uri} is inconsistent: block vectors "
                f"{block_vectors.shape} for {len(blocks)} blocks, manifest says "
                f"{manifest['n_blocks']} of {index.d} dims"
            )
        return LoadedIndex(
            version=version,
            index=index,
            chunks=chunks,
            manifest=manifest,
            blocks=blocks,
            block_vectors=np.ascontiguousarray(block_vectors, dtype=np.float32),
        )

    # --- writing -------------------------------------------------------------
    def publish(
        self,
        vectors: np.ndarray,
        chunks: Sequence[dict],
        *,
        blocks: Sequence[dict],
        block_vectors: np.ndarray,
        model: str,
        corpus_fingerprint: str,
        ivf_threshold: int = IVF_THRESHOLD,
        extra: dict | None = None,
    ) -> dict:
        """Write a new version and make it LATEST; returns its manifest.

        ``blocks`` are the sections' blocks in document order (``section_id``,
        ``document_id``, ``title``, ``heading_path``, ``anchor``, ``kind``, ``text``, ...),
        ``block_vectors`` one vector per block, in that order.
        """
        import faiss
        import pandas as pd

        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(chunks) or len(chunks) == 0:
            raise ValueError(
                f"need one vector per chunk and at least one chunk; got vectors "
                f"{vectors.shape} for {len(chunks)} chunks"
            )
        dims = vectors.shape[1]
        block_vectors = np.ascontiguousarray(block_vectors, dtype=np.float32)
        if block_vectors.size == 0:
            block_vectors = np.zeros((0, dims), dtype=np.float32)
        if block_vectors.ndim != 2 or block_vectors.shape != (len(blocks), dims):
            raise ValueError(
                f"need one {dims}-dim vector per block: got {block_vectors.shape} for {len(blocks)} blocks"
            )
        missing = sorted({"section_id", "document_id", "heading_path", "text"} - set(blocks[0])) if blocks else []
        if missing:
            raise ValueError(f"blocks need {missing}")
        index = build_faiss_index(vectors, ivf_threshold)
        created = datetime.now(UTC)
        version = created.strftime("v%Y%m%dT%H%M%S%fZ") + "-" + corpus_fingerprint[:8]
        manifest = {
            "format": MANIFEST_VERSION,
            "version": version,
            "created": created.isoformat(),
            "model": model,
            "dims": int(vectors.shape[1]),
            "n_chunks": len(chunks),
            "n_blocks": len(blocks),
            "n_documents": len({c["document_id"] for c in chunks}),
            "index_type": type(index).__name__,
            "corpus_fingerprint": corpus_fingerprint,
            **(extra or {}),
        }
        self.fs.makedirs(self.root, exist_ok=True)
        tmp = self._path(f".tmp-{version}-{uuid.uuid4().hex[:8]}")
        try:
            self.fs.makedirs(tmp, exist_ok=True)
            self.fs.pipe_file(f"{tmp}/index.faiss", faiss.serialize_index(index).tobytes())
            table = io.BytesIO()
            pd.DataFrame(list(chunks)).to_parquet(table, index=False)
            self.fs.pipe_file(f"{tmp}/chunks.parquet", table.getvalue())
            table = io.BytesIO()
            pd.DataFrame(list(blocks), columns=list(blocks[0]) if blocks else BLOCK_COLUMNS).to_parquet(
                table, index=False
            )
            self.fs.pipe_file(f"{tmp}/blocks.parquet", table.getvalue())
            matrix = io.BytesIO()
            np.save(matrix, block_vectors, allow_pickle=False)
            self.fs.pipe_file(f"{tmp}/block_vectors.npy", matrix.getvalue())
            # The manifest goes last: a version folder with a manifest is complete.
            self.fs.pipe_file(f"{tmp}/manifest.json", json.dumps(manifest, indent=2).encode())
            self.fs.mv(tmp, self._path(version), recursive=True)
        except BaseException:
            if self.fs.exists(tmp):
                self.fs.rm(tmp, recursive=True)
            raise
        self._write_latest(version)
        return manifest

    def set_latest(self, version: str) -> None:
        """Point serving at an existing version (roll back or forward)."""
        self._write_latest(self.resolve(version))

    def _write_latest(self, version: str) -> None:
        if self._local:
            # os.replace is atomic on POSIX: readers see the old or the new name, never half.
            tmp = Path(self._path(f".{LATEST}.{uuid.uuid4().hex[:8]}"))
            tmp.write_text(version + "\n")
            os.replace(tmp, self._path(LATEST))
        else:
            self.fs.pipe_file(self._path(LATEST), (version + "\n").encode())
