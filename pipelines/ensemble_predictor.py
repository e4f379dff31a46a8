"""The batch job's predictor: one Ray Data actor that diagnoses batch after batch.

An input may hold cycles of several equipment profiles (a ``profile`` column; rows
without one are of the job's default profile): the actor holds every profile's
bundles and scores each batch profile by profile (``ProfileScorer``), each group
with its own profile's channels, reference and models, and returns the rows in
their input order. A row naming a profile the job has no models for is rejected
with the reason, like any bad row.

It gives a cycle the answer the online ``DiagnosisEnsemble`` gives it: the same
validation, alignment to the profile's reference cycle and feature extraction
(``diagnosis.profiles.ProfileReference.prepare``), every family's
probabilities as a ``FamilyAnswer`` (``diagnosis.scoring.answer_blocks``, as the
model replicas make them) and the same combination with the configured weights
and threshold: ``diagnosis.voting.combine_columns``, which ``diagnose_answers``
builds the online ``Diagnosis`` objects from. The batch job keeps its columns and
builds no per-row object. Only the conversion from Arrow
(``pipelines.cycle_reader``) and the output columns
(``pipelines.prediction_output``) are the batch job's own.

The job's driver loads the bundles from the model store once (``load_bundles``:
the verified, pickle-free formats of ``diagnosis.store``) and hands them to every
actor through Ray's object store: an actor then unpickles objects its own driver
made (0.36 s for the four families) instead of importing ``skops`` and loading the
``.skops`` files itself (3.3 s, measured in a fresh process by
``bench/bench_batch_predict.py``). Each actor pins its copy to ``threads`` threads
through ``FamilyModel.pin_threads``: a model otherwise predicts on every core, which
oversubscribes the CPUs an actor pool was given, and makes the benchmark's
"single process" loop quietly use the whole machine.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from diagnosis.profiles import MissingChannels, Profile, ProfileReference, fitting_profiles, prepare_cycles
from diagnosis.registry import FAMILY_NAMES
from diagnosis.scoring import answer_blocks
from diagnosis.store import ModelBundle, ModelStore
from diagnosis.voting import VerdictColumns, combine_columns
from hydraulics.channels import CHANNELS
from hydraulics.validation import SensorDataError
from pipelines.cycle_reader import batch_to_cycles, fast_block, row_profiles
from pipelines.prediction_output import PROFILE_COLUMN, combined_schema, prediction_schema, scored_table, verdict_arrays

Loaded = tuple[dict[str, ModelBundle], ProfileReference]


def load_bundles(store_uri: str, profile: str, versions: Mapping[str, str]) -> Loaded:
    """The profile's bundle of every family at its pinned version, and that version's
    reference (alignment and novelty), read and verified from the store."""
    store = ModelStore(store_uri).for_profile(profile)
    bundles = {family: store.load(family, version) for family, version in versions.items()}
    return bundles, store.load_reference(next(iter(versions.values())))


@dataclass
class BatchRows:
    """The valid rows of a batch as the models see them, and the errors of the others."""

    features: np.ndarray  # (k, n_features)
    rows: np.ndarray  # (k,) their positions in the batch
    errors: dict[int, SensorDataError]  # by position in the batch
    novelty: np.ndarray | None = None  # (k,) 1.0 = the threshold; None: no novelty model
    flagged: np.ndarray | None = None  # (k,) bool


class ProfileScorer:
    """One profile version's four bundles and reference: diagnoses batches of its cycles."""

    def __init__(
        self,
        loaded: Loaded,
        weights: Mapping[str, float],
        threshold: float,
        threads: int = 1,
        trained: Sequence[Profile] = (),
    ):
        bundles, self.reference = loaded
        self.trained = list(trained)  # named in a missing-channel error: the profiles the row would fit
        self.bundles: dict[str, ModelBundle] = dict(bundles)
        self.versions = {f: b.version for f, b in self.bundles.items()}
        for bundle in self.bundles.values():
            bundle.model.pin_threads(threads)
        self.profile = self.reference.profile.name
        self.feature_set = self.reference.profile.feature_set
        self.n_features = len(self.feature_set.feature_names())
        self.weights = dict(weights)
        self.threshold = threshold

    def features(self, batch: pa.Table) -> BatchRows:
        """The valid cycles' feature rows (in batch order) and novelty, and the others' errors.

        Rows of one common shape with plausible values are converted as one block
        (``fast_block``); the rest take the request path one by one, exactly as the
        online ensemble does, so a bad row gets the same error as over HTTP.
        """
        n = batch.num_rows
        X = np.empty((n, self.n_features))
        novelty = np.zeros(n) if self.reference.novelty is not None else None
        flagged = np.zeros(n, dtype=bool) if novelty is not None else None
        valid = np.zeros(n, dtype=bool)
        errors: dict[int, SensorDataError] = {}

        def put(where, prepared) -> None:
            X[where] = prepared.features
            valid[where] = True
            if novelty is not None:
                novelty[where], flagged[where] = prepared.novelty, prepared.flagged

        fast, block = fast_block(batch, self.feature_set)
        if fast.any():
            try:
                put(fast, self.reference.prepare(block))
            except SensorDataError:  # e.g. too short: every row on the per-row path names it
                fast[:] = False
        slow = np.flatnonzero(~fast)
        if len(slow):
            part = batch if len(slow) == n else batch.take(pa.array(slow))
            cycles, bad = batch_to_cycles(part, self.feature_set.channels)
            for k, err in bad.items():
                errors[int(slow[k])] = err
            todo = [k for k in range(len(cycles)) if k not in bad]
            if todo:
                prepared = prepare_cycles(self.reference, [cycles[k] for k in todo], self.trained)
                for j, err in prepared.errors.items():
                    if isinstance(err, MissingChannels):  # name the profiles all the row's channels fit
                        err = MissingChannels(self.profile, err.missing, self._fitting(part, todo[j]))
                    errors[int(slow[todo[j]])] = err
                if prepared.rows is not None:
                    put(slow[[todo[j] for j in prepared.valid]], prepared.rows)
        rows = np.flatnonzero(valid)
        return BatchRows(
            X[rows],
            rows,
            errors,
            None if novelty is None else novelty[rows],
            None if flagged is None else flagged[rows],
        )

    def _fitting(self, part: pa.Table, k: int) -> list[str]:
        """The trained profiles whose channels row ``k`` of ``part`` has (non-null cells)."""
        present = [c for c in part.column_names if c in CHANNELS and part[c][k].is_valid]
        return fitting_profiles(present, self.trained)

    def verdicts(self, X: np.ndarray, withheld: np.ndarray | None = None) -> VerdictColumns:
        """The verdict of every feature row by every loaded family, as columns: the
        combination ``diagnose_answers`` makes its ``Diagnosis`` objects from."""
        answers = {f: answer_blocks(b, [X])[0] for f, b in self.bundles.items()}
        return combine_columns({f: a.probas for f, a in answers.items()}, self.weights, self.threshold, None, withheld)

    def score(self, batch: pa.Table, default_system_id: str | None, schema: pa.Schema) -> pa.Table:
        """The batch's rows of ``schema``, in order: diagnoses and errors."""
        found = self.features(batch)
        arrays = None
        if len(found.rows):
            verdicts = self.verdicts(found.features, found.flagged)
            arrays = verdict_arrays(verdicts, self.versions, found.novelty, found.flagged)
        return scored_table(batch, self.profile, found.rows, arrays, found.errors, default_system_id, schema)


class EnsemblePredictor:
    """Actor-pool UDF: takes every profile's bundles once, then diagnoses batch after batch.

    ``loaded`` maps each profile of the job to what ``load_bundles`` returns (bundles and
    reference), or is a Ray object reference to that mapping (the batch job's actors).
    Rows without a profile (or inputs without the column) are ``default_profile``'s;
    ``rejected`` names profiles the job has no models for and why. ``threads`` pins every
    model library to that many threads (one per actor: the pool's parallelism is the
    number of actors).
    """

    def __init__(
        self,
        loaded,
        default_profile: str,
        weights: dict[str, float],
        threshold: float,
        default_system_id: str | None,
        threads: int = 1,
        rejected: Mapping[str, str] | None = None,
    ):
        if not isinstance(loaded, Mapping):
            import ray

            loaded = ray.get(loaded)
        trained = [reference.profile for _, reference in loaded.values()]
        self.scorers = {name: ProfileScorer(one, weights, threshold, threads, trained) for name, one in loaded.items()}
        self.default_profile = default_profile
        self.rejected = dict(rejected or {})
        self.schema = combined_schema(prediction_schema(FAMILY_NAMES))
        self.default_system_id = default_system_id

    def _score(self, batch: pa.Table, profile: str) -> pa.Table:
        scorer = self.scorers.get(profile)
        if scorer is not None:
            return scorer.score(batch, self.default_system_id, self.schema)
        why = self.rejected.get(profile, f"the job was not started with profile {profile}'s models")
        error = SensorDataError(None, f"profile {profile!r}: {why}")
        errors = dict.fromkeys(range(batch.num_rows), error)
        return scored_table(batch, profile, np.empty(0, np.int64), None, errors, self.default_system_id, self.schema)

    def __call__(self, batch: pa.Table) -> pa.Table:
        if PROFILE_COLUMN not in batch.column_names:
            return self._score(batch, self.default_profile)
        names = row_profiles(batch[PROFILE_COLUMN], self.default_profile)
        kinds = np.unique(names)
        if len(kinds) == 1:
            return self._score(batch, str(kinds[0]))
        parts, positions = [], []
        for name in kinds:  # each profile's rows together, then back to the input order
            rows = np.flatnonzero(names == name)
            parts.append(self._score(batch.take(pa.array(rows)), str(name)))
            positions.append(rows)
        order = np.argsort(np.concatenate(positions), kind="stable")
        return pa.concat_tables(parts).take(pa.array(order))
