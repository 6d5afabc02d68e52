"""`torch.compile` around the models: the same outputs, losses and gradients as eager, with unpadding and the sparse
heads kept (the batch's layout is read on the host once, between two graphs, never inside a layer), and few
recompilations over batches of different lengths. Dynamo's `aot_eager` backend traces forward and backward as
inductor would, without generating code: the tests check what dynamo and autograd see, not inductor's kernels
(benchmarks/bench_encoder_cpu.py times those)."""

import collections

import pytest
import torch
import torch._dynamo
from conftest import pack, random_batch, tiny_config, token_rows
from test_modeling_seq2seq import seq2seq_config

from hf_encoders import (
    EncoderForMaskedLM,
    EncoderForSequenceClassification,
    Seq2SeqForConditionalGeneration,
)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def masked_lm(seed: int = 0, **overrides) -> EncoderForMaskedLM:
    torch.manual_seed(seed)
    return EncoderForMaskedLM(tiny_config(**overrides)).train()


def masked_labels(ids: torch.Tensor, mask: torch.Tensor, seed: int = 1) -> torch.Tensor:
    chosen = torch.rand(ids.shape, generator=torch.Generator().manual_seed(seed)) < 0.4
    return ids.masked_fill((mask == 0) | ~chosen, -100)


def batches(config, lengths: tuple[int, ...]) -> dict[str, dict[str, torch.Tensor]]:
    """One batch four ways: right- and left-padded, and padding-free (restarting positions, or offsets)."""
    ids, mask = random_batch(config, lengths)
    labels = masked_labels(ids, mask)
    flat, positions, _ = pack(ids, mask)
    flat_labels, _, _ = pack(labels, mask)
    offsets = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    left = torch.stack([row.roll(int(length) - row.numel()) for row, length in zip(ids, lengths, strict=True)])
    left_mask, left_labels = (
        mask.flip(1),
        torch.stack([row.roll(int(length) - row.numel()) for row, length in zip(labels, lengths, strict=True)]),
    )
    return {
        "right-padded": dict(input_ids=ids, attention_mask=mask, labels=labels),
        "left-padded": dict(input_ids=left, attention_mask=left_mask, labels=left_labels),
        "padding-free, position_ids": dict(input_ids=flat, position_ids=positions, labels=flat_labels),
        "padding-free, cu_seq_lens_q": dict(input_ids=flat, cu_seq_lens_q=offsets, labels=flat_labels),
    }


def gradients(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    "layout, skip_logits",
    [
        ("right-padded", None),
        ("left-padded", None),
        ("padding-free, position_ids", None),
        ("padding-free, cu_seq_lens_q", None),
        ("right-padded", False),
    ],
    ids=["right-padded", "left-padded", "padding-free, position_ids", "padding-free, cu_seq_lens_q", "logits"],
)
def test_compiled_training_step_equals_eager_and_keeps_unpadding_and_the_sparse_head(layout, skip_logits):
    """By default the loss without the logits (the custom op `linear_cross_entropy` calls, traced whole); with
    `skip_logits=False`, the sparse head's logits, one row per label."""
    model = masked_lm()
    batch = batches(model.config, (20, 7, 3))[layout]
    compiled = torch.compile(model, backend="aot_eager")
    results = {}
    for name, run in (("eager", model), ("compiled", compiled)):
        model.zero_grad()
        with token_rows(model.model.layers[0].mlp) as rows:
            output = run(**batch, skip_logits=skip_logits)
        output.loss.backward()
        results[name] = output, gradients(model), rows
    (eager, eager_grads, eager_rows), (compiled_out, compiled_grads, compiled_rows) = results.values()
    assert compiled_rows == eager_rows == [(1, 30)]  # the layers ran on the 30 real tokens
    torch.testing.assert_close(compiled_out.loss, eager.loss)
    if skip_logits is None:
        assert compiled_out.logits is None and eager.logits is None
    else:
        labelled = int((batch["labels"] != -100).sum())
        assert compiled_out.logits.shape == eager.logits.shape == (labelled, model.config.vocab_size)  # sparse head
        torch.testing.assert_close(compiled_out.logits, eager.logits)
    assert compiled_grads.keys() == eager_grads.keys()
    for name, grad in eager_grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, msg=name)


@pytest.mark.parametrize("model_class", [EncoderForMaskedLM, EncoderForSequenceClassification])
def test_compiled_inference_equals_eager(model_class):
    """Without gradients, as pipelines and `Trainer.evaluate` run: padded batches unpadded, logits in the batch's
    shape; `model.compile()` as `torch.compile(model)`."""
    torch.manual_seed(0)
    model = model_class(tiny_config(num_labels=3)).eval()
    ids, mask = random_batch(model.config, (12, 7, 3, 9))
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask)
        model.compile(backend="aot_eager")
        with token_rows(model.base_model.layers[0].mlp) as rows:
            compiled = model(input_ids=ids, attention_mask=mask)
    assert rows == [(1, 31)]
    for key, value in expected.items():
        torch.testing.assert_close(compiled[key], value, msg=key)


def test_the_one_graph_break_is_the_layout_read_outside_the_layers():
    model = masked_lm()
    explained = torch._dynamo.explain(model)(**batches(model.config, (10, 7, 3))["right-padded"])
    assert explained.graph_break_count == 1, [reason.reason for reason in explained.break_reasons]
    (reason,) = explained.break_reasons
    assert "read_and_lay_out" in reason.reason
    assert reason.user_stack[-1].name == "read_layouts"
    assert explained.graph_count == 2  # the checks' reductions, then embeddings, every layer, head and loss


def compile_counter():
    """A backend that counts the graphs it is given (one per compilation of a graph) and runs them as they are."""
    counts = collections.Counter()

    def backend(graph_module, example_inputs):
        counts["compilations"] += 1
        return graph_module.forward

    return backend, counts


def test_batches_of_other_lengths_recompile_at_most_once():
    """Over 20 padded batches of different lengths (each with enough padding to be unpadded), each graph is compiled
    at most twice: for the first batch, and once more with its sizes dynamic (dynamo's automatic dynamic shapes).
    A batch without padding, which is not unpadded, adds at most one compilation per graph."""
    model = masked_lm(max_position_embeddings=128)
    backend, counts = compile_counter()
    compiled = torch.compile(model, backend=backend)
    after = []
    for step in range(20):
        generator = torch.Generator().manual_seed(step)
        longest = 20 + 3 * step
        lengths = (longest, *torch.randint(4, longest // 2, (3,), generator=generator).tolist())
        batch = batches(model.config, lengths)["right-padded"]
        loss = compiled(**batch).loss
        after.append(counts["compilations"])
    torch.testing.assert_close(loss, model(**batch).loss)
    first = after[0]
    assert first == 2
    assert after[-1] <= 2 * first and after[-1] == after[1], after
    batch = batches(model.config, (30, 30, 30))["right-padded"]  # no padding: the padded path
    torch.testing.assert_close(compiled(**batch).loss, model(**batch).loss)
    assert counts["compilations"] <= after[-1] + first


def test_fullgraph_compiles_with_unpadding_and_the_sparse_head_off():
    """`fullgraph=True` allows no graph break: with `unpadding=False` and `sparse_prediction=False` nothing is read
    on the host, and the whole forward and loss are one graph."""
    model = masked_lm(unpadding=False, sparse_prediction=False)
    batch = batches(model.config, (10, 7, 3))["right-padded"]
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(**batch).loss, model(**batch).loss)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(**batch).logits, model(**batch).logits)


def test_compiled_encoder_decoder_training_step_equals_eager():
    """Padded sources and targets as `DataCollatorForSeq2Seq` gives them (labels padded with -100): unpadded and
    with the sparse LM head (`sparse_prediction=True`), compiled as eagerly."""
    torch.manual_seed(0)
    config = seq2seq_config(num_decoder_layers=2, initializer_range=0.02, sparse_prediction=True)
    model = Seq2SeqForConditionalGeneration(config).train()
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 40, (3, 12), generator=generator)
    mask = (torch.arange(12) < torch.tensor([12, 5, 3])[:, None]).long()
    labels = torch.randint(4, 40, (3, 10), generator=generator)
    labels = labels.masked_fill(torch.arange(10) >= torch.tensor([10, 6, 4])[:, None], -100)
    compiled = torch.compile(model, backend="aot_eager")
    results = []
    for run in (model, compiled):
        model.zero_grad()
        with token_rows(model.model.encoder.layers[0].mlp) as rows:
            output = run(input_ids=ids * mask, attention_mask=mask, labels=labels)
        output.loss.backward()
        results.append((output, gradients(model), rows))
    (eager, eager_grads, eager_rows), (compiled_out, compiled_grads, compiled_rows) = results
    assert compiled_rows == eager_rows == [(1, 20)]
    assert compiled_out.logits.shape == eager.logits.shape == (20, 40)
    torch.testing.assert_close(compiled_out.loss, eager.loss)
    for name, grad in eager_grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, msg=name)


def test_compiled_model_refuses_bad_ids_as_the_eager_one():
    model = masked_lm()
    batch = batches(model.config, (20, 7, 3))["right-padded"]
    batch["input_ids"][0, 2] = model.config.vocab_size
    compiled = torch.compile(model, backend="aot_eager")
    with pytest.raises(ValueError, match="beyond the vocabulary"):
        compiled(**batch)
