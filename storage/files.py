"""Files under a URI: a local folder or anything pyarrow opens (``s3://``, ``gs://``, ...)."""

from __future__ import annotations

from pathlib import Path


def filesystem(uri: str):
    """``(pyarrow filesystem, path in it)`` for a local path or a URI."""
    import pyarrow.fs as pafs

    return pafs.FileSystem.from_uri(uri) if "://" in uri else (pafs.LocalFileSystem(), str(Path(uri).resolve()))
