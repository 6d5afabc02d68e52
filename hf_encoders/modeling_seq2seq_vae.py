"""The sentence variational autoencoder of the encoder-decoder family: `Seq2SeqVAEModel` and
`Seq2SeqVAEForConditionalGeneration`.

The encoder-decoder of modeling_seq2seq.py with a `VariationalBottleneck` between the two: the pooled encoder output
gives a diagonal Gaussian posterior q(z | source), and a latent z (a sample in training, the mean in evaluation, or
one given as `latent=`) becomes the few memory vectors that are all the decoder's cross-attention reads. The loss is
the negative evidence lower bound: the cross-entropy plus the bottleneck's KL term (free bits, weighted by the
forward's `kl_weight`, which training scripts anneal). `encode_latent` gives a source's posterior,
`generate(latent=...)` decodes given latents (prior samples, interpolations, ...).

This file is copied next to every saved checkpoint for `trust_remote_code=True`: it imports only `torch`,
`transformers` and its siblings.
"""

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers.cache_utils import EncoderDecoderCache
from transformers.modeling_outputs import BaseModelOutput, BaseModelOutputWithPooling
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs
from transformers.utils.generic import can_return_tuple

from .configuration_hf_encoders import Seq2SeqVAEConfig
from .modeling_encoder import BatchLayout, EncoderModel, PackedBatch, make_norm
from .modeling_seq2seq import (
    DecoderMemory,
    Seq2SeqDecoder,
    Seq2SeqForConditionalGeneration,
    Seq2SeqLMOutput,
    Seq2SeqModel,
    Seq2SeqModelOutput,
    Seq2SeqPreTrainedModel,
    check_config_family,
    resolve_cache,
)

SEQ2SEQ_VAE_AUTO_MAP = {
    "AutoConfig": "configuration_hf_encoders.Seq2SeqVAEConfig",
    "AutoModel": "modeling_seq2seq_vae.Seq2SeqVAEModel",
    "AutoModelForSeq2SeqLM": "modeling_seq2seq_vae.Seq2SeqVAEForConditionalGeneration",
}


def gaussian_kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, 1)) per dimension: (mean^2 + exp(logvar) - 1 - logvar) / 2."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)


class VariationalBottleneck(nn.Module):
    """The variational bottleneck of `config.latent_size`: the pooled encoder output gives the mean and
    log-variance of a diagonal Gaussian posterior q(z | source); a latent z is projected to
    `config.latent_memory_tokens` normalised memory vectors, the only thing the decoder's cross-attention reads.
    `kl_loss` is its term of the loss."""

    def __init__(self, config: Seq2SeqVAEConfig):
        super().__init__()
        self.config = config
        self.latent_size, self.memory_tokens = config.latent_size, config.latent_memory_tokens
        self.posterior_proj = nn.Linear(config.hidden_size, 2 * config.latent_size)
        self.memory_proj = nn.Linear(config.latent_size, config.latent_memory_tokens * config.hidden_size)
        self.memory_norm = make_norm(config)

    def posterior(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, logvar), each (batch, latent_size), from the pooled encoder output (batch, hidden_size)."""
        mean, logvar = self.posterior_proj(pooled).chunk(2, dim=-1)
        return mean, logvar

    @staticmethod
    def sample(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """The reparameterization trick: mean + sigma * noise, differentiable in mean and logvar."""
        return mean + torch.randn_like(mean) * torch.exp(0.5 * logvar)

    def memory(self, latent: torch.Tensor) -> torch.Tensor:
        """(batch, latent_memory_tokens, hidden_size) memory for the decoder from latents (batch, latent_size)."""
        if latent.ndim != 2 or latent.shape[-1] != self.latent_size:
            raise ValueError(
                f"`latent` must have shape (batch_size, latent_size={self.latent_size}), got {tuple(latent.shape)}."
            )
        memory = self.memory_proj(latent.to(self.memory_proj.weight.dtype))
        return self.memory_norm(memory.view(latent.shape[0], self.memory_tokens, -1))

    def kl_loss(
        self, mean: torch.Tensor, logvar: torch.Tensor, tokens: torch.Tensor | int, kl_weight: float = 1.0
    ) -> torch.Tensor:
        """The KL term of the loss per labelled token: `kl_weight` x the sum, over the latent dimensions, of
        max(`config.kl_free_bits`, the dimension's KL averaged over the batch) x batch size, over `tokens`."""
        per_dimension = gaussian_kl(mean.float(), logvar.float())
        floored = per_dimension.mean(0).clamp(min=self.config.kl_free_bits).sum() * per_dimension.shape[0]
        return kl_weight * floored / tokens


@dataclass
class LatentCode(BaseModelOutputWithPooling):
    r"""
    The encoder's output with the latent the decoder is to read (`Seq2SeqVAEModel.forward` wraps a given `latent` in
    it; the source is then not read).
    """

    latent: torch.FloatTensor | None = None


@dataclass
class Seq2SeqModelOutputWithLatent(Seq2SeqModelOutput):
    r"""
    latent: (batch, latent_size) the latent the decoder read: a posterior sample in training, the posterior mean in
        evaluation, or the `latent` given.
    latent_mean / latent_logvar: (batch, latent_size) the posterior of the source (absent when a `latent` was given).
    """

    latent: torch.FloatTensor | None = None
    latent_mean: torch.FloatTensor | None = None
    latent_logvar: torch.FloatTensor | None = None


@dataclass
class Seq2SeqLMOutputWithLatent(Seq2SeqLMOutput):
    r"""
    kl: (batch,) KL divergence of each example's posterior from the prior, in nats.
    latent / latent_mean / latent_logvar: as in `Seq2SeqModelOutputWithLatent`.
    """

    kl: torch.FloatTensor | None = None
    latent: torch.FloatTensor | None = None
    latent_mean: torch.FloatTensor | None = None
    latent_logvar: torch.FloatTensor | None = None


class Seq2SeqVAEModel(Seq2SeqModel):
    """Encoder, variational bottleneck and decoder: the decoder reads the memory vectors of a latent, not the
    source."""

    config_class = Seq2SeqVAEConfig
    config: Seq2SeqVAEConfig
    _family_auto_map = SEQ2SEQ_VAE_AUTO_MAP
    output_class = Seq2SeqModelOutputWithLatent

    def __init__(self, config: Seq2SeqVAEConfig):
        check_config_family(self, config)
        Seq2SeqPreTrainedModel.__init__(self, config)
        self.encoder = EncoderModel(config)
        self.bottleneck = VariationalBottleneck(config)
        self.decoder = Seq2SeqDecoder(config)
        self.post_init()

    def encode_latent(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The posterior (mean, logvar) of each source, each (batch, latent_size). The mean is the source's code:
        decode it with `generate(latent=...)`, interpolate between two, or use it as a sentence embedding."""
        encoded = self.encoder(input_ids, attention_mask, position_ids, inputs_embeds)
        return self.bottleneck.posterior(encoded.pooler_output)

    def decoder_memory(
        self,
        encoder_outputs: BaseModelOutput,
        attention_mask: torch.Tensor | None,
        position_ids: torch.LongTensor | None,
        decoder_position_ids: torch.LongTensor | None,
        target_rows: int,
        source_layout: BatchLayout | None = None,
    ) -> DecoderMemory:
        """The memory vectors of the given latent, or of one drawn from the source's posterior (its mean in
        evaluation); a padding-free batch of targets (one row) gets them in one row too."""
        latent, mean, logvar = getattr(encoder_outputs, "latent", None), None, None
        if latent is None:
            if getattr(encoder_outputs, "pooler_output", None) is None:
                raise ValueError(
                    "The variational bottleneck reads the encoder's `pooler_output`; the given `encoder_outputs` have "
                    "none."
                )
            mean, logvar = self.bottleneck.posterior(encoder_outputs.pooler_output)
            latent = self.bottleneck.sample(mean, logvar) if self.training else mean
        memory, positions = self.bottleneck.memory(latent), None
        outputs, layout = dict(latent=latent, latent_mean=mean, latent_logvar=logvar), BatchLayout(padding=False)
        if decoder_position_ids is not None and target_rows == 1:  # each latent's memory vectors back to back
            count, tokens = memory.shape[:2]
            positions = torch.arange(tokens, device=memory.device).repeat(count)[None]
            memory = memory.reshape(1, -1, memory.shape[-1])
            offsets = torch.arange(0, count * tokens + 1, tokens, device=memory.device)
            layout = BatchLayout(PackedBatch.from_cu_seq_lens(offsets, count * tokens, tokens), padding=False)
        return DecoderMemory(memory, None, positions, outputs, layout)

    def given_encoder_outputs(
        self, encoder_outputs: BaseModelOutput | tuple | None, kwargs: dict[str, Any], source_given: bool
    ) -> BaseModelOutput | None:
        """The given `encoder_outputs`, or a `latent` (in `kwargs`) to decode from instead of a source."""
        latent = kwargs.pop("latent", None)
        encoder_outputs = super().given_encoder_outputs(encoder_outputs, kwargs, source_given)
        if latent is None:
            return encoder_outputs
        if source_given:
            raise ValueError("Give a source (`input_ids`) or a `latent` to decode from, not both.")
        given = encoder_outputs if isinstance(encoder_outputs, dict) else {}  # reported as they were
        return LatentCode(**given, latent=latent)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        cache: EncoderDecoderCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        position_ids: torch.LongTensor | None = None,
        decoder_position_ids: torch.LongTensor | None = None,
        latent: torch.Tensor | None = None,
        past_key_values: EncoderDecoderCache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> Seq2SeqModelOutputWithLatent:
        r"""
        As `Seq2SeqModel.forward`, and:
        latent: (batch, latent_size) a latent to decode from; the source is then not read. Without it, the bottleneck
            draws a latent from the source's posterior in training and takes its mean in evaluation.
        """
        if latent is not None:
            kwargs["latent"] = latent  # read by `given_encoder_outputs`
        return super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask,
            encoder_outputs=encoder_outputs,
            cache=resolve_cache(cache, past_key_values),
            inputs_embeds=inputs_embeds,
            decoder_inputs_embeds=decoder_inputs_embeds,
            use_cache=use_cache,
            position_ids=position_ids,
            decoder_position_ids=decoder_position_ids,
            **kwargs,
        )


class Seq2SeqVAEForConditionalGeneration(Seq2SeqForConditionalGeneration):
    """The sentence VAE with a language-model head: reconstructs (or, fine-tuned, translates) its source through the
    latent; `encode_latent` gives a source's posterior and `generate(latent=...)` decodes given latents."""

    config_class = Seq2SeqVAEConfig
    config: Seq2SeqVAEConfig
    _family_auto_map = SEQ2SEQ_VAE_AUTO_MAP
    base_model_class = Seq2SeqVAEModel
    output_class = Seq2SeqLMOutputWithLatent

    def encode_latent(self, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """The posterior (mean, logvar) of each source; see `Seq2SeqVAEModel.encode_latent`."""
        return self.model.encode_latent(*args, **kwargs)

    def prepare_inputs_for_generation(self, input_ids: torch.LongTensor, *args, **kwargs) -> dict:
        """A source is decoded from its posterior mean, so that greedy decoding of a source is deterministic (also
        in training mode)."""
        model_inputs = super().prepare_inputs_for_generation(input_ids, *args, **kwargs)
        encoded = model_inputs["encoder_outputs"]
        if getattr(encoded, "latent", None) is None:
            mean = self.model.bottleneck.posterior(encoded.pooler_output)[0]
            model_inputs["encoder_outputs"] = LatentCode(**encoded, latent=mean)
        return model_inputs

    def generate(self, *args, latent: torch.Tensor | None = None, **kwargs):
        """`GenerationMixin.generate`; `latent=` (batch, latent_size) decodes from given latents instead of a
        source: samples of the prior (`torch.randn`), interpolations between the `encode_latent` means of two
        sentences, ... A source is decoded from its posterior mean."""
        if latent is not None:
            source = ("inputs", "input_ids", "inputs_embeds", "encoder_outputs")
            if args or any(kwargs.get(name) is not None for name in source):
                raise ValueError("Give `generate` a source or a `latent` to decode from, not both.")
            # the latent (with its memory vectors) stands in for an encoder output: generate expands it with the
            # beams and runs no encoder
            kwargs["encoder_outputs"] = LatentCode(
                last_hidden_state=self.model.bottleneck.memory(latent), latent=latent
            )
        return super().generate(*args, **kwargs)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        cache: EncoderDecoderCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        position_ids: torch.LongTensor | None = None,
        decoder_position_ids: torch.LongTensor | None = None,
        latent: torch.Tensor | None = None,
        kl_weight: float = 1.0,
        past_key_values: EncoderDecoderCache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> Seq2SeqLMOutputWithLatent:
        r"""
        As `Seq2SeqForConditionalGeneration.forward`, and:
        latent: a latent to decode from instead of a source (see `Seq2SeqVAEModel.forward`).
        kl_weight: the KL term's weight in the loss, which training scripts anneal.

        The loss is the negative evidence lower bound per labelled token: the cross-entropy plus
        `VariationalBottleneck.kl_loss` over the same token count (no KL term when a `latent` is given).
        """
        outputs = super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask,
            encoder_outputs=encoder_outputs,
            cache=resolve_cache(cache, past_key_values),
            inputs_embeds=inputs_embeds,
            decoder_inputs_embeds=decoder_inputs_embeds,
            labels=labels,
            use_cache=use_cache,
            position_ids=position_ids,
            decoder_position_ids=decoder_position_ids,
            latent=latent,  # passed on to `Seq2SeqVAEModel.forward` with the other keyword arguments
            **kwargs,
        )
        if outputs.latent_mean is None:  # decoded from a given latent: no posterior, no KL term
            return outputs
        kl = gaussian_kl(outputs.latent_mean.float(), outputs.latent_logvar.float()).sum(-1)
        loss = outputs.loss
        if loss is not None:
            tokens = kwargs.get("num_items_in_batch")
            tokens = (labels != -100).sum() if tokens is None else tokens
            loss = loss + self.model.bottleneck.kl_loss(outputs.latent_mean, outputs.latent_logvar, tokens, kl_weight)
        return Seq2SeqLMOutputWithLatent(**{**outputs, "loss": loss, "kl": kl})


__all__ = [
    "VariationalBottleneck",
    "Seq2SeqModelOutputWithLatent",
    "Seq2SeqLMOutputWithLatent",
    "Seq2SeqVAEModel",
    "Seq2SeqVAEForConditionalGeneration",
]
