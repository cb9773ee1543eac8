"""PET patterns and verbalizers of the SuperGLUE tasks.

``‖`` in the docstrings separates parts a and b; ``[M]`` is the mask. Text parts keep the
leading spaces of the original patterns (they matter for BPE tokenizers).
"""
from __future__ import annotations

from tasks.cloze import MASK, ClozeParts, parts, shortenable
from tasks.examples import InputExample
from tasks.patterns import MultiTokenPVP, SingleTokenPVP, lowercase_first, remove_final_punc

_YES_NO = {"entailment": " Yes", "not_entailment": " No"}


class RtePVP(SingleTokenPVP):
    """0: ``"hyp" ? ‖ [M], "premise"``; 1: ``hyp? ‖ [M], premise``; 2: ``"hyp" ? ‖ [M].
    "premise"``; 3: ``hyp? ‖ [M]. premise``; 4: ``premise question: hyp True or False?
    answer: [M]``. The hypothesis loses its final punctuation."""
    pattern_ids = (0, 1, 2, 3, 4)
    labels = ("entailment", "not_entailment")
    verbalizer_table = {4: {"entailment": " true", "not_entailment": " false"}, None: _YES_NO}
    pattern4_question = " True or False?"

    def fill(self, example: InputExample) -> ClozeParts:
        premise, hyp = example.text_a, remove_final_punc(example.text_b)
        pid = self.pattern_id
        if pid == 4:
            return ClozeParts(parts(shortenable(premise), " question:",
                                    shortenable(" " + self.pattern4_hypothesis(example)),
                                    self.pattern4_question, " answer:", MASK))
        punct = "," if pid in (0, 1) else "."
        if pid in (0, 2):
            return ClozeParts(parts('"', shortenable(hyp), '" ?'),
                              parts(MASK, punct, ' "', shortenable(premise), '"'))
        return ClozeParts(parts(shortenable(hyp), "?"),
                          parts(MASK, punct, shortenable(" " + premise)))

    def pattern4_hypothesis(self, example: InputExample) -> str:
        return remove_final_punc(example.text_b)


class CbPVP(RtePVP):
    """RTE patterns 0-3; 4: ``premise question: hyp true, false or neither? answer: [M]``
    (the hypothesis keeps its punctuation in pattern 4, as in PET)."""
    labels = ("entailment", "contradiction", "neutral")
    verbalizer_table = {4: {"entailment": " true", "contradiction": " false",
                            "neutral": " neither"},
                        None: {"entailment": " Yes", "contradiction": " No", "neutral": " Maybe"}}
    pattern4_question = " true, false or neither?"

    def pattern4_hypothesis(self, example: InputExample) -> str:
        return example.text_b


class BoolQPVP(SingleTokenPVP):
    """0-1: ``passage Question: q? Answer: [M].``; 2-3: ``passage Based on the previous
    passage, q? [M].``; 4-5: ``Based on the following passage q? [M]. passage``.
    Even ids: `` No``/`` Yes``; odd ids: `` false``/`` true``."""
    pattern_ids = (0, 1, 2, 3, 4, 5)
    labels = ("false", "true")
    verbalizer_table = {**{i: {"false": " No", "true": " Yes"} for i in (0, 2, 4)},
                        **{i: {"false": " false", "true": " true"} for i in (1, 3, 5)}}

    def fill(self, example: InputExample) -> ClozeParts:
        passage, question = shortenable(example.text_a), shortenable(" " + example.text_b)
        if self.pattern_id < 2:
            return ClozeParts(parts(passage, " Question:", question, "?", " Answer:", MASK, "."))
        if self.pattern_id < 4:
            return ClozeParts(parts(passage, " Based on the previous passage,", question, "?",
                                    MASK, "."))
        return ClozeParts(parts("Based on the following passage", question, "?", MASK, ".",
                                shortenable(" " + example.text_a)))


class WicPVP(SingleTokenPVP):
    """0: ``"s1" / "s2" Similar sense of "w"? [M].``; 1: ``s1 s2 Does w have the same meaning
    in both sentences? [M]``; 2: ``w . Sense (1) (a) "s1" ([M]) "s2"`` (verbalizers 2/b)."""
    pattern_ids = (0, 1, 2)
    labels = ("false", "true")
    verbalizer_table = {2: {"false": "2", "true": "b"}, None: {"false": " No", "true": " Yes"}}

    def fill(self, example: InputExample) -> ClozeParts:
        s1, s2, word = example.text_a, example.text_b, example.meta["word"]
        if self.pattern_id == 0:
            return ClozeParts(parts(shortenable(f'"{s1}" / "{s2}"'),
                                    f' Similar sense of "{word}"?', MASK, "."))
        if self.pattern_id == 1:
            return ClozeParts(parts(shortenable(s1), shortenable(" " + s2),
                                    f" Does {word} have the same meaning in both sentences?",
                                    MASK))
        return ClozeParts(parts(word, " .", ' Sense (1) (a) "', shortenable(s1), '"', " (",
                                MASK, ') "', s2, '"'))


class MultiRcPVP(SingleTokenPVP):
    """0: ``passage. Question: q? Is it a? [M].``; 1: ``passage. Question: q? Is the correct
    answer "a"? [M].``; 2: ``passage. Based on the previous passage, q? Is "a" a correct
    answer? [M].``; 3: ``passage q- [[M]] a`` (`` False``/`` True``); 4: ``passage. Question:
    q? a? [M].``. Passage and question lose their final punctuation."""
    pattern_ids = (0, 1, 2, 3, 4)
    labels = (0, 1)
    verbalizer_table = {3: {0: " False", 1: " True"}, None: {0: " No", 1: " Yes"}}

    def fill(self, example: InputExample) -> ClozeParts:
        passage = shortenable(remove_final_punc(example.text_a))
        question, answer = remove_final_punc(example.text_b), example.meta["answer"]
        pid = self.pattern_id
        if pid == 3:
            return ClozeParts(parts(passage, " " + question, "- [", MASK, "]", answer))
        if pid == 2:
            return ClozeParts(parts(passage, ". Based on the previous passage,", " " + question,
                                    "?", ' Is "', answer, '" a correct answer?', MASK, "."))
        head = (passage, ".", " Question:", " " + question, "?")
        middle = {0: (" Is it", " " + answer, "?"), 1: (' Is the correct answer "', answer, '"?'),
                  4: (" " + answer, "?")}[pid]
        return ClozeParts(parts(*head, *middle, MASK, "."))


class CopaPVP(MultiTokenPVP):
    """0: ``"c1" or "c2"? premise because/, so [M].``; 1: ``c1 or c2? premise because/, so
    [M].``; answers `` choice``. 2: per choice ``"c1" or "c2"? premise [M] choice`` with the
    answer `` because``/`` so``. Choices are lower-cased at the first letter and lose their
    final punctuation; so does the premise."""
    pattern_ids = (0, 1, 2)

    def fill_choices(self, example: InputExample) -> list[ClozeParts]:
        c1 = remove_final_punc(lowercase_first(example.meta["choice1"]))
        c2 = remove_final_punc(lowercase_first(example.meta["choice2"]))
        premise = shortenable(remove_final_punc(" " + example.text_a))
        cause = example.meta["question"] == "cause"
        if self.pattern_id == 2:
            joiner = " because" if cause else " so"
            return [ClozeParts(parts('"', c1, '" or "', c2, '"?', premise, MASK, " " + choice),
                               answer=joiner) for choice in (c1, c2)]
        joiner = " because" if cause else ", so"
        if self.pattern_id == 0:
            filled = parts('"', c1, '" or "', c2, '"?', premise, joiner, MASK, ".")
        else:
            filled = parts(c1, " or", " " + c2, "?", premise, joiner, MASK, ".")
        return [ClozeParts(filled, answer=" " + choice) for choice in (c1, c2)]


class WscPVP(MultiTokenPVP):
    """The pronoun is starred in the text. 0: ``text The pronoun '*p*' refers to [M].``;
    1: ``text In the previous sentence, the pronoun '*p*' refers to [M].``; 2: ``text
    Question: In the passage above, what does the pronoun '*p*' refer to? Answer: [M].``
    Answers: `` span1`` then `` candidate`` for each candidate (multi-candidate variant)."""
    pattern_ids = (0, 1, 2)

    def fill_choices(self, example: InputExample) -> list[ClozeParts]:
        pronoun, index = example.meta["span2_text"], example.meta["span2_index"]
        words = example.text_a.split()
        words[index] = f"*{words[index]}*"
        text = shortenable(" ".join(words))
        if self.pattern_id == 0:
            filled = parts(text, f" The pronoun '*{pronoun}*' refers to", MASK, ".")
        elif self.pattern_id == 1:
            filled = parts(text, f" In the previous sentence, the pronoun '*{pronoun}*' refers "
                                 f"to", MASK, ".")
        else:
            filled = parts(text, f" Question: In the passage above, what does the pronoun "
                                 f"'*{pronoun}*' refer to?", " Answer:", MASK, ".")
        answers = [example.meta["span1_text"], *example.meta.get("candidates", [])]
        return [ClozeParts(filled, answer=" " + answer) for answer in answers]


class RecordPVP(MultiTokenPVP):
    """0: ``passage query-before-@placeholder [M] query-after``; answers `` entity``.
    The text before the placeholder loses its trailing spaces (the answer brings one); when
    the query starts with the placeholder, the mask follows the passage directly."""

    def fill_choices(self, example: InputExample) -> list[ClozeParts]:
        before, after = example.text_b.split("@placeholder")
        head = (" " + before.rstrip(),) if before.strip() else ()
        filled = parts(shortenable(example.text_a), *head, MASK, after)
        return [ClozeParts(filled, answer=" " + entity)
                for entity in example.meta["candidates"]]
