"""The DnS students: fine-grained S^f_A (attention) / S^f_B (binarization) and coarse-grained S^c.

Parameter names, shapes and method names are those of the reference implementation
(mever-team/distill-and-select), so a published checkpoint's ``checkpoint["model"]`` loads with
``strict=True`` and code written against the reference ports by changing an import.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dnsvr.nn._utils import Network, as_mask, as_tensor, check_dims, pad_min_frames
from dnsvr.nn.layers import Attention, BinarizationLayer, NetVLAD, SimilarityRegularizationLoss, VideoComparator
from dnsvr.nn.similarity import (
    ChamferSimilarity,
    frame_to_frame_cross,
    frame_to_frame_paired,
    pair_mask_cross,
    pair_mask_paired,
)

logger = logging.getLogger(__name__)

__all__ = ["FineGrainedStudent", "CoarseGrainedStudent"]


def _fill_missing_mask(mask: Tensor | None, other: Tensor | None, video: Tensor) -> Tensor | None:
    """When only one side of a pair has a mask, the other side is all valid (the reference drops both)."""
    if mask is None and other is not None:
        return video.new_ones(video.shape[:2])
    return mask


class FineGrainedStudent(Network):
    """Fine-grained student: S^f_A (``attention=True``) or S^f_B (``binarization=True``).

    A video is indexed into region features [T, 9, D] (attention-weighted, or ±1 codes); a pair is compared
    by region Chamfer → frame-to-frame matrix → comparator CNN → hardtanh → Chamfer over frames.

    Padded batches follow the reference's masking exactly; like the reference, a padded video gives the same
    similarity as the unpadded one when its length is a multiple of 4 (the comparator's two 2×2 poolings),
    and a slightly different one otherwise (a pooling window straddling the end counts as valid). Videos of
    fewer than 4 frames, which the reference comparator rejects, are padded with zero frames to 4.

    Args:
        dims: region vector size (512).
        attention: S^f_A.
        binarization: S^f_B (codes of ``bits`` bits; region dot products are divided by the code length).
        pretrained: load the published weights (``dns_fg_att_student`` / ``dns_fg_bin_student``) through
            :mod:`dnsvr.weights` (cache, download once, or ``weights_path``).
        bits: code length of S^f_B (default ``dims``).
        weights_path: explicit local checkpoint file (implies loading it, strictly).
        device: where the network lives; inputs are moved there.
        **kwargs: ignored (lets ``FineGrainedStudent(**vars(args))`` from the reference's scripts work).

    Raises:
        ValueError: both ``attention`` and ``binarization``, or ``pretrained`` with neither.

    Example:
        >>> student = FineGrainedStudent(attention=True, pretrained=True).eval()
        >>> q = student.index_video(query_feats)          # [T, 9, 512] → [1, T, 9, 512]
        >>> sims = student.calculate_video_similarity(q, targets, target_mask=mask)  # [1, B]
    """

    def __init__(
        self,
        dims: int = 512,
        attention: bool = False,
        binarization: bool = False,
        pretrained: bool = False,
        *,
        bits: int | None = None,
        weights_path: str | Path | None = None,
        device: str | torch.device | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        self.student_type = "fg"
        self.dims = dims
        if attention and binarization:
            raise ValueError("FineGrainedStudent: choose attention=True or binarization=True, not both")
        if binarization:
            self.fg_type = "bin"
            self.binarization = BinarizationLayer(dims, bits)
        elif attention:
            self.fg_type = "att"
            self.attention = Attention(dims, norm=False)
        else:
            self.fg_type = "none"
        self.f2f_sim = ChamferSimilarity(axes=(3, 2))
        self.visil_head = VideoComparator(padding="zero")
        self.htanh = nn.Hardtanh()
        self.v2v_sim = ChamferSimilarity(axes=(2, 1))
        self.sim_criterion = SimilarityRegularizationLoss()
        name = None
        if pretrained or weights_path is not None:
            if self.fg_type == "none":
                raise ValueError("FineGrainedStudent: published weights exist for attention=True "
                                 "(dns_fg_att_student) or binarization=True (dns_fg_bin_student) only")
            name = f"dns_fg_{self.fg_type}_student"
        self._finish_init(device, kwargs, name, weights_path)

    def get_network_name(self) -> str:
        return f"{self.student_type}_{self.fg_type}_student"

    get_student_type = get_network_name

    def index_video(self, x: Any, mask: Any = None) -> Tensor:
        """Represent video(s) for storage: attention-weighted regions (S^f_A) or ±1 codes (S^f_B).

        Args:
            x: [B, T, R, D] or [T, R, D] region features.
            mask: optional [B, T] / [T] padding mask; padded frames are zeroed.

        Returns:
            A tensor of ``x``'s shape (bits instead of D for S^f_B).
        """
        x = as_tensor(x, self.device)
        mask = as_mask(mask, x)
        if self.fg_type == "bin":
            x = self.binarization(x)
        elif self.fg_type == "att":
            x, _ = self.attention(x)
        if mask is not None:
            x = x.masked_fill((mask == 0)[..., None, None], 0.0)
        return x

    def frame_to_frame_similarity(
        self,
        query: Tensor,
        target: Tensor,
        query_mask: Tensor | None = None,
        target_mask: Tensor | None = None,
        batched: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Frame-to-frame similarity matrices (Chamfer over regions) and their mask.

        ``batched=True`` pairs query b with target b ([B, Tq, Tt]); otherwise every query with every target,
        flattened query-major ([A·B, Tq, Tt]). Masked entries are zero.
        """
        d = target.shape[-1]
        sim_mask = None
        if batched:
            sim = frame_to_frame_paired(query, target)
            if query_mask is not None and target_mask is not None:
                sim_mask = pair_mask_paired(query_mask, target_mask)
        else:
            sim = frame_to_frame_cross(query, target)
            sim = sim.reshape(-1, sim.shape[-2], sim.shape[-1])
            if query_mask is not None and target_mask is not None:
                sim_mask = pair_mask_cross(query_mask, target_mask).reshape(sim.shape)
        if self.fg_type == "bin":
            sim = sim / d
        if sim_mask is not None:
            sim = sim.masked_fill(sim_mask == 0, 0.0)
        return sim, sim_mask

    def _prepare_pair(self, query: Any, target: Any, query_mask: Any, target_mask: Any):
        query = as_tensor(query, self.device)
        target = as_tensor(target, self.device)
        query_mask, target_mask = as_mask(query_mask, query), as_mask(target_mask, target)
        query, query_mask = check_dims(query, query_mask, name="query")
        target, target_mask = check_dims(target, target_mask, name="target")
        if query.shape[-1] != target.shape[-1] or query.shape[-2] != target.shape[-2]:
            raise ValueError(f"query {tuple(query.shape)} and target {tuple(target.shape)} differ in regions/dims")
        query_mask = _fill_missing_mask(query_mask, target_mask, query)
        target_mask = _fill_missing_mask(target_mask, query_mask, target)
        query, query_mask = pad_min_frames(query, query_mask)
        target, target_mask = pad_min_frames(target, target_mask)
        return query, target, query_mask, target_mask

    def similarity_matrix(
        self, query: Any, target: Any, query_mask: Any = None, target_mask: Any = None
    ) -> tuple[Tensor, Tensor | None]:
        """Video comparator output after hardtanh, for every (query, target) pair.

        Returns:
            ``(sim [A·B, Tq//4, Tt//4], mask or None)``, query-major, as the reference.
        """
        query, target, query_mask, target_mask = self._prepare_pair(query, target, query_mask, target_mask)
        sim, sim_mask = self.frame_to_frame_similarity(query, target, query_mask, target_mask)
        sim, sim_mask = self.visil_head(sim, sim_mask)
        return self.htanh(sim), sim_mask

    def calculate_video_similarity(
        self, query: Any, target: Any, query_mask: Any = None, target_mask: Any = None
    ) -> Tensor:
        """Similarity of every query video with every target video (indexed representations).

        Args:
            query: [A, Tq, R, D] or [Tq, R, D] (output of :meth:`index_video`).
            target: [B, Tt, R, D] or [Tt, R, D].
            query_mask: optional [A, Tq] / [Tq]; target_mask: optional [B, Tt] / [Tt].

        Returns:
            [A, B] similarities in [-1, 1].
        """
        query, target, query_mask, target_mask = self._prepare_pair(query, target, query_mask, target_mask)
        sim, sim_mask = self.similarity_matrix(query, target, query_mask, target_mask)
        sim = self.v2v_sim(sim, sim_mask)
        return sim.view(query.shape[0], target.shape[0])

    def forward(
        self,
        anchors: Tensor,
        positives: Tensor,
        negatives: Tensor,
        anchor_mask: Tensor | None = None,
        positive_mask: Tensor | None = None,
        negative_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Training forward on indexed triplets [B, T, R, D] (each already through :meth:`index_video`).

        Returns:
            ``(pos_sim [B, 1], neg_sim [B, 1], reg_loss)`` — ``reg_loss`` is the similarity regularisation of the
            comparator outputs (before its weight, 1e-3 in the paper).
        """
        dev = self.device
        anchors, positives, negatives = (as_tensor(v, dev) for v in (anchors, positives, negatives))
        anchor_mask, positive_mask, negative_mask = (
            as_mask(m, v) if m is not None else v.new_ones(v.shape[:2])
            for m, v in ((anchor_mask, anchors), (positive_mask, positives), (negative_mask, negatives))
        )
        anchors, anchor_mask = pad_min_frames(anchors, anchor_mask)
        positives, positive_mask = pad_min_frames(positives, positive_mask)
        negatives, negative_mask = pad_min_frames(negatives, negative_mask)
        pos_sim, pos_mask = self.frame_to_frame_similarity(anchors, positives, anchor_mask, positive_mask, True)
        neg_sim, neg_mask = self.frame_to_frame_similarity(anchors, negatives, anchor_mask, negative_mask, True)
        if pos_sim.shape[1:] != neg_sim.shape[1:]:
            # positives and negatives padded to different lengths: pad the shorter to a common length
            t = max(pos_sim.shape[2], neg_sim.shape[2])
            pos_sim, pos_mask = (F.pad(v, (0, t - v.shape[2])) for v in (pos_sim, pos_mask))
            neg_sim, neg_mask = (F.pad(v, (0, t - v.shape[2])) for v in (neg_sim, neg_mask))
        sim, sim_mask = self.visil_head(torch.cat([pos_sim, neg_sim]), torch.cat([pos_mask, neg_mask]))
        loss = self.sim_criterion(sim)
        sim = self.v2v_sim(self.htanh(sim), sim_mask)
        pos_pair, neg_pair = torch.chunk(sim.unsqueeze(-1), 2, dim=0)
        return pos_pair, neg_pair, loss


class CoarseGrainedStudent(Network):
    """Coarse-grained student S^c: attention → region sum → transformer over frames → NetVLAD → one vector.

    Args:
        dims: region vector size (512).
        attention, transformer, netvlad: enable each stage (all on in the published model).
        transformer_heads, transformer_feedforward_dims, transformer_layers: the encoder's sizes.
        netvlad_clusters, netvlad_outdims: NetVLAD sizes (64 clusters, 1024-d output published).
        pretrained: load the published ``dns_cg_student`` weights through :mod:`dnsvr.weights`.
        weights_path: explicit local checkpoint file.
        device: where the network lives.
        **kwargs: ignored (reference compatibility).

    Example:
        >>> cg = CoarseGrainedStudent(pretrained=True).eval()
        >>> v = cg.index_video(feats)                  # [1, 1024], L2-normalised
        >>> cg.calculate_video_similarity(v, db)       # dot products
    """

    def __init__(
        self,
        dims: int = 512,
        attention: bool = True,
        transformer: bool = True,
        transformer_heads: int = 8,
        transformer_feedforward_dims: int = 2048,
        transformer_layers: int = 1,
        netvlad: bool = True,
        netvlad_clusters: int = 64,
        netvlad_outdims: int = 1024,
        pretrained: bool = False,
        *,
        weights_path: str | Path | None = None,
        device: str | torch.device | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        self.student_type = "cg"
        self.dims = dims
        if attention:
            self.attention = Attention(dims, norm=False)
        if transformer:
            layer = nn.TransformerEncoderLayer(dims, transformer_heads, transformer_feedforward_dims)
            # enable_nested_tensor=False: identical maths on every path (the fast path would zero padded steps)
            self.transformer = nn.TransformerEncoder(
                layer, transformer_layers, nn.LayerNorm(dims), enable_nested_tensor=False
            )
            for m in self.transformer.modules():
                if isinstance(m, nn.Linear) and m.bias is not None:
                    nn.init.zeros_(m.bias)
        if netvlad:
            self.netvlad = NetVLAD(dims, netvlad_clusters, outdims=netvlad_outdims)
        use_weights = pretrained or weights_path is not None
        self._finish_init(device, kwargs, "dns_cg_student" if use_weights else None, weights_path)

    @property
    def output_dims(self) -> int:
        return self.netvlad.outdims if hasattr(self, "netvlad") else self.dims

    def get_network_name(self) -> str:
        return f"{self.student_type}_student"

    get_student_type = get_network_name

    def index_video(self, x: Any, mask: Any = None) -> Tensor:
        """One L2-normalised vector per video.

        Args:
            x: [B, T, R, D] or [T, R, D] region features.
            mask: optional [B, T] / [T] padding mask.

        Returns:
            [B, output_dims] (B = 1 for a single video).
        """
        x, mask = self.frame_vectors(x, mask)
        if hasattr(self, "netvlad"):
            x = self.netvlad(x.transpose(1, 2).unsqueeze(-1), mask=mask)  # [B, D, T, 1]
        elif mask is not None:
            x = x.masked_fill((mask == 0).unsqueeze(-1), 0.0)
            x = torch.sum(x, 1) / torch.sum(mask, 1, keepdim=True)
        else:
            x = torch.mean(x, 1)
        return F.normalize(x, p=2, dim=-1)

    def frame_vectors(self, x: Any, mask: Any = None) -> tuple[Tensor, Tensor | None]:
        """The per-frame vectors that NetVLAD pools: attention → region sum → L2 norm → transformer.

        Args:
            x: [B, T, R, D] or [T, R, D] region features.
            mask: optional [B, T] / [T] padding mask.

        Returns:
            ``(vectors [B, T, D], mask [B, T] | None)``.
        """
        x = as_tensor(x, self.device)
        mask = as_mask(mask, x)
        x, mask = check_dims(x, mask)
        if hasattr(self, "attention"):
            x, _ = self.attention(x)
        x = F.normalize(torch.sum(x, 2), p=2, dim=-1)  # [B, T, D]
        if hasattr(self, "transformer"):
            pad = (mask == 0) if mask is not None else None
            x = self.transformer(x.transpose(0, 1), src_key_padding_mask=pad).transpose(0, 1)
        return x, mask

    def calculate_video_similarity(self, query: Any, target: Any) -> Tensor:
        """Dot products of indexed vectors: [A, Dc] × [B, Dc] → [A, B]."""
        query = as_tensor(query, self.device)
        target = as_tensor(target, self.device)
        if query.ndim == 1:
            query = query.unsqueeze(0)
        if target.ndim == 1:
            target = target.unsqueeze(0)
        return query @ target.T

    def forward(
        self,
        anchors: Tensor,
        positives: Tensor,
        negatives: Tensor,
        anchor_mask: Tensor | None = None,
        positive_mask: Tensor | None = None,
        negative_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, None]:
        """Training forward on indexed vectors [B, Dc]: ``(pos_sim [B, 1], neg_sim [B, 1], None)``."""
        pos = torch.sum(anchors * positives, 1, keepdim=True)
        neg = torch.sum(anchors * negatives, 1, keepdim=True)
        return pos, neg, None
