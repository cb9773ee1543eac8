"""GLMD vocabulary compression: map sizes and building (the original's table for
bert-base-uncased, protected tokens, each similarity method on a constructed embedding), the
compressed GLM against an uncompressed GLM holding the expanded table, the losses over the
kept vocabulary against independent full-tensor computations, one MP=2 spawn comparing
everything with MP=1, and checkpoints through change_mp (MP 1 -> 2 -> 1)."""
import math

import pytest
import torch
import torch.nn.functional as F

import mpu
from model.checkpoint import change_mp
from dist_utils import assert_rel_close, run_distributed
from distill import DistillBatch, DistillOptions, StepInfo, TeacherInfo, build_student
from glm_fixtures import blank_infilling_batch, reference_glm_logits, tiny_config
from model import GLMConfig, GLMModel, ModelOutput
from model.checkpoint import load_model_shard, model_states, save_model_shard
from model.vocab_map import (VocabMap, VocabTableError, build_vocab_map, map_vocab_rows, read_vocab_table,
                             replacement_ids, sorted_order, write_vocab_table)
from test_methods_glmd import ref_loss
from training.checkpointing import load_model_weights
from training.config import ConfigError
from training.vocab_compression import protect_ids

# fp32; compressed and reference computations differ only in summation order (a few ulp) and, at
# MP=2, in the order of all-reduced partial sums: 1e-5 relative is a wide margin.
RTOL = 1e-5
V, M = 136, 64          # tiny_config's vocabulary; kept rows (divisible by 2 and 4)


def tiny_map(seed: int = 0, embeddings: bool = True) -> VocabMap:
    """A map keeping M of V ids in a random frequency order; replacements by decoder similarity."""
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(V, generator=gen)
    table = torch.randn(V, 12, generator=gen) if embeddings else None
    return build_vocab_map(order, M, table, "decoder", unk_id=int(order[0]))


def compressed_glm(seed: int = 3, unmap: bool = False, **overrides) -> GLMModel:
    torch.manual_seed(seed)
    model = GLMModel(tiny_config(map_vocab_size=M, unmap_vocab_output=unmap, **overrides))
    model.set_vocab_map(tiny_map())
    return model


# --------------------------------------------------------------------------- sizes and tables
def test_map_size_is_a_fraction_or_a_count_rounded_up():
    assert map_vocab_rows(0.5, 30524, 30592, 128) == 15360          # GLMD 110M -> 66M
    assert map_vocab_rows(1000, 30524, 30592, 128) == 1024
    assert map_vocab_rows(128, 30524, 30592, 128) == 128
    assert map_vocab_rows(0, 30524, 30592, 128) == 0
    assert map_vocab_rows(30500, 30524, 30592, 128) == 0            # rounds to the whole vocabulary: off
    with pytest.raises(ValueError, match="negative"):
        map_vocab_rows(-0.5, 30524, 30592, 128)


def test_the_originals_table_at_half_size_keeps_15360_rows(shared_dir):
    path = shared_dir / "data" / "glmkd" / "BertWordPieceTokenizer_bert-base-uncased.txt"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    table = read_vocab_table(str(path))
    assert len(table) == 30524                                     # 30522 WordPieces + sop, eop
    padded = mpu.pad_vocab_size(len(table), 128)
    rows = map_vocab_rows(0.5, len(table), padded, 128)
    assert (padded, rows) == (30592, 15360)
    order = sorted_order(table.sort_id, padded)
    unk = table.tokens.index("[UNK]")
    vocab_map = build_vocab_map(order, rows, None, unk_id=int(table.sort_id[unk]))
    assert vocab_map.problems() is None and vocab_map.kept_rows == 15360
    # Protected tokens head the table; they are kept, and every dropped id reads [UNK].
    protected = [table.tokens.index(t) for t in ("[UNK]", "[PAD]", "[CLS]", "[SEP]", "[MASK]", "yes", "no",
                                                   "true", "false", "<|startofpiece|>", "<|endofpiece|>")]
    assert max(protected) < 40
    assert vocab_map.origin_id_mask_map[table.sort_id[protected]].all()
    dropped = ~vocab_map.origin_id_mask_map
    assert int(dropped.sum()) == padded - rows
    assert (vocab_map.origin_id_to_target_pos[dropped] == vocab_map.origin_id_to_target_pos[table.sort_id[unk]]).all()
    # Parameters removed from the word embeddings at hidden 768: (30592 - 15360) * 768.
    config = dict(num_layers=1, hidden_size=768, num_attention_heads=12, vocab_size=padded)
    full = GLMModel(tiny_config(**config)).word_embeddings.weight.numel()
    small = GLMModel(tiny_config(**config, map_vocab_size=rows)).word_embeddings.weight.numel()
    assert full - small == (30592 - 15360) * 768 == 11_698_176
    # The same inputs always give the same map.
    again = build_vocab_map(sorted_order(read_vocab_table(str(path)).sort_id, padded), rows, None,
                            unk_id=int(table.sort_id[unk]))
    assert all(torch.equal(getattr(vocab_map, n), getattr(again, n)) for n in ("origin_id_to_target_pos",
               "origin_id_mask_map", "target_pos_to_origin_id"))


def test_table_round_trip_and_bad_tables(tmp_path):
    path = tmp_path / "table.txt"
    write_vocab_table(str(path), [2, 0, 3, 1], ["c", "a", "d", "b"], [9, 5, 5, 0])
    table = read_vocab_table(str(path))
    assert table.sort_id.tolist() == [2, 0, 3, 1] and table.tokens == ("c", "a", "d", "b")
    assert table.counts == (9, 5, 5, 0)
    assert sorted_order(table.sort_id, 6).tolist() == [2, 0, 3, 1, 4, 5]    # padding keeps its own position
    lines = path.read_text().splitlines()
    bad = {"header": ["id\tsort_id"] + lines[1:], "fields": lines[:2] + ["1\t2\tx"] + lines[3:],
           "integer": lines[:2] + ["1\tx\tc\t9\t0.1"] + lines[3:],
           "permutation": lines[:2] + [lines[2].replace("\t0\t", "\t2\t", 1)] + lines[3:]}
    messages = {"header": ":1: the header", "fields": ":3: expected 5", "integer": ":3: origin_no", "permutation":
                "not a permutation"}
    for name, content in bad.items():
        broken = tmp_path / f"{name}.txt"
        broken.write_text("\n".join(content) + "\n")
        with pytest.raises(VocabTableError, match=messages[name]):
            read_vocab_table(str(broken))
    with pytest.raises(VocabTableError, match="no such vocabulary table"):
        read_vocab_table(str(tmp_path / "missing.txt"))
    with pytest.raises(VocabTableError, match="only 3"):
        sorted_order(table.sort_id, 3)


# --------------------------------------------------------------------------- building the map
def _brute_force_pick(vectors, kept, query, method):
    """The kept id of highest similarity, first one on ties, by plain Python arithmetic."""
    def score(a, b):
        dot = sum(x * y for x, y in zip(a, b))
        if method == "decoder":
            return dot
        if method == "cosine":
            norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
            return dot / norm if norm > 0 else 0.0
        return -sum((x - y) ** 2 for x, y in zip(a, b))
    scores = [score(vectors[query], vectors[k]) for k in kept]
    return kept[scores.index(max(scores))]


@pytest.mark.parametrize("method,expected_for_d", [("decoder", 0), ("cosine", 2), ("euclidean", 1)])
def test_a_dropped_token_maps_to_the_most_similar_kept_token(method, expected_for_d):
    # Kept: k0 (long, off-axis), k1 (unit x), k2 (short, parallel to d). Dropped: d, its mirror, zero.
    vectors = [[3.0, 3.0], [1.0, 0.0], [0.5, 0.1], [1.0, 0.2], [-1.0, -0.2], [0.0, 0.0]]
    embeddings = torch.tensor(vectors)
    order = torch.tensor([0, 1, 2, 3, 4, 5])
    vocab_map = build_vocab_map(order, 3, embeddings, method)
    picks = vocab_map.target_pos_to_origin_id[3:].tolist()
    assert picks == [_brute_force_pick(vectors, [0, 1, 2], q, method) for q in (3, 4, 5)]
    assert picks[0] == expected_for_d
    assert vocab_map.origin_id_to_target_pos[3].item() == expected_for_d       # kept ids keep rows 0, 1, 2
    assert vocab_map.problems() is None
    # Chunking does not change the answer.
    assert replacement_ids(embeddings, order[:3], order[3:], method, chunk_size=1).tolist() == picks


def test_map_tensors_are_consistent_and_deterministic():
    first, second = tiny_map(seed=1), tiny_map(seed=1)
    for name in ("origin_id_to_target_pos", "origin_id_mask_map", "target_pos_to_origin_id"):
        assert torch.equal(getattr(first, name), getattr(second, name))
    kept = first.kept_ids
    assert torch.equal(first.origin_id_to_target_pos[kept], torch.arange(M))
    dropped = (~first.origin_id_mask_map).nonzero().squeeze(-1)
    # A dropped id's row is the row of its replacement, which is kept.
    replacement = first.target_pos_to_origin_id[first.origin_id_to_target_pos[dropped]]
    assert first.origin_id_mask_map[replacement].all()
    assert torch.equal(first.origin_id_to_target_pos[dropped], first.origin_id_to_target_pos[replacement])
    with pytest.raises(ValueError, match="UNK"):
        build_vocab_map(torch.arange(V), M, None, unk_id=V - 1)     # [UNK] itself would be dropped


def test_protected_ids_are_always_kept():
    order = torch.arange(20)
    protected = [19, 3, 17]
    result = protect_ids(order, 8, protected)
    assert sorted(result.tolist()) == list(range(20))
    kept = result[:8].tolist()
    assert {19, 3, 17} <= set(kept)
    # The two latest unprotected kept ids (6, 7) made room, and moved just behind the kept ones.
    assert kept == [0, 1, 2, 3, 4, 5, 17, 19] and result[8:10].tolist() == [6, 7]
    assert torch.equal(protect_ids(order, 8, [1, 2]), order)
    with pytest.raises(ConfigError, match="fewer than"):
        protect_ids(order, 2, [5, 6, 7])


# --------------------------------------------------------------------------- the compressed model
def _expanded_state(model: GLMModel) -> dict:
    """An uncompressed GLM's state: the same weights, word-embedding row v = compressed row pos[v]."""
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(("origin_", "target_"))}
    state["word_embeddings.weight"] = model.word_embeddings.weight[model.origin_id_to_target_pos].detach()
    return state


def test_compressed_model_equals_the_uncompressed_model_with_the_expanded_table():
    model = compressed_glm()
    ids, position, sep, target, _ = blank_infilling_batch(seed=2)
    logits = model(ids, position, sep).logits
    assert logits.shape[-1] == V
    expected = reference_glm_logits(_expanded_state(model), model.config, ids, position, sep)
    assert_rel_close(logits, expected, RTOL, "default-mode logits")
    # unmap_vocab_output: the same numbers, one column per kept row.
    unmapped = GLMModel(model.config.replace(unmap_vocab_output=True))
    unmapped.load_state_dict(model.state_dict())
    out = unmapped(ids, position, sep)
    assert out.logits.shape[-1] == M
    assert_rel_close(out.logits[..., model.origin_id_to_target_pos], expected, RTOL, "unmapped logits")
    # Targets: original ids -> columns, argmax columns -> original ids (kept ids round-trip).
    kept = model.vocab_map.kept_ids
    assert torch.equal(out.to_ids(out.to_columns(kept)), kept)
    assert torch.equal(ModelOutput(logits).to_columns(target), target)
    # The inputs the student reads, as original ids: a dropped id reads its replacement.
    replaced = model.replace_dropped_ids(torch.arange(V))
    assert model.origin_id_mask_map[replaced].all()
    assert torch.equal(model.map_input_ids(replaced), model.map_input_ids(torch.arange(V)))


def test_a_model_without_a_map_says_so():
    model = GLMModel(tiny_config(map_vocab_size=M))
    assert "no map" in model.vocab_map_problem()
    with pytest.raises(ValueError, match="keeps 32"):
        model.set_vocab_map(build_vocab_map(torch.arange(V), 32, torch.randn(V, 4)))
    with pytest.raises(ValueError, match="map_vocab_size"):
        tiny_config(map_vocab_size=V)
    with pytest.raises(ValueError, match="unmap_vocab_output needs"):
        tiny_config(unmap_vocab_output=True)


# --------------------------------------------------------------------------- losses over the kept vocabulary
def _kl(s, t, temperature):
    """T^2 * KL(softmax(t/T) || softmax(s/T)) per sample, the mean over its rows, with F.kl_div.
    logits [B, S, V'] -> [B]."""
    kl = F.kl_div(F.log_softmax(s / temperature, -1), F.softmax(t / temperature, -1), reduction="none").sum(-1)
    return temperature ** 2 * kl.mean(-1)


def _ref(s, t, temperature, **options):
    """test_methods_glmd's full-tensor reference over the given columns only (no row mask)."""
    return ref_loss(s, t, torch.ones(s.shape[:-1]), temperature, **options)


LOSS_CASES = [  # (label, unmap, loss options, reference options)
    ("unmap_kl", True, {}, {}),
    ("unmap_mse", True, dict(mse=True), dict(mse=True)),
    ("mask_map_kl", False, {}, {}),
    ("mask_map_mse", False, dict(mse=True), dict(mse=True)),
    ("mask_map_top_n", False, dict(top_n=6), dict(top_n=6)),
    ("mask_map_teacher_min", False, dict(top_n=0.1, teacher_min=True), dict(top_n=6, teacher_min=True)),
]


def _loss_inputs(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(4, 5, V, generator=gen) * 3, torch.randn(4, 5, V, generator=gen) * 3


def _student(unmap: bool, temperature: float = 2.0, method: str = "logitsdistil", **options):
    model = compressed_glm(unmap=unmap)
    return build_student(method, model, DistillOptions(distill_temperature=temperature,
                                                       distill_logit_mask_map=not unmap, **options))


@pytest.mark.parametrize("case", LOSS_CASES, ids=[c[0] for c in LOSS_CASES])
def test_logits_loss_over_the_kept_vocabulary(case):
    _, unmap, options, ref_options = case
    student = _student(unmap)
    kept = student.model.vocab_map.kept_ids
    s_full, t = _loss_inputs()
    s = s_full[..., :M].clone() if unmap else s_full.clone()
    s.requires_grad_(True)
    rows, _ = student.logits_loss(s, t, **options)
    loss = rows.mean()
    # Unmapped: the student's M columns against the teacher at the kept ids; mask_map: both over kept ids.
    s_ref = s.detach()[..., :M] if unmap else s.detach()[..., kept]
    s_ref.requires_grad_(True)
    expected = _ref(s_ref, t[..., kept], 2.0, **ref_options)
    assert_rel_close(loss, expected, RTOL, "loss")
    loss.backward()
    expected.backward()
    grad = s.grad if unmap else s.grad[..., kept]
    assert_rel_close(grad, s_ref.grad, RTOL, "gradient")
    if not unmap:   # dropped columns get no gradient at all
        assert (s.grad[..., ~student.model.origin_id_mask_map] == 0).all()


def test_pretraining_soft_term_and_base_logits_term_use_the_kept_vocabulary():
    s_full, t = _loss_inputs(seed=4)
    batch = DistillBatch("pretrain", loss_mask=torch.ones(4, 5), token_level=True)
    for unmap in (True, False):
        student = _student(unmap, method="kd", distill_pt_soft=True)
        kept = student.model.vocab_map.kept_ids
        s = s_full[..., :M] if unmap else s_full
        loss, metrics = student.pre_loss(s, t, torch.tensor(0.0), batch)
        expected = _kl(s[..., :M] if unmap else s[..., kept], t[..., kept], 2.0)
        assert_rel_close(loss, expected, RTOL, f"soft term (unmap={unmap})")
    # kd --distill_logits_parallel: the base-class term, the same loss as GLMD's.
    student = _student(True, method="kd", distill_logits_parallel=True)
    s_out = ModelOutput(torch.zeros(4, 2), {"logits_parallel": s_full[..., :M]})
    t_out = ModelOutput(torch.zeros(4, 2), {"logits_parallel": t})
    loss, metrics = student.inter_loss(s_out, t_out, batch, StepInfo())
    assert_rel_close(loss, _kl(s_full[..., :M], t[..., student.model.vocab_map.kept_ids], 2.0), RTOL, "base term")
    assert set(metrics) == {"inter/logits_parallel"}


def test_teacher_input_ids_map_feeds_the_teacher_the_replacements():
    student = build_student("logitsdistil", compressed_glm(), DistillOptions(),
                            method_options=dict(logitsdistil_teacher_input_ids_map=True))
    replace = student.teacher_interventions(0, StepInfo())["input_ids"]
    ids = torch.arange(V).view(8, 17)
    assert torch.equal(replace(ids), student.model.replace_dropped_ids(ids))
    plain = build_student("logitsdistil", GLMModel(tiny_config()), DistillOptions(),
                          method_options=dict(logitsdistil_teacher_input_ids_map=True))
    with pytest.raises(ValueError, match="vocabulary-compressed student"):
        plain.teacher_interventions(0, StepInfo())


# --------------------------------------------------------------------------- MP=2 and checkpoints
def _mp2_worker(rank, world_size, checkpoint_dir, batch, expected, loss_inputs, expected_losses):
    states = load_model_shard(checkpoint_dir, rank)
    config = GLMConfig.from_dict(states["model_config"])
    model = GLMModel(config)
    model.load_state_dict(states["module"])
    assert model.word_embeddings.weight.shape[0] == M // 2 and model.vocab_map_problem() is None
    ids, position, sep = batch
    out = model(ids, position, sep)
    logits = mpu.gather_from_model_parallel_region(out.logits)
    assert_rel_close(logits, expected["logits"], RTOL, "MP=2 logits")
    # Gradient of the (replicated) embedding table through the gathered output weights.
    weights = torch.linspace(-1, 1, logits.numel()).view_as(logits)
    (logits * weights).sum().backward()
    grad = mpu.gather_from_model_parallel_region(model.word_embeddings.weight.grad.t()).t()
    assert_rel_close(grad, expected["grad"], RTOL, "MP=2 embedding gradient")
    # The kept-vocabulary losses with the vocabulary split in two.
    s_full, t = loss_inputs
    per_rank = V // 2
    t_shard = t[..., rank * per_rank:(rank + 1) * per_rank]
    for (label, unmap, options), value in zip(expected_losses["cases"], expected_losses["values"]):
        student = build_student("logitsdistil", GLMModel(config.replace(unmap_vocab_output=unmap)),
                                DistillOptions(distill_temperature=2.0, distill_logit_mask_map=not unmap))
        student.model.load_state_dict(states["module"])
        s = s_full[..., :M] if unmap else s_full
        width = s.size(-1) // 2
        rows, _ = student.logits_loss(s[..., rank * width:(rank + 1) * width], t_shard, **options)
        assert_rel_close(rows.mean(), value, RTOL, f"MP=2 {label}")
    # vocab_parallel_take: forward and gradient against plain indexing.
    columns = torch.tensor([5, 130, 7, 64, 0, 99])
    x = t_shard.clone().requires_grad_(True)
    taken = mpu.vocab_parallel_take(x, columns, chunk_rows=3)
    assert torch.equal(mpu.gather_from_model_parallel_region(taken), t[..., columns])
    taken.sum().backward()
    expected_grad = torch.zeros(V).index_add_(0, columns, torch.ones(6))[rank * per_rank:(rank + 1) * per_rank]
    assert torch.equal(x.grad, expected_grad.expand_as(x.grad))
    return True


@pytest.mark.slow
def test_mp2_matches_mp1_and_checkpoints_reshard_1_2_1(tmp_path):
    model = compressed_glm(seed=11)
    ids, position, sep, _, _ = blank_infilling_batch(seed=5)
    logits = model(ids, position, sep).logits
    weights = torch.linspace(-1, 1, logits.numel()).view_as(logits)
    (logits * weights).sum().backward()
    expected = {"logits": logits.detach(), "grad": model.word_embeddings.weight.grad.clone()}
    s_full, t = _loss_inputs(seed=6)
    cases = [(label, unmap, options) for label, unmap, options, _ in LOSS_CASES]
    values = []
    for label, unmap, options in cases:
        student = _student(unmap)
        student.model.load_state_dict(model.state_dict())
        values.append(student.logits_loss(s_full[..., :M] if unmap else s_full, t, **options)[0].mean().detach())
    save_model_shard(tmp_path / "mp1", "release", 0, model_states(model, 1, model.config.to_dict()))
    mp2 = change_mp(tmp_path / "mp1", 2)
    shard = load_model_shard(mp2, 1)["module"]
    assert torch.equal(shard["origin_id_to_target_pos"], model.origin_id_to_target_pos)   # maps are replicated
    assert run_distributed(_mp2_worker, 2, str(mp2), (ids, position, sep), expected, (s_full, t),
                           {"cases": cases, "values": values}) == [True, True]
    back = load_model_shard(change_mp(mp2, 1), 0)["module"]
    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items())
    # Weights-only loading (any MP size) restores the map too.
    fresh = GLMModel(model.config)
    load_model_weights(fresh, str(mp2))
    assert fresh.vocab_map_problem() is None
    assert torch.equal(fresh.target_pos_to_origin_id, model.target_pos_to_origin_id)
    assert torch.equal(fresh(ids, position, sep).logits, logits.detach())


def test_base_logits_term_equals_glmd_and_is_refused_where_it_would_be_lost():
    gen = torch.Generator().manual_seed(8)
    s, t = torch.randn(4, 5, V, generator=gen) * 3, torch.randn(4, 5, V, generator=gen) * 3
    position = torch.zeros(4, 2, 5, dtype=torch.long)
    position[:, 0] = torch.tensor([[0, 1, 2, 0, 0], [0, 1, 2, 3, 4], [0, 0, 0, 0, 0], [0, 1, 0, 0, 0]])
    s_out = ModelOutput(torch.zeros(4, 2), {"logits_parallel": s, "position_ids": position})
    t_out = ModelOutput(torch.zeros(4, 2), {"logits_parallel": t})
    batch = DistillBatch("pretrain", loss_mask=torch.ones(4, 5), token_level=True)
    kd = build_student("kd", GLMModel(tiny_config()), DistillOptions(
        distill_temperature=15.0, distill_logits_parallel=True, distill_logit_mask_pad=True))
    glmd = build_student("logitsdistil", GLMModel(tiny_config()), DistillOptions(distill_temperature=15.0),
                         method_options=dict(logitsdistil_mask_pad=True))
    assert kd.base_taps("student") == ["logits_parallel", "position_ids"]
    assert kd.base_taps("teacher") == ["logits_parallel"]
    kd_loss, _ = kd.inter_loss(s_out, t_out, batch, StepInfo())
    glmd_loss, _ = glmd.inter_loss(s_out, t_out, batch, StepInfo())
    keep = (position[:, 0] > 0)
    keep[:, 0] = True
    kl = F.kl_div(F.log_softmax(s / 15, -1), F.softmax(t / 15, -1), reduction="none").sum(-1) * keep   # [4, 5]
    assert_rel_close(kd_loss, 15 ** 2 * kl.mean(-1), RTOL, "kd --distill_logits_parallel")   # per sample [4]
    torch.testing.assert_close(kd_loss, glmd_loss)
    with pytest.raises(ValueError, match="not part of tinybert"):
        build_student("tinybert", GLMModel(tiny_config()), DistillOptions(distill_logits_parallel=True),
                      [TeacherInfo(2, 52, 4)])


def test_a_compressed_teacher_loads_its_map(tmp_path):
    from training.config import ArchConfig, ModelOptions, TeacherConfig
    from training.teachers import build_teacher
    from training.vocab_compression import check_maps
    model = compressed_glm(seed=21)
    save_model_shard(tmp_path / "teacher", "release", 0, model_states(model, 1, model.config.to_dict()))
    arch = ArchConfig(num_layers=2, hidden_size=52, num_attention_heads=4, max_position_embeddings=32,
                      map_vocab_size=float(M))   # --teacher_map_vocab_size=64 (a count)
    teacher = build_teacher(TeacherConfig(arch, str(tmp_path / "teacher")), lambda glm: glm, V,
                            ModelOptions(make_vocab_size_divisible_by=8), torch.device("cpu"), 32,
                            log=lambda message: None, num_tokens=V)
    check_maps(GLMModel(tiny_config()), [teacher])
    ids, position, sep, _, _ = blank_infilling_batch(seed=7)
    torch.testing.assert_close(teacher(ids, position, sep).logits, model(ids, position, sep).logits.detach())
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(("origin_", "target_"))}
    save_model_shard(tmp_path / "no_map", "release", 0, {**model_states(model, 1, model.config.to_dict()),
                                                          "module": state})
    teacher = build_teacher(TeacherConfig(arch, str(tmp_path / "no_map")), lambda glm: glm, V,
                            ModelOptions(make_vocab_size_divisible_by=8), torch.device("cpu"), 32,
                            log=lambda message: None, num_tokens=V)
    with pytest.raises(ConfigError, match="teacher 0 has a map_vocab_size"):
        check_maps(GLMModel(tiny_config()), [teacher])


def test_command_line_errors_name_the_missing_map_or_table(tmp_path, capsys):
    from cli_fixtures import pretrain_flags, write_corpus, write_vocab
    from training.cli import main
    flags = pretrain_flags(write_vocab(tmp_path), write_corpus(tmp_path), tmp_path / "runs", 2,
                           "--map_vocab_size=0.5")
    assert main("pretrain", "pretrain.py", flags) == 1
    assert "no map has been built or loaded: pass --student_build_map_vocab" in capsys.readouterr().err
    assert main("pretrain", "pretrain.py", [*flags, "--student_build_map_vocab",
                                            f"--map_vocab_table={tmp_path / 'absent.txt'}"]) == 1
    assert "absent.txt" in capsys.readouterr().err
    assert main("pretrain", "pretrain.py", [*flags[:-1], "--unmap_vocab_output"]) == 2
    assert "--unmap_vocab_output needs vocabulary compression" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "run" / "latest_checkpointed_iteration.txt").exists()


def test_truncating_a_teacher_into_a_compressed_student_takes_the_kept_rows():
    from training.teachers import truncate_teacher_as_student
    from training.vocab_compression import student_rows_in_teacher
    student = compressed_glm(seed=1)
    torch.manual_seed(2)
    teacher = GLMModel(tiny_config(num_layers=3))
    copied = truncate_teacher_as_student(student, teacher, student_rows_in_teacher(student, teacher))
    assert copied > 0
    kept = student.vocab_map.kept_ids
    assert torch.equal(student.word_embeddings.weight, teacher.word_embeddings.weight[kept])
    assert torch.equal(student.transformer.layers[1].mlp.dense_h_to_4h.weight,
                       teacher.transformer.layers[1].mlp.dense_h_to_4h.weight)
    assert student.vocab_map_problem() is None            # the map itself is the student's, untouched
    # A compressed teacher with another map: rows by way of its own map; the student's map stays.
    before = student.origin_id_to_target_pos.clone()
    other = GLMModel(tiny_config(map_vocab_size=M))
    other.set_vocab_map(tiny_map(seed=5))
    truncate_teacher_as_student(student, other, student_rows_in_teacher(student, other))
    expected = other.word_embeddings.weight[other.origin_id_to_target_pos[kept]]
    assert torch.equal(student.word_embeddings.weight, expected)
    assert torch.equal(student.origin_id_to_target_pos, before)
