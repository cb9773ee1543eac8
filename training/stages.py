"""What differs between pretraining and fine-tuning: the model head, the inputs a batch
gives the model, the hard (label) loss, what distillation losses see, and evaluation.

Both stages expose the same small API to the trainer:
    head(glm)                 the module trained (and, for teachers, run) on this stage
    model_inputs(batch)       positional inputs of that module
    hard_loss(output, batch)  (scalar loss, per-sample loss [B])
    distill_batch(batch)      the DistillBatch the distillation losses receive
    num_tokens(batch)         tokens in the batch (throughput)
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F

import mpu
from distill.distill_model import DistillBatch
from model import (GLMForMultiTokenCloze, GLMForSequenceClassification, GLMForSingleTokenCloze, GLMModel,
                   ModelOutput)
from model.hf import glm_position_ids
from tasks.registry import GENERATIVE, MULTI_TOKEN, SINGLE_TOKEN

LOSS_FUNCS = ("cross_entropy", "hinge", "generative", "mix")
_MASKED_CHOICE = -10000.0


def lm_loss(logits_parallel: torch.Tensor, target: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """The token CE over vocabulary-parallel logits averaged over the loss mask (the hard loss
    of pretraining and of generative tasks)."""
    return _per_sample_lm_loss(logits_parallel, target, loss_mask)[0]


def _per_sample_lm_loss(logits_parallel, target, loss_mask) -> Tuple[torch.Tensor, torch.Tensor]:
    """Token CE over vocabulary-parallel logits: (sum CE*mask / sum mask, per-sample [B])."""
    losses = mpu.vocab_parallel_cross_entropy(logits_parallel, target)          # [B, S]
    mask = loss_mask.float()
    loss = (losses * mask).sum() / mask.sum().clamp(min=1.0)
    per_sample = (losses * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
    return loss, per_sample


class PretrainStage:
    """GLM blank infilling: the loss is the token CE over Part B."""
    name = "pretrain"

    def head(self, glm: GLMModel) -> torch.nn.Module:
        return glm

    def model_inputs(self, batch) -> Tuple:
        return batch["text"], batch["position_id"], batch["attention_mask"]

    def hard_loss(self, output: ModelOutput, batch) -> Tuple[torch.Tensor, torch.Tensor]:
        return _per_sample_lm_loss(output.logits, output.to_columns(batch["target"]), batch["loss_mask"])

    def distill_batch(self, batch) -> DistillBatch:
        return DistillBatch(stage="pretrain", loss_mask=batch["loss_mask"], labels=batch["target"],
                            position_ids=batch["position_id"], token_level=True)

    def num_tokens(self, batch) -> int:
        return int(batch["text"].numel())

    @torch.no_grad()
    def evaluate(self, forward, batches: Sequence) -> Dict[str, float]:
        """LM loss and perplexity (exp of min(20, loss)) of the student on `batches`."""
        total, count = 0.0, 0
        for batch in batches:
            loss, _ = self.hard_loss(forward(*self.model_inputs(batch)), batch)
            total, count = total + float(loss), count + 1
        loss = total / max(count, 1)
        return {"loss": loss, "ppl": math.exp(min(20.0, loss))}


class HFLanguageModelStage:
    """Language modelling on a Hugging Face model (`model.hf.HFTapModel`): causal LM for
    decoders (the targets are the next tokens), masked LM for encoders (the targets are the
    original ids at the masked positions). A batch holds `text` [B, S] (the model's input ids),
    `attention_mask` [B, S] (1 = token, 0 = padding), `target` [B, S] and `loss_mask` [B, S]
    (the positions whose target counts). `distill_stage` names the stage whose distillation
    flags apply: "pretrain" (--distill_pt_*) or "finetune" (--distill_ft_*, a generative
    fine-tuning on token logits)."""
    kind = GENERATIVE

    def __init__(self, distill_stage: str = "pretrain"):
        if distill_stage not in ("pretrain", "finetune"):
            raise ValueError(f"unknown distillation stage {distill_stage!r}; valid: pretrain, finetune")
        self.name = distill_stage

    def head(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def model_inputs(self, batch) -> Tuple:
        return batch["text"], None, batch["attention_mask"]

    def hard_loss(self, output: ModelOutput, batch) -> Tuple[torch.Tensor, torch.Tensor]:
        return _per_sample_lm_loss(output.logits, batch["target"], batch["loss_mask"])

    def distill_batch(self, batch) -> DistillBatch:
        return DistillBatch(stage=self.name, loss_mask=batch["loss_mask"], labels=batch["target"],
                            position_ids=glm_position_ids(batch["text"], batch["attention_mask"]), token_level=True)

    def num_tokens(self, batch) -> int:
        return int(batch["attention_mask"].sum())

    evaluate = PretrainStage.evaluate


class HFClassificationStage:
    """Fine-tuning a Hugging Face sequence-classification model (BERT's pooled [CLS]; a
    decoder's last token) on a classification or regression task (GLUE and SuperGLUE's
    single-label tasks). A batch holds `text` [B, S] (the tokenizer's pair encoding, padded),
    `attention_mask` [B, S] and `label` [B] (float for regression). The hard loss is the
    per-sample cross-entropy (squared error for regression)."""
    name = "finetune"
    kind = "classification"
    token_level = False

    def __init__(self, task):
        self.task = task

    def head(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def model_inputs(self, batch) -> Tuple:
        return batch["text"], None, batch["attention_mask"]

    def hard_loss(self, output: ModelOutput, batch) -> Tuple[torch.Tensor, torch.Tensor]:
        logits, labels = output.logits.float(), batch["label"]
        if self.task.spec.regression:
            per_sample = (logits.view(-1) - labels.float()) ** 2
        else:
            per_sample = F.cross_entropy(logits, labels.long(), reduction="none")
        return per_sample.mean(), per_sample

    def distill_batch(self, batch) -> DistillBatch:
        return DistillBatch(stage="finetune", labels=batch["label"],
                            position_ids=glm_position_ids(batch["text"], batch["attention_mask"]), token_level=False)

    def num_tokens(self, batch) -> int:
        return int(batch["attention_mask"].sum())

    def predict(self, forward, samples: List[dict], batch: dict) -> List:
        scores = forward(*self.model_inputs(batch)).logits.float().cpu()
        return [self.task.predict(s, row.tolist()) for s, row in zip(samples, scores)]


class FinetuneStage:
    """A downstream task: cloze heads (single-/multi-token), generative WSC, or classification."""
    name = "finetune"

    def __init__(self, task, loss_func: str = "cross_entropy", length_penalty: float = 0.0,
                 hidden_size: int = 0, hidden_dropout: float = 0.1, pool_token: str = "cls"):
        if loss_func not in LOSS_FUNCS:
            raise ValueError(f"unknown --loss-func {loss_func!r}; valid: {LOSS_FUNCS}")
        self.task = task
        self.kind = task.spec.kind if task.pvp is not None else "classification"
        self.loss_func = loss_func
        self.length_penalty = length_penalty
        self.hidden_size, self.hidden_dropout, self.pool_token = hidden_size, hidden_dropout, pool_token

    @property
    def token_level(self) -> bool:
        return self.kind == GENERATIVE

    def head(self, glm: GLMModel) -> torch.nn.Module:
        if self.kind == MULTI_TOKEN:
            return GLMForMultiTokenCloze(glm, take_softmax=True, length_penalty=self.length_penalty)
        if self.kind == SINGLE_TOKEN:
            return GLMForSingleTokenCloze(glm)
        if self.kind == GENERATIVE:
            return glm
        return GLMForSequenceClassification(glm, self.hidden_size, self.hidden_dropout, self.pool_token,
                                            num_class=self.task.num_labels)

    def model_inputs(self, batch) -> Tuple:
        base = (batch["text"], batch["position"], batch["attention_mask"])
        if self.kind == MULTI_TOKEN:
            return base + (batch["target"], batch["logit_mask"])
        if self.kind == SINGLE_TOKEN:
            return base + (batch["target"],)
        return base

    def hard_loss(self, output: ModelOutput, batch) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.kind == GENERATIVE:
            return _per_sample_lm_loss(output.logits, output.to_columns(batch["target"]), batch["logit_mask"])
        logits, labels = output.logits.float(), batch["label"]
        if self.task.spec.regression:
            per_sample = (logits.view(-1) - labels.float()) ** 2
            return per_sample.mean(), per_sample
        if "loss_mask" in batch:   # padded choices can never win
            logits = torch.where(batch["loss_mask"] > 0, logits, logits.new_tensor(_MASKED_CHOICE))
        return self._choice_loss(logits, labels.long())

    def _choice_loss(self, logits, labels) -> Tuple[torch.Tensor, torch.Tensor]:
        gold = logits.gather(1, labels[:, None]).squeeze(1)                          # [B]
        if self.loss_func == "cross_entropy":
            per_sample = F.cross_entropy(logits, labels, reduction="none")
        elif self.loss_func == "hinge":   # GLM's multi-class hinge: sum_c max(0, 1 + z_c - z_gold) - 1
            per_sample = (1.0 + logits - gold[:, None]).clamp(min=0.0).sum(dim=1) - 1.0
        else:
            per_sample = -gold
            if self.loss_func == "mix":
                per_sample = per_sample + F.cross_entropy(logits, labels, reduction="none")
        return per_sample.mean(), per_sample

    def distill_batch(self, batch) -> DistillBatch:
        if self.kind == GENERATIVE:
            return DistillBatch(stage="finetune", loss_mask=batch["logit_mask"], labels=batch["target"],
                                logit_mask=batch["logit_mask"], position_ids=batch["position"], token_level=True)
        return DistillBatch(stage="finetune", labels=batch["label"], logit_mask=batch.get("logit_mask"),
                            position_ids=batch.get("position"), token_level=False)

    def num_tokens(self, batch) -> int:
        return int(batch["text"].numel())

    @torch.no_grad()
    def predict(self, forward, samples: List[dict], batch: dict) -> List:
        """Predictions of one collated batch of `samples`."""
        output = forward(*self.model_inputs(batch))
        if self.kind == GENERATIVE:
            argmax = output.to_ids(mpu.gather_from_model_parallel_region(output.logits).argmax(dim=-1))  # [B, S]
            return [self.task.predict_generative(s, ids.tolist()) for s, ids in zip(samples, argmax)]
        scores = output.logits.float().cpu()
        return [self.task.predict(s, row.tolist()) for s, row in zip(samples, scores)]


def gather_predictions(indexed: List[Tuple[int, object]], group=None) -> List:
    """Predictions of every data-parallel rank, ordered by example index."""
    if dist.is_initialized() and mpu.get_data_parallel_world_size() > 1:
        gathered: List[Optional[list]] = [None] * mpu.get_data_parallel_world_size()
        dist.all_gather_object(gathered, indexed, group=group or mpu.get_data_parallel_group())
        indexed = [item for part in gathered for item in part]
    return [prediction for _, prediction in sorted(indexed, key=lambda item: item[0])]
