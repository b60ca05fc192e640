"""The reply parser against the kinds of answers chat models really give."""

from __future__ import annotations

from optimizer_service.parsing import parse_templates

CLASSES = ["golden retriever", "cat", "airliner", "red apple"]


def test_bullets_numbering_and_preamble():
    reply = """Sure! Here are 4 new templates that should work better:

- A photo of a {}, a type of pet.
* a close-up photo of the {}
1. A bright, well-lit image of a {}.
2) a {} in its natural habitat

These templates emphasize lighting and context."""
    parsed = parse_templates(reply, CLASSES)
    assert parsed.templates == [
        "A photo of a {}, a type of pet.",
        "a close-up photo of the {}",
        "A bright, well-lit image of a {}.",
        "a {} in its natural habitat",
    ]
    assert parsed.rejected == []


def test_a_list_marker_inside_the_quotes_is_stripped_too():
    """Qwen 1.5B quoted its own bullet (`- "- a view of a {}"`); the dash reached the scorer and won a benchmark run."""
    reply = '- "- a photo of a {}"\n- "1. an image of a {}"\n- \u201c* a picture of a {}\u201d'
    assert parse_templates(reply, CLASSES).templates == ["a photo of a {}", "an image of a {}", "a picture of a {}"]


def test_copies_of_inputs_with_accuracies_lose_the_accuracy():
    reply = """- a photo of a {}. (accuracy 56.2%)
- a blurry photo of a {} - 41%
- "an image of a {}" (acc: 0.61)
- a {} in the wild: 73.5 %
- the {} → 12%"""
    assert parse_templates(reply, CLASSES).templates == [
        "a photo of a {}.",
        "a blurry photo of a {}",
        "an image of a {}",
        "a {} in the wild",
        "the {}",
    ]


def test_class_names_and_placeholder_spellings_become_the_placeholder():
    reply = """1. a photo of a cat, sitting still
2. A Golden Retriever in a sunny park
3. a picture of a {class}
4. a snapshot of a <CLASS_NAME> from the side
5. an image of the [class] at dusk
6. {0} seen from above"""
    assert parse_templates(reply, CLASSES).templates == [
        "a photo of a {}, sitting still",
        "A {} in a sunny park",
        "a picture of a {}",
        "a snapshot of a {} from the side",
        "an image of the {} at dusk",
        "{} seen from above",
    ]


def test_two_class_names_in_one_line_is_rejected_not_guessed():
    parsed = parse_templates("- a cat next to an airliner", CLASSES)
    assert parsed.templates == []
    assert len(parsed.rejected) == 1
    assert "no '{}'" in parsed.rejected[0].reason


def test_markdown_quotes_code_fences_and_thinking():
    reply = """<think>The user wants templates. Lighting mattered: "a {} at noon" might help.
- this line is only thinking {}
</think>
```
**"a vivid photograph of a {}"**
`a {} on a white background`
“a grainy film photo of a {}”
```"""
    assert parse_templates(reply, CLASSES).templates == [
        "a vivid photograph of a {}",
        "a {} on a white background",
        "a grainy film photo of a {}",
    ]


def test_invalid_templates_are_rejected_with_the_shared_rules_reason():
    reply = """- a photo of a {} and a {}
- a photo of {0.__class__.__init__.__globals__}
- a {:>999999999} photo
- a photo with nothing to fill
- an image of a {} with a \x07 bell"""
    parsed = parse_templates(reply, CLASSES)
    assert parsed.templates == []
    reasons = [r.reason for r in parsed.rejected]
    assert len(reasons) == 5
    assert "2 '{}' placeholders" in reasons[0]
    assert "no '{}' placeholder" in reasons[1]  # field access is not a placeholder
    assert "no '{}' placeholder" in reasons[2]  # a format spec is not a placeholder either
    assert "no '{}'" in reasons[3]
    assert "control" in reasons[4]


def test_repeats_within_a_reply_count_once_by_case_and_spacing():
    reply = "- a photo of a {}\n- A  photo of a {}\n- a photo of a {}."
    assert parse_templates(reply, CLASSES).templates == ["a photo of a {}", "a photo of a {}."]


def test_prose_without_templates_yields_nothing():
    reply = "I'm sorry, I can't help with that request.\nCould you tell me more about the dataset?"
    parsed = parse_templates(reply, CLASSES)
    assert parsed.templates == [] and parsed.rejected == []


def test_empty_and_whitespace_replies():
    assert parse_templates("", CLASSES).templates == []
    assert parse_templates("  \n\n \t", CLASSES).templates == []


def test_template_label_prefix_and_unclosed_thinking():
    reply = (
        "Template 1: a {} under studio lights\nPrompt 2: a macro shot of a {}\n<think>still thinking about a {} forever"
    )
    assert parse_templates(reply, CLASSES).templates == ["a {} under studio lights", "a macro shot of a {}"]


def test_prose_is_not_a_template_even_when_it_names_a_class():
    reply = """Here are templates for the cat class:
Sure, a photo of a cat would work well
- Here is one for the {} class:
I think the airliner needs a sky behind it.
- a photo of a cat in a box"""
    assert parse_templates(reply, CLASSES).templates == ["a photo of a {} in a box"]


def test_numbers_inside_templates_survive_and_copied_scores_do_not():
    reply = """- a photo of a {} from 2.5 meters away
- a photo of a {} from 2.5
- 3D render of a {}
1. 2.5D render of a {}
2) a photo of 2 {}s
- a {} at 10.5 m (accuracy 0.61)
- a {} 0.75"""
    assert parse_templates(reply, CLASSES).templates == [
        "a photo of a {} from 2.5 meters away",
        "a photo of a {} from 2.5",
        "3D render of a {}",
        "2.5D render of a {}",
        "a photo of 2 {}s",
        "a {} at 10.5 m",
        "a {}",
    ]


def test_stacked_list_markers_are_all_stripped():
    """A numbered list of bullets ("1. - ...") was kept as "- ..." and once won a benchmark run."""
    reply = "1. - A photo of a {} on a shelf\n2) * a {} in the studio\nTemplate 3: - a 3D render of a {}"
    assert parse_templates(reply, CLASSES).templates == [
        "A photo of a {} on a shelf",
        "a {} in the studio",
        "a 3D render of a {}",
    ]
