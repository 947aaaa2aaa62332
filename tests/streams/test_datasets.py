"""streams/datasets.py: the dataset formats `tailcast replay` and `evaluate` accept (docs/design.md §6), read into
time-ordered events and item texts, with a clear error for what they cannot read."""

from __future__ import annotations

import pytest

from streams.datasets import DatasetError, Event, load_dataset


def test_movielens_100k_u_data_with_u_item_genres(tmp_path):
    (tmp_path / "u.data").write_text("196\t242\t3\t881250949\n186\t302\t3\t891717742\n22\t377\t1\t878887116\n\n")
    flags = ["0"] * 19
    flags[5] = flags[8] = "1"  # Comedy, Drama
    (tmp_path / "u.item").write_bytes(("242|Kolya (1996)|24-Jan-1997||http://x|" + "|".join(flags) + "\n").encode("latin-1")
                                      + "377|Caf\xe9 (1995)|01-Jan-1995||http://y|".encode("latin-1")
                                      + "|".join(["0"] * 18 + ["1"]).encode("latin-1") + b"\n")
    ds = load_dataset(tmp_path)
    assert ds.name == tmp_path.name
    assert [(e.ts, e.user, e.item, e.event) for e in ds.events] == [
        (878887116.0, "22", "377", "rating"), (881250949.0, "196", "242", "rating"), (891717742.0, "186", "302", "rating")]
    assert ds.item_text == {"242": "Kolya (1996). Comedy, Drama", "377": "Caf\xe9 (1995). Western"}
    assert [e.item for e in load_dataset(tmp_path / "u.data", limit=2).events] == ["377", "242"]  # the first 2 in time


def test_movielens_1m_dat_files(tmp_path):
    (tmp_path / "ratings.dat").write_text("1::1193::5::978300760\r\n1::661::3::978302109\r\n2::1193::4::978300760\r\n")
    (tmp_path / "movies.dat").write_bytes("1193::One Flew (1975)::Drama\n661::James (1996)::Animation|Children's\n"
                                          .encode("latin-1"))
    ds = load_dataset(tmp_path)
    assert [(e.ts, e.user, e.item) for e in ds.events] == [  # ties in time: by user, then item
        (978300760.0, "1", "1193"), (978300760.0, "2", "1193"), (978302109.0, "1", "661")]
    assert ds.item_text == {"1193": "One Flew (1975). Drama", "661": "James (1996). Animation, Children's"}


def test_movielens_latest_csv_with_titles_genres_and_tags(tmp_path):
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,10,4.0,20\n1,11,3.5,10\n")
    (tmp_path / "movies.csv").write_text('movieId,title,genres\n10,"Heat, The (1995)",Action|Crime\n'
                                         "11,Untitled (2001),(no genres listed)\n")
    (tmp_path / "tags.csv").write_text("userId,movieId,tag,timestamp\n1,10,heist,1\n2,10,heist,2\n2,10, noir ,3\n")
    ds = load_dataset(tmp_path)
    assert [e.item for e in ds.events] == ["11", "10"]
    assert ds.item_text == {"10": "Heat, The (1995). Action, Crime. tags: heist, noir", "11": "Untitled (2001)"}


def test_plain_csv_and_tsv_with_an_event_column_and_a_byte_order_mark(tmp_path):
    csv = tmp_path / "clicks.csv"
    csv.write_bytes("\ufeffuser_id,item_id,ts,event\nu1,a,2,purchase\nu2,b,1,\nu1,c,3,view\n".encode())
    ds = load_dataset(csv)
    assert ds.name == "clicks" and ds.item_text == {}
    assert ds.events == [Event(1.0, "u2", "b", "click"), Event(2.0, "u1", "a", "purchase"), Event(3.0, "u1", "c", "view")]
    tsv = tmp_path / "events.tsv"
    tsv.write_text("User\tItem\tTime\nu1\ta\t5\n")
    assert load_dataset(tsv).events == [Event(5.0, "u1", "a", "click")]


def test_public_sets_headers_millisecond_and_iso_times_semicolons_and_gzip(tmp_path):
    # RetailRocket's events.csv: visitorid, itemid, event, Unix milliseconds
    (tmp_path / "events.csv").write_text("timestamp,visitorid,event,itemid,transactionid\n"
                                         "1433221332117,257597,view,355908,\n1433224214164,992329,addtocart,248676,\n")
    assert load_dataset(tmp_path).events == [Event(1433221332.117, "257597", "355908", "view"),
                                             Event(1433224214.164, "992329", "248676", "addtocart")]
    with (tmp_path / "events.csv").open("a") as fh:  # an empty id is kept: the replay rejects and counts it
        fh.write("1433224214165,,view,1,\n")
    assert load_dataset(tmp_path).events[-1] == Event(1433224214.165, "", "1", "view")
    # a session log, semicolon-separated, with ISO dates and date-times
    log = tmp_path / "views.csv"
    log.write_text("sessionId;itemId;eventdate\n2;81766;2016-05-09T10:00:00+02:00\n1;31331;2016-05-09\n")
    assert load_dataset(log).events == [Event(1462752000.0, "1", "31331", "click"),
                                        Event(1462780800.0, "2", "81766", "click")]


def test_json_lines_gzipped_as_amazon_ships_its_reviews(tmp_path):
    import gzip
    import json

    path = tmp_path / "reviews_Grocery_5.json.gz"
    rows = [{"reviewerID": "A1", "asin": "B2", "overall": 5.0, "unixReviewTime": 1381449600},
            {"reviewerID": "A3", "asin": "B1", "overall": 4.0, "unixReviewTime": 1370000000}]
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write("\n".join(json.dumps(r) for r in rows) + "\n\n")
    ds = load_dataset(path)
    assert ds.name == "reviews_Grocery_5"
    assert ds.events == [Event(1370000000.0, "A3", "B1", "click"), Event(1381449600.0, "A1", "B2", "click")]
    # Amazon 2023: user_id, parent_asin (the product, not the variant), milliseconds
    (tmp_path / "g.jsonl").write_text('{"user_id": "U", "asin": "V", "parent_asin": "P", "timestamp": 1588615855070}\n')
    assert load_dataset(tmp_path / "g.jsonl").events == [Event(1588615855.07, "U", "P", "click")]
    (tmp_path / "bad.jsonl").write_text('{"user_id": "U", "item_id": "I", "ts": 1}\n{"user_id": "U", \n')
    with pytest.raises(DatasetError, match=r"bad.jsonl:2: not JSON"):
        load_dataset(tmp_path / "bad.jsonl")


@pytest.mark.parametrize("files, message", [
    ({}, "no ratings.csv, u.data"),
    ({"events.csv": "user_id,item_id\nu,a\n"}, "no column among"),
    ({"events.csv": "user_id,item_id,ts\nu,a,yesterday\n"}, ":2: bad timestamp"),
    ({"events.csv": "user_id,item_id,ts\n"}, "no events"),
    ({"u.data": "1\t2\t3\n"}, ":1: expected user"),
    ({"u.data": "1\t2\t3\tnoon\n"}, ":1: bad timestamp"),
    ({"events.csv": "user_id,item_id,ts\nu,a,nan\n"}, ":2: bad timestamp"),
    ({"events.csv": "user_id,item_id,ts\nu,a\n"}, ":2: 2 columns, the header has 3"),
])
def test_what_cannot_be_read_is_a_dataset_error_naming_the_place(tmp_path, files, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(DatasetError, match=message):
        load_dataset(tmp_path)
    with pytest.raises(DatasetError, match="no such file"):
        load_dataset(tmp_path / "missing")
