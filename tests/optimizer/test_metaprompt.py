"""The meta-prompt: what the LLM is shown in each mode."""

from __future__ import annotations

from optimizer_service.choices import Feedback
from optimizer_service.metaprompt import MetaPrompt, TaskContext, estimate_tokens, fit_chat, initial_pool_messages
from optimizer_service.pool import Candidate

GOOD = [Candidate("a bright photo of a {}.", 0.625, 0, 0, 0, 1), Candidate("a photo of a {}.", 0.5, -1, -1, -1, 0)]
BAD = [Candidate("a sketch of a {}.", 0.125, -1, -1, -1, 2)]


def test_positive_negative_shows_both_lists_with_accuracies_and_the_requirements():
    prompt = MetaPrompt(TaskContext("pets"), Feedback.POSITIVE_NEGATIVE, show_accuracies=True, templates_per_call=4)
    system, user = prompt.opening(GOOD, BAD)
    assert system["role"] == "system" and user["role"] == "user"
    text = user["content"]
    assert '"pets"' in text
    assert "- a bright photo of a {}. (accuracy 62.5%)" in text
    assert "- a sketch of a {}. (accuracy 12.5%)" in text
    assert "work poorly" in text
    assert "Write 4 new templates" in text
    assert "exactly one {}" in text and "fewer than 15 words" in text and 'starting with "- "' in text
    assert text.index("a bright photo") < text.index("a photo of a {}. (")  # best first


def test_positive_only_leaves_out_the_bad_list():
    prompt = MetaPrompt(TaskContext("pets"), Feedback.POSITIVE_ONLY, show_accuracies=True, templates_per_call=1)
    text = prompt.ask(GOOD, BAD)
    assert "sketch" not in text and "poorly" not in text
    assert "Write a new template better than these." in text
    assert "the template only" in text


def test_hidden_accuracies_show_no_numbers():
    prompt = MetaPrompt(TaskContext("pets"), Feedback.POSITIVE_NEGATIVE, show_accuracies=False, templates_per_call=2)
    text = prompt.ask(GOOD, BAD)
    assert "%" not in text and "accuracy" not in text.replace("highest accuracy", "")
    assert "- a bright photo of a {}.\n" in text


def test_chat_follow_up_reports_accuracies_or_ranks():
    results = [
        Candidate("a vivid photo of a {}.", 0.75, 0, 0, 1, 3),
        Candidate("a dim photo of a {}.", 0.0, 0, 0, 1, 4),
    ]
    shown = MetaPrompt(TaskContext("pets"), Feedback.POSITIVE_NEGATIVE, True, 2).follow_up(
        results, 1, [results[0], *GOOD], [results[1]]
    )
    assert shown["role"] == "user"
    assert 'The accuracy of "a vivid photo of a {}." is now 75.0%.' in shown["content"]
    assert (
        "1 of your lines repeated a template already tried, broke the requirements, or came after the 2 asked for."
        in shown["content"]
    )
    assert "Write 2 new templates" in shown["content"]
    hidden = MetaPrompt(TaskContext("pets"), Feedback.POSITIVE_NEGATIVE, False, 2).follow_up(
        results, 0, [results[0], *GOOD], [results[1]]
    )
    assert '"a vivid photo of a {}." is now among the best templates.' in hidden["content"]
    assert '"a dim photo of a {}." is among the worst templates.' in hidden["content"]
    assert "%" not in hidden["content"]


def test_llm_text_with_braces_is_embedded_verbatim_never_formatted():
    hostile = Candidate("a {} {0.__class__} {:>99999}", 0.5, 0, 0, 0, 9)
    text = MetaPrompt(TaskContext("t{x}"), Feedback.POSITIVE_NEGATIVE, True, 1).ask([hostile], [])
    assert "- a {} {0.__class__} {:>99999} (accuracy 50.0%)" in text


def test_initial_pool_request_names_the_task_and_its_classes():
    _, user = initial_pool_messages(TaskContext("flowers", tuple(f"class {i}" for i in range(40))), 20)
    assert "Write 20 different templates" in user["content"]
    assert "class 0, class 1" in user["content"] and "and 10 more" in user["content"]
    assert "class 35" not in user["content"]


def test_positive_only_follow_up_names_only_templates_that_joined_the_good_list():
    joined, missed = (
        Candidate("a vivid photo of a {}.", 0.75, 0, 0, 1, 3),
        Candidate("a dim photo of a {}.", 0.0, 0, 0, 1, 4),
    )
    for show in (True, False):
        turn = MetaPrompt(TaskContext("pets"), Feedback.POSITIVE_ONLY, show, 2).follow_up(
            [joined, missed], 3, [joined, *GOOD], []
        )["content"]
        assert "a vivid photo" in turn and "dim" not in turn
        for banned in ("worst", "did not beat", "repeated", " 0.0%", "no usable"):
            assert banned not in turn
    nothing_joined = MetaPrompt(TaskContext("pets"), Feedback.POSITIVE_ONLY, False, 2).follow_up([missed], 1, GOOD, [])[
        "content"
    ]
    assert nothing_joined == MetaPrompt(TaskContext("pets"), Feedback.POSITIVE_ONLY, False, 2).ask(GOOD, [])


def test_fit_chat_keeps_the_opening_and_the_latest_exchanges_that_fit():
    opening = [{"role": "system", "content": "s" * 30}, {"role": "user", "content": "u" * 300}]
    exchanges = [
        [{"role": "assistant", "content": f"{i}" * 150}, {"role": "user", "content": f"{i}" * 150}] for i in range(10)
    ]
    transcript = opening + [m for e in exchanges for m in e]
    assert fit_chat(transcript, 10_000) == transcript
    fitted = fit_chat(transcript, 500)
    assert fitted[:2] == opening and fitted[2:] == [m for e in exchanges[-3:] for m in e]
    assert estimate_tokens(fitted) <= 500 < estimate_tokens(fit_chat(transcript, 620))
    assert fit_chat(transcript, 1) == opening + exchanges[-1]  # the current ask is never dropped


def test_no_feedback_shows_no_template_and_no_score_in_any_turn():
    """Random search, the control: the LLM learns nothing from the pool, in the opening or in chat."""
    prompt = MetaPrompt(TaskContext("pets"), Feedback.NONE, show_accuracies=True, templates_per_call=4)
    texts = [m["content"] for m in prompt.opening(GOOD, BAD)[1:]] + [prompt.follow_up(GOOD, 1, GOOD, BAD)["content"]]
    for text in texts:
        assert "bright photo" not in text and "sketch" not in text  # ("a photo of a {}." is the intro's example)
        assert "%" not in text and "good templates" not in text and "poorly" not in text
        assert "Write 4 new, varied templates." in text and "exactly one {}" in text
