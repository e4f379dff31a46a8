"""The in-memory form of a set of rig cycles, shared by loaders, the simulator,
training and batch jobs.

Channels are stored as one 2-D array per channel, ``(n_cycles, n_samples)``,
because every cycle in a set has the same duration on the rig; the feature
pipeline works on these arrays directly.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from hydraulics.components import TARGETS


@dataclass
class RigDataset:
    channels: dict[str, np.ndarray]
    cycle_ids: np.ndarray
    labels: pd.DataFrame | None = None  # columns: TARGETS, integer levels, one row per cycle
    source: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.cycle_ids = np.asarray(self.cycle_ids)
        n = len(self.cycle_ids)
        for name, values in self.channels.items():
            if values.ndim != 2 or values.shape[0] != n:
                raise ValueError(f"channel {name}: expected shape ({n}, samples), got {values.shape}")
        if self.labels is not None:
            missing = [t for t in TARGETS if t not in self.labels.columns]
            if missing or len(self.labels) != n:
                raise ValueError(f"labels need {n} rows and columns {list(TARGETS)}; missing {missing}")
            self.labels = self.labels.reset_index(drop=True)

    def __len__(self) -> int:
        return len(self.cycle_ids)

    def subset(self, index: Sequence[int] | np.ndarray) -> RigDataset:
        """Cycles by position (not by cycle id)."""
        index = np.asarray(index)
        return RigDataset(
            channels={k: v[index] for k, v in self.channels.items()},
            cycle_ids=self.cycle_ids[index],
            labels=None if self.labels is None else self.labels.iloc[index].reset_index(drop=True),
            source=self.source,
            meta=dict(self.meta),
        )

    def select_channels(self, names: Sequence[str]) -> RigDataset:
        missing = [n for n in names if n not in self.channels]
        if missing:
            raise KeyError(f"dataset {self.source!r} has no channel(s) {missing}")
        return RigDataset(
            {n: self.channels[n] for n in names}, self.cycle_ids, self.labels, self.source, dict(self.meta)
        )

    def cycles(self) -> Iterator[dict[str, np.ndarray]]:
        """One ``{channel: 1-D array}`` dict per cycle, the shape API requests arrive in."""
        for i in range(len(self)):
            yield {name: values[i] for name, values in self.channels.items()}

    @staticmethod
    def concat(parts: Sequence[RigDataset]) -> RigDataset:
        names = list(parts[0].channels)
        labels = None
        if all(p.labels is not None for p in parts):
            labels = pd.concat([p.labels for p in parts], ignore_index=True)
        return RigDataset(
            channels={n: np.concatenate([p.channels[n] for p in parts]) for n in names},
            cycle_ids=np.concatenate([p.cycle_ids for p in parts]),
            labels=labels,
            source=parts[0].source,
        )
