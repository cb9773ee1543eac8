"""GLMD vocabulary compression in a run: finding the sorted-vocabulary table,
building the student's map from it (replacements picked with a teacher's word embeddings),
and checking that every compressed model has a usable map before training starts."""
from pathlib import Path
from typing import List, Optional, Sequence

import torch

from model import GLMModel, glm_model_of
from model.vocab_map import VocabMap, build_vocab_map, read_vocab_table, sorted_order
from mpu.partition import get_partition_spec

from .config import ConfigError, RunConfig
from .teachers import full_tensor

TABLE_FOLDER = ".pytorch_pretrained_bert"   # where the original kept its tables


def table_candidates(cfg: RunConfig, tokenizer) -> List[Path]:
    """Where a table is looked for: --map_vocab_table, else the original's
    .pytorch_pretrained_bert/<tokenizer-type>_<tokenizer-model-type>.txt in the working folder
    and next to --tokenizer-path (the name `vocab_sort.py` gives its output by default)."""
    if cfg.vocab_map.map_vocab_table:
        return [Path(cfg.vocab_map.map_vocab_table)]
    name = f"{tokenizer.tokenizer_type}_{tokenizer.model_type}.txt"
    candidates = [Path(TABLE_FOLDER) / name]
    if cfg.data.tokenizer_path:
        candidates.append(Path(cfg.data.tokenizer_path).parent / name)
    return candidates


def find_table(cfg: RunConfig, tokenizer) -> Path:
    candidates = table_candidates(cfg, tokenizer)
    for path in candidates:
        if path.is_file():
            return path
    raise ConfigError(f"--student_build_map_vocab needs a sorted-vocabulary table; none at "
                      f"{', '.join(map(str, candidates))}. Pass --map_vocab_table=FILE (e.g. the original's "
                      f"BertWordPieceTokenizer_bert-base-uncased.txt) or build one with "
                      f"`python vocab_sort.py --train-data=CORPUS ...`")


def original_id_embeddings(glm: GLMModel) -> torch.Tensor:
    """[V, E] the word embedding of every original id (gathered over model-parallel ranks; a
    compressed model's dropped ids get their replacement's row)."""
    weight = glm.word_embeddings.weight.detach()
    table = full_tensor(weight, get_partition_spec(weight)).float()           # [rows, E]
    return table[glm.map_input_ids(torch.arange(glm.config.vocab_size, device=table.device))]


def protect_ids(order: torch.Tensor, kept_rows: int, protected: Sequence[int]) -> torch.Tensor:
    """`order` with every protected id among its first `kept_rows` entries: a protected id found
    later moves in, taking the place of the last unprotected kept id (which moves out)."""
    kept, rest = order[:kept_rows], order[kept_rows:]
    is_protected = torch.zeros(order.numel(), dtype=torch.bool)
    is_protected[torch.tensor(sorted(set(protected)), dtype=torch.long)] = True
    late = is_protected[rest]
    if not late.any():
        return order
    movable = torch.nonzero(~is_protected[kept]).squeeze(-1)
    if movable.numel() < int(late.sum()):
        raise ConfigError(f"the map keeps {kept_rows} ids, fewer than the {int(is_protected.sum())} protected tokens")
    stay = torch.ones(kept_rows, dtype=torch.bool)
    stay[movable[movable.numel() - int(late.sum()):]] = False
    return torch.cat([kept[stay], rest[late], kept[~stay], rest[~late]])


def build_student_map(cfg: RunConfig, glm: GLMModel, tokenizer, teachers: Sequence, log=print) -> VocabMap:
    """The student's map from the table: its first M ids kept (the tokenizer's command tokens
    always), each dropped id replaced by its most similar kept id under teacher
    --student_map_vocab_tn's word embeddings, or by [UNK]."""
    path = find_table(cfg, tokenizer)
    table = read_vocab_table(str(path))
    if len(table) > tokenizer.num_tokens:
        raise ConfigError(f"{path}: {len(table)} rows but the tokenizer has {tokenizer.num_tokens} tokens "
                          f"(a table of another tokenizer?)")
    order = sorted_order(table.sort_id, glm.config.vocab_size)
    command_ids = [token_id for token_id in vars(tokenizer.command).values() if token_id is not None]
    order = protect_ids(order, glm.config.map_vocab_size, command_ids)
    teacher_no = cfg.vocab_map.student_map_vocab_tn
    embeddings = None
    if teacher_no is not None:
        embeddings = original_id_embeddings(glm_model_of(teachers[teacher_no].module)).cpu()
    vocab_map = build_vocab_map(order, glm.config.map_vocab_size, embeddings, cfg.vocab_map.student_map_vocab_method,
                                unk_id=tokenizer.command.unk)
    how = (f"teacher {teacher_no}'s {cfg.vocab_map.student_map_vocab_method} similarity" if teacher_no is not None
           else "[UNK]")
    log(f"vocabulary map from {path}: kept {glm.config.map_vocab_size} of {glm.config.vocab_size} ids "
        f"(dropped ones replaced by {how})")
    return vocab_map


def check_maps(student_module: torch.nn.Module, teachers: Sequence) -> None:
    """Every compressed model must hold a consistent map before it runs."""
    problem = glm_model_of(student_module).vocab_map_problem()
    if problem is not None:
        raise ConfigError(f"the student has --map_vocab_size but {problem}: pass --student_build_map_vocab "
                          f"(pretraining from scratch) or --load-pretrained/--load a compressed checkpoint")
    for t_no, teacher in enumerate(teachers):
        problem = glm_model_of(teacher.module).vocab_map_problem()
        if problem is not None:
            raise ConfigError(f"teacher {t_no} has a map_vocab_size (--teacher_map_vocab_size/--mt_map_vocab_size) "
                              f"but {problem}: its checkpoint {teacher.config.load_pretrained} holds no usable map")


def student_rows_in_teacher(student_glm: GLMModel, teacher_glm: GLMModel) -> Optional[torch.Tensor]:
    """For --student_truncate_tn under compression: the teacher's embedding row of each of the
    student's rows (None when the student is not compressed)."""
    vocab_map = student_glm.vocab_map
    if vocab_map is None:
        return None
    return teacher_glm.map_input_ids(vocab_map.kept_ids.to(teacher_glm.word_embeddings.weight.device))
