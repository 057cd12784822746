"""The DnS selector network: a per-video self-similarity scalar and an MLP that decides which
(query, candidate) pairs deserve the fine-grained student.

Parameter names follow the reference (``attention``, ``visil_head``, ``mlp.model.{0,1,4,5,8}``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dnsvr.nn._utils import Network, as_mask, as_tensor, check_dims, pad_min_frames
from dnsvr.nn.layers import Attention, VideoComparator
from dnsvr.nn.similarity import pair_mask_paired, region_similarity_paired

logger = logging.getLogger(__name__)

__all__ = ["MetadataModel", "SelectorNetwork"]


class MetadataModel(nn.Module):
    """MLP: [Linear(no bias) → BatchNorm → ReLU → Dropout] × (1 + num_layers) → Linear → Sigmoid."""

    def __init__(self, input_size: int, hidden_size: int = 100, num_layers: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Linear(input_size, hidden_size, bias=False), nn.BatchNorm1d(hidden_size), nn.ReLU(), nn.Dropout()
        ]
        for _ in range(num_layers):
            layers += [
                nn.Linear(hidden_size, hidden_size, bias=False), nn.BatchNorm1d(hidden_size), nn.ReLU(), nn.Dropout()
            ]
        layers += [nn.Linear(hidden_size, 1), nn.Sigmoid()]
        self.model = nn.Sequential(*layers)
        for m in self.model.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class SelectorNetwork(Network):
    """Selector network of DnS.

    Args:
        dims: region vector size (512).
        hidden_size, num_layers: MLP sizes (100, 1 published).
        attention, binarization: which published selector ``pretrained=True`` loads: the one trained with
            S^f_A (``dns_selector_cg-fg_att``) or with S^f_B (``dns_selector_cg-fg_bin``).
        pretrained: load the published weights through :mod:`dnsvr.weights`.
        weights_path: explicit local checkpoint file.
        device: where the network lives.
        **kwargs: ignored (reference compatibility).

    Raises:
        ValueError: ``pretrained`` without choosing ``attention`` or ``binarization``.

    Example:
        >>> sel = SelectorNetwork(attention=True, pretrained=True).eval()
        >>> q = sel.index_video(query_feats)                    # [1, 1]
        >>> scores = sel(torch.cat([q.expand(n, 1), t, coarse_sims[:, None]], 1))  # [n, 1]
    """

    def __init__(
        self,
        dims: int = 512,
        hidden_size: int = 100,
        num_layers: int = 1,
        attention: bool = False,
        binarization: bool = False,
        pretrained: bool = False,
        *,
        weights_path: str | Path | None = None,
        device: str | torch.device | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        self.attention = Attention(dims, norm=False)
        self.visil_head = VideoComparator(padding="zero")
        self.mlp = MetadataModel(3, hidden_size, num_layers)
        name = None
        if pretrained or weights_path is not None:
            if attention or (weights_path is not None and not binarization):
                name = "dns_selector_cg-fg_att"
            elif binarization:
                name = "dns_selector_cg-fg_bin"
            else:
                raise ValueError("SelectorNetwork(pretrained=True) needs attention=True (dns_selector_cg-fg_att) "
                                 "or binarization=True (dns_selector_cg-fg_bin)")
        self._finish_init(device, kwargs, name, weights_path)

    def get_network_name(self) -> str:
        return "selector_network"

    def frame_to_frame_similarity(self, x: Tensor) -> Tensor:
        """Self-similarity matrices [B, T, T]: attention-weighted regions, mean over all region pairs."""
        x, _ = self.attention(x)
        return region_similarity_paired(x, x).mean(dim=(2, 4))

    def index_video(self, x: Any, mask: Any = None) -> Tensor:
        """Self-similarity scalar per video (comparator output averaged over the valid positions).

        Args:
            x: [B, T, R, D] or [T, R, D] region features.
            mask: optional [B, T] / [T] padding mask.

        Returns:
            [B, 1].
        """
        x = as_tensor(x, self.device)
        mask = as_mask(mask, x)
        x, mask = check_dims(x, mask)
        x, mask = pad_min_frames(x, mask)  # the comparator needs 4 frames (zero frames, as the reference pads)
        sim = self.frame_to_frame_similarity(x)
        sim_mask = None
        if mask is not None:
            sim_mask = pair_mask_paired(mask, mask)
            sim = sim.masked_fill(sim_mask == 0, 0.0)
        sim, sim_mask = self.visil_head(sim, sim_mask)
        if sim_mask is not None:
            sim = sim.masked_fill(sim_mask == 0, 0.0)
            sim = torch.sum(sim, (1, 2)) / torch.sum(sim_mask, (1, 2))
        else:
            sim = torch.mean(sim, (1, 2))
        return sim.unsqueeze(-1)

    def forward(self, x: Any) -> Tensor:
        """Score pairs: ``x`` [N, 3] = [query self-sim, target self-sim, coarse sim] → [N, 1] in (0, 1)."""
        x = as_tensor(x, self.device)
        if x.ndim != 2 or x.shape[1] != 3:
            raise ValueError(f"selector input must be [N, 3] (query self-sim, target self-sim, coarse sim); "
                             f"got {tuple(x.shape)}")
        return self.mlp(x)
