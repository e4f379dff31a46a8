"""Whole-second alignment of cycles to a profile's reference cycle.

The step features read the curves at fixed seconds (``features.LOAD_STEPS_S``),
so a cycle whose recording window started a second early or late is read at
the wrong moments and looks like a different condition. ``align`` estimates
each cycle's offset against a reference cycle by cross-correlation and undoes
it before features are computed; ``shift_block`` applies an offset (to simulate
late cycles and to augment training data).

Sign convention, used by every function here: a shift of ``+s`` seconds means
the cycle's content happens ``s`` seconds *late* in the recording (the cycle
started late within the recording window, i.e. the window opened early).
``shift_block(x, s)`` gives ``y[t] = x[t - s]``: for ``s = +1`` the first second
is repeated and the last one dropped. ``estimate_shift`` returns the ``s`` for
which the cycle looks like ``shift_block(reference, s)``, and ``align`` applies
``shift_block(block, -s)``, undoing exactly that.

Shifts are edge-padded, never wrapped: the seconds that move in at an end
repeat the nearest recorded sample, because a wrapped cycle would put the end
of the working cycle at its start, a shape no real cycle has. ``align`` can do
better, because its output is on the reference's time axis: given the training
cycles' median curve of each channel (``shape_curves``), the seconds it moves in
follow that curve from the nearest recorded sample (``pad_from_shape``). On the
UCI rig this matters at the start: the efficiency factor's first sample still
holds the previous cycle's value (about 68 %, then 0), and a cycle recorded one
second early has lost it; edge padding turned it into 0, a start no training
cycle has, and the novelty check flagged every such cycle.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from hydraulics.channels import CHANNELS

Block = Mapping[str, np.ndarray]  # channel → (n_cycles, n_samples) at the channel's native rate

# A cycle moves only if its best shift beats shift 0 by this much correlation:
# on an aligned cycle noise alone can make a neighbouring shift win by a hair.
MIN_IMPROVEMENT = 0.02


def _per_second(values: np.ndarray, rate: int) -> np.ndarray:
    """One value per second (mean of its samples), so every rate shares one time axis."""
    values = np.asarray(values, dtype=np.float64)
    if rate == 1:
        return values
    n, samples = values.shape
    seconds = samples // rate
    return values[:, : seconds * rate].reshape(n, seconds, rate).mean(axis=2)


def _curves(block: Block, channels: Sequence[str]) -> np.ndarray:
    """Per-second curves of the alignment channels, ``(n_cycles, n_channels, seconds)``."""
    missing = [ch for ch in channels if ch not in block]
    if missing:
        raise KeyError(f"alignment channel(s) {missing} not in the block (it has {sorted(block)})")
    curves = [_per_second(block[ch], CHANNELS[ch].rate_hz) for ch in channels]
    seconds = min(c.shape[1] for c in curves)
    return np.stack([c[:, :seconds] for c in curves], axis=1)


def reference_cycle(block: Block, channels: Sequence[str]) -> dict[str, np.ndarray]:
    """Per alignment channel the median per-second curve over the block's cycles, shape ``(seconds,)``.

    The median, not the mean: a few faulty or misaligned training cycles must
    not blur the load steps the alignment locks onto."""
    curves = _curves(block, channels)
    return {ch: np.median(curves[:, i], axis=0) for i, ch in enumerate(channels)}


def shift_block(block: Block, shift_s: int | np.ndarray) -> dict[str, np.ndarray]:
    """Every channel of ``block`` shifted by whole seconds, edge-padded: ``y[t] = x[t - shift_s]``.

    ``shift_s`` is one int for all cycles or an ``(n_cycles,)`` int array.
    Positive: the content moves later (right) and the first sample repeats, so
    ``+1`` is "the cycle started one second late: first sample repeated, last
    dropped". Negative: the content moves earlier and the last sample repeats.
    A shift of ``s`` seconds moves a channel by ``s * rate_hz`` samples."""
    out: dict[str, np.ndarray] = {}
    for ch, values in block.items():
        values = np.asarray(values)
        n, samples = values.shape
        shifts = np.broadcast_to(np.asarray(shift_s, dtype=np.int64), (n,))
        source = np.arange(samples)[None, :] - (shifts * CHANNELS[ch].rate_hz)[:, None]
        out[ch] = np.take_along_axis(values, np.clip(source, 0, samples - 1), axis=1)
    return out


def _correlations(curves: np.ndarray, reference: np.ndarray, max_shift_s: int) -> np.ndarray:
    """Normalised cross-correlation, ``(n_cycles, 2 * max_shift_s + 1)`` for shifts -max..+max.

    Correlated are the per-second *changes* of the curves, not their levels:
    the temperatures drift slowly through a cycle, and a drifting level
    correlates with itself at any shift, so on the UCI cycles it outvoted the
    load steps (8 channels: 81-96 % of ±1..3 s shifts recovered on levels,
    99-100 % on changes). Changes keep the steps and drop the drift. At shift
    ``s`` the cycle's second ``t`` is compared with the reference's second
    ``t - s`` over the seconds both cover; per channel the mean over that
    overlap is removed and the result scaled to unit norm, so every channel
    counts by its shape and not by its unit; the score is the mean of the
    channels' Pearson correlations."""
    x, r = np.diff(curves, axis=2), np.diff(reference, axis=1)
    seconds = x.shape[2]
    out = np.empty((x.shape[0], 2 * max_shift_s + 1))
    for k, s in enumerate(range(-max_shift_s, max_shift_s + 1)):
        lo, hi = max(0, s), min(seconds, seconds + s)
        xs, rs = x[:, :, lo:hi], r[:, lo - s : hi - s]
        rc = rs - rs.mean(axis=1, keepdims=True)
        rc /= np.maximum(np.linalg.norm(rc, axis=1, keepdims=True), 1e-12)
        cov = np.einsum("ncl,cl->nc", xs, rc)  # rc has zero mean: xs needs no centring here
        var_x = (np.einsum("ncl,ncl->nc", xs, xs) - xs.sum(axis=2) ** 2 / (hi - lo)).clip(min=0.0)
        out[:, k] = (cov / np.sqrt(np.maximum(var_x, 1e-24))).mean(axis=1)
    return np.clip(out, -1.0, 1.0)


def estimate_shift(
    block: Block, reference: Mapping[str, np.ndarray], channels: Sequence[str], max_shift_s: int = 5
) -> tuple[np.ndarray, np.ndarray]:
    """Each cycle's whole-second shift against ``reference`` and the match quality.

    Returns ``shift_s`` (``(n,)`` ints in ``[-max_shift_s, max_shift_s]``, sign as
    in the module docstring: the cycle ≈ ``shift_block(reference, shift_s)``) and
    ``quality`` (``(n,)`` in ``[-1, 1]``, the correlation at that shift). A cycle
    keeps shift 0 unless another shift correlates better by ``MIN_IMPROVEMENT``."""
    if max_shift_s < 0:
        raise ValueError(f"max_shift_s must be at least 0, got {max_shift_s}")
    curves = _curves(block, channels)
    ref = np.stack([np.asarray(reference[ch], dtype=np.float64) for ch in channels])
    seconds = min(curves.shape[2], ref.shape[1])
    max_shift_s = min(max_shift_s, seconds - 3)  # at least two per-second changes must overlap
    corr = _correlations(curves[:, :, :seconds], ref[:, :seconds], max_shift_s)
    best = corr.argmax(axis=1)
    rows = np.arange(corr.shape[0])
    zero = corr[:, max_shift_s]
    keep = corr[rows, best] < zero + MIN_IMPROVEMENT
    chosen = np.where(keep, max_shift_s, best)
    return (chosen - max_shift_s).astype(np.int64), corr[rows, chosen]


def shape_curves(block: Block) -> dict[str, np.ndarray]:
    """Per channel the median curve of the block's cycles at the channel's native rate,
    ``(samples,)``: the shape ``pad_from_shape`` fills moved-in samples with."""
    return {ch: np.median(np.asarray(v, dtype=np.float64), axis=0) for ch, v in block.items()}


def pad_from_shape(block: Block, moved_s: np.ndarray, shapes: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``block`` (cycles already moved by ``moved_s`` seconds onto the reference's time axis,
    edge-padded) with the moved-in samples following ``shapes``: a padded sample ``t`` is
    the nearest recorded sample ``a`` plus ``shape[t] - shape[a]``, so a padded second
    changes as the training cycles changed there, from this cycle's own level, kept
    inside the channel's plausible range (padding never makes a valid cycle invalid).
    A channel without a shape of its length stays edge-padded."""
    out = dict(block)
    moved = np.asarray(moved_s, dtype=np.int64)
    if not moved.any():
        return out
    for ch, values in block.items():
        shape = shapes.get(ch)
        values = np.asarray(values, dtype=np.float64)
        n, samples = values.shape
        if shape is None or len(shape) != samples:
            continue
        k = np.broadcast_to(moved, (n,))[:, None] * CHANNELS[ch].rate_hz
        t = np.arange(samples)[None, :]
        anchor = np.clip(t, np.maximum(k, 0), samples - 1 + np.minimum(k, 0))  # = t where recorded
        padded = np.clip(
            np.take_along_axis(values, anchor, axis=1) + (shape[t] - shape[anchor]), *CHANNELS[ch].plausible_range
        )
        out[ch] = np.where(anchor == t, values, padded)  # recorded samples as they are, for validation
    return out


def align(
    block: Block,
    reference: Mapping[str, np.ndarray],
    channels: Sequence[str],
    max_shift_s: int = 5,
    shapes: Mapping[str, np.ndarray] | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """``block`` with each cycle's estimated shift undone (all channels), the shifts and the qualities.

    ``shift_s`` is what ``estimate_shift`` found; the aligned block is
    ``shift_block(block, -shift_s)``, its moved-in samples following ``shapes``
    (``pad_from_shape``) where given, else edge-padded."""
    shift_s, quality = estimate_shift(block, reference, channels, max_shift_s)
    aligned = shift_block(block, -shift_s)
    if shapes:
        aligned = pad_from_shape(aligned, -shift_s, shapes)
    return aligned, shift_s, quality


def augment_with_shifts(
    block: Block, shifts: Sequence[int] = (-2, -1, 1, 2)
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The block followed by one shifted copy of every cycle per shift, and each row's original row.

    Trains models not to depend on exact sample positions. Row ``i`` of the
    result is cycle ``source[i]`` of ``block`` (the first ``n`` rows are the
    originals, then all cycles shifted by ``shifts[0]``, ...), so callers take
    their labels as ``labels[source]``."""
    block = {ch: np.asarray(v) for ch, v in block.items()}
    n = len(next(iter(block.values()))) if block else 0
    copies = [block] + [shift_block(block, int(s)) for s in shifts]
    out = {ch: np.concatenate([c[ch] for c in copies]) for ch in block}
    return out, np.tile(np.arange(n), len(copies))
