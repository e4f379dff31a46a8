"""Many requests answered by one call: each request's part of the flat answer.

The ensemble (one feature step and one call per model for concurrent requests),
every model replica (one ``predict_proba`` for a ``@serve.batch``) and the
history writer (one INSERT for many requests' rows) concatenate their requests'
items, do the work once, and hand each request back its own slice.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import accumulate, pairwise


def group_slices(sizes: Iterable[int]) -> list[slice]:
    """The slice of the concatenated items that belongs to each group, in order."""
    return [slice(start, stop) for start, stop in pairwise(accumulate(sizes, initial=0))]
