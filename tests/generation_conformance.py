"""`GenerationTesterMixin` for transformers' `ModelTesterMixin`: the generation checks transformers runs on its own
encoder-decoder models (tests/generation/test_utils.py, which its sdist does not ship), written here for ours.

Each test follows the upstream test of the same name: the same generation settings (3 new tokens, 2 beams, the
same logits processors), the same outputs checked (shapes of scores, logits, attentions, hidden states and the cache
at every step; caches compared layer by layer), and the same tolerances. transformers.testing_utils provides the
helpers it provides upstream. Upstream tests that do not run for encoder-decoder models (left padding, generation
from `inputs_embeds`, static versus dynamic cache for decoder-only models, logits_to_keep, multi-GPU and flash
attention) have no counterpart here.
"""

import copy

import pytest
import torch
from transformers import CompileConfig, GenerationMixin
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from transformers.testing_utils import set_config_for_less_flaky_test, set_model_for_less_flaky_test

from hf_encoders.modeling_seq2seq import OUTPUT_CACHE_FIELD


def assert_similar_generate_outputs(first, second, atol: float = 1e-5, rtol: float = 1e-5) -> None:
    """Equal sequences, or, where a row differs, equal scores at the first step where it does (a near tie)."""
    if torch.equal(first.sequences, second.sequences):
        return
    prompt_length = first.sequences.shape[1] - len(first.scores)
    for row in (first.sequences != second.sequences).any(dim=1).nonzero().flatten().tolist():
        step = int((first.sequences[row] != second.sequences[row]).nonzero()[0]) - prompt_length
        torch.testing.assert_close(first.scores[step][row], second.scores[step][row], atol=atol, rtol=rtol)


def cache_of(output):
    """The cache of an output, under its name in the installed transformers (`cache` from 5.24 on)."""
    return getattr(output, OUTPUT_CACHE_FIELD)


class GenerationTesterMixin:
    max_new_tokens = 3

    @property
    def generative_model_classes(self):
        return [model_class for model_class in self.all_model_classes if model_class.can_generate()]

    # ----------------------------------------------------------------------------------------------------------------
    # Inputs and generation settings

    def prepare_config_and_inputs_for_generate(self, batch_size: int = 2):
        """The common inputs without the decoder's (generation starts from `decoder_start_token_id`), `batch_size`
        rows, and no end-of-sequence token, so that every generation runs its full length."""
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        inputs = {name: value[:batch_size] for name, value in inputs.items() if not name.startswith("decoder_")}
        config.pad_token_id = config.pad_token_id if config.pad_token_id is not None else config.eos_token_id
        config.eos_token_id = None
        return config, inputs

    @staticmethod
    def logits_processor_kwargs(do_sample: bool = False) -> dict:
        kwargs = {"bad_words_ids": [[1, 0]], "repetition_penalty": 1.2, "remove_invalid_values": True}
        return {**kwargs, "top_k": 10, "top_p": 0.7, "temperature": 0.7} if do_sample else kwargs

    def generate(self, model, inputs, *, do_sample=False, num_beams=1, return_dict=False, use_cache=True, **kwargs):
        """One `generate` call as upstream's `_greedy_generate`, `_sample_generate`, `_beam_search_generate` and
        `_beam_sample_generate` make it; `return_dict` asks for every output (scores, logits, attentions, hidden
        states)."""
        if do_sample:
            torch.manual_seed(42)
        beams = {"num_beams": num_beams, "early_stopping": False, "length_penalty": 2.0} if num_beams > 1 else {}
        outputs = dict(output_scores=True, output_logits=True, output_attentions=True, output_hidden_states=True)
        settings = dict(
            max_new_tokens=self.max_new_tokens,
            min_new_tokens=self.max_new_tokens,
            use_cache=use_cache,
            do_sample=do_sample,
            return_dict_in_generate=return_dict,
        )
        settings.update(**(outputs if return_dict else {}), **beams, **self.logits_processor_kwargs(do_sample))
        return model.generate(**inputs, **{**settings, **kwargs})

    # ----------------------------------------------------------------------------------------------------------------
    # What a generation output must hold

    def check_generate_outputs(self, output, config, use_cache=False, num_return_sequences=1, num_beams=1):
        """Shapes of every step's scores, logits, decoder attentions and hidden states, the encoder's outputs, and the
        cache (or none without `use_cache`)."""
        input_batch = output.sequences.shape[0] // num_return_sequences
        internal_batch = input_batch * (num_beams if num_beams > 1 else num_return_sequences)
        source_length = self.model_tester.seq_length
        steps = output.sequences.shape[1] - 1  # after the decoder start token
        decoder_config = config.get_text_config(decoder=True)
        assert len(output.scores) == len(output.logits) == steps
        for scores, logits in zip(output.scores, output.logits, strict=True):
            assert scores.shape == logits.shape == (internal_batch, decoder_config.vocab_size)
        heads, hidden = config.num_attention_heads, config.hidden_size
        for attentions in output.encoder_attentions:
            assert attentions.shape == (input_batch, heads, source_length, source_length)
        for states in output.encoder_hidden_states:
            assert states.shape == (input_batch, source_length, hidden)
        assert len(output.decoder_attentions) == len(output.decoder_hidden_states) == steps
        cache = cache_of(output)
        for step, (attentions, states) in enumerate(
            zip(output.decoder_attentions, output.decoder_hidden_states, strict=True)
        ):
            new = 1 if use_cache and step > 0 else step + 1  # with a cache, each step after the first reads one token
            assert len(attentions) == decoder_config.num_hidden_layers
            for layer_attentions in attentions:
                assert layer_attentions.shape == (internal_batch, heads, new, step + 1), (step, layer_attentions.shape)
            for layer_states in states:
                assert layer_states.shape == (internal_batch, new, hidden)
        if use_cache:
            self.check_cache_for_generate(internal_batch, cache, steps, config)
        else:
            assert cache is None

    def check_cache_for_generate(self, batch_size, cache, length, config):
        """An `EncoderDecoderCache` with a layer per decoder layer: self-attention keys and values of `length` tokens,
        cross-attention ones of the source."""
        assert isinstance(cache, EncoderDecoderCache), type(cache)
        decoder_config = config.get_text_config(decoder=True)
        shape = (batch_size, decoder_config.num_attention_heads, length, decoder_config.head_dim)
        for part, expected in ((cache.self_attention_cache, shape), (cache.cross_attention_cache, None)):
            assert len(part.layers) == decoder_config.num_hidden_layers
            for layer in part.layers:
                if expected is None:  # the source's length, whatever it is
                    expected = (*shape[:2], layer.keys.shape[2], shape[3])
                if isinstance(part, DynamicCache):
                    assert layer.keys.shape == layer.values.shape == expected, (layer.keys.shape, expected)

    def _check_caches_are_equal(self, first: Cache, second: Cache) -> None:
        """Also what `ModelTesterMixin.test_bc_cache_name_forward` compares caches with."""
        assert type(first) is type(second)
        if isinstance(first, EncoderDecoderCache):
            self._check_caches_are_equal(first.self_attention_cache, second.self_attention_cache)
            self._check_caches_are_equal(first.cross_attention_cache, second.cross_attention_cache)
            return
        assert len(first.layers) == len(second.layers)
        for mine, theirs in zip(first.layers, second.layers, strict=True):
            torch.testing.assert_close(mine.keys, theirs.keys)
            torch.testing.assert_close(mine.values, theirs.values)

    def build(self, model_class, config=None, **overrides):
        config = config if config is not None else self.prepare_config_and_inputs_for_generate()[0]
        return model_class._from_config(config, **overrides).eval()

    # ----------------------------------------------------------------------------------------------------------------
    # Decoding strategies

    def test_greedy_generate(self):
        for model_class in self.generative_model_classes:
            config, inputs = self.prepare_config_and_inputs_for_generate()
            output = self.generate(self.build(model_class, config), inputs)
            assert output.shape[1] == self.max_new_tokens + 1

    def test_greedy_generate_dict_outputs(self):
        for use_cache in (False, True):
            for model_class in self.generative_model_classes:
                config, inputs = self.prepare_config_and_inputs_for_generate()
                model = self.build(model_class, config, attn_implementation="eager")
                output = self.generate(model, inputs, return_dict=True, use_cache=use_cache)
                assert type(output).__name__ == "GenerateEncoderDecoderOutput"
                self.check_generate_outputs(output, model.config, use_cache=use_cache)

    def test_sample_generate_dict_output(self):
        for model_class in self.generative_model_classes:
            config, inputs = self.prepare_config_and_inputs_for_generate()
            model = self.build(model_class, config, attn_implementation="eager")
            output = self.generate(
                model, inputs, do_sample=True, num_return_sequences=2, return_dict=True, use_cache=False
            )
            self.check_generate_outputs(output, model.config, num_return_sequences=2)

    def test_beam_search_generate_dict_outputs(self):
        for use_cache in (False, True):
            for do_sample in (False, True):
                for model_class in self.generative_model_classes:
                    config, inputs = self.prepare_config_and_inputs_for_generate()
                    model = self.build(model_class, config, attn_implementation="eager")
                    output = self.generate(
                        model, inputs, num_beams=2, do_sample=do_sample, return_dict=True, use_cache=use_cache
                    )
                    assert type(output).__name__ == "GenerateBeamEncoderDecoderOutput"
                    self.check_generate_outputs(output, model.config, use_cache=use_cache, num_beams=2)

    def test_generate_without_input_ids(self):
        """Without a source, the encoder reads one `bos_token_id` per sequence."""
        for model_class in self.generative_model_classes:
            config, _ = self.prepare_config_and_inputs_for_generate()
            output = self.build(model_class, config).generate(do_sample=False, max_new_tokens=self.max_new_tokens)
            assert output.shape == (1, self.max_new_tokens + 1)

    # ----------------------------------------------------------------------------------------------------------------
    # Assisted decoding

    @pytest.mark.filterwarnings("ignore::UserWarning")
    def test_assisted_decoding_matches_greedy_search(self):
        """An assistant whose tokens are all rejected (random weights) or all accepted (the model itself) changes
        nothing: the same tokens as greedy search, the same outputs."""
        for assistant_kind in ("random", "same"):
            for model_class in self.generative_model_classes:
                config, inputs = self.prepare_config_and_inputs_for_generate(batch_size=1)
                set_config_for_less_flaky_test(config)
                model = self.build(model_class, config, attn_implementation="eager")
                set_model_for_less_flaky_test(model)
                kwargs = dict(return_dict=True, eos_token_id=-1, max_new_tokens=4, min_new_tokens=4)
                greedy = self.generate(model, inputs, **kwargs)
                assistant = (
                    model if assistant_kind == "same" else self.build(model_class, config, attn_implementation="eager")
                )
                assistant.generation_config.num_assistant_tokens = 2
                assistant.generation_config.num_assistant_tokens_schedule = "constant"
                assisted = self.generate(model, inputs, assistant_model=assistant, **kwargs)
                assert_similar_generate_outputs(greedy, assisted)
                for output in (greedy, assisted):
                    self.check_generate_outputs(output, model.config, use_cache=True)

    def test_prompt_lookup_decoding_matches_greedy_search(self):
        for model_class in self.generative_model_classes:
            config, inputs = self.prepare_config_and_inputs_for_generate(batch_size=1)
            model = self.build(model_class, config, attn_implementation="eager")
            kwargs = dict(return_dict=True, eos_token_id=-1, max_new_tokens=4, min_new_tokens=4)
            greedy = self.generate(model, inputs, **kwargs)
            looked_up = self.generate(model, inputs, prompt_lookup_num_tokens=2, **kwargs)
            assert_similar_generate_outputs(greedy, looked_up)
            self.check_generate_outputs(looked_up, model.config, use_cache=True)

    def test_assisted_decoding_sample(self):
        for model_class in self.generative_model_classes:
            config, inputs = self.prepare_config_and_inputs_for_generate(batch_size=1)
            model = self.build(model_class, config, attn_implementation="eager")
            model.generation_config.num_assistant_tokens = 2
            output = self.generate(
                model, inputs, do_sample=True, assistant_model=model, return_dict=True, eos_token_id=-1
            )
            self.check_generate_outputs(output, model.config, use_cache=True)

    # ----------------------------------------------------------------------------------------------------------------
    # The cache

    def test_past_key_values_format(self):
        """A forward over the common inputs returns an `EncoderDecoderCache` shaped like the decoder."""
        for model_class in self.all_model_classes:
            config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
            with torch.no_grad():
                output = model_class(config).eval()(**inputs, use_cache=True)
            self.check_cache_for_generate(
                inputs["input_ids"].shape[0], cache_of(output), inputs["decoder_input_ids"].shape[1], config
            )

    def test_generate_continue_from_past_key_values(self):
        """4 new tokens at once equal 3, then 1 more from the returned cache (the decoder mask covering the cached
        tokens and the new ones); the caches are equal too."""
        for model_class in self.generative_model_classes:
            config, inputs = self.model_tester.prepare_config_and_inputs_for_common()  # decoder prompt included
            model = model_class(config).eval()
            kwargs = dict(
                pad_token_id=-1,
                eos_token_id=-1,
                forced_eos_token_id=None,
                use_cache=True,
                do_sample=False,
                return_dict_in_generate=True,
                output_scores=True,
            )
            whole = model.generate(**inputs, max_new_tokens=4, **kwargs)
            part = model.generate(**inputs, max_new_tokens=3, **kwargs)
            prompt = part.sequences
            mask = torch.ones_like(prompt)
            mask[:, : inputs["decoder_attention_mask"].shape[1]] = inputs["decoder_attention_mask"]
            continued = model.generate(
                **{**inputs, "decoder_input_ids": prompt, "decoder_attention_mask": mask},
                max_new_tokens=1,
                **{OUTPUT_CACHE_FIELD: cache_of(part)},
                **kwargs,
            )
            continued.scores = part.scores + continued.scores
            assert_similar_generate_outputs(whole, continued)
            self._check_caches_are_equal(cache_of(whole), cache_of(continued))

    # ----------------------------------------------------------------------------------------------------------------
    # Compiled decoding

    def compile_config(self) -> CompileConfig:
        config = CompileConfig(fullgraph=True, dynamic=False)
        config._compile_all_devices = True  # generate compiles on CUDA (and a few others) by default only
        return config

    @pytest.mark.filterwarnings("ignore::UserWarning")
    def test_generate_compile_model_forward_fullgraph(self):
        """With a static cache, `generate` compiles the decoding step (fullgraph, inductor) and writes what eager
        decoding writes, for two batches of the same shape without compiling again; a dynamic cache compiles
        nothing."""
        for model_class in self.generative_model_classes:
            config, inputs = self.prepare_config_and_inputs_for_generate(batch_size=4)
            set_config_for_less_flaky_test(config)
            model = self.build(model_class, config)
            set_model_for_less_flaky_test(model)
            batches = [{name: value[rows] for name, value in inputs.items()} for rows in (slice(0, 2), slice(2, 4))]
            kwargs = dict(
                use_cache=True, do_sample=False, max_new_tokens=5, return_dict_in_generate=True, output_scores=True
            )
            torch.compiler.reset()
            with torch.compiler.set_stance("force_eager"):
                eager = [model.generate(**batch, **kwargs) for batch in batches]
            assert isinstance(cache_of(eager[0]).self_attention_cache, DynamicCache)
            assert not hasattr(model, "_compiled_call")
            compiled, graphs = [], []
            for batch in batches:
                compiled.append(
                    model.generate(
                        **batch, **kwargs, cache_implementation="static", compile_config=self.compile_config()
                    )
                )
                graphs.append(torch._dynamo.utils.counters["stats"]["unique_graphs"])
            assert hasattr(model, "_compiled_call") and graphs[0] > 0
            assert graphs[1] == graphs[0], "the second batch of the same shape compiled again"
            for first, second in zip(eager, compiled, strict=True):
                assert cache_of(second).self_attention_cache.is_compileable
                assert_similar_generate_outputs(first, second)

    # ----------------------------------------------------------------------------------------------------------------
    # The hooks generate calls

    def test_inherits_generation_mixin(self):
        for model_class in self.generative_model_classes:
            assert issubclass(model_class, GenerationMixin) and "GenerationMixin" in str(model_class.__bases__)

    def test_prepare_inputs_for_generation_kwargs_forwards(self):
        """Keyword arguments that `prepare_inputs_for_generation` does not know go on to the forward, unchanged."""
        for model_class in self.generative_model_classes:
            model = self.build(model_class)
            extra = dict(output_attentions=True, output_hidden_states=True, custom_arg="test_value", numeric_arg=42)
            model_inputs = model.prepare_inputs_for_generation(
                input_ids=torch.tensor([[1, 2, 3], [4, 5, 6]]),
                position_ids=torch.tensor([[0, 1, 2], [0, 1, 2]]),
                **copy.deepcopy(extra),
            )
            assert "decoder_input_ids" in model_inputs
            assert {name: model_inputs[name] for name in extra} == extra

    def test_custom_4d_attention_mask(self):
        """Upstream packs three sequences sharing a prefix into one row with a custom 4D mask and compares the last
        tokens' predictions with those of the padded batch. Its call has no decoder inputs, which an
        encoder-decoder cannot run; here the target side is packed so, against one source."""
        for model_class in self.generative_model_classes:
            config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
            model = model_class(config).eval()
            source = inputs["input_ids"][:1].expand(3, -1)
            targets = torch.tensor([[5, 6, 7, 8], [5, 6, 7, 9], [5, 6, 10, 11]])
            packed = torch.tensor([[5, 6, 7, 8, 9, 10, 11]])
            positions = torch.tensor([[0, 1, 2, 3, 3, 2, 3]])
            allowed = torch.tensor(
                [
                    [1, 0, 0, 0, 0, 0, 0],
                    [1, 1, 0, 0, 0, 0, 0],
                    [1, 1, 1, 0, 0, 0, 0],
                    [1, 1, 1, 1, 0, 0, 0],
                    [1, 1, 1, 0, 1, 0, 0],
                    [1, 1, 0, 0, 0, 1, 0],
                    [1, 1, 0, 0, 0, 1, 1],
                ],
                dtype=torch.bool,
            )
            mask = torch.zeros(1, 1, 7, 7).masked_fill(~allowed, torch.finfo(torch.float32).min)
            with torch.no_grad():
                expected = model(source, decoder_input_ids=targets).logits[:, -1]
                row = model(
                    source[:1], decoder_input_ids=packed, decoder_attention_mask=mask, decoder_position_ids=positions
                ).logits[0, [3, 4, 6]]
            torch.testing.assert_close(row.softmax(-1), expected.softmax(-1), atol=1e-3, rtol=1e-3)
