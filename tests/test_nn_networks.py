"""Behaviour of the networks beyond the golden files: padding masks, training mode, devices, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dnsvr.nn import (
    BinarizationLayer,
    CoarseGrainedStudent,
    FineGrainedStudent,
    NetVLAD,
    SelectorNetwork,
    SimilarityRegularizationLoss,
    ViSiLTeacher,
)

torch.manual_seed(0)


def _feats(t: int, d: int = 512, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(t, 9, d, generator=g), dim=-1)


def _pad(videos: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(len(v) for v in videos)
    x = torch.full((len(videos), n, *videos[0].shape[1:]), 0.3)
    m = torch.zeros(len(videos), n)
    for i, v in enumerate(videos):
        x[i, : len(v)] = v
        m[i, : len(v)] = 1
    return x, m


@pytest.mark.parametrize("kw", [dict(attention=True), dict(binarization=True)])
def test_fine_student_padded_batch_equals_single_videos(kw: dict) -> None:
    model = FineGrainedStudent(**kw).eval()
    # lengths divisible by 4: the comparator's two 2x2 poolings then see the same windows padded or not (with
    # other lengths the reference's masked batch differs slightly from single videos, and so does ours)
    vids = [_feats(n, seed=i) for i, n in enumerate([8, 16, 4])]
    q = _feats(12, seed=7)
    x, m = _pad(vids)
    with torch.no_grad():
        qi = model.index_video(q)
        xi = model.index_video(x, m)
        assert torch.all(xi[m == 0] == 0)
        batch = model.calculate_video_similarity(qi, xi, target_mask=m)
        single = torch.cat([model.calculate_video_similarity(qi, model.index_video(v)) for v in vids], 1)
    assert batch.shape == (1, 3)
    torch.testing.assert_close(batch, single, atol=1e-5, rtol=0)


def test_fine_student_training_forward_and_regularisation() -> None:
    model = FineGrainedStudent(attention=True)
    with torch.no_grad():  # make comparator outputs leave [-1, 1] so the regulariser is non-zero
        model.visil_head.fconv.bias.fill_(1.5)
    a, am = _pad([_feats(6, seed=1), _feats(8, seed=2)])
    p, pm = _pad([_feats(10, seed=3), _feats(4, seed=4)])
    n, nm = _pad([_feats(7, seed=5), _feats(12, seed=6)])
    pos, neg, reg = model(model.index_video(a, am), model.index_video(p, pm), model.index_video(n, nm), am, pm, nm)
    assert pos.shape == (2, 1) and neg.shape == (2, 1)
    assert reg.item() > 0
    (pos.sum() - neg.sum() + 1e-3 * reg).backward()
    assert model.attention.transform.weight.grad is not None
    # regulariser: sum of distances outside [-1, 1]
    loss = SimilarityRegularizationLoss()(torch.tensor([-3.0, -0.5, 0.5, 1.25]))
    assert loss.item() == pytest.approx(2.25)
    # eval-mode similarity of the same pair agrees with the training forward's (hardtanh, masked Chamfer)
    model.eval()
    with torch.no_grad():
        pos_eval, _, _ = model(model.index_video(a, am), model.index_video(p, pm),
                               model.index_video(n, nm), am, pm, nm)
        s0 = model.calculate_video_similarity(model.index_video(a[0, :6]), model.index_video(p[0, :10]))
    assert float(pos_eval[0]) == pytest.approx(float(s0), abs=1e-5)


def test_binarization_codes_and_training_relaxation() -> None:
    layer = BinarizationLayer(64, bits=32)
    x = torch.randn(5, 9, 64)
    layer.eval()
    codes = layer(x)
    assert codes.shape == (5, 9, 32) and set(codes.unique().tolist()) <= {-1.0, 1.0}
    layer.train()
    soft = layer(x)
    assert torch.all(soft.abs() <= 1) and torch.equal(torch.sign(soft), codes)
    with pytest.raises(ValueError, match="init"):
        BinarizationLayer(8, init="bogus")


def test_coarse_student_masks_and_normalisation() -> None:
    model = CoarseGrainedStudent(transformer_feedforward_dims=64, netvlad_clusters=4, netvlad_outdims=32).eval()
    vids = [_feats(n, seed=i) for i, n in enumerate([4, 13, 7])]
    x, m = _pad(vids)
    with torch.no_grad():
        batch = model.index_video(x, m)
        single = torch.cat([model.index_video(v) for v in vids])
        sims = model.calculate_video_similarity(batch[:1], batch)
    assert batch.shape == (3, 32)
    torch.testing.assert_close(batch, single, atol=1e-5, rtol=0)
    torch.testing.assert_close(batch.norm(dim=-1), torch.ones(3))
    assert sims.shape == (1, 3) and float(sims[0, 0]) == pytest.approx(1.0, abs=1e-5)


def test_netvlad_matches_the_residual_definition() -> None:
    vlad = NetVLAD(8, 3, outdims=None).eval()
    x = torch.randn(2, 8, 5, 1)
    with torch.no_grad():
        out = vlad(x)
        # direct definition: V[k] = Σ_t a_k(t)(x_t − c_k), intra-normalised, flattened, normalised, LayerNorm
        a = F.softmax(torch.einsum("kc,nct->nkt", vlad.conv.weight[:, :, 0, 0], x[..., 0]), dim=1)
        res = x[..., 0].unsqueeze(1) - vlad.centroids[None, :, :, None]  # [N, K, C, T]
        v = (res * a.unsqueeze(2)).sum(-1)
        v = F.normalize(F.normalize(v, dim=2).reshape(2, -1), dim=1)
        expected = vlad.norm(v)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_selector_masks_and_scores() -> None:
    model = SelectorNetwork().eval()
    vids = [_feats(n, seed=i) for i, n in enumerate([8, 12])]  # multiples of 4, see above
    x, m = _pad(vids)
    with torch.no_grad():
        batch = model.index_video(x, m)
        single = torch.cat([model.index_video(v) for v in vids])
        scores = model(torch.tensor([[0.2, 0.3, 0.9], [0.1, 0.1, 0.1]]))
    torch.testing.assert_close(batch, single, atol=1e-5, rtol=0)
    assert scores.shape == (2, 1) and torch.all((scores > 0) & (scores < 1))
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        model(torch.zeros(2, 4))


def test_teacher_one_query_many_targets_and_constraint() -> None:
    teacher = ViSiLTeacher(dims=64).eval()
    assert teacher.attention.context_vector.weight.norm().item() == pytest.approx(1.0, abs=1e-5)
    q = _feats(6, 64, seed=1)
    ts = [_feats(n, 64, seed=2 + n) for n in (5, 9)]
    x, m = _pad(ts)
    with torch.no_grad():
        qi = teacher.index_video(q)
        batch = teacher.calculate_video_similarity(qi, teacher.index_video(x, m), target_mask=m)
        single = torch.cat([teacher.calculate_video_similarity(qi, teacher.index_video(t)) for t in ts])
    torch.testing.assert_close(batch, single, atol=1e-5, rtol=0)
    with torch.no_grad():
        teacher.attention.context_vector.weight.mul_(3)
    teacher.apply_constrain()
    assert teacher.attention.context_vector.weight.norm().item() == pytest.approx(1.0, abs=1e-5)


def test_construction_errors_and_device() -> None:
    with pytest.raises(ValueError, match="not both"):
        FineGrainedStudent(attention=True, binarization=True)
    with pytest.raises(ValueError, match="attention=True"):
        SelectorNetwork(pretrained=True)
    with pytest.raises(ValueError, match="visil_symmetric"):
        ViSiLTeacher(dims=512, symmetric=False, pretrained=True)
    with pytest.raises(ValueError, match=r"\(2, 9\)"):
        FineGrainedStudent(attention=True).calculate_video_similarity(torch.zeros(2, 9), torch.zeros(3, 9, 512))
    model = FineGrainedStudent(attention=True, device="cpu")
    assert model.device == torch.device("cpu")
    # numpy inputs are accepted and moved to the model's device
    out = model.index_video(_feats(3).numpy())
    assert isinstance(out, torch.Tensor) and out.device == model.device


def test_short_videos_are_padded_with_zero_frames() -> None:
    """Fewer than 4 frames: the reference comparator fails; we pad with zero frames, as an unmasked padded batch."""
    fg = FineGrainedStudent(attention=True).eval()
    sel = SelectorNetwork().eval()
    q, t = _feats(2, seed=1), _feats(6, seed=2)
    padded = torch.cat([q, torch.zeros(2, 9, 512)])
    with torch.no_grad():
        short = fg.calculate_video_similarity(fg.index_video(q), fg.index_video(t))
        expected = fg.calculate_video_similarity(fg.index_video(padded), fg.index_video(t))
        assert torch.isfinite(short).all()
        torch.testing.assert_close(short, expected)
        torch.testing.assert_close(sel.index_video(q), sel.index_video(padded))
        pos, neg, _ = fg(fg.index_video(q[None]), fg.index_video(t[None]), fg.index_video(t[None]))
    assert pos.shape == (1, 1) and torch.isfinite(pos).all()
