"""The GPT module against its config and against reference formulas (single process, CPU)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.autograd.graph import saved_tensors_hooks

from hpcllm.config.model import ModelConfig, preset_names
from hpcllm.engine.model import GPT, apply_rope, attention_math, attention_sdpa, init_std, init_weights, rope_tables
from hpcllm.errors import ConfigError


def tiny(**overrides: object) -> ModelConfig:
    return ModelConfig.from_name("tiny", **overrides)


def built(cfg: ModelConfig, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(cfg)
    init_weights(model, seed)
    return model


@pytest.mark.parametrize("name", preset_names(), ids=preset_names())
def test_parameter_count_matches_config_for_every_preset(name: str) -> None:
    cfg = ModelConfig.from_name(name)
    with torch.device("meta"):
        model = GPT(cfg)
    assert sum(p.numel() for p in model.parameters()) == cfg.n_params()


def test_60m_preset_is_the_seeds_60m_parameter_gpt() -> None:
    cfg = ModelConfig.from_name("60m")
    with torch.device("meta"):
        model = GPT(cfg)
    # Built on meta: every parameter counted once (the tied head is the embedding).
    n = sum(p.numel() for p in model.parameters())
    assert n == 59_845_120 and round(n / 1e6) == 60
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.head_dim, cfg.seq_len) == (10, 512, 8, 64, 1024)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(activation="gelu", norm="layernorm", bias=True, pos_emb="learned", tie_embeddings=False),
        dict(n_kv_heads=1),
        dict(n_kv_heads=None, tie_embeddings=False),
    ],
    ids=["gelu-layernorm-bias-learned", "mqa", "mha-untied"],
)
def test_parameter_count_matches_config_for_variants(overrides: dict) -> None:
    cfg = tiny(**overrides)
    assert sum(p.numel() for p in GPT(cfg).parameters()) == cfg.n_params()


def test_gqa_has_fewer_kv_parameters_and_equals_mha_with_repeated_kv() -> None:
    gqa_cfg, mha_cfg = tiny(n_kv_heads=2), tiny(n_kv_heads=4)
    gqa, mha = built(gqa_cfg), built(mha_cfg)
    assert gqa.blocks[0].attn.qkv.weight.numel() < mha.blocks[0].attn.qkv.weight.numel()
    # Copy GQA's weights into MHA, repeating each K/V head for the query heads of its group.
    hd, h, k = gqa_cfg.head_dim, gqa_cfg.n_heads, gqa_cfg.kv_heads
    sd = {n: t.clone() for n, t in gqa.state_dict().items()}
    for i in range(gqa_cfg.n_layers):
        key = f"blocks.{i}.attn.qkv.weight"
        w = sd[key].view(h + 2 * k, hd, -1)
        q, kk, v = w[:h], w[h : h + k], w[h + k :]
        rep = h // k
        sd[key] = torch.cat([q, kk.repeat_interleave(rep, 0), v.repeat_interleave(rep, 0)]).flatten(0, 1)
    mha.load_state_dict(sd)
    idx = torch.randint(0, gqa_cfg.vocab_size, (2, 32))
    torch.testing.assert_close(gqa(idx), mha(idx), rtol=1e-5, atol=1e-5)


def test_rope_scores_depend_only_on_relative_position() -> None:
    head_dim = 16
    cos, sin = rope_tables(64, head_dim, 10000.0)
    q, k = torch.randn(head_dim), torch.randn(head_dim)

    def score(m: int, n: int) -> torch.Tensor:
        qm = apply_rope(q.view(1, 1, 1, -1), cos[m : m + 1], sin[m : m + 1])
        kn = apply_rope(k.view(1, 1, 1, -1), cos[n : n + 1], sin[n : n + 1])
        return (qm * kn).sum()

    torch.testing.assert_close(score(5, 2), score(40, 37))
    torch.testing.assert_close(score(10, 10), score(0, 0))
    assert not torch.allclose(score(5, 2), score(5, 4))  # and they do depend on the distance


def test_rope_theta_changes_the_rotation() -> None:
    assert not torch.allclose(rope_tables(8, 16, 10000.0)[0], rope_tables(8, 16, 500000.0)[0])


def test_swiglu_mlp_matches_reference_formula() -> None:
    mlp = built(tiny()).blocks[0].mlp
    x = torch.randn(3, 64)
    ref = (F.silu(x @ mlp.gate.weight.T) * (x @ mlp.up.weight.T)) @ mlp.down.weight.T
    torch.testing.assert_close(mlp(x), ref)


def test_gelu_mlp_matches_reference_formula() -> None:
    mlp = built(tiny(activation="gelu")).blocks[0].mlp
    x = torch.randn(3, 64)
    h = x @ mlp.up.weight.T
    ref = (0.5 * h * (1 + torch.erf(h / math.sqrt(2)))) @ mlp.down.weight.T
    torch.testing.assert_close(mlp(x), ref)


def test_rmsnorm_matches_reference_formula() -> None:
    block = built(tiny()).blocks[0]
    with torch.no_grad():
        block.attn_norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(3, 64)
    ref = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * block.attn_norm.weight
    torch.testing.assert_close(block.attn_norm(x), ref)


def test_layernorm_is_used_when_configured() -> None:
    assert isinstance(built(tiny(norm="layernorm")).norm, torch.nn.LayerNorm)


def test_tied_embeddings_share_the_head_weight() -> None:
    model = built(tiny(tie_embeddings=True))
    assert model.head.weight.data_ptr() == model.tok_emb.weight.data_ptr()
    untied = built(tiny(tie_embeddings=False))
    assert untied.head.weight.data_ptr() != untied.tok_emb.weight.data_ptr()


def test_learned_positions_make_the_output_position_dependent_without_rope() -> None:
    model = built(tiny(pos_emb="learned"))
    assert model.pos_emb is not None and model.rope_cos.numel() == 0
    # Identical tokens: with causal attention and no position signal every position would agree.
    logits = model(torch.full((1, 8), 7))
    assert not torch.allclose(logits[0, 0], logits[0, 5])


def test_bias_flag_adds_biases() -> None:
    assert built(tiny(bias=True)).blocks[0].attn.qkv.bias is not None
    assert built(tiny(bias=False)).blocks[0].attn.qkv.bias is None


@pytest.mark.parametrize("n_kv", [1, 2, 4], ids=["mqa", "gqa", "mha"])
def test_sdpa_matches_plain_attention(n_kv: int) -> None:
    q = torch.randn(2, 4, 16, 8)
    k, v = torch.randn(2, n_kv, 16, 8), torch.randn(2, n_kv, 16, 8)
    torch.testing.assert_close(attention_sdpa(q, k, v), attention_math(q, k, v), rtol=1e-4, atol=1e-5)


def test_whole_model_with_sdpa_matches_math_attention() -> None:
    a, b = built(tiny(attention="sdpa")), built(tiny(attention="math"))
    idx = torch.randint(0, 512, (2, 32))
    torch.testing.assert_close(a(idx), b(idx), rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU error")
def test_flash_attention_without_cuda_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="'flash' needs a CUDA GPU"):
        GPT(tiny(attention="flash"))


@pytest.mark.parametrize("scheme", ["normal", "scaled_residual", "small_init"])
def test_init_schemes_give_the_documented_std(scheme: str) -> None:
    cfg = ModelConfig(
        vocab_size=256,
        seq_len=16,
        n_layers=4,
        n_heads=4,
        d_model=256,
        ffn_hidden=512,
        init={"scheme": scheme, "std": 0.02},
    )
    model = built(cfg)
    d, layers = 256, 4
    expected_out = {
        "normal": 0.02,
        "scaled_residual": 0.02 / math.sqrt(2 * layers),
        "small_init": 2 / (layers * math.sqrt(d)),
    }[scheme]
    expected_in = {"normal": 0.02, "scaled_residual": 0.02, "small_init": math.sqrt(2 / (5 * d))}[scheme]
    proj, qkv = model.blocks[1].attn.proj.weight, model.blocks[1].attn.qkv.weight
    assert proj.std().item() == pytest.approx(expected_out, rel=0.03)
    assert model.blocks[2].mlp.down.weight.std().item() == pytest.approx(expected_out, rel=0.03)
    assert qkv.std().item() == pytest.approx(expected_in, rel=0.03)
    assert model.tok_emb.weight.std().item() == pytest.approx(expected_in, rel=0.03)
    assert init_std(cfg, "blocks.0.mlp.up.weight") == pytest.approx(expected_in)
    assert torch.all(model.blocks[0].attn_norm.weight == 1)


def test_init_is_deterministic_per_seed() -> None:
    a, b, c = built(tiny(), seed=1), built(tiny(), seed=1), built(tiny(), seed=2)
    assert torch.equal(a.blocks[0].attn.qkv.weight, b.blocks[0].attn.qkv.weight)
    assert not torch.equal(a.blocks[0].attn.qkv.weight, c.blocks[0].attn.qkv.weight)


def _grads_and_saved_bytes(mode: str) -> tuple[list[torch.Tensor], int]:
    from hpcllm.config.training import ParallelConfig
    from hpcllm.engine.parallelize import apply_activation_checkpointing

    cfg = tiny(n_layers=4)
    model = built(cfg)
    apply_activation_checkpointing(model, ParallelConfig(activation_checkpointing=mode, ac_every=2))
    idx = torch.randint(0, cfg.vocab_size, (2, 64))
    saved = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += t.numel() * t.element_size()
        return t

    with saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(model(idx).flatten(0, 1), idx.flatten())
    loss.backward()
    return [p.grad.clone() for p in model.parameters()], saved


def test_activation_checkpointing_keeps_gradients_and_saves_fewer_bytes() -> None:
    none_grads, none_bytes = _grads_and_saved_bytes("none")
    sel_grads, sel_bytes = _grads_and_saved_bytes("selective")
    full_grads, full_bytes = _grads_and_saved_bytes("full")
    for a, b, c in zip(none_grads, sel_grads, full_grads, strict=True):
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(a, c)
    assert full_bytes < sel_bytes < none_bytes
