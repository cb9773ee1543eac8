"""Cloze patterns of the GLUE tasks. SST-2's and MNLI's are the original's; the others are this
project's own, in the same PET style. STS-B (regression) has no cloze pattern.

``‖`` separates parts a and b; ``[M]`` is the mask.
"""
from __future__ import annotations

from tasks.cloze import MASK, ClozeParts, parts, shortenable
from tasks.examples import InputExample
from tasks.glue.processors import BINARY, NLI2, NLI3
from tasks.patterns import SingleTokenPVP, lowercase_first, remove_final_punc
from tasks.superglue.patterns import RtePVP


class _QuestionPairPVP(SingleTokenPVP):
    """0 (and 2): ``"a" ? ‖ [M], "b"``; 1 (and 3): ``a? ‖ [M], b``; a loses its final
    punctuation."""

    def fill(self, example: InputExample) -> ClozeParts:
        text_a = shortenable(remove_final_punc(example.text_a))
        if self.pattern_id % 2 == 0:
            return ClozeParts(parts('"', text_a, '" ?'),
                              parts(MASK, ', "', shortenable(example.text_b), '"'))
        return ClozeParts(parts(text_a, "?"), parts(MASK, ",", shortenable(" " + example.text_b)))


class MnliPVP(_QuestionPairPVP):
    """MNLI (matched and mismatched); 0-1: `` Wrong``/`` Right``/`` Maybe``, 2-3: `` No``/
    `` Yes``/`` Maybe``."""
    pattern_ids = (0, 1, 2, 3)
    labels = NLI3
    verbalizer_table = {
        **{i: {"contradiction": " Wrong", "entailment": " Right", "neutral": " Maybe"}
           for i in (0, 1)},
        **{i: {"contradiction": " No", "entailment": " Yes", "neutral": " Maybe"}
           for i in (2, 3)}}


class QnliPVP(_QuestionPairPVP):
    """QNLI: a = question, b = sentence; `` Yes`` (entailment) / `` No``."""
    pattern_ids = (0, 1)
    labels = NLI2
    verbalizer_table = {None: {"entailment": " Yes", "not_entailment": " No"}}


class ParaphrasePVP(SingleTokenPVP):
    """MRPC and QQP: 0: ``a ‖ [M], b`` (b lower-cased at the first letter); 1: ``a ‖ [M]. b``;
    `` No``/`` Yes``."""
    pattern_ids = (0, 1)
    labels = BINARY
    verbalizer_table = {None: {"0": " No", "1": " Yes"}}

    def fill(self, example: InputExample) -> ClozeParts:
        if self.pattern_id == 0:
            tail = parts(MASK, ",", shortenable(" " + lowercase_first(example.text_b)))
        else:
            tail = parts(MASK, ".", shortenable(" " + example.text_b))
        return ClozeParts(parts(shortenable(example.text_a)), tail)


class Sst2PVP(SingleTokenPVP):
    """``text It was [M].``; 0: `` terrible``/`` great``, 1: `` bad``/`` good``."""
    pattern_ids = (0, 1)
    labels = BINARY
    verbalizer_table = {0: {"0": " terrible", "1": " great"}, 1: {"0": " bad", "1": " good"}}

    def fill(self, example: InputExample) -> ClozeParts:
        return ClozeParts(parts(shortenable(example.text_a), " It was", MASK, "."))


class ColaPVP(SingleTokenPVP):
    """``text This is [M].``; `` incorrect``/`` correct``."""
    labels = BINARY
    verbalizer_table = {None: {"0": " incorrect", "1": " correct"}}

    def fill(self, example: InputExample) -> ClozeParts:
        return ClozeParts(parts(shortenable(example.text_a), " This is", MASK, "."))


class GlueRtePVP(RtePVP):
    """GLUE RTE: the SuperGLUE RTE patterns (sentence1 = premise, sentence2 = hypothesis)."""


class WnliPVP(RtePVP):
    """WNLI: the RTE patterns with labels ``"1"`` (entailment) / ``"0"``."""
    labels = BINARY
    verbalizer_table = {4: {"1": " true", "0": " false"}, None: {"1": " Yes", "0": " No"}}
