"""hf_encoders.translation.translate: the target-language tag starts generation when the tokenizer has tags; a
language it has no tag for is an error; a tokenizer without tags (as Marian's) translates as it is."""

import pytest
import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, MarianConfig, MarianMTModel

from hf_encoders import score_translations, translate
from hf_encoders.translation import TRANSLATION_SCORES


def test_a_language_without_a_tag_is_refused_with_the_languages_there_are(translation_run):
    model_dir = translation_run[0] / "best"
    model, tokenizer = AutoModelForSeq2SeqLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)
    with pytest.raises(ValueError, match=r"no '<2xx>' tag for the target language 'xx'; it has tags for de, en"):
        translate(model, tokenizer, ["Ein Hund rennt."], "xx", num_beams=1, show_progress=False)


def test_a_tokenizer_without_language_tags_translates_without_one(tokenizer):
    torch.manual_seed(0)
    model = MarianMTModel(
        MarianConfig(
            vocab_size=len(tokenizer),
            d_model=16,
            encoder_layers=1,
            decoder_layers=1,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            encoder_ffn_dim=32,
            decoder_ffn_dim=32,
            max_position_embeddings=32,
            pad_token_id=0,
            eos_token_id=2,
            decoder_start_token_id=0,
            forced_eos_token_id=None,
        )
    )
    outputs = translate(
        model, tokenizer, ["the cat sat", "a dog"], "de", num_beams=1, max_new_tokens=4, show_progress=False
    )
    assert len(outputs) == 2 and all(isinstance(output, str) for output in outputs)


def test_the_declared_score_names_are_what_score_translations_reports():
    """The training script checks best_metric against TRANSLATION_SCORES before it reads any data."""
    scores = score_translations(["a dog runs .", "two cats"], ["a dog runs .", "two cats sleep"])
    assert sorted(scores) == sorted(TRANSLATION_SCORES)
