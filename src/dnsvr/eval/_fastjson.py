"""Fast readers for the common shape of similarity files, without a Python object per score.

``{"query": {"video": number, ...}, ...}`` as written by the reference code or by
``json.dump``: one object of flat objects with numeric values. :func:`parse_similarities`
returns the ids once (a vocabulary in first-seen order) and, per query, int64 vocabulary
positions and float64 scores; consecutive queries with the same keys in the same order (the
usual "every query against the whole database" file) share one position array.

Two implementations of the same reader:

* the compiled scanner ``dnsvr.eval._simscan`` (C, built with the package: ``pip install .``,
  or ``python setup.py build_ext --inplace`` in a source checkout). It runs without the GIL on
  up to two threads, interns keys in a C hash table, and converts numbers exactly like
  Python's ``float`` (so the scores equal ``json.loads``'s bit for bit, ``-0.0`` included).
* a numpy fallback, used when the extension is not built (logged once): each query's block is
  scanned with numpy — quote positions give the keys; with keys, quotes and colons blanked,
  what is left (``number , number , ...``) is read by numpy's C text reader, which is correctly
  rounded like Python's ``float``. It does not keep the sign of a zero score (``-0.0`` reads as
  ``0.0``; it ranks the same) and is several times slower.

Anything outside that shape (escapes, nested values, strings, ``NaN``, duplicate keys,
numbers beyond the float range) raises :class:`FastPathUnavailable`, and the caller parses
the file with a general JSON parser instead.

:func:`parse_similarities_gzip` reads large gzip-compressed files with the compiled scanner
following a second thread that inflates them, so that the scan costs little beyond inflating.
"""

from __future__ import annotations

import logging
import mmap
import os
import re
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

try:
    from dnsvr.eval import _simscan
except ImportError as _exc:  # the extension is not built: the numpy reader takes over
    _simscan = None
    _SIMSCAN_MISSING = f"{_exc}"
else:
    _SIMSCAN_MISSING = ""

logger = logging.getLogger(__name__)

_QUERY_KEY = re.compile(rb'[ \t\n\r]*"([^"\\\x00-\x1f]*)"[ \t\n\r]*:[ \t\n\r]*\{')
_AFTER_BLOCK = re.compile(rb"[ \t\n\r]*([,}])")
_OPEN = re.compile(rb"[ \t\n\r]*\{")
_EMPTY_REST = re.compile(rb"[ \t\n\r]*\}[ \t\n\r]*\Z")
_TRAILING_WS = re.compile(rb"[ \t\n\r]*\Z")
_WS = re.compile(rb"[ \t\n\r]*")
_warned_missing = False


class FastPathUnavailable(ValueError):
    """The text is not in the shape this reader handles; use a general JSON parser.

    Attributes:
        text: the (inflated) text, when the reader had to produce it (gzip input), else None.
    """

    def __init__(self, message: str, text: bytes | bytearray | None = None) -> None:
        super().__init__(message)
        self.text = text


class Vocabulary:
    """Ids → positions, in first-seen order.

    :meth:`positions` maps a row's keys to an int64 position array; a row whose keys equal the
    previous row's (the same list object, or an equal list) gets the previous array back.
    """

    def __init__(self) -> None:
        self.index: dict[str, int] = {}
        self._prev_keys: list[str] | None = None
        self._prev_pos: np.ndarray | None = None

    def add(self, key: str) -> int:
        """The position of ``key``, added at the end if new."""
        return self.index.setdefault(key, len(self.index))

    def positions(self, keys: list[str]) -> np.ndarray:
        """int64 positions of ``keys`` (new ones added in order)."""
        if self._prev_keys is not None and (keys is self._prev_keys or keys == self._prev_keys):
            return self._prev_pos  # type: ignore[return-value]
        index = self.index
        missing = [k for k in dict.fromkeys(keys) if k not in index]
        index.update(zip(missing, range(len(index), len(index) + len(missing))))
        positions = np.fromiter(map(index.__getitem__, keys), dtype=np.int64, count=len(keys))
        self._prev_keys, self._prev_pos = keys, positions
        return positions


@dataclass
class ParsedSimilarities:
    """A similarity file as a vocabulary plus arrays.

    Attributes:
        ids: every id (queries and result videos) in first-seen order, a query before its results.
        rows: per query, in file order, ``(query, query_pos, positions, scores)``: its id, its
            position in ``ids``, int64 positions of its result videos and their float64 scores.
            Consecutive queries with the same keys share one ``positions`` array.
    """

    ids: list[str]
    rows: list[tuple[str, int, np.ndarray, np.ndarray]]


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
    if not np.isfinite(values).all():
        raise FastPathUnavailable("NaN or infinite score")
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
    if raw.size and int(raw.min()) < 32:
        raise FastPathUnavailable("control character in a key")
    if prev is not None and np.array_equal(lengths, prev.lengths) and np.array_equal(raw, prev.raw):
        return prev, scores
    try:
        keys = [data[start + a:start + b].decode("utf-8") for a, b in zip(key_start.tolist(), key_end.tolist())]
    except UnicodeDecodeError as exc:
        raise FastPathUnavailable(f"invalid UTF-8 ({exc})") from exc
    if len(set(keys)) != len(keys):
        raise FastPathUnavailable("duplicate keys")
    return _Keys(keys, lengths, raw), scores


def _parse_rows_numpy(data: bytes) -> list[tuple[str, list[str], np.ndarray]]:
    """The numpy reader: ``(query, keys, scores)`` rows in file order; consecutive queries with
    equal keys share the same ``keys`` list object."""
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


def default_threads() -> int:
    """Threads for the compiled scanner: two when the process may use two CPUs."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return 2 if cpus >= 2 else 1


def compiled_available() -> bool:
    """Whether the compiled scanner ``dnsvr.eval._simscan`` is built and importable."""
    return _simscan is not None


def _parse_compiled(data: bytes | bytearray | memoryview, threads: int,
                    split_min_bytes: int | None = None) -> ParsedSimilarities:
    kwargs = {} if split_min_bytes is None else {"split_min_bytes": split_min_bytes}
    try:
        result = _simscan.scan(data, threads=threads, **kwargs)
    except _simscan.ShapeError as exc:
        raise FastPathUnavailable(str(exc)) from None
    return _from_scan(result)


def _from_scan(result: tuple) -> ParsedSimilarities:
    """ParsedSimilarities from what ``_simscan.scan`` returns (ids and flat buffers)."""
    ids, *blocks = result
    query_pos, row_start, row_seq, seq_start, keys = (np.frombuffer(b, dtype=np.int64) for b in blocks[:5])
    scores = np.frombuffer(blocks[5], dtype=np.float64)
    sequences = [keys[a:b] for a, b in zip(seq_start[:-1].tolist(), seq_start[1:].tolist())]
    rows = [(ids[q], q, sequences[seq], scores[a:b])
            for q, seq, a, b in zip(query_pos.tolist(), row_seq.tolist(), row_start[:-1].tolist(),
                                    row_start[1:].tolist())]
    return ParsedSimilarities(ids, rows)


def _parse_numpy(data: bytes) -> ParsedSimilarities:
    vocab = Vocabulary()
    rows = []
    for query, keys, scores in _parse_rows_numpy(data):
        qpos = vocab.add(query)
        rows.append((query, qpos, vocab.positions(keys), scores))
    return ParsedSimilarities(list(vocab.index), rows)


def parse_similarities(data: bytes | bytearray | memoryview | mmap.mmap, *, threads: int | None = None,
                       compiled: bool | None = None) -> ParsedSimilarities:
    """Parse ``{query: {video: number}}`` into a vocabulary and per-query arrays, in file order.

    Args:
        data: the JSON text (UTF-8): bytes or any object with the buffer protocol (a memory map).
        threads: threads of the compiled scanner (default: :func:`default_threads`).
        compiled: use the compiled scanner (``None``: when it is built; ``True`` requires it;
            ``False``: the numpy reader).

    Returns:
        The :class:`ParsedSimilarities`.

    Raises:
        FastPathUnavailable: if the text is not in the handled shape (parse it with a JSON parser).
        ImportError: if ``compiled=True`` and the extension is not built.

    Example:
        >>> parsed = parse_similarities(b'{"q": {"a": 0.5, "b": 0.25}}')
        >>> parsed.ids, parsed.rows[0][2].tolist(), parsed.rows[0][3].tolist()
        (['q', 'a', 'b'], [1, 2], [0.5, 0.25])
    """
    global _warned_missing
    if compiled is None:
        compiled = _simscan is not None
        if not compiled and not _warned_missing:
            _warned_missing = True
            logger.warning("the compiled similarity-file reader is not built (%s); using the numpy "
                           "reader, several times slower (build it: pip install ., or "
                           "python setup.py build_ext --inplace in a source checkout)", _SIMSCAN_MISSING)
    if compiled:
        if _simscan is None:
            raise ImportError(f"dnsvr.eval._simscan is not built: {_SIMSCAN_MISSING}")
        return _parse_compiled(data, default_threads() if threads is None else threads)
    return _parse_numpy(data if isinstance(data, bytes) else bytes(data))


#: smallest inflated size for which gzip input is scanned while it is being inflated
STREAM_MIN_BYTES = 8 << 20
#: compressed bytes inflated per step (the scanner follows step by step)
_INFLATE_STEP = 1 << 20


def _inflate_into(raw: bytes, out: bytearray, progress: np.ndarray, decompressobj: Callable,
                  state: dict) -> None:
    """Inflate the single gzip member ``raw`` into ``out`` (exactly its size), publishing the bytes
    done in ``progress[0]`` (-1 when giving up: ``state["error"]`` says why)."""
    try:
        inflater = decompressobj(31)
        view, source = memoryview(out), memoryview(raw)
        filled, step = 0, _INFLATE_STEP
        for pos in range(0, len(raw), step):
            chunk = inflater.decompress(source[pos:pos + step])
            if filled + len(chunk) > len(out):
                state["error"] = "size"
                return
            view[filled:filled + len(chunk)] = chunk
            filled += len(chunk)
            progress[0] = filled
            if inflater.eof:
                break
        if not inflater.eof:
            state["error"] = EOFError("Compressed file ended before the end-of-stream marker was reached")
        elif inflater.unused_data or filled != len(out):
            state["error"] = "size"  # more members (or trailing bytes): the plain path reads them
    except Exception as exc:  # noqa: BLE001 - handed to the caller's thread
        state["error"] = exc
    finally:
        if "error" in state:
            progress[0] = -1


def parse_similarities_gzip(raw: bytes, *, decompress: Callable[[bytes], bytes], decompressobj: Callable,
                            threads: int | None = None) -> ParsedSimilarities:
    """Parse gzip-compressed ``{query: {video: number}}``; the compiled scanner reads the text while
    another thread inflates it (about the time of inflating alone, rather than inflating + scanning).

    Args:
        raw: the compressed bytes.
        decompress: inflates a whole gzip file (every member), e.g. ``gzip.decompress``.
        decompressobj: ``zlib.decompressobj``-like (``wbits=31`` reads one gzip member).
        threads: scanner threads when the text is scanned after inflating.

    Returns:
        The :class:`ParsedSimilarities`.

    Raises:
        FastPathUnavailable: if the text is not in the handled shape; ``.text`` holds the inflated text.
        EOFError, OSError, zlib errors: if ``raw`` is not valid gzip (as ``decompress`` raises them).
    """
    size = int.from_bytes(raw[-4:], "little") if len(raw) >= 18 else 0  # ISIZE: the last member's size
    if _simscan is None or size < STREAM_MIN_BYTES or size > 1100 * len(raw):
        text = decompress(raw)
        try:
            return parse_similarities(text, threads=threads)
        except FastPathUnavailable as exc:
            raise FastPathUnavailable(str(exc), text=text) from None
    out = bytearray(size)  # zeroed: a byte not inflated yet is a zero, which the scanner rejects
    progress = np.zeros(1, dtype=np.int64)
    state: dict = {}
    worker = threading.Thread(target=_inflate_into, args=(raw, out, progress, decompressobj, state),
                              name="dnsvr-inflate", daemon=True)
    worker.start()
    shape_error = None
    try:
        result = _simscan.scan(out, threads=1, progress=progress)
    except _simscan.ShapeError as exc:
        shape_error = exc
    finally:
        worker.join()
    if "error" in state:
        # several members, ISIZE not the size, or damage: inflate it all as the plain path does
        # (which raises the plain path's error on damaged input), then scan
        text = decompress(raw)
        try:
            return parse_similarities(text, threads=threads)
        except FastPathUnavailable as exc:
            raise FastPathUnavailable(str(exc), text=text) from None
    if shape_error is not None:  # decided on the complete text (the scan may have run ahead)
        try:
            return _parse_compiled(out, default_threads() if threads is None else threads)
        except FastPathUnavailable as exc:
            raise FastPathUnavailable(str(exc), text=out) from None
    return _from_scan(result)
