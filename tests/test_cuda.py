"""What a GPU has to show: bf16 and fp16 training steps; padded == unpadded == packed batches for every attention
implementation the machine has (sdpa, flex attention, flash attention 2 where `flash_attn` is installed); compiled
training steps and compiled `generate` with the static cache equal to eager.

`benchmarks/gpu_check.sh` runs these on a lent GPU. They take their device from the `device` fixture: CUDA where
there is one, or the device that HF_ENCODERS_TEST_DEVICE names; the GPU check's dry run sets it to `cpu`, so that
every test body runs on a CPU too. Elsewhere they skip. On a CPU, `torch.compile` uses dynamo's `aot_eager` backend
(the same graphs and autograd, without inductor's C++ builds, minutes on 2 cores), and flex attention runs without
its backward, which a CPU lacks.
"""

import copy
import os

import pytest
import torch
from conftest import pack, random_batch, tiny_config
from test_modeling_seq2seq import seq2seq_config
from transformers import CompileConfig
from transformers.utils import is_flash_attn_2_available

from hf_encoders import EncoderForMaskedLM, Seq2SeqForConditionalGeneration

DEVICE_VARIABLE = "HF_ENCODERS_TEST_DEVICE"


def chosen_device() -> torch.device | None:
    """The device the tests run on: HF_ENCODERS_TEST_DEVICE's, else CUDA where there is one, else None."""
    if os.environ.get(DEVICE_VARIABLE):
        return torch.device(os.environ[DEVICE_VARIABLE])
    return torch.device("cuda") if torch.cuda.is_available() else None


DEVICE = chosen_device()
IMPLEMENTATIONS = ["sdpa", "flex_attention"]
if DEVICE is not None and DEVICE.type == "cuda" and is_flash_attn_2_available():
    IMPLEMENTATIONS.append("flash_attention_2")


@pytest.fixture(scope="module")
def device() -> torch.device:
    if DEVICE is None:
        pytest.skip(f"needs CUDA (or {DEVICE_VARIABLE}=cpu, as the GPU check's dry run sets, to run on a CPU)")
    return DEVICE


def compile_backend(device: torch.device) -> str:
    return "inductor" if device.type == "cuda" else "aot_eager"


def tolerance(device: torch.device, dtype: torch.dtype = torch.float32) -> dict[str, float]:
    """Between two float32 paths (kernels on a GPU sum in other orders than a CPU's), or two bf16/fp16 ones."""
    if dtype != torch.float32:
        return dict(atol=3e-2, rtol=3e-2)
    return dict(atol=1e-5, rtol=1e-4) if device.type == "cpu" else dict(atol=1e-4, rtol=1e-3)


def build(kind: str, device: torch.device, seed: int = 0, **overrides) -> torch.nn.Module:
    """A tiny masked-LM encoder with local and global layers (`encoder`) or encoder-decoder (`seq2seq`)."""
    torch.manual_seed(seed)
    if kind == "encoder":
        return EncoderForMaskedLM(tiny_config(**overrides)).to(device)
    values = {"num_decoder_layers": 2, "initializer_range": 0.02, **overrides}  # (test_modeling_seq2seq's: 3, 0.3)
    return Seq2SeqForConditionalGeneration(seq2seq_config(**values)).to(device)


def encoder_batch(config, lengths=(12, 5, 9, 1), seed: int = 0) -> dict[str, torch.Tensor]:
    ids, mask = random_batch(config, lengths=lengths, seed=seed)
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill((mask == 0) | (ids % 3 == 0), -100)}


def seq2seq_batch(config, lengths=((9, 4, 2), (5, 6, 2)), seed: int = 0) -> dict[str, torch.Tensor]:
    """Sources with an attention mask, targets as labels padded with -100 (as `DataCollatorForSeq2Seq` pads them)."""
    generator = torch.Generator().manual_seed(seed)
    sources, targets = lengths
    ids = torch.randint(4, config.vocab_size, (len(sources), max(sources)), generator=generator)
    mask = (torch.arange(max(sources)) < torch.tensor(sources)[:, None]).long()
    labels = torch.randint(4, config.vocab_size, (len(targets), max(targets)), generator=generator)
    labels = labels.masked_fill(torch.arange(max(targets)) >= torch.tensor(targets)[:, None], -100)
    return {"input_ids": ids.masked_fill(mask == 0, config.pad_token_id), "attention_mask": mask, "labels": labels}


def packed(kind: str, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The padding-free form of a padded batch: sources (and targets) each in one row with restarting positions."""
    flat, positions, _ = pack(batch["input_ids"], batch["attention_mask"])
    if kind == "encoder":
        return {
            "input_ids": flat,
            "position_ids": positions,
            "labels": batch["labels"][batch["attention_mask"] == 1][None],
        }
    labels, target_positions, _ = pack(batch["labels"], (batch["labels"] != -100).long())
    return {"input_ids": flat, "position_ids": positions, "labels": labels, "decoder_position_ids": target_positions}


def on(device: torch.device, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: value.to(device) for name, value in batch.items()}


def make_batch(kind: str, model: torch.nn.Module, seed: int = 0, **options) -> dict[str, torch.Tensor]:
    return (encoder_batch if kind == "encoder" else seq2seq_batch)(model.config, seed=seed, **options)


def gradients(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}


def assert_gradients_close(actual: dict, expected: dict, **tolerances) -> None:
    assert actual.keys() == expected.keys() and actual
    for name, grad in actual.items():
        torch.testing.assert_close(grad, expected[name], msg=name, **tolerances)


# --------------------------------------------------------------------------------------------------------------------
# Mixed precision


@pytest.mark.parametrize("kind", ["encoder", "seq2seq"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_mixed_precision_training_steps(device, kind, dtype):
    """Two AdamW steps under autocast (fp16 with a gradient scaler, as Accelerate runs it): finite losses close to
    float32's, gradients pointing where float32's point, every parameter updated."""
    model = build(kind, device, sparse_prediction=True).train()
    batch = on(device, make_batch(kind, model))
    reference_loss = model(**batch).loss
    reference_loss.backward()
    reference = torch.cat([g.flatten() for g in gradients(model).values()])
    model.zero_grad()
    before = copy.deepcopy(model.state_dict())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    for step in range(2):
        with torch.autocast(device.type, dtype=dtype):
            loss = model(**batch).loss
        assert torch.isfinite(loss), f"step {step}: loss {loss}"
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        grads = torch.cat([g.flatten() for g in gradients(model).values()])
        assert torch.isfinite(grads).all(), f"step {step}: non-finite gradients"
        if step == 0:
            torch.testing.assert_close(loss.float(), reference_loss.detach(), atol=0.0, rtol=2e-2)
            assert torch.nn.functional.cosine_similarity(grads.float(), reference, dim=0) > 0.99
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
    unchanged = [
        name for name, p in model.state_dict().items() if p.is_floating_point() and torch.equal(p, before[name])
    ]
    assert not unchanged, f"not updated: {unchanged}"


# --------------------------------------------------------------------------------------------------------------------
# Padded, unpadded and packed batches


def run_step(model: torch.nn.Module, backward: bool, forward: torch.nn.Module | None = None, **inputs) -> tuple:
    """The outputs of `forward` (the model, or it compiled) and the gradients it left on `model`'s parameters."""
    model.zero_grad(set_to_none=True)
    with torch.set_grad_enabled(backward):
        out = (model if forward is None else forward)(**inputs)
    if backward:
        out.loss.backward()
    return out, gradients(model)


@pytest.mark.parametrize("kind", ["encoder", "seq2seq"])
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_padded_unpadded_and_packed_batches_agree(device, implementation, kind):
    """The same batch unpadded inside the model (the default), run padded, and packed into one row: the same logits
    on real tokens, loss and gradients (flash attention in bf16, which it needs)."""
    dtype = torch.bfloat16 if implementation == "flash_attention_2" else torch.float32
    model = build(kind, device, attn_implementation=implementation, sparse_prediction=False).to(dtype).train()
    batch = on(device, make_batch(kind, model))
    backward = not (implementation == "flex_attention" and device.type == "cpu")
    real = (batch["attention_mask"] if kind == "encoder" else batch["labels"] != -100).bool()
    skip = {"skip_logits": False} if kind == "encoder" else {}  # (in training its loss skips the logits by default)
    unpadded, unpadded_grads = run_step(model, backward, **batch, **skip)
    model.config.unpadding = False
    padded, padded_grads = run_step(model, backward, **batch, **skip)
    flat, flat_grads = run_step(model, backward, **on(device, packed(kind, make_batch(kind, model))), **skip)
    close = tolerance(device, dtype)
    for logits, other, other_grads in (
        (padded.logits[real], padded, padded_grads),
        (flat.logits[0], flat, flat_grads),
    ):
        torch.testing.assert_close(unpadded.logits[real], logits, **close)
        torch.testing.assert_close(unpadded.loss, other.loss, **close)
        if backward:
            assert_gradients_close(unpadded_grads, other_grads, **close)


# --------------------------------------------------------------------------------------------------------------------
# torch.compile


COMPILED_CASES = [("encoder", "padded"), ("encoder", "packed"), ("seq2seq", "padded"), ("seq2seq", "packed")]


@pytest.fixture
def fresh_compiler():
    """Dynamo's caches emptied: the forward code that the earlier tests compiled counts no recompilations here."""
    torch.compiler.reset()
    yield
    torch.compiler.reset()


@pytest.mark.parametrize("kind, layout", COMPILED_CASES)
def test_compiled_training_steps_equal_eager(device, fresh_compiler, kind, layout):
    """`torch.compile(model)` as a user compiles it: two SGD steps on batches of different lengths (the second
    compiles again, with dynamic shapes) give the logits, losses, gradients and parameters of eager steps."""
    model = build(kind, device, attn_implementation="sdpa", sparse_prediction=True).train()
    eager_model, compiled_model = model, copy.deepcopy(model)
    compiled = torch.compile(compiled_model, backend=compile_backend(device))
    close = tolerance(device)
    runs = [(eager_model, eager_model), (compiled_model, compiled)]  # (the module trained, what runs it)
    optimizers = [torch.optim.SGD(trained.parameters(), lr=0.1) for trained, _ in runs]
    shapes = (
        [(12, 5, 9, 1), (10, 7, 3)] if kind == "encoder" else [((9, 4, 2), (5, 6, 2)), ((11, 3, 6, 4), (4, 7, 3, 3))]
    )
    for step, lengths in enumerate(shapes):
        batch = make_batch(kind, model, seed=step, lengths=lengths)
        batch = on(device, batch if layout == "padded" else packed(kind, batch))
        outputs, grads = [], []
        for (trained, forward), optimizer in zip(runs, optimizers, strict=True):
            out, step_grads = run_step(trained, True, forward, **batch)
            outputs.append(out)
            grads.append(step_grads)
            optimizer.step()
        eager, compiled_out = outputs
        if kind == "encoder":  # the loss without the logits: the custom op `linear_cross_entropy` calls
            assert compiled_out.logits is None and eager.logits is None
        else:
            torch.testing.assert_close(compiled_out.logits, eager.logits, **close, msg=f"step {step}: logits")
        torch.testing.assert_close(compiled_out.loss, eager.loss, **close, msg=f"step {step}: loss")
        assert_gradients_close(grads[1], grads[0], **close)
    for (name, eager), compiled_parameter in zip(
        eager_model.named_parameters(), compiled_model.parameters(), strict=True
    ):
        torch.testing.assert_close(compiled_parameter, eager, **close, msg=name)


def test_compiled_generate_with_the_static_cache_equals_eager(device, fresh_compiler):
    """`generate` with `cache_implementation="static"` compiles its decoding step (on CUDA by default, as users get
    it; on a CPU when asked) and writes the tokens eager decoding writes; a second batch of the same shape reuses the
    compiled step."""
    model = build("seq2seq", device, initializer_range=0.3, num_decoder_layers=3).eval()  # outputs that vary
    compiling = {}  # on CUDA, what users get: generate's default CompileConfig
    if device.type != "cuda":
        compiling["compile_config"] = CompileConfig(backend=compile_backend(device))
        compiling["compile_config"]._compile_all_devices = True  # (else generate compiles on CUDA and a few others)
    graphs = [torch._dynamo.utils.counters["stats"]["unique_graphs"]]
    for seed in (0, 1):
        batch = on(device, seq2seq_batch(model.config, seed=seed))
        ids, mask = batch["input_ids"], batch["attention_mask"]
        eager = model.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False)
        compiled = model.generate(
            ids,
            attention_mask=mask,
            max_new_tokens=10,
            do_sample=False,
            cache_implementation="static",
            **compiling,
        )
        graphs.append(torch._dynamo.utils.counters["stats"]["unique_graphs"])
        assert torch.equal(compiled, eager), f"batch {seed}"
        assert len(set(eager[:, 1:].flatten().tolist())) > 3, "a degenerate output makes this test weak"
    assert hasattr(model, "_compiled_call") and graphs[1] > graphs[0], "generate compiled nothing"
    assert graphs[2] == graphs[1], "the second batch of the same shape compiled again"
