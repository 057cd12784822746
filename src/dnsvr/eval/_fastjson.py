"""A vectorised reader for the common shape of similarity files, without a Python object per score.

``{"query": {"video": number, ...}, ...}`` as written by the reference code or by
``json.dump``: one object of flat objects with numeric values. Each query's block is
scanned with numpy: quote positions give the keys; with keys, quotes and colons blanked,
what is left (``number , number , ...``) is read by numpy's C text reader, which is
correctly rounded like Python's ``float``. Keys are decoded once per distinct key sequence: when a
query's keys equal the previous query's (the usual "every query against the whole
database" file), the previous list is reused.

The sign of a zero score is not kept (``-0.0`` reads as ``0.0``; it ranks the same).
Anything outside that shape (escapes, nested values, strings, ``NaN``, duplicate keys)
raises :class:`FastPathUnavailable`, and the caller parses the file with
a general JSON parser instead.
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

_QUERY_KEY = re.compile(rb'[ \t\n\r]*"([^"\\]*)"[ \t\n\r]*:[ \t\n\r]*\{')
_AFTER_BLOCK = re.compile(rb"[ \t\n\r]*([,}])")
_OPEN = re.compile(rb"[ \t\n\r]*\{")
_EMPTY_REST = re.compile(rb"[ \t\n\r]*\}[ \t\n\r]*\Z")
_TRAILING_WS = re.compile(rb"[ \t\n\r]*\Z")
_WS = re.compile(rb"[ \t\n\r]*")


class FastPathUnavailable(ValueError):
    """The text is not in the shape this reader handles; use a general JSON parser."""


@dataclass
class _Keys:
    keys: list[str]
    lengths: np.ndarray
    raw: np.ndarray  # the key bytes, concatenated


def _key_bytes(sub: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Positions of the bytes of the spans ``sub[starts[i]:starts[i] + lengths[i]]``, concatenated."""
    shift = starts - np.concatenate(([0], np.cumsum(lengths)[:-1]))
    return np.repeat(shift, lengths) + np.arange(int(lengths.sum()))


def _parse_numbers(sub: np.ndarray, quotes: np.ndarray, key_index: np.ndarray, n: int) -> np.ndarray:
    """The n numbers of a block: keys, quotes and colons blanked, the rest read by numpy's C
    text reader (correctly rounded, like ``float``). Anything but whitespace, numbers and the
    separating commas makes the reader stop early, which is detected."""
    text = sub.copy()
    text[key_index] = 32
    text[quotes] = 32
    colon_after_key = quotes[1::2] + 1
    if colon_after_key[-1] < text.size and np.all(text[colon_after_key] == 58):
        text[colon_after_key] = 32  # the usual '"key":' (no space before the colon)
    else:
        colons = text == 58
        if int(np.count_nonzero(colons)) != n:
            raise FastPathUnavailable("not one colon per key")
        text[colons] = 32
    if int(np.count_nonzero(text == 44)) != n - 1:
        raise FastPathUnavailable("not one comma between entries")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            values = np.fromstring(text.tobytes(), dtype=np.float64, sep=",")
        except (ValueError, DeprecationWarning) as exc:
            raise FastPathUnavailable(f"a value that is not a plain number ({exc})") from exc
    if values.size != n:
        raise FastPathUnavailable(f"{values.size} numbers for {n} keys")
    if np.isnan(values).any():
        raise FastPathUnavailable("NaN score")
    values[values == 0] = 0.0  # JSON's -0 is the integer 0; keep one zero
    return values


def _parse_block(data: bytes, buf: np.ndarray, start: int, end: int,
                 prev: _Keys | None) -> tuple[_Keys, np.ndarray]:
    """One query's ``"key": number, ...`` (the bytes between its braces)."""
    sub = buf[start:end]
    quotes = np.flatnonzero(sub == 34)
    if quotes.size % 2:
        raise FastPathUnavailable("unbalanced quotes")
    if quotes.size == 0:
        if _WS.match(data, start).end() < end:
            raise FastPathUnavailable("non-empty block without keys")
        return _Keys([], np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.uint8)), np.zeros(0)
    if _WS.match(data, start).end() != start + int(quotes[0]):
        raise FastPathUnavailable("text before the first key")
    key_start = quotes[0::2] + 1
    key_end = quotes[1::2]
    lengths = key_end - key_start
    key_index = _key_bytes(sub, key_start, lengths)
    scores = _parse_numbers(sub, quotes, key_index, key_start.size)
    raw = sub[key_index]
    if prev is not None and np.array_equal(lengths, prev.lengths) and np.array_equal(raw, prev.raw):
        return prev, scores
    try:
        keys = [data[start + a:start + b].decode("utf-8") for a, b in zip(key_start.tolist(), key_end.tolist())]
    except UnicodeDecodeError as exc:
        raise FastPathUnavailable(f"invalid UTF-8 ({exc})") from exc
    if len(set(keys)) != len(keys):
        raise FastPathUnavailable("duplicate keys")
    return _Keys(keys, lengths, raw), scores


def parse_similarities(data: bytes) -> list[tuple[str, list[str], np.ndarray]]:
    """Parse ``{query: {video: number}}`` into ``(query, keys, scores)`` rows, in file order.

    Consecutive queries with equal keys share the same ``keys`` list object.

    Args:
        data: the JSON text (UTF-8).

    Returns:
        One ``(query, keys, float64 scores)`` per query.

    Raises:
        FastPathUnavailable: if the text is not in the handled shape (parse it with a JSON parser).
    """
    if b"\\" in data:
        raise FastPathUnavailable("escape sequences")
    opened = _OPEN.match(data, 0)
    if opened is None:
        raise FastPathUnavailable("not an object")
    pos = opened.end()
    if _EMPTY_REST.match(data, pos):
        return []
    buf = np.frombuffer(data, dtype=np.uint8)
    rows: list[tuple[str, list[str], np.ndarray]] = []
    seen: set[str] = set()
    prev: _Keys | None = None
    while True:
        match = _QUERY_KEY.match(data, pos)
        if match is None:
            raise FastPathUnavailable(f"unexpected text at byte {pos}")
        query = match.group(1).decode("utf-8", errors="strict")
        if query in seen:
            raise FastPathUnavailable(f"duplicate query {query!r}")
        seen.add(query)
        start = match.end()
        end = data.find(b"}", start)
        if end < 0:
            raise FastPathUnavailable("unterminated block")
        prev, scores = _parse_block(data, buf, start, end, prev)
        rows.append((query, prev.keys, scores))
        after = _AFTER_BLOCK.match(data, end + 1)
        if after is None:
            raise FastPathUnavailable(f"unexpected text after the block of {query!r}")
        if after.group(1) == b"}":
            if _TRAILING_WS.match(data, after.end()) is None:
                raise FastPathUnavailable("text after the end")
            return rows
        pos = after.end()
