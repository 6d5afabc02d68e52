"""Saved encoders are sentence-transformers models: `SentenceTransformer(folder)` embeds with the pooling the config
declares, as `EncoderModel`'s `pooler_output` does, with the package installed and through trust_remote_code
without it; sentence-transformers' own pipelines saved into a folder are left as they are."""

import json

import pytest
import torch
from conftest import REFUSE_HF_ENCODERS, run_without_the_package, tiny_config
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

from hf_encoders import EncoderForMaskedLM, EncoderModel, Seq2SeqConfig, Seq2SeqForConditionalGeneration

TEXTS = ["the cat sat on the mat", "a dog ran", "the big dog sat with a small cat in the red park and the blue mat"]


def saved_encoder(folder, tokenizer, model_class=EncoderModel, **overrides):
    torch.manual_seed(0)
    model = model_class(tiny_config(vocab_size=len(tokenizer), **overrides)).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model


def pooled(model, tokenizer, texts) -> torch.Tensor:
    encoder = model if isinstance(model, EncoderModel) else model.model
    with torch.no_grad():
        return encoder(**tokenizer(texts, padding=True, return_tensors="pt")).pooler_output


@pytest.mark.parametrize("pooling", ["cls", "mean"])
@pytest.mark.parametrize("model_class", [EncoderModel, EncoderForMaskedLM])
def test_a_saved_encoder_embeds_in_sentence_transformers_as_it_pools(model_class, pooling, tokenizer, tmp_path):
    model = saved_encoder(tmp_path, tokenizer, model_class, classifier_pooling=pooling)
    modules = json.loads((tmp_path / "modules.json").read_text())
    assert [module["path"] for module in modules] == ["", "1_Pooling"]
    pooling_config = json.loads((tmp_path / "1_Pooling" / "config.json").read_text())
    assert pooling_config["pooling_mode_cls_token"] == (pooling == "cls")
    assert pooling_config["pooling_mode_mean_tokens"] == (pooling == "mean")
    embeddings = SentenceTransformer(str(tmp_path), device="cpu").encode(TEXTS, convert_to_tensor=True)
    torch.testing.assert_close(embeddings, pooled(model, tokenizer, TEXTS), atol=1e-5, rtol=1e-4)


EMBED_SCRIPT = (
    REFUSE_HF_ENCODERS
    + """
import json, sys
from sentence_transformers import SentenceTransformer
model = SentenceTransformer(sys.argv[1], device="cpu", trust_remote_code=True)
print(json.dumps(model.encode(json.loads(sys.argv[2])).tolist()))
"""
)


def test_without_the_package_through_trust_remote_code(tokenizer, tmp_path):
    model = saved_encoder(tmp_path / "model", tokenizer, classifier_pooling="mean")
    embeddings = run_without_the_package(
        EMBED_SCRIPT, tmp_path / "model", json.dumps(TEXTS), modules=tmp_path / "modules"
    )
    torch.testing.assert_close(torch.tensor(embeddings), pooled(model, tokenizer, TEXTS), atol=1e-5, rtol=1e-4)


def test_sentence_transformers_own_pipeline_is_kept(tokenizer, tmp_path):
    """A pipeline sentence-transformers saves (here with a Normalize) keeps its modules, also when the encoder is
    saved into the folder again."""
    model = saved_encoder(tmp_path / "model", tokenizer)
    transformer = Transformer(str(tmp_path / "model"))
    pipeline = SentenceTransformer(
        modules=[transformer, Pooling(transformer.get_embedding_dimension(), pooling_mode="mean"), Normalize()]
    )
    pipeline.save_pretrained(str(tmp_path / "normalized"))
    model.save_pretrained(tmp_path / "normalized")
    modules = json.loads((tmp_path / "normalized" / "modules.json").read_text())
    assert len(modules) == 3
    embeddings = SentenceTransformer(str(tmp_path / "normalized"), device="cpu").encode(TEXTS, convert_to_tensor=True)
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(len(TEXTS)))


def test_encoder_decoders_are_not_sentence_transformers(tmp_path):
    Seq2SeqForConditionalGeneration(
        Seq2SeqConfig(vocab_size=40, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=48)
    ).save_pretrained(tmp_path)
    assert not (tmp_path / "modules.json").exists()
