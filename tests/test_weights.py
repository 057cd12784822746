"""The weights registry (resolution, offline errors, hashes) and safe loading of published-layout checkpoints.

Nothing here touches the network: downloads are exercised through ``file://`` mirrors, and any other URL
opened during these tests fails loudly.
"""

from __future__ import annotations

import argparse
import json
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from dnsvr import weights as W
from dnsvr.nn import CoarseGrainedStudent, FineGrainedStudent, SelectorNetwork, ViSiLTeacher

INTERFACE_NAMES = [
    "dns_fg_att_student", "dns_fg_bin_student", "dns_cg_student", "dns_selector_cg-fg_att",
    "dns_selector_cg-fg_bin", "itq_resnet50W_dns100k_1M", "visil", "visil_symmetric",
    "pca_resnet50_vcdb_1M", "resnet50_imagenet", "efficientnet_lite0_imagenet",
]


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A fresh cache, no mirror, not offline, and no real network access."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("DNSVR_CACHE", str(cache))
    monkeypatch.delenv("DNSVR_OFFLINE", raising=False)
    monkeypatch.delenv("DNSVR_WEIGHTS_MIRROR", raising=False)
    real = urllib.request.urlopen

    def guarded(url, *args, **kwargs):
        if not str(url).startswith("file://"):
            raise urllib.error.URLError(f"network disabled in tests ({url})")
        return real(url, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", guarded)
    return cache


def _args(**kw) -> argparse.Namespace:
    return argparse.Namespace(experiment_path="/tmp/x", batch_sz=64, learning_rate=1e-5, **kw)


def _save_checkpoint(net: torch.nn.Module, path: Path, **args) -> dict[str, torch.Tensor]:
    state = {k: v.clone() for k, v in net.state_dict().items()}
    torch.save({"model": state, "args": _args(**args), "global_step": 7}, path)
    return state


def test_registry_names_and_info() -> None:
    assert sorted(INTERFACE_NAMES) == W.list_weights()
    assert W.list_weights("dns_selector*") == ["dns_selector_cg-fg_att", "dns_selector_cg-fg_bin"]
    info = W.weights_info("dns_fg_att_student")
    assert info.urls == ("https://mever.iti.gr/distill-and-select/models/dns_fg_att_student.pth",)
    assert W.weights_info("visil").urls == ("http://ndd.iti.gr/visil/visil.pth",)
    assert W.weights_info("resnet50_imagenet").urls[0].endswith("resnet50-0676ba61.pth")
    assert "512" in info.preprocessing["whitening"]
    json.dumps(info.as_dict())
    with pytest.raises(ValueError, match="registered: .*dns_cg_student"):
        W.weights_info("dns_nope")


def test_expected_shapes_match_the_published_layout(golden_models: Path) -> None:
    published = json.loads((golden_models / "state_dict_shapes.json").read_text())
    pairs = {"dns_fg_att_student": "dns_fg_att_student", "dns_fg_bin_student": "dns_fg_bin_student",
             "dns_cg_student": "dns_cg_student", "dns_selector_cg-fg_att": "dns_selector",
             "dns_selector_cg-fg_bin": "dns_selector", "visil": "visil_teacher",
             "visil_symmetric": "visil_teacher_symmetric"}
    for name, key in pairs.items():
        assert {k: list(v) for k, v in W.expected_shapes(name).items()} == published[key], name
    assert W.expected_shapes("itq_resnet50W_dns100k_1M") == {"proj": (512, 512)}


def test_offline_error_names_file_url_and_target(monkeypatch: pytest.MonkeyPatch, _isolated: Path) -> None:
    monkeypatch.setenv("DNSVR_OFFLINE", "1")
    with pytest.raises(W.WeightsUnavailableError) as err:
        W.resolve_weights("dns_cg_student")
    msg = str(err.value)
    assert "dns_cg_student.pth" in msg
    assert "https://mever.iti.gr/distill-and-select/models/dns_cg_student.pth" in msg
    assert str(_isolated / "weights" / "dns_cg_student.pth") in msg
    # the offline argument wins over the environment
    with pytest.raises(W.WeightsUnavailableError, match="could not be downloaded"):
        W.resolve_weights("dns_cg_student", offline=False)  # network disabled → every URL fails


def test_unreachable_download_is_a_clear_error() -> None:
    with pytest.raises(W.WeightsUnavailableError) as err:
        W.resolve_weights("pca_resnet50_vcdb_1M")
    msg = str(err.value)
    assert "http://ndd.iti.gr/visil/pca_resnet50_vcdb_1M.pth" in msg and "DNSVR_WEIGHTS_MIRROR" in msg


def test_cache_and_explicit_path_resolution(tmp_path: Path, _isolated: Path) -> None:
    cached = _isolated / "weights" / "visil.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x")
    assert W.resolve_weights("visil", offline=True) == cached
    explicit = tmp_path / "my_visil.pth"
    explicit.write_bytes(b"y")
    assert W.resolve_weights("visil", path=explicit, offline=True) == explicit
    with pytest.raises(FileNotFoundError, match="does_not_exist.pth"):
        W.resolve_weights("visil", path=tmp_path / "does_not_exist.pth")


def test_download_from_mirror_is_cached_and_hash_checked(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, _isolated: Path
) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "dns_fg_bin_student.pth").write_bytes(b"payload")
    monkeypatch.setenv("DNSVR_WEIGHTS_MIRROR", mirror.as_uri())
    got = W.resolve_weights("dns_fg_bin_student", progress=False)
    assert got == _isolated / "weights" / "dns_fg_bin_student.pth" and got.read_bytes() == b"payload"
    (mirror / "dns_fg_bin_student.pth").unlink()
    assert W.resolve_weights("dns_fg_bin_student") == got  # second time: from the cache
    # a known hash that does not match: error, and nothing left in the cache
    (mirror / "resnet50-0676ba61.pth").write_bytes(b"not resnet")
    with pytest.raises(W.WeightsHashError, match="0676ba61"):
        W.resolve_weights("resnet50_imagenet", progress=False)
    assert not (_isolated / "weights" / "resnet50-0676ba61.pth").exists()
    assert not list((_isolated / "weights").glob("*.part"))
    bad = tmp_path / "resnet.pth"
    bad.write_bytes(b"nope")
    with pytest.raises(W.WeightsHashError):
        W.resolve_weights("resnet50_imagenet", path=bad)


def test_efficientnet_weights_come_from_the_package() -> None:
    path = W.resolve_weights("efficientnet_lite0_imagenet", offline=True)
    assert path.name == "efficientnet-lite0-57934424.pth" and path.is_file()
    state = W.load_checkpoint(path)
    assert tuple(state["_fc.weight"].shape) == (1000, 1280)


NETWORKS = [
    ("dns_fg_att_student", lambda **kw: FineGrainedStudent(attention=True, **kw)),
    ("dns_fg_bin_student", lambda **kw: FineGrainedStudent(binarization=True, **kw)),
    ("dns_cg_student", lambda **kw: CoarseGrainedStudent(**kw)),
    ("dns_selector_cg-fg_att", lambda **kw: SelectorNetwork(attention=True, **kw)),
    ("dns_selector_cg-fg_bin", lambda **kw: SelectorNetwork(binarization=True, **kw)),
    ("visil", lambda **kw: ViSiLTeacher(**kw)),
    ("visil_symmetric", lambda **kw: ViSiLTeacher(dims=512, symmetric=True, **kw)),
]


@pytest.mark.parametrize("name,build", NETWORKS, ids=[n for n, _ in NETWORKS])
def test_synthetic_published_checkpoint_loads_strictly(name: str, build, _isolated: Path, tmp_path: Path) -> None:
    """A checkpoint in the published layout ({"model", "args": Namespace}) at default sizes loads with strict=True,
    both through load_checkpoint and through pretrained=True (cache) / weights_path (explicit file)."""
    source = build()
    path = _isolated / "weights" / W.weights_info(name).filename
    path.parent.mkdir(parents=True, exist_ok=True)
    state = _save_checkpoint(source, path, student_type=name)
    loaded = W.load_checkpoint(path)
    assert set(loaded) == set(state)
    fresh = build()
    fresh.load_state_dict(loaded, strict=True)
    from_cache = build(pretrained=True)
    explicit = tmp_path / "explicit" / "my_copy.pth"  # an explicit file outside the cache
    explicit.parent.mkdir()
    path.rename(explicit)
    from_path = build(weights_path=explicit)
    for net in (fresh, from_cache, from_path):
        for k, v in net.state_dict().items():
            assert torch.equal(v, state[k]), (name, k)


def test_strict_loading_rejects_a_mismatched_checkpoint(_isolated: Path) -> None:
    path = _isolated / "weights" / "dns_fg_att_student.pth"
    path.parent.mkdir(parents=True)
    _save_checkpoint(FineGrainedStudent(binarization=True), path)  # the wrong student
    with pytest.raises(RuntimeError, match="binarization.W"):
        FineGrainedStudent(attention=True, pretrained=True)


class _Evil:
    def __reduce__(self):  # would run code if unpickled
        return (print, ("pwned",))


def test_load_checkpoint_refuses_arbitrary_objects(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "payload": _Evil()}, path)
    with pytest.raises(ValueError, match="allow-list"):
        W.load_checkpoint(path)


def test_load_checkpoint_formats(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    sd = {"a": torch.arange(3.0), "b": torch.ones(2, 2)}
    save_file(sd, str(tmp_path / "w.safetensors"))
    np.savez(tmp_path / "w.npz", **{k: v.numpy() for k, v in sd.items()})
    torch.save(sd, tmp_path / "plain.pth")  # a bare state dict (ViSiL heads, whitening, ITQ)
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "nested.pth")
    for name in ("w.safetensors", "w.npz", "plain.pth", "nested.pth"):
        got = W.load_checkpoint(tmp_path / name)
        assert set(got) == {"a", "b"} and torch.equal(got["b"], sd["b"]), name
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="state dict"):
        W.load_checkpoint(tmp_path / "list.pth")
    with pytest.raises(FileNotFoundError):
        W.load_checkpoint(tmp_path / "missing.pth")


def test_itq_initialisation_via_registry(tmp_path: Path) -> None:
    from dnsvr.nn import BinarizationLayer

    proj = torch.linalg.qr(torch.randn(512, 512))[0]
    torch.save({"proj": proj}, tmp_path / "itq.pth")
    layer = BinarizationLayer(512)
    layer.load_itq(tmp_path / "itq.pth")
    assert torch.equal(layer.W.data, proj)
    with pytest.raises(ValueError, match=r"\(512, 512\)"):
        BinarizationLayer(512, bits=64).load_itq(tmp_path / "itq.pth")


def test_weights_cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, _isolated: Path) -> None:
    from typer.testing import CliRunner

    from dnsvr.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["weights", "list", "--json"])
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.output)}
    assert rows["efficientnet_lite0_imagenet"]["available"] and not rows["dns_cg_student"]["available"]
    res = runner.invoke(app, ["weights", "info", "visil", "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["cache_path"] == str(_isolated / "weights" / "visil.pth")
    assert runner.invoke(app, ["weights", "info", "nope"]).exit_code == 2
    monkeypatch.setenv("DNSVR_OFFLINE", "1")
    res = runner.invoke(app, ["weights", "fetch", "dns_cg_student"])
    assert res.exit_code == 1 and "dns_cg_student.pth" in res.output
    mirror = tmp_path / "m"
    mirror.mkdir()
    (mirror / "visil.pth").write_bytes(b"v")
    monkeypatch.delenv("DNSVR_OFFLINE")
    monkeypatch.setenv("DNSVR_WEIGHTS_MIRROR", mirror.as_uri())
    res = runner.invoke(app, ["weights", "fetch", "visil"])
    assert res.exit_code == 0 and (_isolated / "weights" / "visil.pth").read_bytes() == b"v"
