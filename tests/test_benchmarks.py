import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.flops import attended_keys, encoder_forward_flops, mfu, peak_bf16_flops, seq2seq_forward_flops
from hf_encoders import EncoderConfig, EncoderForMaskedLM, Seq2SeqConfig, Seq2SeqForConditionalGeneration

ROOT = Path(__file__).resolve().parents[1]


def test_cpu_benchmark_runs_and_records_its_figures(tmp_path):
    output = tmp_path / "result.json"
    tiny = (
        "--hidden-size 32 --layers 2 --heads 2 --intermediate-size 64 --vocab-size 128 --batch-size 4 "
        "--min-length 8 --max-length 16 --inference-batch-size 4 --inference-min-length 4 --inference-max-length 16 "
        "--steps 2 --rounds 1 --warmup 1 --tables training inference unpadding"
    ).split()
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_encoder_cpu.py"), *tiny, "--output", str(output)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(output.read_text())
    sweep = result["unpadding"]["rows"]
    assert len(sweep) == 15 and all(row["speedup"] > 0 for row in sweep)
    assert [row["unpads"] for row in sweep[-5:]] == [False, False, True, True, True]  # small batches: the rule
    tables = [result["training"], *result["inference"].values()]
    assert [len(table["tokens_per_second"]) for table in tables] == [7, 3, 3]
    for table in tables:
        assert set(table["tokens_per_second"]) == set(table["speedup_of_ours"])
        assert all(value > 0 for value in table["tokens_per_second"].values())
        assert table["real_tokens_per_batch"] < table["padded_tokens_per_batch"]
    assert {"torch", "transformers"} <= set(result["versions"]) and result["command"].startswith("python ")


@pytest.mark.parametrize("compiled", [[], ["--compile", "--compile-backend", "eager"]], ids=["eager", "compiled"])
def test_seq2seq_benchmark_runs_and_records_its_figures(tmp_path, compiled):
    """Also with every model's decoding steps compiled from static caches (dynamo's eager backend here: the plumbing,
    not inductor's minutes of code generation); eagerly with ours deeper in the encoder than in the decoder."""
    output = tmp_path / "result.json"
    tiny = [
        "--hidden-size",
        "32",
        "--encoder-layers",
        "1",
        "--decoder-layers",
        "1",
        "--heads",
        "2",
        "--intermediate-size",
        "64",
        "--vocab-size",
        "64",
        "--train-batch-size",
        "4",
        "--train-steps",
        "1",
        "--generate-batch-size",
        "2",
        "--generate-batches",
        "1",
        "--new-tokens",
        "3",
        "--rounds",
        "1",
    ]
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench_seq2seq_cpu.py"),
            *tiny,
            *(compiled or ["--ours-layers", "2", "1"]),
            "--output",
            str(output),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(output.read_text())
    modes = {"train tokens/s", "generate sentences/s (beams=1)", "generate sentences/s (beams=4)"}
    assert set(result["median"]) == modes == set(result["speedup_of_ours"])
    count = 3 if compiled else 4  # eagerly, ours also on the padded batches
    assert all(len(per_model) == count and min(per_model.values()) > 0 for per_model in result["median"].values())
    assert result["settings"]["compile"] == bool(compiled) and len(result["warm_up_generation_seconds"]) == count
    assert all((graphs > 0) == bool(compiled) for graphs in result["compiled_graphs"].values())  # every model's
    ours = next(iter(result["parameters"]))
    assert ours.endswith("(gelu, 2+1 layers)") == (not compiled)
    assert len(result["milliseconds_per_step"]) == (0 if compiled else 2)  # eagerly only: greedy and beam 4
    for per_model in result["milliseconds_per_step"].values():  # the parts of a step add up to it
        assert len(per_model) == count
        for parts in per_model.values():
            assert min(parts.values()) > 0
            assert sum(parts.values()) - parts["step"] == pytest.approx(parts["step"])


def test_attention_benchmark_candidates_give_todays_outputs(tmp_path):
    """Every way of attending without the padded grid's waste gives the grid's outputs (flex attention left out
    here: inductor's compilation of it takes minutes on a CPU)."""
    output = tmp_path / "result.json"
    tiny = "--heads 2 --head-dim 8 --batch-size 5 --min-length 3 --max-length 9 --batches 2 --rounds 1 --buckets 2 3"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_attention_cpu.py"), *tiny.split(), "--no-flex"]
        + ["--output", str(output)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(output.read_text())
    for mode in ("training", "inference"):
        assert list(result[mode]) == ["grid (today)", "buckets of 2", "buckets of 3", "one by one"]
        assert all(row["max_abs_diff_vs_grid"] < 1e-5 and row["tokens_per_s"] > 0 for row in result[mode].values())
    assert result["grid_over_needed_attention_work"] > 1


def test_data_benchmark_runs_and_records_its_figures(tmp_path):
    corpus = tmp_path / "reviews.txt"
    corpus.write_text("".join(f"review {i}: a film about a dog that runs and a cat that sits.\n" for i in range(300)))
    output = tmp_path / "result.json"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench_data_cpu.py"),
            "--data",
            str(corpus),
            "--vocab-size",
            "120",
            "--tokenizer-sample",
            "100",
            "--block-size",
            "64",
            "--num-proc",
            "1",
            "--streamed-tokens",
            "3000",
            "--shuffle-buffer",
            "16",
            "--output",
            str(output),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(output.read_text())
    assert result["documents"] == 300 and result["tokens"] > 300 * 10
    assert 0 < result["block_fill"] <= 1 and result["load_tokenize_pack_seconds"] > 0
    streamed = result["streamed"]
    assert streamed["tokens"] >= 3000 and streamed["tokens_per_second_per_process"] > 0
    assert streamed["workers_for_3x"] == pytest.approx(
        3 * streamed["h100_mlm_base_tokens_per_second_derived"] / streamed["tokens_per_second_per_process"]
    )


# --------------------------------------------------------------------------------------------------------------------
# The FLOP counter behind MFU: checked against torch's own count of the matrix multiplications


def counted_training_flops(model, **batch) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:  # (the logits' products: the fused loss is one op to it)
        model(**batch, **({"skip_logits": False} if isinstance(model, EncoderForMaskedLM) else {})).loss.backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("activation", ["gelu", "geglu"])
def test_encoder_flops_equal_torchs_count(activation):
    torch.manual_seed(0)
    config = EncoderConfig(
        vocab_size=97,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        hidden_activation=activation,
        sparse_prediction=True,
        attn_implementation="eager",
    )
    model = EncoderForMaskedLM(config)
    ids = torch.randint(5, 97, (1, 20))
    labels = torch.full_like(ids, -100)
    labels[0, [2, 5, 11]] = ids[0, [2, 5, 11]]
    expected = 3 * encoder_forward_flops([20], 32, 2, 48, 97, predicted_tokens=3, gated_mlp=activation == "geglu")
    assert counted_training_flops(model, input_ids=ids, labels=labels) == expected


def test_seq2seq_flops_equal_torchs_count():
    torch.manual_seed(0)
    config = Seq2SeqConfig(
        vocab_size=61,
        hidden_size=32,
        num_hidden_layers=2,
        num_decoder_layers=3,
        num_attention_heads=4,
        intermediate_size=48,
        hidden_activation="geglu",
        attn_implementation="eager",
    )
    model = Seq2SeqForConditionalGeneration(config)
    source, target = torch.randint(5, 61, (1, 9)), torch.randint(5, 61, (1, 6))
    expected = 3 * seq2seq_forward_flops([9], [6], 32, 2, 3, 48, 61, gated_mlp=True)
    # eager attention multiplies the whole causal square (and masks it); model FLOPs count the triangle only
    masked_half = 3 * 3 * 2 * 2 * 32 * (6 * 6 - attended_keys(6, causal=True))
    assert counted_training_flops(model, input_ids=source, labels=target) == expected + masked_half


def test_local_attention_keys_and_device_peaks():
    assert attended_keys(10) == 100 and attended_keys(10, causal=True) == 55
    assert attended_keys(10, window=4) == sum(min(p, 2) + min(9 - p, 2) + 1 for p in range(10))
    assert attended_keys(3, window=128) == 9
    assert peak_bf16_flops("NVIDIA H100 80GB HBM3") == 989.4e12 and peak_bf16_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_bf16_flops("NVIDIA H200") == 989.4e12 and peak_bf16_flops("AMD EPYC") is None
    assert mfu(1e12, 2.0, 1e12) == 0.5 and mfu(1e12, 2.0, None) is None


def test_gpu_benchmark_dry_run_records_flops_and_mfu_fields(tmp_path):
    output = tmp_path / "gpu.json"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench_gpu.py"),
            "--dry-run",
            "--compile",
            "off",
            "--output",
            str(output),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(output.read_text())
    assert len(result["encoder"]["models"]) == 4 and len(result["seq2seq"]["models"]) == 2
    for section in ("encoder", "seq2seq"):
        assert result[section]["model_flops_per_step"] > 0
        for row in result[section]["models"].values():
            assert row["tokens_per_second"] > 0 and row["mfu"] is None  # no known peak on a CPU
    refused = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py")], capture_output=True, text=True, timeout=300
    )
    assert refused.returncode != 0 and "--dry-run" in refused.stderr
