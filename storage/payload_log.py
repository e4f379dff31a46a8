"""A sample of what was served, as Parquet: the payload log, for retraining and audit.

Every diagnosis the ingress serves passes ``api.services.prediction_history.store_predictions``;
it hands each one to ``PayloadLog.record``. A share of requests (``sample``, decided
by the trace id, so all cycles of one batch request are kept or none) becomes one
row each: when, trace id, system, profile, source route, the model versions that
answered, the sensor data as sent (``map<string, list<double>>``) and the served
diagnosis as JSON. Rows are written under ``uri`` (a local folder or any fsspec/pyarrow
URI) in Hive partitions, ``day=YYYY-MM-DD/profile=NAME/part-*.parquet``, which
``pyarrow.dataset.dataset(uri, partitioning="hive")`` and Ray Data read back as columns.

Off the request path: ``record`` only appends to a buffer. A writer task flushes it
every ``flush_interval_s`` or as soon as ``rows_per_file`` rows wait, converting and
writing in a thread. Memory is bounded: beyond ``max_buffered`` waiting rows, new
rows are dropped and counted (``hdx_payload_rows_dropped``): the log is a sample,
and a store that stops accepting writes must not grow the ingress without bound.
A failed write keeps its rows for the next flush (within the same bound).
``close()`` (the app's shutdown) writes what is buffered.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from storage.telemetry import make_counter

log = logging.getLogger("hdx.payloads")

SCHEMA = pa.schema(
    [
        pa.field("served_at", pa.timestamp("ms", tz="UTC")),
        pa.field("trace_id", pa.string()),
        pa.field("system_id", pa.string()),
        pa.field("source", pa.string()),
        pa.field("model_versions", pa.map_(pa.string(), pa.string())),
        pa.field("sensor_data", pa.map_(pa.string(), pa.list_(pa.float64()))),
        pa.field("diagnosis", pa.string()),  # the served Diagnosis, JSON
        pa.field("day", pa.string()),  # partition
        pa.field("profile", pa.string()),  # partition
    ]
)
PARTITIONS = ("day", "profile")


def sampled(trace_id: str, share: float) -> bool:
    """Whether a request is in the sample: the same answer for the same trace id."""
    if share >= 1.0:
        return True
    if share <= 0.0:
        return False
    digest = hashlib.blake2b(trace_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < share


def _samples(values: Any) -> list[float]:
    return [float(v) for v in values]


class PayloadLog:
    """The ingress's payload log (see the module docstring); one per ingress replica."""

    def __init__(
        self,
        uri: str,
        sample: float,
        flush_interval_s: float = 10.0,
        rows_per_file: int = 5000,
        max_buffered: int = 20_000,
    ):
        self.uri = uri.rstrip("/")
        self.sample = sample
        self.flush_interval_s = flush_interval_s
        self.rows_per_file = rows_per_file
        self.max_buffered = max_buffered
        self._rows: list[dict] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._lock = asyncio.Lock()
        self.written = 0
        self.dropped = 0
        self._dropped_counter = make_counter(
            "hdx_payload_rows_dropped", "payload log rows dropped: the buffer was full (the store not writing)"
        )

    def record(
        self,
        trace_id: str,
        system_id: str,
        source: str,
        diagnosis,
        sensor_data: Mapping[str, Sequence[float]],
    ) -> bool:
        """Buffer one served diagnosis if its request is in the sample; whether it was kept.
        Never raises: the answer has been served, and a log row is not worth failing it."""
        if not sampled(trace_id, self.sample):
            return False
        if len(self._rows) >= self.max_buffered:
            self.dropped += 1
            self._dropped_counter.inc()
            return False
        now = datetime.now(UTC)
        try:
            row = {
                "served_at": now,
                "trace_id": trace_id,
                "system_id": system_id,
                "source": source,
                "model_versions": list(diagnosis.model_versions.items()),
                "sensor_data": [(name, _samples(values)) for name, values in sensor_data.items()],
                "diagnosis": diagnosis.model_dump_json(),
                "day": now.strftime("%Y-%m-%d"),
                "profile": diagnosis.profile or "",
            }
        except Exception:
            log.exception("payload log: could not make a row of trace %s", trace_id)
            self.dropped += 1
            self._dropped_counter.inc()
            return False
        self._rows.append(row)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        if len(self._rows) >= self.rows_per_file:
            self._wake.set()
        return True

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.flush_interval_s)
            except TimeoutError:
                pass
            self._wake.clear()
            await self.flush()

    async def flush(self) -> int:
        """Write what is buffered now; the number of rows written."""
        async with self._lock:
            rows, self._rows = self._rows, []
            if not rows:
                return 0
            try:
                await asyncio.to_thread(self._write, rows)
            except Exception:
                log.exception("payload log: writing %d rows to %s failed; kept for the next flush", len(rows), self.uri)
                room = max(0, self.max_buffered - len(self._rows))
                kept, lost = rows[:room], len(rows) - min(room, len(rows))
                self._rows[:0] = kept
                if lost:
                    self.dropped += lost
                    self._dropped_counter.inc(lost)
                return 0
            self.written += len(rows)
            return len(rows)

    def _write(self, rows: list[dict]) -> None:
        import pyarrow.parquet as pq

        from storage.files import filesystem

        table = pa.Table.from_pylist(rows, schema=SCHEMA)
        fs, root = filesystem(self.uri)
        stamp = f"{int(time.time() * 1000)}-{uuid.uuid4().hex[:8]}"
        pq.write_to_dataset(
            table,
            root,
            partition_cols=list(PARTITIONS),
            filesystem=fs,
            basename_template=f"part-{stamp}-{{i}}.parquet",
            existing_data_behavior="overwrite_or_ignore",
        )

    async def close(self) -> None:
        """Write what is buffered and stop."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        await self.flush()


def read_payloads(uri: str):
    """Everything logged under ``uri`` as one Arrow table (partitions as columns)."""
    import pyarrow.dataset as pads

    from storage.files import filesystem

    fs, root = filesystem(uri)
    return pads.dataset(root, filesystem=fs, format="parquet", partitioning="hive").to_table()


def diagnosis_of(row: Mapping) -> dict:
    return json.loads(row["diagnosis"])
