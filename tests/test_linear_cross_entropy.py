import pytest
import torch

from airrep import linear_cross_entropy as lce
from airrep.linear_cross_entropy import linear_cross_entropy


@pytest.fixture(params=["one chunk per group", "two chunks per group", "one group"])
def small_chunks(monkeypatch, request):
    """64-row chunks, so 300 rows cross four chunk boundaries and end in a partial chunk.
    With one group the forward keeps the probabilities for the backward; otherwise the
    backward recomputes them and runs its gradient matmuls per chunk or per two chunks
    (the last group partial)."""
    monkeypatch.setattr(lce, "_CPU_CHUNK_ELEMENTS", 1)
    group_elements = {"one chunk per group": 1, "two chunks per group": 97 * 128, "one group": 1 << 25}
    monkeypatch.setattr(lce, "_CPU_GROUP_ELEMENTS", group_elements[request.param])


def inputs(n: int = 300, d: int = 24, vocab: int = 97, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=generator)
    weight = torch.randn(vocab, d, generator=generator) * 0.3
    targets = torch.randint(0, vocab, (n,), generator=generator)
    upstream = torch.rand(n, generator=generator)  # not uniform: a mean's gradient would hide row mix-ups
    return hidden, weight, targets, upstream


def losses_and_grads(fn, hidden, weight, targets, upstream):
    hidden = hidden.clone().requires_grad_()
    weight = weight.clone().requires_grad_()
    losses = fn(hidden, weight, targets)
    (losses * upstream).sum().backward()
    return losses.detach(), hidden.grad, weight.grad


def reference(hidden, weight, targets):
    return torch.nn.functional.cross_entropy((hidden @ weight.T).float(), targets, reduction="none")


def test_fp32_matches_cross_entropy_across_chunks(small_chunks):
    args = inputs()
    got = losses_and_grads(linear_cross_entropy, *args)
    want = losses_and_grads(reference, *args)
    for name, a, b in zip(("losses", "hidden grad", "weight grad"), got, want, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_bf16_autocast_matches_cross_entropy_on_the_same_logits(small_chunks):
    hidden, weight, targets, upstream = inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = losses_and_grads(linear_cross_entropy, hidden, weight, targets, upstream)
        want = losses_and_grads(reference, hidden, weight, targets, upstream)
    # exact: float64 on the bf16-rounded inputs that both matmuls see
    exact = losses_and_grads(reference, hidden.bfloat16().double(), weight.bfloat16().double(), targets,
                             upstream.double())
    assert got[0].dtype == torch.float32
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
    # cross_entropy under autocast rounds (softmax - onehot) * upstream to bf16; this rounds
    # only the softmax, so its gradients must be at least as close to the exact ones.
    for name, a, b, c in zip(("hidden grad", "weight grad"), got[1:], want[1:], exact[1:], strict=True):
        assert a.dtype == b.dtype == torch.float32
        error, reference_error = ((x.double() - c).norm() / c.norm() for x in (a, b))
        assert error <= reference_error, name
        assert error < 5e-3, name


def test_inference_mode_returns_the_losses_without_a_graph():
    hidden, weight, targets, _ = inputs(n=10)
    with torch.inference_mode():
        losses = linear_cross_entropy(hidden, weight, targets)
    assert not losses.requires_grad
    torch.testing.assert_close(losses, reference(hidden, weight, targets))


def test_only_the_weight_can_require_grad():
    hidden, weight, targets, upstream = inputs(n=70)
    weight = weight.clone().requires_grad_()
    (linear_cross_entropy(hidden, weight, targets) * upstream).sum().backward()
    expected = weight.detach().clone().requires_grad_()
    (reference(hidden, expected, targets) * upstream).sum().backward()
    torch.testing.assert_close(weight.grad, expected.grad, rtol=1e-5, atol=1e-6)
