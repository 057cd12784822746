"""The stages of DnS by one set of names: what the command line takes, the library takes, reports print.

:class:`Stage` names every network or training-free stage a user chooses between — in
``dnsvr train student --type``, ``dnsvr evaluate --model``, bundles and reports. Its values are the
command line's (``fg-att``); :meth:`Stage.parse` also reads the spellings older files and scripts
use (``fg_att``, ``att``, ``FG-ATT``). A bundle stores its fine stage by :attr:`Stage.fine_type`
(``att``, ``bin``, ``chamfer``), the name its on-disk format has always used.

Example:
    >>> Stage.parse("fg_att") is Stage.FG_ATT
    True
    >>> Stage.FG_BIN.fine_type
    'bin'
    >>> Stage.from_fine_type("chamfer")
    <Stage.CHAMFER: 'chamfer'>
"""

from __future__ import annotations

from enum import Enum


class Stage(str, Enum):
    """A stage of the DnS pipeline (a network, a training-free similarity, or the whole pipeline)."""

    TEACHER = "teacher"   #: ViSiL, the source of the students' targets
    FG_ATT = "fg-att"     #: fine-grained attention student S^f_A
    FG_BIN = "fg-bin"     #: fine-grained binarization student S^f_B
    CG = "cg"             #: coarse-grained student S^c
    CHAMFER = "chamfer"   #: the training-free fine similarity of the lite bundle
    MEAN = "mean"         #: the training-free coarse vector of the lite bundle
    DNS = "dns"           #: the whole pipeline: coarse → selector → fine within a budget

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, value: str | Stage, allowed: tuple[Stage, ...] | None = None) -> Stage:
        """The stage named ``value`` in any of its spellings.

        Args:
            value: ``"fg-att"``, ``"fg_att"``, ``"att"``, ``"FG-ATT"``, a :class:`Stage`...
            allowed: the stages the caller accepts (default: all).

        Raises:
            ValueError: an unknown name, or one not in ``allowed`` (the message lists the valid values).
        """
        choices = allowed or tuple(cls)
        stage = value if isinstance(value, Stage) else _ALIASES.get(str(value).strip().lower().replace("_", "-"))
        if stage is None or stage not in choices:
            raise ValueError(f"unknown stage {value!r}; choose one of {', '.join(s.value for s in choices)}")
        return stage

    @property
    def fine_type(self) -> str | None:
        """The name a bundle stores this fine stage under (``att``, ``bin``, ``chamfer``), or None."""
        return _FINE_TYPES.get(self)

    @classmethod
    def from_fine_type(cls, fine_type: str) -> Stage:
        """The stage of a bundle's stored fine type (``att`` → :attr:`FG_ATT`)."""
        for stage, name in _FINE_TYPES.items():
            if name == fine_type:
                return stage
        raise ValueError(f"unknown fine type {fine_type!r}; expected one of {', '.join(_FINE_TYPES.values())}")


_FINE_TYPES: dict[Stage, str] = {Stage.FG_ATT: "att", Stage.FG_BIN: "bin", Stage.CHAMFER: "chamfer"}

_ALIASES: dict[str, Stage] = {
    **{s.value: s for s in Stage},
    "att": Stage.FG_ATT, "attention": Stage.FG_ATT, "sfa": Stage.FG_ATT,
    "bin": Stage.FG_BIN, "binarization": Stage.FG_BIN, "sfb": Stage.FG_BIN,
    "coarse": Stage.CG,
}

#: The students ``dnsvr train student --type`` distils.
STUDENTS: tuple[Stage, ...] = (Stage.FG_ATT, Stage.FG_BIN, Stage.CG)
#: What ``dnsvr evaluate --model`` runs over a feature file.
EVALUATED: tuple[Stage, ...] = (Stage.TEACHER, Stage.FG_ATT, Stage.FG_BIN, Stage.CG, Stage.DNS)
