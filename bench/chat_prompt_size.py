"""`python -m bench.chat_prompt_size`: prompt size per LLM call over a T=100 chat, as the README's table.

One climb (R=S=1, T=100, m=4, k=3, the other knobs at their defaults) runs
through the `run` command against the real scorer (the tiny random CLIP on a
4-class image folder) and the scripted OpenAI-compatible LLM of the tests,
which answers each call with m new templates. The table gives, at chosen
iterations, the messages sent, their characters and the optimizer's token
estimate, for a chat bounded by the default context (--llm-context-tokens 4096)
and, for scale, a stateless run and the stateless strategies (opro, edit; see
docs/strategies.md). The LLM's own token counts are not used: the scripted
server reports a constant.

    python -m bench.chat_prompt_size [--iterations 100] [--context-tokens 4096]
"""

from __future__ import annotations

import os
import platform
import signal
import tempfile
from pathlib import Path

from bench.report import write_table
from optimizer_service.cli import main as optimizer_main
from optimizer_service.config import LlmSettings
from optimizer_service.metaprompt import estimate_tokens
from promptclimb_common.cli_help import ArgumentParser
from promptclimb_common.processes import REPO
from testbed.random_clip import build_random_clip
from tests.fixtures import write_image_folder
from tests.optimizer.scripted_llm import ScriptedLLM
from tests.procs import start_scorer, stop_process

RESULT = REPO / "bench" / "results" / "chat_prompt_size.md"


# Column -> the spec flags of its run; only the hill climb's chat keeps a conversation (and only the hill climb takes
# --conversation: the service refuses it with another strategy).
RUNS = {
    "chat": ("--strategy", "hill_climb", "--conversation", "chat"),
    "stateless": ("--strategy", "hill_climb", "--conversation", "stateless"),
    "opro": ("--strategy", "opro"),
    "edit": ("--strategy", "edit"),
}


def climb(scorer: str, out: Path, flags: tuple[str, ...], iterations: int, context_tokens: int) -> list[list[dict]]:
    """The messages of every LLM call of one climb, in iteration order."""
    with ScriptedLLM() as llm:
        code = optimizer_main(
            [
                "run",
                "--scorer",
                scorer,
                "--task",
                "shapes",
                "--out",
                str(out),
                "--llm-base-url",
                llm.url,
                "--llm-model",
                "scripted",
                "--restarts",
                "1",
                "--resets",
                "1",
                "--iterations",
                str(iterations),
                *flags,
                "--llm-context-tokens",
                str(context_tokens),
                "--ensemble-size",
                "1",
                "--log-level",
                "WARNING",
            ]
        )
        if code != 0:
            raise SystemExit(f"the {' '.join(flags)} run failed (exit {code}); see its log above")
        calls = sorted(llm.seen, key=lambda s: int(s.call_id.rsplit("/", 1)[1]))
    return [s.messages for s in calls]


def main() -> None:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--context-tokens", type=int, default=4096)
    ns = parser.parse_args()
    os.environ.setdefault("OPENAI_API_KEY", "placeholder")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = build_random_clip(root / "clip", "tiny", seed=0)
        images = write_image_folder(root / "images", per_class=6)
        process, address = start_scorer(model, {"shapes": images}, root / "cache", root / "scorer.log", "--shots", "3")
        try:
            runs = {
                column: climb(address, root / column, flags, ns.iterations, ns.context_tokens)
                for column, flags in RUNS.items()
            }
        finally:
            stop_process(process, signal.SIGTERM)
    shown = sorted({1, 2, 5, 10, 25, 50, 75, ns.iterations} & set(range(1, ns.iterations + 1)))
    budget = LlmSettings(context_tokens=ns.context_tokens).prompt_budget_tokens
    lines = [
        f"Prompt size per LLM call, one climb of T={ns.iterations} (m=4, k=3), `python -m bench.chat_prompt_size` "
        f"on {os.cpu_count()} CPU cores ({platform.machine()}); "
        f"chat bounded by --llm-context-tokens {ns.context_tokens} "
        f"(prompt budget {budget} estimated tokens).",
        "",
        "| call | chat: messages | chat: characters | chat: est. tokens "
        "| stateless: characters | stateless: est. tokens | opro: est. tokens | edit: est. tokens |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for call in shown:
        chat, stateless = runs["chat"][call - 1], runs["stateless"][call - 1]
        lines.append(
            f"| {call} | {len(chat)} | {sum(len(m['content']) for m in chat):,} | {estimate_tokens(chat):,} | "
            f"{sum(len(m['content']) for m in stateless):,} | {estimate_tokens(stateless):,} | "
            f"{estimate_tokens(runs['opro'][call - 1]):,} | {estimate_tokens(runs['edit'][call - 1]):,} |"
        )
    largest = max(estimate_tokens(m) for m in runs["chat"])
    lines += ["", f"Largest chat prompt: {largest:,} estimated tokens."]
    write_table(RESULT, lines)


if __name__ == "__main__":
    main()
