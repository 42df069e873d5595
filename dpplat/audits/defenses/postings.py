"""An inverted index from a hash to the ids of the stored queries that carry it.

Blacklight keys it on window hashes and PIHA on parts of its perceptual hash. Under attack
traffic, near-duplicate queries make some lists as long as the history, so each list is a
numpy array grown by doubling: appends stay amortised O(1), and a lookup hands back a view
without converting a Python list on every query.
"""

from __future__ import annotations

from typing import Hashable

import numpy as np


class PostingLists:
    def __init__(self) -> None:
        self._lists: dict[Hashable, list] = {}  # key -> [ids (int32 array), how many are used]

    def __len__(self) -> int:
        return len(self._lists)

    def add(self, key: Hashable, query_id: int) -> None:
        posting = self._lists.get(key)
        if posting is None:
            self._lists[key] = [np.full(4, query_id, dtype=np.int32), 1]
            return
        ids, n = posting
        if n == len(ids):
            ids = posting[0] = np.concatenate([ids, np.empty_like(ids)])
        ids[n] = query_id
        posting[1] = n + 1

    def get(self, key: Hashable) -> np.ndarray | None:
        """The ids stored under ``key`` in the order they were added, or None."""
        posting = self._lists.get(key)
        return None if posting is None else posting[0][:posting[1]]
