"""`make demo`: the whole system on one machine, end to end: `promptclimb optimize` (promptclimb/optimize.py)
with the demo's model, data and budget.

It starts an LLM (the embedded llama-server, or a remote OpenAI-compatible
endpoint), the scorer and the optimizer service on loopback ports, runs one
search through the optimizer's gRPC API, prints the baselines `{}` and
`a photo of a {}.` against the run's answer on train and test, writes the
report (result.json, accuracy.png, summary.md), and stops every process, also
on Ctrl-C or failure.

By default the scorer serves the testbed CLIP (testbed/train.py: a small model
trained on Fashion-MNIST on this machine, trained on first use and cached), on
Fashion-MNIST with the full test split.

Environment knobs (all optional):
  SCORER_MODEL      CLIP hub id or directory instead of the testbed model (one that
                    cannot be loaded stops the demo with the reason)
  DEMO_DATA         image-folder dataset (default: Fashion-MNIST, 100 train images
                    per class to draw shots from, the full 10,000-image test split)
  DEMO_SHOTS        train images per class the search sees (default 16)
  OPENAI_API_KEY    use OpenAI (gpt-4o-mini unless LLM_MODEL) instead of the embedded LLM;
                    `make demo` then skips building llama.cpp
  LLM_BASE_URL, LLM_MODEL   a remote OpenAI-compatible endpoint and model
  DEMO_LLM          embedded model: qwen2.5-coder-1.5b (default) or qwen2.5-coder-0.5b
  DEMO_LLM_GRAMMAR  true/false: constrain replies with a GBNF grammar (default: true for the embedded LLM)
  DEMO_OUT          output directory (default demo-out)
  DEMO_RESTARTS, DEMO_RESETS, DEMO_ITERATIONS, DEMO_TEMPLATES_PER_CALL, DEMO_POOL   the run's budget
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from demo.embedded_llm import DEFAULT_MODEL
from promptclimb.optimize import OptimizeError, OptimizeSettings, optimize
from promptclimb.optimizer.v1 import optimizer_pb2 as opt_pb
from promptclimb_common.cli_help import ArgumentParser
from promptclimb_common.logging import configure_logging
from testbed.fashion_mnist import prepare_testbed_task
from testbed.random_clip import UNTRAINED_MARKER
from testbed.train import ensure_model

UNTRAINED_WARNING = "untrained model: accuracies are chance level; set SCORER_MODEL to real weights"
TESTBED_NOTE = "testbed model: a small CLIP trained here on Fashion-MNIST, not CLIP"


@dataclass(frozen=True)
class DemoSettings:
    model: str | None
    data: Path | None
    shots: int
    out: Path
    llm_base_url: str | None
    llm_model: str | None
    embedded_llm: str
    llm_grammar: bool | None
    restarts: int
    resets: int
    iterations: int
    templates_per_call: int
    pool: int

    @classmethod
    def from_env(cls) -> DemoSettings:
        env = os.environ.get
        grammar = env("DEMO_LLM_GRAMMAR")
        return cls(
            model=env("SCORER_MODEL") or None,
            data=Path(data) if (data := env("DEMO_DATA")) else None,
            shots=int(env("DEMO_SHOTS", 16)),
            out=Path(env("DEMO_OUT", "demo-out")),
            llm_base_url=env("LLM_BASE_URL") or None,
            llm_model=env("LLM_MODEL") or None,
            embedded_llm=env("DEMO_LLM", DEFAULT_MODEL),
            llm_grammar=None if grammar is None else grammar.lower() == "true",
            restarts=int(env("DEMO_RESTARTS", 2)),
            resets=int(env("DEMO_RESETS", 1)),
            iterations=int(env("DEMO_ITERATIONS", 3)),
            templates_per_call=int(env("DEMO_TEMPLATES_PER_CALL", 4)),
            pool=int(env("DEMO_POOL", 10)),
        )


def resolve_model(ref: str | None) -> tuple[str, str]:
    """The CLIP checkpoint to serve and the report's note on it: the testbed's, or a warning for an untrained one (a
    directory with testbed's untrained marker).

    No `ref`: the testbed model, trained here on first use. Anything else is served as it is: one that cannot be
    loaded stops the demo with the scorer's reason, never a stand-in with random weights."""
    if ref is None:
        return str(ensure_model()), TESTBED_NOTE
    path = Path(ref).expanduser()
    return ref, UNTRAINED_WARNING if path.is_dir() and (path / UNTRAINED_MARKER).exists() else ""


def optimize_settings(settings: DemoSettings) -> OptimizeSettings:
    model, note = resolve_model(settings.model)
    spec = opt_pb.RunSpec(
        restarts=settings.restarts,
        resets=settings.resets,
        iterations=settings.iterations,
        templates_per_call=settings.templates_per_call,
        initial_pool_size=settings.pool,
        label="make demo",
    )
    return OptimizeSettings(
        model=model,
        data=str(settings.data or prepare_testbed_task()),
        out=settings.out,
        spec=spec,
        work=Path(".cache/promptclimb/demo"),
        shots=settings.shots,
        llm_base_url=settings.llm_base_url,
        llm_model=settings.llm_model,
        llm_grammar=settings.llm_grammar,
        embedded_llm=settings.embedded_llm,
        note=note,
    )


def main(argv: list[str] | None = None) -> int:
    ArgumentParser(prog="python -m demo", description=__doc__).parse_args(argv)
    configure_logging("INFO")
    try:
        return optimize(optimize_settings(DemoSettings.from_env()))
    except OptimizeError as err:
        print(f"demo: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: every process was stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
