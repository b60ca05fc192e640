"""How often the search's LLM writes each cue of a world: the planted world's findability.

A planted preference is a fair test of a search only if the search can stumble
on it. This samples the embedded LLM (or any OpenAI-compatible endpoint) the
way the search asks it, with no feedback, and counts the share of written
templates that hold each cue (any of its words, whole-word, case-insensitive):

- `initial`: the initial-pool ask, which shows the task and its class names
  (optimizer_service.metaprompt.initial_pool_messages);
- `random`: random search's ask (MetaPrompt with feedback none), which shows the same task context.

Each ask requests TEMPLATES_PER_ASK templates at temperature 1 with no grammar, seeded by its index.
`--save FILE` keeps every written template, and `--from FILE` recounts a saved
sample (for other words) without the LLM.

    python -m testbed.findability --asks 40 --save bench/results/findability_sample.json
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import cast

import openai
from openai.types.chat import ChatCompletionMessageParam

from optimizer_service.choices import Feedback
from optimizer_service.metaprompt import Message, MetaPrompt, TaskContext, initial_pool_messages
from optimizer_service.parsing import parse_templates
from testbed.train import CLASS_NAMES
from testbed.worlds import WORLDS, cue_words, world

TASK = "fmnist"  # the task id the benchmark and the demo give the optimizer
TEMPLATES_PER_ASK = 4
PROMPTS = ("initial", "random")


def messages(prompt: str, class_names: Sequence[str]) -> list[Message]:
    task = TaskContext(TASK, tuple(class_names))
    if prompt == "initial":
        return initial_pool_messages(task, TEMPLATES_PER_ASK)
    return MetaPrompt(task, Feedback.NONE, False, TEMPLATES_PER_ASK).opening([], [])


def sample(client: openai.OpenAI, model: str, prompt: str, asks: int) -> list[str]:
    """Every template the LLM wrote over `asks` asks (duplicates kept: they are what the search sees)."""
    written: list[str] = []
    for ask in range(asks):
        reply = client.chat.completions.create(
            model=model,
            messages=cast("list[ChatCompletionMessageParam]", messages(prompt, CLASS_NAMES)),
            temperature=1.0,
            seed=ask,
            max_tokens=200,
        )
        written += parse_templates(reply.choices[0].message.content or "", CLASS_NAMES).templates
    return written


def rates(templates: Sequence[str], families: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """Percent of templates holding any word of each family (whole words, any case): a cue and its words."""
    out = {}
    for name, words in families.items():
        pattern = re.compile("|".join(rf"\b{re.escape(word)}\b" for word in words), re.IGNORECASE)
        out[name] = 100.0 * sum(bool(pattern.search(t)) for t in templates) / max(1, len(templates))
    return out


def table(samples: dict[str, list[str]], families: Mapping[str, Sequence[str]]) -> str:
    header = "| cue (its words) | " + " | ".join(f"{p} ask: % of {len(samples[p])} templates" for p in samples)
    lines = [header + " |", "|---|" + "---|" * len(samples)]
    per_prompt = {p: rates(t, families) for p, t in samples.items()}
    lines += [
        f"| `{name}` ({', '.join(words)}) | " + " | ".join(f"{per_prompt[p][name]:.1f}" for p in samples) + " |"
        for name, words in families.items()
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m testbed.findability", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--asks", type=int, default=40, help="asks per prompt (default %(default)s)")
    parser.add_argument("--prompt", choices=PROMPTS, action="append", help="default: both")
    parser.add_argument("--world", choices=WORLDS, default=WORLDS[0], help="whose cues to count (default %(default)s)")
    parser.add_argument("--word", action="append", default=[], help="also count this word or phrase")
    parser.add_argument("--llm-base-url", help="an OpenAI-compatible endpoint (default: start the embedded LLM)")
    parser.add_argument("--llm-model", default="local")
    parser.add_argument("--save", type=Path, help="write the sampled templates to this JSON file")
    parser.add_argument("--from", dest="load", type=Path, help="recount a saved sample instead of asking")
    args = parser.parse_args(argv)
    families = {**cue_words(world(args.world)), **{word: (word,) for word in args.word}}
    if args.load:
        samples = json.loads(args.load.read_text())["templates"]
    else:
        with ExitStack() as stack:
            base_url = args.llm_base_url
            if base_url is None:
                from demo.embedded_llm import LlamaServer

                base_url = stack.enter_context(LlamaServer.for_model()).base_url
            client = openai.OpenAI(base_url=base_url, api_key="unused")
            samples = {p: sample(client, args.llm_model, p, args.asks) for p in args.prompt or PROMPTS}
        if args.save:
            args.save.parent.mkdir(parents=True, exist_ok=True)
            args.save.write_text(json.dumps({"asks": args.asks, "templates": samples}, indent=1) + "\n")
    print(table(samples, families))


if __name__ == "__main__":
    main()
