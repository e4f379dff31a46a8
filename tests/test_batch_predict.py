"""Batch prediction through Ray Data gives the online ensemble's answers, keeps bad rows."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from configs.settings import Settings
from diagnosis.profiles import builtin_profile, diagnose_prepared, prepare_cycles
from diagnosis.registry import FAMILY_NAMES, ensemble_weights
from diagnosis.scoring import answer_blocks
from diagnosis.store import BundleError, ModelStore
from diagnosis.voting import diagnose_answers
from hydraulics.components import COMPONENT_NAMES
from hydraulics.features import get_feature_set
from hydraulics.loaders import load_uci, save_table
from hydraulics.simulator import simulate_dataset
from pipelines.batch_predict import parse_cycles, run_batch_predict
from pipelines.cycle_reader import BatchInputError, source_format
from pipelines.prediction_output import ERROR_SCHEMA, prediction_schema
from tests.fixtures.serve_app import train_test_bundles

pytestmark = pytest.mark.ray

FAST = {  # as tests/test_models.py: tiny models, trained in seconds
    "catboost": {"iterations": 40, "depth": 4},
    "xgboost": {"n_estimators": 40},
    "random_forest": {"n_estimators": 40},
    "adaptive": {"epochs": 150},
}
FEATURE_SET = "rig_1hz"
PROFILE = "uci-1hz"
OTHER_PROFILE = "basic"  # a second profile: other channels at other rates
CHANNELS = list(get_feature_set(FEATURE_SET).channels)
PREDICTION_SCHEMA = prediction_schema(FAMILY_NAMES)


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    home = tmp_path_factory.mktemp("hdx-home")
    train_test_bundles(str(home / "models"), (PROFILE, OTHER_PROFILE), versions=("v-batch-test",), seed=31)
    # Unequal weights and a non-default threshold: the batch job must use the configured ones.
    return Settings(
        home=home,
        anomaly_threshold=0.4,
        ensemble_weights={"catboost": 2.0, "xgboost": 1.0, "random_forest": 1.0, "adaptive": 0.5},
    )


def online_answers(settings, cycles, profile=PROFILE):
    """What the online path computes (deployments/model_servers.py and
    deployments/diagnosis_ensemble.py): prepare_cycles (align, extract, novelty) -> each
    family's answer -> diagnose_prepared (the vote with the configured weights and
    threshold, the novel cycles withheld, annotate)."""
    store = ModelStore(settings.model_store_uri).for_profile(profile)
    bundles = {f: store.load(f) for f in FAMILY_NAMES}
    prepared = prepare_cycles(store.load_reference(), cycles)
    assert not prepared.errors
    X = prepared.rows.features
    answers = {f: answer_blocks(b, [X])[0] for f, b in bundles.items()}
    weights = ensemble_weights(settings.ensemble_weights)
    diagnoses = diagnose_prepared(prepared, profile, answers, weights, settings.anomaly_threshold)
    return [diagnoses[i] for i in range(len(cycles))]


def assert_matches_online(frame, diagnoses, cycle_ids):
    frame = frame.set_index("cycle_id").loc[list(cycle_ids)]
    assert len(frame) == len(diagnoses)
    for (cycle_id, row), diagnosis in zip(frame.iterrows(), diagnoses):
        where = f"cycle {cycle_id}"
        diag = diagnosis.prediction
        assert bool(row["is_anomaly"]) == diag.is_anomaly, where
        assert row["anomaly_score"] == pytest.approx(diag.anomaly_score, abs=1e-6), where
        assert row["confidence"] == pytest.approx(diag.confidence, abs=1e-6), where
        assert row["severity"] == diag.severity, where
        assert row["anomaly_type"] == diag.anomaly_type, where
        assert list(row["affected_components"]) == diag.affected_components, where
        assert row["probability_not_stable"] == pytest.approx(diag.steady_state.probability_not_stable, abs=1e-6)
        assert row["profile"] == diagnosis.profile, where
        assert row["novelty_score"] == pytest.approx(diag.out_of_distribution.score, abs=1e-4), where
        assert bool(row["out_of_distribution"]) == diag.out_of_distribution.flagged, where
        for c in COMPONENT_NAMES:
            comp = diag.components[c]
            assert row[f"{c}_level"] == comp.level, where
            assert row[f"{c}_severity"] == comp.severity, where
            assert row[f"{c}_probability"] == pytest.approx(comp.probabilities[str(comp.level)], abs=1e-6)
            assert row[f"{c}_nominal_probability"] == pytest.approx(comp.nominal_probability, abs=1e-6)


def read_output(out, name):
    return pq.read_table(out / name).to_pandas()


def _bad_rows(good: dict) -> list[dict]:
    """One row per way a cycle can be broken; cycle ids 9001.. name them."""
    nan = dict(good, cycle_id=9001, TS1=[*good["TS1"][:5], float("nan"), *good["TS1"][6:]])
    out_of_range = dict(good, cycle_id=9002, CE=[150.0] * 60)
    missing = dict(good, cycle_id=9003, VS1=None)
    wrong_length = dict(good, cycle_id=9004, SE=good["SE"][:59])
    return [nan, out_of_range, missing, wrong_length]


def test_parquet_matches_online_ensemble_and_keeps_bad_rows(ray_cluster, settings, tmp_path):
    data = simulate_dataset(1, seed=41, channels=CHANNELS)  # 144 cycles, every condition once
    good = [
        {
            "cycle_id": int(cid),
            "system_id": f"rig-{int(cid) % 3}",
            **{c: data.channels[c][i].tolist() for c in CHANNELS},
        }
        for i, cid in enumerate(data.cycle_ids)
    ]
    rows = good + _bad_rows(good[0])
    schema = pa.schema(
        [("cycle_id", pa.int64()), ("system_id", pa.string())] + [(c, pa.list_(pa.float64())) for c in CHANNELS]
    )
    source = tmp_path / "cycles.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), source)

    out = tmp_path / "out"
    summary = run_batch_predict(str(source), str(out), settings=settings, batch_size=50, workers=2)

    assert summary["rows_in"] == len(rows) and summary["predicted"] == len(good) and summary["rejected"] == 4
    assert summary["model_versions"] == {PROFILE: {f: "v-batch-test" for f in FAMILY_NAMES}}
    assert json.loads((out / "summary.json").read_text())["rejected"] == 4

    predictions = read_output(out, "predictions")
    assert pq.read_schema(next((out / "predictions").glob("*.parquet"))).names == PREDICTION_SCHEMA.names
    assert sorted(predictions["cycle_id"]) == sorted(int(c) for c in data.cycle_ids)
    assert (predictions["model_version_catboost"] == "v-batch-test").all()
    assert dict(zip(predictions["cycle_id"], predictions["system_id"])) == {r["cycle_id"]: r["system_id"] for r in good}
    assert_matches_online(predictions, online_answers(settings, list(data.cycles())), data.cycle_ids)

    errors = read_output(out, "errors").set_index("cycle_id")
    assert list(errors.columns) == [n for n in ERROR_SCHEMA.names if n != "cycle_id"]
    assert sorted(errors.index) == [9001, 9002, 9003, 9004]
    assert errors.loc[9001, "channel"] == "TS1" and "NaN" in errors.loc[9001, "problem"]
    assert errors.loc[9002, "channel"] == "CE" and "outside the plausible range" in errors.loc[9002, "problem"]
    assert errors.loc[9003, "channel"] == "VS1" and errors.loc[9003, "problem"].startswith("missing")
    assert errors.loc[9004, "channel"] == "SE" and "wrong rate/length" in errors.loc[9004, "problem"]
    assert (errors["system_id"] == "rig-0").all()


def test_csv_with_unparseable_cell_and_system_id_option(ray_cluster, settings, tmp_path):
    data = simulate_dataset(
        1,
        seed=42,
        channels=CHANNELS,
        conditions=[
            {"cooler": 3, "valve": 100, "pump": 0, "accumulator": 130},
            {"cooler": 100, "valve": 73, "pump": 2, "accumulator": 90},
        ],
    )
    source = tmp_path / "cycles.csv"
    save_table(data, str(source))  # no system_id column: the option names the system
    table = pacsv.read_csv(
        source, convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in CHANNELS})
    )
    broken = {name: table[name][0].as_py() for name in table.column_names} | {"cycle_id": 7, CHANNELS[0]: "[1, 2,"}
    pacsv.write_csv(pa.concat_tables([table, pa.Table.from_pylist([broken], schema=table.schema)]), source)

    with pytest.raises(BatchInputError, match="no system_id column; pass --system-id"):
        run_batch_predict(str(source), str(tmp_path / "refused"), settings=settings)

    out = tmp_path / "out"
    summary = run_batch_predict(str(source), str(out), settings=settings, system_id="press-7", workers=1)
    assert (summary["predicted"], summary["rejected"]) == (2, 1)
    predictions = read_output(out, "predictions")
    assert (predictions["system_id"] == "press-7").all()
    assert_matches_online(predictions, online_answers(settings, list(data.cycles())), data.cycle_ids)
    errors = read_output(out, "errors")
    assert errors.to_dict("records") == [
        {
            "system_id": "press-7",
            "cycle_id": 7,
            "profile": PROFILE,
            "channel": CHANNELS[0],
            "problem": errors["problem"][0],
        }
    ]
    assert "not a JSON array" in errors["problem"][0]


def test_uci_folder_subset(ray_cluster, settings, uci_dir, tmp_path):
    wanted = parse_cycles("0-24,1000")
    out = tmp_path / "out"
    summary = run_batch_predict(str(uci_dir), str(out), settings=settings, system_id="uci-rig", cycles=wanted)
    assert (summary["rows_in"], summary["rejected"]) == (26, 0)
    assert pq.read_table(out / "errors").num_rows == 0  # an empty error output still exists
    data = load_uci(uci_dir, channels=CHANNELS, cycles=wanted)
    assert_matches_online(read_output(out, "predictions"), online_answers(settings, list(data.cycles())), wanted)


def _parquet(path, rows, channels):
    schema = pa.schema(
        [("cycle_id", pa.int64()), ("system_id", pa.string()), ("profile", pa.string())]
        + [(c, pa.list_(pa.float64())) for c in channels]
    )
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


def test_missing_bundles_fail_before_the_job_starts(tmp_path):
    empty = Settings(home=tmp_path)
    source = _parquet(tmp_path / "x.parquet", [{"cycle_id": 1, "system_id": "a"}], CHANNELS)
    with pytest.raises(BundleError, match="no reference model in store"):
        run_batch_predict(str(source), str(tmp_path / "out"), settings=empty)


def test_two_profiles_in_one_input(ray_cluster, settings, tmp_path):
    """Rows of two profiles (other channels, other rates) mixed in one input and in every
    batch: each row is diagnosed with its own profile's models, exactly as online; a row
    without a profile is the default profile's; a row naming an untrained profile is
    rejected with the reason, and the others are still diagnosed."""
    basic = builtin_profile(OTHER_PROFILE)
    assert set(basic.channels) != set(CHANNELS)
    uci = simulate_dataset(1, seed=45, channels=CHANNELS)
    other = simulate_dataset(1, seed=46, channels=list(basic.channels))

    def rows(data, profile, offset, channels):
        return [
            {"cycle_id": offset + int(cid), "system_id": f"{profile or 'default'}-{int(cid) % 2}", "profile": profile,
             **{c: data.channels[c][i].tolist() for c in channels}}
            for i, cid in enumerate(data.cycle_ids[:30])
        ]  # fmt: skip

    uci_rows = rows(uci, PROFILE, 0, CHANNELS)
    unnamed = rows(uci, None, 1000, CHANNELS)[:10]
    basic_rows = rows(other, OTHER_PROFILE, 2000, basic.channels)
    untrained = [dict(uci_rows[0], cycle_id=3000, profile="full-rig")]
    mixed = [r for group in zip(uci_rows, basic_rows) for r in group] + unnamed + untrained  # interleaved
    channels = list(dict.fromkeys([*CHANNELS, *basic.channels]))
    source = _parquet(tmp_path / "mixed.parquet", mixed, channels)

    out = tmp_path / "out"
    summary = run_batch_predict(str(source), str(out), settings=settings, batch_size=25, workers=2)
    assert (summary["predicted"], summary["rejected"]) == (70, 1)
    assert set(summary["model_versions"]) == {PROFILE, OTHER_PROFILE}
    assert set(summary["profiles_rejected"]) == {"full-rig"}

    predictions = read_output(out, "predictions")
    by_profile = dict(tuple(predictions.groupby("profile")))
    assert len(by_profile[PROFILE]) == 40 and len(by_profile[OTHER_PROFILE]) == 30
    n = len(uci_rows)
    assert_matches_online(by_profile[OTHER_PROFILE], online_answers(
        settings, [{c: other.channels[c][i] for c in basic.channels} for i in range(n)], OTHER_PROFILE
    ), [2000 + int(c) for c in other.cycle_ids[:n]])  # fmt: skip
    uci_online = online_answers(settings, [{c: uci.channels[c][i] for c in CHANNELS} for i in range(n)])
    assert_matches_online(by_profile[PROFILE], uci_online, [int(c) for c in uci.cycle_ids[:n]])
    assert_matches_online(by_profile[PROFILE], uci_online[:10], [1000 + int(c) for c in uci.cycle_ids[:10]])

    assert pq.read_table(out / "errors").to_pylist() == [
        {"system_id": uci_rows[0]["system_id"], "cycle_id": 3000, "profile": "full-rig", "channel": None,
         "problem": f"profile 'full-rig': {summary['profiles_rejected']['full-rig']}"}
    ]  # fmt: skip


def test_source_format_by_suffix_or_directory_contents(tmp_path):
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "part-0.parquet").write_bytes(b"")
    (tmp_path / "parts" / "README.txt").write_text("not a channel")
    (tmp_path / "rig").mkdir()
    (tmp_path / "rig" / "TS1.txt").write_text("")
    assert source_format(str(tmp_path / "parts")) == "parquet"
    assert source_format(str(tmp_path / "rig")) == "uci"
    assert source_format("s3://bucket/cycles.csv") == "csv"
    with pytest.raises(BatchInputError, match="directory of them"):
        source_format(str(tmp_path))


def test_unreadable_source_is_named():
    with pytest.raises(BatchInputError, match="expected a .parquet or .csv table"):
        from pipelines.cycle_reader import read_cycles

        read_cycles("/nonexistent/cycles.txt", CHANNELS)
    assert parse_cycles("3,5-7") == [3, 5, 6, 7]


def test_block_conversion_equals_per_row_path(settings):
    """The vectorised Arrow -> block conversion gives the per-row (online) path's features
    and errors, for good rows mixed with every kind of bad row, and pins one thread."""
    from pipelines.cycle_reader import batch_to_cycles, fast_block
    from pipelines.ensemble_predictor import EnsemblePredictor, load_bundles

    data = simulate_dataset(1, seed=43, channels=CHANNELS)
    good = [
        {"cycle_id": int(cid), "system_id": "rig", **{c: data.channels[c][i].tolist() for c in CHANNELS}}
        for i, cid in enumerate(data.cycle_ids[:40])
    ]
    rows = good[:10] + _bad_rows(good[0]) + good[10:] + [dict(good[1], cycle_id=9005, TS2=[None] * 60)]
    schema = pa.schema(
        [("cycle_id", pa.int64()), ("system_id", pa.string())] + [(c, pa.list_(pa.float64())) for c in CHANNELS]
    )
    batch = pa.Table.from_pylist(rows, schema=schema)
    fs = get_feature_set(FEATURE_SET)

    fast, block = fast_block(batch, fs)
    bad_positions = {10, 11, 12, 13, len(rows) - 1}
    assert set(np.flatnonzero(~fast)) == bad_positions
    assert all(b.shape == (len(rows) - len(bad_positions), 60) for b in block.values())

    predictor = EnsemblePredictor(
        {PROFILE: load_bundles(settings.model_store_uri, PROFILE, {f: "v-batch-test" for f in FAMILY_NAMES})},
        PROFILE,
        ensemble_weights(settings.ensemble_weights),
        settings.anomaly_threshold,
        None,
        threads=1,
    )
    scorer = predictor.scorers[PROFILE]
    found = scorer.features(batch)
    X, valid, errors = found.features, found.rows, found.errors
    cycles, pre_errors = batch_to_cycles(batch, CHANNELS)  # the per-row path, as before
    assert not pre_errors
    per_row = prepare_cycles(scorer.reference, cycles)
    X_rows, row_errors = per_row.rows.features, per_row.errors
    assert list(valid) == [i for i in range(len(rows)) if i not in row_errors]
    np.testing.assert_allclose(X, X_rows, rtol=0, atol=1e-9)
    assert {i: (e.channel, e.problem) for i, e in errors.items()} == {
        i: (e.channel, e.problem) for i, e in row_errors.items()
    }
    assert errors[len(rows) - 1].channel == "TS2" and "NaN" in errors[len(rows) - 1].problem

    out = predictor(batch)
    assert out["_kind"].to_pylist().count("error") == len(bad_positions)
    np.testing.assert_allclose(found.novelty, per_row.rows.novelty, rtol=0, atol=1e-9)
    assert scorer.bundles["xgboost"].model.estimators["cooler"].n_jobs == 1


def test_columns_are_exactly_the_online_diagnoses(settings):
    """The batch job's columns (``combine_columns`` -> ``verdict_arrays``) hold exactly
    what ``diagnose_answers`` puts in each online ``Diagnosis``, for the same feature rows."""
    from pipelines.ensemble_predictor import ProfileScorer, load_bundles
    from pipelines.prediction_output import verdict_arrays

    data = simulate_dataset(1, seed=44, channels=CHANNELS)
    predictor = ProfileScorer(
        load_bundles(settings.model_store_uri, PROFILE, {f: "v-batch-test" for f in FAMILY_NAMES}),
        ensemble_weights(settings.ensemble_weights),
        settings.anomaly_threshold,
        threads=1,
    )
    prepared = predictor.reference.prepare(data.channels)
    X, flagged = prepared.features, prepared.flagged
    flagged[::7] = True  # some withheld for sure: their columns must say so as the objects do
    answers = {f: answer_blocks(b, [X])[0] for f, b in predictor.bundles.items()}
    online = diagnose_answers(answers, predictor.weights, predictor.threshold, X.shape[1], withheld=flagged)
    columns = pa.table(
        verdict_arrays(predictor.verdicts(X, flagged), predictor.versions, prepared.novelty, flagged)
    ).to_pylist()
    assert sum(row["severity"] == "unknown" for row in columns) >= len(columns) // 7
    assert len(columns) == len(online)
    for i, (row, diagnosis) in enumerate(zip(columns, online)):
        verdict = diagnosis.prediction
        expected = {
            "novelty_score": round(float(prepared.novelty[i]), 4),
            "out_of_distribution": bool(flagged[i]),
            "is_anomaly": verdict.is_anomaly,
            "anomaly_score": verdict.anomaly_score,
            "severity": verdict.severity,
            "confidence": verdict.confidence,
            "anomaly_type": verdict.anomaly_type,
            "affected_components": verdict.affected_components,
            "probability_not_stable": verdict.steady_state.probability_not_stable,
            **{f"model_version_{f}": v for f, v in diagnosis.model_versions.items()},
        }
        for c in COMPONENT_NAMES:
            comp = verdict.components[c]
            expected |= {
                f"{c}_level": comp.level,
                f"{c}_severity": comp.severity,
                f"{c}_probability": comp.probabilities[str(comp.level)],
                f"{c}_nominal_probability": comp.nominal_probability,
            }
        assert row == expected  # exact: the same combination and the same rounding


def test_a_mixed_batch_keeps_its_row_order_and_blank_profiles_are_the_default(settings):
    """One batch of interleaved profiles, blank and null profile cells among them, through the
    actor's code without Ray: rows come back in input order, each with the profile it was
    diagnosed with; a row missing a channel names the loaded profiles it would fit."""
    from pipelines.ensemble_predictor import EnsemblePredictor, load_bundles

    basic = builtin_profile(OTHER_PROFILE)
    channels = list(dict.fromkeys([*CHANNELS, *basic.channels]))
    uci = simulate_dataset(1, seed=47, channels=CHANNELS)
    other = simulate_dataset(1, seed=48, channels=list(basic.channels))
    rows = []
    for i in range(6):
        rows.append({"cycle_id": 10 + i, "profile": [PROFILE, "", None][i % 3],
                     **{c: uci.channels[c][i].tolist() for c in CHANNELS}})  # fmt: skip
        rows.append({"cycle_id": 20 + i, "profile": f" {OTHER_PROFILE} ",
                     **{c: other.channels[c][i].tolist() for c in basic.channels}})  # fmt: skip
    rows.append({"cycle_id": 30, "profile": OTHER_PROFILE, **{c: uci.channels[c][0].tolist() for c in CHANNELS}})
    schema = pa.schema(
        [("cycle_id", pa.int64()), ("profile", pa.string())] + [(c, pa.list_(pa.float64())) for c in channels]
    )
    batch = pa.Table.from_pylist(rows, schema=schema)
    versions = {f: "v-batch-test" for f in FAMILY_NAMES}
    predictor = EnsemblePredictor(
        {name: load_bundles(settings.model_store_uri, name, versions) for name in (PROFILE, OTHER_PROFILE)},
        PROFILE,
        ensemble_weights(settings.ensemble_weights),
        settings.anomaly_threshold,
        "rig",
    )
    out = predictor(batch)
    assert out["cycle_id"].to_pylist() == [r["cycle_id"] for r in rows]
    assert out["profile"].to_pylist() == [PROFILE, OTHER_PROFILE] * 6 + [OTHER_PROFILE]
    assert out["_kind"].to_pylist() == ["prediction"] * 12 + ["error"]
    problem = out["problem"][12].as_py()  # a uci-1hz cycle labelled basic: PS1 and FS1 missing
    assert "required by profile basic" in problem and f"fit the trained profiles ['{PROFILE}']" in problem
