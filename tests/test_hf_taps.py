"""HFTapModel: every tap of tiny random BERT, Llama (grouped-query attention) and GPT-2 models
against references computed independently from the HF model (its eager attention, its hidden
states, and the projections applied by hand), the logits against HF's own with and without
taps, interventions (including Theseus' layer swap) and the unsupported cases."""
import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import (BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel, LlamaConfig,  # noqa: E402
                          LlamaForCausalLM)
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb  # noqa: E402

from model.hf import MASKED_SCORE, HFTapModel, glm_position_ids, tap_config_of  # noqa: E402
from model.taps import LAYER_TAPS  # noqa: E402

# The adapter and the references run the same fp32 ops in different groupings (fused vs.
# explicit attention, hand-applied projections): differences are a few ulp of values of order 1.
ATOL = 2e-6
B, S, V, H, L = 2, 7, 100, 32, 2


def tiny(family: str, layers: int = L, seed: int = 0):
    torch.manual_seed(seed)
    if family == "bert":
        config = BertConfig(vocab_size=V, hidden_size=H, num_hidden_layers=layers, num_attention_heads=4,
                            intermediate_size=64, max_position_embeddings=64)
        model = BertForMaskedLM(config)
    elif family == "llama":
        config = LlamaConfig(vocab_size=V, hidden_size=H, num_hidden_layers=layers, num_attention_heads=4,
                             num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64)
        model = LlamaForCausalLM(config)
    else:
        config = GPT2Config(vocab_size=V, n_embd=H, n_layer=layers, n_head=4, n_positions=64, bos_token_id=0,
                            eos_token_id=0)
        model = GPT2LMHeadModel(config)
    return model.eval()


def inputs(seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, V, (B, S), generator=gen)
    mask = torch.ones(B, S, dtype=torch.long)
    mask[1, 5:] = 0                                              # sample 1 is right-padded
    return ids, mask


def allowed(family: str, mask: torch.Tensor) -> torch.Tensor:
    """[B, 1, S, S] bool: key j visible to query i (padding, and causality for decoders)."""
    keys = mask.bool()[:, None, None, :]
    if family == "bert":
        return keys.expand(B, 1, S, S)
    return keys & torch.ones(S, S, dtype=torch.bool).tril()[None, None]


def heads(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    return x.view(B, S, -1, head_dim).transpose(1, 2)                            # [B, S, n*dh] -> [B, n, S, dh]


def reference_taps(family: str, model, ids: torch.Tensor, mask: torch.Tensor):
    """Every tap, computed from HF's eager outputs and the model's own submodules by hand."""
    model.set_attn_implementation("eager")
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
    base, taps = model.base_model, {}
    visible = allowed(family, mask)
    with torch.no_grad():
        if family == "bert":
            words = base.embeddings.word_embeddings(ids)
            layers, embeddings = base.encoder.layer, ref.hidden_states[0]
        elif family == "llama":
            words = embeddings = base.embed_tokens(ids)
            layers = base.layers
            cos, sin = base.rotary_emb(words, torch.arange(S)[None].expand(B, S))
        else:
            words = base.wte(ids)
            embeddings = words + base.wpe(torch.arange(S))[None]
            layers = base.h
        taps.update(words_embeddings=words, embeddings=embeddings, position_ids=glm_position_ids(ids, mask))
        for i, layer in enumerate(layers):
            p = f"layers.{i}."
            h = ref.hidden_states[i]
            if family == "bert":
                attn = layer.attention.self
                ln = h
                q, k, v = attn.query(ln), attn.key(ln), attn.value(ln)
                head_dim, out_proj = attn.attention_head_size, layer.attention.output.dense
            elif family == "llama":
                attn = layer.self_attn
                ln = layer.input_layernorm(h)
                q, k, v = attn.q_proj(ln), attn.k_proj(ln), attn.v_proj(ln)
                head_dim, out_proj = attn.head_dim, attn.o_proj
            else:
                attn = layer.attn
                ln = layer.ln_1(h)
                q, k, v = attn.c_attn(ln).split(H, dim=-1)
                head_dim, out_proj = attn.head_dim, attn.c_proj
            qh, kh, vh = heads(q, head_dim), heads(k, head_dim), heads(v, head_dim)
            if family == "llama":
                qh, kh = apply_rotary_pos_emb(qh, kh, cos, sin)
                kh, vh = kh.repeat_interleave(2, dim=1), vh.repeat_interleave(2, dim=1)   # 2 query heads per K/V head
            scores = qh @ kh.transpose(-1, -2) / head_dim ** 0.5
            scores = torch.where(visible, scores, torch.tensor(MASKED_SCORE))
            probs = ref.attentions[i]
            context = (probs @ vh).transpose(1, 2).reshape(B, S, -1)               # [B, nh, S, dh] -> [B, S, A]
            attention_output = out_proj(context)
            if family == "bert":
                post = layer.attention.output.LayerNorm(attention_output + h)
                ffn = layer.output.dense(layer.intermediate(post))
                tf_output = layer.output.LayerNorm(ffn + post)
            elif family == "llama":
                residual = h + attention_output
                post = layer.post_attention_layernorm(residual)
                ffn = layer.mlp(post)
                tf_output = residual + ffn
            else:
                residual = h + attention_output
                post = layer.ln_2(residual)
                ffn = layer.mlp.c_proj(layer.mlp.act(layer.mlp.c_fc(post)))
                tf_output = residual + ffn
            taps.update({p + "layernorm_input": h, p + "layernorm_output": ln, p + "mixed_query_layer": q,
                         p + "mixed_key_layer": k, p + "mixed_value_layer": v, p + "query_layer": qh,
                         p + "key_layer": kh, p + "value_layer": vh, p + "attention_scores": scores,
                         p + "attention_probs": probs, p + "context_layer": context,
                         p + "attention_output": attention_output, p + "post_attention_layernorm": post,
                         p + "ffn_output": ffn, p + "tf_output": tf_output})
        taps["output"] = ref.hidden_states[-1]
        taps["logits_parallel"] = ref.logits
    return ref.logits, taps


@pytest.mark.parametrize("family", ["bert", "llama", "gpt2"])
def test_every_tap_equals_its_independent_reference(family):
    model = tiny(family)
    ids, mask = inputs()
    ref_logits, reference = reference_taps(family, model, ids, mask)
    wrapped = HFTapModel(model)
    assert len(reference) == len(wrapped.tap_names()) == 3 + L * len(LAYER_TAPS) + 2   # model-level 3 + 2
    with torch.no_grad():
        plain = wrapped(ids, attention_mask=mask)                       # fused attention, no hooks acting
        tapped = wrapped(ids, attention_mask=mask, taps=wrapped.tap_names())
    torch.testing.assert_close(plain.logits, ref_logits, rtol=0, atol=ATOL)
    torch.testing.assert_close(tapped.logits, ref_logits, rtol=0, atol=ATOL)
    assert plain.taps == {} and set(tapped.taps) == set(reference)
    for name, expected in reference.items():
        torch.testing.assert_close(tapped.taps[name], expected, rtol=0, atol=ATOL, msg=lambda m: f"{name}: {m}")
    for i in range(L):   # masked cells hold GLM's fill exactly; the probabilities are softmax(scores)
        scores = tapped.taps[f"layers.{i}.attention_scores"]
        assert (scores[~allowed(family, mask).expand_as(scores)] == MASKED_SCORE).all()
        torch.testing.assert_close(scores.softmax(-1), tapped.taps[f"layers.{i}.attention_probs"], rtol=0, atol=ATOL)


@pytest.mark.parametrize("family", ["bert", "llama", "gpt2"])
def test_the_mask_reaches_the_registered_attention(family):
    """Without a registered mask function the model would silently run unmasked: a padded
    sample's real tokens must not depend on what stands in its padding."""
    wrapped = HFTapModel(tiny(family))
    ids, mask = inputs()
    other = ids.clone()
    other[1, 5:] = (ids[1, 5:] % (V - 1)) + 1                          # different ids in the padding
    with torch.no_grad():
        first, second = wrapped(ids, attention_mask=mask).logits, wrapped(other, attention_mask=mask).logits
    torch.testing.assert_close(first[1, :5], second[1, :5], rtol=0, atol=ATOL)
    assert not torch.allclose(first[1, 5:], second[1, 5:])


def test_sizes_and_names():
    config = tap_config_of(HFTapModel(tiny("llama")))
    assert (config.model_type, config.num_layers, config.hidden_size, config.num_attention_heads,
            config.num_key_value_heads, config.vocab_size, config.output_predict, config.post_ln) == (
        "llama", L, H, 4, 2, V, True, False)
    bert = HFTapModel(tiny("bert"))
    assert bert.config.post_ln and bert.config.layernorm_epsilon == 1e-12
    with pytest.raises(KeyError, match=r"unknown tap 'layers.0.attention_score'.*Did you mean.*attention_scores"):
        bert(torch.ones(1, 3, dtype=torch.long), taps=["layers.0.attention_score"])
    with pytest.raises(KeyError, match="unknown tap 'layers.2.tf_output'"):
        bert(torch.ones(1, 3, dtype=torch.long), taps=["layers.2.tf_output"])


def test_an_unsupported_architecture_names_the_supported_ones():
    from transformers import OPTConfig, OPTForCausalLM
    model = OPTForCausalLM(OPTConfig(vocab_size=V, hidden_size=H, num_hidden_layers=1, ffn_dim=64,
                                     num_attention_heads=4, word_embed_proj_dim=H))
    with pytest.raises(NotImplementedError, match="unsupported Hugging Face architecture 'opt'; supported model "
                                                  "types: bert, gpt2, llama, mistral, qwen2, roberta"):
        HFTapModel(model)


@pytest.mark.parametrize("family", ["bert", "llama", "gpt2"])
def test_interventions_replace_values_and_gradients_flow(family):
    wrapped = HFTapModel(tiny(family))
    ids, mask = inputs()
    with torch.no_grad():
        zeroed = wrapped(ids, attention_mask=mask, taps=["layers.1.layernorm_input"],
                         interventions={"layers.0.tf_output": torch.zeros_like})
        assert torch.equal(zeroed.taps["layers.1.layernorm_input"], torch.zeros(B, S, H))
        # input_ids: the same as feeding the rewritten ids.
        shifted = wrapped(ids, attention_mask=mask, interventions={"input_ids": lambda x: (x % (V - 1)) + 1}).logits
        torch.testing.assert_close(shifted, wrapped(ids % (V - 1) + 1, attention_mask=mask).logits, rtol=0, atol=0)
        # A fused Q/K/V projection (GPT-2) is split, replaced and put back: only the query changes.
        base = wrapped(ids, attention_mask=mask, taps=["layers.0.key_layer", "layers.0.query_layer"])
        doubled = wrapped(ids, attention_mask=mask, taps=["layers.0.key_layer", "layers.0.query_layer"],
                          interventions={"layers.0.mixed_query_layer": lambda q: 2 * q})
        torch.testing.assert_close(doubled.taps["layers.0.key_layer"], base.taps["layers.0.key_layer"], rtol=0,
                                   atol=0)
        assert not torch.allclose(doubled.taps["layers.0.query_layer"], base.taps["layers.0.query_layer"])
    out = wrapped(ids, attention_mask=mask, taps=["layers.0.attention_scores", "output"])
    out.taps["layers.0.attention_scores"].float().pow(2).mean().backward()
    grads = [p.grad for n, p in wrapped.named_parameters() if "layers.0" in n or ".h.0." in n or "layer.0." in n]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("family", ["bert", "llama", "gpt2"])
def test_the_layer_swap_runs_the_given_modules(family):
    """Theseus' `layers` intervention: a 2-layer student running the 4 layers of a same-width
    teacher computes exactly the teacher's logits (decoders need the config's layer count)."""
    student, teacher = HFTapModel(tiny(family)), tiny(family, layers=4, seed=5)
    if family == "bert":
        student.hf.bert.embeddings.load_state_dict(teacher.bert.embeddings.state_dict())
        student.hf.cls.load_state_dict(teacher.cls.state_dict())
    elif family == "llama":
        student.hf.model.embed_tokens.load_state_dict(teacher.model.embed_tokens.state_dict())
        student.hf.model.norm.load_state_dict(teacher.model.norm.state_dict())
        student.hf.lm_head.load_state_dict(teacher.lm_head.state_dict())
    else:
        for name in ("wte", "wpe", "ln_f"):
            getattr(student.hf.transformer, name).load_state_dict(getattr(teacher.transformer, name).state_dict())
    ids, mask = inputs()
    teacher_layers = list(HFTapModel(teacher).layer_modules())
    with torch.no_grad():
        swapped = student(ids, attention_mask=mask, interventions={"layers": lambda layers: teacher_layers}).logits
        expected = teacher(input_ids=ids, attention_mask=mask).logits
        own = student(ids, attention_mask=mask).logits
    torch.testing.assert_close(swapped, expected, rtol=0, atol=ATOL)
    assert not torch.allclose(own, expected)
    assert len(student.layer_modules()) == L and student.hf.config.num_hidden_layers == L   # restored


def test_a_deep_copy_records_its_own_taps():
    """Hooks find their model through a plain attribute, so a copy's hooks serve the copy."""
    import copy
    original = HFTapModel(tiny("llama"))
    clone = copy.deepcopy(original)
    with torch.no_grad():
        for p in clone.parameters():
            p.add_(0.01)
    ids, mask = inputs()
    with torch.no_grad():
        mine = original(ids, attention_mask=mask, taps=["layers.0.attention_scores", "output"])
        theirs = clone(ids, attention_mask=mask, taps=["layers.0.attention_scores", "output"])
    assert set(theirs.taps) == {"layers.0.attention_scores", "output"}
    assert not torch.allclose(mine.taps["output"], theirs.taps["output"])
    torch.testing.assert_close(theirs.taps["output"], clone.hf(input_ids=ids, attention_mask=mask,
                                                              output_hidden_states=True).hidden_states[-1])
