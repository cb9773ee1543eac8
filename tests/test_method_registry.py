"""Adding a method is one file: its options dataclass declares its flags once, and the parser's
method groups, --help, the "option of another method" check and validation come from the
registry. Bad values fail at parse time, before any tokenizer, data or model is touched."""
import subprocess
import sys
import textwrap

import pytest

from cli_fixtures import REPO_ROOT, pretrain_flags, write_corpus, write_vocab
from distill import STUDENT_MODELS
from training.arguments import build_help, parse_run_config
from training.config import ConfigError

METHOD_FILE = '''
"""Reverse KD: the KL from the student's distribution to the teacher's (a test method)."""
from dataclasses import dataclass

from distill.distill_model import GLMStudent, register_student
from distill.options import option


@dataclass(frozen=True)
class ReverseKDOptions:
    reversekd_weight: float = option(1.0, "Weight of the reverse KL term.")

    def __post_init__(self):
        if not self.reversekd_weight > 0:
            raise ValueError(f"reversekd_weight must be positive, got {self.reversekd_weight}")


@register_student
class ReverseKD(GLMStudent):
    name = "reversekd"
    options_class = ReverseKDOptions

    def inter_loss(self, s_out, t_out, batch, step, t_no=0):
        import torch.nn.functional as F
        s, t = s_out.logits.float().log_softmax(-1), t_out.logits.float().log_softmax(-1)
        kl = F.kl_div(t, s, log_target=True, reduction="none").flatten(1).sum(1)          # [B]
        loss = self.method_options.reversekd_weight * kl
        return loss, {"reversekd/kl": loss.detach().mean()}
'''
TEACHER = ["--teacher_load_pretrained=teacher", "--teacher_num_layers=2", "--teacher_hidden_size=32",
           "--teacher_num_attention_heads=4"]


@pytest.fixture
def method_file(tmp_path, monkeypatch):
    """The method as a file outside the repository, imported as a user's module would be."""
    (tmp_path / "reversekd_method.py").write_text(textwrap.dedent(METHOD_FILE))
    monkeypatch.syspath_prepend(str(tmp_path))
    import reversekd_method   # noqa: F401  (registers the method)
    yield tmp_path
    STUDENT_MODELS.pop("reversekd")
    sys.modules.pop("reversekd_method")


def test_a_method_from_one_file_is_offered_parsed_validated_and_refused_elsewhere(method_file):
    text = build_help("pretrain", "pretrain.py")
    assert "reversekd:" in text and "--reversekd_weight" in text and "Weight of the reverse KL term." in text
    body = " ".join(text.split())   # argparse wraps the help text
    assert "--student_model STUDENT_MODEL Distillation method; None means plain training without teachers. " \
           "Choices: alp_kd, annealing_kd," in body and "reversekd, sid" in body   # the method is a choice
    config = parse_run_config(["--student_model=reversekd", "--reversekd_weight=0.25", *TEACHER], "pretrain", "t")
    assert config.distill.method_options.reversekd_weight == 0.25
    assert config.distill.method_options == STUDENT_MODELS["reversekd"].options_class(reversekd_weight=0.25)
    with pytest.raises(ConfigError, match="reversekd_weight must be positive, got 0.0"):
        parse_run_config(["--student_model=reversekd", "--reversekd_weight=0", *TEACHER], "pretrain", "t")
    with pytest.raises(ConfigError, match="--reversekd_weight is an option of --student_model=reversekd, but this "
                                          "run uses --student_model=kd"):
        parse_run_config(["--student_model=kd", "--reversekd_weight=2", *TEACHER], "pretrain", "t")


def test_the_method_is_gone_once_unregistered():
    """The registry, not a hand-kept list, makes the flags: without the file there is no flag."""
    assert "--reversekd_weight" not in build_help("pretrain", "pretrain.py")
    with pytest.raises(ConfigError, match="unknown flag --reversekd_weight"):
        parse_run_config(["--reversekd_weight=2"], "pretrain", "t")


@pytest.mark.slow
def test_the_method_trains_end_to_end(method_file, tmp_path):
    vocab, corpus = write_vocab(tmp_path), write_corpus(tmp_path)
    teacher = subprocess.run([sys.executable, "pretrain.py", *pretrain_flags(vocab, corpus, tmp_path / "t", 2,
                                                                              "--save-interval=2")],
                             cwd=REPO_ROOT, capture_output=True, text=True)
    assert teacher.returncode == 0, teacher.stderr
    flags = pretrain_flags(vocab, corpus, tmp_path / "s", 2, "--student_model=reversekd", "--reversekd_weight=0.5",
                           f"--teacher_load_pretrained={tmp_path / 't' / 'run'}", "--teacher_num_layers=2",
                           "--teacher_hidden_size=32", "--teacher_num_attention_heads=4",
                           "--teacher_max_position_embeddings=64")
    program = ("import sys; sys.path.insert(0, sys.argv.pop(1)); import reversekd_method; "
               "from training.cli import main; sys.exit(main('pretrain', 'pretrain.py'))")
    done = subprocess.run([sys.executable, "-c", program, str(method_file), *flags], cwd=REPO_ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert '"reversekd/kl"' in (tmp_path / "s" / "run" / "metrics.jsonl").read_text()


@pytest.mark.parametrize("extra, message", [
    (["--student_model=kd", *TEACHER, "--distill_temperature=0"], "temperature"),
    (["--student_model=kd", *TEACHER, "--tinybert_wo_att"], "--tinybert_wo_att is an option of --student_model=tinybert"),
    (["--student_model=tinybert", *TEACHER, "--tinybert_custom_final=0"], "tinybert_custom_final must be >= 1"),
    (["--hidden-size=30"], "--hidden-size=30 is not divisible by --num-attention-heads=4"),
])
def test_bad_values_fail_before_anything_is_built(tmp_path, monkeypatch, capsys, extra, message):
    import data_utils.corpora
    import model.glm
    import training.run

    def touched(*args, **kwargs):
        raise AssertionError("built something before the configuration was checked")

    monkeypatch.setattr(training.run, "build_run_tokenizer", touched)
    monkeypatch.setattr(data_utils.corpora, "build_corpus", touched)
    monkeypatch.setattr(model.glm.GLMModel, "__init__", touched)
    from training.cli import main
    vocab, corpus = write_vocab(tmp_path), write_corpus(tmp_path)
    assert main("pretrain", "pretrain.py", pretrain_flags(vocab, corpus, tmp_path / "x", 2, *extra)) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
