"""Streams of other shapes from a dataset on disk, for checking that quality generalises (docs/results.md, "Stop 34").

    python -m benchmarks.derived_streams thin --dataset $DATA/amazon-grocery --keep 0.35 --out /tmp/amazon-thin
    python -m benchmarks.derived_streams sessions --dataset $DATA/ml-latest-small --gap 3600 --out /tmp/ml-sessions
    tailcast evaluate --dataset /tmp/amazon-thin --mode offline ...

``thin`` keeps each event with probability ``--keep`` (seeded): a sparse stream whose median user has one or two
events. ``sessions`` cuts each user's events into sessions at gaps longer than ``--gap`` seconds and makes each
session a user of its own: many short users with sequential structure, like a session dataset.

The events file of the dataset directory (``ratings.csv`` or ``train.csv``, comma- or tab-separated, with a header;
its delimiter and columns found as ``streams.datasets`` finds them) is rewritten row by row in its own format, so the
user column keeps its name and the other columns their values; every other file of the directory (the item texts)
is linked beside it. The output is a derived copy of the
data: keep it out of the repository, as the data's terms ask.
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streams.datasets import TIME_COLUMNS, USER_COLUMNS, column_index, delimiter_of, parse_time  # noqa: E402

EVENT_FILES = ("ratings.csv", "train.csv")


def thin(rows: Sequence[list[str]], *, keep: float, seed: int) -> Iterator[list[str]]:
    """Each row kept with probability ``keep``, in order (one draw a row, from ``seed``).

    >>> [r[0] for r in thin([["a"], ["b"], ["c"], ["d"]], keep=0.5, seed=0)]
    ['c', 'd']
    """
    rng = random.Random(seed)
    return (row for row in rows if rng.random() < keep)


def sessions(rows: Sequence[list[str]], *, user: int, ts: int, gap: float) -> Iterator[list[str]]:
    """Rows in their order, the user column replaced by ``USER~N``: the user's N-th session, which ends where
    the user's next event (in time) comes more than ``gap`` seconds later.

    >>> rows = [["u", "1"], ["v", "5"], ["u", "30"], ["u", "10"]]
    >>> [r[0] for r in sessions(rows, user=0, ts=1, gap=15)]
    ['u~1', 'v~1', 'u~2', 'u~1']
    >>> [r[0] for r in sessions([["u", "1500000000000"], ["u", "1500000010000"]], user=0, ts=1, gap=15)]  # ms
    ['u~1', 'u~1']
    """
    order = sorted(range(len(rows)), key=lambda n: (rows[n][user], parse_time(rows[n][ts]), n))
    label: dict[int, str] = {}
    last: tuple[str, float] | None = None
    count = 0
    for n in order:
        u, t = rows[n][user], parse_time(rows[n][ts])
        if last is None or last[0] != u:
            count = 1
        elif t - last[1] > gap:
            count += 1
        last = (u, t)
        label[n] = f"{u}~{count}"
    for n, row in enumerate(rows):
        yield [*row[:user], label[n], *row[user + 1:]]


def derive(dataset: Path, out: Path, how: str, *, keep: float = 0.35, gap: float = 3600.0, seed: int = 0) -> Path:
    """Write the derived stream of ``dataset`` (a directory) into ``out``; return the events file written."""
    source = next((dataset / f for f in EVENT_FILES if (dataset / f).exists()), None)
    if source is None:
        raise ValueError(f"{dataset}: no {' or '.join(EVENT_FILES)} inside")
    with source.open(newline="", encoding="utf-8") as f:
        delimiter = delimiter_of(f.readline())
        f.seek(0)
        reader = csv.reader(f, delimiter=delimiter)
        header = next(reader)
        rows = [row for row in reader if row]
    if how == "thin":
        derived = thin(rows, keep=keep, seed=seed)
    else:
        derived = sessions(rows, user=column_index(header, USER_COLUMNS, source),
                           ts=column_index(header, TIME_COLUMNS, source), gap=gap)
    out.mkdir(parents=True, exist_ok=True)
    target = out / source.name
    with target.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter=delimiter, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(derived)
    for other in dataset.iterdir():
        link = out / other.name
        if other != source and other.is_file() and not link.exists():
            link.symlink_to(other.resolve())
    return target


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("how", choices=("thin", "sessions"))
    ap.add_argument("--dataset", type=Path, required=True, help="a dataset directory (ratings.csv or train.csv)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--keep", type=float, default=0.35, help="thin: probability of keeping an event")
    ap.add_argument("--gap", type=float, default=3600.0, help="sessions: seconds between events that end a session")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    target = derive(args.dataset, args.out, args.how, keep=args.keep, gap=args.gap, seed=args.seed)
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
