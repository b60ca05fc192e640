"""The real llama-server with the packaged 0.5B model, reached through the `openai` client."""

from __future__ import annotations

import os
import re
import urllib.request

import openai
import pytest

from demo.embedded_llm import QWEN_CODER_0_5B, LlamaServer, LlamaServerError

pytestmark = pytest.mark.e2e

# One prompt template per line, each with the `{}` slot for the class name.
TEMPLATES_GRAMMAR = r"""
root ::= line line line
line ::= text "{}" text "\n"
text ::= [^{}\n]{0,40}
"""


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with LlamaServer.for_model(
        QWEN_CODER_0_5B, parallel=2, ctx_per_slot=2048, log_path=tmp_path_factory.mktemp("llm") / "server.log"
    ) as server:
        yield server


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url, api_key="not-needed", max_retries=0, timeout=120)


def test_chat_completion_through_the_openai_client(server, client):
    response = client.chat.completions.create(
        model=server.alias,
        messages=[
            {"role": "system", "content": "You write short prompt templates for an image classifier."},
            {
                "role": "user",
                "content": "Write one template for a photo of a piece of clothing. Use {} where the class name goes.",
            },
        ],
        max_tokens=48,
        temperature=0,
    )
    reply = response.choices[0].message.content
    assert isinstance(reply, str) and reply.strip()
    assert response.usage.completion_tokens > 0


def test_a_gbnf_grammar_constrains_the_reply(server, client):
    response = client.chat.completions.create(
        model=server.alias,
        messages=[
            {
                "role": "user",
                "content": "Write three CLIP prompt templates, one a line, each with {} for the class name.",
            }
        ],
        max_tokens=260,  # above the grammar's longest reply (3 lines of 83 characters), so it cannot be cut
        temperature=0.7,
        extra_body={"grammar": TEMPLATES_GRAMMAR},
    )
    lines = response.choices[0].message.content.splitlines()
    assert len(lines) == 3
    assert all(re.fullmatch(r"[^{}]*\{\}[^{}]*", line) for line in lines)


def test_stop_ends_the_servers_process_group(tmp_path):
    with LlamaServer.for_model(
        QWEN_CODER_0_5B, parallel=1, ctx_per_slot=512, log_path=tmp_path / "server.log"
    ) as server:
        assert server.process is not None
        pgid = server.process.pid
        with urllib.request.urlopen(f"{server.url}/health", timeout=5) as response:
            assert response.status == 200
    assert server.process is None
    assert not _group_exists(pgid)


def test_a_file_that_is_not_a_model_fails_with_the_servers_log(tmp_path):
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"not a gguf file" * 100)
    server = LlamaServer(bogus, log_path=tmp_path / "server.log", startup_timeout=60)
    with pytest.raises(LlamaServerError, match="exited with"):
        server.start()
    assert server.process is None
