"""The batch job's predictor: one Ray Data actor that diagnoses batch after batch.

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

from collections.abc import Mapping

import numpy as np
import pyarrow as pa

from diagnosis.profiles import ProfileReference, prepare_cycles
from diagnosis.registry import FAMILY_NAMES
from diagnosis.scoring import answer_blocks
from diagnosis.store import ModelBundle, ModelStore
from diagnosis.voting import VerdictColumns, combine_columns
from hydraulics.validation import SensorDataError
from pipelines.cycle_reader import batch_to_cycles, fast_block
from pipelines.prediction_output import combined_schema, prediction_schema, scored_table


def load_bundles(
    store_uri: str, profile: str, versions: Mapping[str, str]
) -> tuple[dict[str, ModelBundle], ProfileReference]:
    """The profile's bundle of every family at its pinned version, and that version's
    reference (alignment and novelty), read and verified from the store."""
    store = ModelStore(store_uri).for_profile(profile)
    bundles = {family: store.load(family, version) for family, version in versions.items()}
    return bundles, store.load_reference(next(iter(versions.values())))


class EnsemblePredictor:
    """Actor-pool UDF: takes the four bundles once, then diagnoses batch after batch.

    ``bundles`` is what ``load_bundles`` returns (bundles and reference), or a Ray object
    reference to it (the batch job's actors). ``threads`` pins every model library to that many threads
    (one per actor: the pool's parallelism is the number of actors).
    """

    def __init__(
        self,
        bundles,
        weights: dict[str, float],
        threshold: float,
        default_system_id: str | None,
        threads: int = 1,
    ):
        if not isinstance(bundles, tuple):
            import ray

            bundles = ray.get(bundles)
        bundles, self.reference = bundles
        self.bundles: dict[str, ModelBundle] = dict(bundles)
        self.versions = {f: b.version for f, b in self.bundles.items()}
        self.schema = combined_schema(prediction_schema(FAMILY_NAMES))
        for bundle in self.bundles.values():
            bundle.model.pin_threads(threads)
        self.feature_set = self.reference.profile.feature_set
        self.n_features = len(self.feature_set.feature_names())
        self.weights = weights
        self.threshold = threshold
        self.default_system_id = default_system_id

    def features(self, batch: pa.Table) -> tuple[np.ndarray, np.ndarray, dict[int, SensorDataError]]:
        """Feature rows of the valid cycles (in batch order), their row numbers, and the
        errors of the others by row number.

        Rows of one common shape with plausible values are converted as one block
        (``fast_block``); the rest take the request path one by one, exactly as the
        online ensemble does, so a bad row gets the same error as over HTTP.
        """
        n = batch.num_rows
        X = np.empty((n, self.n_features))
        valid = np.zeros(n, dtype=bool)
        errors: dict[int, SensorDataError] = {}
        fast, block = fast_block(batch, self.feature_set)
        if fast.any():
            try:
                X[fast] = self.reference.prepare(block).features
                valid |= fast
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
                prepared = prepare_cycles(self.reference, [cycles[k] for k in todo])
                for j, err in prepared.errors.items():
                    errors[int(slow[todo[j]])] = err
                if prepared.rows is not None:
                    ok = slow[[todo[j] for j in prepared.valid]]
                    X[ok] = prepared.rows.features
                    valid[ok] = True
        rows = np.flatnonzero(valid)
        return X[rows], rows, errors

    def verdicts(self, X: np.ndarray) -> VerdictColumns:
        """The verdict of every feature row by every loaded family, as columns: the
        combination ``diagnose_answers`` makes its ``Diagnosis`` objects from."""
        answers = {f: answer_blocks(b, [X])[0] for f, b in self.bundles.items()}
        return combine_columns({f: a.probas for f, a in answers.items()}, self.weights, self.threshold)

    def __call__(self, batch: pa.Table) -> pa.Table:
        X, rows, errors = self.features(batch)
        verdicts = self.verdicts(X) if len(rows) else None
        return scored_table(batch, rows, verdicts, self.versions, errors, self.default_system_id, self.schema)
