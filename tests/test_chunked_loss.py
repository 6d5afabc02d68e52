"""`linear_cross_entropy`, the masked-LM loss without the (rows x vocabulary) logits, equals transformers'
`ForMaskedLMLoss` over the decoder's logits: value and gradients, eager, under bf16 autocast and compiled."""

import json

import pytest
import torch
import torch._dynamo.testing
from torch.nn import functional as F
from transformers.loss.loss_utils import ForMaskedLMLoss

from hf_encoders.modeling_encoder import linear_cross_entropy, register_fused_cross_entropy

VOCAB, HIDDEN = 97, 16


def make_inputs(rows: int = 37, bias: bool = True, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Hidden states, decoder weight and bias (leaves that require gradients), and labels with every third one -100."""
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(rows, HIDDEN, generator=generator).requires_grad_()
    weight = torch.randn(VOCAB, HIDDEN, generator=generator).requires_grad_()
    bias_ = torch.randn(VOCAB, generator=generator).requires_grad_() if bias else None
    labels = torch.randint(0, VOCAB, (rows,), generator=generator)
    labels[::3] = -100
    return hidden, weight, bias_, labels


def full_loss(hidden, weight, bias, labels, num_items_in_batch=None):
    return ForMaskedLMLoss(F.linear(hidden, weight, bias), labels, VOCAB, num_items_in_batch=num_items_in_batch)


def loss_and_grads(loss_fn, hidden, weight, bias, labels, **kwargs) -> tuple[torch.Tensor, list[torch.Tensor]]:
    leaves = [t for t in (hidden, weight, bias) if t is not None and t.requires_grad]
    for leaf in leaves:
        leaf.grad = None
    loss = loss_fn(hidden, weight, bias, labels, **kwargs)
    loss.backward()
    return loss.detach(), [leaf.grad.clone() for leaf in leaves]


def assert_same(expected, actual, atol: float = 1e-5, rtol: float = 1e-5) -> None:
    (loss, grads), (expected_loss, expected_grads) = actual, expected
    assert loss.dtype == expected_loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected_loss, atol=atol, rtol=rtol, equal_nan=True)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, atol=atol, rtol=rtol)


CASES = {
    "mean over labels not -100": dict(),
    "chunks that do not divide the rows": dict(chunk_size=5),
    "one chunk larger than the rows": dict(chunk_size=4096),
    "num_items_in_batch as a tensor": dict(num_items_in_batch=torch.tensor(50)),
    "num_items_in_batch as an int": dict(num_items_in_batch=7),
    "no bias": dict(bias=False),
    "(batch, sequence, hidden) states": dict(shape=(4, 9)),
}


@pytest.mark.parametrize("case", CASES)
def test_equals_the_full_cross_entropy(case):
    options = dict(CASES[case])
    hidden, weight, bias, labels = make_inputs(36 if "shape" in options else 37, bias=options.pop("bias", True))
    if shape := options.pop("shape", None):
        hidden = hidden.detach().reshape(*shape, HIDDEN).requires_grad_()
        labels = labels.reshape(shape)
    chunk_size = options.pop("chunk_size", 8)
    expected = loss_and_grads(full_loss, hidden, weight, bias, labels, **options)
    assert_same(
        expected, loss_and_grads(linear_cross_entropy, hidden, weight, bias, labels, chunk_size=chunk_size, **options)
    )


@pytest.mark.parametrize("rows", [37, 0])
@pytest.mark.parametrize("num_items_in_batch", [None, torch.tensor(5)])
def test_all_labels_ignored_gives_what_transformers_gives(num_items_in_batch, rows):
    """nan for the mean over no labels, 0 for a sum over none divided by `num_items_in_batch`; zero gradients both."""
    hidden, weight, bias, labels = make_inputs(rows)
    labels = torch.full_like(labels, -100)
    expected = loss_and_grads(full_loss, hidden, weight, bias, labels, num_items_in_batch=num_items_in_batch)
    actual = loss_and_grads(linear_cross_entropy, hidden, weight, bias, labels, num_items_in_batch=num_items_in_batch)
    assert torch.isnan(expected[0]) == (num_items_in_batch is None)
    assert_same(expected, actual)
    assert all(not grad.any() for grad in actual[1])


def test_bf16_autocast_computes_the_logits_in_bf16_and_the_loss_in_fp32():
    hidden, weight, bias, labels = make_inputs(64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = loss_and_grads(full_loss, hidden, weight, bias, labels)
        actual = loss_and_grads(linear_cross_entropy, hidden, weight, bias, labels, chunk_size=16)
    fp32 = loss_and_grads(linear_cross_entropy, hidden, weight, bias, labels)
    assert actual[0] != fp32[0]  # the logits were computed in bf16, as F.linear computes them under autocast
    assert_same(expected, actual, atol=2e-2, rtol=2e-2)
    assert [grad.dtype for grad in actual[1]] == [torch.float32] * 3


def test_bf16_inputs_give_bf16_gradients():
    *leaves, labels = make_inputs()
    hidden, weight, bias = (leaf.detach().bfloat16().requires_grad_() for leaf in leaves)
    expected = loss_and_grads(full_loss, hidden, weight, bias, labels)
    actual = loss_and_grads(linear_cross_entropy, hidden, weight, bias, labels, chunk_size=8)
    assert [grad.dtype for grad in actual[1]] == [torch.bfloat16] * 3
    assert_same(expected, actual, atol=5e-2, rtol=5e-2)


def test_no_gradient_formed_where_none_is_asked():
    hidden, weight, bias, labels = make_inputs()
    with torch.no_grad():
        loss = linear_cross_entropy(hidden, weight, bias, labels)
    assert loss.grad_fn is None
    torch.testing.assert_close(loss, full_loss(hidden, weight, bias, labels).detach())
    frozen = weight.detach()
    expected = loss_and_grads(full_loss, hidden, frozen, None, labels)
    assert_same(expected, loss_and_grads(linear_cross_entropy, hidden, frozen, None, labels, chunk_size=8))


def test_gradient_scales_with_the_incoming_gradient():
    hidden, weight, bias, labels = make_inputs()
    expected = loss_and_grads(lambda *a: 3 * full_loss(*a) ** 2, hidden, weight, bias, labels)
    actual = loss_and_grads(lambda *a: 3 * linear_cross_entropy(*a, chunk_size=8) ** 2, hidden, weight, bias, labels)
    assert_same(expected, actual, atol=1e-4)


def head_and_loss(hidden, weight, bias, labels):
    return linear_cross_entropy(torch.tanh(hidden), weight, bias, labels, chunk_size=8)


def test_compiles_whole_and_equal_with_the_number_of_rows_dynamic():
    """One graph, no break; over five row counts at most two compilations (the first static, then dynamic)."""
    explanation = torch._dynamo.explain(head_and_loss)(*make_inputs())
    assert (explanation.graph_count, explanation.graph_break_count) == (1, 0), explanation.break_reasons
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(head_and_loss, backend=counter)
    for rows in (37, 41, 29, 64, 9):
        inputs = make_inputs(rows, seed=rows)
        expected = loss_and_grads(lambda h, *a: full_loss(torch.tanh(h), *a), *inputs)
        assert_same(expected, loss_and_grads(compiled, *inputs))
    assert counter.frame_count <= 2
    torch._dynamo.reset()


def test_custom_op_registration():
    """The op passes torch's checks of its fake (meta) and autograd registrations, and registering it again (the
    file imported a second time, as a checkpoint's copy) is harmless."""
    hidden, weight, bias, labels = make_inputs()
    valid = labels != -100
    arguments = (hidden, weight, bias, labels.clamp(min=0), valid, valid.sum(), 8, torch.float32, [True, True, True])
    torch.library.opcheck(torch.ops.hf_encoders.fused_cross_entropy.default, arguments)
    register_fused_cross_entropy()


def test_loss_benchmark_runs_and_records_its_figures(tmp_path):
    from benchmarks import bench_loss_cpu

    output = tmp_path / "loss.json"
    tiny = "--vocab-sizes 64 --hidden-sizes 16 --rows 20 --chunk-sizes 8 --rounds 1 --min-seconds 0 --steps 1"
    tiny += " --step-rounds 1 --warmup 0 --batch-size 2 --min-length 8 --max-length 12 --layers 1 --heads 2"
    bench_loss_cpu.main(
        [*tiny.split(), "--intermediate-size", "32", "--model-hidden-size", "32", "--output", str(output)]
    )
    figures = json.loads(output.read_text())
    assert set(figures["loss"][0]["milliseconds"]) == {"full", "chunked 8"}
    assert figures["step"][0]["speedup_over_full"]["full loss"] == 1.0
