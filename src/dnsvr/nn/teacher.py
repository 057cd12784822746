"""The ViSiL teacher head (MKLab-ITI/visil, PyTorch branch): L2-constrained region attention, region Chamfer,
the video comparator CNN (replication padding) and Chamfer over frames.

Two published configurations: ``visil`` (3840-d regions, asymmetric Chamfer) and ``visil_symmetric``
(512-d whitened regions, symmetric Chamfer). Parameter names: ``attention.context_vector.weight`` and
``video_comperator.*`` (sic), so the published head state dicts load with ``strict=True``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dnsvr.nn._utils import Network, as_mask, as_tensor, check_dims
from dnsvr.nn.layers import Attention, VideoComparator
from dnsvr.nn.similarity import ChamferSimilarity, frame_to_frame_paired

logger = logging.getLogger(__name__)

__all__ = ["ViSiLTeacher", "ViSiLHead"]


class ViSiLTeacher(Network):
    """ViSiL similarity head, used as the DnS teacher.

    Args:
        dims: region vector size (3840 for ``visil``, 512 for ``visil_symmetric``).
        attention: L2-constrained region attention.
        video_comperator: the comparator CNN (+ hardtanh) over the frame-to-frame matrix (sic, reference name).
        symmetric: symmetric Chamfer at region and frame level.
        pretrained: load the published head: ``visil`` (dims 3840, asymmetric) or ``visil_symmetric``
            (dims 512, symmetric) through :mod:`dnsvr.weights`.
        weights_path: explicit local checkpoint file.
        device: where the network lives.

    Raises:
        ValueError: ``pretrained`` with a configuration that has no published weights.

    Example:
        >>> teacher = ViSiLTeacher(pretrained=True).eval()
        >>> q, t = teacher.index_video(q_feats), teacher.index_video(t_feats)
        >>> teacher.calculate_video_similarity(q, t)   # tensor([s])
    """

    def __init__(
        self,
        dims: int = 3840,
        attention: bool = True,
        video_comperator: bool = True,
        symmetric: bool = False,
        pretrained: bool = False,
        *,
        weights_path: str | Path | None = None,
        device: str | torch.device | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        self.dims = dims
        self.symmetric = symmetric
        if attention:
            self.attention = Attention(dims, norm=True)
        if video_comperator:
            self.video_comperator = VideoComparator(padding="replicate")
        self.f2f_sim = ChamferSimilarity(axes=(3, 2), symmetric=symmetric)
        self.v2v_sim = ChamferSimilarity(axes=(2, 1), symmetric=symmetric)
        self.htanh = nn.Hardtanh()
        name = None
        if pretrained or weights_path is not None:
            name = "visil_symmetric" if symmetric else "visil"
            if pretrained and not (attention and video_comperator and dims == (512 if symmetric else 3840)):
                raise ValueError(
                    "published ViSiL heads: dims=3840, symmetric=False ('visil') and dims=512, symmetric=True "
                    f"('visil_symmetric'), both with attention and video_comperator; got dims={dims}, "
                    f"symmetric={symmetric}, attention={attention}, video_comperator={video_comperator}"
                )
        self._finish_init(device, kwargs, name, weights_path)

    def get_network_name(self) -> str:
        return "visil_symmetric" if self.symmetric else "visil"

    def attention_weights(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.attention(x)

    def apply_constrain(self) -> None:
        """Re-project the attention context vector onto the unit sphere (after an optimiser step)."""
        if hasattr(self, "attention"):
            self.attention.apply_constraint()

    def prepare_tensor(self, x: Tensor) -> Tensor:
        """Attention-weighted region features (identity without attention)."""
        if hasattr(self, "attention"):
            x, _ = self.attention(x)
        return x

    def index_video(self, x: Any, mask: Any = None) -> Tensor:
        """Attention weighting of region features [.., T, R, D] (shape kept); padded frames (mask 0) zeroed."""
        x = as_tensor(x, self.device)
        x = self.prepare_tensor(x)
        if mask is not None:
            m = as_mask(mask, x)
            x = x.masked_fill((m == 0)[..., None, None], 0.0)
        return x

    def frame_to_frame_similarity(self, query: Any, target: Any) -> Tensor:
        """Frame-to-frame matrices of paired videos: [B, Tq, R, D] × [B, Tt, R, D] (or single videos) → [B, Tq, Tt].

        A single query is compared with each of a batch of targets.
        """
        query, target = self._paired(query, target)
        return frame_to_frame_paired(query, target, symmetric=self.symmetric)

    def visil_output(self, sim: Tensor) -> Tensor:
        """Comparator output (before hardtanh) for frame-to-frame matrices [B, Tq, Tt] → [B, Tq//4, Tt//4]."""
        out, _ = self.video_comperator(sim)
        return out

    def video_to_video_similarity(self, query: Tensor, target: Tensor) -> Tensor:
        sim = self.frame_to_frame_similarity(query, target)
        if hasattr(self, "video_comperator"):
            sim = self.htanh(self.visil_output(sim))
        return self.v2v_sim(sim)

    def calculate_video_similarity(
        self, query: Any, target: Any, query_mask: Any = None, target_mask: Any = None
    ) -> Tensor:
        """Similarity of paired videos (or one query against each of a batch of targets).

        Args:
            query: [Tq, R, D] or [B, Tq, R, D] (output of :meth:`index_video`).
            target: [Tt, R, D] or [B, Tt, R, D].
            query_mask, target_mask: optional padding masks [B, T]; padded frames are cut off per pair (the
                replication padding of the comparator must see each video's true edge).

        Returns:
            [B] similarities.
        """
        query, target = self._paired(query, target)
        if query_mask is None and target_mask is None:
            return self.video_to_video_similarity(query, target)
        qm = as_mask(query_mask, query) if query_mask is not None else query.new_ones(query.shape[:2])
        tm = as_mask(target_mask, target) if target_mask is not None else target.new_ones(target.shape[:2])
        qm, tm = qm.reshape(-1, query.shape[1]).expand(query.shape[0], -1), tm.reshape(-1, target.shape[1])
        if tuple(tm.shape) != tuple(target.shape[:2]):
            raise ValueError(f"target_mask {tuple(tm.shape)} does not match target {tuple(target.shape)}")
        sims = [
            self.video_to_video_similarity(query[b][qm[b] != 0], target[b][tm[b] != 0])
            for b in range(query.shape[0])
        ]
        return torch.cat(sims)

    def forward(self, query: Any, target: Any) -> Tensor:
        return self.calculate_video_similarity(query, target)

    def _paired(self, query: Any, target: Any) -> tuple[Tensor, Tensor]:
        query = as_tensor(query, self.device)
        target = as_tensor(target, self.device)
        query, _ = check_dims(query, None, name="query")
        target, _ = check_dims(target, None, name="target")
        if query.shape[0] == 1 and target.shape[0] > 1:
            query = query.expand(target.shape[0], -1, -1, -1)
        if query.shape[0] != target.shape[0] or query.shape[2:] != target.shape[2:]:
            raise ValueError(f"query {tuple(query.shape)} and target {tuple(target.shape)} cannot be paired "
                             "(batch sizes, regions and dims must match, or the query batch must be 1)")
        return query, target


ViSiLHead = ViSiLTeacher  # the reference's name for the head
