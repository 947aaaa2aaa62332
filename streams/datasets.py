"""Read real interaction datasets into one time-ordered event list plus item texts (docs/design.md §6):
MovieLens directories or files, or a CSV/TSV with a header naming ``user_id,item_id,ts[,event]``.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from online.synthetic import generate

__all__ = ["Event", "Dataset", "DatasetError", "column_index", "delimiter_of", "load_dataset"]


class DatasetError(ValueError):
    """The path is not a dataset tailcast can read; the message says what was expected."""


@dataclass(slots=True)
class Dataset:
    name: str
    events: list[Event]
    item_text: dict[str, str] = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return len({e.user for e in self.events})

    @property
    def n_items(self) -> int:
        return len({e.item for e in self.events})


@dataclass(frozen=True, slots=True, order=True)
class Event:
    """One interaction; events sort by time, then user, item and event type."""

    ts: float
    user: str
    item: str
    event: str = "click"


#: Header names (any case) of the user, item and time columns of a plain CSV/TSV.
USER_COLUMNS = ("user_id", "userid", "user")
ITEM_COLUMNS = ("item_id", "itemid", "movieid", "item")
TIME_COLUMNS = ("ts", "timestamp", "time")


def _sorted(events: list[Event], limit: int | None) -> list[Event]:
    """``events`` in time order (ties by user, then item), the first ``limit`` of them."""
    events.sort()
    return events[:limit] if limit else events


def column_index(header: Sequence[str], names: tuple[str, ...], path: Path) -> int:
    """The index of the first of ``names`` among ``header`` (any case); a DatasetError naming ``path`` if none."""
    lowered = [h.strip().lower() for h in header]
    for name in names:
        if name in lowered:
            return lowered.index(name)
    raise DatasetError(f"{path}: header {header} has no column among {names}")


def delimiter_of(header_line: str) -> str:
    """A plain events file's delimiter, read from its header line: a tab if it has one, else a comma."""
    return "\t" if "\t" in header_line else ","


def _read_table(path: Path, *, limit: int | None) -> list[Event]:
    with path.open(newline="", encoding="utf-8-sig") as fh:  # a byte-order mark (spreadsheet exports) is dropped
        sample = fh.readline()
        delimiter = delimiter_of(sample)
        fh.seek(0)
        reader = csv.reader(fh, delimiter=delimiter)
        header = next(reader, None)
        if header is None:
            raise DatasetError(f"{path}: empty file")
        iu, ii, it = (column_index(header, names, path) for names in (USER_COLUMNS, ITEM_COLUMNS, TIME_COLUMNS))
        lowered = [h.strip().lower() for h in header]
        ie = lowered.index("event") if "event" in lowered else None
        events = []
        for n, row in enumerate(reader, start=2):
            if not row:
                continue
            try:
                ts = float(row[it])
            except (ValueError, IndexError):
                raise DatasetError(f"{path}:{n}: bad timestamp in row {row!r}") from None
            event = row[ie] if ie is not None and ie < len(row) and row[ie] else "click"
            events.append(Event(ts, row[iu], row[ii], event))
    return _sorted(events, limit)


def _read_sep(path: Path, sep: str, encoding: str, *, limit: int | None) -> list[Event]:
    events = []
    with path.open(encoding=encoding) as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            parts = line.rstrip("\r\n").split(sep)
            if len(parts) < 4:
                raise DatasetError(f"{path}:{n}: expected user{sep}item{sep}rating{sep}ts")
            try:
                ts = float(parts[3])
            except ValueError:
                raise DatasetError(f"{path}:{n}: bad timestamp {parts[3]!r}") from None
            events.append(Event(ts, parts[0], parts[1], "rating"))
    return _sorted(events, limit)


def _movielens_csv_text(directory: Path) -> dict[str, str]:
    text: dict[str, list[str]] = {}
    movies = directory / "movies.csv"
    if movies.exists():
        with movies.open(newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                genres = row["genres"].replace("|", ", ") if row["genres"] != "(no genres listed)" else ""
                text[row["movieId"]] = [row["title"], genres]
    tags = directory / "tags.csv"
    if tags.exists():
        by_item: dict[str, list[str]] = defaultdict(list)
        with tags.open(newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                tag = row["tag"].strip()
                if tag and tag not in by_item[row["movieId"]]:
                    by_item[row["movieId"]].append(tag)
        for item, item_tags in by_item.items():
            text.setdefault(item, [item, ""]).append("tags: " + ", ".join(item_tags[:20]))
    return {item: ". ".join(p for p in parts if p) for item, parts in text.items()}


_ML100K_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
                  "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
                  "Thriller", "War", "Western")


def _uitem_text(path: Path) -> dict[str, str]:
    text = {}
    with path.open(encoding="latin-1") as fh:
        for line in fh:
            parts = line.rstrip("\n").split("|")
            if len(parts) < 5:
                continue
            flags = parts[5:]
            genres = [g for g, f in zip(_ML100K_GENRES, flags) if f == "1"]
            text[parts[0]] = f"{parts[1]}. {', '.join(genres)}"
    return text


def _movies_dat_text(path: Path) -> dict[str, str]:
    text = {}
    with path.open(encoding="latin-1") as fh:
        for line in fh:
            parts = line.rstrip("\n").split("::")
            if len(parts) >= 3:
                text[parts[0]] = f"{parts[1]}. {parts[2].replace('|', ', ')}"
    return text


def _item_meta_text(path: Path) -> dict[str, str]:
    """Amazon (ReChorus) item_meta.csv: only a category code is available as content."""
    text = {}
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        for row in reader:
            if row.get("item_id") and row.get("i_category"):
                text[row["item_id"]] = f"category {row['i_category']}"
    return text


SYNTHETIC = "synthetic"


def synthetic_dataset(spec: str = SYNTHETIC, *, limit: int | None = None) -> Dataset:
    """The project's own long-tail stream: ``synthetic`` or ``synthetic:USERS,ITEMS,EVENTS[,SEED]``.

    >>> ds = synthetic_dataset("synthetic:50,40,300,3")
    >>> (ds.name, len(ds.events), ds.n_users <= 50, ds.n_items <= 40, bool(ds.item_text))
    ('synthetic-50x40x300-s3', 300, True, True, True)
    """
    _, _, params = spec.partition(":")
    try:
        values = [int(x) for x in params.split(",")] if params else []
    except ValueError:
        raise DatasetError(f"{spec!r}: expected synthetic:USERS,ITEMS,EVENTS[,SEED] with integers") from None
    if len(values) not in (0, 3, 4):
        raise DatasetError(f"{spec!r}: expected synthetic:USERS,ITEMS,EVENTS[,SEED]")
    n_users, n_items, n_events, seed = (values + [0])[:4] if values else (2000, 1000, 50_000, 0)
    data = generate(n_users=n_users, n_items=n_items, n_events=n_events, seed=seed)
    events = _sorted([Event(ts, user, item, kind) for ts, user, item, kind in data.events], limit)
    return Dataset(name=f"synthetic-{n_users}x{n_items}x{n_events}-s{seed}", events=events,
                   item_text={item_id: item.text() for item_id, item in data.items.items()})


def load_dataset(path: str | Path, *, limit: int | None = None) -> Dataset:
    """Load a dataset directory or file, or ``synthetic[:USERS,ITEMS,EVENTS[,SEED]]``; ``limit`` keeps the
    first N events in time order."""
    if str(path) == SYNTHETIC or str(path).startswith(SYNTHETIC + ":"):
        return synthetic_dataset(str(path), limit=limit)
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such file or directory")
    directory = path if path.is_dir() else path.parent
    if path.is_dir():
        for candidate in ("ratings.csv", "u.data", "ratings.dat", "train.csv", "events.csv", "events.tsv"):
            if (path / candidate).exists():
                path = path / candidate
                break
        else:
            raise DatasetError(f"{path}: no ratings.csv, u.data, ratings.dat, train.csv or events.csv inside")
    name = directory.name if path.name in {"ratings.csv", "u.data", "ratings.dat", "train.csv"} else path.stem
    if path.name == "u.data":
        events = _read_sep(path, "\t", "latin-1", limit=limit)
        item_text = _uitem_text(directory / "u.item") if (directory / "u.item").exists() else {}
    elif path.suffix == ".dat":
        events = _read_sep(path, "::", "latin-1", limit=limit)
        item_text = _movies_dat_text(directory / "movies.dat") if (directory / "movies.dat").exists() else {}
    else:
        events = _read_table(path, limit=limit)
        if path.name == "ratings.csv":
            item_text = _movielens_csv_text(directory)
        elif (directory / "item_meta.csv").exists():
            item_text = _item_meta_text(directory / "item_meta.csv")
        else:
            item_text = {}
    if not events:
        raise DatasetError(f"{path}: no events")
    return Dataset(name=name, events=events, item_text=item_text)
