"""Shared pieces of the method zoo: teacher-layer mappings, typed method options, teacher
binding, and the random-data disturbance."""
import random
from dataclasses import dataclass

import pytest
import torch

from distill.distill_model import (STUDENT_MODELS, DistillOptions, GLMStudent, build_student, method_options_for,
                                   register_student)
from distill.layer_mapping import hidden_tap, random_layers, stride_layers, uniform_layers
from distill.random_data import RandomDataOptions, disturb_batch, disturb_tokens
from glm_fixtures import tiny_config
from model import GLMModel


@pytest.mark.parametrize("student,teacher,expected", [
    (6, 12, [0, 2, 4, 6, 8, 10, 12]), (6, 24, [0, 4, 8, 12, 16, 20, 24]), (4, 12, [0, 3, 6, 9, 12]),
    (5, 12, [0, 3, 6, 9, 11, 12]), (6, 8, [0, 2, 4, 5, 6, 7, 8]),
    (12, 18, [0, 2, 4, 6, 8, 10, 12, 13, 14, 15, 16, 17, 18]),
    (36, 48, list(range(0, 25, 2)) + list(range(25, 49))), (1, 12, [0, 12]), (3, 3, [0, 1, 2, 3])])
def test_uniform_mapping_matches_the_spec_examples(student, teacher, expected):
    assert uniform_layers(student, teacher) == expected   # the original's mapping at these sizes


def test_stride_random_and_taps():
    assert stride_layers(6, 12) == [0, 2, 4, 6, 8, 10, 12] and stride_layers(5, 12) == [0, 2, 4, 6, 8, 10]
    layers = random_layers(4, 12, random.Random(3))
    assert layers[0] == 0 and layers[-1] == 12 and len(layers) == 5 and layers == sorted(set(layers))
    assert layers == random_layers(4, 12, random.Random(3))   # the rng decides
    assert hidden_tap(2, 6) == "layers.2.layernorm_output" and hidden_tap(6, 6) == "output"
    with pytest.raises(ValueError, match="1 <= student layers"):
        uniform_layers(7, 6)


def test_method_options_are_typed_and_built_from_flag_values():
    @dataclass(frozen=True)
    class ToyOptions:
        toy_weight: float = 1.0
        toy_wo_inter: bool = False

    @register_student
    class Toy(GLMStudent):
        name = "toy_for_test"
        options_class = ToyOptions

    try:
        student = build_student("toy_for_test", GLMModel(tiny_config()), DistillOptions(),
                                method_options={"toy_weight": 2.5, "tinybert_wo_inter": True})
        assert student.method_options == ToyOptions(toy_weight=2.5)
        assert method_options_for(Toy, None) == ToyOptions()
        assert build_student("kd", GLMModel(tiny_config()), DistillOptions()).method_options is None
        teachers = [GLMModel(tiny_config())]
        student.bind_teachers(teachers)
        assert student.teacher_modules[0] is teachers[0]
        assert not any(k.startswith("student.") for k in student.state_dict())   # not saved, not trained
    finally:
        STUDENT_MODELS.pop("toy_for_test")


def test_random_data_disturbance():
    gen = torch.Generator().manual_seed(0)
    text = torch.arange(12).view(3, 4)
    shuffled = disturb_tokens(text, "shuffle", 100, gen)
    assert sorted(shuffled.flatten().tolist()) == list(range(12)) and not torch.equal(shuffled, text)
    sampled = disturb_tokens(text, "sample", 5, torch.Generator().manual_seed(0))
    assert sampled.shape == text.shape and sampled.max() < 5
    batch = {"text": text, "loss_mask": torch.ones(3, 4), "uid": ["a", "b", "c"]}
    options = RandomDataOptions.from_flags("dual", "0,1", "shuffle", 100)
    doubled = disturb_batch(batch, options, torch.Generator().manual_seed(1))
    assert doubled["text"].shape == (6, 4) and torch.equal(doubled["text"][:3], text)
    assert torch.equal(doubled["loss_mask"], torch.ones(6, 4)) and doubled["uid"] == ["a", "b", "c"] * 2
    replaced = disturb_batch(batch, RandomDataOptions.from_flags("replace", "1", "sample", 7),
                             torch.Generator().manual_seed(1))
    assert replaced["text"].shape == (3, 4) and replaced["loss_mask"] is batch["loss_mask"]
    assert options.applies(1) and not RandomDataOptions.from_flags("replace", "1", "sample", 7).applies(0)
    with pytest.raises(ValueError, match="--distill_random_data='swap'"):
        RandomDataOptions.from_flags("swap", "0", "shuffle", 10)
