"""The model registry's locally built models: random weights in a named architecture."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig

from entropic import config
from entropic.config import ConfigError, RunConfig
from entropic.models import RANDOM_SHAPES, resolve_checkpoint
from tests.conftest import compose_config

ARCHITECTURE_KEYS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "max_position_embeddings",
    "vocab_size",
    "tie_word_embeddings",
)


def test_smollm2_shape_is_the_converted_checkpoints_architecture(embedded_checkpoint):
    """model=smollm2_random stands in for SmolLM2-135M in GPU speed and memory checks, so it
    must be the same network: same config keys and, counted independently, 134,515,008
    parameters (the real checkpoint's count)."""
    real = AutoConfig.from_pretrained(embedded_checkpoint)
    shaped = LlamaConfig(
        vocab_size=real.vocab_size, tie_word_embeddings=True, **RANDOM_SHAPES["smollm2_135m"]
    )
    for key in ARCHITECTURE_KEYS:
        assert getattr(shaped, key) == getattr(real, key), key
    assert shaped.rms_norm_eps == pytest.approx(real.rms_norm_eps)
    assert shaped.rope_parameters["rope_theta"] == real.rope_parameters["rope_theta"]
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(shaped)
    # 49152*576 tied embeddings + 30 layers * (attention 576*(576+64*3*2+576) + MLP 3*576*1536
    # + two norms 2*576) + final norm 576
    per_layer = 576 * (576 + 2 * 3 * 64 + 576) + 3 * 576 * 1536 + 2 * 576
    assert sum(p.numel() for p in model.parameters()) == 49152 * 576 + 30 * per_layer + 576
    assert 49152 * 576 + 30 * per_layer + 576 == 134_515_008


def test_tiny_random_builds_with_the_real_tokenizer(tmp_path, monkeypatch, embedded_checkpoint):
    monkeypatch.setenv("ENTROPIC_CACHE", str(tmp_path))
    # the converted checkpoint's tokenizer, so the empty cache needs no second GGUF conversion
    overrides = ["model=tiny_random", f"model.tokenizer={embedded_checkpoint}"]
    run_config = RunConfig.from_hydra(compose_config(overrides, tmp_path))
    path = resolve_checkpoint(run_config.model)
    built = AutoConfig.from_pretrained(path)
    assert (built.num_hidden_layers, built.hidden_size) == (2, 64)
    # why: the tokenizer is SmolLM2's, so the embedding covers its vocabulary
    assert built.vocab_size == AutoConfig.from_pretrained(embedded_checkpoint).vocab_size


def test_config_and_builder_know_the_same_shapes():
    # why: config.py validates model.shape by name without importing the builder
    assert set(config.RANDOM_SHAPES) == set(RANDOM_SHAPES)


def test_unknown_random_shape_names_the_key():
    with pytest.raises(ConfigError, match="model.shape"):
        RunConfig.from_hydra(compose_config(["model=tiny_random", "model.shape=huge"]))


@pytest.mark.parametrize(
    ("cpuinfo", "has_bf16"),
    [
        # why: a Zen 3 EPYC lists AVX2 and no bf16 instructions; bf16 is emulated there
        ("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n", False),
        # why: an AVX-512 EPYC or Xeon with AVX-512 BF16 must be timed, not assumed
        ("processor\t: 0\nflags\t\t: avx2 avx512f avx512_bf16\n", True),
        # why: Sapphire Rapids' AMX tiles multiply bf16
        ("flags\t\t: avx2 amx_tile amx_bf16\n", True),
        # why: ARM lists its features under another key (a Graviton 3 has BF16)
        ("processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n", True),
        # why: a flag's name inside another's is not that flag
        ("flags\t\t: avx512_bf16x\n", False),
    ],
)
def test_cpu_flags_tell_which_processors_have_bf16_instructions(tmp_path, cpuinfo, has_bf16):
    from entropic.models import BF16_CPU_FLAGS, cpu_flags

    (tmp_path / "cpuinfo").write_text(cpuinfo)
    flags = cpu_flags(str(tmp_path / "cpuinfo"))
    assert bool(flags & BF16_CPU_FLAGS) == has_bf16


def test_cpu_flags_are_unknown_without_a_cpuinfo_file(tmp_path):
    # why: macOS and Windows have no /proc/cpuinfo; there the probe times the products instead
    from entropic.models import cpu_flags

    assert cpu_flags(str(tmp_path / "missing")) is None
    (tmp_path / "cpuinfo").write_text("processor\t: 0\n")
    assert cpu_flags(str(tmp_path / "cpuinfo")) is None


def test_the_timed_probe_stops_once_over_its_budget():
    # why: an emulated bf16 product takes seconds; the probe gives up on it as soon as it is
    # slower than fp32 needs it to be, and otherwise times every product
    from entropic.models import product_seconds

    assert product_seconds(torch.float32, budget=0.0) == float("inf")
    assert 0 < product_seconds(torch.float32, repeats=2) < float("inf")


def test_auto_dtype_on_cpu_follows_the_probe_and_cuda_is_bf16():
    # why: auto must resolve to a dtype a CPU run can train in, the same one every time in a
    # process (the probe is cached), and to bf16 on CUDA whatever the CPU probe says
    from entropic.config import ModelConfig
    from entropic.models import cpu_bf16_is_faster, dtype_name

    auto = ModelConfig(name="x", source="random", dtype="auto")
    expected = "bfloat16" if cpu_bf16_is_faster() else "float32"
    assert dtype_name(auto, "cpu") == expected == dtype_name(auto, "cpu")
    assert cpu_bf16_is_faster.cache_info().hits >= 1
    assert dtype_name(auto, "cuda") == "bfloat16"
    # why: an explicit dtype is never second-guessed
    assert dtype_name(ModelConfig(name="x", source="random", dtype="float32"), "cpu") == "float32"
