"""The per-class strategy (stage 2 after the hill climb) and its no-feedback control: through the service on loopback,
real scorer, scripted LLM."""

from __future__ import annotations

import itertools
import json
import re

from optimizer_service.cli import write_report
from promptclimb.optimizer.v1 import optimizer_pb2 as pb
from tests.optimizer.scripted_llm import Reply, invented_templates

CLASSES = ["black cat", "blue sky", "green leaf", "red apple"]
STAGE_2_ASK = re.compile(r"Write (\d+) new prompts for these classes")


def per_class_answers():
    """Templates for the climb's asks; for a stage-2 ask, one prompt per asked class (in the asked order), then one
    for a class that was not asked (to be ignored), a template (ignored) and a braceless repeat."""
    templates, counter = invented_templates(itertools.count()), itertools.count()

    def answer(body: dict) -> Reply:
        text = body["messages"][-1]["content"]
        if not STAGE_2_ASK.search(text):
            return templates(body)
        asked = re.findall(r"^- (.+?)(?: \([\d.]+% correct\))?: now ", text, re.MULTILINE)
        lines = [f"- {name}: a photo of a {name}, variant {next(counter)}" for name in asked]
        unasked = next(name for name in CLASSES if name not in asked)
        return Reply("\n".join([*lines, f"- {unasked}: not asked", f"- {asked[0]}: a {{}} template"]))

    return answer


def stage_2_asks(llm) -> list[str]:
    return [s.last_user_message for s in llm.seen if "/per-class/" in s.call_id]


async def test_stage_2_starts_from_the_selected_template_and_keeps_only_what_raises_train_accuracy(optimizer, tmp_path):
    optimizer.llm._default = per_class_answers()
    run, _ = await optimizer.run_to_end(strategy="per_class", iterations=3, top_k=2, templates_per_call=2)
    assert run.state == pb.RUN_STATE_SUCCEEDED, run.stop_reason
    found = run.class_prompts
    assert [c.class_name for c in found.classes] == CLASSES
    template = run.selected.template
    for entry in found.classes:  # each class starts from the selected template; stage 2 only adds prompts
        assert entry.prompts[0] == template.replace("{}", entry.class_name)
        assert all(p.startswith(f"a photo of a {entry.class_name}, variant ") for p in entry.prompts[1:])
    assert found.train_accuracy >= run.selected.train_accuracy
    assert found.chosen == (found.train_accuracy > run.selected.train_accuracy)  # no val split: chosen on train
    assert not found.HasField("val_accuracy") and found.HasField("test_accuracy")
    asks = stage_2_asks(optimizer.llm)
    assert len(asks) == 3
    # 1 base set, then at most 2 proposals per round; what the reply had beyond them was not scored
    assert 1 < run.counters.class_prompt_sets_scored <= 1 + 3 * 2
    for ask in asks:
        assert "recognised worst" in ask and len(re.findall(r"% correct\): now", ask)) == 2
    # the first ask names the two weakest classes of the selected template, by its per-class train accuracy
    shown = re.findall(r"^- (.+?) \(([\d.]+)% correct\)", asks[0], re.MULTILINE)
    assert [float(a) for _, a in shown] == sorted(float(a) for _, a in shown)

    write_report(tmp_path, run, [])
    result = json.loads((tmp_path / "result.json").read_text())
    assert [c["class_name"] for c in result["class_prompts"]["classes"]] == CLASSES
    cupl = json.loads((tmp_path / "class_prompts.json").read_text())
    assert cupl == {c.class_name: list(c.prompts) for c in found.classes}


async def test_the_control_asks_the_same_for_random_classes_with_no_accuracy(optimizer):
    optimizer.llm._default = per_class_answers()
    run, _ = await optimizer.run_to_end(strategy="per_class_no_feedback", iterations=3, top_k=2, templates_per_call=2)
    assert run.state == pb.RUN_STATE_SUCCEEDED, run.stop_reason
    assert [c.class_name for c in run.class_prompts.classes] == CLASSES
    asks = stage_2_asks(optimizer.llm)
    assert len(asks) == 3
    for ask in asks:
        assert "%" not in ask and "recognised worst" not in ask
        assert "Write 2 new prompts for these classes" in ask and len(re.findall(r": now ", ask)) == 2


async def test_other_strategies_have_no_class_prompts(optimizer):
    run, _ = await optimizer.run_to_end(iterations=1)
    assert run.state == pb.RUN_STATE_SUCCEEDED and not run.HasField("class_prompts")
    assert run.counters.class_prompt_sets_scored == 0
