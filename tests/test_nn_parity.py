"""Parity with the reference implementations: every network file in ../shared/golden/models.

Each golden file holds the reference network's state_dict (``state/*``), inputs (``in/*``) and outputs
(``out/*``); we load the state strictly, run the same calls, and compare (features 1e-5, similarities 1e-4).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dnsvr.nn import CoarseGrainedStudent, FineGrainedStudent, SelectorNetwork, ViSiLTeacher

FEAT_TOL = 1e-5
SIM_TOL = 1e-4


def _load(golden_models: Path, name: str) -> dict[str, np.ndarray]:
    path = golden_models / f"{name}.npz"
    if not path.exists():
        pytest.skip(f"golden file {path} not found")
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def _state(d: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k[len("state/"):]: torch.from_numpy(np.array(v)) for k, v in d.items() if k.startswith("state/")}


def _close(actual: torch.Tensor, expected: np.ndarray, tol: float) -> None:
    a = actual.detach().cpu().numpy()
    assert a.shape == expected.shape, (a.shape, expected.shape)
    np.testing.assert_allclose(a, expected, rtol=0, atol=tol)


@pytest.mark.parametrize("kind", ["att", "bin"])
def test_fine_grained_student_parity(golden_models: Path, kind: str) -> None:
    d = _load(golden_models, f"fg_{kind}_student")
    model = FineGrainedStudent(attention=kind == "att", binarization=kind == "bin").eval()
    model.load_state_dict(_state(d), strict=True)
    mask = d["in/target_mask"]
    assert mask.min() == 0, "the golden batch is expected to contain padding"
    with torch.no_grad():
        q = model.index_video(d["in/query"])
        t = model.index_video(d["in/targets"], mask)
        _close(q, d["out/query_indexed"], FEAT_TOL)
        _close(t, d["out/targets_indexed"], FEAT_TOL)
        len0 = int(mask[0].sum())
        _close(model.calculate_video_similarity(q, t[0, :len0]), d["out/similarity_single"], SIM_TOL)
        batch = model.calculate_video_similarity(q, t, np.ones(q.shape[0], np.float32), mask)
        _close(batch, d["out/similarity_batch"], SIM_TOL)
        if "out/similarity_matrix" in d:
            sim, sim_mask = model.similarity_matrix(q, t[0, :len0])
            assert sim_mask is None
            _close(sim, d["out/similarity_matrix"], SIM_TOL)
        if "out/train_pos" in d:
            masks = [torch.from_numpy(d[f"in/{n}_mask"]) for n in ("anchor", "positive", "negative")]
            a, p, n = (model.index_video(d[f"in/{n}s"], m) for n, m in zip(("anchor", "positive", "negative"), masks))
            pos, neg, reg = model(a, p, n, *masks)
            _close(pos, d["out/train_pos"], SIM_TOL)
            _close(neg, d["out/train_neg"], SIM_TOL)
            _close(reg.reshape(1), d["out/train_reg_loss"], SIM_TOL)
    if kind == "bin":
        assert set(np.unique(d["out/query_indexed"])) <= {-1.0, 1.0}


def test_coarse_grained_student_parity(golden_models: Path) -> None:
    d = _load(golden_models, "cg_student")
    model = CoarseGrainedStudent(dims=512, transformer_feedforward_dims=256, netvlad_clusters=8,
                                 netvlad_outdims=128).eval()
    model.load_state_dict(_state(d), strict=True)
    with torch.no_grad():
        q = model.index_video(d["in/query"])
        t = model.index_video(d["in/targets"], d["in/target_mask"])
        _close(q, d["out/query_indexed"], FEAT_TOL)
        _close(t, d["out/targets_indexed"], FEAT_TOL)
        _close(model.calculate_video_similarity(q, t), d["out/similarity"], SIM_TOL)


def test_selector_parity(golden_models: Path) -> None:
    d = _load(golden_models, "selector")
    model = SelectorNetwork(dims=512, hidden_size=100, num_layers=1).eval()
    model.load_state_dict(_state(d), strict=True)
    with torch.no_grad():
        _close(model.index_video(d["in/query"]), d["out/query_selfsim"], SIM_TOL)
        _close(model.index_video(d["in/targets"], d["in/target_mask"]), d["out/targets_selfsim"], SIM_TOL)
        _close(model(d["in/mlp_input"]), d["out/scores"], SIM_TOL)


@pytest.mark.parametrize("name,kwargs", [
    ("visil_teacher", dict(dims=3840, symmetric=False)),
    ("visil_teacher_symmetric", dict(dims=512, symmetric=True)),
])
def test_visil_teacher_parity(golden_models: Path, name: str, kwargs: dict) -> None:
    d = _load(golden_models, name)
    model = ViSiLTeacher(attention=True, video_comperator=True, **kwargs).eval()
    model.load_state_dict(_state(d), strict=True)
    with torch.no_grad():
        q = model.index_video(d["in/query"])
        t = model.index_video(d["in/target"])
        _close(q, d["out/query_prepared"], FEAT_TOL)
        _close(t, d["out/target_prepared"], FEAT_TOL)
        _close(model.frame_to_frame_similarity(q, t), d["out/f2f_similarity"], SIM_TOL)
        _close(model.calculate_video_similarity(q, t), d["out/similarity"], SIM_TOL)
        # masks: padding the target and passing its mask must not change the similarity
        pad = torch.cat([t, torch.randn(5, *t.shape[1:])]).unsqueeze(0)
        mask = torch.cat([torch.ones(t.shape[0]), torch.zeros(5)]).unsqueeze(0)
        _close(model.calculate_video_similarity(q, pad, target_mask=mask), d["out/similarity"], SIM_TOL)


def test_published_shapes_at_default_sizes(golden_models: Path) -> None:
    """At the published default sizes each network has exactly the published parameter names and shapes."""
    import json

    shapes = json.loads((golden_models / "state_dict_shapes.json").read_text())
    nets = {
        "dns_fg_att_student": FineGrainedStudent(attention=True),
        "dns_fg_bin_student": FineGrainedStudent(binarization=True),
        "dns_cg_student": CoarseGrainedStudent(),
        "dns_selector": SelectorNetwork(),
        "visil_teacher": ViSiLTeacher(),
        "visil_teacher_symmetric": ViSiLTeacher(dims=512, symmetric=True),
    }
    assert set(nets) == set(shapes)
    for name, net in nets.items():
        got = {k: list(v.shape) for k, v in net.state_dict().items()}
        assert got == shapes[name], name
