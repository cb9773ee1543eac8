"""Which teacher layer each student layer learns from, in one place.

Hidden representation k (k = 0..L) is `layers.k.layernorm_output` for k < L and `output` for
k = L (see `hidden_tap`). A mapping is a list of L_s + 1 teacher representation indices, one
per student representation.
"""
import random
from typing import Iterable, List, Tuple

TapPairs = List[Tuple[str, str]]   # (student tap, teacher tap)


def hidden_tap(index: int, num_layers: int) -> str:
    """The tap holding hidden representation `index` of a model with `num_layers` layers."""
    if not 0 <= index <= num_layers:
        raise ValueError(f"hidden representation {index} does not exist in a {num_layers}-layer model")
    return "output" if index == num_layers else f"layers.{index}.layernorm_output"


def uniform_layers(student_layers: int, teacher_layers: int) -> List[int]:
    """"Uniform" mapping (TinyBERT, CKD, SID, LRC-BERT, MobileBERT): the teacher's layers cut into
    `student_layers` contiguous segments of near-equal size, larger segments first (each takes
    ceil(L_t / L_s) layers while enough remain for one per later segment); returns the L_s + 1
    boundaries. (6, 12) -> [0, 2, 4, ..., 12]; (5, 12) -> [0, 3, 6, 9, 11, 12];
    (6, 8) -> [0, 2, 4, 5, 6, 7, 8]. A 1-layer student maps to [0, L_t] (the original refused it)."""
    _check(student_layers, teacher_layers)
    step = -(-teacher_layers // student_layers)
    boundaries, remaining = [0], teacher_layers
    for left in range(student_layers, 0, -1):
        size = min(step, remaining - (left - 1))
        boundaries.append(boundaries[-1] + size)
        remaining -= size
    return boundaries


def stride_layers(student_layers: int, teacher_layers: int) -> List[int]:
    """"Stride" mapping (PKD, MGSKD, RAIL-KD without randomness, DIITO): every k-th teacher
    representation, k = floor(L_t / L_s): [0, k, 2k, ..., L_s k]."""
    _check(student_layers, teacher_layers)
    stride = teacher_layers // student_layers
    return [stride * i for i in range(student_layers + 1)]


def random_layers(student_layers: int, teacher_layers: int, rng: random.Random) -> List[int]:
    """RAIL-KD's re-sampling: `student_layers` distinct teacher layers 1..L_t-1 drawn by `rng`,
    sorted, between representation 0 and L_t: a mapping of L_s + 1 entries."""
    _check(student_layers, teacher_layers)
    inner = sorted(rng.sample(range(1, teacher_layers), min(student_layers - 1, teacher_layers - 1)))
    return [0, *inner, teacher_layers]


def _check(student_layers: int, teacher_layers: int) -> None:
    if not 1 <= student_layers <= teacher_layers:
        raise ValueError(f"a layer mapping needs 1 <= student layers ({student_layers}) <= teacher layers "
                         f"({teacher_layers})")


def uniform_attention_pairs(student_layers: int, teacher_layers: int, count: int) -> TapPairs:
    """(student tap, teacher tap) of the attention scores (SID, MobileBERT): student layer l
    <-> teacher layer map[l + 1] - 1 (the last layer of its `uniform_layers` segment), l < count."""
    mapping = uniform_layers(student_layers, teacher_layers)
    return [(f"layers.{layer}.attention_scores", f"layers.{mapping[layer + 1] - 1}.attention_scores")
            for layer in range(count)]


def uniform_hidden_pairs(student_layers: int, teacher_layers: int, indices: Iterable[int]) -> TapPairs:
    """(student tap, teacher tap) of the hidden representations (SID, LRC-BERT, MobileBERT):
    student representation k <-> teacher representation map[k] (`uniform_layers`), k in `indices`."""
    mapping = uniform_layers(student_layers, teacher_layers)
    return [(hidden_tap(k, student_layers), hidden_tap(mapping[k], teacher_layers)) for k in indices]
