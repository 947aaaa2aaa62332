"""benchmarks/derived_streams.py: thinned and sessionised copies of a dataset that `tailcast evaluate` reads."""

from __future__ import annotations

from benchmarks.derived_streams import main
from streams.datasets import load_dataset


def _movielens(tmp_path):
    src = tmp_path / "ml"
    src.mkdir()
    rows = ["userId,movieId,rating,timestamp"]
    for user in (1, 2):
        # two sessions each: three ratings a minute apart, then three more a day later
        rows += [f"{user},{10 + n},4.0,{1000 + 60 * n + (86_400 if n >= 3 else 0)}" for n in range(6)]
    (src / "ratings.csv").write_text("\n".join(rows) + "\n")
    (src / "movies.csv").write_text("movieId,title,genres\n" + "".join(f"{10 + n},Film {n} (2001),Drama\n" for n in range(6)))
    return src


def test_sessions_split_each_user_at_long_gaps_and_keep_the_item_texts(tmp_path, capsys):
    src = _movielens(tmp_path)
    assert main(["sessions", "--dataset", str(src), "--out", str(tmp_path / "s"), "--gap", "3600"]) == 0
    assert "ratings.csv" in capsys.readouterr().out
    original, derived = load_dataset(src), load_dataset(tmp_path / "s")
    assert derived.n_users == 4 and original.n_users == 2
    by_user: dict[str, list[str]] = {}
    for e in derived.events:
        by_user.setdefault(e.user, []).append(e.item)
    assert sorted(by_user.values()) == [["10", "11", "12"]] * 2 + [["13", "14", "15"]] * 2
    assert [(e.ts, e.item) for e in derived.events] == [(e.ts, e.item) for e in original.events]
    assert derived.item_text == original.item_text and derived.item_text  # the item file is linked beside


def test_thin_keeps_a_seeded_share_of_the_events_in_the_source_format(tmp_path):
    src = tmp_path / "amazon"
    src.mkdir()
    (src / "train.csv").write_text("user_id\titem_id\ttime\n" + "".join(f"u{n % 50}\ti{n % 7}\t{n}\n" for n in range(2000)))
    for seed in (0, 1):
        main(["thin", "--dataset", str(src), "--out", str(tmp_path / f"t{seed}"), "--keep", "0.3", "--seed", str(seed)])
    a, b = (load_dataset(tmp_path / f"t{s}").events for s in (0, 1))
    assert 500 < len(a) < 700 and 500 < len(b) < 700 and a != b
    full = set(load_dataset(src).events)
    assert set(a) <= full and (tmp_path / "t0" / "train.csv").read_text().startswith("user_id\titem_id\ttime\n")
    main(["thin", "--dataset", str(src), "--out", str(tmp_path / "again"), "--keep", "0.3", "--seed", "0"])
    assert load_dataset(tmp_path / "again").events == a
