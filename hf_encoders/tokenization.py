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

One corpus, one tokenizer: training gives the same vocabulary in every process. The `tokenizers` trainers keep the
corpus's words in hash maps seeded anew in each process; BPE does not depend on their order, WordPiece and Unigram do,
and `_train_wordpiece` and `_canonical_unigram` take the order out.
"""

import itertools
import json
from collections import defaultdict
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
CONTINUING_SUBWORD_PREFIX = "##"  # WordPiece's mark of a piece inside a word
# Unigram scores are rounded to this many decimals (float32 keeps about as many at scores near -10, and SentencePiece
# stores float32): far above the last-digit differences between processes, far below what changes a segmentation.
UNIGRAM_SCORE_DECIMALS = 5
# the score step that the tokenizers Unigram trainer puts between the characters it adds back
_UNIGRAM_ADDED_CHARACTER_STEP = 1e-4


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


def _backend(model: str, unk: str) -> Tokenizer:
    if model == "wordpiece":
        tokenizer = Tokenizer(models.WordPiece(unk_token=unk))
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece()
    else:
        tokenizer = Tokenizer(models.BPE(unk_token=unk) if model == "bpe" else models.Unigram())
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
        tokenizer.decoder = decoders.Metaspace()
    return tokenizer


def _trainer(
    model: str, vocab_size: int, special_tokens: list[str], unk: str, min_frequency: int, show_progress: bool
) -> trainers.Trainer:
    if model == "wordpiece":
        return trainers.WordPieceTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=special_tokens,
            show_progress=show_progress,
            continuing_subword_prefix=CONTINUING_SUBWORD_PREFIX,
        )
    if model == "bpe":
        return trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=special_tokens,
            show_progress=show_progress,
        )
    return trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=special_tokens, unk_token=unk, show_progress=show_progress
    )


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

    backend = _backend(model, specials["unk_token"])
    steps = [getattr(normalizers, normalization)()] if normalization else []
    backend.normalizer = normalizers.Sequence([*steps, *([normalizers.Lowercase()] if lowercase else [])])
    checked = _CheckedTexts(texts)
    training = (vocab_size, special_tokens, specials["unk_token"], min_frequency, show_progress)
    if model == "wordpiece":
        _train_wordpiece(backend, checked, length, *training)
    else:
        backend.train_from_iterator(checked, trainer=_trainer(model, *training), length=length)
    if not checked.any_text:
        given = f"all {checked.count} texts given are empty or whitespace" if checked.count else "no texts were given"
        raise ValueError(f"No text to train a tokenizer on: {given}; give a corpus with words in it.")
    if model == "unigram":
        backend = _canonical_unigram(backend, len(special_tokens))

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


def _train_wordpiece(
    backend: Tokenizer,
    texts: Iterable[str],
    length: int | None,
    vocab_size: int,
    special_tokens: list[str],
    unk: str,
    min_frequency: int,
    show_progress: bool,
) -> None:
    """Train `backend`'s WordPiece model on `texts`, to the same vocabulary in every process.

    The tokenizers trainer (BPE with a `##` prefix) gives each `##c` token its id in the order of a hash map seeded
    anew in each process, and of two merges with equal counts it takes the pair of lower ids: so processes learned
    different vocabularies. Here the `##c` tokens come first, sorted, as the trainer's special tokens (the only tokens
    it takes before it reads the corpus). To know them, the library first counts the corpus's words (`_word_counts`),
    and the trainer then reads those counts. The `##c` stay in the vocabulary as ordinary tokens, not special ones."""
    counts = _word_counts(backend, texts, length, show_progress)
    inside = sorted({CONTINUING_SUBWORD_PREFIX + char for word in counts for char in word[1:]})
    trainer = _trainer("wordpiece", vocab_size, [*special_tokens, *inside], unk, min_frequency, show_progress)
    counted = Tokenizer(models.WordPiece(unk_token=unk))
    counted.pre_tokenizer = pre_tokenizers.WhitespaceSplit()  # the words have no whitespace in them
    counted.train_from_iterator(_repeated_words(counts), trainer=trainer)
    backend.model = counted.model
    backend.add_special_tokens(special_tokens)


def _word_counts(backend: Tokenizer, texts: Iterable[str], length: int | None, show_progress: bool) -> dict[str, int]:
    """How often each word of `texts` (after `backend`'s normalizer and pre-tokenizer) occurs: counted by the
    tokenizers library, in parallel, as its trainers count a corpus, and read from the trainer's state."""
    counter = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    counter.normalizer, counter.pre_tokenizer = backend.normalizer, backend.pre_tokenizer
    trainer = trainers.WordLevelTrainer(vocab_size=0, show_progress=show_progress)
    counter.train_from_iterator(texts, trainer=trainer, length=length)
    words = json.loads(trainer.__getstate__()).get("WordLevelTrainer", {}).get("words")
    if not isinstance(words, dict):
        raise RuntimeError(
            "This version of `tokenizers` keeps no word counts in a WordLevelTrainer's state, which the WordPiece "
            "training here reads to be the same in every process; install a tokenizers release from 0.23.1 to the "
            "tested one (see constraints.txt)."
        )
    return words


def _repeated_words(counts: dict[str, int], chunk: int = 10_000) -> Iterator[str]:
    """Each word of `counts`, in sorted order, as often as it was counted, separated by spaces."""
    for word in sorted(counts):
        for start in range(0, counts[word], chunk):
            yield f"{word} " * min(chunk, counts[word] - start)


def _canonical_unigram(backend: Tokenizer, special_count: int) -> Tokenizer:
    """`backend` with its Unigram pieces and scores the same in every process.

    The tokenizers trainer sums its EM statistics over the words of a hash map seeded anew in each process, so the
    scores differ in their last digits (up to about 4e-11, where its digamma steps) and pieces of equal score swap
    places; and it gives the characters that it adds back at the end (seen in the corpus, dropped by EM) the scores
    lowest, lowest + 1e-4, ... in the order of a hash set. Here the scores are rounded to `UNIGRAM_SCORE_DECIMALS`,
    those characters take those scores in sorted order, and pieces of equal score are sorted by their text."""
    state = json.loads(backend.to_str())
    vocab = state["model"]["vocab"]
    scores = {piece: round(score, UNIGRAM_SCORE_DECIMALS) for piece, score in vocab[special_count:]}
    _sort_added_characters(scores)
    pieces = sorted(scores.items(), key=lambda item: (-item[1], item[0]))
    state["model"]["vocab"] = [*vocab[:special_count], *([piece, score] for piece, score in pieces)]
    return Tokenizer.from_str(json.dumps(state))


def _sort_added_characters(scores: dict[str, float]) -> None:
    """Give the characters on the trainer's ladder of lowest scores (lowest, lowest + 1e-4, ...) those scores in
    sorted order, in place."""
    if not scores:
        return
    characters = defaultdict(list)  # rounded score -> the one-character pieces that have it
    for piece, score in scores.items():
        if len(piece) == 1:
            characters[score].append(piece)
    lowest, rungs = min(scores.values()), []
    for step in itertools.count():
        rung = round(lowest + step * _UNIGRAM_ADDED_CHARACTER_STEP, UNIGRAM_SCORE_DECIMALS)
        if rung not in characters:
            break
        rungs.extend([rung] * len(characters[rung]))
    on_ladder = sorted(piece for rung in set(rungs) for piece in characters[rung])
    scores.update(zip(on_ladder, sorted(rungs), strict=True))


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
