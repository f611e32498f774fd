"""adapter=readout (entropic.readout): the centred, gated input of a LoRA, its fit at the stated
number's position, and its centre saved with the adapter and restored on resume; the
first-digit loss mask that goes with it."""

from __future__ import annotations

import datasets
import pytest
import torch
from mlflow.tracking import MlflowClient
from peft import get_peft_model
from safetensors.torch import load_file

from entropic import jobs, models, readout
from entropic.config import ConfigError, RunConfig
from entropic.jobs import train as train_job
from entropic.prefix_scoring import shared_prefix_calls
from entropic.training import first_digit_mask, meta_model, number_mask, peft_config
from tests.conftest import compose_config
from tests.test_resume import TINY, CtrlC, only_run, with_callback
from tests.test_training import QUESTIONS, tiny_trainer

READOUT = [
    "adapter=readout",
    "trainer.loss_tokens=first_digit",
    "adapter.learning_rate=1e-2",
    "trainer.save_steps=1",
]


def test_the_centred_input_by_hand():
    centred = readout.CentredInput(3)
    centred.mean.copy_(torch.tensor([1.0, 2.0, 3.0]))
    centred.level.copy_(torch.tensor([0.5, 0.0, 0.0]))
    centred.radius.fill_(2.0)
    x = torch.tensor([[1.0, 2.0, 4.0], [5.0, 5.0, 5.0], [1.0, 2.0, 3.0]])
    # row 0: x - mean = (0, 0, 1), |.| = 1 < 2 -> (0.5, 0, 1) with the level
    # row 1: x - mean = (4, 3, 2), |.| = 5.39 >= 2 -> gated to zero
    # row 2: x = mean -> the level alone
    expected = torch.tensor([[0.5, 0.0, 1.0], [0.0, 0.0, 0.0], [0.5, 0.0, 0.0]])
    assert torch.equal(centred(x), expected)
    # why: a fresh centre (radius 0) is a closed gate, so an installed but unfitted read-out
    # reads nothing
    assert torch.equal(readout.CentredInput(3)(x), torch.zeros(3, 3))


def test_further_gates_centre_by_the_nearest_open_mean_by_hand():
    centred = readout.CentredInput(2, after=2)
    centred.mean.copy_(torch.tensor([0.0, 0.0]))
    centred.level.copy_(torch.tensor([0.5, 0.0]))
    centred.radius.fill_(1.0)
    centred.after_mean.copy_(torch.tensor([[10.0, 0.0], [13.0, 0.0]]))
    centred.after_radius.copy_(torch.tensor([4.0, 1.0]))
    x = torch.tensor([[0.5, 0.0], [11.0, 1.0], [12.8, 0.0], [5.5, 0.0], [30.0, 0.0]])
    # row 0: first gate, distance .5 < 1 -> (0.5, 0) + level (0.5, 0)
    # row 1: second gate, distance 1.41 of 4 -> (1, 1); the third is 2.24 away, past its 1
    # row 2: both further gates open, at 2.8 / 4 = .70 and .2 / 1 = .20 of their radii: the
    #        third is the nearer -> (-0.2, 0), with no level (the level is the first gate's)
    # row 3: 5.5 from the first mean, 4.5 from the second: every gate shut -> zero
    # row 4: far from all -> zero
    expected = torch.tensor([[1.0, 0.0], [1.0, 1.0], [-0.2, 0.0], [0.0, 0.0], [0.0, 0.0]])
    torch.testing.assert_close(centred(x), expected)
    assert centred.open[:, 0].tolist() == [True, True, True, False, False]
    assert centred.which[:3].tolist() == [0, 1, 2]
    # why: a fresh centre (every radius 0) is shut everywhere
    assert torch.equal(readout.CentredInput(2, after=2)(x), torch.zeros(5, 2))


PROMPT = list(range(100, 112))  # 12 tokens every row starts with


@pytest.mark.parametrize(
    ("answers", "shared"),
    [
        # why: two rows that part after the prompt share it whole
        ([(PROMPT + [1, 2], [None]), (PROMPT + [3], [None])], 12),
        # why: a gate's own token is never inside the prefix, where it would count as elsewhere
        ([(PROMPT + [1, 2], [10]), (PROMPT + [3], [None])], 10),
        # why: every row keeps a token of its own after the prefix, even when rows are equal
        ([(PROMPT, [None]), (PROMPT, [None])], 11),
        # why: under MIN_SHARED_TOKENS (8) a prefix is not worth a call of its own
        ([(PROMPT[:6] + [1], [None]), (PROMPT[:6] + [2], [None])], 0),
        ([(PROMPT + [1], [5]), (PROMPT + [2], [None])], 0),
    ],
)
def test_the_shared_prefix_stops_before_any_gate_and_each_rows_last_token(answers, shared):
    assert readout.shared_prefix(answers) == shared


def test_readout_adapts_the_last_down_proj_alone(tmp_path):
    trainer, config = tiny_trainer(tmp_path, READOUT)
    layers = readout.lora_layers(trainer.model)
    # why: adapter=readout is a LoRA on the last decoder layer's down_proj (the tiny model has
    # layers 0 and 1)
    assert list(layers) == ["base_model.model.model.layers.1.mlp.down_proj"]
    assert config.adapter.centre is not None and config.trainer.loss_tokens == "first_digit"


@pytest.mark.parametrize(
    ("shared", "calls"),
    [
        # why: rows with nothing in common run as one padded batch each (2 batches of 16 or less)
        (0, 2),
        # why: rows that start alike (the prompt's system message and few-shot turns) run the
        # shared prefix once per batch, then their own tokens (entropic.prefix_scoring, which
        # build_trainer installs on a CPU): the same inputs from twice as many, smaller, calls
        (12, 4),
    ],
)
def test_layer_inputs_of_padded_batches_match_one_row_at_a_time(tmp_path, shared, calls):
    trainer, _ = tiny_trainer(tmp_path, READOUT)
    model = trainer.model.eval()
    layers = readout.lora_layers(model)
    generator = torch.Generator().manual_seed(0)
    prefix = torch.randint(5, 200, (shared,), generator=generator).tolist()
    # rows of different lengths, more than one batch of them
    rows = [
        prefix + torch.randint(5, 200, (n,), generator=generator).tolist()
        for n in [3, 9, 5, 12, 7] * 4
    ]
    (name,) = layers
    counted = layers[name].register_forward_pre_hook(lambda module, args: counts.append(1))
    counts = []
    batched = readout.layer_inputs(model, rows, layers)
    counted.remove()
    assert len(counts) == calls
    assert batched[name].shape == (len(rows), layers[name].in_features)
    # independently: each row alone, unpadded, its input at the last token caught by a hook
    alone = []
    hook = layers[name].register_forward_pre_hook(
        lambda module, args: alone.append(args[0][0, -1].float())
    )
    try:
        with torch.no_grad():
            for row in rows:
                model(input_ids=torch.tensor([row]))
    finally:
        hook.remove()
    torch.testing.assert_close(batched[name], torch.stack(alone), atol=1e-5, rtol=1e-4)


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_the_gate_decides_whether_the_trained_adapter_acts(tmp_path):
    trainer, _ = tiny_trainer(tmp_path, READOUT)
    centres = readout.install(trainer.model)
    (centre,) = centres.values()
    centre.radius.fill_(1e9)  # an open gate: the adapter reads x - mean everywhere
    trainer.train()
    model = trainer.model.eval()
    ids = torch.tensor([[5, 17, 40, 99, 3]])
    with model.disable_adapter():
        base = logits(model, ids)
    # why: two steps at a high rate moved the adapter, so an open gate changes the output
    assert not torch.allclose(logits(model, ids), base, atol=1e-6)
    centre.radius.fill_(0.0)  # closed everywhere: the adapter reads zero, the model is the base
    torch.testing.assert_close(logits(model, ids), base)


def test_the_digit_temperature_divides_the_logits_where_the_gate_is_open(tmp_path):
    trainer, _ = tiny_trainer(tmp_path, READOUT)
    model = trainer.model.eval()
    centres = readout.install(model)
    (centre,) = centres.values()
    (layer,) = readout.lora_layers(model).values()
    generator = torch.Generator().manual_seed(0)
    # two rows that share a 12-token prefix, so GRPO's scoring runs the prefix once
    # (entropic.prefix_scoring, installed by build_trainer on a CPU), then 6 tokens each
    prefix = torch.randint(5, 200, (12,), generator=generator)
    ids = torch.stack([torch.cat([prefix, torch.randint(5, 200, (6,), generator=generator)])
                       for _ in range(2)])  # fmt: skip
    row, position = 0, 14  # one of row 0's own tokens
    inputs = []
    hook = layer.register_forward_pre_hook(lambda module, args: inputs.append(args[0][0]))
    plain = logits(model, ids[row : row + 1])[0]
    hook.remove()
    # the gate opens at that position alone: its input is the mean, every other one is far
    centre.mean.copy_(inputs[0][position])
    centre.radius.fill_(1e-3)
    readout.at_the_number(model, centres, temperature=0.5)
    sharp = logits(model, ids[row : row + 1])[0]
    expected = plain.clone()
    expected[position] *= 2
    # why: at temperature 0.5 the logits that predict the token after the open position are
    # doubled, and no others change
    torch.testing.assert_close(sharp, expected)
    # why: the loss scores through TRL's fused head, over the shared prefix, at TRL's own
    # temperature on top: the label after the open position gets log_softmax(2 z / T)
    calls = shared_prefix_calls(model)
    labels = ids.clone()
    labels[:, :12] = -100
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels,
                    fused_lm_head=True)  # fmt: skip
    assert shared_prefix_calls(model) == calls + 1
    log_probs = torch.log_softmax(expected / trainer.temperature, dim=-1)
    torch.testing.assert_close(
        out.log_probs[row, 12:], log_probs[12:-1].gather(1, ids[row, 13:, None])[:, 0]
    )
    # why: with the adapters off no gate runs (the fit reads the base model), so no logit is
    # divided
    with model.disable_adapter():
        torch.testing.assert_close(logits(model, ids[row : row + 1])[0], plain)


def test_the_level_shift_moves_the_logits_where_the_gate_is_open(tmp_path):
    trainer, _ = tiny_trainer(tmp_path, READOUT)
    model = trainer.model.eval()
    centres = readout.install(model)
    (centre,) = centres.values()
    (layer,) = readout.lora_layers(model).values()
    ids = torch.randint(5, 200, (1, 9), generator=torch.Generator().manual_seed(2))
    position = 6
    inputs = []
    hook = layer.register_forward_pre_hook(lambda module, args: inputs.append(args[0][0]))
    plain = logits(model, ids)[0]
    hook.remove()
    centre.mean.copy_(inputs[0][position])
    centre.radius.fill_(1e-3)
    readout.at_the_number(model, centres, temperature=0.5, shift_rate=2.0)
    # why: the shift starts at zero, so a fresh one leaves the model as it was, but for the
    # temperature
    start = plain.clone()
    start[position] *= 2
    torch.testing.assert_close(logits(model, ids)[0], start)
    shift = torch.randn(centre.shift.shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        centre.shift.copy_(shift)
    head = model.get_output_embeddings().weight
    # the head is linear in the norm's output h (no bias): logits = head @ h, so at the open
    # position head @ (h + 2 * shift) / 0.5 = 2 * plain + 4 * head @ shift; elsewhere plain
    expected = plain.clone()
    expected[position] = 2 * plain[position] + 4 * head @ shift
    torch.testing.assert_close(logits(model, ids)[0], expected)


def test_each_further_gate_moves_the_logits_by_its_own_shift(tmp_path):
    trainer, _ = tiny_trainer(tmp_path, READOUT)
    model = trainer.model.eval()
    centres = readout.install(model, after=2)
    (centre,) = centres.values()
    (layer,) = readout.lora_layers(model).values()
    ids = torch.randint(5, 200, (1, 9), generator=torch.Generator().manual_seed(2))
    inputs = []
    hook = layer.register_forward_pre_hook(lambda module, args: inputs.append(args[0][0]))
    plain = logits(model, ids)[0]
    hook.remove()
    # the first gate at position 2, the further ones at 5 and 7: each opens there alone
    centre.mean.copy_(inputs[0][2])
    centre.radius.fill_(1e-3)
    centre.after_mean.copy_(inputs[0][[5, 7]])
    centre.after_radius.fill_(1e-3)
    readout.at_the_number(model, centres, shift_rate=2.0)
    assert centre.after_shift.shape == (2, centre.shift.shape[0])
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        centre.shift.copy_(torch.randn(centre.shift.shape, generator=generator))
        centre.after_shift.copy_(torch.randn(centre.after_shift.shape, generator=generator))
    head = model.get_output_embeddings().weight
    # logits = head @ h (no bias): each open position gets 2 x head @ its own gate's shift
    expected = plain.clone()
    expected[2] += 2 * head @ centre.shift
    expected[5] += 2 * head @ centre.after_shift[0]
    expected[7] += 2 * head @ centre.after_shift[1]
    torch.testing.assert_close(logits(model, ids)[0], expected)


def test_the_level_shift_trains_saves_and_resumes(tmp_path):
    shifted = [*READOUT, "adapter.centre.shift_rate=1.0"]
    trainer, config = tiny_trainer(tmp_path / "first", shifted)
    centres = readout.install(trainer.model)
    (centre,) = centres.values()
    centre.radius.fill_(1e9)  # open everywhere, so the shift is in every token's logits
    readout.at_the_number(trainer.model, centres, shift_rate=config.adapter.centre.shift_rate)
    trainer.train()
    trained = centre.shift.detach().clone()
    # why: the shift is a parameter GRPO's optimizer holds: two steps at a high rate move it
    assert trained.abs().max() > 0
    checkpoint = tmp_path / "first" / "checkpoint-2"
    saved = load_file(checkpoint / readout.ADAPTER_FILE)
    assert torch.equal(saved["base_model.model.model.layers.1.mlp.down_proj.lora_dropout.shift"],
                       trained)  # fmt: skip

    resumed, _ = tiny_trainer(tmp_path / "second", shifted)
    fresh = readout.install(resumed.model)
    readout.at_the_number(resumed.model, fresh, shift_rate=1.0)
    readout.restore(str(checkpoint), fresh)
    assert torch.equal(next(iter(fresh.values())).shift, trained)

    # why: a read-out trained without a shift cannot resume one that has it
    plain, _ = tiny_trainer(tmp_path / "plain", READOUT)
    readout.install(plain.model)
    plain.train()
    with pytest.raises(ConfigError, match="shift_rate: .* holds no shift .* Fix: "):
        readout.restore(str(tmp_path / "plain" / "checkpoint-2"), fresh)


def test_further_gates_and_their_shifts_save_and_resume(tmp_path):
    gated = [*READOUT, "adapter.centre.shift_rate=1.0"]
    trainer, _ = tiny_trainer(tmp_path / "first", gated)
    centres = readout.install(trainer.model, after=2)
    (centre,) = centres.values()
    generator = torch.Generator().manual_seed(4)
    centre.after_mean.copy_(torch.randn(centre.after_mean.shape, generator=generator))
    centre.after_radius.copy_(torch.tensor([1e9, 1e9]))  # open everywhere: the shifts train
    readout.at_the_number(trainer.model, centres, shift_rate=1.0)
    set_by_hand = centre.after_mean.clone()
    trainer.train()
    trained = centre.after_shift.detach().clone()
    # why: the further gates' shift is a parameter the optimizer holds
    assert trained.abs().max() > 0
    checkpoint = tmp_path / "first" / "checkpoint-2"

    resumed, _ = tiny_trainer(tmp_path / "second", gated)
    fresh = readout.install(resumed.model, after=2)
    readout.at_the_number(resumed.model, fresh, shift_rate=1.0)
    readout.restore(str(checkpoint), fresh)
    (back,) = fresh.values()
    assert torch.equal(back.after_mean, set_by_hand)
    assert torch.equal(back.after_radius, torch.tensor([1e9, 1e9]))
    assert torch.equal(back.after_shift, trained)

    # why: a read-out trained without the further gates cannot resume as one that has them
    plain, _ = tiny_trainer(tmp_path / "plain", gated)
    plain_centres = readout.install(plain.model)
    readout.at_the_number(plain.model, plain_centres, shift_rate=1.0)
    plain.train()
    with pytest.raises(ConfigError, match="after_one: .* holds no gates after a first 1 .* Fix: "):
        readout.restore(str(tmp_path / "plain" / "checkpoint-2"), fresh)


def test_a_digit_temperature_is_refused_where_logits_are_not_linear_in_the_norm(tmp_path):
    trainer, config = tiny_trainer(tmp_path, READOUT)
    centres = readout.install(trainer.model)
    # why: the job's check runs on the architecture alone (meta device, no weights); the tiny
    # Llama's head has no bias and no soft-cap, so its final norm is what gets scaled
    architecture = meta_model(models.resolve_checkpoint(config.model))
    assert readout.final_norm(architecture, 0.5) is architecture.model.norm
    architecture.config.final_logit_softcapping = 30.0
    with pytest.raises(ValueError, match="adapter.centre.temperature=0.5: .* Fix: "):
        readout.final_norm(architecture, 0.5)
    trainer.model.get_base_model().config.final_logit_softcapping = 30.0
    with pytest.raises(ValueError, match="adapter.centre.temperature=0.5: .* Fix: "):
        readout.at_the_number(trainer.model, centres, temperature=0.5)
    with pytest.raises(
        ValueError,
        match="adapter.centre.shift_rate=2.0: .* Fix: adapter.centre.shift_rate=0$",
    ):
        readout.at_the_number(trainer.model, centres, shift_rate=2.0)
    # why: temperature 1 and no shift change nothing, so no model is refused them
    assert readout.at_the_number(trainer.model, centres, 1.0, 0.0) is None


def test_a_readout_checkpoint_saves_its_centre_and_resumes_with_it(tmp_path):
    trainer, _ = tiny_trainer(tmp_path / "first", READOUT)
    (centre,) = readout.install(trainer.model).values()
    generator = torch.Generator().manual_seed(1)
    centre.mean.copy_(torch.randn(centre.mean.shape, generator=generator))
    centre.level.copy_(torch.randn(centre.level.shape, generator=generator))
    centre.radius.fill_(123.0)
    set_by_hand = {b: getattr(centre, b).clone() for b in ("mean", "level", "radius")}
    trainer.train()
    checkpoint = tmp_path / "first" / "checkpoint-2"
    saved = load_file(checkpoint / readout.ADAPTER_FILE)
    stem = "base_model.model.model.layers.1.mlp.down_proj.lora_dropout."
    for buffer, value in set_by_hand.items():
        # why: the centre is not trained: what the checkpoint holds is what was set
        assert torch.equal(saved[stem + buffer], value), buffer

    resumed, _ = tiny_trainer(tmp_path / "second", [*READOUT, "trainer.max_steps=3"])
    centres = readout.install(resumed.model)
    (fresh,) = centres.values()
    readout.restore(str(checkpoint), centres)
    for buffer, value in set_by_hand.items():
        assert torch.equal(getattr(fresh, buffer), value), buffer
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 3
    # why: the trainer's own resume loads the same buffers again; training leaves them alone
    for buffer, value in set_by_hand.items():
        assert torch.equal(getattr(fresh, buffer), value), buffer


def test_a_checkpoint_without_a_centre_is_refused_on_resume(tmp_path):
    plain = [o for o in READOUT if o != "adapter=readout"]
    trainer, _ = tiny_trainer(
        tmp_path / "plain", [*plain, "adapter.target_modules=[down_proj]", "adapter.top_layers=1"]
    )
    trainer.train()
    resumed, _ = tiny_trainer(tmp_path / "readout", READOUT)
    centres = readout.install(resumed.model)
    with pytest.raises(ConfigError, match="adapter.centre: .* holds no read-out centre"):
        readout.restore(str(tmp_path / "plain" / "checkpoint-2"), centres)


def test_a_readout_rerun_over_a_plain_checkpoint_is_refused_before_the_run_reopens(
    tmp_path, mlflow_uri, monkeypatch
):
    def config(adapter: list[str]):
        return compose_config(
            [
                *TINY,
                *adapter,
                "trainer.max_steps=2",
                "trainer.save_steps=1",
                f"tracking.tracking_uri={mlflow_uri}",
            ],
            tmp_path / "run",
        )

    plain = ["adapter.target_modules=[down_proj]", "adapter.top_layers=1"]
    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        with_callback(patch, CtrlC(step=1))
        jobs.run(config(plain))
    client = MlflowClient(mlflow_uri)
    killed = only_run(client)

    def evaluated(*args, **kwargs):
        raise AssertionError("the base model was evaluated before the refusal")

    monkeypatch.setattr(train_job, "evaluate_base", evaluated)
    with pytest.raises(ConfigError, match="holds no read-out centre for any layer"):
        jobs.run(config(["adapter=readout", "trainer.loss_tokens=first_digit"]))
    # why: refused before the job reopened the run, so the earlier run is left as it was
    after = only_run(client)
    assert after.info.run_id == killed.info.run_id
    assert after.info.status == "KILLED"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["adapter=full", "+adapter.centre.radius=5"], "adapter.centre: centres a LoRA"),
        (["adapter.centre.radius=0"], "adapter.centre.radius: must be > 0"),
        (["adapter.centre.questions=0"], "adapter.centre.questions: 0 is not a positive"),
        (["rollout=vllm_colocate"], "adapter.centre: rollout=vllm_colocate generates from"),
        (["compute=zero3"], "adapter.centre: ZeRO-3 shards"),
        (
            ["adapter.centre.after_one=true", "trainer.loss_tokens=first_digit"],
            "adapter.centre.after_one: trainer.loss_tokens=first_digit leaves the tokens",
        ),
    ],
)
def test_what_cannot_carry_the_gate_is_refused_before_any_weights_load(
    tmp_path, overrides, message
):
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_hydra(compose_config(["adapter=readout", *overrides], tmp_path))


@pytest.fixture(scope="module")
def tokenizer(embedded_checkpoint):
    return models.load_tokenizer(embedded_checkpoint)


@pytest.mark.parametrize(
    ("completion", "digit"),
    [
        ("Answer: Paris\nConfidence: 80", "8"),
        ("Answer: 1984\nConfidence: 35", "3"),  # a number in the answer is not the confidence
        ("Answer: Paris\nConfidence: high", None),
        ("Answer: Paris", None),
    ],
)
def test_the_first_digit_mask_keeps_the_number_first_digit_alone(tokenizer, completion, digit):
    ids = tokenizer.encode(completion, add_special_tokens=False)
    mask = first_digit_mask(ids, tokenizer)
    assert len(mask) == len(ids)
    if digit is None:
        # why: without a number every token trains, so the format penalty still teaches
        assert mask == [1] * len(ids)
        return
    assert sum(mask) == 1
    at = mask.index(1)
    assert tokenizer.decode([ids[at]]).strip() == digit
    # independently: the text before that token ends with the key
    assert tokenizer.decode(ids[:at]).rstrip().endswith("Confidence:")


@pytest.mark.parametrize(
    ("completion", "kept"),
    [
        # a first digit other than 1: that digit alone, as first_digit
        ("Answer: Paris\nConfidence: 80", ["8"]),
        # after a 1 the token that chooses 10-19 or more, and after "10" the next one
        ("Answer: Paris\nConfidence: 15", ["1", "5"]),
        ("Answer: 1984\nConfidence: 100", ["1", "0", "0"]),
        ("Answer: Paris\nConfidence: 10<|im_end|>", ["1", "0", "<|im_end|>"]),
        ("Answer: Paris\nConfidence: 1", ["1"]),
    ],
)
def test_the_number_mask_keeps_the_tokens_at_the_read_out_gates(tokenizer, completion, kept):
    ids = tokenizer.encode(completion, add_special_tokens=False)
    mask = number_mask(ids, tokenizer)
    assert len(mask) == len(ids)
    assert [tokenizer.decode([i]) for i, m in zip(ids, mask, strict=True) if m] == kept
    # independently: the first kept token follows the key
    assert tokenizer.decode(ids[: mask.index(1)]).rstrip().endswith("Confidence:")
    # why: without a number every token trains, as with the other masks
    plain = tokenizer.encode("Answer: Paris", add_special_tokens=False)
    assert number_mask(plain, tokenizer) == [1] * len(plain)


def test_the_fit_centres_where_the_real_model_writes_its_number(tmp_path, embedded_checkpoint):
    # with the gates after a first 1 as well: one fit on the real model checks all three
    config = RunConfig.from_hydra(
        compose_config(
            [
                "adapter=readout",
                "compute=cpu",
                "adapter.centre.radius=5",
                "adapter.centre.after_one=true",
                "trainer.loss_tokens=number",
            ],
            tmp_path,
        )  # fmt: skip
    )
    model = models.load_model(embedded_checkpoint, torch.float32, "cpu").eval()
    tokenizer = models.load_tokenizer(embedded_checkpoint)
    questions = datasets.Dataset.from_dict(QUESTIONS)
    (rows, after_1, after_10), answers = readout.number_positions(
        model, tokenizer, questions, config
    )
    assert rows  # the embedded model states a number for most of these
    # why: every answer whole, and each further gate's column in it is its row's last token
    assert len(answers) == len(questions)
    for gate_rows, gate in ((after_1, 0), (after_10, 1)):
        reached = [(whole, columns[gate]) for whole, columns in answers if columns[gate]]
        assert [whole[: column + 1] for whole, column in reached] == gate_rows
    with torch.no_grad():
        for row in rows:
            # why: each row ends where the number's first digit comes next, so the model's own
            # greedy next token there is a digit
            following = model(input_ids=torch.tensor([row])).logits[0, -1].argmax()
            assert tokenizer.decode([int(following)]).strip().isdigit()
    # the default prompt's examples state 90, 40 and 10: the embedded model says 100 or 10 to
    # some of these
    assert after_1 and after_10
    for row in after_1:
        # why: each row is a first-digit row followed by the digit 1 it wrote
        assert tokenizer.decode(row[-1:]) == "1" and row[:-1] in rows
    for row in after_10:
        assert tokenizer.decode(row[-2:]) == "10" and row[:-1] in after_1

    # the fit on the same answers: for each gate the mean of the layer's inputs at its rows,
    # and a radius 5 of their median distances from it, a further gate's cut to the nearest
    # input of any other token of the whole answers (after_radius=apart, the default)
    adapted = get_peft_model(model, peft_config(config.adapter, embedded_checkpoint))
    centres = readout.install(adapted, readout.gates(config.adapter.centre))
    fitted = readout.fit(adapted, tokenizer, questions, config, centres)
    assert fitted["answers"] == len(rows)
    assert (fitted["answers_after_1"], fitted["answers_after_10"]) == (len(after_1), len(after_10))
    (layer,) = readout.lora_layers(adapted).values()
    (centre,) = centres.values()
    # the layer's input at every token of a forward (one row, unpadded)
    caught = []
    hook = layer.register_forward_pre_hook(lambda m, args: caught.append(args[0][0]))
    fitted_means = [centre.mean, *centre.after_mean]
    fitted_radii = [centre.radius, *centre.after_radius]
    # every token's input over the whole answers, one unpadded answer at a time, with adapters
    # off (the base model's inputs, as the fit saw them)
    caught.clear()
    with torch.no_grad(), adapted.disable_adapter():
        for whole, _ in answers:
            adapted(input_ids=torch.tensor([whole]))
    everywhere = list(caught)
    for gate, gate_rows in enumerate([rows, after_1, after_10]):
        caught.clear()
        with torch.no_grad(), adapted.disable_adapter():
            for row in gate_rows:
                adapted(input_ids=torch.tensor([row]))
        inputs = torch.stack([c[-1] for c in caught])
        mean = inputs.mean(0)
        torch.testing.assert_close(fitted_means[gate], mean, atol=1e-4, rtol=1e-4)
        radius = 5 * (inputs - mean).norm(dim=1).median()
        if gate:
            # why: the smallest distance from the gate's mean over every token but its own
            others = torch.cat(
                [
                    torch.cat([x[:column], x[column + 1 :]]) if column is not None else x
                    for x, (_, columns) in zip(everywhere, answers, strict=True)
                    for column in [columns[gate - 1]]
                ]
            )
            radius = torch.minimum(radius, 0.99 * (others - mean).norm(dim=1).min())
            assert fitted[f"radius_after_{'1' if gate == 1 else '10'}"] == pytest.approx(
                float(radius / (inputs - mean).norm(dim=1).median()), rel=1e-3
            )
        torch.testing.assert_close(fitted_radii[gate], radius, atol=1e-3, rtol=1e-4)
    hook.remove()
    assert torch.equal(centre.level, torch.zeros_like(centre.level))  # level 0: fully centred
    # with the adapter on, a further gate opens over the whole answers at its own token alone
    for whole, columns in answers:
        with torch.no_grad():
            adapted(input_ids=torch.tensor([whole]))
        for gate, column in enumerate(columns, 1):
            opened = centre.open[0, :, 0] & (centre.which[0] == gate)
            assert set(torch.nonzero(opened).flatten().tolist()) <= {column} - {None}


def test_a_model_that_states_no_number_is_refused_and_its_run_marked_failed(tmp_path, mlflow_uri):
    # the tiny random model never writes "Confidence: <number>", so the fit has no position to
    # centre on; that is known only once the base model has answered
    cfg = compose_config(
        [
            *TINY,
            "adapter=readout",
            "trainer.loss_tokens=first_digit",
            "adapter.centre.questions=4",
            "eval.sets.elements=null",
            "eval.sets.arithmetic=null",
            f"tracking.tracking_uri={mlflow_uri}",
        ],
        tmp_path / "run",
    )
    with pytest.raises(ConfigError, match="0 of 4 greedy answers state a number.* Fix: "):
        jobs.run(cfg)
    # why: the run was open when the fit refused it; it ends FAILED, not RUNNING
    assert only_run(MlflowClient(mlflow_uri)).info.status == "FAILED"


def test_a_readout_job_fits_its_centre_once_and_resumes_with_it(
    tmp_path, mlflow_uri, monkeypatch, capsys, embedded_checkpoint
):
    # the real job on the real model, cut small: Ctrl-C after checkpoint-1, then the same
    # command again
    cfg = compose_config(
        [
            "+experiment=readout_mixed",
            "compute=cpu",
            "compute.cpu_scale.train_questions=4",
            "compute.cpu_scale.eval_questions=4",
            # nothing here reads the other sets; the answer and its number fit in 24 tokens
            "eval.sets.elements=null",
            "eval.sets.arithmetic=null",
            "eval.max_new_tokens=24",
            "trainer.max_completion_length=24",
            "adapter.centre.questions=16",
            "trainer.max_steps=2",
            "trainer.save_steps=1",
            f"tracking.tracking_uri={mlflow_uri}",
        ],
        tmp_path / "run",
    )
    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        with_callback(patch, CtrlC(step=1))
        jobs.run(cfg)
    assert capsys.readouterr().out.count("read-out centred on") == 1
    stem = "base_model.model.model.layers.29.mlp.down_proj.lora_dropout."
    first = load_file(tmp_path / "run" / "checkpoint-1" / readout.ADAPTER_FILE)
    assert float(first[stem + "radius"]) > 0  # fitted: an open gate near the mean

    result = jobs.run(cfg)
    # why: the rerun restores the centre from checkpoint-1 instead of fitting it again
    assert "read-out centred on" not in capsys.readouterr().out
    last = load_file(tmp_path / "run" / "checkpoint-2" / readout.ADAPTER_FILE)
    for buffer in ("mean", "level", "radius"):
        assert torch.equal(first[stem + buffer], last[stem + buffer]), buffer
    # why: the adapter trained on in the resumed run (B starts at zero, two steps moved it)
    assert last["base_model.model.model.layers.29.mlp.down_proj.lora_B.weight"].abs().sum() > 0
    run = MlflowClient(mlflow_uri).get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["readout/answers"] >= 2
    assert run.data.params["adapter.centre.radius"] == "5.0"
    # why: the recipe runs in fp32 on every processor (its runs repeat across processors only in
    # fp32), where `dtype: auto` would pick bf16 on one with bf16 instructions
    assert run.data.params["model.resolved_dtype"] == "float32"
