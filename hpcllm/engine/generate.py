"""Text generation from a checkpoint: load it on one device, decode with a KV cache, sample.

Loading goes through ``hpcllm.engine.export.load_model_state``: DCP's metadata gives every
tensor's full shape, so a checkpoint written by any number of ranks is read whole by this single
process, without a process group. Decoding runs the prompt once, then one token per step against
the model's KV cache (``hpcllm.engine.model.KVCache``).

The prompt is preceded by the tokenizer's EOS: in training every document follows an EOS, so this
is how the model saw the start of a text. Ids the tokenizer cannot decode (the model's vocabulary
is padded, e.g. 512 rows for the 257 byte ids) are never sampled.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hpcllm.config.loader import load_model
from hpcllm.config.training import TrainingConfig
from hpcllm.data.tokenizer import Tokenizer, load_tokenizer
from hpcllm.engine.checkpoint import TRAINER_STATE
from hpcllm.engine.checkpoint_find import resolve_checkpoint
from hpcllm.engine.export import checkpoint_model_config, load_model_state
from hpcllm.engine.model import GPT, KVCache
from hpcllm.errors import ConfigError
from hpcllm.fsutil import read_json
from hpcllm.rundir import RunDir
from hpcllm.sitepaths import expand_path


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen from the logits."""

    temperature: float = 0.8  # 0: greedy (argmax); otherwise softmax(logits / temperature)
    top_k: int | None = None  # keep the k most likely tokens
    top_p: float = 1.0  # keep the smallest set of most likely tokens whose probability reaches p
    seed: int = 0  # the sampling generator's seed: same seed, same device -> same text

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ConfigError(f"--temperature: {self.temperature}; must be >= 0 (0 = greedy)")
        if self.top_k is not None and self.top_k < 1:
            raise ConfigError(f"--top-k: {self.top_k}; must be >= 1")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"--top-p: {self.top_p}; must be in (0, 1]")


@dataclass
class Generation:
    """What ``generate`` produced: new ids (EOS included when it stopped there) and timing."""

    prompt_ids: list[int]
    ids: list[int]
    stopped_at_eos: bool
    seconds: float
    text: str = ""


@dataclass
class Generator:
    """A model on one device with the tokenizer of its run."""

    model: GPT
    tokenizer: Tokenizer
    checkpoint: Path
    step: int | None
    device: torch.device
    vocab_limit: int = field(init=False)

    def __post_init__(self) -> None:
        self.vocab_limit = min(self.tokenizer.vocab_size, self.model.cfg.vocab_size)

    def encode(self, prompt: str) -> list[int]:
        return [self.tokenizer.eos_id] + [int(i) for i in self.tokenizer.encode_batch([prompt])[0]]

    def generate(self, prompt: str, max_new_tokens: int, sampling: Sampling) -> Generation:
        prompt_ids = self.encode(prompt)
        t0 = time.perf_counter()
        ids, stopped = decode(
            self.model, prompt_ids, max_new_tokens, sampling, eos_id=self.tokenizer.eos_id, vocab_limit=self.vocab_limit
        )
        out = Generation(prompt_ids, ids, stopped, time.perf_counter() - t0)
        out.text = self.tokenizer.decode(ids)
        return out


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device: 'cuda' requested but torch sees no CUDA GPU; use 'auto' or 'cpu'")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_generator(spec: str, *, tokenizer: str | None = None, device: str = "auto") -> Generator:
    """The model of checkpoint ``spec`` (any reference ``resolve_checkpoint`` takes) on ``device``,
    with ``tokenizer``, else the one in its run's ``run.yaml`` (``data.tokenizer``)."""
    ckpt = resolve_checkpoint(spec, "RUN_DIR")
    run = RunDir(ckpt.parent.parent)  # <run>/checkpoints/step_N
    tokenizer_from_run = tokenizer is None
    if tokenizer is None:
        if not run.config.is_file():
            raise ConfigError(
                f"{ckpt}: no run.yaml beside this checkpoint to take the tokenizer from; "
                "give --tokenizer (byte or a tokenizer.json)"
            )
        tokenizer = load_model(TrainingConfig, run.config).data.tokenizer
    tok = load_tokenizer(
        tokenizer
        if tokenizer == "byte"
        else expand_path(tokenizer, "data.tokenizer" if tokenizer_from_run else "--tokenizer")
    )
    cfg = checkpoint_model_config(ckpt, run)
    if tok.vocab_size > cfg.vocab_size:
        raise ConfigError(
            f"tokenizer {tokenizer!r} has {tok.vocab_size} ids, more than the model's "
            f"vocab_size {cfg.vocab_size}: it is not the tokenizer this model was trained with"
        )
    dev = pick_device(device)
    with torch.device("meta"):
        model = GPT(cfg)
    model.load_state_dict(load_model_state(ckpt), assign=True)  # the loaded tensors become the weights
    model.tie_weights()  # assign gave the head its own copy of a tied embedding
    model.init_buffers(dev)  # the RoPE tables are derived, not saved: still on meta until now
    model.to(dev)
    step = (read_json(ckpt / TRAINER_STATE) or {}).get("step")
    return Generator(model.eval(), tok, ckpt, step, dev)


@torch.no_grad()
def decode(
    model: GPT,
    prompt_ids: list[int],
    max_new_tokens: int,
    sampling: Sampling,
    *,
    eos_id: int | None,
    vocab_limit: int | None = None,
) -> tuple[list[int], bool]:
    """Up to ``max_new_tokens`` ids after ``prompt_ids``; stops after ``eos_id``. Returns (ids, stopped at EOS).

    The prompt runs through the model once, filling the KV cache; each new token then costs one
    position. Ids at or above ``vocab_limit`` are never chosen.
    """
    if not prompt_ids:
        raise ConfigError("the prompt is empty: give at least one token")
    context = model.cfg.seq_len
    if len(prompt_ids) + max_new_tokens > context:
        room = context - len(prompt_ids)
        raise ConfigError(
            f"the prompt ({len(prompt_ids)} tokens) plus --max-new-tokens {max_new_tokens} exceeds the model's "
            f"context of {context} tokens" + (f"; ask for at most {room}" if room > 0 else "; shorten the prompt")
        )
    device = model.tok_emb.weight.device
    cache = KVCache(model.cfg, 1, len(prompt_ids) + max_new_tokens, dtype=model.tok_emb.weight.dtype, device=device)
    rng = torch.Generator(device=device).manual_seed(sampling.seed)
    logits = model(torch.tensor([prompt_ids], device=device), cache)[0, -1]
    out: list[int] = []
    for i in range(max_new_tokens):
        token = next_token(logits, sampling, rng, vocab_limit)
        out.append(token)
        if token == eos_id:
            return out, True
        if i + 1 < max_new_tokens:
            logits = model(torch.tensor([[token]], device=device), cache)[0, -1]
    return out, False


def next_token(logits: torch.Tensor, sampling: Sampling, rng: torch.Generator, vocab_limit: int | None = None) -> int:
    """Choose one id from ``logits`` (vocab,): argmax at temperature 0, else sample after the
    temperature, top-k and top-p (nucleus) filters, drawing from ``rng``."""
    logits = logits.float()
    if vocab_limit is not None and vocab_limit < logits.numel():
        logits = logits.clone()
        logits[vocab_limit:] = float("-inf")
    if sampling.temperature == 0:
        return int(torch.argmax(logits))
    logits = logits / sampling.temperature
    if sampling.top_k is not None and sampling.top_k < logits.numel():
        kth = torch.topk(logits, sampling.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p < 1.0:
        probs, order = torch.sort(torch.softmax(logits, dim=-1), descending=True)
        before = torch.cumsum(probs, dim=-1) - probs  # probability of the more likely tokens
        drop = order[before >= sampling.top_p]  # the most likely token always stays (before = 0)
        logits = logits.index_fill(0, drop, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=rng))
