"""The search's knobs do what their docs say: through the service on loopback, real scorer, scripted LLM."""

from __future__ import annotations

import hashlib
import json
import re

import pytest

from optimizer_service.metaprompt import estimate_tokens
from optimizer_service.pool import template_key
from promptclimb.optimizer.v1 import optimizer_pb2 as pb
from tests.optimizer.scripted_llm import Delay, Fail, Reply

LONG = "a {} " + " ".join(["very"] * 90) + " long template"  # valid text, too long for the tiny CLIP's 77 tokens


def _listed(text: str) -> list[str]:
    """The templates a user message lists ("- ..." lines before the requirements), without their accuracies."""
    listing = text.split("Requirements:")[0]
    return re.findall(r"^- (.+?)(?: \(accuracy [\d.]+%\))?$", listing, re.MULTILINE)


def _calls(seen):
    """Requests of the climb (not the LLM-written initial pool), by "restart/reset/iteration"."""
    return {"/".join(s.call_id.split("/")[1:]): s for s in seen if "/seed/" not in s.call_id}


async def test_m_bounds_the_templates_scored_per_call_and_extras_are_counted(optimizer):
    six = [Reply("\n".join(f"- a shape {i} {n} of a {{}}" for n in range(6))) for i in range(2)]
    optimizer.llm.plan(*six)
    run, events = await optimizer.run_to_end(
        strategy="hill_climb", restarts=1, resets=1, iterations=2, templates_per_call=2, ensemble_size=1
    )
    found = [e.candidate_scored for e in events if e.HasField("candidate_scored") and e.candidate_scored.iteration >= 0]
    assert [(s.iteration, s.template) for s in found] == [
        (0, "a shape 0 0 of a {}"),
        (0, "a shape 0 1 of a {}"),
        (1, "a shape 1 0 of a {}"),
        (1, "a shape 1 1 of a {}"),
    ]
    assert run.counters.candidates_extra == 2 * 4
    assert run.counters.templates_scored == 6 + 2 * 2
    assert "came after the 2 asked for" in _calls(optimizer.llm.seen)["0/0/1"].last_user_message


async def test_the_authors_preset_is_their_code_knob_for_knob(optimizer):
    run, events = await optimizer.run_to_end(
        preset=pb.PRESET_AUTHORS, initial_pool_size=0, restarts=0, resets=0, iterations=0, top_k=0, templates_per_call=0
    )
    spec = run.spec
    assert run.state == pb.RUN_STATE_SUCCEEDED, run.stop_reason
    assert (
        spec.conversation,
        spec.show_accuracies,
        spec.templates_per_call,
        spec.top_k,
        spec.iterations,
        spec.temperature,
    ) == (pb.CONVERSATION_MODE_STATELESS, False, 1, 3, 10, 1.0)
    assert (spec.restarts, spec.resets, spec.initial_pool_size, spec.preset) == (1, 1, 80, pb.PRESET_AUTHORS)
    assert len([e for e in events if e.HasField("candidate_scored") and e.candidate_scored.iteration == -1]) == 80
    assert len(optimizer.llm.seen) == 10
    for seen in optimizer.llm.seen:
        assert [m["role"] for m in seen.messages] == ["system", "user"]
        text = seen.last_user_message
        assert "Write a new template" in text and "%" not in text and "work poorly" in text
        assert len(_listed(text)) == 3 + 3  # top 3 and bottom 3
        assert seen.body["temperature"] == 1.0


@pytest.mark.parametrize("show_accuracies", [True, False], ids=["accuracies-shown", "accuracies-hidden"])
async def test_positive_only_chat_never_says_anything_about_templates_outside_the_good_list(optimizer, show_accuracies):
    optimizer.llm.plan(Reply("- a {}\n- a {}\n- broken"))  # repeats and a broken line: still no word about them
    run, _ = await optimizer.run_to_end(
        feedback=pb.FEEDBACK_POSITIVE_ONLY, show_accuracies=show_accuracies, iterations=4
    )
    assert run.state == pb.RUN_STATE_SUCCEEDED
    assert len(optimizer.llm.seen) == 2 * 2 * 4
    follow_ups = 0
    for seen in optimizer.llm.seen:
        for message in seen.messages:
            if message["role"] != "user":
                continue
            text = message["content"]
            for banned in ("worst", "poorly", "did not beat", "repeated", "asked for.", "no usable", "bad"):
                assert banned not in text, (banned, text)
            listed = set(_listed(text))
            assert len(listed) <= 2  # the top k, nothing else
            named = set(
                re.findall(r'"([^"\n]*\{\}[^"\n]*)"', text.replace('for example "a photo of a {}." becomes', ""))
            )
            assert named <= listed, (named, listed)
            follow_ups += bool(named)
            if not show_accuracies:
                assert "%" not in text
            else:
                assert len(re.findall(r"\d%", text)) <= 2 * len(listed)  # accuracies of good templates only
    assert follow_ups > 0  # new good templates were reported


@pytest.mark.optimizer(llm={"context_tokens": 1200, "max_completion_tokens": 200})
async def test_a_chat_stays_within_the_llms_context_over_100_iterations(optimizer):
    run, _ = await optimizer.run_to_end(strategy="hill_climb", restarts=1, resets=1, iterations=100, ensemble_size=1)
    assert run.state == pb.RUN_STATE_SUCCEEDED and run.counters.iterations_done == 100
    calls = _calls(optimizer.llm.seen)
    sizes = [estimate_tokens(calls[f"0/0/{i}"].messages) for i in range(100)]
    assert max(sizes) <= 1200 - 200
    assert max(len(calls[f"0/0/{i}"].messages) for i in range(100)) > 4  # it is still a conversation
    assert max(sizes[50:]) <= max(sizes[:50]) + 60  # flat, not growing with T
    last = calls["0/0/99"].messages
    assert last[0]["role"] == "system" and last[1] == calls["0/0/0"].messages[1]  # the opening is always kept
    assert last[-2]["role"] == "assistant" and last[-1]["content"] == calls["0/0/99"].last_user_message


async def test_a_context_length_error_shortens_the_chat_instead_of_failing_the_run(optimizer):
    optimizer.llm.plan(
        Reply("- a first {}"),
        Reply("- a second {}"),
        Fail(400, message="the request exceeds the available context size, try increasing it"),
    )
    run, _ = await optimizer.run_to_end(strategy="hill_climb", restarts=1, resets=1, iterations=3, ensemble_size=1)
    assert (run.state, run.stop_reason) == (pb.RUN_STATE_SUCCEEDED, "finished"), run.stop_reason
    assert run.counters.llm_context_trims == 1
    refused, retried = [s for s in optimizer.llm.seen if s.call_id.endswith("/0/0/2")]
    assert refused.answered == "fail 400" and retried.answered == "reply"
    assert len(retried.messages) < len(refused.messages)
    assert retried.messages[-1] == refused.messages[-1]  # the current ask survives


async def test_the_run_seed_reaches_the_llm_derived_per_call(optimizer):
    await optimizer.run_to_end(seed=11, ensemble_size=1)
    seeds = [s.body.get("seed") for s in optimizer.llm.seen]
    assert None not in seeds and len(set(seeds)) == len(seeds) == 8


async def test_a_template_the_scorer_refused_is_remembered_and_never_sent_again(optimizer):
    optimizer.llm.plan(Reply(f"- {LONG}\n- a fine {{}}"), Reply(f"- {LONG}"), Reply(f"- {LONG.upper()}"))
    run, _ = await optimizer.run_to_end(restarts=1, resets=1, iterations=3, ensemble_size=1)
    assert run.state == pb.RUN_STATE_SUCCEEDED
    c = run.counters
    assert c.scorer_calls == 1 + 1  # the initial pool, iteration 0; iterations 1 and 2 held only the known refusal
    assert c.candidates_invalid == 3
    assert [template_key(t) for t, _ in optimizer.store.rejections(run.run_id)] == [template_key(LONG)]


def _deterministic_llm(phase: dict):
    """Replies that depend only on the request (messages and seed), delayed differently in each phase."""
    adjectives = ("bright", "dark", "sharp", "soft", "tiny", "huge")
    forms = ("a {} photo of a {{}}.", "a {} picture of the {{}}.", "an image of a {} {{}}.", "the {} {{}} in a photo.")

    def answer(body: dict) -> Delay:
        digest = hashlib.sha256(json.dumps([body["messages"], body.get("seed")], sort_keys=True).encode()).digest()
        lines = [
            f"- {forms[digest[2 * i] % len(forms)].format(adjectives[digest[2 * i + 1] % len(adjectives)])}"
            for i in range(3)
        ]
        delay = (digest[10] % 5 if phase["name"] == "first" else 4 - digest[10] % 5) * 0.015
        return Delay(delay, Reply("\n".join(lines)))

    return answer


async def test_concurrent_restarts_give_the_same_trajectory_twice_and_never_score_a_template_twice(optimizer):
    phase = {"name": "first"}
    optimizer.llm._default = _deterministic_llm(phase)
    spec = {"seed": 5, "restarts": 3, "resets": 2, "iterations": 3, "templates_per_call": 2, "initial_pool_size": 8}
    trials = []
    for name in ("first", "second"):
        phase["name"] = name
        start = len(optimizer.llm.seen)
        run, _ = await optimizer.run_to_end(**spec)
        assert run.state == pb.RUN_STATE_SUCCEEDED, run.stop_reason
        asked = {key: (s.messages, s.body["seed"]) for key, s in _calls(optimizer.llm.seen[start:]).items()}
        admitted = sorted(
            (c.restart, c.reset, c.iteration, c.position, c.template, c.accuracy)
            for c in optimizer.store.candidates(run.run_id)
        )
        candidates = optimizer.store.candidates(run.run_id)
        assert run.counters.templates_scored == len({template_key(c.template) for c in candidates})  # each scored once
        assert run.counters.candidates_reused == len(candidates) - run.counters.templates_scored
        trials.append(
            (
                asked,
                admitted,
                [(b.template, b.train_accuracy) for b in run.best],
                list(run.ensemble.templates),
                run.counters.templates_scored,
                run.counters.candidates_reused,
                run.counters.candidates_duplicate,
            )
        )
    first, second = trials
    assert len(first[0]) == 3 * 2 * 3
    assert first == second
    assert first[5] > 0  # restarts did meet each other's templates, from the score cache
    samples = [[t for r, _, i, _, t, _ in first[1] if r == restart and i == -1] for restart in range(3)]
    assert samples[0] != samples[1] != samples[2]


async def test_the_run_ends_with_a_greedy_prompt_ensemble_beside_the_best_template(optimizer):
    run, events = await optimizer.run_to_end(ensemble_size=4)
    ensemble = run.ensemble
    assert 1 <= len(ensemble.templates) <= 4 and len(set(ensemble.templates)) == len(ensemble.templates)
    assert ensemble.templates[0] == run.best[0].template
    assert ensemble.train_accuracy >= run.best[0].train_accuracy
    assert ensemble.HasField("test_accuracy")  # our scorer token has the test right
    assert run.counters.ensembles_scored > 0
    assert events[-1].run_ended.ensemble == ensemble
    scored = {e.candidate_scored.template for e in events if e.HasField("candidate_scored")}
    assert set(ensemble.templates) <= scored
    single, _ = await optimizer.run_to_end(ensemble_size=1)
    assert not single.HasField("ensemble") and single.counters.ensembles_scored == 0


@pytest.mark.optimizer(scorer={"token_name": "train-only"})
async def test_without_the_test_right_the_ensemble_has_no_test_accuracy(optimizer):
    run, _ = await optimizer.run_to_end(restarts=1, resets=1, iterations=1)
    assert run.HasField("ensemble") and not run.ensemble.HasField("test_accuracy")
