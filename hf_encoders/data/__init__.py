"""Everything between raw text and batches, shared by every training task, in three parts by job:

- `hf_encoders.data.loading`: local files or Hub ids -> a `DatasetDict` with a validation split (`load_text_dataset`,
  `load_parallel_dataset`, `load_monolingual_dataset`), including the probe that says when the Hub cannot be reached.
- `hf_encoders.data.preparation`: tokenize, pack, pairs, denoising segments (`pack_for_mlm`, `prepare_translation`,
  `prepare_denoising`), cached under fingerprints of data, tokenizer content and settings.
- `hf_encoders.data.collators`: `MLMCollator`, `Seq2SeqCollator`, `DenoisingCollator`, `PairCollator`, `ResumableCollator`,
  `SeededNoise`, `build_dataloader` (torch and transformers only).
- `hf_encoders.data.streaming`: the same examples made on the fly from a stream, with an exact position to resume
  from (`stream_text_dataset`, `StreamedExamples`, `mlm_blocks`).

Every public name of the four is importable from `hf_encoders.data`. Nothing is dropped or cut silently: every such
step logs its count (under the `hf_encoders.data` loggers).
"""

from .collators import (
    DenoisingCollator,
    MLMCollator,
    PairCollator,
    ResumableCollator,
    SeededNoise,
    Seq2SeqCollator,
    build_dataloader,
    special_token_table,
    word_start_table,
)
from .loading import (
    aligned_files,
    is_local,
    load_monolingual_dataset,
    load_parallel_dataset,
    load_text_dataset,
    monolingual_source_name,
    parse_named_source,
)
from .preparation import SENTENCE_END, pack_for_mlm, prepare_denoising, prepare_translation
from .streaming import StreamedExamples, StreamError, mlm_blocks, stream_text_dataset

__all__ = [
    "SENTENCE_END",
    "DenoisingCollator",
    "MLMCollator",
    "PairCollator",
    "ResumableCollator",
    "SeededNoise",
    "Seq2SeqCollator",
    "StreamError",
    "StreamedExamples",
    "aligned_files",
    "build_dataloader",
    "is_local",
    "load_monolingual_dataset",
    "load_parallel_dataset",
    "load_text_dataset",
    "mlm_blocks",
    "monolingual_source_name",
    "pack_for_mlm",
    "parse_named_source",
    "prepare_denoising",
    "prepare_translation",
    "special_token_table",
    "stream_text_dataset",
    "word_start_table",
]
