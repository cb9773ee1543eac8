"""The student wrapper every distillation method subclasses, its typed inputs, and the registry.

A trainer pass first calls `begin_step(step)` (where methods draw this step's random
layers or advance a schedule), then asks the student which taps and interventions it wants
(`student_taps`, `teacher_taps`, ...: pure queries of the state `begin_step` set), runs the
student and the teachers with them, and hands the outputs to a multi-teacher combiner
(`distill.multi_teacher_model`), which calls `pre_loss` and `inter_loss` once per teacher.

Every loss a method returns is per sample, [B] fp32 (B: the batch's samples; cloze choice
rows are folded back into their sample), with the method's loss equal to its mean; the
combiner reduces (AvgTeacher: the mean; MT-BERT, Uncertainty, RL-KD: per-sample weights).
Methods never read globals: the step counters arrive as a `StepInfo`, the batch tensors a
loss may need as a `DistillBatch`.
"""
import math
import warnings
from dataclasses import dataclass, fields
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Type, Union

from torch import Tensor, nn

from model import GLMConfig, ModelOutput, TapConfig, glm_model_of, tap_config_of

from .losses import DIVERGENCES, fold_samples, non_pad_mask, sample_mean, soft_loss, zero_loss
from .losses_glmd import DROPPED_LOGIT, VocabView, kept_fraction, logits_distillation_loss, restrict_columns
from .options import option
from .registry import Registry

Metrics = Dict[str, Tensor]
STAGES = ("pretrain", "finetune")


@dataclass(frozen=True)
class DistillOptions:
    """The generic distillation flags that `pre_loss` uses (flag names without dashes).

    ft/pt soft: the soft term in fine-tuning / pretraining (ft default: soft CE without T^2;
    `distill_ft_soft_kl`: T^2 * KL; `distill_ft_soft_mse`: MSE on raw logits. pt default:
    T^2 * KL; `distill_pt_soft_ce`: soft CE; `distill_pt_soft_mse`: MSE). ft/pt hard:
    `distill_hard_rate` * the student's hard loss. Soft-term mask: none with
    `distill_wo_loss_mask`, the non-pad tokens (labels > 0) with `distill_only_mask_pad`.

    The base-class logits term, added to every method's inter loss that chains to
    `GLMStudent.inter_loss`: `distill_logits_parallel` turns on T^2 * KL (MSE with
    `distill_logit_mse`) between the LM logits at every token position, over non-pad positions
    with `distill_logit_mask_pad`. `distill_logit_mask_map`: under vocabulary compression, every
    logits KL (this term, GLMD's, and the token-level soft term) runs over the kept ids only.

    `distill_logit_loss` chooses the divergence of every KL-type logits term: the soft term
    (pretraining's T^2 * KL; in fine-tuning the default soft CE, which is the forward KL plus
    the teacher's entropy, and --distill_ft_soft_kl), this base-class logits term, GLMD's
    (`logitsdistil`) and DistilBERT's. "fkl" (the default) is today's loss, unchanged; any other
    choice (rkl, jsd with `distill_jsd_beta`, skl/srkl with `distill_skew_alpha`, tvd; see
    `losses.DIVERGENCES`) carries T^2 as the KL does and refuses the CE/MSE variants
    (--distill_pt_soft_ce, --distill_*_soft_mse, --distill_logit_mse), which are not divergences.
    """
    distill_ft_soft: bool = option(False, "Enable the soft-label term in fine-tuning.")
    distill_ft_hard: bool = option(False, "Enable the hard-label term in fine-tuning.")
    distill_pt_soft: bool = option(False, "Enable the soft-label term in pretraining.")
    distill_pt_hard: bool = option(False, "Enable the hard-label term in pretraining.")
    distill_soft_rate: float = option(1.0, "Weight of the soft-label term.")
    distill_hard_rate: float = option(
        1.0, "Weight of the hard-label term (also used by the combiners' built-in hard term).")
    distill_temperature: float = option(1.0, "Temperature of the soft terms and the logits KL.")
    distill_wo_loss_mask: bool = option(False, "Apply soft labels without any mask.")
    distill_only_mask_pad: bool = option(False, "Mask soft labels only at padding instead of the Part-B mask.")
    distill_ft_soft_kl: bool = option(False, "Fine-tuning soft term by T^2 KL instead of CE.")
    distill_pt_soft_ce: bool = option(False, "Pretraining soft term by CE instead of T^2 KL.")
    distill_ft_soft_mse: bool = option(False, "Fine-tuning soft term by MSE on raw logits.")
    distill_pt_soft_mse: bool = option(False, "Pretraining soft term by MSE on raw logits.")
    distill_logits_parallel: bool = option(False, "Add the all-position LM-logits KL as an intermediate loss.")
    distill_logit_mask_pad: bool = option(False, "Mask padding in the --distill_logits_parallel loss.")
    distill_logit_mse: bool = option(False, "Use MSE for the --distill_logits_parallel loss.")
    distill_logit_mask_map: bool = option(
        False, "Restrict logits distillation to the kept vocabulary under compression.")
    distill_logit_loss: str = option(
        "fkl", "Divergence of the KD soft term and of every logits term: fkl (forward KL, the original's), rkl "
        "(reverse KL), jsd (generalised Jensen-Shannon), skl / srkl (skew forward / reverse KL), tvd (total "
        "variation).", choices=DIVERGENCES)
    distill_jsd_beta: float = option(
        0.5, "beta of --distill_logit_loss=jsd, in [0, 1]: the mixture's teacher share (0: forward KL, 1: reverse KL).")
    distill_skew_alpha: float = option(
        0.1, "alpha of --distill_logit_loss=skl/srkl, in [0, 1): the share of the first distribution in the "
        "mixture it is compared with (0: plain KL).")

    CONFLICTS = (("distill_ft_soft_kl", "distill_ft_soft_mse"), ("distill_pt_soft_ce", "distill_pt_soft_mse"),
                 ("distill_wo_loss_mask", "distill_only_mask_pad"))
    VARIANTS = {"distill_ft_soft_kl": "distill_ft_soft", "distill_ft_soft_mse": "distill_ft_soft",
                "distill_pt_soft_ce": "distill_pt_soft", "distill_pt_soft_mse": "distill_pt_soft"}

    def __post_init__(self):
        temperature = self.distill_temperature
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"distill_temperature must be a positive finite number, got {temperature}")
        for name in ("distill_soft_rate", "distill_hard_rate"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite, got {getattr(self, name)}")
        for first, second in self.CONFLICTS:
            if getattr(self, first) and getattr(self, second):
                raise ValueError(f"--{first} and --{second} conflict: set at most one")
        for variant, base in self.VARIANTS.items():
            if getattr(self, variant) and not getattr(self, base):
                warnings.warn(f"--{variant} has no effect without --{base}", stacklevel=3)
        for variant in ("distill_logit_mask_pad", "distill_logit_mse"):
            if getattr(self, variant) and not self.distill_logits_parallel:
                warnings.warn(f"--{variant} has no effect without --distill_logits_parallel", stacklevel=3)
        self._check_divergence()

    NOT_DIVERGENCES = ("distill_pt_soft_ce", "distill_pt_soft_mse", "distill_ft_soft_mse", "distill_logit_mse")

    def _check_divergence(self) -> None:
        """--distill_logit_loss: a known name, beta in [0, 1], alpha in [0, 1), no CE/MSE variant
        beside a non-default choice; a beta or alpha the choice does not use warns."""
        name, beta, alpha = self.distill_logit_loss, self.distill_jsd_beta, self.distill_skew_alpha
        if name not in DIVERGENCES:
            raise ValueError(f"unknown distill_logit_loss {name!r}; valid: {', '.join(DIVERGENCES)}")
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"distill_jsd_beta must lie in [0, 1], got {beta}")
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"distill_skew_alpha must lie in [0, 1), got {alpha}")
        if name != "fkl":
            for variant in self.NOT_DIVERGENCES:
                if getattr(self, variant):
                    raise ValueError(f"--distill_logit_loss={name} and --{variant} conflict: the divergence replaces "
                                     f"the KL, not the CE or MSE variants")
        if beta != 0.5 and name != "jsd":
            warnings.warn("--distill_jsd_beta has no effect without --distill_logit_loss=jsd", stacklevel=4)
        if alpha != 0.1 and name not in ("skl", "srkl"):
            warnings.warn("--distill_skew_alpha has no effect without --distill_logit_loss=skl or srkl", stacklevel=4)

    def divergence_parameters(self) -> Dict[str, float]:
        """The keyword hyper-parameters of `losses.soft_loss` for the chosen divergence."""
        return dict(jsd_beta=self.distill_jsd_beta, skew_alpha=self.distill_skew_alpha)

    def soft_kind(self, finetune: bool) -> str:
        """The soft loss of a stage: "ce", "kl" or "mse", or the non-default --distill_logit_loss
        (in place of the KL, and of fine-tuning's default CE)."""
        if self.distill_logit_loss != "fkl":   # the CE/MSE variants were refused with it
            return self.distill_logit_loss
        if finetune:
            return "mse" if self.distill_ft_soft_mse else "kl" if self.distill_ft_soft_kl else "ce"
        return "mse" if self.distill_pt_soft_mse else "ce" if self.distill_pt_soft_ce else "kl"


@dataclass(frozen=True)
class TeacherInfo:
    """What a method may need to know about teacher i (layer mappings, widths).
    num_key_value_heads: the K/V heads of grouped-query attention (None: one per head)."""
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_key_value_heads: Optional[int] = None

    def __post_init__(self):
        for field in fields(self):
            value = getattr(self, field.name)
            if value is not None and value <= 0:
                raise ValueError(f"TeacherInfo.{field.name} must be positive, got {value}")

    @property
    def key_value_width(self) -> int:
        """The width of the K and V projections: hidden_size, or less under grouped-query attention."""
        heads = self.num_key_value_heads or self.num_attention_heads
        return self.hidden_size // self.num_attention_heads * heads


@dataclass(frozen=True)
class StepInfo:
    """Passed in by the trainer every micro-step (`repeat_index`: the forward-repeat pass)."""
    iteration: int = 0
    epoch: int = 0
    repeat_index: int = 0
    train_iters: int = 0
    training: bool = True


@dataclass
class DistillBatch:
    """What losses may need besides logits.

    stage: "pretrain" or "finetune". loss_mask: the Part-B mask [B, S] (None in cloze
    fine-tuning, where no loss mask is passed). labels: target ids [B, S], or [B]
    in fine-tuning. position_ids: [B, 2, S]. token_level: the logits are vocabulary-parallel
    token logits [B, S, V/p] (pretraining, LM tasks); else replicated task logits [B, C].
    """
    stage: str
    loss_mask: Optional[Tensor] = None
    labels: Optional[Tensor] = None
    logit_mask: Optional[Tensor] = None
    position_ids: Optional[Tensor] = None
    token_level: bool = False

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ValueError(f"unknown stage {self.stage!r}; valid: {STAGES}")

    @property
    def finetune(self) -> bool:
        return self.stage == "finetune"

    def non_pad_mask(self) -> Tensor:
        """[B, S] bool: the non-pad tokens (`losses.non_pad_mask` of position_ids)."""
        if self.position_ids is None:
            raise ValueError("non_pad_mask needs position_ids")
        return non_pad_mask(self.position_ids)


# --------------------------------------------------------------------------- checkpoint key renaming
def _external_key(key: str) -> str:
    """"model.X" -> "X"; any other key K -> "student.K"."""
    return key[len("model."):] if key.startswith("model.") else "student." + key


def _internal_key(key: str) -> str:
    return key[len("student."):] if key.startswith("student.") else "model." + key


def _rename_under(container, prefix: str, rename: Callable[[str], str]) -> None:
    """Rename in place (keeping the order) the keys of a dict or list that start with `prefix`."""
    if isinstance(container, list):
        container[:] = [prefix + rename(k[len(prefix):]) if k.startswith(prefix) else k for k in container]
        return
    for key in [k for k in container if k.startswith(prefix)]:
        container[prefix + rename(key[len(prefix):])] = container.pop(key)


class GLMStudent(nn.Module):
    """KD (Hinton et al. 2015, "Distilling the Knowledge in a Neural Network"). Base class of
    every method; registered as "kd".

    `self.model` is the GLMModel or task head. Subclasses declare the taps/interventions they
    need per step, add auxiliary layers as submodules, and override `inter_loss` (and rarely
    `pre_loss`). Checkpoints: `state_dict()` maps "model.X" -> "X" (a student checkpoint is a
    plain model state dict) and every other key K -> "student.K" (auxiliary layers);
    `load_state_dict()` inverts it. The renaming is done by state-dict hooks, so it also
    applies with `keep_vars=True` and when the student is nested in another module.
    """
    name = "kd"
    flag_prefix: Optional[str] = None   # the prefix of its options' names (default: name + "_")
    composes_others = False   # True: built of other methods, so it takes their options too (MixBaseline)
    # The typed options of the method's own flags (a frozen dataclass whose fields are the flag
    # names, e.g. `tinybert_wo_inter`), or None when it has none.
    options_class: Optional[type] = None
    # Whether the method's taps/interventions survive activation checkpointing (DIITO's don't).
    supports_activation_checkpointing = True
    # Whether the method's inter_loss includes GLMStudent.inter_loss (and so the base-class
    # logits term, --distill_logits_parallel): true when not overridden; a method whose
    # override calls super() says so by setting it to True.
    inherits_base_inter_loss = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "inherits_base_inter_loss" not in cls.__dict__:
            cls.inherits_base_inter_loss = cls.inter_loss is GLMStudent.inter_loss

    def __init__(self, model: nn.Module, options: DistillOptions, teachers: Sequence[TeacherInfo] = (),
                 method_options=None):
        super().__init__()
        self.model = model
        self.options = options
        self.teachers = tuple(teachers)
        # The student's sizes: a GLMConfig, or an HF model's TapConfig (same field names);
        # None for a bare module used for its losses only.
        self.config: Optional[Union[GLMConfig, TapConfig]] = _config_or_none(model)
        if method_options is None and self.options_class is not None:
            method_options = self.options_class()
        self.method_options = method_options
        self._teacher_modules: Tuple[nn.Module, ...] = ()
        self._load_prefix = ""
        self.register_state_dict_post_hook(GLMStudent._rename_saved)
        self.register_load_state_dict_pre_hook(GLMStudent._rename_loading)
        self.register_load_state_dict_post_hook(GLMStudent._rename_incompatible)

    @classmethod
    def options_from_flags(cls, values: Mapping[str, object]):
        """The typed options: `options_class` built from the flag values naming its fields
        (others ignored); None for a method without options. A method composed of others
        (MixBaseline) overrides this to keep its components' flags."""
        if cls.options_class is None:
            return None
        names = {field.name for field in fields(cls.options_class)}
        return cls.options_class(**{k: v for k, v in values.items() if k in names})

    def bind_teachers(self, modules: Sequence[nn.Module]) -> None:
        """Give methods that run teacher layers inside the student (Theseus) the frozen teacher
        modules; they are held outside the module tree (not saved, not in the optimizer)."""
        self._teacher_modules = tuple(modules)

    @property
    def teacher_modules(self) -> Tuple[nn.Module, ...]:
        return self._teacher_modules

    # ------------------------------------------------------------------ kit for methods
    def teacher_info(self, t_no: int) -> TeacherInfo:
        """The TeacherInfo of teacher `t_no` (ValueError naming the method when it is missing)."""
        if not 0 <= t_no < len(self.teachers):
            raise ValueError(f"{self.name} needs the TeacherInfo of teacher {t_no}; it was built with "
                             f"{len(self.teachers)} teachers")
        return self.teachers[t_no]

    def require_teachers(self) -> None:
        """ValueError unless the method was built with the teachers' sizes (its layers need them)."""
        if not self.teachers:
            raise ValueError(f"--student_model={self.name} needs the teachers' sizes (TeacherInfo) to build its layers")

    def require_config(self) -> Union[GLMConfig, TapConfig]:
        """The student's sizes (TypeError naming the method for a bare module)."""
        if self.config is None:
            raise TypeError(f"{self.name} needs a GLM or Hugging Face student (a GLMModel, an HFTapModel or a task "
                            f"head around one), got {type(self.model).__name__}")
        return self.config

    def check_teachers_match(self, field: str, why: str) -> None:
        """ValueError unless every teacher's `field` (num_attention_heads, hidden_size) equals the student's."""
        own = getattr(self.require_config(), field)
        for t_no, teacher in enumerate(self.teachers):
            if getattr(teacher, field) != own:
                raise ValueError(f"{self.name}: {why} needs equal {field}; the student has {own}, "
                                 f"teacher {t_no} {getattr(teacher, field)}")

    @staticmethod
    def zero(s_out: ModelOutput) -> Tensor:
        """A zero per-sample loss [B] attached to the student's graph (a backward through it never errors)."""
        return zero_loss(s_out.logits, (s_out.logits.size(0),))

    # ------------------------------------------------------------------ per-step requests
    def begin_step(self, step: StepInfo) -> None:
        """Called by the trainer once per pass, before any request or loss of that pass: the
        one place where a method draws this step's random layers or advances its schedule.
        KD: nothing. The taps and interventions getters below only read that state."""

    def student_taps(self, step: StepInfo) -> List[str]:
        """The taps this method reads from the student. Subclasses list their own; the trainer
        adds `base_taps` (the base-class logits term's), so they need not call super()."""
        return []

    def teacher_taps(self, t_no: int, step: StepInfo) -> List[str]:
        return []

    def base_taps(self, side: str) -> List[str]:
        """Taps of the base-class logits term (--distill_logits_parallel) on side "student" or
        "teacher"; the trainer always requests them."""
        if not self.options.distill_logits_parallel:
            return []
        pad = side == "student" and self.options.distill_logit_mask_pad
        return ["logits_parallel"] + (["position_ids"] if pad else [])

    def student_interventions(self, step: StepInfo) -> Dict[str, Callable]:
        return {}

    def teacher_interventions(self, t_no: int, step: StepInfo) -> Dict[str, Callable]:
        return {}

    def forward(self, *inputs, taps=(), interventions=None, **kwargs) -> ModelOutput:
        return self.model(*inputs, taps=taps, interventions=interventions, **kwargs)

    # ------------------------------------------------------------------ losses
    def inter_loss(self, s_out: ModelOutput, t_out: ModelOutput, batch: DistillBatch, step: StepInfo,
                   t_no: int = 0) -> Tuple[Tensor, Metrics]:
        """Intermediate-layer loss against teacher `t_no`, per sample [B].

        KD: 0, plus the base-class logits term with --distill_logits_parallel:
        T^2 * KL(z_s/T || z_t/T) (or the --distill_logit_loss divergence; MSE with
        --distill_logit_mse) of the LM logits at every token row (choice-expanded in cloze
        fine-tuning), non-pad rows only with --distill_logit_mask_pad; the same loss as GLMD's
        (`logits_distillation_loss`). Methods that override inter_loss add this term by calling super()."""
        total = self.zero(s_out)
        if not self.options.distill_logits_parallel:
            return total, {}
        s_logits, t_logits = s_out.taps["logits_parallel"], t_out.taps["logits_parallel"]      # [N, S, V/p]
        mask = None
        if self.options.distill_logit_mask_pad:
            mask = non_pad_mask(s_out.taps["position_ids"]).reshape(s_logits.shape[:2])
        rows, metrics = self.logits_loss(s_logits, t_logits, mask=mask, mse=self.options.distill_logit_mse)
        term = fold_samples(rows, s_out.logits.size(0))                    # [N] model rows -> [B]
        metrics["inter/logits_parallel"] = term.detach().mean()
        return total + term, metrics

    def vocab_view(self) -> Optional[VocabView]:
        """How the student's vocabulary lines up with the teachers' (None without compression,
        or when neither --unmap_vocab_output nor --distill_logit_mask_map changes anything)."""
        try:
            glm = glm_model_of(self.model)
        except TypeError:   # a bare module (loss-only use): no vocabulary of its own
            return None
        vocab_map = glm.vocab_map
        if vocab_map is None or not (glm.config.unmap_vocab_output or self.options.distill_logit_mask_map):
            return None
        return VocabView(vocab_map.kept_ids, vocab_map.origin_id_mask_map, glm.config.unmap_vocab_output,
                         self.options.distill_logit_mask_map)

    def logits_loss(self, s_logits: Tensor, t_logits: Tensor, **options) -> Tuple[Tensor, Metrics]:
        """`logits_distillation_loss` per row ([N] over the B*S rows) at this run's temperature and
        divergence (--distill_logit_loss), with the teacher's logits lined up with a compressed
        student's (`vocab_view`)."""
        view = self.vocab_view()
        column_keep = None
        if view is not None:
            s_logits, t_logits, column_keep = view.align(s_logits, t_logits)
        return logits_distillation_loss(s_logits, t_logits.detach(), temperature=self.options.distill_temperature,
                                        column_keep=column_keep, divergence=self.options.distill_logit_loss,
                                        **self.options.divergence_parameters(), **options)

    def pre_loss(self, s_logits: Tensor, t_logits: Tensor, hard_loss: Tensor, batch: DistillBatch,
                 step: StepInfo = StepInfo(), t_no: int = 0, mse_t_w: float = 1.0) -> Tuple[Tensor, Metrics]:
        """Prediction-layer loss per sample [B]: r_soft * soft + r_hard * hard_loss.

        s_logits, t_logits: [B, S, V/p] when batch.token_level, else [B, C]. hard_loss: the
        student's hard loss, [B], or a scalar (the batch's, counted for every sample). Returns
        the [B] fp32 loss and the detached metrics {"kd/soft", "kd/hard"} of the enabled terms. A term is enabled by
        its stage's flag and a nonzero rate; with neither enabled the loss is exactly 0.
        The soft term: see `DistillOptions`; KL (and every divergence of --distill_logit_loss)
        carries T^2, CE and MSE do not; `mse_t_w` scales the teacher logits of the MSE.
        Soft-term mask m: 1 without loss_mask (cloze fine-tuning) or with distill_wo_loss_mask;
        labels > 0 with distill_only_mask_pad and token-level labels; otherwise loss_mask.
        Reduction: `sample_mean` (per sample, the plain mean over its rows, masked ones included).

        Fixed on purpose: the fine-tuning soft MSE applies m (the original lost it
        to a `maks=` typo); masked rows never produce NaN (fully padded rows give 0); a masked
        row of the soft CE adds 0 instead of the original's constant log(V) (see losses.py).
        """
        options, finetune = self.options, batch.finetune
        soft_rate, hard_rate = self.pre_loss_rates(step)
        soft_on = (options.distill_ft_soft if finetune else options.distill_pt_soft) and soft_rate
        soft_on = soft_on and t_logits is not None   # a disabled teacher has no logits: hard term only
        hard_on = (options.distill_ft_hard if finetune else options.distill_pt_hard) and hard_rate
        total = zero_loss(s_logits, (s_logits.size(0),))
        metrics: Metrics = {}
        if soft_on:
            soft = soft_rate * self._soft_term(s_logits, t_logits, batch, mse_t_w)
            total = total + soft
            metrics["kd/soft"] = soft.detach().mean()
        if hard_on:
            hard = hard_rate * hard_loss.float().expand(s_logits.size(0))
            total = total + hard
            metrics["kd/hard"] = hard.detach().mean()
        return total, metrics

    def pre_loss_rates(self, step: StepInfo) -> Tuple[float, float]:
        """(r_soft, r_hard) of `pre_loss` at `step`: --distill_soft_rate and --distill_hard_rate;
        a method whose rates follow the step or the pass overrides this (DIITO)."""
        return self.options.distill_soft_rate, self.options.distill_hard_rate

    def _soft_term(self, s_logits: Tensor, t_logits: Tensor, batch: DistillBatch, mse_t_w: float) -> Tensor:
        """The soft term per sample [B] (see `pre_loss`)."""
        kind = self.options.soft_kind(batch.finetune)
        temperature = self.options.distill_temperature
        mask = self.soft_mask(batch)
        view = self.vocab_view() if batch.token_level else None
        column_keep = None
        if view is not None:   # vocabulary compression: the token-level soft term over the kept ids
            s_logits, t_logits, column_keep = view.align(s_logits, t_logits)
            s_logits, t_logits = restrict_columns(s_logits, t_logits, column_keep,
                                                  0.0 if kind == "mse" else DROPPED_LOGIT)
        rows = soft_loss(kind, s_logits, t_logits, vocab_parallel=batch.token_level, temperature=temperature,
                         teacher_weight=mse_t_w, mask=mask, **self.options.divergence_parameters())
        if kind == "mse" and column_keep is not None:   # a mean over the kept columns, not all V
            rows = rows / kept_fraction(column_keep)
        loss = sample_mean(rows, mask)
        return loss if kind in ("ce", "mse") else loss * temperature ** 2   # T^2: the KL and the divergences

    def soft_mask(self, batch: DistillBatch) -> Optional[Tensor]:
        """The soft-term mask m of `pre_loss` ([B, S] or None for m = 1)."""
        if batch.loss_mask is None or self.options.distill_wo_loss_mask:
            return None
        if self.options.distill_only_mask_pad and batch.labels is not None and batch.labels.dim() > 1:
            return batch.labels > 0
        return batch.loss_mask

    # ------------------------------------------------------------------ schedule state
    def method_state(self) -> dict:
        """Schedule state (not parameters) to save in checkpoints. KD: none."""
        return {}

    def load_method_state(self, state: dict) -> None:
        if state:
            raise ValueError(f"student model {self.name!r} has no method state, got keys {sorted(state)}")

    # ------------------------------------------------------------------ state-dict hooks
    @staticmethod
    def _rename_saved(module, state_dict, prefix, local_metadata) -> None:
        _rename_under(state_dict, prefix, _external_key)

    @staticmethod
    def _rename_loading(module, state_dict, prefix, local_metadata, strict, missing, unexpected, errors) -> None:
        module._load_prefix = prefix
        _rename_under(state_dict, prefix, _internal_key)

    @staticmethod
    def _rename_incompatible(module, incompatible_keys) -> None:
        for keys in (incompatible_keys.missing_keys, incompatible_keys.unexpected_keys):
            _rename_under(keys, module._load_prefix, _external_key)


def _config_or_none(model: nn.Module):
    try:
        return tap_config_of(model)
    except TypeError:   # a bare module (loss-only use)
        return None


# --------------------------------------------------------------------------- registry
STUDENT_MODELS = Registry("--student_model", GLMStudent)


def register_student(cls: Type[GLMStudent]) -> Type[GLMStudent]:
    """Class decorator: register a method under `cls.name`; its `options_class` fields are its flags."""
    return STUDENT_MODELS.register()(cls)


register_student(GLMStudent)


def method_options_for(cls: Type[GLMStudent], values):
    """`cls`'s typed options: `values` itself when it is one already, else built from
    {flag name: value} (`GLMStudent.options_from_flags`)."""
    if cls.options_class is not None and isinstance(values, cls.options_class):
        return values
    return cls.options_from_flags(values or {})


def build_student(name: str, model: nn.Module, options: DistillOptions, teachers: Sequence[TeacherInfo] = (),
                  method_options: Optional[Mapping[str, object]] = None) -> GLMStudent:
    """The registered method `name` wrapped around `model`, with its typed options built from
    `method_options` ({flag name: value}); KeyError listing the valid names."""
    if name not in STUDENT_MODELS:
        raise KeyError(f"unknown student model {name!r}; valid: {', '.join(sorted(STUDENT_MODELS))}")
    cls = STUDENT_MODELS[name]
    if options.distill_logits_parallel and not cls.inherits_base_inter_loss:
        chained = sorted(n for n, c in STUDENT_MODELS.items() if c.inherits_base_inter_loss)
        raise ValueError(f"--distill_logits_parallel (the base class's logits term) is not part of {name}'s "
                         f"inter loss; methods that add it: {', '.join(chained)}")
    return cls(model, options, teachers, method_options=method_options_for(cls, method_options))
