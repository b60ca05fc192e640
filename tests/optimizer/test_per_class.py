"""The per-class strategy (stage 2 after the hill climb) and its no-feedback control: through the service on loopback,
real scorer, scripted LLM."""

from __future__ import annotations

import itertools
import json
import re

import grpc

from optimizer_service.report import write_report
from promptclimb.optimizer.v1 import optimizer_pb2 as pb
from promptclimb.scorer.v1 import scorer_pb2, scorer_pb2_grpc
from tests.optimizer.conftest import SCORER_TOKENS
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


PHRASINGS = [
    "{}",
    "a {}",
    "the {}",
    "a photo of the {}",
    "an image of a {}",
    "a close-up of the {}",
    "a drawing of a {}",
    "a {} seen from above",
    "many {}",
    "a small {}",
    "a bright {}",
    "a dark {}",
]


def improving_answers(scorer, found: list):
    """For the one stage-2 ask: tries every phrasing for each asked class against the real scorer (the test's own
    search, not the strategy's) and answers the asked number of prompts, those that raise train accuracy first;
    records the best accuracy reachable with one of them in `found`."""
    templates = invented_templates(itertools.count())
    channel = grpc.insecure_channel(scorer.address)
    stub = scorer_pb2_grpc.ScorerStub(channel)
    token = (("authorization", f"Bearer {SCORER_TOKENS['optimizer'][0]}"),)

    def accuracy(sets: list[list[list[str]]]) -> list[float]:
        request = scorer_pb2.ScoreRequest(
            task_id="shapes",
            class_prompt_sets=[
                scorer_pb2.ClassPromptSet(classes=[scorer_pb2.ClassPrompts(prompts=c) for c in s]) for s in sets
            ],
        )
        return [r.accuracy for r in stub.Score(request, metadata=token).class_prompt_set_results]

    def answer(body: dict) -> Reply:
        text = body["messages"][-1]["content"]
        wanted = STAGE_2_ASK.search(text)
        if not wanted:
            return templates(body)
        described = re.search(r'Every class is now described by the prompt "(.+)"\.', text)
        assert described is not None
        template = described[1]
        asked = re.findall(r"^- (.+?) \([\d.]+% correct\): now ", text, re.MULTILINE)
        base = [[template.replace("{}", name)] for name in CLASSES]
        tries = [(name, p.replace("{}", name)) for name in asked for p in PHRASINGS]
        sets = [
            [[*c, prompt] if n == name else c for n, c in zip(CLASSES, base, strict=True)] for name, prompt in tries
        ]
        (before,), after = accuracy([base]), accuracy(sets)
        ranked = sorted(range(len(tries)), key=lambda i: -after[i])[: int(wanted[1])]
        found.append((before, max(after[i] for i in ranked)))
        return Reply("\n".join(f"- {tries[i][0]}: {tries[i][1]}" for i in ranked))

    return answer


async def test_a_proposal_that_raises_train_accuracy_is_kept(optimizer, scorer):
    reachable: list = []
    optimizer.llm._default = improving_answers(scorer, reachable)
    run, _ = await optimizer.run_to_end(strategy="per_class", iterations=1, top_k=2, templates_per_call=2)
    assert run.state == pb.RUN_STATE_SUCCEEDED, run.stop_reason
    ((before, best),) = reachable
    assert before == run.selected.train_accuracy and best > before  # the phrasings hold an improvement
    found = run.class_prompts
    assert found.train_accuracy == best and found.chosen  # no val: chosen on train
    assert sum(len(c.prompts) for c in found.classes) == len(CLASSES) + 1  # one proposal added to one class
