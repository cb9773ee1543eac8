"""--student_truncate_tn (`truncate_teacher_as_student`) on fused tensors: the student's Q, K
and V rows of the fused query_key_value weight and bias come from the teacher's Q, K and V
(the leading block part by part, not the top-left block of [Q; K; V]); a same-width student
is an exact copy, a shallower one takes the teacher's bottom layers, and MP=2 equals MP=1.

Every copy is exact (slicing only, no arithmetic), so all comparisons are `torch.equal`."""
import pytest
import torch
from torch import nn

import mpu
from dist_utils import run_distributed
from glm_fixtures import tiny_config
from model import GLMModel
from training.teachers import truncate_teacher_as_student

# Odd head widths (13 and 11), never square against each other; both divisible by MP=2.
TEACHER = dict(num_layers=2, hidden_size=52, num_attention_heads=4)
STUDENT = dict(num_layers=2, hidden_size=44, num_attention_heads=4)
QKV = "transformer.layers.{}.attention.query_key_value.{}"


def _glm(seed: int, **sizes) -> GLMModel:
    torch.manual_seed(seed)
    return GLMModel(tiny_config(**sizes))


def _state(model: nn.Module) -> dict:
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def _expected_qkv(teacher_tensor: torch.Tensor, teacher_width: int, student_width: int) -> torch.Tensor:
    """Student [Q; K; V] ([3 * student_width] or [3 * student_width, student_width]) written
    independently: each of the teacher's Q, K, V row blocks truncated to the student's size."""
    q, k, v = (teacher_tensor[i * teacher_width:(i + 1) * teacher_width] for i in range(3))
    columns = (slice(0, student_width),) if teacher_tensor.dim() == 2 else ()
    return torch.cat([part[(slice(0, student_width), *columns)] for part in (q, k, v)])


def _random_qkv_biases(model: GLMModel, seed: int) -> None:
    """Biases start at zero, which any copy would reproduce: give them distinct values."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for layer in model.transformer.layers:
            layer.attention.query_key_value.bias.normal_()


def test_a_narrower_student_takes_q_k_and_v_from_the_teachers_q_k_and_v():
    teacher, student = _glm(0, **TEACHER), _glm(1, **STUDENT)
    _random_qkv_biases(teacher, seed=2)
    truncate_teacher_as_student(student, teacher)
    t, s = _state(teacher), _state(student)
    for layer in range(2):
        for name in ("weight", "bias"):
            key = QKV.format(layer, name)
            expected = _expected_qkv(t[key], 52, 44)
            assert s[key].shape == expected.shape
            assert torch.equal(s[key], expected), key
            # K's first rows: the teacher's K, not Q's tail (what the top-left block would give).
            # ([..., :44] keeps the student's 44 input columns of the weight; a no-op on the bias.)
            assert torch.equal(s[key][44:52], t[key][52:60][..., :44]), key
    # Non-fused tensors keep the leading block along every dimension.
    dense = "transformer.layers.1.attention.dense.weight"
    assert torch.equal(s[dense], t[dense][:44, :44])


def test_a_narrower_students_fused_bias_against_literal_indices():
    teacher, student = _glm(0, **TEACHER), _glm(1, **STUDENT)
    with torch.no_grad():
        bias = teacher.transformer.layers[0].attention.query_key_value.bias
        bias.copy_(torch.arange(bias.numel(), dtype=bias.dtype))
    truncate_teacher_as_student(student, teacher)
    copied = student.transformer.layers[0].attention.query_key_value.bias
    expected = torch.cat([torch.arange(0, 44), torch.arange(52, 96), torch.arange(104, 148)]).float()
    assert torch.equal(copied, expected)


def test_a_same_width_student_is_an_exact_copy():
    teacher, student = _glm(0, **TEACHER), _glm(1, **TEACHER)
    copied = truncate_teacher_as_student(student, teacher)
    t, s = _state(teacher), _state(student)
    assert copied == len(s)
    for key in s:
        assert torch.equal(s[key], t[key]), key


def test_a_shallower_student_takes_the_teachers_bottom_layers():
    teacher = _glm(0, **{**TEACHER, "num_layers": 3})
    student = _glm(1, **TEACHER)
    truncate_teacher_as_student(student, teacher)
    t, s = _state(teacher), _state(student)
    for key in s:   # layers 0 and 1, embeddings and the final layer norm
        assert torch.equal(s[key], t[key]), key
    assert not torch.equal(s[QKV.format(1, "weight")], t[QKV.format(2, "weight")])


class _Fused(nn.Module):
    def __init__(self, stride: int):
        super().__init__()
        self.proj = mpu.ColumnParallelLinear(6, 12, stride=stride)


def test_a_teacher_fused_differently_from_the_student_raises():
    with pytest.raises(ValueError, match="proj.weight.*fuse different parts"):
        truncate_teacher_as_student(_Fused(stride=3), _Fused(stride=1))


def _truncate_worker(rank, world_size, teacher_state, student_state, specs):
    teacher, student = GLMModel(tiny_config(**TEACHER)), GLMModel(tiny_config(**STUDENT))
    teacher.load_state_dict(mpu.shard_state_dict(teacher_state, specs["teacher"], rank, world_size))
    student.load_state_dict(mpu.shard_state_dict(student_state, specs["student"], rank, world_size))
    truncate_teacher_as_student(student, teacher)
    return _state(student)


@pytest.mark.slow
def test_mp2_truncation_equals_mp1():
    teacher, student = _glm(0, **TEACHER), _glm(1, **STUDENT)
    _random_qkv_biases(teacher, seed=2)
    specs = dict(teacher=mpu.partition_specs(teacher), student=mpu.partition_specs(student))
    shards = run_distributed(_truncate_worker, 2, _state(teacher), _state(student), specs)
    truncate_teacher_as_student(student, teacher)
    for key, expected in _state(student).items():
        spec = mpu.PartitionSpec(**specs["student"][key]) if key in specs["student"] else None
        merged = mpu.merge_tensors([shard[key] for shard in shards], spec, what=key)
        assert torch.equal(merged, expected), key
