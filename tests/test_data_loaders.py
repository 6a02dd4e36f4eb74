"""Dataset loaders on small fixture files written into tmp_path."""

import os

import numpy as np
import pytest

import dataclasses

from fuxi_linear.config import default_temporal_periods
from fuxi_linear.data import catalogue, delimited
from fuxi_linear.data.catalogue import load_dataset
from fuxi_linear.data.loaders import (
    load_csv,
    load_kuairand,
    load_kuairec,
    load_movielens_1m,
    load_movielens_20m,
    load_movielens_100k,
    load_recbole,
)


def _write(path, text, encoding="utf-8"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def _events(log):
    """(raw user, raw item, timestamp) triples in log order."""
    return [
        (log.user_raw_ids[u].item(), log.item_raw_ids[i - 1].item(), int(t))
        for u, i, t in zip(log.user_ids, log.item_ids, log.timestamps)
    ]


# ------------------------------------------------------------------ MovieLens


def test_ml100k_parses_sorts_and_keeps_tie_order(tmp_path):
    path = _write(
        tmp_path / "u.data",
        "196\t242\t3\t881250949\n"
        "22\t377\t1\t878887116\n"
        "196\t302\t4\t881250949\n"  # same user + timestamp as row 1: must stay after it
        "196\t51\t2\t881250000\n",
    )
    log = load_movielens_100k(path)
    assert log.timestamp_unit == "s" and log.name == "ml-100k"
    assert _events(log) == [
        (22, 377, 878887116),
        (196, 51, 881250000),
        (196, 242, 881250949),
        (196, 302, 881250949),
    ]
    # Dense ids: users 0..U-1, items 1..N.
    assert log.user_ids.tolist() == [0, 1, 1, 1]
    assert sorted(set(log.item_ids.tolist())) == [1, 2, 3, 4]


def test_ml100k_garbled_line_reports_line_number(tmp_path):
    path = _write(tmp_path / "u.data", "1\t2\t3\t100\n1\t3\t4\t101\n1\tx\t4\t102\n")
    with pytest.raises(ValueError, match=r"u\.data, line 3.*integer"):
        load_movielens_100k(path)
    path = _write(tmp_path / "short" / "u.data", "1\t2\t3\t100\n1\t3\n")
    with pytest.raises(ValueError, match=r"u\.data, line 2: expected 4 fields"):
        load_movielens_100k(path)


def test_missing_file_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.data"):
        load_movielens_100k(tmp_path / "nope.data")


def test_ml1m_latin1_and_double_colon(tmp_path):
    path = _write(
        tmp_path / "ratings.dat",
        "1::1193::5::978300760\n2::1193::3::978300700\n1::661::3::978302109\n",
        encoding="latin-1",
    )
    log = load_movielens_1m(path)
    assert _events(log) == [(1, 1193, 978300760), (1, 661, 978302109), (2, 1193, 978300700)]
    # A latin-1 character in a garbled line: a clear ValueError (not a
    # UnicodeDecodeError) naming the line.
    bad = _write(
        tmp_path / "bad" / "ratings.dat",
        "1::1193::5::978300760\n1::Am\xe9lie::4::978300761\n",
        encoding="latin-1",
    )
    with pytest.raises(ValueError, match=r"ratings\.dat, line 2.*Am\xe9lie"):
        load_movielens_1m(bad)


def test_ml20m_header_by_name(tmp_path):
    path = _write(
        tmp_path / "ratings.csv",
        "userId,movieId,rating,timestamp\n1,2,3.5,1112486027\n1,29,3.5,1112484676\n",
    )
    log = load_movielens_20m(path)
    assert _events(log) == [(1, 29, 1112484676), (1, 2, 1112486027)]
    bad = _write(tmp_path / "b" / "ratings.csv", "user,movieId,rating,timestamp\n1,2,3.5,1\n")
    with pytest.raises(ValueError, match="userId"):
        load_movielens_20m(bad)
    garbled = _write(tmp_path / "g" / "ratings.csv", "userId,movieId,rating,timestamp\n1,2,3.5,1\n1,3,4.0,\n")
    with pytest.raises(ValueError, match=r"ratings\.csv, line 3"):
        load_movielens_20m(garbled)


def test_fast_path_chunks_and_slow_path_agree(tmp_path, monkeypatch):
    # Small chunks so several chunks go through numpy, one through Python
    # (the line with spaces around its values is still valid).
    monkeypatch.setattr(delimited, "_CHUNK_LINES", 3)
    rows = [f"{u},{i},1.0,{1000 + i}" for u, i in [(1, 1), (2, 5), (1, 3), (3, 3), (2, 2), (1, 9), (3, 4)]]
    rows[4] = " 2 , 2 ,1.0, 1002 "
    path = _write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n" + "\n".join(rows) + "\n\n")
    log = load_movielens_20m(path)
    assert log.num_events == 7
    assert _events(log) == [
        (1, 1, 1001), (1, 3, 1003), (1, 9, 1009),
        (2, 2, 1002), (2, 5, 1005),
        (3, 3, 1003), (3, 4, 1004),
    ]
    # A line with an extra field is an error, named (two records run together would otherwise be read as one).
    extra = list(rows)
    extra[4] = " 2 , 2 ,1.0, 1002 ,extra"
    path = _write(tmp_path / "e" / "ratings.csv", "userId,movieId,rating,timestamp\n" + "\n".join(extra) + "\n")
    with pytest.raises(ValueError, match=r"ratings\.csv, line 6: expected 4 fields separated by ',', found 5"):
        load_movielens_20m(path)
    # Line numbers stay physical across chunks (header = line 1).
    rows[5] = "1,9,1.0,12x"
    path = _write(tmp_path / "x" / "ratings.csv", "userId,movieId,rating,timestamp\n" + "\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=r"line 7"):
        load_movielens_20m(path)


# ------------------------------------------------------------------ Kuaishou


KUAIREC_HEADER = "user_id,video_id,play_duration,video_duration,time,date,timestamp,watch_ratio\n"


def test_kuairec_exact_milliseconds(tmp_path):
    path = _write(
        tmp_path / "big_matrix.csv",
        KUAIREC_HEADER
        + "14,148,4381,6067,2020-07-05 05:27:48.378,20200705,1593898068.378,0.722\n"
        + "14,183,11635,6100,2020-07-05 05:28:00.057,20200705,1593898080.057,1.907\n"
        + "14,3649,22422,10867,2020-07-05 05:29:09.479,20200705,1593898149.479,2.063\n"
        + "19,100,1,1,2020-07-05 05:29:09.479,20200705,1593878903.4,2.0\n"
        + "19,101,1,1,2020-07-05 05:29:09.479,20200705,1593878903,2.0\n",
    )
    log = load_kuairec(path)
    assert log.timestamp_unit == "ms" and log.timestamps.dtype == np.int64
    assert _events(log) == [
        (14, 148, 1593898068378),
        (14, 183, 1593898080057),
        (14, 3649, 1593898149479),
        (19, 101, 1593878903000),
        (19, 100, 1593878903400),
    ]


def test_kuairec_header_checked_by_name_and_missing_timestamps(tmp_path):
    # Columns in a different order still work.
    path = _write(
        tmp_path / "big_matrix.csv",
        "timestamp,video_id,user_id\n1593898068.378,5,1\nnan,6,1\n1593898069.000,7,1\n",
    )
    with pytest.warns(UserWarning, match="dropped 1 rows"):
        log = load_kuairec(path)
    assert _events(log) == [(1, 5, 1593898068378), (1, 7, 1593898069000)]
    with pytest.raises(ValueError, match=r"big_matrix\.csv, line 3.*missing timestamp"):
        load_kuairec(path, drop_missing_timestamps=False)
    bad = _write(tmp_path / "h" / "big_matrix.csv", "user_id,item_id,timestamp\n1,2,3\n")
    with pytest.raises(ValueError, match="video_id"):
        load_kuairec(bad)


KUAIRAND_HEADER = "user_id,video_id,date,hourmin,time_ms,is_click,is_like,play_time_ms\n"


def test_kuairand_directory_sorted_files_and_filter(tmp_path):
    d = tmp_path / "KuaiRand-27K" / "data"
    _write(d / "log_standard_4_22_to_5_08_27k_part1.csv", KUAIRAND_HEADER + "0,30,20220422,900,1650590000000,1,0,5\n")
    _write(
        d / "log_standard_4_08_to_4_21_27k_part1.csv",
        KUAIRAND_HEADER
        + "0,10,20220408,1000,1649390000000,0,0,5\n"
        + "0,20,20220408,1000,1649390000000,1,0,5\n",
    )
    _write(d / "user_features_27k.csv", "user_id,foo\n0,1\n")  # ignored
    for path in (d, d.parent):  # directory or its parent (data/ subfolder)
        log = load_kuairand(path)
        assert log.timestamp_unit == "ms"
        assert _events(log) == [(0, 10, 1649390000000), (0, 20, 1649390000000), (0, 30, 1650590000000)]
    clicked = load_kuairand(d, positive_column="is_click")
    assert [e[1] for e in _events(clicked)] == [20, 30]
    # An explicit list is read in file-name order as well.
    files = sorted(d.glob("log_standard_*.csv"), reverse=True)
    assert _events(load_kuairand(files)) == _events(log)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="log_standard"):
        load_kuairand(tmp_path / "empty")


def test_kuairand_garbled_line_names_file(tmp_path):
    d = tmp_path / "kr"
    _write(d / "log_standard_a.csv", KUAIRAND_HEADER + "0,10,20220408,1000,1649390000000,0,0,5\n")
    _write(d / "log_standard_b.csv", KUAIRAND_HEADER + "0,10,20220408,1000,1649390000000,0,0,5\n1,11,2022,10,oops,0,0,5\n")
    with pytest.raises(ValueError, match=r"log_standard_b\.csv, line 3"):
        load_kuairand(d)


# ------------------------------------------------------------------ RecBole / CSV


def test_recbole_inter_with_float_timestamps(tmp_path):
    path = _write(
        tmp_path / "ml-1m.inter",
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        "1\t1193\t5\t978300760.0\n"
        "1\t661\t3\t978302109.9\n"
        "2\t1193\t3\t978300700\n",
    )
    log = load_recbole(path)
    assert log.name == "ml-1m" and log.user_raw_ids.dtype == np.int64
    assert _events(log) == [(1, 1193, 978300760), (1, 661, 978302109), (2, 1193, 978300700)]
    custom = _write(
        tmp_path / "c.inter",
        "session:token\tts:float\tproduct:token\nsA\t5.5\tp1\nsA\t4.0\tp2\nsB\t1\tp1\n",
    )
    log = load_recbole(custom, user_field="session", item_field="product", time_field="ts", time_unit="ms")
    assert log.timestamp_unit == "ms"
    assert _events(log) == [("sA", "p2", 4), ("sA", "p1", 5), ("sB", "p1", 1)]
    with pytest.raises(ValueError, match="item_id"):
        load_recbole(custom)
    with pytest.raises(ValueError, match="time_unit"):
        load_recbole(path, time_unit="us")


def test_generic_csv(tmp_path):
    path = _write(
        tmp_path / "log.tsv",
        'who\twhat\twhen\n"alice"\tbook 1\t10\nbob\tbook 2\t3\nalice\tbook 2\t7\nalice\t007\t7\n',
    )
    log = load_csv(path, "who", "what", "when", sep="\t", time_unit="s")
    assert log.user_raw_ids.tolist() == ["alice", "bob"]
    assert _events(log) == [("alice", "book 2", 7), ("alice", "007", 7), ("alice", "book 1", 10), ("bob", "book 2", 3)]
    # Column indices without a header, seconds -> milliseconds.
    nohdr = _write(tmp_path / "n.csv", "1,5,1.25\n1,6,2\n")
    log = load_csv(nohdr, 0, 1, 2, has_header=False, time_unit="ms", source_time_unit="s")
    assert _events(log) == [(1, 5, 1250), (1, 6, 2000)]
    with pytest.raises(ValueError, match="user_col"):
        load_csv(nohdr, "u", 1, 2, has_header=False)
    with pytest.raises(ValueError, match="distinct"):
        load_csv(nohdr, 0, 0, 2, has_header=False)
    with pytest.raises(ValueError, match="sep"):
        load_csv(nohdr, 0, 1, 2, sep="::", has_header=False)
    with pytest.raises(ValueError, match=r"n2\.csv, line 2"):
        load_csv(_write(tmp_path / "n2.csv", "1,5,1\n1,,2\n"), 0, 1, 2, has_header=False)
    with pytest.raises(ValueError, match="no interactions"):
        load_csv(_write(tmp_path / "h.csv", "a,b,c\n"), "a", "b", "c")


# ------------------------------------------------------------------ dispatcher


def test_load_dataset_dispatch_and_directories(tmp_path):
    _write(tmp_path / "ml-100k" / "u.data", "1\t2\t3\t4\n")
    _write(tmp_path / "ml-1m" / "ratings.dat", "1::2::3::4\n")
    for name, path in [
        ("ml-100k", tmp_path / "ml-100k"),
        ("ML_100K", tmp_path),  # parent directory + case/underscore tolerant
        ("ml-1m", tmp_path / "ml-1m" / "ratings.dat"),
    ]:
        log = load_dataset(name, path)
        assert _events(log) == [(1, 2, 4)]
    with pytest.raises(ValueError, match="valid names: ml-100k, ml-1m"):
        load_dataset("netflix", tmp_path)
    with pytest.raises(FileNotFoundError, match="ratings.csv"):
        load_dataset("ml-20m", tmp_path)
    with pytest.raises(ValueError, match="data_path is required"):
        load_dataset("ml-1m")
    syn = load_dataset("synthetic", num_users=4, num_items=40, mean_events=12, seed=1)
    assert syn.num_users == 4 and syn.timestamp_unit == "s"
    csv_log = load_dataset("csv", _write(tmp_path / "x.csv", "u,i,t\n1,2,3\n"), user_col="u", item_col="i", time_col="t")
    assert _events(csv_log) == [(1, 2, 3)]


def test_load_dataset_cache_hit_skips_parsing(tmp_path, monkeypatch):
    data = _write(tmp_path / "u.data", "1\t2\t3\t4\n1\t3\t3\t5\n2\t2\t3\t6\n")
    cache = tmp_path / "cache"
    calls = []
    real = load_movielens_100k

    def use(loader):
        entry = dataclasses.replace(catalogue.DATASETS["ml-100k"], loader=loader)
        monkeypatch.setitem(catalogue.DATASETS, "ml-100k", entry)

    def counting(path, **kwargs):
        calls.append(path)
        return real(path, **kwargs)

    use(counting)
    first = load_dataset("ml-100k", data, cache_dir=cache)
    assert len(calls) == 1 and len(list(cache.glob("ml-100k-*.npz"))) == 1

    def boom(path, **kwargs):
        raise AssertionError("parser called despite a cache hit")

    use(boom)
    second = load_dataset("ml-100k", data, cache_dir=cache)
    assert np.array_equal(first.item_ids, second.item_ids)
    assert np.array_equal(first.timestamps, second.timestamps)
    # Different preprocessing -> different key -> parses again.
    use(counting)
    load_dataset("ml-100k", data, cache_dir=cache, min_user_events=2)
    assert len(calls) == 2
    # Modified file (size + mtime change) -> cache miss.
    with open(data, "a") as fh:
        fh.write("3\t4\t1\t7\n")
    os.utime(data, ns=(1, 1))
    log = load_dataset("ml-100k", data, cache_dir=cache)
    assert len(calls) == 3 and log.num_events == 4


def test_default_temporal_periods():
    assert default_temporal_periods("ms") == {"base": 2, "start": 10, "stride": 3, "num_periods": 8}
    assert default_temporal_periods("s") == {"base": 16, "start": 0, "stride": 1, "num_periods": 8}
    with pytest.raises(ValueError, match="timestamp_unit"):
        default_temporal_periods("h")


def test_decimal_timestamps_match_exact_decimal_arithmetic(tmp_path, monkeypatch):
    from decimal import ROUND_FLOOR, Decimal

    rng = np.random.default_rng(0)
    cells = []
    for k in range(300):
        sec = int(rng.integers(1_500_000_000, 1_700_000_000))
        digits = "".join(str(d) for d in rng.integers(0, 10, int(rng.integers(0, 6))))
        cells.append(f"{sec}.{digits}" if digits or k % 2 else str(sec))
    cells[5] = " 1593878903.4385 "  # blanks + a 4th decimal (truncated)
    cells[7] = "1.5938789034e9"  # exponent: only the exact Python parser takes it
    body = "".join(f"1,{k + 1},{c}\n" for k, c in enumerate(cells))
    path = _write(tmp_path / "big_matrix.csv", "user_id,video_id,timestamp\n" + body)
    expected = [
        int((Decimal(c.strip()) * 1000).to_integral_value(rounding=ROUND_FLOOR)) for c in cells
    ]
    for chunk in (1 << 19, 4):  # one numpy chunk (rejected -> Python) and many small ones
        monkeypatch.setattr(delimited, "_CHUNK_LINES", chunk)
        log = load_kuairec(path)
        by_item = dict(zip(log.item_raw_ids[log.item_ids - 1].tolist(), log.timestamps.tolist()))
        assert [by_item[k + 1] for k in range(len(cells))] == expected
    assert expected[5] == 1593878903438


def test_undecodable_bytes_in_token_column(tmp_path):
    path = tmp_path / "bytes.csv"
    path.write_bytes(b"u,i,t\n1,2,4\n1,\xff3,5\n")
    with pytest.raises(ValueError, match=r"bytes\.csv, line 3.*invalid in this encoding"):
        load_csv(path, "u", "i", "t")
