"""Generation engines (the `generation` config group): one prefill per shared prefix, or
transformers' `generate`.

Most of what a CPU run generates is the same prompt again and again: every question starts with
the same system message and few-shot turns (157 of its ~175 tokens with the default 3-shot
prompt and SmolLM2's tokenizer), GRPO samples each
prompt G times, the stability study K times, and the answers are short. `model.generate`
prefills every copy from scratch, so on a CPU the prefill is most of the cost.
`engine="prefix_cache"` does each piece of work once:

1. The longest common token prefix of the distinct prompts is prefilled once (batch 1).
2. Its KV cache is copied to each distinct prompt as it starts, and the prompt's own suffix (the
   question) is prefilled once on top of it.
3. The prompt's G (or K) continuations start from copies of that cache row and are decoded in
   one batch of at most `batch_size` rows. Rows that stop leave the batch once they are a
   quarter of it (`COMPACT_SHARE`), and waiting prompts take their places (continuous
   batching), so one long answer neither keeps finished rows computing nor holds the next
   prompts back.

Layout of a batch (why padding sits between prefix and suffix). Suffixes differ in length. The
shared prefix takes columns 0..P-1 in every row; each suffix is right-aligned after it, with
the padding in between, masked out by the attention mask:

    row 0:  [ prefix (P) ][ pad pad ][ suffix 0        ][ new tokens ...
    row 1:  [ prefix (P) ][ suffix 1                   ][ new tokens ...

So the prefix cache is the same tensor for every row (a plain copy, no per-row shift), every
row's next token goes into the same column (one decode step is one forward of shape [rows, 1]),
and the last column of the suffix prefill is every row's last prompt token. A prompt that joins
a running batch is aligned the same way: masked columns are inserted after the prefix of
whichever is narrower (`_Batch.widen`), and cut again once no row attends to them
(`_Batch.trim`). Position ids are passed explicitly and skip the padding (prefix 0..P-1, suffix
P..P+S-1, then on), so each row sees exactly the positions it would see alone: the rotary
embeddings and the attention weights are those of the unpadded prompt, as `generate` gives them
with left padding. (Right padding would put each row's next token in a different column;
left-padding whole prompts would shift the shared prefix to a different column per row, so it
could not be one shared copy.)

Models with sliding-window or linear-attention layers are rejected: with padding inside the
sequence, a window counted in columns would not be the window the model was trained with.

Sampling draws from the model's distribution processed by transformers' own warpers
(temperature, then top-k, then top-p, as `generate` orders them) and returns the log-probability
of each sampled token under that processed distribution: what TRL's `rollout_func` expects in
`logprobs` (vLLM's "processed logprobs") and what `entropic.sampling` sums per answer. Random
draws come from torch's global generator, so `torch.manual_seed` makes a call reproducible for
the same prompts, settings and `batch_size`.

`engine="hf"` is transformers' `generate` with left padding, kept for comparison
(`make bench`) and as the reference the tests hold the prefix engine to.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache
from transformers.generation import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from entropic.prefix_scoring import (
    cache_argument,
    expand_cache,
    windowed_layers,
)

# Drop finished rows from a decode batch once they are this share of it, and let waiting prompts
# in once this share of the batch is free: each drop or join copies the batch's KV cache, so
# doing it for every single row would copy about as much as it saves; a quarter bounds the copies
# while no more than a quarter of the batch computes for nothing.
COMPACT_SHARE = 0.25


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen: greedy (temperature None) or sampled."""

    # None: greedy (argmax); > 0: sample from softmax(logits / temperature)
    temperature: float | None = None
    # nucleus sampling: keep the smallest set of tokens holding this much probability (1: all)
    top_p: float = 1.0
    # keep only the k most likely tokens (0: all)
    top_k: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature is None

    def warpers(self) -> LogitsProcessorList:
        """transformers' warpers in the order `generate` applies them."""
        warpers = LogitsProcessorList()
        if self.greedy:
            return warpers
        if self.temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(self.temperature))
        if self.top_k:
            warpers.append(TopKLogitsWarper(self.top_k))
        if self.top_p < 1.0:
            warpers.append(TopPLogitsWarper(self.top_p))
        return warpers


GREEDY = Sampling()


@dataclass
class Generated:
    """Completions of one `generate` call, prompt-major (a prompt's samples side by side)."""

    # each completion's tokens, up to and including its stop token when it stopped
    token_ids: list[list[int]]
    # the log-probability of each of those tokens under the sampling distribution (None unless
    # asked for)
    logprobs: list[list[float]] | None
    # tokens of the prefix prefilled once and shared by every prompt (0 for engine hf)
    prefix_length: int = 0


def generate(
    model,
    prompt_ids: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    stop_ids: set[int] | Sequence[int],
    pad_token_id: int,
    engine: str = "prefix_cache",
    samples_per_prompt: int = 1,
    sampling: Sampling = GREEDY,
    batch_size: int = 32,
    logprobs: bool = False,
    progress: str | None = None,
) -> Generated:
    """`samples_per_prompt` completions of each prompt (token ids, no padding).

    A completion ends at its first token in `stop_ids` (kept) or after `max_new_tokens`; an empty
    `stop_ids` generates exactly `max_new_tokens` every time (benchmarks). `batch_size` bounds
    the sequences in one forward pass. Identical prompts are prefilled once by engine
    prefix_cache, so TRL's list of each prompt repeated G times costs one prefill per prompt.
    Rows come back prompt-major: all samples of prompt 0, then of prompt 1, and so on.
    `progress` names a progress bar over the sequences (None: no bar).
    """
    _check_arguments(model, prompt_ids, max_new_tokens, samples_per_prompt, sampling, batch_size)
    if engine not in ENGINES:
        raise ValueError(f"engine: unknown {engine!r}. Fix: use one of {sorted(ENGINES)}")
    total = len(prompt_ids) * samples_per_prompt
    with (
        _generating(model),
        tqdm(total=total, desc=progress, disable=progress is None, leave=False) as bar,
    ):
        request = _Request(
            prompts=[list(map(int, ids)) for ids in prompt_ids],
            max_new_tokens=max_new_tokens,
            stops=torch.tensor(sorted(set(stop_ids)), dtype=torch.long),
            pad_token_id=pad_token_id,
            samples_per_prompt=samples_per_prompt,
            sampling=sampling,
            batch_size=batch_size,
            want_logprobs=logprobs,
            bar=bar,
        )
        return ENGINES[engine](model, request)


@dataclass
class _Request:
    """`generate`'s arguments, checked, as every engine takes them."""

    prompts: list[list[int]]
    max_new_tokens: int
    # stop token ids (empty: always max_new_tokens)
    stops: torch.Tensor
    pad_token_id: int
    samples_per_prompt: int
    sampling: Sampling
    # most sequences in one forward pass
    batch_size: int
    want_logprobs: bool
    # advanced as sequences finish
    bar: tqdm


def _check_arguments(model, prompt_ids, max_new_tokens, samples_per_prompt, sampling, batch_size):
    """Bad input fails here, before any forward pass, naming the argument and the fix."""
    if len(prompt_ids) == 0:
        raise ValueError("prompt_ids: no prompts to generate from. Fix: pass at least one prompt")
    empty = [index for index, ids in enumerate(prompt_ids) if len(ids) == 0]
    if empty:
        raise ValueError(
            f"prompt_ids: prompts {empty[:5]} have no tokens. Fix: every prompt needs at least "
            "one token (a chat template always gives several)"
        )
    for name, value in (
        ("samples_per_prompt", samples_per_prompt),
        ("max_new_tokens", max_new_tokens),
        ("batch_size", batch_size),
    ):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: {value!r} is not a positive integer. Fix: pass 1 or more")
    if not sampling.greedy and not sampling.temperature > 0:
        raise ValueError(
            f"sampling.temperature: {sampling.temperature} must be > 0. Fix: a positive "
            "temperature, or None for greedy decoding"
        )
    if not 0.0 < sampling.top_p <= 1.0:
        raise ValueError(f"sampling.top_p: {sampling.top_p} is outside (0, 1]. Fix: e.g. 1.0")
    if sampling.top_k < 0:
        raise ValueError(f"sampling.top_k: {sampling.top_k} < 0. Fix: 0 (off) or a token count")
    context = getattr(model.config, "max_position_embeddings", None)
    longest = max(len(ids) for ids in prompt_ids)
    if context is not None and longest + max_new_tokens > context:
        raise ValueError(
            f"prompt_ids: the longest prompt ({longest} tokens) plus max_new_tokens "
            f"({max_new_tokens}) exceeds the model's context of {context} tokens. Fix: shorten the "
            "prompt (fewer few-shot turns) or lower max_new_tokens"
        )


@contextlib.contextmanager
def _generating(model) -> Iterator[None]:
    """Eval mode (no dropout; gradient checkpointing, which turns the cache off, is a training
    mode thing) and no autograd, restoring the model's mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


# ------------------------------------------------------------------------------------------------
# engine prefix_cache
# ------------------------------------------------------------------------------------------------


def common_prefix_length(prompts: Sequence[Sequence[int]]) -> int:
    """Tokens every prompt starts with, leaving each prompt at least one token of its own (its
    last token's logits are where its first new token comes from)."""
    shortest = min(len(ids) for ids in prompts)
    length = 0
    first = prompts[0]
    while length < shortest - 1 and all(ids[length] == first[length] for ids in prompts):
        length += 1
    return length


def _prefix_cache_generate(model, request: _Request) -> Generated:
    forward = _Forward(model)
    k = request.samples_per_prompt
    # each distinct prompt once, with the output rows it owes (identical prompts share one)
    rows_of: dict[tuple[int, ...], list[int]] = {}
    for index, ids in enumerate(request.prompts):
        rows_of.setdefault(tuple(ids), []).extend(range(index * k, (index + 1) * k))
    distinct = [list(ids) for ids in rows_of]
    prefix_length = common_prefix_length(distinct)
    prefix = forward.prefill_prefix(distinct[0][:prefix_length])
    # what is still to start: (distinct prompt, the output rows it owes), in order
    waiting = deque((i, list(rows)) for i, rows in enumerate(rows_of.values()))

    n_rows = len(request.prompts) * k
    token_ids: list[list[int]] = [[] for _ in range(n_rows)]
    token_logprobs: list[list[float]] = [[] for _ in range(n_rows)]
    warpers = request.sampling.warpers()
    batch: _Batch | None = None
    while waiting or batch is not None:
        free = request.batch_size - (len(batch) if batch else 0)
        # an empty batch takes whatever waits; a running one once a quarter of it is free
        if waiting and free >= (COMPACT_SHARE * request.batch_size if batch else 1):
            admitted = _admit(waiting, free, partial=batch is None)
            if admitted:
                suffixes = [distinct[i][prefix_length:] for i, _ in admitted]
                joining = forward.prefill_suffixes(prefix, prefix_length, suffixes, request)
                # each prompt's rows start from copies of its cache row
                joining.keep(
                    torch.tensor([j for j, (_, rows) in enumerate(admitted) for _ in rows]),
                    rows=torch.tensor([row for _, rows in admitted for row in rows]),
                )
                batch = joining if batch is None else batch.merge(joining, prefix_length)
        tokens, logprobs = _pick(batch.logits, request.sampling, warpers)
        for position, token, logprob in zip(
            (~batch.stopped).nonzero().flatten().tolist(),
            tokens[~batch.stopped.to(tokens.device)].tolist(),
            logprobs[~batch.stopped.to(tokens.device)].tolist(),
            strict=True,
        ):
            row = int(batch.rows[position])
            token_ids[row].append(token)
            token_logprobs[row].append(logprob)
        batch.generated += (~batch.stopped).long()
        ended = torch.isin(tokens.cpu(), request.stops) | (
            batch.generated >= request.max_new_tokens
        )
        request.bar.update(int((ended & ~batch.stopped).sum()))
        batch.stopped |= ended
        if bool(batch.stopped.all()):
            batch = None
            continue
        if batch.stopped.sum() >= COMPACT_SHARE * len(batch):
            keep = (~batch.stopped).nonzero().flatten()
            batch.keep(keep)
            tokens = tokens[keep.to(tokens.device)]
            batch.trim(prefix_length)
        forward.step(batch, tokens)
    logprobs_out = token_logprobs if request.want_logprobs else None
    return Generated(token_ids, logprobs_out, prefix_length)


def _admit(waiting: deque, free: int, partial: bool) -> list[tuple[int, list[int]]]:
    """Prompts that start now: whole prompts from the front while their rows fit in `free`
    rows. With `partial` (an empty batch) a prompt owing more rows than a batch holds starts
    with as many as fit; the rest wait (and its suffix is prefilled again for them)."""
    admitted: list[tuple[int, list[int]]] = []
    while waiting and len(waiting[0][1]) <= free:
        prompt, rows = waiting.popleft()
        admitted.append((prompt, rows))
        free -= len(rows)
    if not admitted and partial:
        prompt, rows = waiting[0]
        admitted.append((prompt, rows[:free]))
        del rows[:free]
    return admitted


@dataclass
class _Batch:
    """Decoder state of the rows being generated. Column layout (module docstring): the shared
    prefix, then each row's own tokens right-aligned, masked padding between."""

    cache: DynamicCache
    # logits of each row's next token
    logits: torch.Tensor
    # 1 for every cache column the row attends to (its prefix, its own tokens), 0 for padding
    mask: torch.Tensor
    # position id of each row's next token
    positions: torch.Tensor
    # output row of each batch row (CPU)
    rows: torch.Tensor
    # tokens each row has generated (CPU)
    generated: torch.Tensor
    # whether the row has stopped (CPU); stopped rows are fed until they are dropped
    stopped: torch.Tensor

    def __len__(self) -> int:
        return len(self.logits)

    def keep(self, index: torch.Tensor, rows: torch.Tensor | None = None) -> None:
        """Keep the batch rows at `index` (repeats allowed), in place; `rows` renames them."""
        on_device = index.to(self.logits.device)
        self.cache.batch_select_indices(on_device)
        self.logits, self.mask = self.logits[on_device], self.mask[on_device]
        self.positions = self.positions[on_device]
        self.rows = self.rows[index] if rows is None else rows
        self.generated, self.stopped = self.generated[index], self.stopped[index]

    def widen(self, width: int, prefix_length: int) -> None:
        """Insert masked padding after the prefix until the batch is `width` columns wide."""
        extra = width - self.mask.shape[1]
        if extra <= 0:
            return
        for layer in self.cache.layers:
            # DynamicLayer keeps its tensors as `keys` and `values`, as its own
            # batch_select_indices rewrites them
            layer.keys = _insert_columns(layer.keys, prefix_length, extra, dim=2)
            layer.values = _insert_columns(layer.values, prefix_length, extra, dim=2)
        self.mask = _insert_columns(self.mask, prefix_length, extra, dim=1)

    def trim(self, prefix_length: int) -> None:
        """Drop the padding columns no row attends to any more (rows that joined late left
        them; rows that stopped have gone), once there are enough to be worth a copy."""
        attended = self.mask[:, prefix_length:].any(dim=0)
        unused = int(attended.int().argmax()) if bool(attended.any()) else 0
        if unused < TRIM_COLUMNS:
            return
        for layer in self.cache.layers:
            layer.keys = _remove_columns(layer.keys, prefix_length, unused, dim=2)
            layer.values = _remove_columns(layer.values, prefix_length, unused, dim=2)
        self.mask = _remove_columns(self.mask, prefix_length, unused, dim=1)

    def merge(self, other: _Batch, prefix_length: int) -> _Batch:
        """This batch and `other` as one, both padded to the wider of the two."""
        width = max(self.mask.shape[1], other.mask.shape[1])
        self.widen(width, prefix_length)
        other.widen(width, prefix_length)
        for mine, theirs in zip(self.cache.layers, other.cache.layers, strict=True):
            mine.keys = torch.cat([mine.keys, theirs.keys])
            mine.values = torch.cat([mine.values, theirs.values])
        for name in ("logits", "mask", "positions", "rows", "generated", "stopped"):
            setattr(self, name, torch.cat([getattr(self, name), getattr(other, name)]))
        return self


# Trim unused padding columns once there are this many: each trim copies the whole cache.
TRIM_COLUMNS = 16


def _remove_columns(tensor: torch.Tensor, at: int, count: int, dim: int) -> torch.Tensor:
    """`tensor` without the `count` columns from column `at` of dimension `dim`."""
    before, _, after = tensor.split([at, count, tensor.shape[dim] - at - count], dim=dim)
    return torch.cat([before, after], dim=dim)


def _insert_columns(tensor: torch.Tensor, at: int, count: int, dim: int) -> torch.Tensor:
    """`tensor` with `count` zero columns inserted before column `at` of dimension `dim`."""
    shape = list(tensor.shape)
    shape[dim] = count
    before, after = tensor.split([at, tensor.shape[dim] - at], dim=dim)
    return torch.cat([before, tensor.new_zeros(shape), after], dim=dim)


class _Forward:
    """The model's forward pass with an explicit cache, mask and position ids."""

    def __init__(self, model):
        self.model = model
        self.cache_argument = cache_argument(model)
        self.device = next(model.parameters()).device

    def __call__(self, input_ids, cache, **kwargs) -> torch.Tensor:
        """Logits of the last column, float32 (bf16 logits would round the log-probabilities)."""
        output = self.model(
            input_ids=input_ids,
            use_cache=True,
            logits_to_keep=1,
            **{self.cache_argument: cache},
            **kwargs,
        )
        return output.logits[:, -1, :].float()

    def prefill_prefix(self, prefix: list[int]) -> DynamicCache:
        cache = DynamicCache(config=self.model.config)
        unsupported = windowed_layers(self.model.config)
        if unsupported:
            raise ValueError(
                f"engine prefix_cache: layers {[i for i, _ in unsupported[:5]]} of this model "
                f"keep a {unsupported[0][1]} (sliding-window or linear "
                "attention), which padding inside the sequence would change. Fix: generation=hf "
                "(and rollout=hf) for this model"
            )
        if prefix:
            self(torch.tensor([prefix], device=self.device), cache)
        return cache

    def prefill_suffixes(
        self,
        prefix: DynamicCache,
        prefix_length: int,
        suffixes: list[list[int]],
        request: _Request,
    ) -> _Batch:
        """One row per suffix, right-aligned after a copy of the prefix (module docstring)."""
        n = len(suffixes)
        input_ids, mask, positions = rows_after_prefix(
            suffixes, prefix_length, request.pad_token_id
        )
        cache = expand_cache(prefix, n) if prefix_length else DynamicCache()
        input_ids, mask, positions = (t.to(self.device) for t in (input_ids, mask, positions))
        logits = self(input_ids, cache, attention_mask=mask, position_ids=positions)
        return _Batch(
            cache,
            logits,
            mask,
            positions[:, -1] + 1,
            rows=torch.arange(n),
            generated=torch.zeros(n, dtype=torch.long),
            stopped=torch.zeros(n, dtype=torch.bool),
        )

    def step(self, batch: _Batch, tokens: torch.Tensor) -> None:
        """Feed one new token per row; the batch then holds the logits of the next."""
        batch.mask = torch.cat([batch.mask, batch.mask.new_ones(len(tokens), 1)], dim=1)
        batch.logits = self(
            tokens[:, None],
            batch.cache,
            attention_mask=batch.mask,
            position_ids=batch.positions[:, None],
        )
        batch.positions = batch.positions + 1


def _pick(
    logits: torch.Tensor, sampling: Sampling, warpers: LogitsProcessorList
) -> tuple[torch.Tensor, torch.Tensor]:
    """The next token of every row and its log-probability under the sampling distribution."""
    if sampling.greedy:
        scores = logits
        tokens = scores.argmax(dim=-1)
    else:
        scores = warpers(None, logits)
        tokens = torch.multinomial(scores.softmax(dim=-1), num_samples=1).squeeze(1)
    logprobs = scores.log_softmax(dim=-1).gather(1, tokens[:, None]).squeeze(1)
    return tokens, logprobs


# ------------------------------------------------------------------------------------------------
# engine hf
# ------------------------------------------------------------------------------------------------


def generated_lengths(new_tokens: torch.Tensor, stops: torch.Tensor) -> torch.Tensor:
    """Tokens each row really generated: up to and including its first stop token, else all.

    `generate` keeps writing padding after a row has stopped; those positions are not part of
    the sampled sequence and must not count towards its log-probability.
    """
    is_stop = torch.isin(new_tokens, stops.to(new_tokens.device))
    width = new_tokens.shape[1]
    return torch.where(is_stop.any(dim=1), is_stop.int().argmax(dim=1) + 1, width)


def left_pad(prompts: list[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids and attention_mask of prompts left-padded to one width, as `generate` wants."""
    width = max(len(ids) for ids in prompts)
    input_ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for row, ids in enumerate(prompts):
        input_ids[row, width - len(ids) :] = torch.tensor(ids)
        mask[row, width - len(ids) :] = 1
    return input_ids, mask


def rows_after_prefix(
    rows: list[list[int]], prefix_length: int, pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token ids, attention mask and position ids of `rows` (each row's tokens after a shared
    prefix of `prefix_length`, whose cache `expand_cache` copies to every row): the rows
    left-padded (`left_pad`), the mask covering the prefix and each row's own tokens,
    positions counting on from the prefix (padding gets 0; it is masked)."""
    input_ids, own = left_pad(rows, pad_token_id)
    mask = torch.cat([own.new_ones(len(rows), prefix_length), own], dim=1)
    positions = (prefix_length + own.cumsum(-1) - 1) * own
    return input_ids, mask, positions


def _hf_generate(model, request: _Request) -> Generated:
    """transformers' `generate`, `batch_size // samples_per_prompt` prompts per call (at least
    one), each with `num_return_sequences=samples_per_prompt`."""
    device = next(model.parameters()).device
    sampling, stops, want_logprobs = request.sampling, request.stops, request.want_logprobs
    prompts, max_new_tokens = request.prompts, request.max_new_tokens
    if sampling.greedy:
        settings = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    else:
        settings = {
            "do_sample": True,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "top_k": sampling.top_k,
        }
    if len(stops):
        settings["eos_token_id"] = stops.tolist()
    else:
        # generate has no "no stop token": the model's EOS is suppressed instead, so the work
        # matches (the distribution differs by that one token, which no benchmark reads)
        settings["min_new_tokens"] = max_new_tokens
    per_call = max(1, request.batch_size // request.samples_per_prompt)
    token_ids: list[list[int]] = []
    token_logprobs: list[list[float]] = []
    for start in range(0, len(prompts), per_call):
        input_ids, mask = left_pad(prompts[start : start + per_call], request.pad_token_id)
        output = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            num_return_sequences=request.samples_per_prompt,
            pad_token_id=request.pad_token_id,
            output_scores=want_logprobs,
            return_dict_in_generate=True,
            **settings,
        )
        new_tokens = output.sequences[:, input_ids.shape[1] :].cpu()
        lengths = generated_lengths(new_tokens, stops) if len(stops) else None
        if want_logprobs:
            # Positions after the stop token may hold -inf; they are cut off below.
            scores = model.compute_transition_scores(
                output.sequences, output.scores, normalize_logits=True
            ).cpu()
        for row in range(len(new_tokens)):
            length = int(lengths[row]) if lengths is not None else new_tokens.shape[1]
            token_ids.append(new_tokens[row, :length].tolist())
            if want_logprobs:
                token_logprobs.append(scores[row, :length].float().tolist())
        request.bar.update(len(new_tokens))
    return Generated(token_ids, token_logprobs if want_logprobs else None)


# Every engine: name -> the function that generates with it (`generate` dispatches).
ENGINES: dict[str, Callable[[torch.nn.Module, _Request], Generated]] = {
    "prefix_cache": _prefix_cache_generate,
    "hf": _hf_generate,
}


def generate_chats(
    model, tokenizer, chats: list[list[dict]], **settings
) -> tuple[list[str], Generated]:
    """`generate` for chat prompts: tokenised by the chat template, ended by the model's and the
    tokenizer's stop tokens, padded with the tokenizer's pad token; returns the completions as
    text (special tokens dropped) with the tokens they came from."""
    generated = generate(
        model,
        chat_prompt_ids(tokenizer, chats),
        stop_ids=stop_token_ids(model, tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        **settings,
    )
    return tokenizer.batch_decode(generated.token_ids, skip_special_tokens=True), generated


def chat_prompt_ids(tokenizer, prompts: list[list[dict]]) -> list[list[int]]:
    """Token ids of chat prompts with the generation prompt appended, no padding (the template
    writes the special tokens)."""
    texts = [
        tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False)
        for p in prompts
    ]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def stop_token_ids(model, tokenizer) -> set[int]:
    """Every id that ends a completion: the tokenizer's EOS and the generation config's."""
    configured = model.generation_config.eos_token_id
    if configured is None:
        configured = []
    ids = set(configured) if isinstance(configured, list) else {configured}
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids
