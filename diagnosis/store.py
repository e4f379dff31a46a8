"""Versioned model bundles in a store addressed by URI.

Layout under the store URI (a local directory by default, or anything fsspec
opens, e.g. ``s3://bucket/hdx/models``): one folder per equipment profile
(``diagnosis.profiles``), and in it the profile's bundles::

    <profile>/profile.json                          the profile (channels, components, alignment)
    <profile>/reference/<version>/                  that training run's reference cycle and novelty model
    <profile>/reports/<version>.json                that training run's evaluation report

and under ``<profile>/`` (``ModelStore.for_profile``)::

    <family>/<version>/manifest.json      what the bundle is, how it scored, sha256 of each file
    <family>/<version>/<target>.<ext>     one model file per target (.cbm, .ubj, .skops)
    <family>/<version>/state/r<n>.json    Adaptive only: learned state revision n (parent, file hashes)
    <family>/<version>/state/r<n>-<id>/   … and its files
    <family>/LATEST                       the newest version's name

A bundle is written under a temporary name and renamed into place, so a
reader never sees half a bundle. Loading checks the bundle's feature set
against the feature code and refuses a mismatch: a model fed features it was
not trained on would answer confidently and wrongly. It also checks every
file against the sha256 its manifest (or state record) lists, and loads no
file that is not listed; no file is unpickled (``diagnosis.family_base``).

State revisions are optimistic: revision n+1 names n as its parent and is
committed by creating ``r<n+1>.json`` exclusively, so when two replicas learn
from the same parent one commit wins and the other gets ``StateConflict``,
learns again on the winner's state and commits n+2 (``diagnosis.learning``).
The store must support exclusive creation: local directories do (a hard
link), and so do object stores whose fsspec driver honours mode ``"xb"``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
import re
import tempfile
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import fsspec
import numpy as np

from diagnosis.family_base import FamilyModel
from diagnosis.profiles import Profile, ProfileError, ProfileReference
from diagnosis.registry import family_class
from hydraulics.components import TARGETS, target_classes
from hydraulics.features import feature_set_from

_NOT_FAMILIES = {"reports", "reference", "profile.json"}
LATEST = "latest"
BASE_STATE = "base"  # the trained bundle itself, before any learned state
BUNDLE_FORMAT = 2  # 1 (no "format" field): pickled files and no hashes
_REVISION = re.compile(r"^r(\d{8})")


class BundleError(RuntimeError):
    """A bundle that is missing, damaged or does not match this code."""


class StateConflict(RuntimeError):
    """Another writer committed the next state revision first."""


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


def revision_number(name: str | None) -> int:
    """``r00000007`` (or a name starting with it) → 7; no revision → 0."""
    if name is None:
        return 0
    match = _REVISION.match(name)
    if match is None:
        raise BundleError(f"{name!r} is not a state revision (r<8 digits>)")
    return int(match.group(1))


def fingerprint(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def file_digests(directory: Path) -> dict[str, str]:
    """The sha256 of every file directly in ``directory``, by name."""
    return {p.name: _sha256(p) for p in sorted(directory.iterdir()) if p.is_file()}


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def verify_files(directory: Path, files: Mapping[str, str], what: str) -> None:
    """Every listed file present with its recorded sha256, and no unlisted file
    (the loaders would read it unchecked). ``BundleError`` names the file."""
    for name, digest in files.items():
        path = directory / name
        if Path(name).name != name or name in ("", ".", ".."):
            raise BundleError(f"{what}: file name {name!r} in its manifest is not a plain file name")
        if not path.is_file():
            raise BundleError(f"{what}: file {name} listed in its manifest is missing")
        if _sha256(path) != digest:
            raise BundleError(f"{what}: file {name} does not match its sha256 in the manifest (damaged or altered)")
    extra = sorted(p.name for p in directory.iterdir() if p.is_file() and p.name not in {*files, "manifest.json"})
    if extra:
        raise BundleError(f"{what}: files {extra} are not listed in its manifest")


def library_versions() -> dict[str, str]:
    import catboost
    import sklearn
    import skops
    import xgboost

    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
        "skops": skops.__version__,
        "catboost": catboost.__version__,
        "xgboost": xgboost.__version__,
    }


class ModelStore:
    """The store at ``uri``; bundle methods act on one profile's folder (``for_profile``)."""

    def __init__(self, uri: str, profile: str | None = None):
        self.uri = uri.rstrip("/")
        self.profile_name = profile
        self.fs, self.root = fsspec.core.url_to_fs(self.uri)
        self._local = self.fs.protocol in ("file", "local") or "file" in self.fs.protocol

    def _path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    # --- profiles --------------------------------------------------------------------
    def for_profile(self, name: str) -> ModelStore:
        """The same store (a copy of this object, subclasses included), its bundle methods
        acting on profile ``name``'s folder."""
        if not name or "/" in name or name.startswith("."):
            raise ProfileError(f"{name!r} is not a profile name")
        return self._at(f"{self.top().uri}/{name}", name)

    def top(self) -> ModelStore:
        """The store itself, above every profile."""
        return self if self.profile_name is None else self._at(self.uri.rsplit("/", 1)[0], None)

    def _at(self, uri: str, profile: str | None) -> ModelStore:
        scoped = copy.copy(self)
        scoped.uri, scoped.profile_name = uri, profile
        scoped.fs, scoped.root = fsspec.core.url_to_fs(uri)
        return scoped

    def save_profile(self, profile: Profile) -> None:
        top = self.top()
        top.fs.makedirs(top._path(profile.name), exist_ok=True)
        top._write_text(top._path(profile.name, "profile.json"), json.dumps(profile.to_dict(), indent=2))

    def profiles(self) -> list[Profile]:
        """Every profile with a definition in the store (trained or not), by name."""
        top = self.top()
        if not top.fs.exists(top.root):
            return []
        out = []
        for path in sorted(top.fs.ls(top.root, detail=False)):
            name = path.rsplit("/", 1)[-1]
            if top.fs.exists(f"{path}/profile.json"):
                out.append(top.profile(name))
        return out

    def profile(self, name: str) -> Profile:
        top = self.top()
        path = top._path(name, "profile.json")
        if not top.fs.exists(path):
            raise ProfileError(f"no profile {name!r} in store {top.uri}; train it with `hdx train --profile {name}`")
        with top.fs.open(path) as f:
            return Profile.from_dict(json.loads(f.read()))

    def trained_profiles(self) -> list[Profile]:
        """The profiles with a complete training run (a reference: written last)."""
        return [p for p in self.profiles() if self.for_profile(p.name).reference_versions()]

    def save_reference(self, version: str, reference: ProfileReference) -> None:
        """The run's reference cycle and novelty model; written after the run's bundles, so
        its ``LATEST`` names a version whose every family is stored."""
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / "reference"
            reference.save(local)
            files = file_digests(local)
            (local / "manifest.json").write_text(json.dumps({"version": version, "files": files}, indent=2))
            self._publish(local, self._path("reference", version))
        self._write_text(self._path("reference", "LATEST"), version)

    def reference_versions(self) -> list[str]:
        base = self._path("reference")
        if not self.fs.exists(base):
            return []
        names = [p.rsplit("/", 1)[-1] for p in self.fs.ls(base, detail=False)]
        return sorted(n for n in names if n != "LATEST" and ".tmp-" not in n)

    def resolve_profile_version(self, version: str = LATEST) -> str:
        """A profile version (a training run) by name, or the newest complete one."""
        return self.resolve("reference", version)

    def load_reference(self, version: str = LATEST) -> ProfileReference:
        version = self.resolve_profile_version(version)
        path = self._path("reference", version)
        manifest_path = f"{path}/manifest.json"
        if not self.fs.exists(manifest_path):
            raise BundleError(f"profile {self.profile_name}: no reference for version {version!r} in {self.uri}")
        with self.fs.open(manifest_path) as f:
            files = json.loads(f.read())["files"]
        what = f"profile {self.profile_name} reference {version}"
        if self._local:
            verify_files(Path(path), files, what)
            return ProfileReference.load(Path(path))
        with tempfile.TemporaryDirectory() as tmp:
            for name in files:
                if Path(name).name != name:
                    raise BundleError(f"{what}: file name {name!r} in its manifest is not a plain file name")
                self.fs.get(f"{path}/{name}", str(Path(tmp) / name))
            verify_files(Path(tmp), files, what)
            return ProfileReference.load(Path(tmp))

    # --- writing ------------------------------------------------------------------
    def save(
        self,
        model: FamilyModel,
        version: str,
        feature_set,
        training: dict,
        metrics: dict,
        extra: dict | None = None,
    ) -> dict:
        expected = feature_set_from(feature_set)
        if model.feature_set.spec() != expected.spec():
            raise ValueError(
                f"{model.family} model was fitted on feature set {model.feature_set.spec()}, not {expected.spec()}"
            )
        fs_sig = expected.signature()
        manifest = {
            "family": model.family,
            "version": version,
            "format": BUNDLE_FORMAT,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "feature_set": fs_sig,
            "required_channels": fs_sig["channels"],
            "profile": self.profile_name,
            "targets": list(model.targets),
            "classes": {t: list(target_classes(t)) for t in TARGETS if t in model.targets},
            "training": training,
            "metrics": metrics,
            "params": model.params,
            "library_versions": library_versions(),
            **(extra or {}),
        }
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / "bundle"
            model.save(local)
            manifest["files"] = file_digests(local)
            (local / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
            self._publish(local, self._path(model.family, version))
        self._write_text(self._path(model.family, "LATEST"), version)
        return manifest

    def save_state(self, bundle: ModelBundle, rolled_back_from: str | None = None) -> str:
        """Commit ``bundle.model`` as the revision after ``bundle.state_revision`` (its
        parent) and set ``bundle.state_revision`` to it. Raises ``StateConflict`` when
        that revision exists: someone else learned on the same parent first."""
        parent = bundle.state_revision
        revision = f"r{revision_number(parent) + 1:08d}"
        data_dir = f"{revision}-{uuid.uuid4().hex[:6]}"
        base = self._path(bundle.family, bundle.version, "state")
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / "state"
            bundle.model.save(local)
            files = file_digests(local)
            self._publish(local, f"{base}/{data_dir}")
        record = {
            "revision": revision,
            "parent": parent,
            "dir": data_dir,
            "files": files,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "n_updates": getattr(bundle.model, "n_updates", None),
            "rolled_back_from": rolled_back_from,
        }
        if not self._create_exclusive(f"{base}/{revision}.json", json.dumps(record, indent=2)):
            self.fs.rm(f"{base}/{data_dir}", recursive=True)
            raise StateConflict(f"{bundle.family} {bundle.version}: {revision} was saved by another writer first")
        bundle.state_revision = revision
        return revision

    def prune_states(self, family: str, version: str, keep: int) -> list[str]:
        """Delete all but the newest ``keep`` state revisions (and leftovers of failed
        writes older than those); returns the revisions deleted."""
        if keep < 1:
            raise ValueError("keep at least one state revision")
        revisions = self.state_revisions(family, version)
        if len(revisions) <= keep:
            return []
        oldest_kept = revision_number(revisions[-keep])
        base = self._path(family, version, "state")
        old = [p for p in self.fs.ls(base, detail=False) if _older(p.rsplit("/", 1)[-1], oldest_kept)]
        # Records first: a reader never finds a record whose files are gone.
        for path in sorted(old, key=lambda p: not p.endswith(".json")):
            self.fs.rm(path, recursive=True)
        return revisions[:-keep]

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

    def _create_exclusive(self, path: str, text: str) -> bool:
        """Write ``path`` whole unless it exists; False when it did."""
        if self._local:  # a hard link appears complete and fails if the name is taken
            staging = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
            Path(staging).write_text(text)
            try:
                os.link(staging, path)
            except FileExistsError:
                return False
            finally:
                os.remove(staging)
            return True
        try:
            with self.fs.open(path, "xb") as f:  # object stores publish an object whole, on close
                f.write(text.encode())
        except FileExistsError:
            return False
        return True

    # --- reading ---------------------------------------------------------------------
    def families(self) -> list[str]:
        if not self.fs.exists(self.root):
            return []
        return sorted(
            p.rsplit("/", 1)[-1]
            for p in self.fs.ls(self.root, detail=False)
            if self.fs.isdir(p) and p.rsplit("/", 1)[-1] not in _NOT_FAMILIES
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

    def problem(self, family: str, version: str = LATEST) -> str | None:
        """Why this bundle cannot be served (missing, an old format, other features), or
        None; reads only the manifest."""
        try:
            manifest = self.manifest(family, version)
            check_format(manifest)
            check_feature_set(manifest)
        except BundleError as exc:
            return str(exc)
        return None

    def state_revisions(self, family: str, version: str) -> list[str]:
        """The committed state revisions of a bundle, oldest first."""
        base = self._path(family, version, "state")
        if not self.fs.exists(base):
            return []
        names = (p.rsplit("/", 1)[-1] for p in self.fs.ls(base, detail=False))
        return sorted(n[: -len(".json")] for n in names if re.fullmatch(r"r\d{8}\.json", n))

    def latest_state(self, family: str, version: str) -> str | None:
        revisions = self.state_revisions(family, version)
        return revisions[-1] if revisions else None

    def state_record(self, family: str, version: str, revision: str) -> dict:
        path = self._path(family, version, "state", f"{revision}.json")
        if not self.fs.exists(path):
            raise BundleError(f"no state revision {revision!r} of {family} {version} in store {self.uri}")
        with self.fs.open(path) as f:
            return json.loads(f.read())

    def load(
        self, family: str, version: str = LATEST, with_state: bool = True, revision: str | None = None
    ) -> ModelBundle:
        """The bundle with its newest learned state (``with_state``), a chosen ``revision``,
        or ``BASE_STATE`` for the trained model alone; verified before anything is read."""
        version = self.resolve(family, version)
        manifest = self.manifest(family, version)
        check_format(manifest)
        check_feature_set(manifest)
        if revision is None and with_state:
            revision = self.latest_state(family, version)
        if revision in (None, BASE_STATE):
            path, files, what = self._path(family, version), manifest["files"], f"{family} bundle {version}"
            revision = None
        else:
            record = self.state_record(family, version, revision)
            path, files = self._path(family, version, "state", record["dir"]), record["files"]
            what = f"{family} bundle {version} state {revision}"
        model = self._load_dir(family_class(family), path, files, what)
        return ModelBundle(family, version, model, manifest, revision)

    def _load_dir(self, cls: type[FamilyModel], path: str, files: Mapping[str, str], what: str) -> FamilyModel:
        if self._local:
            verify_files(Path(path), files, what)
            return cls.load(Path(path))
        with tempfile.TemporaryDirectory() as tmp:
            for name in files:  # only the listed files: nothing else reaches the loader
                if Path(name).name != name:
                    raise BundleError(f"{what}: file name {name!r} in its manifest is not a plain file name")
                self.fs.get(f"{path}/{name}", str(Path(tmp) / name))
            verify_files(Path(tmp), files, what)
            return cls.load(Path(tmp))


def _older(name: str, revision: int) -> bool:
    """A state entry (record, files, a write's leftover) of a revision before ``revision``."""
    match = _REVISION.match(name)
    return match is not None and int(match.group(1)) < revision


def check_format(manifest: dict) -> None:
    if manifest.get("format") != BUNDLE_FORMAT or not isinstance(manifest.get("files"), dict):
        raise BundleError(
            f"{manifest['family']} bundle {manifest['version']} was written in bundle format "
            f"{manifest.get('format', 1)} (format 1 holds pickled files, which could run code when loaded); "
            f"this code loads format {BUNDLE_FORMAT} only: retrain with `hdx train`"
        )


def check_feature_set(manifest: dict) -> None:
    recorded = manifest["feature_set"]
    try:
        current = feature_set_from(recorded).signature()
    except KeyError as exc:
        raise BundleError(f"{manifest['family']} {manifest['version']}: {exc.args[0]}") from None
    if recorded["version"] != current["version"] or recorded["feature_names"] != current["feature_names"]:
        raise BundleError(
            f"{manifest['family']} bundle {manifest['version']} was trained on feature set "
            f"{recorded['name']} v{recorded['version']} ({len(recorded['feature_names'])} features), but this code "
            f"computes v{current['version']} ({len(current['feature_names'])} features); retrain with `hdx train`"
        )
