"""dnsvr: DnS (Distill-and-Select) content-based video retrieval at scale.

The public entry points live in their modules (see DESIGN.md for the layout):
``dnsvr.nn`` (networks), ``dnsvr.backbones`` (feature extraction networks),
``dnsvr.video`` (decoding), ``dnsvr.extract`` (videos → features),
``dnsvr.index`` (the persistent index), ``dnsvr.search`` (the DnS query),
``dnsvr.eval`` (benchmarks), ``dnsvr.train`` (distillation).
"""

from __future__ import annotations

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
