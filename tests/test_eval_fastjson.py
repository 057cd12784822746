"""The vectorised similarity-file reader agrees bit for bit with the JSON parser, or steps aside."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dnsvr.eval import SimilarityTable
from dnsvr.eval._fastjson import FastPathUnavailable, parse_similarities


def _numbers(rng: np.random.Generator, n: int) -> list[float]:
    vals = list(rng.normal(0, 1, n))  # 16-17 significant digits (repr)
    vals += list(np.round(rng.normal(0, 1, n), 6))  # six decimals, like the reference's files
    vals += [0.0, -0.0, 1.0, -1.0, 1e-7, 3.5e+20, -2.5e-300, 123456789012345.0, 0.1 + 0.2,
             float(np.float32(0.8902649879455566))]
    return vals


def _check_against_json(text: str) -> None:
    expected = json.loads(text)
    rows = parse_similarities(text.encode())
    assert [q for q, _, _ in rows] == list(expected)
    for query, keys, scores in rows:
        assert keys == list(expected[query])
        want = np.array(list(expected[query].values()), dtype=np.float64)
        want[want == 0] = 0.0  # the reader keeps one zero (-0.0 ranks as 0.0)
        assert scores.tobytes() == want.tobytes(), query  # bit-identical


@pytest.mark.parametrize("indent", [None, 1, 4])
def test_matches_json_module(indent: int | None) -> None:
    rng = np.random.default_rng(0)
    vals = _numbers(rng, 300)
    ids = [f"v{i}" for i in range(len(vals))]
    sims = {"q1": dict(zip(ids, vals)), "q2": dict(zip(ids, reversed(vals))),
            "q3": {"ü-é": 1, "x y": -2, "a:b,c": 3.25}, "q4": {}}
    _check_against_json(json.dumps(sims, indent=indent, ensure_ascii=False))


def test_integers_exponents_and_spacing() -> None:
    _check_against_json('{ "q" : { "a" : 1 , "b":-0 ,"c":2E3, "d": 1.5e-3,"e":-12345678901234567890 } }')
    _check_against_json('{}')
    _check_against_json('{"q": {}}')


def test_shared_keys_are_one_list() -> None:
    rows = parse_similarities(b'{"q1": {"a": 1, "b": 2}, "q2": {"a": 3, "b": 4}, "q3": {"b": 5, "a": 6}}')
    assert rows[0][1] is rows[1][1]
    assert rows[2][1] == ["b", "a"]


@pytest.mark.parametrize("text", [
    '{"q": {"a\\"b": 1}}',            # escapes
    '{"q": {"a": NaN}}',              # not JSON numbers
    '{"q": {"a": "1"}}',              # string value
    '{"q": {"a": [1]}}',              # nested
    '{"q": {"a": {"b": 1}}}',         # nested object
    '{"q": {"a": 1, "a": 2}}',        # duplicate key: JSON keeps the last value
    '{"q": {"a": 1}, "q": {"a": 2}}',  # duplicate query
    '{"q": {"a": 1 2}}',
    '{"q": {"a": 1,}}',
    '{"q": {"a": 1}} x',
    '[1, 2]',
    '{"q": {"a}": 1}}',
])
def test_unhandled_shapes_step_aside(text: str) -> None:
    with pytest.raises(FastPathUnavailable):
        parse_similarities(text.encode())


def test_table_from_file_falls_back(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text('{"q": {"a\\u00e9": 1.5, "b": 2}, "r": {"a": 1, "a": 3}}')
    table = SimilarityTable.from_file(path)
    assert table.ids == ["q", "aé", "b", "r", "a"]
    assert table["r"].scores.tolist() == [3.0]
