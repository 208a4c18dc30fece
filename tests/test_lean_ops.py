"""The memory-lean ops compute what the plain ops compute: chunked cross-entropy, the SwiGLU product.

The references are today's plain formulations (one ``F.cross_entropy`` over all tokens in fp32;
``F.silu(gate) * up``). The gradients must be bitwise equal (each row or element is computed by the
same kernels); the chunked loss differs only in the order its fp32 partial sums are added.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hpcllm.engine import losses
from hpcllm.engine.lean_ops import silu_mul
from hpcllm.engine.losses import cross_entropy_sum
from hpcllm.engine.model import attention_sdpa


def reference(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    flat = logits.flatten(0, 1).float()
    if mask is None:
        return F.cross_entropy(flat, labels.reshape(-1), reduction="sum")
    return (F.cross_entropy(flat, labels.reshape(-1), reduction="none") * mask.reshape(-1)).sum()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("rows", [7, 1 << 20], ids=["chunked", "one-chunk"])
def test_chunked_cross_entropy_equals_the_plain_one(
    monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype, masked: bool, rows: int
) -> None:
    monkeypatch.setattr(losses, "ce_chunk_rows", lambda vocab: rows)
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 17, 301, generator=gen) * 3).to(dtype)
    labels = torch.randint(0, 301, (3, 17), generator=gen)
    mask = torch.rand(3, 17, generator=gen).round() * 0.75 if masked else None
    scale = torch.tensor(1 / 37)  # the train step's 1 / token-weight sum

    ours = logits.clone().requires_grad_()
    loss = cross_entropy_sum(ours, labels, mask, grad_scale=scale)
    (loss * scale).backward()
    ref = logits.clone().requires_grad_()
    ref_loss = reference(ref, labels, mask)
    (ref_loss * scale).backward()

    assert loss.dtype == ref_loss.dtype == torch.float32
    torch.testing.assert_close(loss, ref_loss, rtol=2e-6, atol=0)
    if rows > logits.shape[0] * logits.shape[1]:
        assert torch.equal(loss, ref_loss)  # one chunk: the same single reduction
    assert ours.grad is not None and ref.grad is not None
    assert ours.grad.dtype == dtype
    assert torch.equal(ours.grad, ref.grad)

    # A backward that sends another gradient than the announced one still gets the right one.
    other = logits.clone().requires_grad_()
    (cross_entropy_sum(other, labels, mask) * scale).backward()  # announced 1, sent 1/37
    assert other.grad is not None
    torch.testing.assert_close(other.grad, ref.grad, rtol=1e-2 if dtype == torch.bfloat16 else 1e-6, atol=0)


def test_cross_entropy_keeps_no_fp32_tensor_for_backward() -> None:
    """What autograd keeps is the logits' gradient, in the logits' dtype: no N x V fp32 log-softmax,
    and the chunks' own buffers (freed in forward) are not seen as kept."""
    logits = torch.randn(2, 8, 64, dtype=torch.bfloat16, requires_grad=True)
    labels = torch.randint(0, 64, (2, 8))
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        loss = cross_entropy_sum(logits, labels, None)
    assert [(t.dtype, t.shape) for t in saved] == [(torch.bfloat16, (16, 64))]
    loss.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_cross_entropy_without_gradient_builds_no_graph() -> None:
    """Evaluation: the same chunked sum, no gradient computed or kept."""
    logits = torch.randn(2, 8, 64, requires_grad=True)
    labels = torch.randint(0, 64, (2, 8))
    with torch.no_grad():
        loss = cross_entropy_sum(logits, labels, None)
    assert loss.grad_fn is None
    torch.testing.assert_close(loss, reference(logits.detach(), labels, None), rtol=2e-6, atol=0)


@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_silu_mul_equals_the_unfused_chain_and_saves_two_tensors(dtype: torch.dtype, autocast: bool) -> None:
    gen = torch.Generator().manual_seed(1)
    gate, up, grad = (torch.randn(4, 9, 33, generator=gen).to(dtype) for _ in range(3))
    results = []
    for fn in (silu_mul, lambda g, u: F.silu(g) * u):
        g, u = gate.clone().requires_grad_(), up.clone().requires_grad_()
        saved: list[torch.Tensor] = []
        with (
            torch.autograd.graph.saved_tensors_hooks(lambda t, saved=saved: saved.append(t) or t, lambda t: t),
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast),
        ):
            out = fn(g, u)
        out.backward(grad)
        results.append((out, g.grad, u.grad, len({t.untyped_storage().data_ptr() for t in saved})))
    (out, g_grad, u_grad, n_saved), (ref, ref_g, ref_u, ref_saved) = results
    assert torch.equal(out, ref) and torch.equal(g_grad, ref_g) and torch.equal(u_grad, ref_u)
    assert (n_saved, ref_saved) == (2, 3)  # gate and up; the chain also keeps silu(gate)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attention_on_a_copy_of_v_equals_attention_on_the_view(dtype: torch.dtype) -> None:
    """The model copies v out of the fused qkv output (so the rest of it can be freed): same numbers."""
    gen = torch.Generator().manual_seed(2)
    qkv = torch.randn(2, 24, 4 + 2 * 2, 16, generator=gen).to(dtype).transpose(1, 2)  # (B, H + 2K, T, D)
    grad = torch.randn(2, 4, 24, 16, generator=gen).to(dtype)
    results = []
    for copy in (True, False):
        leaf = qkv.detach().clone().requires_grad_()
        q, k, v = leaf.split([4, 2, 2], dim=1)
        out = attention_sdpa(q, k, v.contiguous() if copy else v)
        out.backward(grad)
        results.append((out, leaf.grad))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
