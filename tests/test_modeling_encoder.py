"""Behaviour of the encoder family that users rely on, in the spirit of transformers' common model tests."""

import pytest
import torch
from conftest import HostSyncs, pack, random_batch, tiny_config, token_rows, unpad

from hf_encoders import (
    EncoderConfig,
    EncoderForMaskedLM,
    EncoderForSequenceClassification,
    EncoderForTokenClassification,
    EncoderModel,
)
from hf_encoders.modeling_encoder import EncoderAttention

ALL_MODEL_CLASSES = [EncoderModel, EncoderForMaskedLM, EncoderForSequenceClassification, EncoderForTokenClassification]
ARCHITECTURES = {
    "modernbert-like": {},
    "bert-like": dict(
        position_embedding_type="absolute",
        hidden_activation="gelu",
        norm_type="layernorm",
        norm_bias=True,
        attention_bias=True,
        mlp_bias=True,
        local_attention=None,
        global_attn_every_n_layers=None,
    ),
    "llama-like": dict(norm_type="rmsnorm", hidden_activation="swiglu", classifier_pooling="mean"),
}


def build(model_class, seed=0, **overrides):
    torch.manual_seed(seed)
    return model_class(tiny_config(**overrides)).eval()


def main_output(model, output):
    return output.last_hidden_state if isinstance(model, EncoderModel) else output.logits


# --------------------------------------------------------------------------------------------------------------------
# Configuration


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(hidden_size=30), "`hidden_size` (30) must be divisible by `num_attention_heads` (4)"),
        (dict(hidden_activation="relu"), "'gelu', 'geglu', 'swiglu'"),
        (dict(norm_type="batchnorm"), "'layernorm', 'rmsnorm'"),
        (dict(position_embedding_type="alibi"), "'rope', 'absolute'"),
        (dict(classifier_pooling="max"), "'cls', 'mean'"),
        (dict(attn_implementation="fast"), "`attn_implementation`='fast'"),
        (dict(local_attention=None), "but `local_attention` (the local layers' window) is not set"),
        (dict(local_attention=5), "even window width"),
        (dict(global_attn_every_n_layers=0), "`global_attn_every_n_layers` must be a positive integer"),
        (dict(hidden_dropout=1.5), "`hidden_dropout`"),
        (dict(num_hidden_layers=0), "`num_hidden_layers` must be a positive integer"),
    ],
)
def test_config_rejects_inconsistent_values(overrides, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        tiny_config(**overrides)


def test_config_layer_types_alternate_and_round_trip(tmp_path):
    config = tiny_config(num_hidden_layers=5, local_attention=8, global_attn_every_n_layers=3)
    assert config.layer_types == [
        "full_attention",
        "sliding_attention",
        "sliding_attention",
        "full_attention",
        "sliding_attention",
    ]
    assert config.sliding_window == 4
    assert EncoderConfig(num_hidden_layers=2).layer_types == ["full_attention"] * 2
    config.save_pretrained(tmp_path)
    loaded = EncoderConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()


def test_local_attention_alone_makes_every_layer_local(tmp_path):
    config = tiny_config(local_attention=4, global_attn_every_n_layers=None)
    assert config.layer_types == ["sliding_attention"] * 3 and config.sliding_window == 2
    config.save_pretrained(tmp_path)
    assert EncoderConfig.from_pretrained(tmp_path).layer_types == ["sliding_attention"] * 3


@pytest.mark.parametrize(
    "pattern, layer_types",
    [
        ("local/global", ["full_attention", "sliding_attention", "full_attention"]),
        ("all global", ["sliding_attention"] * 3),  # none was local: every layer becomes local
    ],
)
def test_sliding_window_is_settable_on_any_config(pattern, layer_types, tmp_path):
    """transformers' common tests set `config.sliding_window = 2` on every config that has the attribute (ModernBERT's
    convention: it sets `local_attention` to twice the value); the global layers stay global."""
    every = 2 if pattern == "local/global" else None
    config = tiny_config(local_attention=8 if every else None, global_attn_every_n_layers=every)
    config.sliding_window = 2
    assert config.local_attention == 4 and config.sliding_window == 2 and config.layer_types == layer_types
    config.save_pretrained(tmp_path)
    loaded = EncoderConfig.from_pretrained(tmp_path)
    assert loaded.layer_types == layer_types and loaded.sliding_window == 2
    model = EncoderModel(config)
    flash_windows = [3 if kind == "sliding_attention" else None for kind in layer_types]  # inclusive on both sides
    assert [layer.attn.sliding_window for layer in model.layers] == flash_windows
    config.sliding_window = None
    assert config.local_attention is None and set(config.layer_types) == {"full_attention"}
    assert [layer.attn.sliding_window for layer in model.layers] == [None] * 3
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match="`sliding_window` is the number of tokens"):
            config.sliding_window = bad


@pytest.mark.parametrize("implementation", ["eager", "sdpa", "flex_attention"])
def test_sliding_window_set_on_a_global_config_means_the_same_in_every_implementation(implementation):
    """`config.sliding_window = 1` on a config without local layers: every layer sees one token on either side, so
    after 3 layers token 0 sees tokens 0-3 and not token 4. Set on the built model, with eager, sdpa or flex
    attention on a batch unpadded inside the model, it equals eager attention on the padded batch of a model built
    with that window (the local layers' own RoPE base included)."""
    model = build(EncoderModel, local_attention=None, global_attn_every_n_layers=None, local_rope_theta=1000.0)
    model.set_attn_implementation(implementation)
    model.config.sliding_window = 1
    local = dict(local_attention=2, global_attn_every_n_layers=None, local_rope_theta=1000.0, unpadding=False)
    reference = EncoderModel(tiny_config(**local, attn_implementation="eager")).eval()
    reference.load_state_dict(model.state_dict())
    ids, mask = random_batch(model.config, lengths=(12, 12, 3, 2))  # padding enough to be unpadded inside the model
    ids[1] = ids[0]
    ids[1, 4] = 7 if ids[0, 4] != 7 else 8  # row 1: row 0 with token 4 changed
    with torch.no_grad():
        expected = reference(ids, mask).last_hidden_state * mask[..., None]
        actual = model(ids, mask).last_hidden_state * mask[..., None]
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(actual[1, 0], actual[0, 0])  # token 4 is beyond token 0's receptive field
    assert not torch.allclose(actual[1, 1:5], actual[0, 1:5])


# --------------------------------------------------------------------------------------------------------------------
# Save / load, tying


@pytest.mark.parametrize("model_class", ALL_MODEL_CLASSES)
def test_same_outputs_after_save_and_load(model_class, tmp_path):
    model = build(model_class, num_labels=3)
    ids, mask = random_batch(model.config)
    model.save_pretrained(tmp_path)
    loaded, info = model_class.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info.values()), info
    with torch.no_grad():
        torch.testing.assert_close(main_output(model, model(ids, mask)), main_output(loaded, loaded(ids, mask)))
    assert (tmp_path / "model.safetensors").exists()


def test_base_model_loads_from_head_checkpoint_and_back(tmp_path):
    mlm = build(EncoderForMaskedLM)
    ids, mask = random_batch(mlm.config)
    mlm.save_pretrained(tmp_path)
    base = EncoderModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(base(ids, mask).last_hidden_state, mlm.model(ids, mask).last_hidden_state)


def test_tied_weights_stay_tied_after_load_and_resize(tmp_path):
    model = build(EncoderForMaskedLM)
    embeddings = model.get_input_embeddings()
    assert model.decoder.weight is embeddings.weight
    model.save_pretrained(tmp_path)
    loaded = EncoderForMaskedLM.from_pretrained(tmp_path)
    assert loaded.decoder.weight is loaded.model.embeddings.tok_embeddings.weight

    loaded.resize_token_embeddings(120)
    assert loaded.config.vocab_size == 120
    assert loaded.decoder.weight is loaded.model.embeddings.tok_embeddings.weight
    assert loaded.decoder.weight.shape == (120, 32) and loaded.decoder.bias.shape == (120,)
    ids = torch.tensor([[1, 110, 119, 2]])  # ids only the grown vocabulary has
    assert loaded(ids).logits.shape == (1, 4, 120)


def test_untied_decoder_when_asked():
    model = build(EncoderForMaskedLM, tie_word_embeddings=False)
    assert model.decoder.weight is not model.get_input_embeddings().weight


# --------------------------------------------------------------------------------------------------------------------
# Attention implementations, padding, packing


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_sdpa_agrees_with_eager(architecture):
    """On an unevenly padded batch; flex_attention, which compiles its kernels on first use (tens of seconds on a
    CPU), is checked against eager by test_packed_equals_padded."""
    model = build(EncoderModel, **ARCHITECTURES[architecture])
    ids, mask = random_batch(model.config)
    with torch.no_grad():
        model.set_attn_implementation("eager")
        expected = model(ids, mask).last_hidden_state
        model.set_attn_implementation("sdpa")
        actual = model(ids, mask).last_hidden_state
    torch.testing.assert_close(actual * mask[..., None], expected * mask[..., None], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_padding_invariance(architecture, implementation):
    """A sequence gives the same hidden states alone and inside a padded batch."""
    model = build(EncoderModel, attn_implementation=implementation, **ARCHITECTURES[architecture])
    ids, mask = random_batch(model.config, lengths=(12, 5, 9))
    with torch.no_grad():
        batched = model(ids, mask)
        for row, length in enumerate((12, 5, 9)):
            alone = model(ids[row : row + 1, :length])
            torch.testing.assert_close(batched.last_hidden_state[row, :length], alone.last_hidden_state[0])
            torch.testing.assert_close(batched.pooler_output[row], alone.pooler_output[0])


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("implementation", ["eager", "sdpa", "flex_attention"])
def test_packed_equals_padded(architecture, implementation):
    """Padded, packed with position ids and packed with cumulative lengths, each against eager attention on the
    padded batch."""
    model = build(EncoderForMaskedLM, attn_implementation="eager", **ARCHITECTURES[architecture])
    ids, mask = random_batch(model.config, lengths=(12, 5, 9, 1))
    flat, positions, lengths = pack(ids, mask)
    cu_seq_lens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    with torch.no_grad():
        expected, expected_pooled = unpad(model(ids, mask).logits, lengths), model.model(ids, mask).pooler_output
        model.set_attn_implementation(implementation)
        torch.testing.assert_close(unpad(model(ids, mask).logits, lengths), expected, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(model(flat, position_ids=positions).logits, expected, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(model(flat, cu_seq_lens_q=cu_seq_lens).logits, expected, atol=1e-5, rtol=1e-4)
        pooled = model.model(flat, position_ids=positions).pooler_output
        torch.testing.assert_close(pooled, expected_pooled, atol=1e-5, rtol=1e-4)


def test_packed_sequences_do_not_see_each_other():
    model = build(EncoderModel)
    ids, mask = random_batch(model.config, lengths=(6, 6))
    flat, positions, _ = pack(ids, mask)
    changed = flat.clone()
    changed[0, 6:] = (changed[0, 6:] + 1) % model.config.vocab_size  # alter only the second sequence
    with torch.no_grad():
        first = model(flat, position_ids=positions).last_hidden_state[0, :6]
        first_after = model(changed, position_ids=positions).last_hidden_state[0, :6]
    torch.testing.assert_close(first, first_after)


def test_packed_gradients_equal_padded_gradients():
    model = build(EncoderForMaskedLM, sparse_prediction=True)
    model.train()
    ids, mask = random_batch(model.config, lengths=(8, 5, 7))
    labels = ids.masked_fill(torch.rand(ids.shape, generator=torch.Generator().manual_seed(1)) > 0.4, -100)
    labels = labels.masked_fill(mask == 0, -100)
    model(ids, mask, labels=labels).loss.backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    flat, positions, lengths = pack(ids, mask)
    model(flat, position_ids=positions, labels=unpad(labels, lengths)).loss.backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], atol=1e-6, rtol=1e-4, msg=name)


# --------------------------------------------------------------------------------------------------------------------
# Padded batches unpadded inside the model


def left_padded(ids: torch.Tensor, mask: torch.Tensor, pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The same sequences, padded on the left."""
    ids, mask = ids.clone(), mask.clone()
    for row, length in enumerate(mask.sum(1).tolist()):
        ids[row] = torch.cat([ids[row, length:].fill_(pad_token_id), ids[row, :length]])
        mask[row] = torch.cat([mask[row, length:].zero_(), mask[row, :length]])
    return ids, mask


UNPADDING_CASES = [
    *((implementation, architecture) for implementation in ("eager", "sdpa") for architecture in ARCHITECTURES),
    ("flex_attention", "modernbert-like"),
]


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("implementation, architecture", UNPADDING_CASES)
def test_unpadded_batch_equals_the_padded_batch_and_the_packed_one(implementation, architecture, side):
    """Logits, loss, gradients and pooled embeddings of a padded batch run on its real tokens only (the default)
    equal those of the same batch run padded, and the padding-free row's."""
    model = build(
        EncoderForMaskedLM, attn_implementation=implementation, sparse_prediction=False, **ARCHITECTURES[architecture]
    ).train()  # no dropout in the tiny config: train mode for the gradients
    ids, mask = random_batch(model.config, lengths=(12, 5, 9, 1))
    flat, positions, lengths = pack(ids, mask)
    position_ids = None
    if side == "left":  # positions counted from each sequence's first real token, as a careful user gives them
        ids, mask = left_padded(ids, mask, model.config.pad_token_id)
        position_ids = (mask.cumsum(1) - 1).clamp(min=0)
    labels = ids.masked_fill((mask == 0) | (ids % 3 == 0), -100)
    real = mask.bool()

    backward = implementation != "flex_attention"  # (flex attention has no backward on a CPU)

    def run(**inputs):
        model.zero_grad()
        with torch.set_grad_enabled(backward), token_rows(model.model.layers[0].mlp) as rows:
            out = model(**inputs, skip_logits=False)
        if backward:
            out.loss.backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters() if backward}
        return out, grads, rows

    unpadded, unpadded_grads, rows = run(input_ids=ids, attention_mask=mask, position_ids=position_ids, labels=labels)
    assert rows == [(1, int(real.sum()))]  # every token-wise block saw the real tokens only
    model.config.unpadding = False
    padded, padded_grads, rows = run(input_ids=ids, attention_mask=mask, position_ids=position_ids, labels=labels)
    assert rows == [tuple(ids.shape)]
    packed, packed_grads, _ = run(input_ids=flat, position_ids=positions, labels=labels[real][None])
    tolerance = dict(atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(unpadded.logits[real], padded.logits[real], **tolerance)
    torch.testing.assert_close(unpadded.logits[real], packed.logits[0], **tolerance)
    torch.testing.assert_close(unpadded.loss, padded.loss, **tolerance)
    torch.testing.assert_close(unpadded.loss, packed.loss, **tolerance)
    for name, grad in unpadded_grads.items():
        torch.testing.assert_close(grad, padded_grads[name], atol=1e-6, rtol=1e-4, msg=name)
        torch.testing.assert_close(grad, packed_grads[name], atol=1e-6, rtol=1e-4, msg=name)
    with torch.no_grad():
        model.eval()
        for pooling in ("cls", "mean"):
            model.config.classifier_pooling = pooling
            model.config.unpadding = True
            pooled = model.model(ids, mask, position_ids).pooler_output
            model.config.unpadding = False
            torch.testing.assert_close(pooled, model.model(ids, mask, position_ids).pooler_output, **tolerance)
            torch.testing.assert_close(pooled, model.model(flat, position_ids=positions).pooler_output, **tolerance)


@pytest.mark.parametrize("architecture", ["modernbert-like", "bert-like"])
def test_sdpa_on_each_sequence_equals_the_grid(architecture, monkeypatch):
    """On the CPU, the global layers of a padding-free batch whose sequences are long enough on average run SDPA on
    each sequence alone (local layers keep the re-padded grid): logits, loss, gradients and pooled embeddings equal
    those of the grid, from a padded batch and from padding-free rows. Short sequences keep the grid."""
    overrides = dict(attn_implementation="sdpa", sparse_prediction=False, **ARCHITECTURES[architecture])
    model = build(EncoderForMaskedLM, **overrides)
    global_layers = {i for i, layer in enumerate(model.model.layers) if layer.attention_type == "full_attention"}
    each_sequence, taken = EncoderAttention.attends_each_sequence, set()

    def decide(grid: bool):
        def attends_each_sequence(self, packed) -> bool:
            if each_sequence(self, packed):
                taken.add(self.layer_idx)
                return not grid
            return False

        return attends_each_sequence

    def run(grid: bool, **inputs):
        model.zero_grad()
        taken.clear()
        monkeypatch.setattr(EncoderAttention, "attends_each_sequence", decide(grid))
        out = model.train()(**inputs, skip_logits=False)
        out.loss.backward()
        pooled = model.eval().model(**{k: v for k, v in inputs.items() if k != "labels"}).pooler_output
        return out, {name: p.grad.clone() for name, p in model.named_parameters()}, pooled

    ids, mask = random_batch(model.config, lengths=(60, 33, 47, 40))
    flat, positions, lengths = pack(ids, mask)
    labels = ids.masked_fill((mask == 0) | (ids % 3 == 0), -100)
    padded = dict(input_ids=ids, attention_mask=mask, labels=labels)
    for inputs in (padded, dict(input_ids=flat, position_ids=positions, labels=unpad(labels, lengths))):
        each, each_grads, each_pooled = run(grid=False, **inputs)
        assert taken == global_layers
        grid, grid_grads, grid_pooled = run(grid=True, **inputs)
        torch.testing.assert_close(each.logits, grid.logits, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(each.loss, grid.loss, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(each_pooled, grid_pooled, atol=1e-5, rtol=1e-4)
        for name, grad in each_grads.items():
            torch.testing.assert_close(grad, grid_grads[name], atol=1e-6, rtol=1e-4, msg=name)
    ids, mask = random_batch(model.config, lengths=(12, 5, 9, 1))  # 27 tokens in 4 sequences: the grid
    run(grid=False, input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100))
    assert not taken


@pytest.mark.parametrize(
    "case, lengths",
    [
        ("no padding", (8, 8, 8)),
        ("one sequence", (8,)),
        ("little padding", (40,) * 9 + (21,)),  # 19 tokens in 400: under UNPAD_MIN_PADDING
        ("a tiny batch", (12, 8)),  # 4 padding tokens: under UNPAD_MIN_PADDING_TOKENS
        ("hidden states recorded", (20, 5, 3)),  # they keep the batch's shape
        ("one padded sequence", (20, 40)),  # unpadded: the check that the counting works
    ],
)
def test_unpadding_is_skipped_where_it_cannot_pay(case, lengths):
    model = build(EncoderModel, attn_implementation="eager")
    ids, mask = random_batch(model.config, lengths=lengths)
    if case == "one padded sequence":
        ids, mask = ids[:1], mask[:1]
    recording = case == "hidden states recorded"
    with torch.no_grad(), token_rows(model.layers[0].mlp) as rows:
        out = model(ids, mask, output_hidden_states=recording, output_attentions=recording)
    unpadded = case == "one padded sequence"
    assert rows == [(1, int(mask.sum())) if unpadded else tuple(ids.shape)]
    if unpadded:  # the batch's shape back, zeros on padding
        assert out.last_hidden_state.shape == (*ids.shape, model.config.hidden_size)
        assert out.last_hidden_state[mask == 0].abs().max() == 0
    if recording:
        assert all(h.shape == (*ids.shape, model.config.hidden_size) for h in out.hidden_states)
    model.config.unpadding = not unpadded
    with torch.no_grad():
        other = model(ids, mask)
    real = mask.bool()
    torch.testing.assert_close(out.last_hidden_state[real], other.last_hidden_state[real], atol=1e-5, rtol=1e-4)


def test_unpadding_takes_less_padding_in_training_than_in_inference():
    """At 7% padding a forward that records gradients (training) unpads, one without (inference) does not: the
    gathers and scatters weigh more against a forward alone."""
    model = build(EncoderModel)
    ids, mask = random_batch(model.config, lengths=(40,) * 9 + (12,))
    with token_rows(model.layers[0].mlp) as rows:
        model(ids, mask)
        with torch.no_grad():
            model(ids, mask)
    assert rows == [(1, int(mask.sum())), tuple(ids.shape)]


@pytest.mark.parametrize(
    "head, inputs",
    [
        (EncoderForMaskedLM, "padded, labels"),
        (EncoderForMaskedLM, "padding-free, position_ids, labels"),
        (EncoderForMaskedLM, "padding-free, cu_seq_lens_q"),
        (EncoderForMaskedLM, "no mask"),
        (EncoderForSequenceClassification, "padded, labels"),
        (EncoderForTokenClassification, "padded, labels"),
        (EncoderModel, "padded"),
    ],
)
def test_one_forward_reads_the_device_once(head, inputs):
    """Every check of the inputs and the layout's bookkeeping (ids and labels in range, token counts, packed offsets)
    are read in one device-to-host copy, where a GPU would wait once."""
    model = build(head, num_labels=3)
    ids, mask = random_batch(model.config, lengths=(10, 7, 3))
    flat, positions, lengths = pack(ids, mask)
    labels = {
        EncoderForMaskedLM: ids.masked_fill((mask == 0) | (ids % 2 == 0), -100),
        EncoderForSequenceClassification: torch.tensor([0, 2, 1]),
        EncoderForTokenClassification: (ids % 3).masked_fill(mask == 0, -100),
    }.get(head)
    batches = {
        "padded, labels": lambda: dict(input_ids=ids, attention_mask=mask, labels=labels),
        "padding-free, position_ids, labels": lambda: dict(
            input_ids=flat, position_ids=positions, labels=unpad(labels, lengths)
        ),
        "padding-free, cu_seq_lens_q": lambda: dict(input_ids=flat, cu_seq_lens_q=torch.tensor([0, 10, 17, 20])),
        "no mask": lambda: dict(input_ids=ids),
        "padded": lambda: dict(input_ids=ids, attention_mask=mask),
    }
    batch = batches[inputs]()
    with torch.no_grad(), HostSyncs() as syncs:
        model(**batch)
    assert syncs.ops == ["Tensor.tolist"]


def test_local_attention_limits_the_receptive_field():
    """With one local layer of window 4 (2 tokens per side), token 0 cannot see token 5."""
    model = build(EncoderModel, num_hidden_layers=2, local_attention=4, global_attn_every_n_layers=2)
    model.layers = model.layers[1:]  # keep only the sliding-window layer
    assert model.layers[0].attention_type == "sliding_attention"
    ids = torch.randint(5, 99, (1, 8), generator=torch.Generator().manual_seed(0))
    changed = ids.clone()
    changed[0, 5] = 7 if ids[0, 5] != 7 else 8
    with torch.no_grad():
        before, after = model(ids).last_hidden_state, model(changed).last_hidden_state
    torch.testing.assert_close(before[0, :3], after[0, :3])
    assert not torch.allclose(before[0, 3:], after[0, 3:])


def test_inputs_embeds_path_equals_input_ids_path():
    model = build(EncoderModel)
    ids, mask = random_batch(model.config)
    with torch.no_grad():
        by_ids = model(ids, mask).last_hidden_state
        by_embeds = model(inputs_embeds=model.get_input_embeddings()(ids), attention_mask=mask).last_hidden_state
    torch.testing.assert_close(by_ids, by_embeds)


# --------------------------------------------------------------------------------------------------------------------
# Training features


def test_gradient_checkpointing_gives_the_same_gradients():
    """On a batch unpadded inside the model: the layers recompute from the padding-free row."""
    model = build(EncoderForMaskedLM)
    model.train()
    ids, mask = random_batch(model.config, lengths=(30, 10, 5))
    labels = ids.masked_fill(mask == 0, -100)
    model(ids, mask, labels=labels).loss.backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    model.gradient_checkpointing_enable()
    assert all(layer.gradient_checkpointing for layer in model.model.layers)
    with token_rows(model.model.layers[0].mlp) as rows:
        model(ids, mask, labels=labels).loss.backward()
    assert rows[0] == (1, 45)  # (and again when the backward recomputes the layer)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], msg=name)


def test_every_parameter_gets_a_gradient():
    model = build(EncoderForMaskedLM, tie_word_embeddings=False)
    model.train()
    ids, mask = random_batch(model.config)
    model(ids, mask, labels=ids.masked_fill(mask == 0, -100)).loss.backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_bf16_autocast_on_cpu_stays_close_to_fp32():
    model = build(EncoderForMaskedLM)
    ids, mask = random_batch(model.config)
    labels = ids.masked_fill(mask == 0, -100)
    with torch.no_grad():
        reference = model(ids, mask, labels=labels)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model(ids, mask, labels=labels)
    assert mixed.logits.dtype == torch.bfloat16
    assert torch.isfinite(mixed.loss)
    assert abs(mixed.loss.item() - reference.loss.item()) < 0.02 * reference.loss.item()
    torch.testing.assert_close(mixed.logits.float(), reference.logits, atol=0.05, rtol=0.05)


def test_sparse_prediction_loss_equals_dense_loss():
    """Training mode: the sparse head's rows are the dense logits of the labelled positions, with the same loss."""
    dense = build(EncoderForMaskedLM, sparse_prediction=False).train()  # (no dropout in the tiny config)
    sparse = build(EncoderForMaskedLM, sparse_prediction=True).train()
    ids, mask = random_batch(dense.config)
    labels = torch.full_like(ids, -100)
    labels[0, 2], labels[1, 0], labels[2, 1] = 11, 12, 13
    with torch.no_grad():
        dense_out = dense(ids, mask, labels=labels, skip_logits=False)
        sparse_out = sparse(ids, mask, labels=labels, skip_logits=False)
    torch.testing.assert_close(sparse_out.loss, dense_out.loss)
    assert sparse_out.logits.shape == (3, dense.config.vocab_size)
    torch.testing.assert_close(sparse_out.logits, dense_out.logits[labels != -100])
    # without labels the sparse model still returns a logit for every position (fill-mask needs them)
    assert sparse(ids, mask).logits.shape == (*ids.shape, dense.config.vocab_size)


def test_sparse_prediction_gives_full_logits_and_the_same_loss_in_eval_mode():
    """Evaluation (`model.eval()`, as `Trainer.evaluate` runs it) gets (batch, sequence, vocab) logits with labels,
    which transformers' metrics index with `labels != -100`; the loss is the training mode's."""
    model = build(EncoderForMaskedLM, sparse_prediction=True)
    ids, mask = random_batch(model.config)
    labels = ids.masked_fill((mask == 0) | (ids % 3 == 0), -100)
    with torch.no_grad():
        evaluated = model.eval()(ids, mask, labels=labels)
        trained = model.train()(ids, mask, labels=labels, skip_logits=False)
        without_labels = model.eval()(ids, mask)
    assert evaluated.logits.shape == (*ids.shape, model.config.vocab_size)
    torch.testing.assert_close(evaluated.logits, without_labels.logits)
    torch.testing.assert_close(evaluated.logits[labels != -100], trained.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(evaluated.loss, trained.loss, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(
    "sparse_prediction, training",
    [(True, True), (True, False), (False, True), (False, False)],
    ids=["sparse (the default), training", "sparse, eval", "dense, training", "dense, eval"],
)
def test_masked_lm_loss_is_cross_entropy_over_labelled_positions(sparse_prediction, training):
    model = build(EncoderForMaskedLM, sparse_prediction=sparse_prediction).train(training)
    ids, mask = random_batch(model.config)
    labels = ids.masked_fill(mask == 0, -100)
    labels[0, 3] = -100
    with torch.no_grad():
        out = model(ids, mask, labels=labels, skip_logits=False)
    keep = labels != -100
    # sparse in training mode: one row of logits per labelled position, in order; else one per position
    if sparse_prediction and training:
        logits = out.logits
    else:
        assert out.logits.shape == (*ids.shape, model.config.vocab_size)
        logits = out.logits[keep]
    assert logits.shape == (int(keep.sum()), model.config.vocab_size)
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(logits, labels[keep]))
    assert EncoderConfig().sparse_prediction


@pytest.mark.parametrize("sparse_prediction", [True, False], ids=["sparse", "dense"])
def test_training_computes_the_loss_without_the_logits(sparse_prediction):
    """In training mode with labels the loss is `linear_cross_entropy`'s, chunk by chunk, and `logits` is None: the
    same loss and gradients as over the decoder's logits (`skip_logits=False`), with `num_items_in_batch` too."""
    model = build(EncoderForMaskedLM, sparse_prediction=sparse_prediction).train()
    ids, mask = random_batch(model.config, lengths=(12, 5, 9, 1))
    labels = ids.masked_fill((mask == 0) | (ids % 3 == 0), -100)
    outputs, grads = {}, {}
    for skip_logits, num_items in ((None, None), (False, None), (None, 7), (False, 7)):
        model.zero_grad()
        out = model(ids, mask, labels=labels, skip_logits=skip_logits, num_items_in_batch=num_items)
        out.loss.backward()
        outputs[skip_logits, num_items] = out
        grads[skip_logits, num_items] = {name: p.grad.clone() for name, p in model.named_parameters()}
    for num_items in (None, 7):
        fused, full = outputs[None, num_items], outputs[False, num_items]
        assert fused.logits is None and full.logits is not None
        torch.testing.assert_close(fused.loss, full.loss)
        for name, grad in grads[None, num_items].items():
            torch.testing.assert_close(grad, grads[False, num_items][name], atol=1e-6, rtol=1e-5, msg=name)
    assert not torch.allclose(outputs[None, None].loss, outputs[None, 7].loss)
    assert model.eval()(ids, mask, labels=labels).logits.shape == (*ids.shape, model.config.vocab_size)
    with pytest.raises(ValueError, match="skip_logits=True .* needs `labels`"):
        model(ids, mask, skip_logits=True)


# --------------------------------------------------------------------------------------------------------------------
# Outputs


def test_hidden_states_and_attentions_shapes():
    model = build(EncoderForMaskedLM, attn_implementation="eager")
    ids, mask = random_batch(model.config)
    out = model(ids, mask, output_hidden_states=True, output_attentions=True)
    config = model.config
    assert len(out.hidden_states) == config.num_hidden_layers + 1
    assert all(h.shape == (*ids.shape, config.hidden_size) for h in out.hidden_states)
    assert len(out.attentions) == config.num_hidden_layers
    assert all(a.shape == (3, config.num_attention_heads, ids.shape[1], ids.shape[1]) for a in out.attentions)
    torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones(3, 4, ids.shape[1]))
    # padding gets no attention
    assert out.attentions[0][2, :, :, 3:].abs().max() == 0
    # the sliding-window layer does not look further than 2 tokens
    assert out.attentions[1][0, :, 0, 3:].abs().max() == 0


def test_return_dict_false_gives_tuples():
    model = build(EncoderForSequenceClassification, num_labels=2)
    ids, mask = random_batch(model.config)
    loss, logits = model(ids, mask, labels=torch.tensor([0, 1, 1]), return_dict=False)[:2]
    assert loss.ndim == 0 and logits.shape == (3, 2)
    last_hidden_state, pooled = model.model(ids, mask, return_dict=False)[:2]
    assert last_hidden_state.shape == (3, 10, 32) and pooled.shape == (3, 32)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_pooler_output(pooling):
    model = build(EncoderModel, classifier_pooling=pooling)
    ids, mask = random_batch(model.config)
    with torch.no_grad():
        out = model(ids, mask)
    if pooling == "cls":
        expected = out.last_hidden_state[:, 0]
    else:
        expected = torch.stack([out.last_hidden_state[i, :n].mean(0) for i, n in enumerate((10, 7, 3))])
    torch.testing.assert_close(out.pooler_output, expected)


# --------------------------------------------------------------------------------------------------------------------
# Heads and their losses


def test_single_label_classification_loss():
    model = build(EncoderForSequenceClassification, num_labels=3)
    ids, mask = random_batch(model.config)
    labels = torch.tensor([0, 2, 1])
    out = model(ids, mask, labels=labels)
    assert model.config.problem_type == "single_label_classification"
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, labels))


def test_multi_label_classification_loss():
    model = build(EncoderForSequenceClassification, num_labels=3, problem_type="multi_label_classification")
    ids, mask = random_batch(model.config)
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    out = model(ids, mask, labels=labels)
    torch.testing.assert_close(out.loss, torch.nn.functional.binary_cross_entropy_with_logits(out.logits, labels))


def test_regression_loss():
    model = build(EncoderForSequenceClassification, num_labels=1)
    ids, mask = random_batch(model.config)
    labels = torch.tensor([0.5, -1.0, 2.0])
    out = model(ids, mask, labels=labels)
    assert model.config.problem_type == "regression"
    torch.testing.assert_close(out.loss, torch.nn.functional.mse_loss(out.logits.squeeze(-1), labels))


def test_token_classification_loss_ignores_minus_100():
    model = build(EncoderForTokenClassification, num_labels=5)
    ids, mask = random_batch(model.config)
    labels = torch.randint(0, 5, ids.shape).masked_fill(mask == 0, -100)
    out = model(ids, mask, labels=labels)
    assert out.logits.shape == (*ids.shape, 5)
    keep = labels != -100
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits[keep], labels[keep]))


def test_sequence_classification_on_a_packed_batch():
    model = build(EncoderForSequenceClassification, num_labels=2, classifier_pooling="mean")
    ids, mask = random_batch(model.config)
    flat, positions, _ = pack(ids, mask)
    labels = torch.tensor([0, 1, 1])
    with torch.no_grad():
        padded, packed = model(ids, mask, labels=labels), model(flat, position_ids=positions, labels=labels)
    torch.testing.assert_close(packed.logits, padded.logits, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(packed.loss, padded.loss, atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------------------------------------------------------------
# Bad input: clear ValueErrors, never an index error from inside torch


@pytest.mark.parametrize(
    "ids, message",
    [
        (torch.tensor([[1, 5, 99, 2]]), r"contains id 99, 1 beyond the vocabulary: vocab_size is 99"),
        (torch.tensor([[1, 5, 130, 2]]), r"contains id 130, 32 beyond the vocabulary"),
        (torch.tensor([[1, -3, 5, 2]]), r"contains negative ids \(smallest -3\)"),
    ],
)
def test_out_of_range_token_ids_are_refused(ids, message):
    model = build(EncoderForMaskedLM)
    with pytest.raises(ValueError, match=message):
        model(ids)


def test_too_long_sequences_are_refused():
    model = build(EncoderModel)
    with pytest.raises(ValueError, match=r"sequences of 70 tokens, 6 more than max_position_embeddings=64"):
        model(torch.full((1, 70), 5))
    flat = torch.full((1, 80), 5)
    positions = torch.cat([torch.arange(10), torch.arange(70)])[None]
    with pytest.raises(ValueError, match=r"sequences of 70 tokens, 6 more than"):
        model(flat, position_ids=positions)


def test_mismatched_attention_mask_is_refused():
    model = build(EncoderModel)
    with pytest.raises(ValueError, match=r"`attention_mask` has shape \(2, 7\) but `input_ids` has shape \(2, 8\)"):
        model(torch.full((2, 8), 5), attention_mask=torch.ones(2, 7))


def test_other_bad_inputs_are_refused():
    model = build(EncoderForMaskedLM)
    with pytest.raises(ValueError, match="exactly one of `input_ids` or `inputs_embeds`"):
        model()
    with pytest.raises(ValueError, match="must be 2D"):
        model(torch.full((8,), 5))
    with pytest.raises(ValueError, match="empty"):
        model(torch.zeros((1, 0), dtype=torch.long))
    with pytest.raises(ValueError, match=r"`labels` has shape \(1, 3\) but the input has shape \(1, 4\)"):
        model(torch.full((1, 4), 5), labels=torch.full((1, 3), 5))
    with pytest.raises(ValueError, match="`labels` contains id 120"):
        model(torch.full((1, 4), 5), labels=torch.tensor([[-100, 120, -100, 5]]))
    with pytest.raises(ValueError, match="cu_seq_lens_q` must rise strictly from 0 to the number of tokens"):
        model(torch.full((1, 8), 5), cu_seq_lens_q=torch.tensor([0, 3, 7]))


@pytest.mark.parametrize("model_class", ALL_MODEL_CLASSES)
def test_an_empty_batch_is_refused_by_name(model_class):
    model = build(model_class)
    with pytest.raises(ValueError, match=r"`input_ids` is an empty batch \(shape \(0, 5\)\)"):
        model(torch.zeros((0, 5), dtype=torch.long))
    with pytest.raises(ValueError, match=r"`inputs_embeds` is an empty batch \(shape \(0, 5\)\)"):
        model(inputs_embeds=torch.zeros((0, 5, model.config.hidden_size)))


@pytest.mark.parametrize(
    "model_class, labels",
    [
        (EncoderForSequenceClassification, torch.tensor([0, 5])),
        (EncoderForTokenClassification, torch.tensor([[0, 1, -100, 2], [5, 0, 1, 2]])),
    ],
)
def test_class_labels_out_of_range_are_refused_in_terms_of_num_labels(model_class, labels):
    model = build(model_class, num_labels=3)
    message = r"`labels` contains label 5, which is out of range: num_labels is 3 \(labels must be 0\.\.2, or -100 to"
    with pytest.raises(ValueError, match=message):
        model(torch.full((2, 4), 5), labels=labels)
    with pytest.raises(ValueError, match=r"contains label -3, which is out of range: num_labels is 3"):
        model(torch.full((2, 4), 5), labels=labels.masked_fill(labels == 5, -3))
    assert model(torch.full((2, 4), 5), labels=labels.masked_fill(labels == 5, -100)).loss.isfinite()


def test_unknown_keyword_arguments_are_refused_not_dropped():
    """A keyword the model does not read (a renamed argument of a newer transformers, a typo) raises; BERT-style
    tokenizers' `token_type_ids` are not read, as in ModernBERT."""
    model = build(EncoderForMaskedLM)
    ids = torch.full((1, 4), 5)
    with pytest.raises(TypeError, match=r"EncoderModel.forward\(\) got unexpected keyword arguments \['atention_"):
        model(ids, atention_mask=torch.ones(1, 4))
    with torch.no_grad():
        torch.testing.assert_close(model(ids, token_type_ids=torch.zeros_like(ids)).logits, model(ids).logits)


# --------------------------------------------------------------------------------------------------------------------
# Initialisation and loading, as transformers' common model tests check them


@pytest.mark.parametrize("model_class", ALL_MODEL_CLASSES)
def test_initialization_statistics(model_class):
    model = build(model_class, hidden_size=64, intermediate_size=128, vocab_size=512, num_labels=3)
    config = model.config
    cutoff = config.initializer_cutoff_factor * config.initializer_range
    for name, p in model.named_parameters():
        assert torch.isfinite(p).all(), name
        if "norm" in name:
            assert torch.equal(p, torch.ones_like(p)), name
        elif name.endswith("bias"):
            assert torch.equal(p, torch.zeros_like(p)), name
        else:  # every projection and embedding: a normal truncated at cutoff_factor standard deviations
            assert p.abs().max() <= cutoff + 1e-6, name
            assert abs(p.std().item() - 0.88 * config.initializer_range) < 0.1 * config.initializer_range, (
                name
            )  # std of N(0,1) cut at 2
    assert torch.equal(model.get_input_embeddings().weight[config.pad_token_id], torch.zeros(64))
    dim = config.head_dim  # the rotary frequencies, written out independently
    expected = torch.tensor([config.rope_theta ** (-2 * i / dim) for i in range(dim // 2)])
    torch.testing.assert_close(model.base_model.rotary_emb.inv_freq, expected)


def test_head_loaded_from_a_checkpoint_without_it_is_initialised(tmp_path):
    mlm = build(EncoderForMaskedLM)
    mlm.save_pretrained(tmp_path)
    classifier, info = EncoderForSequenceClassification.from_pretrained(
        tmp_path, num_labels=3, output_loading_info=True
    )
    assert set(info["missing_keys"]) == {"classifier.weight", "classifier.bias"}  # the head is shared with the MLM
    assert not info["mismatched_keys"]
    for name, p in classifier.named_parameters():
        assert torch.isfinite(p).all(), name
    assert torch.equal(classifier.classifier.bias, torch.zeros(3))
    assert 0 < classifier.classifier.weight.std() < 0.5
    torch.testing.assert_close(classifier.model.layers[1].mlp.up_proj.weight, mlm.model.layers[1].mlp.up_proj.weight)
    # RoPE tables are buffers, not weights: they must be rebuilt on load, not left empty
    torch.testing.assert_close(classifier.model.rotary_emb.inv_freq, mlm.model.rotary_emb.inv_freq)


def test_load_in_bfloat16(tmp_path):
    model = build(EncoderForMaskedLM)
    model.save_pretrained(tmp_path)
    loaded = EncoderForMaskedLM.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert loaded.dtype == torch.bfloat16
    ids, mask = random_batch(model.config)
    with torch.no_grad():
        logits = loaded(ids, mask).logits
    assert logits.dtype == torch.bfloat16
    torch.testing.assert_close(logits.float(), model(ids, mask).logits, atol=0.1, rtol=0.1)
