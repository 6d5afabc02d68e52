"""Text-to-text pipelines for the encoder-decoder family: `text2text-generation` and `translation`.

transformers 5 dropped these tasks from `pipeline()`. A checkpoint saved by `Seq2SeqForConditionalGeneration`
declares them under `custom_pipelines` in its config.json (the table `CUSTOM_PIPELINES` of modeling_seq2seq.py, which
does not import this file) and carries this file, so

    pipeline("translation", model="path/or/hub-id", trust_remote_code=True, tgt_lang="de")

works with or without hf_encoders installed (with it, `pipeline_class=hf_encoders.TranslationPipeline` does the same
without running the folder's code). Like the modeling files, this one imports only `torch` and `transformers`.
"""

import torch
from transformers import Pipeline
from transformers.utils import logging

logger = logging.get_logger(__name__)


class Text2TextGenerationPipeline(Pipeline):
    """`pipe("some text")` -> `[{"generated_text": ...}]` (one entry per returned sequence). Generation parameters
    (`num_beams`, `max_new_tokens`, `length_penalty`, `no_repeat_ngram_size`, ...) go to `model.generate`, given when
    the pipeline is made or per call; `max_source_length` truncates the input (with a warning from the tokenizer).
    An empty (or blank) text gives an empty one."""

    _pipeline_calls_generate = True
    _load_tokenizer = True
    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    output_key = "generated_text"

    def _sanitize_parameters(self, max_source_length: int | None = None, **generate_kwargs):
        preprocess_params = {} if max_source_length is None else {"max_source_length": max_source_length}
        return preprocess_params, generate_kwargs, {}

    def preprocess(self, text: str, max_source_length: int | None = None) -> dict[str, torch.Tensor]:
        if not isinstance(text, str):
            raise ValueError(f"{type(self).__name__} takes a string or a list of strings, got {type(text).__name__}.")
        inputs = self.tokenizer(
            text, return_tensors="pt", truncation=max_source_length is not None, max_length=max_source_length
        )
        inputs["blank"] = torch.tensor([not text.strip()])  # nothing to say: an empty output, not an invented one
        return inputs

    def _forward(self, model_inputs: dict[str, torch.Tensor], **generate_kwargs) -> dict[str, torch.Tensor]:
        blank = model_inputs.pop("blank")
        batch_size, pad = model_inputs["input_ids"].shape[0], self.tokenizer.pad_token_id
        if blank.all():
            output_ids = torch.full((batch_size, 1), pad)
        else:
            output_ids = self.model.generate(**model_inputs, **self.generate_kwargs(generate_kwargs))
        output_ids = output_ids.reshape(batch_size, -1, output_ids.shape[-1])
        output_ids[blank] = pad
        return {"output_ids": output_ids}

    def generate_kwargs(self, generate_kwargs: dict) -> dict:
        """The call's generation parameters over the pipeline's and the model's, as transformers' own generating
        pipelines merge them: `Pipeline._prepare_generate_kwargs` from transformers 5.20 on; before, the pipeline's
        `generation_config` (the model's, updated with the parameters given when the pipeline was made)."""
        if hasattr(self, "_prepare_generate_kwargs"):
            return self._prepare_generate_kwargs(generate_kwargs)
        return {"generation_config": self.generation_config, **generate_kwargs}

    def postprocess(self, model_outputs: dict[str, torch.Tensor]) -> list[dict[str, str]]:
        texts = self.tokenizer.batch_decode(model_outputs["output_ids"][0], skip_special_tokens=True)
        return [{self.output_key: text.strip()} for text in texts]


class TranslationPipeline(Text2TextGenerationPipeline):
    """`pipe("A dog runs.", tgt_lang="de")` -> `[{"translation_text": ...}]`. With `tgt_lang`, the decoder is made to
    begin with the target-language tag `<2{tgt_lang}>` (`forced_bos_token_id`), as multilingual models trained with
    such tags expect; a language the model was not trained to write (its config's `translation_directions`) is
    warned about."""

    output_key = "translation_text"

    def _sanitize_parameters(self, tgt_lang: str | None = None, **kwargs):
        preprocess_params, generate_kwargs, postprocess_params = super()._sanitize_parameters(**kwargs)
        if tgt_lang is not None:
            tag = f"<2{tgt_lang}>"
            tag_id = self.tokenizer.convert_tokens_to_ids(tag)
            if tag_id is None or tag_id == self.tokenizer.unk_token_id:
                raise ValueError(f"tgt_lang={tgt_lang!r}: the tokenizer has no language tag {tag!r}.")
            generate_kwargs["forced_bos_token_id"] = tag_id
            trained = getattr(self.model.config, "translation_directions", None) or []
            if trained and tgt_lang not in {direction.split("-", 1)[-1] for direction in trained}:
                logger.warning(
                    f"This model was trained to translate {', '.join(trained)}, not into {tgt_lang!r}: its output will "
                    "likely be in the language it was trained to write."
                )
        return preprocess_params, generate_kwargs, postprocess_params
