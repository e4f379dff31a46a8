"""Versioned model bundles in a store addressed by URI.

Layout under the store URI (a local directory by default, or anything fsspec
opens, e.g. ``s3://bucket/hdx/models``)::

    <family>/<version>/manifest.json      what the bundle is and how it scored
    <family>/<version>/<target>.<ext>     one model file per target
    <family>/<version>/state/<rev>/       Adaptive only: learned state revisions
    <family>/LATEST                       the newest version's name

A bundle is written under a temporary name and renamed into place, so a
reader never sees half a bundle. Loading checks the bundle's feature set
against the feature code and refuses a mismatch: a model fed features it was
not trained on would answer confidently and wrongly.
"""

from __future__ import annotations

import hashlib
import json
import platform
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import fsspec
import numpy as np

from diagnosis.family_base import FamilyModel
from diagnosis.registry import family_class
from hydraulics.components import TARGETS, target_classes
from hydraulics.features import get_feature_set

LATEST = "latest"


class BundleError(RuntimeError):
    """A bundle that is missing or does not match this code."""


@dataclass
class ModelBundle:
    family: str
    version: str
    model: FamilyModel
    manifest: dict
    state_revision: str | None = None

    @property
    def feature_set(self) -> str:
        return self.manifest["feature_set"]["name"]

    @property
    def feature_names(self) -> list[str]:
        return self.manifest["feature_set"]["feature_names"]


def new_version() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


def fingerprint(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def library_versions() -> dict[str, str]:
    import catboost
    import sklearn
    import xgboost

    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
        "catboost": catboost.__version__,
        "xgboost": xgboost.__version__,
    }


class ModelStore:
    def __init__(self, uri: str):
        self.uri = uri.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.uri)
        self._local = self.fs.protocol in ("file", "local") or "file" in self.fs.protocol

    def _path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    # --- writing ------------------------------------------------------------------
    def save(
        self,
        model: FamilyModel,
        version: str,
        feature_set: str,
        training: dict,
        metrics: dict,
        extra: dict | None = None,
    ) -> dict:
        if model.feature_set != feature_set:
            raise ValueError(f"{model.family} model was fitted on feature set {model.feature_set}, not {feature_set}")
        fs_sig = get_feature_set(feature_set).signature()
        manifest = {
            "family": model.family,
            "version": version,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "feature_set": fs_sig,
            "required_channels": fs_sig["channels"],
            "classes": {t: list(target_classes(t)) for t in TARGETS},
            "training": training,
            "metrics": metrics,
            "params": model.params,
            "library_versions": library_versions(),
            **(extra or {}),
        }
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / "bundle"
            manifest["files"] = model.save(local)
            (local / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
            self._publish(local, self._path(model.family, version))
        self._write_text(self._path(model.family, "LATEST"), version)
        return manifest

    def save_state(self, bundle: ModelBundle) -> str:
        """A new revision of a learning model's state (the Adaptive family)."""
        revision = f"{int(time.time() * 1000):015d}-{uuid.uuid4().hex[:4]}"
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / "state"
            bundle.model.save(local)
            self._publish(local, self._path(bundle.family, bundle.version, "state", revision))
        bundle.state_revision = revision
        return revision

    def write_report(self, version: str, report: dict) -> None:
        self.fs.makedirs(self._path("reports"), exist_ok=True)
        self._write_text(self._path("reports", f"{version}.json"), json.dumps(report, indent=2, default=str))

    def report(self, version: str) -> dict | None:
        path = self._path("reports", f"{version}.json")
        if not self.fs.exists(path):
            return None
        with self.fs.open(path) as f:
            return json.loads(f.read())

    def _publish(self, local: Path, dest: str) -> None:
        staging = f"{dest}.tmp-{uuid.uuid4().hex[:8]}"
        self.fs.makedirs(staging.rsplit("/", 1)[0], exist_ok=True)
        self.fs.put(str(local), staging, recursive=True)
        self.fs.mv(staging, dest, recursive=True)

    def _write_text(self, path: str, text: str) -> None:
        staging = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        with self.fs.open(staging, "w") as f:
            f.write(text)
        self.fs.mv(staging, path)

    # --- reading ---------------------------------------------------------------------
    def families(self) -> list[str]:
        if not self.fs.exists(self.root):
            return []
        return sorted(
            p.rsplit("/", 1)[-1]
            for p in self.fs.ls(self.root, detail=False)
            if self.fs.isdir(p) and p.rsplit("/", 1)[-1] != "reports"
        )

    def versions(self, family: str) -> list[str]:
        base = self._path(family)
        if not self.fs.exists(base):
            return []
        names = [p.rsplit("/", 1)[-1] for p in self.fs.ls(base, detail=False)]
        return sorted(n for n in names if n != "LATEST" and ".tmp-" not in n)

    def resolve(self, family: str, version: str = LATEST) -> str:
        if version != LATEST:
            return version
        pointer = self._path(family, "LATEST")
        if not self.fs.exists(pointer):
            raise BundleError(f"no {family} model in store {self.uri}; train one with `hdx train`")
        with self.fs.open(pointer) as f:
            return f.read().decode().strip()

    def manifest(self, family: str, version: str = LATEST) -> dict:
        version = self.resolve(family, version)
        path = self._path(family, version, "manifest.json")
        if not self.fs.exists(path):
            raise BundleError(f"no {family} bundle version {version!r} in store {self.uri}")
        with self.fs.open(path) as f:
            return json.loads(f.read())

    def list(self) -> list[dict]:
        return [self.manifest(fam, v) for fam in self.families() for v in self.versions(fam)]

    def latest_state(self, family: str, version: str) -> str | None:
        base = self._path(family, version, "state")
        if not self.fs.exists(base):
            return None
        revs = sorted(p.rsplit("/", 1)[-1] for p in self.fs.ls(base, detail=False) if ".tmp-" not in p)
        return revs[-1] if revs else None

    def load(self, family: str, version: str = LATEST, with_state: bool = True) -> ModelBundle:
        version = self.resolve(family, version)
        manifest = self.manifest(family, version)
        check_feature_set(manifest)
        cls = family_class(family)
        revision = self.latest_state(family, version) if with_state else None
        parts = (family, version, "state", revision) if revision else (family, version)
        model = self._load_dir(cls, self._path(*parts))
        return ModelBundle(family, version, model, manifest, revision)

    def _load_dir(self, cls: type[FamilyModel], path: str) -> FamilyModel:
        if self._local:
            return cls.load(Path(path))
        with tempfile.TemporaryDirectory() as tmp:
            self.fs.get(path + "/", tmp, recursive=True)
            return cls.load(Path(tmp))


def check_feature_set(manifest: dict) -> None:
    recorded = manifest["feature_set"]
    try:
        current = get_feature_set(recorded["name"]).signature()
    except KeyError as exc:
        raise BundleError(f"{manifest['family']} {manifest['version']}: {exc.args[0]}") from None
    if recorded["version"] != current["version"] or recorded["feature_names"] != current["feature_names"]:
        raise BundleError(
            f"{manifest['family']} bundle {manifest['version']} was trained on feature set "
            f"{recorded['name']} v{recorded['version']} ({len(recorded['feature_names'])} features), but this code "
            f"computes v{current['version']} ({len(current['feature_names'])} features); retrain with `hdx train`"
        )
