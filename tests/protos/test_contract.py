"""The public contract is enforced, not promised: buf lint and buf breaking against the committed
baseline pass, a breaking edit fails them, and the proto states what the services enforce."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from optimizer_service.spec import KNOBS, MAX_TEMPERATURE, MAX_TEXT_FIELD
from tests.conftest import prerequisite
from tests.procs import REPO

BUF = REPO / "tools" / "node" / "node_modules" / ".bin" / "buf"
BASELINE = REPO / "protos" / "baseline" / "v1.binpb"
SCORER_PROTO = Path("promptclimb/scorer/v1/scorer.proto")
OPTIMIZER_PROTO = Path("promptclimb/optimizer/v1/optimizer.proto")
needs_buf = prerequisite(missing=not BUF.exists(), why="buf from tools/node (make node-tools)")


def buf(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(BUF), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def copy_of_the_protos(tmp_path: Path) -> Path:
    shutil.copy(REPO / "buf.yaml", tmp_path / "buf.yaml")
    shutil.copytree(REPO / "protos", tmp_path / "protos", ignore=shutil.ignore_patterns("baseline"))
    return tmp_path


@needs_buf
def test_the_committed_protos_pass_lint_and_the_breaking_check():
    lint = buf("lint", cwd=REPO)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    breaking = buf("breaking", "--against", str(BASELINE), cwd=REPO)
    assert breaking.returncode == 0, breaking.stdout + breaking.stderr


BREAKING_EDITS = {
    "a field's type": (
        "  string task_id = 1;\n  // Each template",
        "  int32 task_id = 1;\n  // Each template",
        'Field "1" with name "task_id" on message "ScoreRequest" changed type',
    ),
    "a deleted field": (
        "  string model_digest = 5;\n  // Prompts chosen per class",
        "  // Prompts chosen per class",
        'Previously present field "5" with name "model_digest" on message "ScoreRequest" was deleted',
    ),
    "a renamed field": (
        "  Split split = 3;\n  // Prompt ensembles",
        "  Split image_split = 3;\n  // Prompt ensembles",
        'Field "3" on message "ScoreRequest" changed name from "split" to "image_split"',
    ),
}


@needs_buf
@pytest.mark.parametrize("edit", list(BREAKING_EDITS))
def test_a_breaking_edit_fails_buf_breaking(tmp_path, edit):
    old, new, complaint = BREAKING_EDITS[edit]
    root = copy_of_the_protos(tmp_path)
    proto = root / "protos" / SCORER_PROTO
    assert buf("breaking", "--against", str(BASELINE), cwd=root).returncode == 0  # the copy itself is compatible
    text = proto.read_text()
    assert text.count(old) == 1
    proto.write_text(text.replace(old, new))
    breaking = buf("breaking", "--against", str(BASELINE), cwd=root)
    assert breaking.returncode != 0
    assert complaint in breaking.stdout + breaking.stderr


@needs_buf
def test_an_added_field_is_compatible(tmp_path):
    root = copy_of_the_protos(tmp_path)
    proto = root / "protos" / SCORER_PROTO
    proto.write_text(
        proto.read_text().replace(
            "  string model_version = 5;\n}", "  string model_version = 5;\n  int32 added = 6;\n}"
        )
    )
    breaking = buf("breaking", "--against", str(BASELINE), cwd=root)
    assert breaking.returncode == 0, breaking.stdout + breaking.stderr


def _field_comments(proto: str) -> dict[str, str]:
    """Each field's name -> the comment lines right above it."""
    comments, block = {}, []
    for line in proto.splitlines():
        stripped = line.strip()
        if stripped.startswith("//"):
            block.append(stripped.removeprefix("//").strip())
            continue
        if match := re.match(r"(?:optional |repeated )?[\w.]+ (\w+) = \d+;", stripped):
            comments[match[1]] = " ".join(block)
        block = []
    return comments


def test_the_proto_states_the_caps_the_service_enforces():
    comments = _field_comments((REPO / "protos" / OPTIMIZER_PROTO).read_text())
    for name, knob in KNOBS.items():
        assert f"allowed {knob.low}..{knob.cap}" in comments[name].lower(), name
    assert f"allowed 0..{MAX_TEMPERATURE:g}" in comments["temperature"].lower()
    for name in ("task_id", "llm_model", "label"):
        assert f"at most {MAX_TEXT_FIELD} characters" in comments[name].lower(), name


@pytest.mark.parametrize("proto", [SCORER_PROTO, OPTIMIZER_PROTO], ids=["scorer", "optimizer"])
def test_every_rpc_documents_its_status_codes(proto):
    text = (REPO / "protos" / proto).read_text()
    rpcs = re.findall(r"((?:\s*//.*\n)*)\s*rpc (\w+)\(", text)
    assert len(rpcs) >= 3
    for comment, name in rpcs:
        assert "Status codes" in comment, name
