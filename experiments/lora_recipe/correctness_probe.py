"""Is the correctness of the model's answers written in its hidden states? A linear probe.

The .62 AUROC target asks the trained model's stated confidence to rank its right answers above
its wrong ones. A confidence the adapter can learn from question-level rewards has to be read off
what the model computes where it states it. If no linear read-out of those hidden states ranks
right above wrong on the held-out questions, RL on this model has little to learn from; if one
does, the signal is there and the recipe is what misses it. This script measures that read-out
on the base model, with the baselines beside it:

    python experiments/lora_recipe/correctness_probe.py [--train-questions 1200] \
        [--adapter RUN_FOLDER/checkpoint-N] [--out correctness_probe.png] \
        [Hydra overrides, default +experiment=scarce_mixed]

With `--adapter`, the model is a trained run's (its LoRA adapter on the base weights, as the
train job evaluates it): does training keep what the base model knows, and does its stated
confidence say more of it?

1. The run's questions as a train job gets them (the CPU profile on a CPU): greedy answers of the
   base model, with the run's prompt and evaluation engine, to `--train-questions` questions of
   the training pool and to the held-out questions the targets are measured on (200), graded as
   evaluation grades them.
2. Features: the hidden state of every layer at the last token before the stated number (the
   prompt, the answer and "Confidence:"), from one forward pass per completion.
3. Per layer, a logistic regression (standardised features, the L2 strength chosen by 3-fold
   cross-validation within the training questions); the layer with the best cross-validated AUROC is
   chosen on the training questions alone, then scored once on the held-out ones. Beside it: the
   stated greedy confidence, the per-kind base rate learnt from the training questions (what a
   confidence by kind could reach), and the answer line's mean token probability; and a
   control, the chosen layer's probe fitted to shuffled training labels, which must score ~.5.

About 4 minutes on 2 CPU cores, 12 with an adapter (peft's layers slow every pass). Findings
(2026-11-29, AMD EPYC) are in README.md beside this file.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from peft import PeftModel  # noqa: E402
from sklearn.linear_model import LogisticRegressionCV  # noqa: E402
from sklearn.model_selection import StratifiedKFold, cross_val_predict  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from tqdm import tqdm  # noqa: E402

from entropic.evaluate import evaluate  # noqa: E402
from entropic.generation import chat_prompt_ids  # noqa: E402
from entropic.jobs.context import prepare  # noqa: E402
from entropic.metrics import auroc  # noqa: E402
from entropic.parsing import confidence_key_start  # noqa: E402
from entropic.prompting import build_messages  # noqa: E402

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")


def study_context(overrides: list[str]):
    """The run's context as a train job prepares it (config, policy, splits), for Hydra
    overrides; none: the demo's (+experiment=scarce_mixed)."""
    overrides = overrides or ["+experiment=scarce_mixed"]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", [*overrides, f"output_dir={tempfile.mkdtemp()}"])
    return prepare(cfg)


def probe_inputs(tokenizer, prompt, predictions) -> tuple[list[list[int]], list[tuple[int, int]]]:
    """Token ids up to the stated number of each parsed completion, and where its answer line
    starts and ends (to score the answer's log-probability)."""
    inputs, answer_spans = [], []
    for row in predictions.itertuples():
        start = confidence_key_start(row.completion, prompt.format)
        value_at = start + row.completion[start:].index(":") + 1
        prefix = chat_prompt_ids(tokenizer, [build_messages(row.question, prompt)])[0]
        answer = tokenizer(row.completion[:start], add_special_tokens=False)["input_ids"]
        key = tokenizer(row.completion[start:value_at], add_special_tokens=False)["input_ids"]
        inputs.append(prefix + answer + key)
        answer_spans.append((len(prefix), len(prefix) + len(answer)))
    return inputs, answer_spans


@torch.no_grad()
def features(model, inputs, answer_spans) -> tuple[np.ndarray, np.ndarray]:
    """(hidden states at the last token, layers x questions x width; mean log-probability of
    the tokens of each answer line under the model)."""
    states, logprobs = [], []
    for ids, (start, end) in tqdm(
        zip(inputs, answer_spans, strict=True), total=len(inputs), desc="features"
    ):
        out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
        states.append(torch.stack([h[0, -1] for h in out.hidden_states]).float().numpy())
        token_logprobs = out.logits[0, start - 1 : end - 1].float().log_softmax(-1)
        answer = torch.tensor(ids[start:end])
        logprobs.append(float(token_logprobs.gather(1, answer[:, None]).mean()))
    return np.stack(states, axis=1), np.array(logprobs)


def classifier():
    return make_pipeline(
        StandardScaler(),
        LogisticRegressionCV(Cs=np.logspace(-4, 0, 6), cv=3, scoring="roc_auc", max_iter=2000),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-questions", type=int, default=1200)
    parser.add_argument("--adapter", type=Path, help="a trained run's checkpoint folder")
    parser.add_argument("--out", type=Path, default=Path("correctness_probe.png"))
    args, overrides = parser.parse_known_args()
    # scikit-learn 1.9 announces a change of LogisticRegressionCV's attributes on every fit
    warnings.filterwarnings("ignore", category=FutureWarning, module="sklearn")
    context = study_context(overrides)
    config = context.config
    model = context.policy.load_model()
    if args.adapter is not None:
        model = PeftModel.from_pretrained(model, str(args.adapter))
    model.eval()
    tokenizer = context.policy.tokenizer
    pool = context.splits.train
    train_questions = pool.select(range(min(args.train_questions, len(pool))))
    tables, inputs = {}, {}
    for name, questions in (("train", train_questions), ("held_out", context.splits.eval)):
        predictions, _ = evaluate(
            model, tokenizer, questions, config.prompt, config.eval, config.generation.name
        )
        kinds = dict(zip(questions["question_id"], questions["kind"], strict=True))
        predictions["kind"] = predictions["question_id"].map(kinds)
        # a completion without a stated number has no place to read the state at
        predictions = predictions.dropna(subset=["confidence"]).reset_index(drop=True)
        tables[name] = predictions
        inputs[name] = features(model, *probe_inputs(tokenizer, config.prompt, predictions))
    train, held_out = tables["train"], tables["held_out"]
    y_train = train["correct"].to_numpy(int)
    y_held = held_out["correct"].to_numpy(int)
    (states_train, _), (states_held, logprob_held) = inputs["train"], inputs["held_out"]
    print(
        f"{len(train)} training and {len(held_out)} held-out answers with a stated number; "
        f"accuracy {y_train.mean():.3f} / {y_held.mean():.3f}"
    )

    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    layers = range(states_train.shape[0])
    cross_validated, held_out_auroc = [], []
    for layer in tqdm(layers, desc="probes"):
        scores = cross_val_predict(
            classifier(), states_train[layer], y_train, cv=folds, method="predict_proba"
        )[:, 1]
        cross_validated.append(auroc(scores, y_train))
        fitted = classifier().fit(states_train[layer], y_train)
        held_out_auroc.append(auroc(fitted.predict_proba(states_held[layer])[:, 1], y_held))
    best = int(np.argmax(cross_validated))
    # the control: the same probe fitted to shuffled training labels must rank at chance
    shuffled = np.random.default_rng(0).permutation(y_train)
    control = classifier().fit(states_train[best], shuffled).predict_proba(states_held[best])[:, 1]

    kind_rate = train.groupby("kind")["correct"].mean()
    by_kind = held_out["kind"].map(kind_rate).fillna(y_train.mean()).to_numpy(float)
    rows = [
        ("stated greedy confidence", auroc(held_out["confidence"].to_numpy(float), y_held)),
        ("per-kind base rate (from the training answers)", auroc(by_kind, y_held)),
        # exp of the mean log-probability: the geometric mean token probability, in [0, 1]
        ("mean token probability of the answer line", auroc(np.exp(logprob_held), y_held)),
        (f"linear probe, layer {best} (chosen by 5-fold CV on train)", held_out_auroc[best]),
        ("linear probe, best layer on held-out (optimistic)", max(held_out_auroc)),
        (f"control: layer {best}'s probe on shuffled training labels", auroc(control, y_held)),
    ]
    print(f"\nheld-out AUROC ({len(held_out)} answers, {int(y_held.sum())} right)")
    for name, value in rows:
        print(f"  {name:60s} {value:.3f}")

    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    ax.plot(layers, cross_validated, marker=".", label="5-fold CV on training answers")
    ax.plot(layers, held_out_auroc, marker=".", label="held-out answers")
    ax.axhline(rows[1][1], color="grey", ls="--", lw=1, label="per-kind base rate (held-out)")
    ax.axhline(0.62, color="tab:red", ls=":", lw=1, label="issue 10 target (.62)")
    ax.set_xlabel("layer (0 = embeddings)")
    ax.set_ylabel("AUROC of right vs wrong")
    whose = "the base model" if args.adapter is None else f"{args.adapter}"
    ax.set_title(f"Linear read-out of correctness from the hidden state of {whose}", fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
