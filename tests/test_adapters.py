"""The adapter group on a real GRPOTrainer and a tiny model: LoRA trains only its adapters, full
fine-tuning trains the base, beta=0 loads no reference, a LoRA checkpoint resumes, and the
confidence-only loss masks the answer tokens."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import TrainerCallback

from entropic import models
from entropic.models import RANDOM_SHAPES
from entropic.training import confidence_mask
from tests.test_training import tiny_trainer


def is_lora(name: str) -> bool:
    return "lora_A" in name or "lora_B" in name


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def losses(trainer) -> list[float]:
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def test_lora_trains_exactly_the_adapter_weights(tmp_path):
    trainer, config = tiny_trainer(tmp_path, [])
    assert config.adapter.name == "lora"  # why: LoRA is the default adapter
    assert isinstance(trainer.model, PeftModel)
    trainable = {n: p.numel() for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all(is_lora(n) for n in trainable)

    # By hand from RANDOM_SHAPES["tiny"]: hidden 64, intermediate 128, 4 heads of 64 / 4 = 16,
    # 2 key/value heads -> k and v project 64 -> 2 * 16 = 32. A LoRA pair on a Linear(in, out)
    # has A (rank x in) and B (out x rank): rank * (in + out) weights. "all-linear" is every
    # Linear of the decoder layers but not lm_head:
    #   q 64->64: 128, k 64->32: 96, v 64->32: 96, o 64->64: 128,
    #   gate 64->128: 192, up 64->128: 192, down 128->64: 192      -> 1024 * rank per layer
    shape = RANDOM_SHAPES["tiny"]
    assert (shape["hidden_size"], shape["intermediate_size"]) == (64, 128)
    assert (shape["num_attention_heads"], shape["num_key_value_heads"]) == (4, 2)
    per_layer = 128 + 96 + 96 + 128 + 192 + 192 + 192
    assert sum(trainable.values()) == shape["num_hidden_layers"] * per_layer * config.adapter.rank
    # why: 7 projections x 2 layers, each with an A and a B; no adapter on lm_head or embeddings
    assert len(trainable) == 7 * 2 * 2
    assert not any("lm_head" in n or "embed" in n for n in trainable)


def test_top_layers_adapts_only_the_last_decoder_layers(tmp_path):
    trainer, config = tiny_trainer(tmp_path, ["adapter.top_layers=1"])
    trainable = {n: p.numel() for n, p in trainer.model.named_parameters() if p.requires_grad}
    # why: the tiny model has 2 decoder layers (0 and 1); the last one alone gets the 7 projections'
    # A and B, 1024 * rank weights as counted above
    assert len(trainable) == 7 * 2 and all(".layers.1." in n for n in trainable)
    assert sum(trainable.values()) == 1024 * config.adapter.rank


def test_more_top_layers_than_the_model_has_adapts_every_layer(tmp_path):
    # why: "the last 8 layers" of a 2-layer model are both of them, not an error
    trainer, config = tiny_trainer(tmp_path, ["adapter.top_layers=8"])
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert len(trainable) == 7 * 2 * 2
    assert {".layers.0." in n for n in trainable} == {True, False}


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """Two LoRA GRPO steps with a checkpoint after each, shared by the tests that read them."""
    tmp = tmp_path_factory.mktemp("lora_run")
    trainer, _ = tiny_trainer(
        tmp, ["trainer.save_steps=1", "adapter.learning_rate=1e-2"], output_dir=tmp / "run"
    )
    before = snapshot(trainer.model)
    trainer.train()
    return SimpleNamespace(trainer=trainer, before=before, output_dir=tmp / "run")


def test_lora_grpo_moves_the_adapters_and_leaves_the_base_bit_identical(lora_run):
    trainer, before = lora_run.trainer, lora_run.before
    assert trainer.args.learning_rate == 1e-2  # why: trainer.learning_rate follows the adapter's
    assert trainer.state.global_step == 2
    assert losses(trainer) and all(math.isfinite(v) for v in losses(trainer))
    after = dict(trainer.model.named_parameters())
    moved = [n for n in before if not torch.equal(after[n], before[n])]
    assert moved and all(is_lora(n) for n in moved)
    base = [n for n in before if not is_lora(n)]
    assert base and all(torch.equal(after[n], before[n]) for n in base)
    # why: B starts at zero, so the adapter is an identity until the first step moves B
    assert any("lora_B" in n for n in moved)


def test_full_fine_tuning_trains_base_weights_without_peft(tmp_path):
    # one step is enough: Adam moves every weight with a non-zero gradient
    trainer, config = tiny_trainer(
        tmp_path, ["adapter=full", "trainer.learning_rate=1e-2", "trainer.max_steps=1"]
    )
    assert config.adapter.name == "full"
    assert not isinstance(trainer.model, PeftModel)
    assert not any(is_lora(n) for n, _ in trainer.model.named_parameters())
    assert all(p.requires_grad for p in trainer.model.parameters())
    before = snapshot(trainer.model)
    trainer.train()
    moved = [n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])]
    assert moved, "no base weight moved after a full fine-tuning step"


REFERENCE_CASES = [
    # (overrides, a separate reference model is loaded, why)
    ([], False, "beta=0 (the default): the KL term is off, TRL loads no reference"),
    (["adapter=full"], False, "beta=0 with full fine-tuning: still no reference"),
    (["adapter=full", "trainer.beta=0.04"], True, "KL on a fully trained model needs a copy"),
    # TRL 1.16 (grpo_trainer.py, "Reference model"): a PEFT policy gets ref_model=None and its
    # reference log-probs come from the same model with the adapter disabled, i.e. the base.
    (["trainer.beta=0.04"], False, "KL with LoRA: the adapter-disabled policy is the reference"),
]


@pytest.mark.parametrize(
    ("overrides", "loads_reference"),
    [case[:2] for case in REFERENCE_CASES],
    ids=[case[2] for case in REFERENCE_CASES],
)
def test_reference_model_only_when_the_kl_term_needs_one(tmp_path, overrides, loads_reference):
    trainer, config = tiny_trainer(tmp_path, overrides)
    assert trainer.beta == config.trainer.beta
    assert (trainer.ref_model is not None) == loads_reference
    if loads_reference:
        assert trainer.ref_model is not trainer.model


def test_lora_with_kl_measures_against_the_base(tmp_path):
    """No reference model is loaded, yet the KL term has a reference that stays put: at step 1
    the fresh adapter (B = 0) is the base itself, so the KL is exactly 0; after one update the
    policy has moved away from the adapter-disabled base, so the KL at step 2 is positive."""
    trainer, _ = tiny_trainer(tmp_path, ["trainer.beta=0.04", "adapter.learning_rate=1e-2"])
    assert trainer.ref_model is None
    trainer.train()
    kl = [h["kl"] for h in trainer.state.log_history if "kl" in h]
    assert len(kl) == 2
    assert kl[0] == pytest.approx(0.0, abs=1e-7)
    assert kl[1] > 1e-6


class CaptureAtStart(TrainerCallback):
    """The global step and adapter weights the trainer starts (or resumes) from."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.global_step = state.global_step
        self.lora = {n: p.detach().clone() for n, p in model.named_parameters() if is_lora(n)}


def test_a_lora_checkpoint_resumes_from_its_step_with_its_adapter(lora_run, tmp_path):
    checkpoint = lora_run.output_dir / "checkpoint-2"
    files = {p.name for p in checkpoint.iterdir()}
    # why: a LoRA checkpoint holds the adapter (plus optimiser state), never the base weights
    assert "adapter_model.safetensors" in files and "adapter_config.json" in files
    assert not files & {"model.safetensors", "pytorch_model.bin", "model.safetensors.index.json"}
    saved = load_file(checkpoint / "adapter_model.safetensors")
    assert saved and all(is_lora(k) for k in saved)
    # why: a zero B is what a fresh adapter has; the comparison below must tell the two apart
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in saved.items())

    resumed, _ = tiny_trainer(
        tmp_path,
        ["trainer.save_steps=1", "adapter.learning_rate=1e-2", "trainer.max_steps=3"],
    )
    start = CaptureAtStart()
    resumed.add_callback(start)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert start.global_step == 2  # resumed, not restarted
    assert resumed.state.global_step == 3
    # peft saves "...q_proj.lora_A.weight" for the live "...q_proj.lora_A.default.weight"
    loaded = {n.replace(".default", ""): w for n, w in start.lora.items()}
    assert loaded.keys() == saved.keys()
    for name, weight in saved.items():
        assert torch.equal(loaded[name], weight), name


@pytest.fixture(scope="module")
def tokenizer(embedded_checkpoint):
    """The real SmolLM2 tokenizer the tiny model shares."""
    return models.load_tokenizer(embedded_checkpoint)


# The embedded SmolLM2 tokenizer splits these as (checked by decoding each token):
#   "Answer: Paris\nConfidence: 80" -> Answer | : | Paris | \n | Conf | idence | : | ...
#   "Answer: Paris Confidence: 0.8" -> ... | Paris | " Confidence" | : | ...
MASK_CASES = [
    # (completion, text before the key or None when there is no key, why)
    ("Answer: Paris\nConfidence: 80", "Answer: Paris\n", "the key split over two tokens"),
    ("Answer: Paris", None, "no key: every token trains, so the format penalty still teaches"),
    ("Confidence: 80", "", "the key at the very start: nothing to mask"),
    ("Answer: Paris\nconfidence: 80", "Answer: Paris\n", "a lowercase key is still the key"),
    ("Answer: Paris Confidence: 0.8", "Answer: Paris", "the key inside a ' Confidence' token"),
    ("Answer: Paris\nConf", None, "a key cut off by the length limit is no key"),
    ("", None, "an empty completion gives an empty mask"),
]


@pytest.mark.parametrize(
    ("completion", "before_key"),
    [case[:2] for case in MASK_CASES],
    ids=[case[2] for case in MASK_CASES],
)
def test_confidence_mask_starts_at_the_key(tokenizer, completion, before_key):
    ids = tokenizer.encode(completion, add_special_tokens=False)
    mask = confidence_mask(ids, tokenizer)
    start = mask.count(0)
    assert len(mask) == len(ids)
    assert mask == [0] * start + [1] * (len(ids) - start)  # answer tokens, then the rest
    if "confidence" not in completion.lower():
        assert start == 0
        return
    if before_key is not None:
        # independently: the answer is as many tokens as the text before the key on its own
        assert start == len(tokenizer.encode(before_key, add_special_tokens=False))
    # the boundary, by decoding: the kept part opens with the token holding the key, and the
    # masked part holds no key
    assert tokenizer.decode(ids[start:]).lstrip(" <>").lower().startswith("conf")
    assert "confidence" not in tokenizer.decode(ids[:start]).lower()


def test_confidence_mask_in_the_tag_format(tokenizer):
    # "</answer><confidence>" tokenises as ... </ | answer | >< | confidence | ...: the "<" of the
    # tag shares a token with the answer's closing ">". The mask starts at the first token that
    # holds any of the key (the parser's tag match), so the "><" token is trained with the key:
    # it carries no answer content, only the format.
    ids = tokenizer.encode(
        "<answer>Paris</answer><confidence>80</confidence>", add_special_tokens=False
    )
    mask = confidence_mask(ids, tokenizer)
    start = mask.count(0)
    assert tokenizer.decode(ids[:start]) == "<answer>Paris</answer"
    assert tokenizer.decode(ids[start:]) == "><confidence>80</confidence>"


def test_confidence_mask_ignores_the_word_inside_an_answer(tokenizer):
    # why: "The Confidence-Man" (Melville) is an answer; the key is the second line's
    # "Confidence:", which entropic.parsing reads as the key
    completion = "Answer: The Confidence-Man\nConfidence: 70"
    ids = tokenizer.encode(completion, add_special_tokens=False)
    start = confidence_mask(ids, tokenizer).count(0)
    assert start == len(tokenizer.encode("Answer: The Confidence-Man\n", add_special_tokens=False))


# why: the mask is added to whatever generated the completions, TRL itself or the prefix cache
@pytest.mark.parametrize("rollout", ["hf", "prefix_cache"])
def test_confidence_only_loss_runs_through_the_rollout_func(tmp_path, rollout):
    # one step is enough to see the rollout_func feed TRL's loss
    trainer, _ = tiny_trainer(
        tmp_path, ["trainer.loss_tokens=confidence", "trainer.max_steps=1", f"rollout={rollout}"]
    )
    masked_rollout = trainer.rollout_func
    assert masked_rollout is not None
    masks: list[list[list[int]]] = []

    def recording_rollout(prompts, grpo_trainer):
        output = masked_rollout(prompts, grpo_trainer)
        masks.append(output["env_mask"])
        return output

    # the same rollout, recorded: TRL calls whatever trainer.rollout_func holds
    trainer.rollout_func = recording_rollout
    trainer.train()
    assert trainer.state.global_step == 1
    assert losses(trainer) and all(math.isfinite(v) for v in losses(trainer))
    # why: one generation batch (2 prompts x 2 completions) per step, one mask per completion
    assert len(masks) == 1 and len(masks[0]) == 4
    # why: a random model never writes the key, so every token of every completion is kept
    assert all(set(mask) <= {1} for batch in masks for mask in batch)
