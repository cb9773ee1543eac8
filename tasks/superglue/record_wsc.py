"""SuperGLUE processors for the multi-choice tasks ReCoRD and WSC.

The ``label`` of these examples is the index of the gold choice (ReCoRD) or the WSC label
("False"/"True"); the choices themselves live in ``meta``.
"""
from __future__ import annotations

import random

from tasks.examples import InputExample, Where, punctuation_standardization, require
from tasks.processor import BOOL_TO_TITLE, JsonlProcessor
from tasks.superglue.processors import _as_dict, _idx, _text

WSC_CANDIDATES_PER_EXAMPLE = 9


class RecordProcessor(JsonlProcessor):
    """ReCoRD: ``passage.text`` (``@highlight\\n`` → ``- ``), entities, one query per ``qas``.

    Train: one example per gold answer with candidates ``[gold] + others``, where ``others``
    are the non-gold entities, shuffled (``random.Random(seed)`` over the file) and cut to
    ``max_train_candidates - 1`` when there are more; label 0. Dev/test: one example per query
    with all entities (sorted) as candidates and ``meta["answers"]`` = all gold answers; label =
    index of the first gold candidate (None on an unlabelled test set).
    """
    labels = ()
    max_train_candidates = 10

    def read(self, data_dir, split):
        self._rng = random.Random(self.seed)
        return super().read(data_dir, split)

    def from_record(self, record: dict, split: str, where: Where) -> list[InputExample]:
        passage_idx = _idx(record, where)
        passage = require(record, "passage", where, dict)
        raw_text = require(passage, "text", where, str)
        entities = sorted({punctuation_standardization(_entity(raw_text, entity, where))
                           for entity in require(passage, "entities", where, list)})
        text = punctuation_standardization(raw_text).replace("@highlight\n", "- ")
        examples = []
        for qa in require(record, "qas", where, list):
            qa = _as_dict(qa, "qas[]", where)
            question_idx = _idx(qa, where)
            query = _text(qa, "query", where)
            if query.count("@placeholder") != 1:
                raise where.error(f"query {question_idx} must contain '@placeholder' exactly "
                                  f"once: {query!r}")
            answers = sorted(self._answers(qa, split, where))
            base = {"passage_idx": passage_idx, "question_idx": question_idx}
            if split == "train":
                examples += self._train_examples(text, query, entities, answers, base)
                continue
            label = None
            if answers:
                golds = [i for i, entity in enumerate(entities) if entity in answers]
                if not golds:
                    raise where.error(f"query {question_idx}: no gold answer {answers} is among "
                                      f"the passage entities")
                label = golds[0]
            examples.append(InputExample(
                guid=f"{split}-p{passage_idx}-q{question_idx}", text_a=text, text_b=query,
                label=label, meta={**base, "candidates": entities, "answers": answers},
                idx=question_idx))
        return examples

    @staticmethod
    def _answers(qa: dict, split: str, where: Where) -> set[str]:
        if split == "test" and "answers" not in qa:
            return set()
        answers = require(qa, "answers", where, list)
        if split == "train" and not answers:
            raise where.error(f"query {qa['idx']} of the training set has no answers")
        return {_text(_as_dict(answer, "answers[]", where), "text", where) for answer in answers}

    def _train_examples(self, text: str, query: str, entities: list[str], answers: list[str],
                        base: dict) -> list[InputExample]:
        examples = []
        for answer_idx, answer in enumerate(answers):
            others = [entity for entity in entities if entity not in answers]
            if len(others) > self.max_train_candidates - 1:
                self._rng.shuffle(others)
                others = others[:self.max_train_candidates - 1]
            examples.append(InputExample(
                guid=f"train-p{base['passage_idx']}-q{base['question_idx']}-a{answer_idx}",
                text_a=text, text_b=query, label=0,
                meta={**base, "candidates": [answer] + others, "answers": [answer]},
                idx=[base["passage_idx"], base["question_idx"], answer_idx]))
        return examples


def _entity(text: str, entity: object, where: Where) -> str:
    """``text[start:end + 1]`` (ReCoRD's ``end`` is inclusive)."""
    entity = _as_dict(entity, "passage.entities[]", where)
    start, end = require(entity, "start", where, int), require(entity, "end", where, int)
    if not 0 <= start <= end < len(text):
        raise where.error(f"entity span [{start}, {end}] lies outside the passage "
                          f"(length {len(text)})")
    return text[start:end + 1]


class WscProcessor(JsonlProcessor):
    """WSC: ``text`` + ``target`` spans (+ ``candidates`` with ``negative``).

    Span indices are corrected by ±1 when the words do not match (span 2 may also be split off
    a longer word such as ``him,"``); a span 2 that still does not match raises. The training
    set keeps only ``label=True`` examples. With ``negative`` (the ``wsc`` task) every record
    must have ``candidates``; they are de-duplicated, those equal to span 1 (case-insensitive)
    dropped, and on train they are chunked by 9 (the last chunk filled by wrapping to the
    start), one example per chunk.
    """
    labels = ("False", "True")

    def __init__(self, negative: bool, few_superglue: bool = False, seed: int = 42):
        super().__init__(few_superglue, seed)
        self.negative = negative

    def from_record(self, record: dict, split: str, where: Where) -> list[InputExample]:
        idx = _idx(record, where)
        label = self.read_label(record, split, where, BOOL_TO_TITLE)
        target = require(record, "target", where, dict)
        span1_text, span2_text = _text(target, "span1_text", where), _text(target, "span2_text",
                                                                           where)
        words = _text(record, "text", where).split()
        span1_index = _fix_span1(words, span1_text, require(target, "span1_index", where, int))
        words, span2_index = _fix_span2(words, span2_text,
                                        require(target, "span2_index", where, int), where)
        meta = {"span1_text": span1_text, "span1_index": span1_index,
                "span2_text": span2_text, "span2_index": span2_index}
        candidates = self._candidates(record, span1_text, where) if self.negative else None
        if split == "train" and label != "True":
            return []
        example = dict(text_a=" ".join(words), label=label, idx=idx)
        if candidates is None:
            return [InputExample(guid=f"{split}-{idx}", meta=meta, **example)]
        if split != "train":
            return [InputExample(guid=f"{split}-{idx}", meta={**meta, "candidates": candidates},
                                 **example)]
        chunks = _chunk(candidates, WSC_CANDIDATES_PER_EXAMPLE)
        return [InputExample(guid=f"{split}-{idx}" + (f"-c{i}" if len(chunks) > 1 else ""),
                             meta={**meta, "candidates": chunk}, **example)
                for i, chunk in enumerate(chunks)]

    @staticmethod
    def _candidates(record: dict, span1_text: str, where: Where) -> list[str]:
        if "candidates" not in record:
            raise where.error("missing field 'candidates', which the multi-candidate WSC "
                              "(wsc_negative) needs; use the wsc_generative task for the plain "
                              "WSC files")
        texts = [_text(_as_dict(c, "candidates[]", where), "text", where)
                 for c in require(record, "candidates", where, list)]
        unique = list(dict.fromkeys(texts))
        return [text for text in unique if text.lower() != span1_text.lower()]


def _fix_span1(words: list[str], span1_text: str, index: int) -> int:
    """``index``, or ``index ± 1`` when only that matches span 1 (lower-cased words)."""
    span = span1_text.lower().split()
    lower = [word.lower() for word in words]
    if lower[index:index + len(span)] == span:
        return index
    for offset in (-1, 1):
        start = index + offset
        if start >= 0 and lower[start:start + len(span)] == span:
            return start
    return index


def _fix_span2(words: list[str], span2_text: str, index: int, where: Where
               ) -> tuple[list[str], int]:
    """Correct the pronoun index by ±1, or split it off a longer word; raise if impossible."""
    def matches(i: int) -> bool:
        return 0 <= i < len(words) and words[i] == span2_text
    if not matches(index):
        for offset in (-1, 1):
            if matches(index + offset):
                return words, index + offset
        if 0 <= index < len(words) and words[index].startswith(span2_text):
            word = words[index]
            words = words[:index] + [span2_text, word[len(span2_text):]] + words[index + 1:]
        else:
            raise where.error(f"span2 {span2_text!r} not found at word {index} "
                              f"(or ±1) of {words}")
    return words, index


def _chunk(candidates: list[str], size: int) -> list[list[str]]:
    """Chunks of ``size``; a short last chunk is filled from the start of the list."""
    if len(candidates) <= size:
        return [candidates]
    chunks = []
    for start in range(0, len(candidates), size):
        chunk = candidates[start:start + size]
        chunks.append(chunk + candidates[:size - len(chunk)])
    return chunks
