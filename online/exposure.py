"""Live exposure metrics (docs/design.md §4): who gets recommended, and how evenly, over sliding windows.

:class:`ExposureWindow` judges each published list against an :class:`~online.headtail.ItemWindow` and keeps
the exposure metrics of ``online.metrics`` (conventions there) over the last lists.

>>> w = ExposureWindow(window_events=10, head_share=0.2, k=2)
>>> for item in ["a"] * 5 + ["b", "b", "c", "d", "e"]:    # 5 active items -> head = {"a"}
...     _ = w.observe_event("u", item)
>>> _ = w.observe_recommendation(["a", "b", "zz"])         # cut to ["a", "b"]
>>> _ = w.observe_recommendation(["c", "a"])
>>> snap = w.snapshot()
>>> snap["tail_share"], snap["aplt"], snap["coverage"], snap["window_events"], snap["k"]
(0.5, 0.5, 0.6, 10, 2)
>>> snap["gini"]        # exposure counts over active items a..e: [2, 1, 1, 0, 0]
0.5
>>> round(snap["novelty"], 4)   # shares a=.5, b=.2, c=.1: (1 + 2.3219 + 3.3219 + 1) / 4
1.911
"""

from __future__ import annotations

from collections.abc import Sequence

from online.headtail import ItemWindow
from online.metrics import (APLT, Coverage, ExposureGini, Metrics, Novelty, Rolling, Shown, TailShare, gini,
                            lorenz_curve)

__all__ = ["ExposureWindow", "ItemWindow", "SharedItemWindowError", "gini", "lorenz_curve"]


class SharedItemWindowError(RuntimeError):
    """An :class:`ExposureWindow` sharing an :class:`ItemWindow` was fed an event: feed the shared one."""


class ExposureWindow:
    """Exposure metrics over the last ``rec_window`` published lists (default ``window_events``), judged
    against an :class:`ItemWindow` of the last ``window_events`` interactions.

    Lists are cut to their top ``k`` (empty ones ignored) and judged with the head set and shares of that
    moment; coverage and Gini read the *current* active items. Arms sharing one interaction window are
    built with :meth:`shared` and the events fed to the :class:`ItemWindow` once (``observe_event`` on
    such a window raises :class:`SharedItemWindowError`). ``snapshot()`` keys: ``tail_share``,
    ``coverage``, ``gini``, ``aplt``, ``novelty``, ``window_events`` (events in the window) and ``k``.
    """

    __slots__ = ("items", "k", "rec_window", "metrics", "_owns_items")

    def __init__(
        self,
        *,
        window_events: int = 100_000,
        head_share: float = 0.2,
        k: int = 10,
        rec_window: int | None = None,
        refresh_events: int | None = None,
    ) -> None:
        items = ItemWindow(window_events=window_events, head_share=head_share, refresh_events=refresh_events)
        self._setup(items, owns_items=True, k=k, rec_window=rec_window)

    @classmethod
    def shared(cls, items: ItemWindow, *, k: int = 10, rec_window: int | None = None) -> ExposureWindow:
        """An exposure window over an interaction window owned (and fed) by someone else."""
        if not isinstance(items, ItemWindow):
            raise TypeError(f"items must be an ItemWindow, got {type(items).__name__}")
        self = cls.__new__(cls)
        self._setup(items, owns_items=False, k=k, rec_window=rec_window)
        return self

    def _setup(self, items: ItemWindow, *, owns_items: bool, k: int, rec_window: int | None) -> None:
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        self.items = items
        self.k = k
        self.rec_window = items.window_events if rec_window is None else rec_window
        self._owns_items = owns_items
        active = items.active_items
        self.metrics = Rolling(
            lambda: Metrics(tail_share=TailShare(), coverage=Coverage(active), gini=ExposureGini(active),
                            aplt=APLT(), novelty=Novelty()),
            self.rec_window,
        )

    def observe_event(self, user: str, item: str) -> ExposureWindow:
        """One interaction (docs/design.md §3 ``events``): updates active items and head/tail."""
        if not self._owns_items:
            raise SharedItemWindowError(
                "this ExposureWindow shares its ItemWindow; call observe_event on the shared ItemWindow once"
            )
        self.items.observe_event(user, item)
        return self

    def observe_recommendation(self, items: Sequence[str]) -> ExposureWindow:
        """One published list (item ids, best first), cut to the top ``k``."""
        if isinstance(items, str) or not isinstance(items, Sequence):
            raise TypeError(f"expected a sequence of item ids, got {type(items).__name__}")
        if items:
            window = self.items
            self.metrics.update(Shown.judge(items[: self.k], window.head_items(), window.pop_share))
        return self

    @property
    def n_lists(self) -> int:
        return len(self.metrics)

    def exposure_counts(self) -> dict[str, int]:
        """Recommendation count per item over the list window (a copy)."""
        return dict(self.metrics.metric["gini"].counts)

    def snapshot(self) -> dict[str, float | int]:
        return {**self.metrics.get(), "window_events": self.items.n_events, "k": self.k}
