"""The sentence VAE as a model: its KL term, the reparameterization, decoding from latents, padding-free batches,
checkpoints saved before `Seq2SeqVAEConfig` existed, and loading without the package. It overrides transformers'
generation hooks (`generate`, `prepare_inputs_for_generation`), so it runs in the version matrix (.ci/matrix)."""

import json

import pytest
import torch
from conftest import REFUSE_HF_ENCODERS, run_without_the_package
from transformers import AutoModelForSeq2SeqLM

from hf_encoders import (
    Seq2SeqConfig,
    Seq2SeqForConditionalGeneration,
    Seq2SeqVAEConfig,
    Seq2SeqVAEForConditionalGeneration,
)


def vae(seed: int = 0, **overrides) -> Seq2SeqVAEForConditionalGeneration:
    """A sentence VAE; with `latent_size=None`, the plain encoder-decoder of the same size."""
    settings = dict(
        vocab_size=40,
        hidden_size=32,
        num_hidden_layers=2,
        num_decoder_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=48,
        latent_size=6,
        latent_memory_tokens=2,
        initializer_range=0.3,
    )
    settings.update(overrides)
    torch.manual_seed(seed)
    if settings["latent_size"] is None:
        settings = {k: v for k, v in settings.items() if k not in ("latent_size", "latent_memory_tokens")}
        return Seq2SeqForConditionalGeneration(Seq2SeqConfig(**settings)).eval()
    return Seq2SeqVAEForConditionalGeneration(Seq2SeqVAEConfig(**settings)).eval()


def batch(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 40, (3, 7), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 5:] = mask[2, 3:] = 0
    labels = torch.randint(5, 40, (3, 6), generator=generator)
    labels[2, 4:] = -100
    return ids.masked_fill(mask == 0, 0), mask, labels


def test_kl_term_is_exact_for_a_known_posterior():
    model = vae()
    mean, logvar = torch.tensor([0.5, -1.0, 0.0, 2.0, 0.1, -0.3]), torch.tensor([0.0, -1.0, 1.0, -0.5, 0.2, 0.0])
    with torch.no_grad():  # a posterior that ignores the source: mean and logvar are the bias
        model.model.bottleneck.posterior_proj.weight.zero_()
        model.model.bottleneck.posterior_proj.bias.copy_(torch.cat([mean, logvar]))
    ids, mask, labels = batch()
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    expected_kl = 0.5 * (mean**2 + logvar.exp() - 1 - logvar).sum()
    torch.testing.assert_close(out.kl, expected_kl.expand(3))
    assert torch.equal(out.latent, mean.expand(3, -1))  # evaluation decodes the posterior mean
    cross_entropy = torch.nn.functional.cross_entropy(out.logits.reshape(-1, 40), labels.flatten())
    torch.testing.assert_close(out.loss, cross_entropy + 3 * expected_kl / (labels != -100).sum())

    model.config.kl_free_bits = 1.0  # every dimension below 1 nat counts as 1 nat
    floored = 0.5 * (mean**2 + logvar.exp() - 1 - logvar)
    floored = floored.clamp(min=1.0).sum()
    out = model(input_ids=ids, attention_mask=mask, labels=labels, kl_weight=0.25)
    torch.testing.assert_close(out.loss, cross_entropy + 0.25 * 3 * floored / (labels != -100).sum())


def test_reparameterization_is_differentiable_and_samples_in_training():
    model = vae().train()
    ids, mask, labels = batch()
    torch.manual_seed(1)
    out = model(input_ids=ids, attention_mask=mask, labels=labels, kl_weight=0.0)  # logvar: gradient via the sample
    assert not torch.equal(out.latent, out.latent_mean)
    out.loss.backward()
    gradient = model.model.bottleneck.posterior_proj.weight.grad
    assert gradient[:6].abs().sum() > 0 and gradient[6:].abs().sum() > 0  # mean rows and log-variance rows


def test_decoding_from_a_latent_is_deterministic_and_matches_the_source():
    model = vae()
    ids, mask, _ = batch()
    mean, _ = model.encode_latent(ids, mask)
    from_source = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False)
    first = model.generate(latent=mean, max_new_tokens=6, do_sample=False)
    assert torch.equal(first, model.generate(latent=mean, max_new_tokens=6, do_sample=False))
    assert torch.equal(first, from_source)
    beams = model.generate(latent=mean, max_new_tokens=6, num_beams=3)
    assert torch.equal(beams, model.generate(ids, attention_mask=mask, max_new_tokens=6, num_beams=3))
    halfway = model.generate(latent=(mean[:1] + mean[1:2]) / 2, max_new_tokens=6)  # interpolation
    assert halfway.shape[0] == 1
    single = model.generate(latent=mean[1:2], max_new_tokens=6)  # one row alone decodes as in the batch
    assert torch.equal(single[0], first[1, : single.shape[1]])


def test_padding_free_batches_give_the_padded_loss_with_the_bottleneck():
    model = vae()
    sources, targets = [[5, 6, 7, 8, 2], [9, 10, 2]], [[11, 12, 13, 2], [14, 2]]
    padded_ids = torch.tensor([sources[0], [*sources[1], 0, 0]])
    labels = torch.tensor([targets[0], [*targets[1], -100, -100]])
    padded = model(input_ids=padded_ids, attention_mask=(padded_ids != 0).long(), labels=labels)
    flat = model(
        input_ids=torch.tensor([sources[0] + sources[1]]),
        position_ids=torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2]]),
        labels=torch.tensor([targets[0] + targets[1]]),
        decoder_position_ids=torch.tensor([[0, 1, 2, 3, 0, 1]]),
    )
    torch.testing.assert_close(flat.loss, padded.loss)
    torch.testing.assert_close(flat.kl, padded.kl)


def test_bottleneck_round_trip_and_bad_latents(tmp_path):
    model = vae()
    model.save_pretrained(tmp_path)
    loaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path).eval()
    assert loaded.config.latent_size == 6 and loaded.config.latent_memory_tokens == 2
    ids, mask, _ = batch()
    torch.testing.assert_close(loaded.encode_latent(ids, mask)[0], model.encode_latent(ids, mask)[0])
    with pytest.raises(ValueError, match=r"latent_size=6\), got \(3, 5\)"):
        model.generate(latent=torch.zeros(3, 5))
    with pytest.raises(ValueError, match="a source or a `latent`"):
        model.generate(ids, latent=torch.zeros(3, 6))
    plain = vae(latent_size=None)
    with pytest.raises(ValueError, match="no variational bottleneck"):
        plain.generate(latent=torch.zeros(3, 6))
    with pytest.raises(ValueError, match="no variational bottleneck"):
        plain.encode_latent(ids, mask)
    with pytest.raises(ValueError, match="latent_size"):
        Seq2SeqConfig(latent_size=0)


# --------------------------------------------------------------------------------------------------------------------
# The sentence VAE's checkpoints: saved before Seq2SeqVAEConfig existed, and loaded without the package


def test_a_vae_saved_as_hf_seq2seq_loads_as_the_vae_and_never_as_the_plain_model(tmp_path):
    model = vae()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())  # the config.json a VAE was saved with before
    config.update(
        model_type="hf_seq2seq",
        architectures=["Seq2SeqForConditionalGeneration"],
        auto_map={
            "AutoConfig": "configuration_hf_encoders.Seq2SeqConfig",
            "AutoModel": "modeling_seq2seq.Seq2SeqModel",
            "AutoModelForSeq2SeqLM": "modeling_seq2seq.Seq2SeqForConditionalGeneration",
        },
    )
    (tmp_path / "config.json").write_text(json.dumps(config))
    for load in (AutoModelForSeq2SeqLM.from_pretrained, Seq2SeqForConditionalGeneration.from_pretrained):
        with pytest.raises(ValueError, match=r"latent_size`=6.*Seq2SeqVAEForConditionalGeneration\.from_pretrained"):
            load(tmp_path)
    with pytest.raises(ValueError, match="Seq2SeqForConditionalGeneration takes a `Seq2SeqConfig`"):
        Seq2SeqForConditionalGeneration(model.config)

    loaded = Seq2SeqVAEForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert isinstance(loaded.config, Seq2SeqVAEConfig) and loaded.config.latent_memory_tokens == 2
    ids, mask, labels = batch()
    torch.testing.assert_close(loaded(ids, mask, labels=labels).loss, model(ids, mask, labels=labels).loss)
    loaded.save_pretrained(tmp_path / "again")  # saved again: the VAE's own model type and auto classes
    config = json.loads((tmp_path / "again" / "config.json").read_text())
    assert config["model_type"] == "hf_seq2seq_vae"
    assert config["auto_map"]["AutoModelForSeq2SeqLM"] == "modeling_seq2seq_vae.Seq2SeqVAEForConditionalGeneration"
    assert type(AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "again")) is Seq2SeqVAEForConditionalGeneration

    plain = vae(latent_size=None)  # a plain model's config.json of that time carried the bottleneck's defaults
    plain.save_pretrained(tmp_path / "plain")
    config = json.loads((tmp_path / "plain" / "config.json").read_text())
    config.update(latent_size=None, latent_memory_tokens=1, kl_free_bits=0.0)
    (tmp_path / "plain" / "config.json").write_text(json.dumps(config))
    loaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "plain")
    assert type(loaded) is Seq2SeqForConditionalGeneration and not hasattr(loaded.config, "latent_size")


VAE_REMOTE_SCRIPT = (
    REFUSE_HF_ENCODERS
    + """
import torch
from transformers import AutoModel, AutoModelForSeq2SeqLM

folder, expected_file = sys.argv[1], sys.argv[2]
expected = torch.load(expected_file)
model = AutoModelForSeq2SeqLM.from_pretrained(folder, trust_remote_code=True).eval()
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
with torch.no_grad():
    mean = model.encode_latent(expected["ids"], expected["mask"])[0]
generated = model.generate(latent=expected["latent"], max_new_tokens=6, do_sample=False)
base = AutoModel.from_pretrained(folder, trust_remote_code=True)
print(json.dumps({
    "class": type(model).__name__,
    "base": type(base).__name__,
    "mean": float((mean - expected["mean"]).abs().max()),
    "generated": bool(torch.equal(generated, expected["generated"])),
}))
"""
)


def test_a_saved_vae_loads_without_the_package(tmp_path):
    model = vae()
    model.save_pretrained(tmp_path / "model")
    for code in (
        "modeling_seq2seq_vae.py",
        "modeling_seq2seq.py",
        "modeling_encoder.py",
        "configuration_hf_encoders.py",
        "pipeline_seq2seq.py",
    ):
        assert (tmp_path / "model" / code).exists(), code
    ids, mask, _ = batch()
    with torch.no_grad():
        mean = model.encode_latent(ids, mask)[0]
    latent = torch.randn(2, 6, generator=torch.Generator().manual_seed(0))
    generated = model.generate(latent=latent, max_new_tokens=6, do_sample=False)
    torch.save(
        {"ids": ids, "mask": mask, "mean": mean, "latent": latent, "generated": generated}, tmp_path / "expected.pt"
    )
    result = run_without_the_package(
        VAE_REMOTE_SCRIPT, tmp_path / "model", tmp_path / "expected.pt", modules=tmp_path / "modules"
    )
    assert result["class"] == "Seq2SeqVAEForConditionalGeneration" and result["base"] == "Seq2SeqVAEModel", result
    assert result["mean"] < 1e-5 and result["generated"], result
