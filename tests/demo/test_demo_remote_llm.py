"""`make demo` with a remote LLM or a model of the user's (issue 28, problems 1 and 2)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.optimizer.scripted_llm import ScriptedLLM
from tests.procs import REPO

LLAMA_BUILD = "demo.embedded_llm requirements"  # the llm-env recipe: llama.cpp's build and the embedded model
FASHION_MNIST = "testbed.fashion_mnist"


def planned(**env: str) -> str:
    """What `make demo` would run from scratch (-B: every target out of date), without running it."""
    base = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "LLM_BASE_URL", "DEMO_DATA")}
    done = subprocess.run(
        ["make", "--dry-run", "--always-make", "demo"], cwd=REPO, env={**base, **env}, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_make_demo_builds_no_llama_cpp_when_a_remote_llm_is_configured():
    assert LLAMA_BUILD in planned() and FASHION_MNIST in planned()  # nothing configured: the embedded LLM
    assert LLAMA_BUILD not in planned(OPENAI_API_KEY="sk-placeholder")
    assert LLAMA_BUILD not in planned(LLM_BASE_URL="http://127.0.0.1:9/v1")
    assert FASHION_MNIST not in planned(OPENAI_API_KEY="sk-placeholder", DEMO_DATA="/data/mine")
    assert "-m demo" in planned(OPENAI_API_KEY="sk-placeholder")


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("model", "reason"),
    [
        ("{tmp}/my-clip", "model directory {tmp}/my-clip does not exist"),
        ("no-such-owner/no-such-clip", "cannot load the model from Hugging Face hub id 'no-such-owner/no-such-clip'"),
    ],
)
def test_an_explicit_scorer_model_that_cannot_load_stops_the_demo(image_task_dir, tmp_path, model, reason):
    """No stand-in with random weights (main built one for a hub id it could not fetch): the reason, exit 2, no
    report."""
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    with ScriptedLLM() as llm:
        env |= {
            "SCORER_MODEL": model.format(tmp=tmp_path),
            "DEMO_DATA": str(image_task_dir),
            "DEMO_OUT": str(tmp_path / "out"),
            "LLM_BASE_URL": llm.url,
            "LLM_MODEL": "scripted-model",
            "DEMO_RESTARTS": "1",
            "DEMO_ITERATIONS": "1",
            "DEMO_POOL": "4",
            "HF_HUB_OFFLINE": "1",
        }
        done = subprocess.run(
            [sys.executable, "-m", "demo"], cwd=REPO, env=env, capture_output=True, text=True, timeout=240
        )
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert reason.format(tmp=tmp_path) in done.stderr
    assert not (tmp_path / "out" / "result.json").exists()
