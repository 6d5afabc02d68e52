"""The encoder-decoder family: generation with and without cache, teacher forcing, padding, round trips, warm start."""

import json
import textwrap

import pytest
import torch
from conftest import REFUSE_HF_ENCODERS, HostSyncs, run_without_the_package, tiny_config, token_rows
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSeq2SeqLM,
    CompileConfig,
    GenerationMixin,
    PreTrainedTokenizerFast,
    pipeline,
)

from hf_encoders import (
    EncoderForMaskedLM,
    Seq2SeqConfig,
    Seq2SeqForConditionalGeneration,
    Seq2SeqModel,
    TranslationPipeline,
    seq2seq_from_encoder,
)
from hf_encoders.modeling_seq2seq import OUTPUT_CACHE_FIELD, DecoderCrossAttention, DecoderSelfAttention

SEQ2SEQ_WORDS = "<pad> <s> </s> <unk> <2de> <2en> a dog runs the cat sits ein hund rennt die katze sitzt".split()


def seq2seq_config(**overrides) -> Seq2SeqConfig:
    values = dict(
        vocab_size=40,
        hidden_size=32,
        num_hidden_layers=2,
        num_decoder_layers=3,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=48,
        initializer_range=0.3,  # large weights: random models whose greedy outputs vary from step to step
    )
    values.update(overrides)
    return Seq2SeqConfig(**values)


def build(seed=0, model_class=Seq2SeqForConditionalGeneration, **overrides):
    torch.manual_seed(seed)
    return model_class(seq2seq_config(**overrides)).eval()


def source_batch(lengths=(7, 4, 2), vocab_size=40, seed=0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab_size, (len(lengths), max(lengths)), generator=generator)
    mask = torch.zeros_like(ids)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
    return ids.masked_fill(mask == 0, 0), mask


def seq2seq_tokenizer() -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(SEQ2SEQ_WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 2)])
    backend.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        additional_special_tokens=["<2de>", "<2en>"],
        model_input_names=["input_ids", "attention_mask"],
    )


# --------------------------------------------------------------------------------------------------------------------
# Configuration


def test_config_fields_and_decoder_view():
    config = seq2seq_config(num_hidden_layers=3, num_decoder_layers=2, local_attention=4, global_attn_every_n_layers=2)
    assert config.is_encoder_decoder and config.use_cache
    assert config.layer_types == ["full_attention", "sliding_attention", "full_attention"]
    decoder = config.get_text_config(decoder=True)  # what generate() sizes its cache from
    assert decoder.num_hidden_layers == 2 and decoder.layer_types == ["full_attention"] * 2
    assert seq2seq_config(num_decoder_layers=None).num_decoder_layers == 2
    with pytest.raises(ValueError, match="`num_decoder_layers` must be a positive integer"):
        seq2seq_config(num_decoder_layers=0)
    with pytest.raises(ValueError, match="'gelu', 'geglu', 'swiglu'"):
        seq2seq_config(hidden_activation="tanh")


# --------------------------------------------------------------------------------------------------------------------
# Generation


@pytest.mark.parametrize(
    "generate_kwargs",
    [
        dict(),
        dict(num_beams=4),
        dict(num_beams=3, num_return_sequences=2, length_penalty=0.6),
        dict(num_beams=3, no_repeat_ngram_size=2),
        dict(do_sample=True, top_k=0, temperature=1.5),
    ],
    ids=["greedy", "beam4", "beam3-return2", "no-repeat-ngram", "sampling"],
)
def test_generation_is_identical_with_and_without_cache(generate_kwargs):
    """No cache, the default dynamic cache, and the preallocated static one (whose decoder masks `generate` prepares
    through `create_masks_for_generate`) write the same tokens."""
    model = build()
    ids, mask = source_batch()
    outputs = []
    for cache in (dict(use_cache=True), dict(use_cache=False), dict(cache_implementation="static")):
        torch.manual_seed(1)
        outputs.append(model.generate(ids, attention_mask=mask, max_new_tokens=12, **cache, **generate_kwargs))
    assert torch.equal(outputs[0], outputs[1]) and torch.equal(outputs[0], outputs[2])
    assert len(set(outputs[0][0, 1:].tolist())) > 1, "a degenerate output makes this test weak"


def test_static_cache_decoding_steps_compile_without_graph_breaks():
    """What `generate` compiles on a GPU with `cache_implementation="static"`: each greedy or sampling step as one graph
    (transformers runs beam search steps eagerly). Here with dynamo's eager backend and `fullgraph=True`, so that any
    graph break raises, and on CPU, where generate compiles only when asked to."""
    model = build()
    assert model._can_compile_fullgraph
    compile_config = CompileConfig(fullgraph=True, backend="eager")
    compile_config._compile_all_devices = True  # generate compiles on CUDA (and a few others) by default only
    ids, mask = source_batch()
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    compiled = model.generate(
        ids, attention_mask=mask, max_new_tokens=8, cache_implementation="static", compile_config=compile_config
    )
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > graphs, "nothing was compiled"
    assert torch.equal(compiled, model.generate(ids, attention_mask=mask, max_new_tokens=8))


@pytest.mark.parametrize("name", ["cache", "past_key_values"])
def test_step_by_step_logits_equal_teacher_forced_logits(name):
    """The cache is read under its name from transformers 5.24 on (`cache`) and under the one before."""
    model = build()
    ids, mask = source_batch()
    target = torch.randint(4, 40, (3, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = model(ids, mask, decoder_input_ids=target, use_cache=False).logits
        encoder_outputs = model.get_encoder()(ids, mask)
        cache, steps = None, []
        for t in range(target.shape[1]):
            out = model(
                attention_mask=mask,
                encoder_outputs=encoder_outputs,
                decoder_input_ids=target[:, t : t + 1],
                use_cache=True,
                **{name: cache},
            )
            cache = getattr(out, OUTPUT_CACHE_FIELD)
            steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-4)
    assert cache.get_seq_length() == target.shape[1]
    with pytest.raises(ValueError, match="Pass the cache once"):
        model(ids, mask, decoder_input_ids=target[:, :1], cache=cache, past_key_values=cache)
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['cache_params'\]"):
        model(ids, mask, decoder_input_ids=target[:, :1], cache_params=cache)


@pytest.mark.parametrize("cache", [dict(), dict(cache_implementation="static")], ids=["dynamic", "static"])
def test_generated_logits_equal_teacher_forced_logits(cache):
    """Each step of `generate` (one new token on the cache of the others) computes what one teacher-forced pass over
    the generated tokens computes: a step decoded without its history fails this."""
    model = build()
    ids, mask = source_batch()
    out = model.generate(
        ids,
        attention_mask=mask,
        max_new_tokens=10,
        min_new_tokens=10,
        output_logits=True,
        return_dict_in_generate=True,
        **cache,
    )
    with torch.no_grad():
        forced = model(ids, mask, decoder_input_ids=out.sequences[:, :-1], use_cache=False).logits
    torch.testing.assert_close(torch.stack(out.logits, dim=1), forced, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("passed", ["cache", "past_key_values", "renamed", "dropped"])
def test_generate_reads_the_cache_under_either_name_and_stops_without_it(monkeypatch, passed):
    """Whichever name `generate` passes its cache under, `cache` (transformers 5.24 on) or `past_key_values`
    (before), decoding is the same. A cache under a name the model does not know, or none at all on a step fed only
    its newest token, stops generation with an error instead of decoding without the history."""
    model = build()
    ids, mask = source_batch()
    expected = model.generate(ids, attention_mask=mask, max_new_tokens=8, use_cache=False)
    prepare = GenerationMixin.prepare_inputs_for_generation

    def passing_the_cache_otherwise(self, *args, **kwargs):
        model_inputs = prepare(self, *args, **kwargs)
        for name in ("cache", "past_key_values"):
            if name in model_inputs:
                cache = model_inputs.pop(name)
                if passed != "dropped":
                    model_inputs["kv_cache" if passed == "renamed" else passed] = cache
        return model_inputs

    monkeypatch.setattr(GenerationMixin, "prepare_inputs_for_generation", passing_the_cache_otherwise)
    if passed == "renamed":
        with pytest.raises(TypeError, match=r"unexpected keyword arguments \['kv_cache'\]"):
            model.generate(ids, attention_mask=mask, max_new_tokens=8)
    elif passed == "dropped":
        with pytest.raises(RuntimeError, match="1 of them decoded before, with no cache under a name this model"):
            model.generate(ids, attention_mask=mask, max_new_tokens=8)
    else:
        assert torch.equal(model.generate(ids, attention_mask=mask, max_new_tokens=8), expected)


def test_generation_continues_from_a_returned_cache():
    """A second `generate` continues the first from its cache; the decoder mask then covers the cached tokens and the
    new ones."""
    model = build()
    ids, mask = source_batch()
    whole = model.generate(ids, attention_mask=mask, max_new_tokens=10, min_new_tokens=10)
    first = model.generate(ids, attention_mask=mask, max_new_tokens=4, min_new_tokens=4, return_dict_in_generate=True)
    assert torch.equal(first.sequences, whole[:, :5])
    cache = getattr(first, OUTPUT_CACHE_FIELD)
    assert cache.get_seq_length() == 4  # the newest token is not decoded yet
    continued = model.generate(
        ids,
        attention_mask=mask,
        decoder_input_ids=first.sequences,
        decoder_attention_mask=torch.ones_like(first.sequences),
        max_new_tokens=6,
        min_new_tokens=6,
        **{OUTPUT_CACHE_FIELD: cache},
    )
    assert torch.equal(continued, whole)
    cached = cache.get_seq_length()  # the second generate decoded into the same cache
    with pytest.raises(ValueError, match=rf"and {cached} cached tokens: \(batch_size, {cached} \+ 1\)"):
        model(ids, mask, decoder_input_ids=whole[:, -1:], decoder_attention_mask=torch.ones(3, cached), cache=cache)


def test_cross_attention_keys_and_values_are_computed_once_per_source():
    model = build()
    ids, mask = source_batch()
    calls = {"kv": 0, "self_qkv": 0}
    for layer in model.get_decoder().layers:
        layer.cross_attn.kv_proj.register_forward_hook(lambda *_: calls.__setitem__("kv", calls["kv"] + 1))
        layer.self_attn.qkv_proj.register_forward_hook(lambda *_: calls.__setitem__("self_qkv", calls["self_qkv"] + 1))
    out = model.generate(ids, attention_mask=mask, max_new_tokens=10, min_new_tokens=10)
    layers = model.config.num_decoder_layers
    assert out.shape[1] == 11
    assert calls["kv"] == layers  # once per layer for the whole generation
    assert calls["self_qkv"] == layers * 10  # once per layer and step


def test_padded_batch_gives_each_sequence_its_own_output():
    model = build()
    ids, mask = source_batch(lengths=(7, 4, 2))
    batched = model.generate(ids, attention_mask=mask, max_new_tokens=8, num_beams=3)
    with torch.no_grad():
        target = torch.randint(4, 40, (3, 6), generator=torch.Generator().manual_seed(5))
        batched_logits = model(ids, mask, decoder_input_ids=target).logits
    for row, length in enumerate((7, 4, 2)):
        alone = model.generate(ids[row : row + 1, :length], max_new_tokens=8, num_beams=3)
        assert torch.equal(batched[row, : alone.shape[1]], alone[0]), row
        with torch.no_grad():
            logits = model(ids[row : row + 1, :length], decoder_input_ids=target[row : row + 1]).logits
        torch.testing.assert_close(batched_logits[row], logits[0], atol=1e-5, rtol=1e-4)


def test_generation_controls():
    model = build()
    ids, mask = source_batch()
    out = model.generate(ids, attention_mask=mask, max_new_tokens=6, min_new_tokens=6)
    assert out.shape == (3, 7) and (out[:, 0] == model.config.decoder_start_token_id).all()
    forced = model.generate(ids, attention_mask=mask, max_new_tokens=6, forced_bos_token_id=4)
    assert (forced[:, 1] == 4).all()  # a target-language tag right after the start token
    no_repeat = model.generate(ids, attention_mask=mask, max_new_tokens=15, min_new_tokens=15, no_repeat_ngram_size=2)
    for row in no_repeat.tolist():
        bigrams = list(zip(row[1:], row[2:], strict=False))
        assert len(bigrams) == len(set(bigrams))
    beams = model.generate(
        ids,
        attention_mask=mask,
        max_new_tokens=6,
        num_beams=4,
        num_return_sequences=4,
        output_scores=True,
        return_dict_in_generate=True,
    )
    assert beams.sequences.shape[0] == 12
    assert (beams.sequences_scores.view(3, 4).diff(dim=1) <= 1e-6).all()  # best beam first


# --------------------------------------------------------------------------------------------------------------------
# Loss and training


def test_loss_equals_hand_computed_cross_entropy():
    model = build()
    ids, mask = source_batch()
    labels = torch.randint(4, 40, (3, 6), generator=torch.Generator().manual_seed(2))
    labels[1, 4:] = -100
    out = model(ids, mask, labels=labels)
    decoder_input_ids = torch.cat([torch.full((3, 1), model.config.decoder_start_token_id), labels[:, :-1]], dim=1)
    decoder_input_ids = decoder_input_ids.masked_fill(decoder_input_ids == -100, model.config.pad_token_id)
    logits = model(ids, mask, decoder_input_ids=decoder_input_ids).logits
    keep = labels != -100  # after a row's last label the targets are padding (`labelled_target_mask`)
    torch.testing.assert_close(out.logits[keep], logits[keep])
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(logits[keep], labels[keep]))


def test_sparse_prediction_loss_equals_dense_loss():
    """In training mode the sparse head gives a row per labelled position; in eval mode (as `Seq2SeqTrainer`
    evaluates) every position's, as transformers' models do. The loss is the same."""
    dense, sparse = build().train(), build(sparse_prediction=True).train()  # (no dropout in the tiny config)
    ids, mask = source_batch()
    labels = torch.randint(4, 40, (3, 6), generator=torch.Generator().manual_seed(2))
    labels[1, 4:] = labels[2, 2:] = -100
    with torch.no_grad():
        dense_out, sparse_out = dense(ids, mask, labels=labels), sparse(ids, mask, labels=labels)
        evaluated = sparse.eval()(ids, mask, labels=labels)
    torch.testing.assert_close(sparse_out.loss, dense_out.loss)
    assert sparse_out.logits.shape == (int((labels != -100).sum()), 40)
    torch.testing.assert_close(sparse_out.logits, dense_out.logits[labels != -100])
    assert evaluated.logits.shape == (3, 6, 40)
    torch.testing.assert_close(evaluated.logits[labels != -100], sparse_out.logits)
    torch.testing.assert_close(evaluated.loss, sparse_out.loss)
    dense.eval()
    assert torch.equal(
        sparse.generate(ids, attention_mask=mask, max_new_tokens=5),
        dense.generate(ids, attention_mask=mask, max_new_tokens=5),
    )


def pack_rows(ids, mask):
    lengths = mask.sum(1).tolist()
    flat = torch.cat([row[:n] for row, n in zip(ids, lengths, strict=True)])[None]
    return flat, torch.cat([torch.arange(n) for n in lengths])[None]


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_padding_free_batch_equals_padded_batch(implementation):
    model = build(initializer_range=0.02, sparse_prediction=True, attn_implementation=implementation)
    model.train()
    ids, mask = source_batch(lengths=(7, 4, 2))
    target_lengths = (5, 6, 2)
    labels = torch.randint(4, 40, (3, 6), generator=torch.Generator().manual_seed(2))
    target_mask = (torch.arange(6) < torch.tensor(target_lengths)[:, None]).long()
    labels = labels.masked_fill(target_mask == 0, -100)
    padded = model(ids, mask, labels=labels)
    padded.loss.backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()

    source, source_positions = pack_rows(ids, mask)
    target, target_positions = pack_rows(labels, target_mask)
    packed = model(source, position_ids=source_positions, labels=target, decoder_position_ids=target_positions)
    torch.testing.assert_close(packed.logits, padded.logits, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(packed.loss, padded.loss, atol=1e-6, rtol=1e-5)
    packed.loss.backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], atol=1e-6, rtol=1e-4, msg=name)

    with pytest.raises(ValueError, match="Padding-free batches pack sources and targets alike"):
        model(source, position_ids=source_positions, labels=target)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("targets", ["labels padded with -100", "decoder_attention_mask"])
def test_unpadded_batch_equals_padded_batch(implementation, targets):
    """Sources and targets of a padded batch run on their real tokens only (the default): the loss, the labelled
    positions' logits and the gradients equal those of the batch run padded, and generation is unchanged. Targets
    padded as `DataCollatorForSeq2Seq` pads them (labels -100, no mask) count as padded after their last label."""
    model = build(initializer_range=0.02, attn_implementation=implementation).train()
    ids, mask = source_batch(lengths=(20, 9, 4))
    target_mask = (torch.arange(18) < torch.tensor([12, 18, 6])[:, None]).long()
    labels = torch.randint(4, 40, (3, 18), generator=torch.Generator().manual_seed(2))
    labels = labels.masked_fill(target_mask == 0, -100)
    labels[0, 1] = -100  # an unlabelled position inside a target stays a real token
    given = {"decoder_attention_mask": target_mask} if targets == "decoder_attention_mask" else {}

    def run():
        model.zero_grad()
        encoder_mlp, decoder_mlp = model.model.encoder.layers[0].mlp, model.model.decoder.layers[0].mlp
        with token_rows(encoder_mlp) as source_rows, token_rows(decoder_mlp) as target_rows:
            out = model(ids, mask, labels=labels, **given)
        out.loss.backward()
        return out, {name: p.grad.clone() for name, p in model.named_parameters()}, source_rows + target_rows

    unpadded, unpadded_grads, rows = run()
    assert rows == [(1, 33), (1, 36)]
    model.config.unpadding = False
    padded, padded_grads, rows = run()
    assert rows == [(3, 20), (3, 18)]
    labelled = labels != -100
    torch.testing.assert_close(unpadded.loss, padded.loss, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(unpadded.logits[labelled], padded.logits[labelled], atol=1e-5, rtol=1e-4)
    (source, source_positions), (target, target_positions) = pack_rows(ids, mask), pack_rows(labels, target_mask)
    with torch.no_grad():
        packed = model(source, position_ids=source_positions, labels=target, decoder_position_ids=target_positions)
    torch.testing.assert_close(unpadded.loss, packed.loss, atol=1e-6, rtol=1e-5)
    for name, grad in unpadded_grads.items():
        torch.testing.assert_close(grad, padded_grads[name], atol=1e-6, rtol=1e-4, msg=name)
    model.eval()
    for num_beams in (1, 3):
        expected = model.generate(ids, attention_mask=mask, max_new_tokens=6, num_beams=num_beams)
        model.config.unpadding = True
        generated = model.generate(ids, attention_mask=mask, max_new_tokens=6, num_beams=num_beams)
        model.config.unpadding = False
        assert torch.equal(generated, expected)


@pytest.mark.parametrize("sparse_prediction", [True, False])
def test_one_forward_reads_the_device_once(sparse_prediction):
    """A training forward reads the checks and layouts of sources, targets and labels in one device-to-host copy,
    and so does a decoding step; a GPU waits once for each."""
    model = build(sparse_prediction=sparse_prediction)
    ids, mask = source_batch()
    labels = torch.randint(4, 40, (3, 6), generator=torch.Generator().manual_seed(2))
    labels[1, 4:] = -100
    with torch.no_grad(), HostSyncs() as syncs:
        model(ids, mask, labels=labels)
    assert syncs.ops == ["Tensor.tolist"]
    with torch.no_grad():
        encoded = model.get_encoder()(ids, mask)
        first = model(encoder_outputs=encoded, attention_mask=mask, decoder_input_ids=torch.full((3, 1), 1))
        with HostSyncs() as syncs:
            model(
                encoder_outputs=encoded,
                attention_mask=mask,
                decoder_input_ids=torch.full((3, 1), 5),
                **{OUTPUT_CACHE_FIELD: getattr(first, OUTPUT_CACHE_FIELD)},
            )
    assert syncs.ops == ["Tensor.tolist"]


def test_gradient_checkpointing_gives_the_same_gradients():
    """On sources and targets unpadded inside the model: the layers recompute from the padding-free rows."""
    model = build(initializer_range=0.02)
    model.train()
    ids, mask = source_batch(lengths=(20, 9, 4))
    labels = torch.randint(4, 40, (3, 18), generator=torch.Generator().manual_seed(2))
    labels = labels.masked_fill(torch.arange(18) >= torch.tensor([12, 18, 6])[:, None], -100)
    model(ids, mask, labels=labels).loss.backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    model.gradient_checkpointing_enable()
    with (
        token_rows(model.model.encoder.layers[0].mlp) as sources,
        token_rows(model.model.decoder.layers[0].mlp) as targets,
    ):
        model(ids, mask, labels=labels).loss.backward()
    assert (sources[0], targets[0]) == ((1, 33), (1, 36))
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], msg=name)


@pytest.mark.parametrize("implementation", ["sdpa", "flex_attention"])
def test_attention_implementations_agree_with_eager(implementation):
    model = build(initializer_range=0.02)
    ids, mask = source_batch()
    target = torch.randint(4, 40, (3, 6), generator=torch.Generator().manual_seed(2))
    attention = [m for m in model.modules() if isinstance(m, (DecoderSelfAttention, DecoderCrossAttention))]
    with torch.no_grad():
        model.set_attn_implementation("eager")
        assert {m.config._attn_implementation for m in attention} == {"eager"}
        expected = model(ids, mask, decoder_input_ids=target).logits
        model.set_attn_implementation(implementation)
        assert {m.config._attn_implementation for m in attention} == {implementation}  # switched, not only warned
        actual = model(ids, mask, decoder_input_ids=target).logits
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-4)


def test_outputs_of_every_part():
    model = build(attn_implementation="eager")
    ids, mask = source_batch()
    target = torch.randint(4, 40, (3, 5), generator=torch.Generator().manual_seed(2))
    out = model(ids, mask, decoder_input_ids=target, output_hidden_states=True, output_attentions=True)
    config = model.config
    assert len(out.encoder_hidden_states) == config.num_hidden_layers + 1
    assert len(out.decoder_hidden_states) == config.num_decoder_layers + 1
    assert out.encoder_attentions[0].shape == (3, 4, 7, 7)
    assert out.decoder_attentions[0].shape == (3, 4, 5, 5)
    assert out.cross_attentions[0].shape == (3, 4, 5, 7)
    assert out.decoder_attentions[0][0, 0].triu(1).abs().max() == 0  # causal
    assert out.cross_attentions[0][2, :, :, 2:].abs().max() == 0  # source padding gets no attention


# --------------------------------------------------------------------------------------------------------------------
# Weights: tying, save/load, Auto classes, remote code, warm start


def test_one_matrix_for_both_embeddings_and_the_lm_head(tmp_path):
    model = build()
    embeddings = model.get_input_embeddings().weight
    assert model.get_decoder().get_input_embeddings().weight is embeddings and model.lm_head.weight is embeddings
    model.save_pretrained(tmp_path)
    loaded = Seq2SeqForConditionalGeneration.from_pretrained(tmp_path)
    assert loaded.lm_head.weight is loaded.model.decoder.embeddings.tok_embeddings.weight
    assert loaded.lm_head.weight is loaded.model.encoder.embeddings.tok_embeddings.weight
    loaded.resize_token_embeddings(50)
    assert loaded.lm_head.weight is loaded.model.decoder.embeddings.tok_embeddings.weight
    assert loaded.lm_head.weight.shape[0] == 50 == loaded.config.vocab_size
    untied = build(tie_word_embeddings=False)
    assert untied.lm_head.weight is not untied.get_input_embeddings().weight
    assert untied.get_decoder().get_input_embeddings().weight is not untied.get_input_embeddings().weight


def test_save_load_and_auto_classes(tmp_path):
    model = build()
    ids, mask = source_batch()
    model.save_pretrained(tmp_path)
    generation_config = json.loads((tmp_path / "generation_config.json").read_text())
    assert generation_config["decoder_start_token_id"] == 1 and generation_config["eos_token_id"] == 2
    assert isinstance(AutoConfig.from_pretrained(tmp_path), Seq2SeqConfig)
    loaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is Seq2SeqForConditionalGeneration
    base = AutoModel.from_pretrained(tmp_path).eval()
    assert type(base) is Seq2SeqModel
    target = torch.randint(4, 40, (3, 6), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(ids, mask, decoder_input_ids=target).logits, model(ids, mask, decoder_input_ids=target).logits
        )
        torch.testing.assert_close(
            base(ids, mask, decoder_input_ids=target).last_hidden_state,
            model.model(ids, mask, decoder_input_ids=target).last_hidden_state,
        )
    assert torch.equal(
        loaded.generate(ids, attention_mask=mask, num_beams=2, max_new_tokens=8),
        model.generate(ids, attention_mask=mask, num_beams=2, max_new_tokens=8),
    )


REMOTE_SCRIPT = REFUSE_HF_ENCODERS + textwrap.dedent(
    """
    from pathlib import Path

    import torch
    from transformers import AutoModel, AutoModelForSeq2SeqLM, AutoTokenizer, pipeline

    folder, expected_file, resaved = sys.argv[1], sys.argv[2], sys.argv[3]
    expected = torch.load(expected_file)
    model = AutoModelForSeq2SeqLM.from_pretrained(folder, trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules")
    # saved again before any pipeline fetched pipeline_seq2seq.py: the copy still carries the pipelines' code
    model.save_pretrained(resaved)
    AutoTokenizer.from_pretrained(folder, trust_remote_code=True).save_pretrained(resaved)
    with torch.no_grad():
        logits = model(**expected["inputs"]).logits
    generated = model.generate(expected["inputs"]["input_ids"], attention_mask=expected["inputs"]["attention_mask"],
                               num_beams=2, max_new_tokens=8)
    base = AutoModel.from_pretrained(folder, trust_remote_code=True)
    translate = pipeline("translation", model=resaved, trust_remote_code=True, tgt_lang="de", max_new_tokens=5)
    print(json.dumps({
        "logits": float((logits - expected["logits"]).abs().max()),
        "generate_equal": bool(torch.equal(generated, expected["generated"])),
        "base": type(base).__name__,
        "translation": translate("a dog runs")[0]["translation_text"],
        "resaved_code": sorted(path.name for path in Path(resaved).glob("*.py")),
    }))
    """
)


def test_trust_remote_code_without_the_package(tmp_path):
    tokenizer = seq2seq_tokenizer()
    model = build(vocab_size=len(tokenizer))
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    for code in ("modeling_seq2seq.py", "modeling_encoder.py", "configuration_hf_encoders.py", "pipeline_seq2seq.py"):
        assert (folder / code).exists(), code
    ids, mask = source_batch(vocab_size=len(tokenizer))
    target = torch.randint(4, len(tokenizer), (3, 6), generator=torch.Generator().manual_seed(2))
    inputs = {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": target}
    with torch.no_grad():
        logits = model(**inputs).logits
    generated = model.generate(ids, attention_mask=mask, num_beams=2, max_new_tokens=8)
    torch.save({"inputs": inputs, "logits": logits, "generated": generated}, tmp_path / "expected.pt")
    result = run_without_the_package(
        REMOTE_SCRIPT, folder, tmp_path / "expected.pt", tmp_path / "resaved", modules=tmp_path / "modules"
    )
    assert result["logits"] < 1e-5 and result["generate_equal"] and result["base"] == "Seq2SeqModel", result
    assert isinstance(result["translation"], str)
    code = ["configuration_hf_encoders.py", "conversion_modernbert.py", "modeling_encoder.py", "modeling_seq2seq.py"]
    code.append("pipeline_seq2seq.py")
    assert result["resaved_code"] == code, result


def test_translation_and_text2text_pipelines(tmp_path):
    tokenizer = seq2seq_tokenizer()
    model = build(vocab_size=len(tokenizer))
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    translate = pipeline(
        "translation",
        model=str(tmp_path),
        pipeline_class=TranslationPipeline,
        tgt_lang="de",
        max_new_tokens=6,
        num_beams=2,
    )
    single = translate("a dog runs")
    assert len(single) == 1 and set(single[0]) == {"translation_text"}
    ids = tokenizer("a dog runs", return_tensors="pt")
    expected = model.generate(**ids, max_new_tokens=6, num_beams=2, forced_bos_token_id=4)
    assert single[0]["translation_text"] == tokenizer.decode(expected[0], skip_special_tokens=True)
    assert len(translate(["a dog runs", "the cat sits"])) == 2
    with pytest.raises(ValueError, match="no language tag '<2fr>'"):
        pipeline("translation", model=str(tmp_path), pipeline_class=TranslationPipeline, tgt_lang="fr")
    generate = pipeline("text2text-generation", model=str(tmp_path), trust_remote_code=True, max_new_tokens=4)
    several = generate("the cat", num_beams=3, num_return_sequences=3)
    assert len(several) == 3 and all("generated_text" in item for item in several)


def test_warm_start_from_a_masked_lm_checkpoint(tmp_path):
    torch.manual_seed(0)
    encoder = EncoderForMaskedLM(
        tiny_config(num_hidden_layers=3, local_attention=None, global_attn_every_n_layers=None)
    )
    encoder.save_pretrained(tmp_path)
    model = seq2seq_from_encoder(tmp_path, num_decoder_layers=2)
    report = model.warm_start_report
    source = encoder.model.state_dict()
    state = model.state_dict()
    assert model.config.num_hidden_layers == 3 and model.config.num_decoder_layers == 2
    assert model.config.decoder_start_token_id == encoder.config.cls_token_id
    assert model.config.eos_token_id == encoder.config.sep_token_id
    # everything of the encoder is copied
    for name, tensor in source.items():
        assert torch.equal(state[f"model.encoder.{name}"], tensor), name
        assert f"model.encoder.{name}" in report["copied"]
    # decoder self-attention, MLP and norms come from the encoder layer of the same index
    pairs = {
        "self_attn.qkv_proj.weight": "attn.qkv_proj.weight",
        "self_attn.o_proj.weight": "attn.o_proj.weight",
        "mlp.up_proj.weight": "mlp.up_proj.weight",
        "mlp.down_proj.weight": "mlp.down_proj.weight",
        "mlp_norm.weight": "mlp_norm.weight",
    }
    for i in range(2):
        for target, origin in pairs.items():
            assert torch.equal(state[f"model.decoder.layers.{i}.{target}"], source[f"layers.{i}.{origin}"])
            assert f"model.decoder.layers.{i}.{target}" in report["copied"]
    assert torch.equal(state["model.decoder.layers.1.self_attn_norm.weight"], source["layers.1.attn_norm.weight"])
    # cross-attention is new, and only what the report calls copied was copied
    assert all(".cross_attn" in name for name in report["initialised"])
    assert {
        f"model.decoder.layers.{i}.cross_attn.{p}.weight" for i in range(2) for p in ("q_proj", "kv_proj", "o_proj")
    } <= set(report["initialised"])
    assert set(report["tied"]) == {"lm_head.weight", "model.decoder.embeddings.tok_embeddings.weight"}
    assert set(report["copied"]) | set(report["initialised"]) | set(report["tied"]) == set(state)
    assert model.lm_head.weight is model.get_input_embeddings().weight

    fresh = seq2seq_from_encoder(tmp_path, init_decoder_from_encoder=False)
    assert all(name.startswith("model.encoder.") or "norm" in name for name in fresh.warm_start_report["copied"])
    assert "model.decoder.layers.0.self_attn.qkv_proj.weight" in fresh.warm_start_report["initialised"]


# --------------------------------------------------------------------------------------------------------------------
# Bad input


def test_bad_inputs_are_refused():
    model = build()
    ids, mask = source_batch()
    with pytest.raises(ValueError, match=r"`decoder_input_ids` has shape \(3, 4\) but `labels` has shape \(3, 5\)"):
        model(ids, mask, decoder_input_ids=torch.full((3, 4), 5), labels=torch.full((3, 5), 5))
    with pytest.raises(ValueError, match="`input_ids` is empty"):
        model(torch.zeros((1, 0), dtype=torch.long), labels=torch.full((1, 3), 5))
    with pytest.raises(ValueError, match="`input_ids` contains id 45, 6 beyond the vocabulary"):
        model(torch.tensor([[5, 45]]), labels=torch.full((1, 3), 5))
    with pytest.raises(ValueError, match="`decoder_input_ids` contains negative ids"):
        model(ids, mask, decoder_input_ids=torch.full((3, 2), -1))
    with pytest.raises(ValueError, match="`labels` contains id 40"):
        model(ids, mask, labels=torch.full((3, 2), 40))
    with pytest.raises(ValueError, match="`attention_mask` has shape"):
        model(ids, mask[:, :3], labels=torch.full((3, 2), 5))
    with pytest.raises(ValueError, match="`decoder_input_ids` has sequences of 50 tokens, 2 more than"):
        model(ids, mask, decoder_input_ids=torch.full((3, 50), 5))
    no_start = build(decoder_start_token_id=None)
    with pytest.raises(ValueError, match="no `decoder_start_token_id`"):
        no_start(ids, mask, labels=torch.full((3, 2), 5))


def test_labels_of_the_wrong_shape_and_empty_batches_are_refused():
    model = build()
    ids, mask = source_batch()
    with pytest.raises(ValueError, match=r"`labels` must be 2D \(batch_size, target_length\), got shape \(3,\)"):
        model(ids, mask, labels=torch.full((3,), 5))
    empty_source, empty_target = torch.zeros((0, 5), dtype=torch.long), torch.full((0, 3), 5)
    for model_class in (Seq2SeqModel, Seq2SeqForConditionalGeneration):
        with pytest.raises(ValueError, match=r"`input_ids` is an empty batch \(shape \(0, 5\)\)"):
            build(model_class=model_class)(empty_source, decoder_input_ids=empty_target)
    with pytest.raises(ValueError, match=r"`labels` is an empty batch \(shape \(0, 3\)\)"):
        model(empty_source, labels=empty_target)
    encoded = model.get_encoder()(ids, mask)  # a target batch that is empty although the source is not
    with pytest.raises(ValueError, match=r"`decoder_input_ids` is an empty batch \(shape \(0, 3\)\)"):
        model(encoder_outputs=encoded, attention_mask=mask, decoder_input_ids=empty_target)


def test_new_models_normalise_the_first_layers_input_and_keep_it_through_save_and_load(tmp_path):
    model = build()
    assert model.config.first_layer_attention_norm
    assert isinstance(model.model.encoder.layers[0].attn_norm, torch.nn.LayerNorm)
    assert isinstance(model.model.decoder.layers[0].self_attn_norm, torch.nn.LayerNorm)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["first_layer_attention_norm"] is True
    assert AutoModelForSeq2SeqLM.from_pretrained(tmp_path).config.first_layer_attention_norm


def test_a_config_saved_before_first_layer_attention_norm_loads_the_layout_of_its_time(tmp_path):
    """`Seq2SeqConfig.from_dict` (a transformers hook): a config.json without the field is the old layout."""
    model = build(first_layer_attention_norm=False)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["first_layer_attention_norm"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert not AutoConfig.from_pretrained(tmp_path).first_layer_attention_norm
    loaded, info = AutoModelForSeq2SeqLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert isinstance(loaded.model.encoder.layers[0].attn_norm, torch.nn.Identity)
    ids, mask = source_batch()
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask, decoder_input_ids=ids[:, :3]).logits
        torch.testing.assert_close(
            loaded(input_ids=ids, attention_mask=mask, decoder_input_ids=ids[:, :3]).logits, expected
        )
