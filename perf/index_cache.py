"""The index built last, kept for the next search case over the same index."""

from __future__ import annotations

from embedsearch.index import Index, build_index
from data_cache import DataCache
from tiers import IndexCase


class IndexCache:
    """The most recently built index, reused by consecutive cases over the same index."""

    def __init__(self, data: DataCache):
        self.data = data
        self.key: tuple | None = None
        self.index: Index | None = None

    def get(self, case: IndexCase, device: str) -> Index:
        """The index of `case` on `device`, built over the case's database unless it was the last one built."""
        key = (case, device)
        if key != self.key:
            self.index = None  # release the previous index before building the next
            self.index = build_index(case.spec, self.data.database(case), case.metric, device)
            self.key = key
        return self.index
