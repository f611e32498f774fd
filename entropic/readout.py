"""A centred read-out for the stated number (`adapter=readout`, the `adapter.centre` block).

Where SmolLM2 writes its confidence, the input of every module a LoRA can adapt is ~99% one
constant vector (|mean|/rms .984-.998), so a LoRA's gradient moves the number for every answer
alike, and GRPO slides to one value (experiments/lora_recipe/README.md, probes p1-p30). A LoRA
whose input is centred there can rank answers instead; kept off the answer's tokens, it leaves
the answers as the base model gives them (p32).

This module makes that a LoRA option peft trains, saves and reloads. In each adapted layer's
dropout slot (an identity at `adapter.dropout=0`) a `CentredInput` gives the adapter

    (x - mean + level) if |x - mean| < radius else 0

with the mean of x where the first digit of the number is predicted, over the base model's
greedy answers to training-pool questions (no labels used). Its tensors are buffers whose names
hold "lora_", so peft saves them in the adapter's file and `load_adapter` restores them: a
checkpoint resumes with the same centring. A merge into the base weights cannot hold the gate,
so vLLM rollouts (which merge) and ZeRO-3 are refused with the config
(`entropic.config.check_readout`, before torch loads).

Two options act on the policy's logits where the gate is open (`at_the_number`):
`adapter.centre.temperature` divides them, so the stated number's first digit is sampled and
scored at a temperature of its own while the answer keeps the rollout's (greedy evaluation reads
the same number either way); `adapter.centre.shift_rate` adds a trained shift to them, the same
for every answer, so the number's level can move apart from the split the centred read-out
learns (a centred input has no constant for the LoRA to scale).

The digit 1 starts 10-19 and 100 alike, so a read-out that acts on the first digit alone cannot
state 10-19 without risking 100. `adapter.centre.after_one` adds two gates, fitted the same way
where the base model's greedy numbers wrote a first 1 and "10" (the model chooses there between
10-19, 100 and the end), each with its own mean, radius and shift; `trainer.loss_tokens=number`
puts those tokens in the loss.
"""

from __future__ import annotations

from pathlib import Path

import datasets
import torch
from peft.tuners.lora import LoraLayer
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn
from tqdm.auto import tqdm

from entropic.config import CentreConfig, ConfigError, RunConfig
from entropic.evaluate import evaluate
from entropic.generation import (
    chat_prompt_ids,
    common_prefix_length,
    left_pad,
    rows_after_prefix,
)
from entropic.prefix_scoring import (
    MIN_SHARED_TOKENS,
    cache_argument,
    expand_cache,
    windowed_layers,
)
from entropic.prompting import build_messages
from entropic.training import first_digit

# peft saves the adapter's tensors whose names hold "lora_" (the dropout slot is lora_dropout)
ADAPTER_FILE = "adapter_model.safetensors"
# answers per forward pass when the fit captures the inputs
BATCH = 16
# `adapter.centre.after_radius=apart` cuts a further gate's radius to this x the nearest other
# token's distance: a padded batch and a single row differ in the last bits, and a radius at
# that token itself would leave it open or shut by rounding
APART = 0.99


class CentredInput(nn.Module):
    """The input a LoRA layer's adapter reads: x - mean + level where x lies within radius of
    the mean, zero elsewhere. Buffers, so peft saves and reloads them with the adapter.

    `after` > 0 adds that many further gates (`adapter.centre.after_one`: the positions after a
    first digit 1, and after "10"), each a mean and a radius of its own: the adapter reads x
    centred by the nearest mean whose gate is open (nearest in units of that gate's radius),
    with the level at the first gate alone."""

    def __init__(self, width: int, after: int = 0):
        super().__init__()
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("level", torch.zeros(width))
        self.register_buffer("radius", torch.zeros(()))
        if after:
            self.register_buffer("after_mean", torch.zeros(after, width))
            self.register_buffer("after_radius", torch.zeros(after))
        self.after = after
        # where the gate was open in the forward under way, for `at_the_number` (not saved),
        # and which gate (0: the first digit's, j: the j-th `after` gate)
        self.open: torch.Tensor | None = None
        self.which: torch.Tensor | None = None
        # the level's shift at the final norm (`at_the_number`), on the deepest centre alone:
        # one for the first gate, and `after_shift` one per further gate
        self.shift: nn.Parameter | None = None
        self.after_shift: nn.Parameter | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - self.mean.to(x.dtype)
        distance = centred.norm(dim=-1, keepdim=True)
        near = distance < self.radius
        if not self.after:
            self.open = near
            return (centred + self.level.to(x.dtype)) * near
        # every gate's centred input and its distance in units of its radius; a closed gate
        # (out of reach, or not yet fitted: radius 0) counts as infinitely far
        others = x.unsqueeze(-2) - self.after_mean.to(x.dtype)
        each = torch.cat([centred.unsqueeze(-2), others], dim=-2)
        distances = torch.cat([distance, others.norm(dim=-1)], dim=-1)
        radii = torch.cat([self.radius.reshape(1), self.after_radius]).to(distances.dtype)
        ratio = torch.where(distances < radii, distances / radii, torch.inf)
        which = ratio.argmin(dim=-1)
        self.open = ratio.gather(-1, which.unsqueeze(-1)).isfinite()
        self.which = which
        chosen = each.gather(-2, which[..., None, None].expand(*which.shape, 1, x.shape[-1]))
        level = self.level.to(x.dtype) * (which == 0).unsqueeze(-1)
        return (chosen.squeeze(-2) + level) * self.open


def lora_layers(model: nn.Module) -> dict[str, LoraLayer]:
    """Every peft LoRA layer of the model, by name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


def install(model: nn.Module, after: int = 0) -> dict[str, CentredInput]:
    """Put a zero `CentredInput` (a closed gate: the adapter reads zero) in the dropout slot of
    every LoRA layer's adapters, with `after` further gates (`gates`); `fit` or a checkpoint
    fills it."""
    layers = lora_layers(model)
    if not layers:
        raise ValueError("adapter.centre: the model has no LoRA layers to centre")
    installed = {}
    for name, layer in layers.items():
        for adapter in layer.lora_dropout:
            centred = CentredInput(layer.in_features, after).to(layer.lora_A[adapter].weight.device)
            layer.lora_dropout[adapter] = centred
            installed[f"{name}.{adapter}"] = centred
    return installed


def at_the_number(
    model: nn.Module,
    centres: dict[str, CentredInput],
    temperature: float = 1.0,
    shift_rate: float = 0.0,
):
    """Act on the policy's logits where the read-out's gate is open (the stated number's first
    digit), everywhere the policy runs: rollouts sample that digit, GRPO's loss scores it (TRL's
    one scalar temperature divides every logit on top, in both) and greedy decoding reads it.
    There the final norm's output h becomes

        (h + shift_rate * shift) / temperature

    which the output head maps linearly into the logits. `temperature` < 1 samples the digit
    sharper than the answer; greedy decoding reads the same number whatever it is.
    `shift_rate` > 0 adds `shift`, a trained vector of the model's width starting at zero, put
    on the deepest centre so peft saves and reloads it with the adapter: the same shift for
    every answer, so the number's level can move apart from the split the centred LoRA learns.
    Adam moves each of its entries by about the learning rate a step, so the shift moves
    shift_rate x as fast as a weight (the rate of its own, without an optimizer group). A
    centre with further gates (`adapter.centre.after_one`) has a shift of its own for each
    (`after_shift`): what follows a first 1 moves apart from the first digit.

    A head with a bias or a logit soft-cap would not map the norm's output linearly, and is
    refused. The deepest centre's gate is read, in the same forward that computed it; with the
    adapters switched off (`disable_adapter`, the fit) no gate runs and nothing changes.
    Returns the hook's handle, or None where neither option is set."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    norm = final_norm(base, temperature, shift_rate)
    if norm is None:
        return None
    gate = list(centres.values())[-1]
    scale = 1.0 / temperature
    if shift_rate > 0:
        width = norm.weight.shape[0]
        gate.shift = nn.Parameter(torch.zeros(width, device=norm.weight.device))
        if gate.after:
            gate.after_shift = nn.Parameter(
                torch.zeros(gate.after, width, device=norm.weight.device)
            )

    def act(module, args, output):
        open_, gate.open = gate.open, None
        which, gate.which = gate.which, None
        if open_ is None or open_.shape[:-1] != output.shape[:-1]:
            return output
        if gate.after_shift is not None:
            # each open position takes its own gate's shift
            shifts = torch.cat([gate.shift.unsqueeze(0), gate.after_shift])
            output = output + open_ * (shift_rate * shifts[which]).to(output.dtype)
        elif gate.shift is not None:
            output = output + open_ * (shift_rate * gate.shift).to(output.dtype)
        if scale != 1.0:
            output = output * torch.where(open_, scale, 1.0).to(output.dtype)
        return output

    return norm.register_forward_hook(act)


def final_norm(
    model: nn.Module, temperature: float = 1.0, shift_rate: float = 0.0
) -> nn.Module | None:
    """The causal LM's final norm, whose output `at_the_number` changes; None where neither
    option is set (every model takes that); or a ValueError naming the option set
    (`adapter.centre.temperature`, `adapter.centre.shift_rate`) where the logits are not that
    output times the head's weight. Works on the checkpoint's architecture on the meta device
    (`training.meta_model`), so the job refuses such a model before any weights load, as it
    refuses unknown target modules."""
    options = (
        ("adapter.centre.temperature", temperature, 1),
        ("adapter.centre.shift_rate", shift_rate, 0),
    )
    named = [(key, value, off) for key, value, off in options if value != off]
    if not named:
        return None
    norm = getattr(getattr(model, "base_model", None), "norm", None)
    softcap = getattr(model.config.get_text_config(), "final_logit_softcapping", None)
    if norm is None or model.get_output_embeddings().bias is not None or softcap is not None:
        raise ValueError(
            f"{', '.join(f'{key}={value}' for key, value, _ in named)}: this model's logits "
            "are not its final norm's output times the head's weight (a head bias, a logit "
            "soft-cap, or no `norm` on its decoder), so they cannot be changed where the gate "
            f"is open. Fix: {' '.join(f'{key}={off}' for key, _, off in named)}"
        )
    return norm


# the further gates of `adapter.centre.after_one`: the tokens of a first digit 1 that come before
# each (after "1" the model chooses 10-19 or goes on; after "10", the end or 100)
AFTER_ONE = (("1",), ("1", "0"))


def gates(centre: CentreConfig) -> int:
    """How many further gates a read-out with these settings has (`CentredInput`'s `after`)."""
    return len(AFTER_ONE) if centre.after_one else 0


def number_positions(
    model, tokenizer, questions: datasets.Dataset, config: RunConfig
) -> tuple[list[list[list[int]]], list[tuple[list[int], list[int | None]]]]:
    """Token ids of prompt + greedy answer up to where each gate sits, one list of rows per gate:
    first, up to the stated number's first digit (the model's next token is that digit), one row
    per answer that states a number; then, with `adapter.centre.after_one`, up to and including
    a first digit 1, and up to "10" (`AFTER_ONE`), one row per answer whose number starts so.
    Second, every answer whole (prompt + greedy answer, numbered or not), each with the column
    of every further gate in it (None where the answer does not reach that gate)."""
    predictions, _ = evaluate(
        model, tokenizer, questions, config.prompt, config.eval, config.generation.name
    )
    after = AFTER_ONE[: gates(config.adapter.centre)] if config.adapter.centre else ()
    rows: list[list[list[int]]] = [[] for _ in range(1 + len(after))]
    answers: list[tuple[list[int], list[int | None]]] = []
    for question, completion in zip(
        predictions["question"], predictions["completion"], strict=True
    ):
        ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
        prompt = chat_prompt_ids(tokenizer, [build_messages(question, config.prompt)])[0]
        columns: list[int | None] = [None] * len(after)
        answers.append((prompt + ids, columns))
        digit = first_digit(ids, tokenizer, config.prompt.format)
        if digit is None:
            continue
        rows[0].append(prompt + ids[:digit])
        for gate, start in enumerate(after, 1):
            written = ids[digit : digit + len(start)]
            if tuple(tokenizer.decode([i]) for i in written) == start:
                rows[gate].append(prompt + ids[: digit + len(start)])
                columns[gate - 1] = len(rows[gate][-1]) - 1
    return rows, answers


@torch.no_grad()
def layer_inputs(
    model, rows: list[list[int]], layers: dict[str, nn.Module]
) -> dict[str, torch.Tensor]:
    """Each layer's input at the last token of every row, (rows, width) in float32. Rows are
    left-padded in batches, so every row's last token is the last column, and scored as GRPO
    scores them (`use_cache=False`): on a CPU run, where entropic.prefix_scoring wraps the
    policy, the prompt's shared prefix is computed once per batch. A layer then runs twice per
    batch (the prefix, then the rows' own tokens), and the last call holds the last column."""
    caught: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    latest: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(module, args):
            latest[name] = args[0][:, -1].float()

        return hook

    hooks = [layer.register_forward_pre_hook(keep(name)) for name, layer in layers.items()]
    device = next(model.parameters()).device
    try:
        for start in range(0, len(rows), BATCH):
            ids, mask = left_pad(rows[start : start + BATCH], 0)
            latest.clear()
            model(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                use_cache=False,
                logits_to_keep=1,
            )
            for name in layers:
                caught[name].append(latest[name])
    finally:
        for hook in hooks:
            hook.remove()
    return {name: torch.cat(parts) for name, parts in caught.items()}


@torch.no_grad()
def nearest_elsewhere(
    model,
    answers: list[tuple[list[int], list[int | None]]],
    layers: dict[str, nn.Module],
    means: dict[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """For each layer, per further gate, the smallest distance from that gate's mean
    (`means[name]`, (gates, width)) to the layer's input at any token of the whole answers
    (`number_positions`) but the gate's own ones: a radius under it opens the gate nowhere else
    in them. The answers' shared prompt prefix runs once and its cache serves every batch of
    the rest, left-padded behind it with explicit positions, as entropic.prefix_scoring lays
    out a scoring batch (a model with windowed layers runs each row whole)."""
    nearest = {name: torch.full((len(m),), torch.inf) for name, m in means.items()}
    counted: dict[str, torch.Tensor] = {}

    def measure(name):
        def hook(module, args):
            x = args[0].float()
            distances = (x.unsqueeze(-2) - means[name].to(x.device)).norm(dim=-1)
            distances = distances.masked_fill(~counted["mask"], torch.inf).flatten(0, 1)
            nearest[name] = torch.minimum(nearest[name], distances.min(0).values.cpu())

        return hook

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    rows = [row for row, _ in answers]
    shared = 0 if windowed_layers(base.config) else shared_prefix(answers)
    cache_name = cache_argument(model)
    device = next(model.parameters()).device
    gates = len(next(iter(means.values())))
    hooks = [layer.register_forward_pre_hook(measure(name)) for name, layer in layers.items()]
    try:
        prefix = None
        if shared:
            # the prefix holds no gate's own token (`shared_prefix`): every one counts
            counted["mask"] = torch.ones(1, shared, gates, dtype=torch.bool, device=device)
            out = model(input_ids=torch.tensor([rows[0][:shared]], device=device), use_cache=True)
            prefix = getattr(out, cache_name)
        starts = range(0, len(answers), BATCH)
        for start in tqdm(starts, desc="read-out gates apart", leave=False):
            batch = answers[start : start + BATCH]
            ids, mask, positions = rows_after_prefix([row[shared:] for row, _ in batch], shared, 0)
            # every real token of every row, for every gate, but that gate's own token
            counted["mask"] = mask[:, shared:].bool().unsqueeze(-1).repeat(1, 1, gates)
            for i, (row, columns) in enumerate(batch):
                for gate, column in enumerate(columns):
                    if column is not None:
                        counted["mask"][i, ids.shape[1] - len(row) + column, gate] = False
            counted["mask"] = counted["mask"].to(device)
            extra = {cache_name: expand_cache(prefix, len(batch))} if shared else {}
            model(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                position_ids=positions.to(device),
                use_cache=bool(shared),
                logits_to_keep=1,
                **extra,
            )
    finally:
        for hook in hooks:
            hook.remove()
    return nearest


def shared_prefix(answers: list[tuple[list[int], list[int | None]]]) -> int:
    """Tokens every answer's row starts with, short of any gate's own token and of each row's
    last (0 under `MIN_SHARED_TOKENS`, not worth a call of its own)."""
    columns = [column for _, found in answers for column in found if column is not None]
    shared = min([common_prefix_length([row for row, _ in answers]), *columns])
    return shared if shared >= MIN_SHARED_TOKENS else 0


def fit(
    model,
    tokenizer,
    questions: datasets.Dataset,
    config: RunConfig,
    centres: dict[str, CentredInput],
) -> dict[str, float]:
    """Fill the installed centres from the base model's greedy answers to `questions` (a
    PeftModel, its adapters switched off for the fit) and its inputs there: each gate's mean,
    and a radius of `adapter.centre.radius` times its own median distance; with
    `adapter.centre.after_radius=apart`, a further gate's radius is cut to its nearest input
    elsewhere in the answers (`nearest_elsewhere`). Returns what a run logs: the answers used
    (for each further gate, those that reach it), over the layers the first gate's median
    distance and radius, and for each further gate its radius in its own medians and the share
    of its own inputs within it."""
    cfg: CentreConfig = config.adapter.centre
    layers = lora_layers(model)
    was_training = model.training
    model.eval()
    try:
        # the base model's answers and inputs, whatever the adapters hold (the hooks still see
        # each LoRA layer's input)
        with model.disable_adapter():
            rows, answers = number_positions(model, tokenizer, questions, config)
            if len(rows[0]) < 2:
                # input the job cannot check before the base model answers: a ConfigError
                # (exit 2, the fix), and the run it opened ends FAILED
                raise ConfigError(
                    f"adapter.centre: {len(rows[0])} of {len(questions)} greedy answers state "
                    "a number; a mean needs two or more. Fix: raise adapter.centre.questions, "
                    "or use a model that follows the prompt's answer format"
                )
            for start, found in zip(AFTER_ONE, rows[1:], strict=False):
                if len(found) < 2:
                    raise ConfigError(
                        f"adapter.centre.after_one: {len(found)} of {len(questions)} greedy "
                        f"answers state a number starting {''.join(start)!r}; a gate there "
                        "needs two or more. Fix: raise adapter.centre.questions, or "
                        "adapter.centre.after_one=false"
                    )
            inputs = [layer_inputs(model, found, layers) for found in rows]
            nearest = None
            if len(inputs) > 1 and cfg.after_radius == "apart":
                means = {
                    name: torch.stack([gate[name].mean(0) for gate in inputs[1:]])
                    for name in layers
                }
                nearest = nearest_elsewhere(model, answers, layers, means)
    finally:
        model.train(was_training)
    medians, radii = [], []
    # per further gate, over the layers: its radius in its own medians, its own inputs within
    further_radii: list[list[float]] = [[] for _ in rows[1:]]
    inside: list[list[float]] = [[] for _ in rows[1:]]
    for key, centred in centres.items():
        name = key.rsplit(".", 1)[0]
        spread = []
        for gate in inputs:
            x = gate[name]
            mean = x.mean(0)
            distances = (x - mean).norm(dim=1)
            spread.append((mean, distances.median(), distances))
        (mean, median, _), further = spread[0], spread[1:]
        centred.mean.copy_(mean)
        centred.radius.fill_(float(cfg.radius * median))
        centred.level.copy_(cfg.level * median * mean / mean.norm())
        for j, (after_mean, after_median, distances) in enumerate(further):
            radius = cfg.radius * after_median
            if nearest is not None:
                radius = torch.minimum(radius, APART * nearest[name][j])
            centred.after_mean[j].copy_(after_mean)
            centred.after_radius[j] = radius
            further_radii[j].append(float(radius / after_median))
            inside[j].append(float((distances < radius).float().mean()))
        medians.append(float(median))
        radii.append(float(centred.radius))
    fitted = {
        "answers": float(len(rows[0])),
        "median_distance": sum(medians) / len(medians),
        "radius": sum(radii) / len(radii),
    }
    further = zip(AFTER_ONE, rows[1:], further_radii, inside, strict=False)
    for start, found, radius, share in further:
        gate = "".join(start)
        fitted[f"answers_after_{gate}"] = float(len(found))
        fitted[f"radius_after_{gate}"] = sum(radius) / len(radius)
        fitted[f"inside_after_{gate}"] = sum(share) / len(share)
    return fitted


def check_resume(config: RunConfig, checkpoint: str | None) -> None:
    """Refuse to resume a read-out from a checkpoint trained without one; called where the job
    picks its checkpoint, before it reopens the run or loads any weights."""
    if config.adapter.centre is None or not config.train or checkpoint is None:
        return
    path = Path(checkpoint) / ADAPTER_FILE
    stored = ()
    if path.exists():
        with safe_open(path, "pt") as adapter:
            stored = list(adapter.keys())
    if not any(key.endswith("lora_dropout.mean") for key in stored):
        raise no_centre(checkpoint, "any layer")


def restore(checkpoint: str, centres: dict[str, CentredInput]) -> None:
    """Fill the installed centres from a checkpoint's adapter file (the trainer's own resume
    loads them too; doing it first refuses a checkpoint whose read-out has other layers)."""
    saved = load_file(f"{checkpoint}/{ADAPTER_FILE}")
    for key, centred in centres.items():
        name = key.rsplit(".", 1)[0]
        for buffer in ("mean", "level", "radius"):
            stored = f"{name}.lora_dropout.{buffer}"
            if stored not in saved:
                raise no_centre(checkpoint, name)
            getattr(centred, buffer).copy_(saved[stored])
        if centred.after:
            for buffer in ("after_mean", "after_radius"):
                stored = f"{name}.lora_dropout.{buffer}"
                if stored not in saved or saved[stored].shape != getattr(centred, buffer).shape:
                    raise trained_without(
                        checkpoint, name, "gates after a first 1", "after_one", "false"
                    )
                getattr(centred, buffer).copy_(saved[stored])
        for parameter in ("shift", "after_shift"):
            if getattr(centred, parameter) is None:
                continue
            stored = f"{name}.lora_dropout.{parameter}"
            if stored not in saved:
                raise trained_without(checkpoint, name, "shift", "shift_rate", "0")
            with torch.no_grad():
                getattr(centred, parameter).copy_(saved[stored])


def trained_without(checkpoint: str, name: str, what: str, key: str, off: str) -> ConfigError:
    return ConfigError(
        f"adapter.centre.{key}: {checkpoint} holds no {what} for {name} (it was trained with "
        f"adapter.centre.{key}={off}). Fix: resume with the settings it was trained with, or train "
        "in a new folder"
    )


def no_centre(checkpoint: str, layer: str) -> ConfigError:
    return ConfigError(
        f"adapter.centre: {checkpoint} holds no read-out centre for {layer} (it was trained "
        "without adapter=readout, or with other layers). Fix: resume with the adapter it was "
        "trained with, or train in a new folder"
    )
