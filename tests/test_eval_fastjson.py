"""The fast similarity-file readers (compiled and numpy) agree bit for bit with the JSON parser,
or step aside with FastPathUnavailable — never a wrong answer, never a crash."""

from __future__ import annotations

import gzip
import json
import math
import os
import random
import struct
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

from dnsvr.eval import SimilarityTable
from dnsvr.eval import _fastjson
from dnsvr.eval._fastjson import FastPathUnavailable, ParsedSimilarities, parse_similarities
from dnsvr.eval.similarities import SimilarityFileError, parse_json_bytes

COMPILED = _fastjson.compiled_available()


@pytest.fixture(params=["compiled", "numpy"])
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "compiled" and not COMPILED:
        pytest.skip("dnsvr.eval._simscan is not built (python setup.py build_ext --inplace)")
    return request.param


def _parse(text: str | bytes, backend: str, **kwargs) -> ParsedSimilarities:
    data = text.encode() if isinstance(text, str) else text
    return parse_similarities(data, compiled=backend == "compiled", **kwargs)


def _as_rows(parsed: ParsedSimilarities) -> list[tuple[str, list[str], np.ndarray]]:
    ids = parsed.ids
    for query, qpos, positions, scores in parsed.rows:
        assert ids[qpos] == query
        assert positions.dtype == np.int64 and scores.dtype == np.float64 and positions.shape == scores.shape
    return [(query, [ids[p] for p in positions.tolist()], scores) for query, _, positions, scores in parsed.rows]


def _check_against_json(text: str | bytes, backend: str, **kwargs) -> ParsedSimilarities:
    expected = json.loads(text)
    parsed = _parse(text, backend, **kwargs)
    rows = _as_rows(parsed)
    assert [q for q, _, _ in rows] == list(expected)
    for query, keys, scores in rows:
        assert keys == list(expected[query])
        want = np.array([float(v) for v in expected[query].values()], dtype=np.float64)
        if backend == "numpy":
            want[want == 0] = 0.0  # the numpy reader keeps one zero (-0.0 ranks as 0.0)
        assert scores.tobytes() == want.tobytes(), query  # bit-identical
    # the vocabulary: first-seen order, a query before its results (as SimilarityTable builds it)
    assert parsed.ids == list(dict.fromkeys(k for q, res in expected.items() for k in [q, *res]))
    return parsed


def _numbers(rng: np.random.Generator, n: int) -> list[float]:
    vals = list(rng.normal(0, 1, n))  # 16-17 significant digits (repr)
    vals += list(np.round(rng.normal(0, 1, n), 6))  # six decimals, like the reference's files
    vals += [0.0, -0.0, 1.0, -1.0, 1e-7, 3.5e+20, -2.5e-300, 123456789012345.0, 0.1 + 0.2,
             float(np.float32(0.8902649879455566))]
    return vals


def _adversarial_number_texts(seed: int = 0) -> list[str]:
    """Number spellings that stress the conversion: the fast path's edges and the fallback."""
    rng = random.Random(seed)
    out = []
    for _ in range(400):  # random doubles of every magnitude, shortest repr and 17 digits
        x = struct.unpack("<d", struct.pack("<Q", rng.getrandbits(64)))[0]
        if math.isfinite(x):
            out += [repr(x), f"{x:.17e}", f"{x:.15e}", f"{x:.16g}"]
    for digits in range(1, 26):  # mantissas of 1..25 digits with small and large exponents
        for _ in range(6):
            mant = str(rng.randrange(10 ** (digits - 1), 10 ** digits))
            for exp in (-330, -308, -300, -23, -22, -15, -1, 0, 1, 15, 22, 23, 300, 308):
                out.append(f"{mant[0]}.{mant[1:]}e{exp}" if digits > 1 else f"{mant}e{exp}")
            out += [mant, "-" + mant, "0." + mant, mant + ".5", f"{mant[:1]}.{mant[1:] or 0}E+0"]
    for _ in range(200):  # exact halfway points between neighbouring doubles, and just off them
        x = abs(struct.unpack("<d", struct.pack("<Q", rng.getrandbits(64)))[0])
        if not math.isfinite(x) or x == 0:
            continue
        mid = (Decimal(x) + Decimal(math.nextafter(x, math.inf))) / 2
        tiny = Decimal(10) ** (mid.adjusted() - 40)
        out += [str(mid), str(mid + tiny), str(mid - tiny)]
    two53 = 2 ** 53
    out += [str(two53), str(two53 + 1), str(two53 + 2), str(two53 + 3), str(2 ** 64 + 1), str(3 ** 60),
            "-" + str(2 ** 70 + 1), "9" * 40, "1" + "0" * 300,
            "1.00000000000000011102230246251565404236316680908203125",  # 1 + 2^-53: ties to even
            "1.00000000000000011102230246251565404236316680908203126",
            "9007199254740993.0", "9007199254740993e0", "0.1", "0.2", "0.3", "1e23", "8.98846567431158e307",
            "1.7976931348623157e308", "1.7976931348623158e308", "2.2250738585072011e-308",
            "2.2250738585072014e-308", "4.9406564584124654e-324", "2.4703282292062327e-324",
            "2.4703282292062328e-324", "5e-324", "1e-400", "-1e-400", "1e-99999999999",
            "0.000000000000000000000000000000000000000000001e+45", "123456789e-30", "1" + "0" * 30 + "e-30",
            "0", "-0", "0.0", "-0.0", "0e0", "-0e0", "-0E-5", "0.000", "1E2", "1e+2", "1e-2", "-1.5E+300"]
    return out


def test_extension_required_in_ci() -> None:
    """CI sets DNSVR_REQUIRE_EXTENSIONS=1: the compiled reader must be built, never a silent fallback."""
    if os.environ.get("DNSVR_REQUIRE_EXTENSIONS") != "1":
        pytest.skip("DNSVR_REQUIRE_EXTENSIONS is not set")
    from dnsvr.eval import _simscan  # noqa: F401  (raises ImportError when not built)
    assert COMPILED


def test_numbers_bit_exact(backend: str) -> None:
    texts = _adversarial_number_texts()
    overflow = [t for t in texts if not math.isfinite(float(t))]  # json gives inf: left to the general path
    assert len(overflow) > 10
    texts = [t for t in texts if t not in overflow]
    body = ", ".join(f'"n{i}": {t}' for i, t in enumerate(texts))
    _check_against_json("{\"q\": {" + body + "}}", backend)


def test_minus_zero(backend: str) -> None:
    parsed = _parse('{"q": {"a": -0.0, "b": -0, "c": -0e3, "d": 0, "e": -1e-400}}', backend)
    signs = [math.copysign(1, s) for s in parsed.rows[0][3].tolist()]
    if backend == "compiled":  # exactly float(json.loads(...)): the integer -0 is 0
        assert signs == [-1, 1, -1, 1, -1]
    else:
        assert signs == [1, 1, 1, 1, 1]


@pytest.mark.parametrize("indent", [None, 1, 4])
def test_matches_json_module(indent: int | None, backend: str) -> None:
    rng = np.random.default_rng(0)
    vals = _numbers(rng, 300)
    ids = [f"v{i}" for i in range(len(vals))]
    sims = {"q1": dict(zip(ids, vals)), "q2": dict(zip(ids, reversed(vals))),
            "q3": {"ü-é": 1, "x y": -2, "a:b,c": 3.25, "v1": 0.5}, "q4": {}, "v3": dict(zip(ids, vals))}
    _check_against_json(json.dumps(sims, indent=indent, ensure_ascii=False), backend)


def test_integers_exponents_and_spacing(backend: str) -> None:
    _check_against_json('{ "q" : { "a" : 1 , "b":-0 ,"c":2E3, "d": 1.5e-3,"e":-12345678901234567890 } }', backend)
    _check_against_json('\r\n\t{\t"q"\n:\r{\t"a"\n:\n-1.25\n}\n,\n"r":{}}\n\t ', backend)
    _check_against_json('{}', backend)
    _check_against_json(' { } ', backend)
    _check_against_json('{"q": {}}', backend)
    _check_against_json('{"": {"": 1}}', backend)
    braces = '{"q}": {"a}": 1, "{b": 2, "}": 3}}'
    if backend == "compiled":
        _check_against_json(braces, backend)
    else:  # the numpy reader finds blocks by their closing brace
        with pytest.raises(FastPathUnavailable):
            _parse(braces, backend)


def test_shared_keys_are_one_array(backend: str) -> None:
    parsed = _parse(b'{"q1": {"a": 1, "b": 2}, "q2": {"a": 3, "b": 4}, "q3": {"b": 5, "a": 6}, '
                    b'"q4": {"b": 7, "a": 8, "c": 9}, "q5": {"b": 7}}', backend)
    positions = [row[2] for row in parsed.rows]
    assert positions[0] is positions[1]
    assert positions[2].tolist() == [2, 1] and positions[3].tolist() == [2, 1, 6]
    assert parsed.ids == ["q1", "a", "b", "q2", "q3", "q4", "c", "q5"]
    assert positions[4].tolist() == [2]


@pytest.mark.parametrize("text", [
    '{"q": {"a\\"b": 1}}',            # escapes
    '{"q\\u0041": {"a": 1}}',         # escape in a query
    '{"q": {"a": NaN}}',              # not JSON numbers
    '{"q": {"a": Infinity}}',
    '{"q": {"a": -Infinity}}',
    '{"q": {"a": "1"}}',              # string value
    '{"q": {"a": [1]}}',              # nested
    '{"q": {"a": {"b": 1}}}',         # nested object
    '{"q": {"a": true}}',
    '{"q": {"a": null}}',
    '{"q": {"a": 1, "a": 2}}',        # duplicate key: JSON keeps the last value
    '{"q": {"a": 1}, "q": {"a": 2}}',  # duplicate query
    '{"q": {"a": 1 2}}',
    '{"q": {"a": 1,}}',
    '{"q": {"a": 1}} x',
    '{"q": {"a": 1}},',
    '{"q": {"a": 1}',
    '{"q": {"a": 1',
    '{"q": {"a": ',
    '{"q": {"a"',
    '{"q": {"a',
    '{"q',
    '{',
    '',
    '[1, 2]',
    '{"q": [1, 2]}',
    '{"q": {"a": 1e}}',
    '{"q": {"a": -}}',
    '{"q": {"a": 0x10}}',
    '{"q": {"a\tb": 1}}',             # a control character inside a key
    '\ufeff{"q": {"a": 1}}',          # a byte-order mark
])
def test_unhandled_shapes_step_aside(text: str, backend: str) -> None:
    with pytest.raises(FastPathUnavailable):
        _parse(text, backend)


def test_compiled_is_strict() -> None:
    """Numbers JSON forbids (the numpy reader lets some through), out of range, invalid UTF-8."""
    if not COMPILED:
        pytest.skip("dnsvr.eval._simscan is not built")
    numbers = ["01", "-01.5", "00", ".5", "5.", "1e+", "1E-", "+1", "--1", "1.5e", "0.e1", "1ee2", "1e2.5"]
    for text in [*(f'{{"q": {{"a": 1, "b": {n}}}}}'.encode() for n in numbers),
                 b'{"q": {"a": 1e400}}', b'{"q": {"a": -1e309}}', b'{"q": {"a": ' + b"9" * 400 + b"}}",
                 b'{"q": {"\xff": 1}}', b'{"q\xc3": {"a": 1}}', b'{"q": {"\xed\xa0\x80": 1}}']:
        with pytest.raises(FastPathUnavailable):
            _parse(text, "compiled")


def test_table_from_file_falls_back(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text('{"q": {"a\\u00e9": 1.5, "b": 2}, "r": {"a": 1, "a": 3}}')
    table = SimilarityTable.from_file(path)
    assert table.ids == ["q", "aé", "b", "r", "a"]
    assert table["r"].scores.tolist() == [3.0]
    path.write_text('{"q": {"a": 1e400, "b": 2}}')  # the fast readers step aside: the general parser decides
    try:
        general = SimilarityTable(parse_json_bytes(path.read_bytes()))  # json: inf; orjson: an error
    except SimilarityFileError:
        with pytest.raises(SimilarityFileError, match="not valid JSON"):
            SimilarityTable.from_file(path)
    else:
        assert SimilarityTable.from_file(path)["q"].scores.tolist() == general["q"].scores.tolist() == [math.inf, 2]


def _random_file(rng: np.random.Generator, n_queries: int, n_videos: int, *, shuffle_every: int = 0,
                 punctuation: bool = True) -> str:
    """{query: {video: score}} like the reference writes (every query against one database),
    with some queries in another key order and (``punctuation``) ids that hold JSON punctuation."""
    videos = [f"v{i:05d}" for i in range(n_videos)] + ["ü", "a b"]
    if punctuation:  # the numpy reader steps aside on braces in keys
        videos += ["x},", "},", "{", ":", ","]
    parts = []
    for i in range(n_queries):
        keys = list(videos)
        if shuffle_every and i % shuffle_every == shuffle_every - 1:
            rng.shuffle(keys)
            keys = keys[: len(keys) - i % 3]
        scores = np.round(rng.normal(0, 0.3, len(keys)), 6 if i % 2 else 17)
        body = ",".join(f"{json.dumps(k, ensure_ascii=False)}:{s!r}" for k, s in zip(keys, scores.tolist()))
        parts.append(f"{json.dumps(f'q{i}')}:{{{body}}}")
    return "{" + ",".join(parts) + "}"


@pytest.mark.parametrize("shuffle_every", [0, 3])
def test_whole_files_and_table(tmp_path: Path, backend: str, shuffle_every: int) -> None:
    text = _random_file(np.random.default_rng(shuffle_every), 12, 700, shuffle_every=shuffle_every,
                        punctuation=backend == "compiled")
    _check_against_json(text, backend)
    for suffix in (".json", ".json.gz"):
        path = tmp_path / f"s{suffix}"
        data = text.encode()
        path.write_bytes(gzip.compress(data) if suffix.endswith(".gz") else data)
        table = SimilarityTable.from_file(path) if backend == "compiled" else None
        if table is None:
            saved = _fastjson._simscan
            _fastjson._simscan = None
            try:
                table = SimilarityTable.from_file(path)
            finally:
                _fastjson._simscan = saved
        expected = SimilarityTable(json.loads(text))
        assert table.ids == expected.ids and table.queries == expected.queries
        for row, want in zip(table, expected):
            assert row.query_pos == want.query_pos
            assert np.array_equal(row.positions, want.positions)
            assert row.scores.tobytes() == want.scores.tobytes()


@pytest.mark.parametrize("shuffle_every", [0, 2])
def test_two_threads_equal_one(shuffle_every: int) -> None:
    """Split scanning (forced on small input) gives the same result as one thread, including
    when the guessed split point lies inside a block (a key ending in '},')."""
    if not COMPILED:
        pytest.skip("dnsvr.eval._simscan is not built")
    rng = np.random.default_rng(1)
    text = _random_file(rng, 9, 300, shuffle_every=shuffle_every).encode()
    one = _fastjson._parse_compiled(text, threads=1)
    # leading whitespace moves the middle, where the split is guessed, across the whole text
    for pad in range(0, 2 * len(text), max(1, len(text) // 150)):
        two = _fastjson._parse_compiled(b" " * pad + text, threads=2, split_min_bytes=0)
        assert two.ids == one.ids
        assert len(two.rows) == len(one.rows)
        for a, b in zip(one.rows, two.rows):
            assert a[:2] == b[:2] and np.array_equal(a[2], b[2]) and a[3].tobytes() == b[3].tobytes()
        assert [r[2] is one.rows[0][2] for r in one.rows] == [r[2] is two.rows[0][2] for r in two.rows]
    _check_against_json(text, "compiled")
    # a query repeated across the two halves, and an error in the second half only
    half = text[: len(text) // 2].rfind(b'},"q') + 2
    with pytest.raises(FastPathUnavailable, match="duplicate query"):
        _fastjson._parse_compiled(text[:half] + b'"q0":{"a":1},' + text[half:], threads=2, split_min_bytes=0)
    with pytest.raises(FastPathUnavailable):
        _fastjson._parse_compiled(text[:-20] + b"NaN" + text[-17:], threads=2, split_min_bytes=0)


def test_random_mutations_never_crash(backend: str) -> None:
    """Truncated and mutated files: the fast reader returns what json.loads returns (as floats)
    or raises FastPathUnavailable; it never accepts invalid JSON and never crashes."""
    rng = random.Random(7)
    base = ('{"q1": {"a": 0.5, "b": -1.25e-3, "c": 12, "d": 1e22}, "q2": {"a": 1, "b": 2.0, "c": -0.0, "d": 3}, '
            '"q3": {"zz": 7.000000000000001}}')
    alphabet = list('{}[]",:.-+eE0123456789 \t\n\\') + ["\x00", "\xff", "é", "x", "N"]
    texts = [base[:i] for i in range(len(base))]
    for _ in range(1500):
        chars = list(base)
        for _ in range(rng.randint(1, 3)):
            op, i = rng.random(), rng.randrange(len(chars))
            if op < 0.4:
                chars[i] = rng.choice(alphabet)
            elif op < 0.7:
                del chars[i]
            else:
                chars.insert(i, rng.choice(alphabet))
        texts.append("".join(chars))
    accepted = 0
    for text in texts:
        data = text.encode("utf-8", errors="surrogateescape")
        try:
            expected = json.loads(data)
        except ValueError:
            expected = None
        for threads in ((1, 2) if backend == "compiled" else (1,)):
            try:
                if backend == "compiled":
                    parsed = _fastjson._parse_compiled(data, threads=threads, split_min_bytes=0)
                else:
                    parsed = parse_similarities(data, compiled=False)
            except FastPathUnavailable:
                continue
            if expected is None and backend == "numpy":
                continue  # the numpy reader lets some invalid number spellings through (documented)
            assert expected is not None, f"accepted invalid JSON: {text!r}"
            rows = _as_rows(parsed)
            assert [q for q, _, _ in rows] == list(expected), text
            for query, keys, scores in rows:
                assert keys == list(expected[query]), text
                want = [float(v) for v in expected[query].values()]
                if backend == "numpy":
                    want = [w if w else 0.0 for w in want]
                assert scores.tobytes() == np.array(want, dtype=np.float64).tobytes(), text
            accepted += 1
    assert accepted > 50  # the mutations leave many files valid


@pytest.mark.parametrize("inflater", ["isal", "zlib"])
def test_gzip_members(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, inflater: str) -> None:
    """.json.gz is detected by content and every gzip member is read, with ISA-L or zlib."""
    from dnsvr.eval import similarities as sim_module
    if inflater == "isal" and sim_module._igzip is None:
        pytest.skip("isal is not installed")
    if inflater == "zlib":
        monkeypatch.setattr(sim_module, "_igzip", None)
    text = b'{"q": {"a": 0.5, "b": -1}, "r": {"a": 1e-3}}'
    path = tmp_path / "sims.json"  # no .gz suffix: the content decides
    path.write_bytes(gzip.compress(text[:17]) + gzip.compress(text[17:]))
    table = SimilarityTable.from_file(path)
    assert table.ids == ["q", "a", "b", "r"]
    assert table["q"].scores.tolist() == [0.5, -1.0] and table["r"].scores.tolist() == [1e-3]
    path.write_bytes(gzip.compress(text)[:-9])  # truncated
    with pytest.raises(SimilarityFileError, match="damaged gzip"):
        SimilarityTable.from_file(path)


def test_missing_extension_falls_back_and_logs_once(monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(_fastjson, "_simscan", None)
    monkeypatch.setattr(_fastjson, "_SIMSCAN_MISSING", "No module named 'dnsvr.eval._simscan'")
    monkeypatch.setattr(_fastjson, "_warned_missing", False)
    with caplog.at_level("WARNING", logger="dnsvr.eval._fastjson"):
        for _ in range(3):
            parsed = parse_similarities(b'{"q": {"a": 0.5}}')
    assert parsed.ids == ["q", "a"] and parsed.rows[0][3].tolist() == [0.5]
    warnings = [r for r in caplog.records if "not built" in r.getMessage()]
    assert len(warnings) == 1 and "_simscan" in warnings[0].getMessage()
    with pytest.raises(ImportError):
        parse_similarities(b'{"q": {"a": 0.5}}', compiled=True)


@pytest.mark.parametrize("inflater", ["isal", "zlib"])
def test_gzip_scanned_while_inflating(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, inflater: str) -> None:
    """Large .json.gz is scanned while another thread inflates it (forced here on a small file, in
    tiny steps so that the scanner keeps waiting): same table as the plain file; other members,
    truncation, corruption and unhandled shapes end as the plain path ends."""
    if not COMPILED:
        pytest.skip("dnsvr.eval._simscan is not built")
    from dnsvr.eval import similarities as sim_module
    if inflater == "isal" and sim_module._igzip is None:
        pytest.skip("isal is not installed")
    if inflater == "zlib":
        monkeypatch.setattr(sim_module, "_igzip", None)
        monkeypatch.setattr(sim_module, "_isal_zlib", None)
    monkeypatch.setattr(_fastjson, "STREAM_MIN_BYTES", 1)
    calls = []
    real_scan = _fastjson._simscan.scan
    monkeypatch.setattr(_fastjson._simscan, "scan", lambda *a, **k: calls.append(k) or real_scan(*a, **k))
    text = _random_file(np.random.default_rng(5), 6, 900, shuffle_every=4).encode()
    expected = SimilarityTable(json.loads(text))
    path = tmp_path / "s.json.gz"

    def check(table: SimilarityTable) -> None:
        assert table.ids == expected.ids and table.queries == expected.queries
        for row, want in zip(table, expected):
            assert np.array_equal(row.positions, want.positions)
            assert row.scores.tobytes() == want.scores.tobytes()

    for step in (1 << 20, 997, 61):
        monkeypatch.setattr(_fastjson, "_INFLATE_STEP", step)
        calls.clear()
        path.write_bytes(gzip.compress(text))
        check(SimilarityTable.from_file(path))
        assert calls and calls[0].get("progress") is not None  # the streaming scan ran
    half = len(text) // 2
    path.write_bytes(gzip.compress(text[:half]) + gzip.compress(text[half:]))  # two members
    check(SimilarityTable.from_file(path))
    bad = text.replace(b'"q3":{', b'"q3":{"esc\\u0041pe":1,', 1)  # escapes: the general parser
    path.write_bytes(gzip.compress(bad))
    table = SimilarityTable.from_file(path)
    assert table["q3"].scores[0] == 1.0 and table["q3"].positions[0] == table.index["escApe"]
    compressed = gzip.compress(text)
    path.write_bytes(compressed[: len(compressed) // 2])  # truncated
    with pytest.raises(SimilarityFileError, match="damaged gzip"):
        SimilarityTable.from_file(path)
    corrupt = bytearray(compressed)
    corrupt[len(corrupt) // 2: len(corrupt) // 2 + 64] = bytes(64)
    path.write_bytes(bytes(corrupt))
    with pytest.raises(Exception) as info:  # as the plain path fails on it (zlib / isal error, EOFError)
        SimilarityTable.from_file(path)
    with pytest.raises(type(info.value)):
        sim_module._read_bytes(path)
