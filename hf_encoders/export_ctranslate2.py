"""Serving an encoder-decoder with CTranslate2: `convert_to_ctranslate2` writes a `Seq2SeqForConditionalGeneration`
checkpoint in CTranslate2's format, and `translate_ctranslate2` translates with it (`hf-encoders export MODEL --format
ctranslate2` and `hf-encoders translate EXPORT_DIR`).

The converter is written on `ctranslate2.specs`, as CTranslate2's own converters for transformers models are: a
`TransformerSpec` whose options say what our layers do (pre-norm, the norm after the embeddings, rotary or learned
positions, the gated MLP and its activation, no embedding scaling), filled with our weights. The export folder also
holds the tokenizer and `export.json`; `CTranslate2Model(folder).translate(sentences, "en")` serves it (loaded once,
one thread per translation, as many translations at once as there are CPUs), or `ctranslate2.Translator(folder)` with
the target language's tag as `target_prefix`:

    import ctranslate2
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained("model/ctranslate2")
    translator = ctranslate2.Translator("model/ctranslate2", device="cpu", intra_threads=1, inter_threads=2)
    source = tokenizer.convert_ids_to_tokens(tokenizer("Ein Hund rennt.")["input_ids"])
    result = translator.translate_batch([source], target_prefix=[["<2en>"]], beam_size=4)
    print(tokenizer.decode(tokenizer.convert_tokens_to_ids(result[0].hypotheses[0]), skip_special_tokens=True))

What CTranslate2 cannot express is refused by name (`check_convertible`), never converted approximately.
"""

import json
import os
from pathlib import Path
from types import SimpleNamespace

import ctranslate2
import torch
import transformers
from ctranslate2.converters import Converter
from ctranslate2.specs import common_spec, transformer_spec
from transformers import AutoConfig, AutoTokenizer, GenerationConfig, PreTrainedTokenizerBase

from .configuration_hf_encoders import Seq2SeqConfig
from .exports import EXPORT_INFO, weights_sha256, what_serves
from .modeling_seq2seq import Seq2SeqForConditionalGeneration
from .tokenization import language_tag
from .translation import (
    OverlongSourceError,
    decoding,
    overlong_sources,
    tagged_languages,
    target_language_start,
    warn_direction,
)

QUANTIZATIONS = ("float32", "int8", "int8_float32", "int16")
ACTIVATIONS = {
    "gelu": (common_spec.Activation.GELU, False),
    "geglu": (common_spec.Activation.GELU, True),
    "swiglu": (common_spec.Activation.SWISH, True),
}


def check_convertible(config: Seq2SeqConfig) -> None:
    """Refuse, by name, every setting that CTranslate2's Transformer cannot run exactly."""
    if config.model_type != "hf_seq2seq":
        raise ValueError(
            "Only encoder-decoders (`Seq2SeqForConditionalGeneration`, model_type 'hf_seq2seq') convert to "
            f"CTranslate2. {what_serves(config)}"
        )
    if config.local_attention is not None:
        raise ValueError(
            f"`local_attention`={config.local_attention} with `global_attn_every_n_layers`="
            f"{config.global_attn_every_n_layers}: CTranslate2's encoder attends globally in every layer (its "
            "`sliding_window` applies to all layers alike), so alternating local/global attention cannot be converted."
        )
    if not config.first_layer_attention_norm:
        raise ValueError(
            "`first_layer_attention_norm`=False: the first encoder and decoder layers of this checkpoint read the "
            "normalised embeddings without a norm of their own, and every pre-norm layer of CTranslate2 has one. "
            "Models trained with `first_layer_attention_norm=True` (the default of `Seq2SeqConfig` since the option "
            "exists) convert exactly; this one would need retraining."
        )


def vocabulary(tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> list[str]:
    """The token strings by id, as CTranslate2 maps them, padded to the model's vocabulary with unused names."""
    if len(tokenizer) > vocab_size:
        raise ValueError(f"The tokenizer has {len(tokenizer)} tokens but the model only {vocab_size} embeddings.")
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    if len(set(tokens)) != len(tokens):
        raise ValueError("The tokenizer maps two ids to the same token string; CTranslate2 looks tokens up by string.")
    return tokens + [f"<madeupword{i}>" for i in range(vocab_size - len(tokens))]


class HfEncodersConverter(Converter):
    """CTranslate2's converter interface (`.convert(output_dir, quantization=...)`) for our encoder-decoder."""

    def __init__(self, model: Seq2SeqForConditionalGeneration, tokenizer: PreTrainedTokenizerBase):
        check_convertible(model.config)
        self.model, self.tokenizer = model, tokenizer

    def _load(self) -> transformer_spec.TransformerSpec:
        config = self.model.config
        spec = transformer_spec.TransformerSpec(
            transformer_spec.TransformerEncoderSpec(config.num_hidden_layers, **self.layer_options()),
            transformer_spec.TransformerDecoderSpec(config.num_decoder_layers, **self.layer_options()),
        )
        self.set_stack(spec.encoder, self.model.model.encoder, decoder=False)
        self.set_stack(spec.decoder, self.model.model.decoder, decoder=True)
        self.set_linear(spec.decoder.projection, self.model.lm_head)
        tokens = vocabulary(self.tokenizer, config.vocab_size)
        spec.register_source_vocabulary(tokens)
        spec.register_target_vocabulary(tokens)
        spec.config.bos_token, spec.config.eos_token = tokens[config.bos_token_id], tokens[config.eos_token_id]
        spec.config.decoder_start_token = tokens[config.decoder_start_token_id]
        spec.config.unk_token = self.tokenizer.unk_token or tokens[config.pad_token_id]
        spec.config.layer_norm_epsilon = config.norm_eps
        return spec

    def layer_options(self) -> dict:
        config = self.model.config
        activation, glu = ACTIVATIONS[config.hidden_activation]
        options = dict(
            num_heads=config.num_attention_heads,
            pre_norm=True,
            activation=activation,
            ffn_glu=glu,
            rms_norm=config.norm_type == "rmsnorm",
            layernorm_embedding=True,
        )
        if config.position_embedding_type == "rope":  # ours rotate the two halves of each head (not interleaved)
            options.update(rotary_dim=0, rotary_interleave=False, rotary_base=config.rope_theta)
        return options

    def set_stack(self, spec, stack: torch.nn.Module, decoder: bool) -> None:
        spec.scale_embeddings = False
        embeddings = stack.embeddings
        token_spec = spec.embeddings[0] if isinstance(spec.embeddings, list) else spec.embeddings  # encoder: a list
        token_spec.weight = self.tensor(embeddings.tok_embeddings.weight)
        if embeddings.position_embeddings is not None:
            spec.position_encodings.encodings = self.tensor(embeddings.position_embeddings.weight)
        self.set_norm(spec.layernorm_embedding, embeddings.norm)
        self.set_norm(spec.layer_norm, stack.final_norm)
        for layer_spec, layer in zip(spec.layer, stack.layers, strict=True):
            if decoder:
                self.set_decoder_layer(layer_spec, layer)
            else:
                self.set_attention(layer_spec.self_attention, layer.attn_norm, layer.attn.qkv_proj, layer.attn.o_proj)
                self.set_ffn(layer_spec.ffn, layer)

    def set_decoder_layer(self, spec, layer: torch.nn.Module) -> None:
        attention = layer.self_attn
        self.set_attention(spec.self_attention, layer.self_attn_norm, attention.qkv_proj, attention.o_proj)
        cross = layer.cross_attn
        self.set_attention(spec.attention, layer.cross_attn_norm, cross.q_proj, cross.kv_proj, cross.o_proj)
        self.set_ffn(spec.ffn, layer)

    def set_attention(self, spec, norm: torch.nn.Module, *linears: torch.nn.Linear) -> None:
        """Pre-norm attention: its norm and its projections ([qkv, out] or, across, [q, kv, out]) in order."""
        self.set_norm(spec.layer_norm, norm)
        for linear_spec, linear in zip(spec.linear, linears, strict=True):
            self.set_linear(linear_spec, linear)

    def set_ffn(self, spec, layer: torch.nn.Module) -> None:
        self.set_norm(spec.layer_norm, layer.mlp_norm)
        mlp = layer.mlp
        if mlp.gated:  # ours compute act(x W_a) * (x W_b) from one projection [W_a; W_b]
            self.set_linear(spec.linear_0, mlp.up_proj, rows=slice(0, mlp.down_proj.in_features))
            self.set_linear(spec.linear_0_noact, mlp.up_proj, rows=slice(mlp.down_proj.in_features, None))
        else:
            self.set_linear(spec.linear_0, mlp.up_proj)
        self.set_linear(spec.linear_1, mlp.down_proj)

    def set_norm(self, spec, norm: torch.nn.Module) -> None:
        spec.gamma = self.tensor(norm.weight)
        if hasattr(spec, "beta"):  # LayerNorm; ours may have no bias
            spec.beta = self.tensor(norm.bias) if norm.bias is not None else torch.zeros_like(spec.gamma)

    def set_linear(self, spec, linear: torch.nn.Linear, rows: slice = slice(None)) -> None:
        spec.weight = self.tensor(linear.weight[rows])
        if linear.bias is not None:
            spec.bias = self.tensor(linear.bias[rows])

    @staticmethod
    def tensor(value: torch.Tensor) -> torch.Tensor:
        return value.detach().float().contiguous()


def convert_to_ctranslate2(
    model_name_or_path: str | Path,
    output_dir: str | Path,
    quantization: str | None = None,
    force: bool = False,
) -> Path:
    """Convert a `Seq2SeqForConditionalGeneration` checkpoint (a folder or a Hub id) to a CTranslate2 model in
    `output_dir`, weights quantized as `quantization` (`int8`, `int8_float32`, `int16`; float32 by default), with its
    tokenizer and an `export.json` that says what it is and how to run it."""
    if quantization not in (None, *QUANTIZATIONS):
        raise ValueError(f"--quantization {quantization!r}: choose one of {', '.join(QUANTIZATIONS)}.")
    config = AutoConfig.from_pretrained(model_name_or_path)
    check_convertible(config)
    model = Seq2SeqForConditionalGeneration.from_pretrained(model_name_or_path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_name_or_path)
    output_dir = Path(output_dir)
    with torch.no_grad():
        HfEncodersConverter(model, tokenizer).convert(str(output_dir), quantization=quantization, force=force)
    tokenizer.save_pretrained(output_dir)
    info = {
        "format": "ctranslate2",
        "task": "translation",
        "source": str(model_name_or_path),
        "weights_sha256": weights_sha256(model_name_or_path),
        "quantization": quantization or "float32",
        "target_prefix": {language: [language_tag(language)] for language in tagged_languages(tokenizer)},
        "max_position_embeddings": config.max_position_embeddings,
        "translation_directions": getattr(config, "translation_directions", None),
        "generation": {  # the model's own decoding, which `translate_ctranslate2` takes when not told otherwise
            key: getattr(model.generation_config, key) for key in ("num_beams", "length_penalty", "max_new_tokens")
        },
        "versions": {"ctranslate2": ctranslate2.__version__, "transformers": transformers.__version__},
        "usage": "ctranslate2.Translator(folder).translate_batch(source_tokens, target_prefix=[[tag]] * n)",
    }
    (output_dir / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n")
    return output_dir


def is_ctranslate2_export(folder: str | Path) -> bool:
    return (Path(folder) / "model.bin").is_file() and (Path(folder) / EXPORT_INFO).is_file()


def target_prefix(tokenizer: PreTrainedTokenizerBase, target_language: str) -> list[str] | None:
    """The forced first target token (the `<2xx>` tag) as CTranslate2's prefix; None for a tokenizer without tags."""
    forced = target_language_start(tokenizer, target_language)
    return tokenizer.convert_ids_to_tokens([forced["forced_bos_token_id"]]) if forced else None


def check_budget(max_new_tokens: int, info: dict) -> None:
    """Refuse a target budget beyond the model's `max_position_embeddings`, which ours refuses too."""
    if max_new_tokens + 1 > (limit := info["max_position_embeddings"]):  # the decoder also reads its start token
        raise ValueError(f"max_new_tokens={max_new_tokens}: the decoder takes at most {limit - 1} new tokens.")


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity), else the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class CTranslate2Model:
    """A CTranslate2 export loaded once for serving: its `ctranslate2.Translator`, its tokenizer and its export.json.
    `translate` then costs the translation alone, request after request (`translate_ctranslate2` loads all three on
    every call, which a server answering one sentence per call must not pay).

    Threads: each translation (a batch) runs on `intra_threads` threads (1 by default), and `threads // intra_threads`
    of them run at once (CTranslate2's `inter_threads`: parallel requests, or the batches of one long call, which share
    the weights); `threads` 0 is the CPUs this process may use. On 2 CPUs one thread per translation was 5.5x faster at
    batch 1 (8x with 4 beams) than one translation on both (benchmarks/RESULTS.md#serving): a small model's per-step
    work is too short to split. `compute_type` as `ctranslate2.Translator` takes it ("default": the export's
    quantization). Serve it in a process of its own: after CTranslate2 ran with one thread per translation, torch's
    compiled flex attention on the CPU aborted the process (torch 2.13, ctranslate2 4.8.5)."""

    def __init__(
        self,
        folder: str | Path,
        threads: int = 0,
        intra_threads: int = 1,
        compute_type: str = "default",
        translator: "ctranslate2.Translator | None" = None,
    ):
        self.folder = Path(folder)
        self.info = json.loads((self.folder / EXPORT_INFO).read_text())
        self.tokenizer = AutoTokenizer.from_pretrained(self.folder)
        inter_threads = max(1, (threads or available_cpus()) // intra_threads)
        self.translator = translator or ctranslate2.Translator(
            str(self.folder),
            device="cpu",
            compute_type=compute_type,
            intra_threads=intra_threads,
            inter_threads=inter_threads,
        )
        self.generation_config = GenerationConfig(**self.info.get("generation", {}))
        self.prefixes: dict[str, list[str] | None] = {}

    def translate(
        self,
        sources: list[str],
        target_language: str,
        batch_size: int = 32,
        num_beams: int | None = None,
        max_new_tokens: int | None = None,
        length_penalty: float | None = None,
        max_source_length: int | None = None,
    ) -> list[str]:
        """Translate `sources`, as `translation.translate` does with `generate` (same tokens in, same target tag, same
        beams and lengths, taken from the exported model's generation config when not given; an empty source
        translates to an empty string). A source longer than the model's positions is an `OverlongSourceError`
        unless `max_source_length` cuts the sources to that many tokens."""
        warn_direction(
            SimpleNamespace(translation_directions=self.info.get("translation_directions")), target_language
        )
        given = [i for i, source in enumerate(sources) if source.strip()]
        encoded = self.encode(sources, given, max_source_length)
        options = decoding(self.generation_config, num_beams, length_penalty, max_new_tokens)
        check_budget(options["max_new_tokens"], self.info)
        if not given:  # (an empty batch_decode reads as one empty sequence on older transformers)
            return [""] * len(sources)
        if target_language not in self.prefixes:
            self.prefixes[target_language] = target_prefix(self.tokenizer, target_language)
        prefix = self.prefixes[target_language]
        results = self.translator.translate_batch(
            [self.tokenizer.convert_ids_to_tokens(ids) for ids in encoded],
            target_prefix=[prefix] * len(given) if prefix else None,
            beam_size=options["num_beams"],
            length_penalty=1.0 if options["length_penalty"] is None else options["length_penalty"],
            max_decoding_length=options["max_new_tokens"],
            max_input_length=0,  # (CTranslate2 would cut longer sources silently; they were refused or cut above)
            max_batch_size=self.batch_size(len(given), batch_size),
            batch_type="examples",
        )
        outputs = [self.tokenizer.convert_tokens_to_ids(result.hypotheses[0]) for result in results]
        hypotheses = [""] * len(sources)
        for i, text in zip(given, self.tokenizer.batch_decode(outputs, skip_special_tokens=True), strict=True):
            hypotheses[i] = text.strip()
        return hypotheses

    def batch_size(self, count: int, batch_size: int) -> int:
        """At most `batch_size` sources per batch, and few enough that one call's `count` sources keep every
        translator that runs at once busy (8 sources on 2 translators: two batches of 4, side by side)."""
        return max(1, min(batch_size, -(-count // self.translator.num_translators)))

    def encode(self, sources: list[str], given: list[int], max_source_length: int | None) -> list[list[int]]:
        """The token ids of the sources at `given` (the non-empty ones): cut to `max_source_length` when given, else
        an `OverlongSourceError` for any source beyond the model's positions, as `translation.translate` does."""
        limit = self.info["max_position_embeddings"]
        if max_source_length is None and (overlong := overlong_sources(self.tokenizer, sources, limit)):
            raise OverlongSourceError(overlong, limit)
        truncation = {"truncation": True, "max_length": max_source_length} if max_source_length else {}
        return self.tokenizer([sources[i] for i in given], **truncation)["input_ids"] if given else []


def translate_ctranslate2(
    folder: str | Path,
    sources: list[str],
    target_language: str,
    batch_size: int = 32,
    num_beams: int | None = None,
    max_new_tokens: int | None = None,
    length_penalty: float | None = None,
    threads: int = 0,
    translator: "ctranslate2.Translator | None" = None,
    max_source_length: int | None = None,
) -> list[str]:
    """Translate `sources` with the CTranslate2 export in `folder`, as `translation.translate` does with `generate`
    (same tokens in, same target tag, same beams and lengths, taken from the exported model's generation config when
    not given; an empty source translates to an empty string). Its beam search ends when `num_beams` hypotheses are
    finished, as `generate(..., early_stopping=True)` does: with that setting the tokens are ours. `translator`
    reuses a loaded one; else `threads` CPUs serve it as `CTranslate2Model` does (0: all this process may use, one
    thread per batch). A source longer than the model's positions is an `OverlongSourceError`, as ours refuses it,
    unless `max_source_length` cuts the sources to that many tokens.

    This loads the export (tokenizer, export.json and, without `translator`, the model) on every call: to translate
    request after request, load it once as `CTranslate2Model(folder)` and call its `translate`."""
    served = CTranslate2Model(folder, threads=threads, translator=translator)
    return served.translate(
        sources, target_language, batch_size, num_beams, max_new_tokens, length_penalty, max_source_length
    )


__all__ = [
    "convert_to_ctranslate2",
    "CTranslate2Model",
    "translate_ctranslate2",
    "check_convertible",
    "is_ctranslate2_export",
]
