"""Item vocabulary: string item ids <-> int indices, index 0 reserved for padding.

Indices are assigned in insertion order and never change, so the vocabulary only grows: a model trained
on the first ``n`` items keeps its embedding rows when items ``n+1, n+2, ...`` are appended
(``SeqEncoder.extend_items``). ``hash()`` identifies the ordered id list and is stored in checkpoints.

>>> v = ItemVocab(["a", "b"])
>>> v.add("c"), v.add("a"), len(v)
(3, 1, 3)
>>> v.encode(["b", "zzz", "c"])
[2, 3]
>>> ItemVocab(["a", "b", "c"]).hash() == v.hash()
True
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence

__all__ = ["PAD", "ItemVocab"]

PAD = 0  # index of the padding "item"; never a real item


class ItemVocab:
    """Ordered mapping of item ids (``str``) to indices ``1..len(self)``."""

    __slots__ = ("_ids", "_index")

    def __init__(self, ids: Iterable[str] = ()) -> None:
        self._ids: list[str] = []
        self._index: dict[str, int] = {}
        for item in ids:
            self.add(item)

    def add(self, item: str) -> int:
        """Index of ``item``, appending it first if it is new."""
        if not isinstance(item, str):
            raise TypeError(f"item ids are str, got {type(item).__name__}: {item!r}")
        idx = self._index.get(item)
        if idx is None:
            self._ids.append(item)
            idx = self._index[item] = len(self._ids)
        return idx

    def add_many(self, items: Iterable[str]) -> list[str]:
        """Add items; return those that were new, in order."""
        new = []
        for it in items:
            if it not in self._index:
                self.add(it)
                new.append(it)
        return new

    def get(self, item: str) -> int | None:
        return self._index.get(item)

    def encode(self, seq: Iterable[str]) -> list[int]:
        """Indices of the known items of ``seq``, in order; unknown items are dropped."""
        index = self._index
        return [index[it] for it in seq if it in index]

    @property
    def ids(self) -> list[str]:
        """The item ids in index order (``ids[i - 1]`` has index ``i``); a copy."""
        return list(self._ids)

    def hash(self) -> str:
        """Stable sha256 (hex) of the ordered id list."""
        return hashlib.sha256(json.dumps(self._ids, ensure_ascii=False).encode("utf-8")).hexdigest()

    def copy(self) -> "ItemVocab":
        return ItemVocab(self._ids)

    @classmethod
    def from_ids(cls, ids: Sequence[str]) -> "ItemVocab":
        vocab = cls(ids)
        if len(vocab) != len(ids):
            raise ValueError(f"duplicate item ids: {len(ids)} given, {len(vocab)} distinct")
        return vocab

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, item: object) -> bool:
        return item in self._index

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    def __repr__(self) -> str:
        return f"ItemVocab({len(self)} items, hash={self.hash()[:12]})"
