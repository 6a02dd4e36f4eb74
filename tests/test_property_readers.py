"""Property test of the dataset readers fed malformed files: for every format, files mixing valid lines with
wrong field counts, non-numeric or huge ids, bad or missing timestamps, control characters, undecodable bytes,
unbalanced quotes and blank lines, read in chunks of random size. Each file either raises a ``ValueError``
naming the file and the first bad line, or (no bad line) parses to exactly the valid lines -- never a wrong
log in silence. KuaiRec rows without a timestamp are the one kind skipped, and counted in the warning."""
import warnings
from decimal import ROUND_FLOOR, Decimal

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from fuxi_linear.data import delimited
from fuxi_linear.data.loaders import (load_csv, load_kuairand, load_kuairec, load_movielens_100k,
                                      load_movielens_1m, load_movielens_20m, load_recbole)
from property_settings import examples


class Format:
    """One file format: its loader, separator, header, field count, where the user/item/time fields are, whether
    ids are integers or tokens, the time's scale (3: seconds with a fraction, read as milliseconds)."""

    def __init__(self, name, load, sep, header, fields, user, item, time, ids="int", scale=0, encoding="utf-8",
                 quoted=False, missing_time_skipped=False):
        self.name, self.load, self.sep, self.header, self.fields = name, load, sep, header, fields
        self.user, self.item, self.time, self.ids, self.scale = user, item, time, ids, scale
        self.encoding, self.quoted, self.missing_time_skipped = encoding, quoted, missing_time_skipped


FORMATS = [
    Format("ml-100k", load_movielens_100k, "\t", None, 4, 0, 1, 3),
    Format("ml-1m", load_movielens_1m, "::", None, 4, 0, 1, 3, encoding="latin-1"),
    Format("ml-20m", load_movielens_20m, ",", "userId,movieId,rating,timestamp", 4, 0, 1, 3, quoted=True),
    Format("kuairec", load_kuairec, ",", "user_id,video_id,play_duration,video_duration,time,date,timestamp,"
           "watch_ratio", 8, 0, 1, 6, scale=3, quoted=True, missing_time_skipped=True),
    Format("kuairand", load_kuairand, ",", "user_id,video_id,date,hourmin,time_ms,is_click,tab", 7, 0, 1, 4,
           quoted=True),
    Format("recbole", load_recbole, "\t", "user_id:token\titem_id:token\trating:float\ttimestamp:float", 4, 0, 1,
           3, ids="token"),
    Format("csv", lambda p: load_csv(p, "user", "item", "ts"), ",", "user,item,ts,note", 4, 0, 1, 2, ids="token",
           quoted=True),
]

SAFE = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-."
BAD_INTS = ["abc", "1.5", "1e3", "12a", "-", "0x1f", "\u0661\u0662", "1_000", "99999999999999999999", "+-1",
            "1 2", "", " "]
BAD_TOKENS = ["", " ", "a\x00", "\x00a", "a\x01b", "id\x7f", "a\x1b"]
BAD_TIMES = ["abc", "", "inf", "-inf", "99999999999999999999999", "12:30", "1.2.3", "--5", "nan", "NaN"]


def _encodable(text, encoding):
    try:
        text.encode(encoding)
        return True
    except UnicodeEncodeError:
        return False


def _other(draw):
    """An ignored field's text: letters, digits, spaces, a non-ASCII letter (never the separator or a quote)."""
    return draw(st.text(alphabet=SAFE + " \u00e9", max_size=6))


@st.composite
def valid_row(draw, fmt):
    if fmt.ids == "int":
        user, item = (str(draw(st.integers(0, 10 ** 6))) for _ in range(2))
        pad = draw(st.sampled_from(["", " "]))
        user_text, item_text = pad + user + pad, item
        want_user, want_item = int(user), int(item)
    else:
        user = draw(st.text(alphabet=SAFE, min_size=1, max_size=6))
        item = draw(st.one_of(st.text(alphabet=SAFE, min_size=1, max_size=6), st.integers(0, 999).map(str)))
        user_text, item_text = user, item
        if fmt.quoted and draw(st.booleans()):
            item_text = f'"{item}"'  # a quoted id
        want_user, want_item = user, item
    seconds = draw(st.integers(0, 2 ** 40))
    if fmt.scale:
        frac = draw(st.text(alphabet="0123456789", max_size=3))
        time_text = f"{seconds}.{frac}" if frac else str(seconds)
        want_time = int((Decimal(time_text) * 10 ** fmt.scale).to_integral_value(rounding=ROUND_FLOOR))
    else:
        time_text, want_time = str(seconds), seconds
    cells = [_other(draw) for _ in range(fmt.fields)]
    cells[fmt.user], cells[fmt.item], cells[fmt.time] = user_text, item_text, time_text
    return {"cells": cells, "want": (str(want_user), str(want_item), want_time), "kind": "valid"}


@st.composite
def bad_row(draw, fmt):
    """A row every reader must refuse (or, for a KuaiRec missing time, skip and count)."""
    row = draw(valid_row(fmt))
    cells = list(row["cells"])
    kinds = ["fewer fields", "more fields", "bad user", "bad item", "bad time", "bad bytes"]
    if fmt.quoted:
        kinds.append("open quote")
    if fmt.missing_time_skipped:
        kinds.append("missing time")
    kind = draw(st.sampled_from(kinds))
    out = {"kind": kind}
    if kind == "fewer fields":
        del cells[draw(st.integers(0, len(cells) - 1))]
    elif kind == "more fields":
        cells.insert(draw(st.integers(0, len(cells))), _other(draw))
    elif kind in ("bad user", "bad item"):
        where = fmt.user if kind == "bad user" else fmt.item
        cells[where] = draw(st.sampled_from([v for v in (BAD_INTS if fmt.ids == "int" else BAD_TOKENS)
                                             if _encodable(v, fmt.encoding)]))
    elif kind == "missing time":
        cells[fmt.time] = draw(st.sampled_from(["", "nan", "NaN", " "]))
    elif kind == "bad time":
        value = draw(st.sampled_from(BAD_TIMES))
        cells[fmt.time] = value
        if value.strip().lower() in ("", "nan") and fmt.missing_time_skipped:
            out["kind"] = "missing time"  # skipped and counted, not an error
            out["cells"] = cells
            return out
    elif kind == "bad bytes":  # bytes that are invalid in the file's encoding, inside a field that is read
        where = draw(st.sampled_from([fmt.user, fmt.item, fmt.time]))
        cells[where] = cells[where].strip() + "\udcff"  # written back as the raw byte 0xff (surrogateescape)
        if fmt.encoding == "latin-1":  # every byte is a latin-1 character: 'ÿ' inside a number, still bad
            cells[where] = cells[where].replace("\udcff", "\u00ff")
    elif kind == "open quote":
        where = draw(st.sampled_from([fmt.user, fmt.item, fmt.time]))
        cells[where] = '"' + cells[where].strip('"')
    out["cells"] = cells
    return out


@st.composite
def files(draw):
    """A file of one format: valid lines, up to two bad ones (or KuaiRec lines without a time) at random
    places, blank lines; read in chunks of 1-7 lines, with LF or CRLF line ends."""
    fmt = draw(st.sampled_from(FORMATS))
    rows = [draw(valid_row(fmt)) for _ in range(draw(st.integers(0, 8)))]
    for _ in range(draw(st.sampled_from([0, 1, 1, 1, 2]))):
        rows.insert(draw(st.integers(0, len(rows))), draw(bad_row(fmt)))
    for _ in range(draw(st.integers(0, 2))):
        blank = {"kind": "blank", "cells": None, "text": draw(st.sampled_from(["", "  ", "\t"]))}
        rows.insert(draw(st.integers(0, len(rows))), blank)
    return fmt, rows, draw(st.integers(1, 7)), draw(st.sampled_from(["\n", "\r\n"]))


def _write(path, fmt, rows, newline):
    lines = [] if fmt.header is None else [fmt.header]
    for r in rows:
        if r["cells"] is None:
            # a tab is a field separator in tab-separated files, not blank space
            lines.append("" if fmt.sep == "\t" and r["text"] == "\t" else r["text"])
        else:
            lines.append(fmt.sep.join(r["cells"]))
    data = "".join(line + newline for line in lines)
    path.write_bytes(data.encode(fmt.encoding, errors="surrogateescape"))


def _log_events(log):
    events = {}
    for u in range(log.num_users):
        items, times = log.user_events(u)
        events[str(log.user_raw_ids[u])] = [(str(log.item_raw_ids[i - 1]), int(t)) for i, t in zip(items, times)]
    return events


def _expected_events(rows):
    events = {}
    for order, r in enumerate(rows):
        if r["kind"] == "valid":
            user, item, t = r["want"]
            events.setdefault(user, []).append((t, order, item))
    return {u: [(item, t) for t, _, item in sorted(evs)] for u, evs in events.items()}


@settings(max_examples=examples(400))
@given(files())
def test_readers_refuse_or_parse_exactly(tmp_path_factory, case):
    fmt, rows, chunk_lines, newline = case
    path = tmp_path_factory.mktemp(fmt.name) / "data.txt"
    _write(path, fmt, rows, newline)
    first_line = 1 if fmt.header is None else 2
    bad = [first_line + i for i, r in enumerate(rows) if r["kind"] not in ("valid", "blank", "missing time")]
    skipped = sum(r["kind"] == "missing time" for r in rows)
    for r in rows:  # what the examples covered (pytest --hypothesis-show-statistics)
        event(f"{fmt.name}: {r['kind']}")
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mp.setattr(delimited, "_CHUNK_LINES", chunk_lines)  # chunks of a few lines: fast and slow paths mix
        try:
            log = fmt.load(path)
        except ValueError as err:
            message = str(err)
            assert str(path) in message, message
            if bad:
                assert f"line {bad[0]}" in message, f"expected an error at line {bad[0]}, got: {message}"
                return
            assert not any(r["kind"] == "valid" for r in rows), f"valid file refused: {message}"
            assert "no interactions" in message or "empty" in message, message
            return
    assert not bad, f"lines {bad} ({[rows[i - first_line]['kind'] for i in bad]}) were accepted"
    assert _log_events(log) == _expected_events(rows)
    if skipped:
        assert any(f"dropped {skipped} rows with a missing timestamp" in str(w.message) for w in caught), caught


@pytest.mark.parametrize("fmt", FORMATS, ids=[f.name for f in FORMATS])
@pytest.mark.parametrize("content", ["", "\n\n  \n"], ids=["empty", "blank"])
def test_empty_files_fail_naming_the_file(tmp_path, fmt, content):
    path = tmp_path / "data.txt"
    path.write_text(content)
    with pytest.raises(ValueError, match="data.txt"):
        fmt.load(path)
    if fmt.header is not None:
        path.write_text(fmt.header + "\n")
        with pytest.raises(ValueError, match=r"data\.txt: no interactions found"):
            fmt.load(path)
