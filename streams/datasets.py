"""Read real interaction datasets into one time-ordered event list plus item texts (docs/design.md §6):
MovieLens directories or files, a CSV/TSV with a header naming the user, item and time columns (``[event]``
optional), or JSON lines with such keys; ``.gz`` files are read as they are. Times are Unix seconds, milliseconds
(read as on the events topic: above ``MS_THRESHOLD``) or ISO 8601 dates and times (UTC unless they name a zone).
"""

from __future__ import annotations

import csv
import gzip
import json
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO

from online.synthetic import generate
from streams.records import MS_THRESHOLD

__all__ = ["Event", "Dataset", "DatasetError", "column_index", "delimiter_of", "load_dataset", "parse_time"]


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


#: Header names (any case) of the user, item and time columns of a plain CSV/TSV or keys of JSON lines, the first
#: present taken: the project's own, then those of public sets (Amazon reviews, RetailRocket, session logs).
USER_COLUMNS = ("user_id", "userid", "user", "reviewerid", "visitorid", "visitor_id", "customer_id", "customerid",
                "session_id", "sessionid")
ITEM_COLUMNS = ("item_id", "itemid", "movieid", "item", "parent_asin", "asin", "product_id", "productid",
                "article_id")
TIME_COLUMNS = ("ts", "timestamp", "time", "unixreviewtime", "datetime", "event_time", "date", "eventdate")


def parse_time(value: str | float) -> float:
    """Unix seconds from a dataset's time: a number (milliseconds above ``MS_THRESHOLD``, as on the events topic)
    or an ISO 8601 date or date and time (UTC unless it names a zone); a ValueError for anything else.

    >>> [parse_time(v) for v in ("881250949", 1456793296123, "2016-05-09", "2016-05-09T10:00:00+02:00")]
    [881250949.0, 1456793296.123, 1462752000.0, 1462780800.0]
    """
    try:
        ts = float(value)
    except ValueError:
        when = datetime.fromisoformat(str(value).strip())
        return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp()
    if not math.isfinite(ts):
        raise ValueError(f"{value!r} is not a finite time")
    return ts / 1000.0 if ts > MS_THRESHOLD else ts


def _open(path: Path, encoding: str) -> IO[str]:
    """A dataset file as text, gunzipped if it ends in ``.gz``."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding=encoding, newline="")
    return path.open(encoding=encoding, newline="")


def _unzipped(path: Path) -> Path:
    """The name a file has inside its ``.gz`` (``a.json.gz`` -> ``a.json``), or its own: its stem and format."""
    return Path(path.stem) if path.suffix == ".gz" else path


def _event(path: Path, n: int, user, item, ts, event) -> Event:
    """One event read at ``path``:``n``; a DatasetError naming the place for a bad time. Ids are kept as read: an
    empty one is the replay's to reject and count, as the worker dead-letters it."""
    user, item = ("" if v is None else str(v) for v in (user, item))
    try:
        seconds = parse_time(ts)
    except (TypeError, ValueError):
        raise DatasetError(f"{path}:{n}: bad timestamp {ts!r}") from None
    return Event(seconds, user, item, str(event) if event else "click")


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
    """A plain events file's delimiter, read from its header line: a tab if it has one, else a semicolon if it
    has one and no comma, else a comma."""
    if "\t" in header_line:
        return "\t"
    return ";" if ";" in header_line and "," not in header_line else ","


def _read_table(path: Path, *, limit: int | None) -> list[Event]:
    with _open(path, "utf-8-sig") as fh:  # a byte-order mark (spreadsheet exports) is dropped
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
            if len(row) <= max(iu, ii, it):
                raise DatasetError(f"{path}:{n}: {len(row)} columns, the header has {len(header)}")
            event = row[ie] if ie is not None and ie < len(row) else None
            events.append(_event(path, n, row[iu], row[ii], row[it], event))
    return _sorted(events, limit)


def _read_json_lines(path: Path, *, limit: int | None) -> list[Event]:
    """One JSON object a line (Amazon's review files), keys as the CSV header names (any case)."""
    events, keys = [], None
    with _open(path, "utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as e:
                raise DatasetError(f"{path}:{n}: not JSON ({e})") from None
            if not isinstance(obj, dict):
                raise DatasetError(f"{path}:{n}: not a JSON object")
            if keys is None:  # the first object's keys name the fields of all
                names = list(obj)
                keys = [names[column_index(names, cols, path)] for cols in (USER_COLUMNS, ITEM_COLUMNS, TIME_COLUMNS)]
                keys.append(next((k for k in names if k.lower() == "event"), None))
            user, item, ts, event = (obj.get(k) if k is not None else None for k in keys)
            events.append(_event(path, n, user, item, ts, event))
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
            events.append(_event(path, n, parts[0], parts[1], parts[3], "rating"))
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
    name = directory.name if path.name in {"ratings.csv", "u.data", "ratings.dat", "train.csv"} else \
        _unzipped(path).stem
    if path.name == "u.data":
        events = _read_sep(path, "\t", "latin-1", limit=limit)
        item_text = _uitem_text(directory / "u.item") if (directory / "u.item").exists() else {}
    elif path.suffix == ".dat":
        events = _read_sep(path, "::", "latin-1", limit=limit)
        item_text = _movies_dat_text(directory / "movies.dat") if (directory / "movies.dat").exists() else {}
    elif _unzipped(path).suffix in (".json", ".jsonl"):
        events = _read_json_lines(path, limit=limit)
        item_text = {}
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
