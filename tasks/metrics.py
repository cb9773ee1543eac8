"""Task metrics in numpy, all on a 0-100 scale.

(The original reports accuracy and ReCoRD EM/F1 ×100 but CB's macro-F1 and MultiRC's F1a/EM
on 0-1; here every metric is a percentage.)
"""
from __future__ import annotations

import re
import string
from collections import Counter, defaultdict
from typing import Hashable, Sequence

import numpy as np
from unidecode import unidecode

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def _check(predictions: Sequence, labels: Sequence) -> tuple[np.ndarray, np.ndarray]:
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if predictions.shape != labels.shape or predictions.ndim != 1 or len(labels) == 0:
        raise ValueError(f"predictions {predictions.shape} and labels {labels.shape} must be "
                         f"non-empty vectors of one length")
    return predictions, labels


def accuracy(predictions: Sequence, labels: Sequence) -> float:
    predictions, labels = _check(predictions, labels)
    return 100.0 * float(np.mean(predictions == labels))


def _f1_of_class(predictions: np.ndarray, labels: np.ndarray, positive) -> float:
    true_positive = np.sum((predictions == positive) & (labels == positive))
    predicted, actual = np.sum(predictions == positive), np.sum(labels == positive)
    if predicted + actual == 0:
        return 0.0  # as sklearn (zero_division=0)
    return float(2.0 * true_positive / (predicted + actual))


def f1_binary(predictions: Sequence, labels: Sequence, positive=1) -> float:
    """F1 of the ``positive`` class (sklearn's ``f1_score`` with ``average='binary'``)."""
    predictions, labels = _check(predictions, labels)
    return 100.0 * _f1_of_class(predictions, labels, positive)


def f1_macro(predictions: Sequence, labels: Sequence) -> float:
    """Unweighted mean of the per-class F1 over the classes seen in labels or predictions."""
    predictions, labels = _check(predictions, labels)
    classes = np.union1d(predictions, labels)
    return 100.0 * float(np.mean([_f1_of_class(predictions, labels, c) for c in classes]))


def matthews_corrcoef(predictions: Sequence, labels: Sequence) -> float:
    """Matthews correlation (multi-class form, as sklearn); 0 when undefined."""
    predictions, labels = _check(predictions, labels)
    classes = np.union1d(predictions, labels)
    confusion = np.array([[np.sum((labels == t) & (predictions == p)) for p in classes]
                          for t in classes], dtype=np.float64)
    true_sums, pred_sums = confusion.sum(axis=1), confusion.sum(axis=0)
    correct, total = np.trace(confusion), confusion.sum()
    numerator = correct * total - true_sums @ pred_sums
    denominator = np.sqrt((total ** 2 - pred_sums @ pred_sums)
                          * (total ** 2 - true_sums @ true_sums))
    return 0.0 if denominator == 0 else 100.0 * float(numerator / denominator)


def pearson(predictions: Sequence[float], labels: Sequence[float]) -> float:
    """Pearson correlation; 0 when either side is constant."""
    x, y = (a.astype(np.float64) for a in _check(predictions, labels))
    x, y = x - x.mean(), y - y.mean()
    denominator = np.sqrt((x @ x) * (y @ y))
    return 0.0 if denominator == 0 else 100.0 * float((x @ y) / denominator)


def _ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their average rank."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    sorted_values = values[order]
    start = 0
    for end in range(1, len(values) + 1):
        if end == len(values) or sorted_values[end] != sorted_values[start]:
            ranks[order[start:end]] = (start + end + 1) / 2.0
            start = end
    return ranks


def spearman(predictions: Sequence[float], labels: Sequence[float]) -> float:
    """Spearman correlation: Pearson of the (tie-averaged) ranks."""
    x, y = _check(predictions, labels)
    return pearson(_ranks(x.astype(np.float64)), _ranks(y.astype(np.float64)))


def multirc_exact_match(predictions: Sequence, labels: Sequence,
                        question_keys: Sequence[Hashable]) -> float:
    """Percentage of questions whose answer options are **all** predicted correctly."""
    predictions, labels = _check(predictions, labels)
    if len(question_keys) != len(labels):
        raise ValueError(f"{len(question_keys)} question keys for {len(labels)} labels")
    all_correct: dict[Hashable, bool] = defaultdict(lambda: True)
    for key, correct in zip(question_keys, predictions == labels):
        all_correct[key] &= bool(correct)
    return 100.0 * float(np.mean(list(all_correct.values())))


def squad_normalize(text: str) -> str:
    """Transliterate to ASCII (``unidecode``, as the original), lower-case, strip punctuation
    and articles, collapse whitespace."""
    text = unidecode(text).lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def squad_exact_match(prediction: str, gold: str) -> float:
    return float(squad_normalize(prediction) == squad_normalize(gold))


def squad_f1(prediction: str, gold: str) -> float:
    """Token F1 of the normalised strings (0 when they share no token)."""
    predicted, actual = squad_normalize(prediction).split(), squad_normalize(gold).split()
    num_same = sum((Counter(predicted) & Counter(actual)).values())
    if num_same == 0:
        return 0.0
    precision, recall = num_same / len(predicted), num_same / len(actual)
    return 2 * precision * recall / (precision + recall)


def record_scores(predictions: Sequence[str], golds: Sequence[Sequence[str]]
                  ) -> tuple[float, float]:
    """ReCoRD (EM, F1): per query the max over its gold answers, averaged, ×100."""
    if len(predictions) != len(golds) or not golds:
        raise ValueError(f"{len(predictions)} predictions for {len(golds)} gold lists")
    em = f1 = 0.0
    for prediction, answers in zip(predictions, golds):
        if not answers:
            raise ValueError(f"no gold answers to score the prediction {prediction!r}")
        em += max(squad_exact_match(prediction, gold) for gold in answers)
        f1 += max(squad_f1(prediction, gold) for gold in answers)
    return 100.0 * em / len(golds), 100.0 * f1 / len(golds)
