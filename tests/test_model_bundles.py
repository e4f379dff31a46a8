"""Model bundles are safe to load: no pickled file, every file checked against its sha256."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import skops.io

from diagnosis.registry import FAMILY_NAMES, family_class
from diagnosis.store import BUNDLE_FORMAT, BundleError, ModelStore
from diagnosis.training import fit_family
from hydraulics.features import extract
from hydraulics.simulator import simulate_dataset

TINY = {
    "catboost": {"iterations": 10, "depth": 3},
    "xgboost": {"n_estimators": 10},
    "random_forest": {"n_estimators": 10},
    "adaptive": {"epochs": 30},
}
SAFE_SUFFIXES = {".cbm", ".ubj", ".skops", ".npz", ".json"}


@pytest.fixture(scope="module")
def models():
    data = simulate_dataset(1, seed=21)
    X = extract(data.channels, "rig_1hz")
    return X, {f: fit_family(f, X, data.labels, params=TINY[f])[0] for f in FAMILY_NAMES}


@pytest.fixture
def store(tmp_path, models) -> ModelStore:
    store = ModelStore(str(tmp_path / "models"))
    for model in models[1].values():
        store.save(model, "v1", "rig_1hz", training={}, metrics={})
    return store


def _bundle_dir(store: ModelStore, family: str) -> Path:
    return Path(store.root) / family / "v1"


def _rewrite_manifest(directory: Path, **changes) -> None:
    path = directory / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_bundle_files_are_hashed_and_none_is_a_pickle(store, family):
    directory = _bundle_dir(store, family)
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["format"] == BUNDLE_FORMAT
    on_disk = sorted(p.name for p in directory.iterdir() if p.is_file() and p.name != "manifest.json")
    assert sorted(manifest["files"]) == on_disk and "family.json" in on_disk
    for name, digest in manifest["files"].items():
        data = (directory / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest
        assert Path(name).suffix in SAFE_SUFFIXES, name
        assert not data.startswith(b"\x80"), f"{name} is a pickle"  # pickle protocol 2+ opens with PROTO
        if name.endswith(".skops"):  # only the types the family trusts, beyond scikit-learn's own
            assert set(skops.io.get_untrusted_types(file=directory / name)) <= set(family_class(family).trusted_types)
        if name.endswith(".npz"):
            with np.load(directory / name, allow_pickle=False) as arrays:
                assert arrays["X"].dtype == np.float64


def test_a_changed_file_is_refused_naming_it(store, models):
    X, _ = models
    target = _bundle_dir(store, "random_forest") / "cooler.skops"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"random_forest bundle v1: file cooler\.skops does not match its sha256"):
        store.load("random_forest", "v1")
    assert store.load("xgboost", "v1").model.predict_proba(X[:1])  # the others still load


def test_missing_and_unlisted_files_are_refused(store):
    (_bundle_dir(store, "xgboost") / "pump.ubj").unlink()
    with pytest.raises(BundleError, match=r"xgboost bundle v1: file pump\.ubj listed in its manifest is missing"):
        store.load("xgboost", "v1")
    (_bundle_dir(store, "catboost") / "extra.cbm").write_bytes(b"not in the manifest")
    with pytest.raises(BundleError, match=r"catboost bundle v1: files \['extra\.cbm'\] are not listed"):
        store.load("catboost", "v1")
    _rewrite_manifest(_bundle_dir(store, "adaptive"), files={"../../x.json": "0" * 64})
    with pytest.raises(BundleError, match="is not a plain file name"):
        store.load("adaptive", "v1")


def test_a_changed_state_revision_file_is_refused(store, models):
    import pandas as pd

    X, _ = models
    bundle = store.load("adaptive", "v1")
    bundle.model.update(X[:1], pd.DataFrame({"valve": [73]}))
    revision = store.save_state(bundle)
    record = store.state_record("adaptive", "v1", revision)
    (_bundle_dir(store, "adaptive") / "state" / record["dir"] / "adaptive_memory.npz").write_bytes(b"PK damaged")
    with pytest.raises(BundleError, match=rf"adaptive bundle v1 state {revision}: file adaptive_memory\.npz"):
        store.load("adaptive", "v1")
    assert store.load("adaptive", "v1", with_state=False).state_revision is None  # the trained model still loads


def test_old_pickled_bundles_are_refused_with_a_way_out(store):
    directory = _bundle_dir(store, "random_forest")
    manifest = json.loads((directory / "manifest.json").read_text())
    del manifest["format"]  # what bundles written before format 2 look like
    manifest["files"] = ["cooler.joblib"]
    (directory / "manifest.json").write_text(json.dumps(manifest))
    assert store.problem("xgboost") is None
    problem = store.problem("random_forest")
    assert "format 1 (format 1 holds pickled files" in problem and "retrain with `hdx train`" in problem
    with pytest.raises(BundleError, match="retrain with `hdx train`"):
        store.load("random_forest")
    assert "no catboost bundle version 'v9'" in store.problem("catboost", "v9")


def test_a_rewritten_manifest_still_cannot_make_a_replica_run_code(store):
    """Whoever can write the store can also rewrite the hashes; the formats are what keep
    a bundle from running code: skops refuses to build a function it was not told to trust."""
    from sklearn.preprocessing import FunctionTransformer

    directory = _bundle_dir(store, "random_forest")
    evil = directory / "cooler.skops"
    skops.io.dump(FunctionTransformer(func=eval), evil)
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["files"]["cooler.skops"] = hashlib.sha256(evil.read_bytes()).hexdigest()
    (directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(skops.io.exceptions.UntrustedTypesFoundException, match="builtins.eval"):
        store.load("random_forest", "v1")
