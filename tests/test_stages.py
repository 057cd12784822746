"""One name per stage: the command line's values, read back from every older spelling."""

from __future__ import annotations

import pytest

from dnsvr.bundle import Bundle
from dnsvr.eval.runner import MODELS
from dnsvr.stages import EVALUATED, STUDENTS, Stage
from dnsvr.train.students import STUDENT_TYPES, StudentTrainConfig


@pytest.mark.parametrize("text,stage", [("fg-att", Stage.FG_ATT), ("fg_att", Stage.FG_ATT), ("att", Stage.FG_ATT),
                                        ("FG-BIN", Stage.FG_BIN), ("bin", Stage.FG_BIN), ("cg", Stage.CG),
                                        ("chamfer", Stage.CHAMFER), ("dns", Stage.DNS), ("teacher", Stage.TEACHER)])
def test_every_spelling_reads_as_one_stage(text, stage):
    assert Stage.parse(text) is stage


def test_allowed_stages_and_errors_list_the_values():
    assert Stage.parse("fg_bin", STUDENTS) is Stage.FG_BIN
    with pytest.raises(ValueError, match="fg-att, fg-bin, cg"):
        Stage.parse("dns", STUDENTS)
    with pytest.raises(ValueError, match="unknown stage 'nope'"):
        Stage.parse("nope")


def test_the_same_values_in_training_evaluation_and_bundles():
    assert set(STUDENT_TYPES) == {s.value for s in STUDENTS} == {"fg-att", "fg-bin", "cg"}
    assert MODELS == tuple(s.value for s in EVALUATED) == ("teacher", "fg-att", "fg-bin", "cg", "dns")
    assert StudentTrainConfig(type="fg_att").type == "fg-att"   # an older config or script
    assert [Stage.from_fine_type(t) for t in ("att", "bin", "chamfer")] == [Stage.FG_ATT, Stage.FG_BIN, Stage.CHAMFER]
    assert Bundle("x", "efficientnet_lite0", fine_type=Stage.CHAMFER, fine_args={"dims": 8}).fine_type == "chamfer"
    with pytest.raises(ValueError):
        Stage.from_fine_type("none")
