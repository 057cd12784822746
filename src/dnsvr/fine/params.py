"""The fine stage's vocabulary (fine types, precisions) and the default bounds of its blocks, batches and tiles."""

from __future__ import annotations

from typing import Literal

from dnsvr.nn._utils import MIN_COMPARATOR_FRAMES

FineType = Literal["att", "bin", "chamfer"]
FINE_TYPES: tuple[str, ...] = ("att", "bin", "chamfer")
Precision = Literal["exact", "int8"]
#: Region-product precisions: ``exact`` (float32; int8 for S^f_B codes, which is exact) or ``int8``.
PRECISIONS: tuple[str, ...] = ("exact", "int8")
#: The precision used when none is asked for.
DEFAULT_PRECISION = "exact"

#: Default bound on the elements of one block's int8 region product (int32: 4 bytes each): ~3 candidates
#: of 60 frames, whose product and its max over regions stay in cache (blocks of 10 were ~15% slower per
#: pair in the int8 product).
DEFAULT_BLOCK_ELEMENTS = 1_000_000
#: The same bound for float32 region products (no gain from smaller blocks measured there).
FLOAT_BLOCK_ELEMENTS = 3_000_000
#: Default bound on the elements of one comparator batch's first feature map (32 channels × pairs × T1 × T2):
#: ~70 pairs of 60 frames (32 MB; 2–3% faster per pair than ~35 with 2 threads, ~140 was slower).
DEFAULT_CNN_ELEMENTS = 8_000_000
#: Smallest video length the comparator can take (two 2×2 poolings): the networks' own constant.
MIN_FRAMES = MIN_COMPARATOR_FRAMES
#: Default bound on the working memory of one pair (bytes). A pair that would need more (long videos:
#: one pair of hour-long videos needs ~2.5 GB untiled) runs in tiles: the frame-to-frame matrix in row
#: strips, the comparator in tiles with a halo, the region product in blocks of candidate frames.
DEFAULT_MEMORY_BUDGET = 256 * 2**20
#: Input frames of context a comparator tile needs on each side. Output position ``v`` (a quarter of the
#: input resolution, after the two 2×2 poolings) reads input rows ``4v-7 .. 4v+10``; the zero padding at
#: an artificial tile edge corrupts the first 2 and the last 3 output rows of the tile. 8 frames (2 output
#: rows) before and after keeps every output row a tile contributes exact, and keeps tile starts multiples
#: of 4, so that both poolings pair the same rows and columns as the untiled network.
HALO = 8
# peak bytes per comparator input position: the padded input, the 4×4 windows, conv1 at the 4
# pooling phases, the pooled map (float32; the later layers are smaller)
_CNN_BYTES_PER_POSITION = 4 * 48
