import pytest
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

import hf_encoders  # noqa: F401  (registers the Auto classes)
from hf_encoders import EncoderConfig

torch.set_num_threads(2)

WORDS = "the a cat dog sat on mat ran in park big small red blue and with".split()
SPECIALS = ["[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]"]


# Put first in a script run with `python -c`: it makes `hf_encoders` unimportable (the source tree is on sys.path),
# so that whatever such a script loads must come from a saved folder's own code (trust_remote_code).
REFUSE_HF_ENCODERS = """
import importlib.abc, json, sys

class RefuseHfEncoders(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "hf_encoders":
            raise ModuleNotFoundError(f"No module named {name!r} (refused by the test)")

sys.meta_path.insert(0, RefuseHfEncoders())
"""


def tiny_config(**overrides) -> EncoderConfig:
    values = dict(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=64,
        local_attention=4,
        global_attn_every_n_layers=2,
    )
    values.update(overrides)
    return EncoderConfig(**values)


def random_batch(config: EncoderConfig, lengths=(10, 7, 3), seed: int = 0):
    """Right-padded ids and mask for sequences of the given lengths (no special ids among the tokens)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, config.vocab_size, (len(lengths), max(lengths)), generator=generator)
    mask = torch.zeros_like(ids)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
    return ids.masked_fill(mask == 0, config.pad_token_id), mask


def pack(ids: torch.Tensor, mask: torch.Tensor):
    """The padding-free form of a padded batch: one row of tokens and restarting position ids."""
    lengths = mask.sum(1).tolist()
    flat = torch.cat([row[:n] for row, n in zip(ids, lengths, strict=True)])[None]
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    return flat, positions, lengths


def unpad(padded: torch.Tensor, lengths) -> torch.Tensor:
    return torch.cat([row[:n] for row, n in zip(padded, lengths, strict=True)])[None]


@pytest.fixture
def tokenizer() -> PreTrainedTokenizerFast:
    """A small WordPiece tokenizer whose ids match `tiny_config`'s special tokens ([PAD]=0 ... [UNK]=4)."""
    vocab = {token: i for i, token in enumerate(SPECIALS + WORDS)}
    backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 1), ("[SEP]", 2)]
    )
    backend.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        unk_token="[UNK]",
        model_input_names=["input_ids", "attention_mask"],
    )
