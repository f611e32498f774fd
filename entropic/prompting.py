"""Chat prompts that ask for an answer and a stated confidence (the `prompt` config group).

Measured on SmolLM2-135M: a system message plus two few-shot turns in the `Answer:` /
`Confidence:` line format gets the format in about 78% of samples, the tag format in 0%. Both are
kept, since larger models handle tags, and `entropic.parsing` reads both.
"""

from __future__ import annotations

from typing import Any

import datasets

from entropic.config import PromptConfig


def format_reply(answer: str, confidence: int, fmt: str) -> str:
    """The assistant turn the few-shot examples teach."""
    if fmt == "tags":
        return f"<answer>{answer}</answer><confidence>{confidence}</confidence>"
    return f"Answer: {answer}\nConfidence: {confidence}"


def build_messages(question: str, cfg: PromptConfig) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": cfg.system}]
    for turn in cfg.few_shot:
        messages.append({"role": "user", "content": turn["question"]})
        messages.append(
            {
                "role": "assistant",
                "content": format_reply(turn["answer"], int(turn["confidence"]), cfg.format),
            }
        )
    messages.append({"role": "user", "content": question})
    return messages


def add_prompts(dataset: datasets.Dataset, cfg: PromptConfig) -> datasets.Dataset:
    """Add TRL's conversational `prompt` column; the other columns reach the reward functions."""

    def _one(row: dict[str, Any]) -> dict[str, Any]:
        return {"prompt": build_messages(row["question"], cfg)}

    return dataset.map(_one, desc="prompts")
