"""Train tokenizers with the `tokenizers` library and hand them over as `PreTrainedTokenizerFast`, which
`save_pretrained` writes and `AutoTokenizer.from_pretrained` reads back.

Two layouts, whose special-token ids match the configs' defaults:

- encoder (`EncoderConfig`): `[PAD]=0 [CLS]=1 [SEP]=2 [MASK]=3 [UNK]=4`; inputs become `[CLS] a [SEP]` and pairs
  `[CLS] a [SEP] b [SEP]`.
- seq2seq (`Seq2SeqConfig`): `<pad>=0 <s>=1 </s>=2 <unk>=3 <mask>=4`, then one tag per language (`<2de>`,
  `<2en>`, ...); every sequence ends with `</s>`. `<mask>` stands for the spans that denoising pretraining hides. The target-language tag is the first target token (see
  `hf_encoders.data.prepare_translation`), and at generation time `forced_bos_token_id`.

WordPiece splits on whitespace and punctuation (BERT style); BPE and Unigram use SentencePiece-style `▁` word
markers, which decode back to the original spacing (what BLEU on raw references needs).
"""

from collections.abc import Iterable, Iterator

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

ENCODER_SPECIAL_TOKENS = {
    "pad_token": "[PAD]",
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "mask_token": "[MASK]",
    "unk_token": "[UNK]",
}
SEQ2SEQ_SPECIAL_TOKENS = {
    "pad_token": "<pad>",
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "mask_token": "<mask>",
}
TOKENIZER_MODELS = ("wordpiece", "bpe", "unigram")
NORMALIZATIONS = ("NFC", "NFKC", "NFD", "NFKD", None)


def language_tag(language: str) -> str:
    """The token that asks for output in `language`: `<2de>` for German."""
    return f"<2{language}>"


def seq2seq_token_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """The ids a seq2seq model of ours or Marian takes from its tokenizer: the vocabulary size, padding, and `<s>`
    to start (also the decoder's start) and `</s>` to end generation."""
    return {
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "decoder_start_token_id": tokenizer.bos_token_id,
    }


def target_language_token(tokenizer: PreTrainedTokenizerBase, language: str) -> int | None:
    """The id of the tokenizer's `<2xx>` tag for `language`, or None if it has none (e.g. a Marian tokenizer)."""
    tag = tokenizer.convert_tokens_to_ids(language_tag(language))
    return None if tag is None or tag == tokenizer.unk_token_id else tag


def _backend(
    model: str, vocab_size: int, special_tokens: list[str], unk: str, min_frequency: int, show_progress: bool
):
    if model == "wordpiece":
        tokenizer = Tokenizer(models.WordPiece(unk_token=unk))
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=special_tokens,
            show_progress=show_progress,
        )
    elif model == "bpe":
        tokenizer = Tokenizer(models.BPE(unk_token=unk))
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
        tokenizer.decoder = decoders.Metaspace()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=special_tokens,
            show_progress=show_progress,
        )
    else:
        tokenizer = Tokenizer(models.Unigram())
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
        tokenizer.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(
            vocab_size=vocab_size, special_tokens=special_tokens, unk_token=unk, show_progress=show_progress
        )
    return tokenizer, trainer


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    kind: str = "encoder",
    model: str | None = None,
    languages: Iterable[str] = (),
    normalization: str | None = "NFKC",
    lowercase: bool = False,
    min_frequency: int = 2,
    model_max_length: int = 512,
    length: int | None = None,
    show_progress: bool = True,
) -> PreTrainedTokenizerFast:
    """Train a tokenizer on an iterator of texts (a `datasets` column: `(row["text"] for row in dataset)`, or batches
    of texts) and return it as a `PreTrainedTokenizerFast`.

    Args:
        texts: strings, or lists of strings (batches), to learn the vocabulary from.
        vocab_size: size of the vocabulary, special tokens and language tags included.
        kind: `"encoder"` (`[CLS] ... [SEP]`, with `[MASK]`) or `"seq2seq"` (`... </s>`, language tags).
        model: `"wordpiece"`, `"bpe"` or `"unigram"`; default WordPiece for encoders, Unigram for seq2seq.
        languages: language codes whose tags (`<2de>`) become special tokens (seq2seq).
        normalization: Unicode normal form applied before everything else (None for none).
        lowercase: lowercase the text.
        min_frequency: pairs/words rarer than this are not merged (WordPiece, BPE).
        model_max_length: longest input the tokenizer is meant for (what `truncation=True` cuts to).
        length: number of items in `texts`, for the progress bar.
    """
    if kind not in ("encoder", "seq2seq"):
        raise ValueError(f"kind={kind!r} is not supported; choose 'encoder' or 'seq2seq'.")
    model = model or ("wordpiece" if kind == "encoder" else "unigram")
    if model not in TOKENIZER_MODELS:
        raise ValueError(f"model={model!r} is not supported; choose one of {', '.join(TOKENIZER_MODELS)}.")
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization={normalization!r} is not supported; choose one of {NORMALIZATIONS}.")
    languages = list(dict.fromkeys(languages))
    if kind == "encoder" and languages:
        raise ValueError("Language tags are for seq2seq tokenizers; leave `languages` empty for an encoder.")
    specials = dict(ENCODER_SPECIAL_TOKENS if kind == "encoder" else SEQ2SEQ_SPECIAL_TOKENS)
    tags = [language_tag(language) for language in languages]
    special_tokens = [*specials.values(), *tags]
    if vocab_size <= len(special_tokens):
        raise ValueError(f"vocab_size={vocab_size} leaves no room beside the {len(special_tokens)} special tokens.")

    backend, trainer = _backend(model, vocab_size, special_tokens, specials["unk_token"], min_frequency, show_progress)
    steps = [getattr(normalizers, normalization)()] if normalization else []
    backend.normalizer = normalizers.Sequence([*steps, *([normalizers.Lowercase()] if lowercase else [])])
    checked = _CheckedTexts(texts)
    backend.train_from_iterator(checked, trainer=trainer, length=length)
    if not checked.any_text:
        given = f"all {checked.count} texts given are empty or whitespace" if checked.count else "no texts were given"
        raise ValueError(f"No text to train a tokenizer on: {given}; give a corpus with words in it.")

    def ids(*tokens):
        return [(token, backend.token_to_id(token)) for token in tokens]

    if kind == "encoder":
        backend.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=ids("[CLS]", "[SEP]")
        )
    else:
        backend.post_processor = processors.TemplateProcessing(
            single="$A </s>", pair="$A </s> $B:1 </s>:1", special_tokens=ids("</s>")
        )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        model_max_length=model_max_length,
        model_input_names=["input_ids", "attention_mask"],
        additional_special_tokens=tags,
        **specials,
    )
    expected = {token: i for i, token in enumerate(special_tokens)}
    assert {token: tokenizer.convert_tokens_to_ids(token) for token in special_tokens} == expected
    return tokenizer


class _CheckedTexts:
    """The strings of `texts` (strings, or batches of them), one at a time, counting them and noting whether any has
    text: the corpus is read once, by the trainer, and still checked."""

    def __init__(self, texts: Iterable[str] | Iterable[list[str]]):
        self.texts, self.count, self.any_text = texts, 0, False

    def __iter__(self) -> Iterator[str]:
        for item in self.texts:
            for text in [item] if isinstance(item, str) else item:
                self.count += 1
                self.any_text = self.any_text or (isinstance(text, str) and bool(text.strip()))
                yield text


__all__ = [
    "train_tokenizer",
    "language_tag",
    "target_language_token",
    "ENCODER_SPECIAL_TOKENS",
    "SEQ2SEQ_SPECIAL_TOKENS",
]
