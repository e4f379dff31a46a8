"""A sample of what was served, as Parquet: the payload log, for retraining and audit.

Every diagnosis the ingress serves passes ``api.services.prediction_history.store_predictions``;
it hands each one to ``PayloadLog.record``. A share of requests (``sample``, decided
by the trace id, so all cycles of one batch request are kept or none) becomes one
row each: when, trace id, system, profile, source route, the model versions that
answered, the sensor data as sent (``map<string, list<double>>``) and the served
diagnosis as JSON. Rows are written under ``uri`` (a local folder or any fsspec/pyarrow
URI) in Hive partitions, ``day=YYYY-MM-DD/profile=NAME/part-*.parquet``, which
``pyarrow.dataset.dataset(uri, partitioning="hive")`` and Ray Data read back as columns.

Off the request path: ``record`` copies the row into a buffer (the samples as
float arrays, the diagnosis as its JSON: microseconds). A writer task (``start``)
flushes the buffer every ``flush_interval_s``, or as soon as ``rows_per_file`` rows
wait, converting and writing in a thread; each file is written under a temporary
name and then renamed, so a reader never sees half a file. Memory is bounded by
bytes: beyond ``max_buffered_bytes`` waiting, new rows are dropped and counted
(``hdx_payload_rows_dropped``): the log is a sample, and a store that stops
accepting writes must not grow the ingress without bound. A failed write keeps its
rows for the next flush (within the same bound). ``close()`` (the app's shutdown)
lets a write in progress finish, then writes what is left.
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

import numpy as np
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


class PayloadLog:
    """The ingress's payload log (see the module docstring); one per ingress replica."""

    def __init__(
        self,
        uri: str,
        sample: float,
        flush_interval_s: float = 10.0,
        rows_per_file: int = 5000,
        max_buffered_bytes: int = 256 * 2**20,
    ):
        self.uri = uri.rstrip("/")
        self.sample = sample
        self.flush_interval_s = flush_interval_s
        self.rows_per_file = rows_per_file
        self.max_buffered_bytes = max_buffered_bytes
        self._rows: list[dict] = []
        self._bytes = 0
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task | None = None
        self._lock = asyncio.Lock()
        self.written = 0
        self.dropped = 0
        self._dropped_counter = make_counter(
            "hdx_payload_rows_dropped", "payload log rows dropped: the buffer was full (the store not writing)"
        )

    def start(self) -> None:
        """Start the writer task (from the app's startup, in its event loop)."""
        if self._task is None and self.sample > 0:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def _drop(self, n: int = 1) -> None:
        self.dropped += n
        self._dropped_counter.inc(n)

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
        now = datetime.now(UTC)
        try:
            samples = {name: np.asarray(values, dtype=np.float64) for name, values in sensor_data.items()}
            row = {
                "served_at": now,
                "trace_id": trace_id,
                "system_id": system_id,
                "source": source,
                "model_versions": list(diagnosis.model_versions.items()),
                "sensor_data": samples,
                "diagnosis": diagnosis.model_dump_json(),
                "day": now.strftime("%Y-%m-%d"),
                "profile": diagnosis.profile or "",
            }
        except Exception:
            log.exception("payload log: could not make a row of trace %s", trace_id)
            self._drop()
            return False
        size = sum(a.nbytes for a in samples.values()) + len(row["diagnosis"]) + 200
        if self._bytes + size > self.max_buffered_bytes:
            self._drop()
            return False
        row["_bytes"] = size
        self._rows.append(row)
        self._bytes += size
        if len(self._rows) >= self.rows_per_file:
            self._wake.set()
        return True

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await asyncio.wait_for(self._wake.wait(), self.flush_interval_s)
            except TimeoutError:
                pass
            self._wake.clear()
            await self.flush()

    async def flush(self) -> int:
        """Write what is buffered now; the number of rows written."""
        async with self._lock:
            rows, self._rows, self._bytes = self._rows, [], 0
            if not rows:
                return 0
            try:
                await asyncio.to_thread(self._write, rows)
            except Exception:
                log.exception("payload log: writing %d rows to %s failed; kept for the next flush", len(rows), self.uri)
                kept: list[dict] = []
                room = self.max_buffered_bytes - self._bytes
                for row in rows:  # the oldest first, as far as the bound allows
                    if row["_bytes"] > room:
                        break
                    kept.append(row)
                    room -= row["_bytes"]
                if len(kept) < len(rows):
                    self._drop(len(rows) - len(kept))
                self._rows[:0] = kept
                self._bytes += sum(r["_bytes"] for r in kept)
                return 0
            self.written += len(rows)
            return len(rows)

    def _write(self, rows: list[dict]) -> None:
        """One Parquet file per (day, profile) partition, written under a temporary name and renamed."""
        import pyarrow.parquet as pq

        from storage.files import filesystem

        fs, root = filesystem(self.uri)
        stamp = f"{int(time.time() * 1000)}-{uuid.uuid4().hex[:8]}"
        parts: dict[tuple[str, str], list[dict]] = {}
        for row in rows:
            parts.setdefault((row["day"], row["profile"]), []).append(row)
        columns = [f for f in SCHEMA if f.name not in PARTITIONS]
        for (day, profile), members in parts.items():
            table = pa.Table.from_pylist(
                [{**r, "sensor_data": [(k, v.tolist()) for k, v in r["sensor_data"].items()]} for r in members],
                schema=pa.schema(columns),
            )
            folder = f"{root}/day={day}/profile={profile}"
            fs.create_dir(folder, recursive=True)
            # Readers (pyarrow datasets, Ray Data) skip names starting with a dot: the half-written file.
            pq.write_table(table, f"{folder}/.part-{stamp}.parquet.tmp", filesystem=fs)
            fs.move(f"{folder}/.part-{stamp}.parquet.tmp", f"{folder}/part-{stamp}.parquet")

    async def close(self) -> None:
        """Let a write in progress finish, write what is left, and stop."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
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
