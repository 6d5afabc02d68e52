"""Model FLOPs of a training step, written out, and MFU (model FLOPs utilisation).

Model FLOPs count the matrix multiplications the model needs for the real tokens of a batch — padding, recomputation
and kernel overheads are not counted, whoever pays for them — the convention of PaLM (Chowdhery et al. 2022, app. B).
A multiply-add is 2 FLOPs; a training step (forward + backward) is 3 x the forward. For a hidden size d, heads of
any number, MLP size i (a gated MLP, GLU, has two input projections), vocabulary V, per layer and per token:

    attention projections   2 * 4 d^2                       (query, key, value, output)
    MLP                     2 * 3 d i  (gated)  or  2 * 2 d i  (plain)
    attention scores        2 * 2 d k                       (QK^T and AV, for the k keys the token attends to)

with k = the document's length L for global attention (L(L+1)/2 summed over a causal document), or the keys inside
the window for local attention. The masked-LM head adds 2 (d^2 + d V) per predicted (masked) token. An
encoder-decoder adds, per target token and decoder layer, causal self-attention, cross-attention (query and output
projections 2 * 2 d^2, scores 2 * 2 d S for a source of S tokens) and the MLP; the cross-attention keys and values
(2 * 2 d^2) are computed once per source token and decoder layer; the LM head is 2 d V per target token.

MFU = model FLOPs per second / the device's dense bf16 peak (`PEAK_BF16_TFLOPS`).
"""

import torch

# dense (not 2:4 sparse) bf16 tensor-core peaks, in TFLOP/s, from the vendors' data sheets
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100 PCIe": 756.0, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "A10G": 70.0}


def peak_bf16_flops(device_name: str) -> float | None:
    """The dense bf16 peak (FLOP/s) of a device named like `torch.cuda.get_device_name()`; None if unknown."""
    for key, tflops in PEAK_BF16_TFLOPS.items():  # "H100 PCIe" is checked before "H100"
        if key in device_name:
            return tflops * 1e12
    return None


def attended_keys(length: int, window: int | None = None, causal: bool = False) -> int:
    """Query-key pairs of one document: L^2 (global), L(L+1)/2 (causal), or each query's keys within `window`
    tokens around it (`window // 2` on each side, as the encoder's local attention)."""
    if causal:
        return length * (length + 1) // 2
    if window is None or window // 2 >= length - 1:
        return length * length
    half = window // 2
    positions = torch.arange(length)
    return int(((positions + half).clamp(max=length - 1) - (positions - half).clamp(min=0) + 1).sum())


def encoder_forward_flops(
    lengths: list[int],
    hidden_size: int,
    num_layers: int,
    intermediate_size: int,
    vocab_size: int,
    predicted_tokens: int,
    gated_mlp: bool = True,
    local_window: int | None = None,
    global_every: int | None = None,
) -> int:
    """Forward model FLOPs of a masked-LM encoder on documents of `lengths`, the head on `predicted_tokens`.
    With `local_window`, layers i with i % `global_every` != 0 attend within the window (ModernBERT's layout)."""
    d, i = hidden_size, intermediate_size
    tokens = sum(lengths)
    per_token = 2 * 4 * d * d + 2 * (3 if gated_mlp else 2) * d * i
    flops = num_layers * per_token * tokens
    for layer in range(num_layers):
        local = local_window is not None and global_every is not None and layer % global_every != 0
        flops += sum(2 * 2 * d * attended_keys(length, local_window if local else None) for length in lengths)
    return flops + predicted_tokens * 2 * (d * d + d * vocab_size)


def seq2seq_forward_flops(
    source_lengths: list[int],
    target_lengths: list[int],
    hidden_size: int,
    encoder_layers: int,
    decoder_layers: int,
    intermediate_size: int,
    vocab_size: int,
    gated_mlp: bool = False,
) -> int:
    """Forward model FLOPs of an encoder-decoder with an LM head on every target token."""
    d, i = hidden_size, intermediate_size
    mlp = 2 * (3 if gated_mlp else 2) * d * i
    sources, targets = sum(source_lengths), sum(target_lengths)
    flops = encoder_layers * ((2 * 4 * d * d + mlp) * sources + sum(2 * 2 * d * s * s for s in source_lengths))
    per_target = 2 * 4 * d * d + 2 * 2 * d * d + mlp  # self-attention and cross-attention projections, MLP
    attention = sum(
        2 * 2 * d * (attended_keys(t, causal=True) + t * s)
        for s, t in zip(source_lengths, target_lengths, strict=True)
    )
    flops += decoder_layers * (per_target * targets + 2 * 2 * d * d * sources + attention)
    return flops + targets * 2 * d * vocab_size


def mfu(training_flops: float, seconds: float, peak_flops: float | None) -> float | None:
    """Model FLOPs utilisation: achieved model FLOP/s over the device's peak (None without a known peak)."""
    return None if not peak_flops else training_flops / seconds / peak_flops


__all__ = [
    "PEAK_BF16_TFLOPS",
    "peak_bf16_flops",
    "attended_keys",
    "encoder_forward_flops",
    "seq2seq_forward_flops",
    "mfu",
]
