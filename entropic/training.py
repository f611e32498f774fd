"""GRPO training (the `trainer` and `adapter` config groups): our config -> `trl.GRPOConfig` ->
`GRPOTrainer`.

Everything goes through TRL's documented hooks: the rewards are plain callables, LoRA is
`peft_config`, rollout=prefix_cache, the confidence-only loss and the K confidences per answer are
a `rollout_func` (the loss mask is its `env_mask`), MLflow logging and the periodic held-out
evaluation are `callbacks`. The one subclass, `AnswerThenConfidenceTrainer`, exists only with
`trainer.confidence_samples` > 1: TRL has no hook for the advantages it splits.

In MLflow the Trainer's metrics are `train/<name>` (TRL's per-step metrics, our
`train/calibration/*`), except where `TRAINER_NAMES` gives one quantity one name: the wall times
join entropic's own under `time/`, and what another metric already holds is not logged twice.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from pathlib import Path

import datasets
import torch
import trl.trainer.utils as trl_utils
from mlflow.tracking import MlflowClient
from peft import LoraConfig
from torch import nn
from transformers import TrainerCallback
from trl import GRPOConfig, GRPOTrainer

from entropic.config import AdapterConfig, EvalConfig, PromptConfig, RunConfig
from entropic.evaluate import evaluate_sets, metric_prefix
from entropic.parsing import confidence_key_start
from entropic.prefix_scoring import share_prompt_prefix
from entropic.rollout import grpo_kwargs, prefix_cache_rollout, sample_policy
from entropic.tracking import log_evaluation, log_metrics

# The Trainer's log keys that MLflow gets under another name (None: not logged), so each
# quantity has one name and the UI's prefix groups (train/, time/) hold what they say.
TRAINER_NAMES: dict[str, str | None] = {
    # the mean training loss over the whole run, logged once at the end; train/loss is per step
    "train_loss": "train/mean_loss",
    # the same span as time/train_seconds, which entropic.jobs.train measures around trainer.train()
    "train_runtime": None,
    # 1 / time/seconds_per_step
    "train_steps_per_second": None,
    # throughput, a time like the others
    "train_samples_per_second": "time/samples_per_second",
    # GRPOTrainer counts no FLOPs: always 0
    "total_flos": None,
    # TRL's wall time of each step, beside entropic's run averages
    "step_time": "time/step_seconds",
}
# What every other key of the Trainer's logs gets in front of it.
TRAINER_PREFIX = "train/"


def build_grpo_config(
    cfg: RunConfig, output_dir: str, device: str, dtype: torch.dtype | str
) -> GRPOConfig:
    return GRPOConfig(
        # the trainer group: our keys under TRL's names, and every trainer.grpo.<field>
        **cfg.trainer.grpo_arguments(),
        output_dir=output_dir,
        # A checkpoint with optimiser state is ~3x the weights; two are enough to resume from.
        save_total_limit=2,
        # Our MlflowMetricsCallback logs to the job's run; transformers' own would open another.
        report_to="none",
        use_cpu=device == "cpu",
        bf16=dtype == torch.bfloat16,
        model_init_kwargs={"dtype": dtype},
        seed=cfg.seed,
        data_seed=cfg.seed,
        # The reward functions read question_id, answers and labeled from the dataset columns.
        remove_unused_columns=False,
        disable_tqdm=False,
        # hf generation, or vLLM colocated / as a server (entropic/rollout.py)
        **grpo_kwargs(cfg.rollout),
    )


def peft_config(adapter: AdapterConfig, checkpoint: str) -> LoraConfig | None:
    """TRL's `peft_config` for the adapter (None: full fine-tuning)."""
    if adapter.name != "lora":
        return None
    targets, layers = adapter.target_modules, None
    if adapter.top_layers is not None:
        model = meta_model(checkpoint)
        count = model.config.num_hidden_layers
        # a count at or above the model's adapts every layer
        layers = list(range(max(count - adapter.top_layers, 0), count))
        # peft takes layers_to_transform only with a list of names, so "all-linear" is spelled out
        targets = linear_names(model) if targets == "all-linear" else targets
    return LoraConfig(
        r=adapter.rank,
        lora_alpha=adapter.alpha,
        lora_dropout=adapter.dropout,
        target_modules=targets,
        layers_to_transform=layers,
        task_type="CAUSAL_LM",
    )


def meta_model(checkpoint: str) -> nn.Module:
    """The checkpoint's architecture on the meta device: its modules, no weights (milliseconds)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(checkpoint))


def linear_names(model: nn.Module) -> list[str]:
    """The short names of the model's Linear layers but the output head: peft's "all-linear"."""
    head = model.get_output_embeddings()
    return sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and module is not head
        }
    )


def check_target_modules(adapter: AdapterConfig, checkpoint: str) -> None:
    """Reject LoRA target modules the model does not have, or its output head (which TRL does not
    train), without loading any weights.

    The architecture is built on the meta device from the checkpoint's config.json, so this costs
    milliseconds; peft itself would only fail after the weights had loaded. Names are matched by
    peft's own rule (a list entry matches a module's name or its dotted suffix; a string other
    than "all-linear" is a regular expression over the full name).
    """
    if adapter.name != "lora":
        return
    from peft.tuners.tuners_utils import check_target_module_exists

    if adapter.target_modules == "all-linear":
        return
    model = meta_model(checkpoint)
    names = [name for name, _ in model.named_modules()]
    wanted = adapter.target_modules
    entries = [wanted] if isinstance(wanted, str) else list(wanted)

    def matches(entry: str, name: str) -> bool:
        # a string is one regular expression; a list entry is a name or a dotted suffix
        config = LoraConfig(target_modules=entry if isinstance(wanted, str) else [entry])
        return bool(check_target_module_exists(config, name))

    missing = [entry for entry in entries if not any(matches(entry, name) for name in names)]
    if missing:
        linear = linear_names(model)
        kind = "regular expression (a string) matches" if isinstance(wanted, str) else "module is"
        raise ValueError(
            f"adapter.target_modules: no {kind} named by {missing} in this model. Fix: "
            f"adapter.target_modules=all-linear, or a list of names from {linear}, e.g. "
            f"'adapter.target_modules=[{linear[0]}]'"
        )
    output_head = model.get_output_embeddings()
    head = next(name for name, module in model.named_modules() if module is output_head)
    on_head = [entry for entry in entries if matches(entry, head)]
    if on_head:
        # TRL 1.16 computes log-probabilities from the head's weight directly and refuses it, but
        # only after the base evaluation has run
        raise ValueError(
            f"adapter.target_modules: {on_head} names the output head ({head}), which TRL "
            f"cannot train (it multiplies the head's weight directly). Fix: name the decoder's "
            f"modules only, e.g. 'adapter.target_modules=[{linear_names(model)[0]}]'"
        )


def confidence_start(completion_ids: list[int], tokenizer, fmt: str = "lines") -> int | None:
    """Index of the first token of the `Confidence` key, or None when the completion has none.

    The key is found as `parse_completion` finds it (`confidence_key_start`), so an answer that
    merely contains the word ("The Confidence-Man") is not taken for it.
    """
    key_start = confidence_key_start(tokenizer.decode(completion_ids), fmt)
    if key_start is None:
        return None
    # the first token whose decoded prefix reaches past the key's first character
    return next(
        end - 1
        for end in range(1, len(completion_ids) + 1)
        if len(tokenizer.decode(completion_ids[:end])) > key_start
    )


def first_digit(completion_ids: list[int], tokenizer, fmt: str = "lines") -> int | None:
    """Index of the first token with a digit after the `Confidence` key (the stated number's
    first digit), or None when the completion has no key or no digit after it."""
    start = confidence_start(completion_ids, tokenizer, fmt)
    if start is None:
        return None
    return next(
        (
            i
            for i in range(start, len(completion_ids))
            if any(ch.isdigit() for ch in tokenizer.decode([completion_ids[i]]))
        ),
        None,
    )


def first_digit_mask(completion_ids: list[int], tokenizer, fmt: str = "lines") -> list[int]:
    """1 for the stated number's first digit alone (`trainer.loss_tokens=first_digit`, for a
    read-out that acts only there: entropic.readout); a completion without one keeps every
    token, as `confidence_mask` does."""
    digit = first_digit(completion_ids, tokenizer, fmt)
    if digit is None:
        return [1] * len(completion_ids)
    return [int(i == digit) for i in range(len(completion_ids))]


def number_mask(completion_ids: list[int], tokenizer, fmt: str = "lines") -> list[int]:
    """`first_digit_mask`, and where that digit is 1 the tokens at the read-out's further gates
    (`adapter.centre.after_one`): the one after the 1, and after "10" the next (the choice of
    10-19, 100 or the end)."""
    mask = first_digit_mask(completion_ids, tokenizer, fmt)
    digit = first_digit(completion_ids, tokenizer, fmt)
    if digit is None:
        return mask
    written = [tokenizer.decode([i]) for i in completion_ids[digit : digit + 2]]
    if written[:1] == ["1"] and digit + 1 < len(completion_ids):
        mask[digit + 1] = 1
        if written == ["1", "0"] and digit + 2 < len(completion_ids):
            mask[digit + 2] = 1
    return mask


def confidence_mask(completion_ids: list[int], tokenizer, fmt: str = "lines") -> list[int]:
    """1 for the tokens from the `Confidence` key on, 0 for the answer before it.

    A completion without the key keeps every token (1), so the format penalty still teaches the
    format.
    """
    start = confidence_start(completion_ids, tokenizer, fmt)
    if start is None:
        return [1] * len(completion_ids)
    return [0] * start + [1] * (len(completion_ids) - start)


def trl_rollout(prompts: list, trainer: GRPOTrainer) -> dict:
    """Generate exactly as TRL does without a `rollout_func` (hf or vLLM), for a `rollout_func`
    that only adds to it.

    Generation calls TRL 1.16's own `_tokenize_prompts` and `_generate_single_turn` (trl is
    pinned to 1.16.*), so rollouts are the same with and without the wrapper. The prompts arrive
    already repeated G times by TRL's RepeatSampler: one completion per prompt is the right count.
    """
    prompt_ids, images, multimodal_fields = trainer._tokenize_prompts(prompts)
    completion_ids, logprobs = trainer._generate_single_turn(
        prompt_ids, images, multimodal_fields, trainer.num_generations
    )
    return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": logprobs}


LOSS_MASKS = {
    "confidence": confidence_mask,
    "first_digit": first_digit_mask,
    "number": number_mask,
}


def with_confidence_mask(
    rollout: Callable[[list, GRPOTrainer], dict], fmt: str = "lines", tokens: str = "confidence"
) -> Callable:
    """The `rollout_func` of `trainer.loss_tokens=confidence` (or `first_digit`): `rollout`'s
    completions with an `env_mask` that keeps the answer tokens (and, for `first_digit`, all
    but the number's first digit) out of the loss, TRL's documented way to mask tokens the
    policy should not be trained on. `fmt` (prompt.format) says which Confidence key counts."""
    mask_of = LOSS_MASKS[tokens]

    def masked(prompts: list, trainer: GRPOTrainer) -> dict:
        output = rollout(prompts, trainer)
        tokenizer = trainer.processing_class
        mask = [mask_of(ids, tokenizer, fmt) for ids in output["completion_ids"]]
        return {**output, "env_mask": mask}

    return masked


def with_confidence_samples(
    rollout: Callable[[list, GRPOTrainer], dict], samples: int, batch_size: int, fmt: str = "lines"
) -> Callable:
    """The `rollout_func` of `trainer.confidence_samples=K` (K > 1): one answer per K copies of a
    prompt, and K confidences sampled after it.

    TRL hands over each question G times in a row. Every run of K copies gets one completion from
    `rollout`; the policy then samples K - 1 more continuations of that completion from its
    `Confidence` key on (prompt + answer as the prefix). The run's K completions thus share one
    answer and differ only in what follows the key, so `AnswerThenConfidenceTrainer` can compare
    confidences for the same answer. A completion without the key is repeated K times: the
    format penalty still reaches it through the answer's advantage. Continuations are cut at the
    trainer's completion length, counted from the start of the answer.
    """

    def nested(prompts: list, trainer: GRPOTrainer) -> dict:
        if len(prompts) % samples or any(
            prompts[i] != prompts[i - i % samples] for i in range(len(prompts))
        ):
            raise RuntimeError(
                f"trainer.confidence_samples={samples}: TRL did not hand over each prompt in runs "
                f"of {samples} identical copies ({len(prompts)} prompts)"
            )
        first = rollout(prompts[::samples], trainer)
        tokenizer = trainer.processing_class
        starts = [confidence_start(ids, tokenizer, fmt) for ids in first["completion_ids"]]
        keyed = [i for i, start in enumerate(starts) if start is not None]
        longest = trainer.max_completion_length
        more = None
        if keyed:
            prefixes = [
                list(first["prompt_ids"][i]) + list(first["completion_ids"][i][: starts[i]])
                for i in keyed
            ]
            more = sample_policy(
                trainer,
                prefixes,
                batch_size,
                samples_per_prompt=samples - 1,
                max_new_tokens=max(longest - min(starts[i] for i in keyed), 1),
            )
        has_logprobs = first.get("logprobs") is not None
        # the K - 1 continuations of each keyed answer, prompt-major as `generate` returns them
        continuations = zip(more.token_ids, more.logprobs, strict=True) if more else iter(())
        prompt_ids, completion_ids, logprobs = [], [], []
        for i, ids in enumerate(first["completion_ids"]):
            start = starts[i]
            answer_logprobs = first["logprobs"][i] if has_logprobs else []
            completion_ids.append(list(ids))
            logprobs.append(list(answer_logprobs))
            for _ in range(samples - 1):
                if start is None:
                    completion_ids.append(list(ids))
                    logprobs.append(list(answer_logprobs))
                    continue
                tail, tail_logprobs = next(continuations)
                completion_ids.append(list(ids[:start]) + list(tail[: longest - start]))
                logprobs.append(
                    list(answer_logprobs[:start]) + list(tail_logprobs[: longest - start])
                )
            prompt_ids += [list(first["prompt_ids"][i])] * samples
        return {
            "prompt_ids": prompt_ids,
            "completion_ids": completion_ids,
            "logprobs": logprobs if has_logprobs else None,
        }

    return nested


def split_advantages(
    advantages: torch.Tensor, starts: list[int | None], samples: int, length: int
) -> torch.Tensor:
    """Per-token advantages of runs of `samples` completions that share an answer.

    TRL's advantage of a completion is its reward minus its question's mean (divided by a scale
    the whole question shares). Split at the `Confidence` key: the answer's tokens get the mean
    advantage of their run (how much better this answer did than the question's others), the
    confidence's tokens the completion's advantage minus that mean (how much better this
    confidence did than the others stated for the same answer). A completion without the key
    (start None) keeps its advantage on every token. Shape (completions, length).
    """
    runs = advantages.view(-1, samples)
    answer = runs.mean(dim=1).repeat_interleave(samples)
    split = answer.unsqueeze(1).repeat(1, length)
    for i, start in enumerate(starts):
        if start is None:
            split[i] = advantages[i]
        else:
            split[i, start:] = advantages[i] - answer[i]
    return split


class AnswerThenConfidenceTrainer(GRPOTrainer):
    """GRPOTrainer for `trainer.confidence_samples=K` > 1: the advantages of each run of K
    completions that share an answer are split between the answer and its confidence
    (`split_advantages`).

    TRL 1.16 has no hook for the advantages, so this is the one subclass: it changes nothing but
    the `advantages` of a training batch, which TRL's loss takes per token by design (its
    `_compute_loss` accepts shape (B, T) "to support subclasses"). The rewards, the groups and
    their statistics (`frac_reward_zero_std`, reward std) are TRL's, over whole questions.
    """

    def __init__(self, *args, confidence_samples: int, prompt_format: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.confidence_samples = confidence_samples
        self.prompt_format = prompt_format

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        if not self.model.training:
            return output
        lengths = output["completion_mask"].sum(dim=1).tolist()
        starts = [
            confidence_start(ids[: int(n)].tolist(), self.processing_class, self.prompt_format)
            for ids, n in zip(output["completion_ids"], lengths, strict=True)
        ]
        output["advantages"] = split_advantages(
            output["advantages"],
            starts,
            self.confidence_samples,
            output["completion_ids"].size(1),
        )
        return output


def rollout_func(cfg: RunConfig) -> Callable[[list, GRPOTrainer], dict] | None:
    """GRPOTrainer's `rollout_func`: rollout=prefix_cache generates through entropic.generation,
    `trainer.confidence_samples` > 1 samples K confidences per answer, and
    `trainer.loss_tokens=confidence` (or `first_digit`) masks the answer tokens of whatever
    generated them; None leaves generation to TRL."""
    samples = cfg.trainer.confidence_samples
    if cfg.rollout.name == "prefix_cache":
        generate = functools.partial(prefix_cache_rollout, batch_size=cfg.rollout.batch_size)
    elif cfg.trainer.loss_tokens != "all" or samples > 1:
        generate = trl_rollout
    else:
        return None
    if samples > 1:
        generate = with_confidence_samples(
            generate, samples, cfg.rollout.batch_size, cfg.prompt.format
        )
    if cfg.trainer.loss_tokens == "all":
        return generate
    return with_confidence_mask(generate, cfg.prompt.format, cfg.trainer.loss_tokens)


def mlflow_names(logs: dict[str, float], reward_weights: list[float] | None) -> dict[str, float]:
    """The Trainer's logs under their MLflow names (`TRAINER_NAMES`, else `train/<key>`).

    With a single reward function of weight 1, TRL's `rewards/<function>/mean` and `/std` are
    `reward` and `reward_std` again; only the latter are kept, one name whatever the reward, so
    runs of different rewards share one chart.
    """
    per_function = [k for k in logs if k.startswith("rewards/") and k.endswith("/mean")]
    single_reward = len(per_function) == 1 and reward_weights in (None, [1.0])
    named = {}
    for key, value in logs.items():
        if single_reward and key.startswith("rewards/"):
            continue
        name = TRAINER_NAMES.get(key, TRAINER_PREFIX + key)
        if name is not None:
            named[name] = value
    return named


class MlflowMetricsCallback(TrainerCallback):
    """Sends the Trainer's logged metrics (TRL's rewards, KL, our calibration/*) to our run."""

    def __init__(self, client: MlflowClient, run_id: str):
        self.client = client
        self.run_id = run_id

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            named = mlflow_names(logs, getattr(args, "reward_weights", None))
            log_metrics(self.client, self.run_id, named, step=state.global_step)


class PeriodicEvalCallback(TrainerCallback):
    """Greedy evaluation on fixed subsets every N steps, logged at that step: the held-out
    split's as eval/*, each other evaluation set's (`eval.sets.<set>.periodic`) as eval/<set>/*,
    and their wall time together as time/eval_seconds."""

    def __init__(
        self,
        every_n_steps: int,
        tokenizer,
        questions: dict[str, datasets.Dataset],
        prompt: PromptConfig,
        eval_cfg: EvalConfig,
        engine: str,
        client: MlflowClient,
        run_id: str,
    ):
        self.every_n_steps = every_n_steps
        self.engine = engine
        self.tokenizer = tokenizer
        self.questions = questions
        self.prompt = prompt
        self.eval_cfg = eval_cfg
        self.client = client
        self.run_id = run_id

    def on_step_end(self, args, state, control, model=None, **kwargs):
        # The final step gets the full evaluation; other ranks wait at their next collective.
        if state.global_step % self.every_n_steps or state.global_step == state.max_steps:
            return
        if not state.is_world_process_zero:
            return
        results, seconds = evaluate_sets(
            model, self.tokenizer, self.questions, self.prompt, self.eval_cfg, self.engine
        )
        metrics = {metric_prefix(name): values for name, (_, values) in results.items()}
        log_evaluation(self.client, self.run_id, metrics, seconds, state.global_step)


def score_completions_only_on_cpu() -> None:
    """Make TRL's fused LM head score only the completion's positions on a CPU too.

    TRL 1.16's fused head (`trl.trainer.utils.add_fused_lm_head`, every GRPO log-probability)
    scores only the positions that carry a label (the completion's) where Triton runs it, and
    every position of prompt and completion elsewhere, so that an XLA device (Neuron) does not
    recompile for each batch's count of labels. A CPU compiles nothing. There the ~140 prompt
    positions, projected onto the 49k-token vocabulary and normalised for nothing, made a
    SmolLM2 GRPO step 1.6x as long (README "Performance"). The log-probabilities and gradients
    are the same either way (tests/test_training.py). TRL has no option for it, so the test it
    makes is widened to CPUs; every other device keeps TRL's rule, and a TRL without that test
    keeps its own behaviour.
    """
    rule = getattr(trl_utils, "_use_triton", None)
    if rule is None or getattr(rule, "compacts_on_cpu", False):
        return

    def compact(device: torch.device) -> bool:
        return device.type == "cpu" or rule(device)

    compact.compacts_on_cpu = True
    compact.trl_rule = rule
    trl_utils._use_triton = compact


@contextlib.contextmanager
def trl_head_rule():
    """TRL's own rule for its fused head while the block runs: every position scored on a CPU,
    as before `score_completions_only_on_cpu` (`make bench`'s baseline)."""
    rule = getattr(trl_utils, "_use_triton", None)
    if rule is None:
        # a TRL without the rule scores as it always does
        yield
        return
    trl_utils._use_triton = getattr(rule, "trl_rule", rule)
    try:
        yield
    finally:
        trl_utils._use_triton = rule


def build_trainer(
    cfg: RunConfig,
    checkpoint: str,
    tokenizer,
    train_dataset: datasets.Dataset,
    rewards: list[Callable],
    output_dir: str,
    device: str,
    dtype: torch.dtype | str,
    client: MlflowClient | None,
    run_id: str | None,
    periodic_questions: dict[str, datasets.Dataset] | None = None,
    share_prefix: bool = True,
) -> GRPOTrainer:
    """TRL's GRPOTrainer for the run, with our callbacks, adapter and rollout; on a CPU the
    scoring forward computes the prompt's shared prefix once unless `share_prefix` is False
    (`make bench` times it both ways)."""
    callbacks: list[TrainerCallback] = []
    if client is not None and run_id is not None:
        callbacks.append(MlflowMetricsCallback(client, run_id))
        if cfg.trainer.eval_every_n_steps > 0 and periodic_questions:
            callbacks.append(
                PeriodicEvalCallback(
                    cfg.trainer.eval_every_n_steps,
                    tokenizer,
                    periodic_questions,
                    cfg.prompt,
                    cfg.eval,
                    cfg.generation.name,
                    client,
                    run_id,
                )
            )
    score_completions_only_on_cpu()
    nested = {}
    trainer_class = GRPOTrainer
    if cfg.trainer.confidence_samples > 1:
        trainer_class = AnswerThenConfidenceTrainer
        nested = {
            "confidence_samples": cfg.trainer.confidence_samples,
            "prompt_format": cfg.prompt.format,
        }
    trainer = trainer_class(
        model=checkpoint,
        reward_funcs=rewards,
        args=build_grpo_config(cfg, output_dir, device, dtype),
        train_dataset=train_dataset,
        processing_class=tokenizer,
        callbacks=callbacks,
        peft_config=peft_config(cfg.adapter, checkpoint),
        rollout_func=rollout_func(cfg),
        **nested,
    )
    if device == "cpu" and share_prefix:
        # the system message and few-shot turns once per scoring forward, not once per row
        # (entropic.prefix_scoring; README "Performance")
        policy = trainer.model
        policy = policy.get_base_model() if hasattr(policy, "get_base_model") else policy
        share_prompt_prefix(policy.base_model)
    return trainer


def last_checkpoint(output_dir: str) -> str | None:
    """The newest complete `checkpoint-N` under output_dir, if any.

    The Trainer writes trainer_state.json last, so a checkpoint interrupted mid-save (Ctrl-C,
    pre-emption) lacks it and is skipped rather than resumed from.
    """
    checkpoints = sorted(
        (p for p in Path(output_dir).glob("checkpoint-*") if (p / "trainer_state.json").exists()),
        key=lambda p: int(p.name.split("-")[-1]),
    )
    return str(checkpoints[-1]) if checkpoints else None
