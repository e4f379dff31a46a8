"""Feature extraction throughput: cycles per second for a feature set on one core.

    OMP_NUM_THREADS=1 python -m bench.bench_features --feature-set rig_1hz --cycles 20000

Measures both entry points: ``extract`` on blocks of equal-length cycles (what
training and batch jobs call) and ``extract_cycles`` on request-shaped dicts
(what the online ensemble calls, validation of each cycle included).
Target for rig_1hz: at least 5,000 cycles/s. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core, before numpy starts threads


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    from hydraulics.features import extract, extract_cycles, get_feature_set
    from hydraulics.simulator import simulate_dataset

    parser = argparse.ArgumentParser()
    parser.add_argument("--feature-set", default="rig_1hz")
    parser.add_argument("--cycles", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    fs = get_feature_set(args.feature_set)
    base = simulate_dataset(1, seed=0, channels=list(fs.channels))  # 144 cycles
    reps = -(-args.cycles // len(base))
    block = {c: np.tile(v, (reps, 1))[: args.cycles] for c, v in base.channels.items()}
    n = len(next(iter(block.values())))
    t_block = best_of(lambda: extract(block, fs), args.repeats)
    dicts = [{c: block[c][i] for c in fs.channels} for i in range(min(n, 5_000))]
    t_dicts = best_of(lambda: extract_cycles(dicts, fs), args.repeats)
    print(f"feature set {fs.name}: {len(fs.feature_names())} features from {len(fs.channels)} channels")
    print(f"extract (blocks)          : {n / t_block:10.0f} cycles/s  ({n} cycles in {t_block * 1000:.0f} ms)")
    print(
        f"extract_cycles (requests) : {len(dicts) / t_dicts:10.0f} cycles/s  ({len(dicts)} cycles, validation included)"
    )


if __name__ == "__main__":
    main()
