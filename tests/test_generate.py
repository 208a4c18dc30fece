"""Text generation: KV-cache decoding, sampling filters, and agreement with Hugging Face's generate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from engine_support import make_store, run_engine, write_run
from typer.testing import CliRunner

from hpcllm.cli import app
from hpcllm.config.model import ModelConfig
from hpcllm.engine.entry import run
from hpcllm.engine.generate import Sampling, decode, load_generator, next_token
from hpcllm.engine.model import GPT, KVCache, init_weights
from hpcllm.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()
PROMPT = "The training engine shards"


# --- the KV cache ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"n_kv_heads": None, "tie_embeddings": False},
        {"pos_emb": "learned", "activation": "gelu", "norm": "layernorm"},
    ],
    ids=["gqa-rope", "mha-untied", "learned-positions"],
)
def test_cached_decoding_gives_the_logits_of_the_full_forward(overrides: dict) -> None:
    """Prefill 5 tokens, then 3 at once, then one at a time: every position's logits equal those
    of one forward pass over the whole sequence (the training path)."""
    cfg = ModelConfig.from_name("tiny", seq_len=24, **overrides)
    model = GPT(cfg).eval()
    init_weights(model, 0)
    idx = torch.randint(0, cfg.vocab_size, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(idx)
        cache = KVCache(cfg, 2, 20, dtype=torch.float32, device="cpu")
        parts = [model(idx[:, :5], cache), model(idx[:, 5:8], cache)]
        parts += [model(idx[:, i : i + 1], cache) for i in range(8, 20)]
    assert cache.length == 20
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-4, atol=1e-5)


def test_cache_and_context_limits_are_errors() -> None:
    cfg = ModelConfig.from_name("tiny", seq_len=16)
    model = GPT(cfg).eval()
    with pytest.raises(ValueError, match="exceeds the model's seq_len 16"):
        KVCache(cfg, 1, 17, dtype=torch.float32, device="cpu")
    cache = KVCache(cfg, 1, 8, dtype=torch.float32, device="cpu")
    with torch.no_grad(), pytest.raises(ValueError, match="exceeds the cache's 8"):
        model(torch.zeros(1, 9, dtype=torch.long), cache)
    with pytest.raises(
        ConfigError,
        match=r"the prompt \(10 tokens\) plus --max-new-tokens 7 exceeds the model's context "
        r"of 16 tokens; ask for at most 6",
    ):
        decode(model, list(range(10)), 7, Sampling(temperature=0), eos_id=None)


# --- choosing the next token -------------------------------------------------------------------


def draws(logits: torch.Tensor, sampling: Sampling, n: int = 400, limit: int | None = None) -> set[int]:
    rng = torch.Generator().manual_seed(sampling.seed)
    return {next_token(logits, sampling, rng, limit) for _ in range(n)}


def test_filters_keep_exactly_the_tokens_they_should() -> None:
    probs = torch.tensor([0.05, 0.5, 0.15, 0.3])
    logits = probs.log()
    assert next_token(logits, Sampling(temperature=0), torch.Generator()) == 1
    assert draws(logits, Sampling(temperature=1.0)) == {0, 1, 2, 3}
    assert draws(logits, Sampling(temperature=1.0, top_k=2)) == {1, 3}
    # Nucleus: sorted 0.5, 0.3, 0.15, 0.05; the smallest set reaching p = 0.8 is {0.5, 0.3}.
    assert draws(logits, Sampling(temperature=1.0, top_p=0.8)) == {1, 3}
    assert draws(logits, Sampling(temperature=1.0, top_p=0.81)) == {1, 3, 2}
    assert draws(logits, Sampling(temperature=1.0, top_p=0.01)) == {1}  # the most likely always stays
    # Ids the tokenizer cannot decode (padded vocabulary) are never chosen, not even by argmax.
    assert next_token(logits, Sampling(temperature=0), torch.Generator(), vocab_limit=1) == 0
    assert draws(logits, Sampling(temperature=1.0), limit=3) == {0, 1, 2}


def test_sampling_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="--top-p: 0; must be in"):
        Sampling(top_p=0)
    with pytest.raises(ConfigError, match="--temperature: -1"):
        Sampling(temperature=-1)


# --- from a run's checkpoint -------------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_store(tmp_path_factory.mktemp("data") / "store")


def trained_run(root: Path, store: Path, nproc: int = 1, **model: object) -> Path:
    """One step on real text from a wide init (std 0.2), so that greedy decoding does not collapse
    onto one token and a wrong position or cache entry changes the text."""
    d = root / f"run{nproc}"
    cfg = write_run(
        d,
        store,
        train={"steps": 1, "micro_batch_size": 1},
        checkpoint={"at_end": True},
        model={"preset": "tiny", "seq_len": 64, "init": {"std": 0.2}, **model},
    )
    if nproc == 1:
        assert run(cfg) == 0
    else:
        proc = run_engine(cfg, nproc)
        assert proc.returncode == 0, proc.stderr
    return d


def cli_ids(run_dir: Path, *args: str) -> dict:
    res = runner.invoke(app, ["generate", str(run_dir), "--prompt", PROMPT, "--json", *args])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def hf_greedy(run_dir: Path, out: Path, prompt_ids: list[int], n: int) -> list[int]:
    """The exported Hugging Face model's own greedy ``generate``, told the same EOS and that ids
    beyond the byte tokenizer's 257 cannot be produced."""
    from transformers import LlamaForCausalLM

    res = runner.invoke(app, ["ckpt", "export", str(run_dir), "--format", "hf", "--output", str(out)])
    assert res.exit_code == 0, res.output
    hf = LlamaForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    with torch.no_grad():
        seq = hf.generate(
            torch.tensor([prompt_ids]),
            max_new_tokens=n,
            do_sample=False,
            eos_token_id=256,
            pad_token_id=256,
            suppress_tokens=list(range(257, hf.config.vocab_size)),
        )
    return seq[0, len(prompt_ids) :].tolist()


@pytest.mark.parametrize("model", [{}, {"n_kv_heads": None, "tie_embeddings": False}], ids=["gqa-tied", "mha-untied"])
def test_greedy_output_equals_hugging_face_generate(tmp_path: Path, store: Path, model: dict) -> None:
    d = trained_run(tmp_path, store, **model)
    ours = cli_ids(d, "--temperature", "0", "-n", "30")
    assert ours["prompt_ids"] == [256, *PROMPT.encode()]  # EOS, then the prompt's bytes
    assert len(set(ours["ids"])) >= 8, ours["ids"]  # a varied continuation: the comparison means something
    assert ours["ids"] == hf_greedy(d, tmp_path / "hf", ours["prompt_ids"], 30)
    assert ours["text"] == bytes(i for i in ours["ids"] if i < 256).decode("utf-8", errors="replace")
    assert ours["step"] == 1 and ours["checkpoint"].endswith("checkpoints/step_1")


def test_sampling_is_reproducible_from_its_seed(tmp_path: Path, store: Path) -> None:
    d = trained_run(tmp_path, store)
    gen = load_generator(str(d))
    a, b, c = (gen.generate(PROMPT, 30, Sampling(temperature=1.0, seed=s)).ids for s in (7, 7, 8))
    assert a == b and a != c
    # Through the CLI (a new generator, loaded again): the same text again.
    assert cli_ids(d, "--temperature", "1", "--seed", "7", "-n", "30")["ids"] == a
    # top-k 1 is greedy whatever the seed.
    greedy = gen.generate(PROMPT, 30, Sampling(temperature=0)).ids
    assert gen.generate(PROMPT, 30, Sampling(temperature=1.0, top_k=1, seed=3)).ids == greedy


def test_plain_output_and_clear_errors(tmp_path: Path, store: Path) -> None:
    d = trained_run(tmp_path, store)
    res = runner.invoke(app, ["generate", str(d), "--prompt", PROMPT, "--temperature", "0", "-n", "5"])
    assert res.exit_code == 0 and res.stdout.startswith(PROMPT), res.output
    assert "step_1 (step 1) on cpu: 5 tokens" in res.stderr
    res = runner.invoke(app, ["generate", str(d), "--prompt", "x", "-n", "70"])
    assert (
        res.exit_code == 2
        and "plus --max-new-tokens 70 exceeds the model's context of 64 tokens; ask for at most 62" in res.stderr
    )
    res = runner.invoke(app, ["generate", str(d), "--prompt", "x", "--step", "9"])
    assert res.exit_code == 2 and "no checkpoint at step 9" in res.stderr and "steps: 1" in res.stderr
    res = runner.invoke(app, ["generate", str(tmp_path / "nothing"), "--prompt", "x"])
    # A path that does not exist says so, and what its parent holds (issue 19), not "not a run directory".
    assert res.exit_code == 2 and "nothing: no such folder or file" in res.stderr and "holds: run1" in res.stderr


@pytest.mark.integration
def test_a_checkpoint_saved_by_two_ranks_generates_like_its_hf_export(tmp_path: Path, store: Path) -> None:
    d = trained_run(tmp_path, store, nproc=2)
    ours = cli_ids(d, "--temperature", "0", "-n", "30")
    assert len(set(ours["ids"])) >= 8
    assert ours["ids"] == hf_greedy(d, tmp_path / "hf", ours["prompt_ids"], 30)


def test_generate_module_does_not_import_torch() -> None:
    code = "import sys, hpcllm.cli.generate; sys.exit('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0
