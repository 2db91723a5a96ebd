"""ChatFormatter: only assistant answers and their end-of-turn token are learned, and a training
prompt is tokenised exactly as the same prompt is at generation time."""

from __future__ import annotations

import copy

import pytest

from src.data.chat_format import FALLBACK_CHAT_TEMPLATE, IGNORE_INDEX, ChatFormatter, end_of_turn_token_ids
from src.data.conversation import Message

EOT = "<|im_end|>"
DEFAULT_SYSTEM = "<|im_start|>system\nYou are a tiny test assistant.<|im_end|>\n"

SINGLE: list[Message] = [
    {"role": "user", "content": "¿Cuánto es 2 + 2?"},
    {"role": "assistant", "content": "Respuesta: 4"},
]
MULTI: list[Message] = [
    {"role": "user", "content": "¿Cuánto es 2 + 2?"},
    {"role": "assistant", "content": "Respuesta: 4"},
    {"role": "user", "content": "¿Y 3 + 4?"},
    {"role": "assistant", "content": "3 + 4 = 7.\nRespuesta: 7"},
]


def labelled_text(tokenizer, labels: list[int]) -> str:
    return tokenizer.decode([label for label in labels if label != IGNORE_INDEX])


def labelled_runs(labels: list[int]) -> list[tuple[int, int]]:
    """(start, end) of each maximal run of labelled positions."""
    runs, start = [], None
    for i, label in enumerate([*labels, IGNORE_INDEX]):
        if label != IGNORE_INDEX and start is None:
            start = i
        elif label == IGNORE_INDEX and start is not None:
            runs.append((start, i))
            start = None
    return runs


@pytest.fixture
def formatter(tiny_tokenizer) -> ChatFormatter:
    return ChatFormatter(tiny_tokenizer)


@pytest.fixture
def no_template_tokenizer(tiny_tokenizer):
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.chat_template = None
    return tokenizer


def test_end_of_turn_ids_are_eos_which_is_also_pad(tiny_tokenizer) -> None:
    # The premise of the masking design: masking by pad value would also mask the end of turn.
    assert tiny_tokenizer.convert_tokens_to_ids(EOT) == tiny_tokenizer.eos_token_id == tiny_tokenizer.pad_token_id == 2
    assert end_of_turn_token_ids(tiny_tokenizer) == {2}


def test_segments_split_single_turn_at_the_answer(formatter: ChatFormatter) -> None:
    assert formatter.segments(SINGLE) == [
        (DEFAULT_SYSTEM + "<|im_start|>user\n¿Cuánto es 2 + 2?<|im_end|>\n<|im_start|>assistant\n", False),
        ("Respuesta: 4<|im_end|>\n", True),
    ]


def test_single_turn_labels_exactly_the_answer_and_its_end_of_turn(formatter: ChatFormatter, tiny_tokenizer) -> None:
    example = formatter.tokenize(SINGLE)
    assert labelled_text(tiny_tokenizer, example.labels) == "Respuesta: 4<|im_end|>"
    assert len(labelled_runs(example.labels)) == 1
    # The template's trailing newline after <|im_end|> is the last token and is not learned.
    assert tiny_tokenizer.decode(example.input_ids[-2:]) == "<|im_end|>\n"
    assert example.labels[-2] == tiny_tokenizer.eos_token_id
    assert example.labels[-1] == IGNORE_INDEX
    assert example.truncated is False


def test_multi_turn_labels_every_assistant_answer_with_its_end_of_turn(
    formatter: ChatFormatter, tiny_tokenizer
) -> None:
    example = formatter.tokenize(MULTI)
    runs = labelled_runs(example.labels)
    assert [tiny_tokenizer.decode(example.labels[a:b]) for a, b in runs] == [
        "Respuesta: 4<|im_end|>",
        "3 + 4 = 7.\nRespuesta: 7<|im_end|>",
    ]
    # After each labelled run comes the unlabelled newline of the template.
    for _, end in runs:
        assert example.labels[end - 1] == tiny_tokenizer.eos_token_id
        assert tiny_tokenizer.decode([example.input_ids[end]]) == "\n"
        assert example.labels[end] == IGNORE_INDEX
    # The user's second question is context, never a target.
    assert "¿Y 3 + 4?" not in labelled_text(tiny_tokenizer, example.labels)


@pytest.mark.parametrize("conversation", [SINGLE, MULTI], ids=["single", "multi"])
def test_labels_equal_input_ids_wherever_they_are_set(formatter: ChatFormatter, conversation) -> None:
    example = formatter.tokenize(conversation)
    assert len(example.labels) == len(example.input_ids)
    assert all(label in (IGNORE_INDEX, token) for token, label in zip(example.input_ids, example.labels))


@pytest.mark.parametrize("conversation", [SINGLE, MULTI], ids=["single", "multi"])
@pytest.mark.parametrize("system_prompt", [None, "Eres un tutor."])
def test_training_prompt_tokens_equal_generation_prompt_tokens(
    tiny_tokenizer, conversation, system_prompt
) -> None:
    formatter = ChatFormatter(tiny_tokenizer, system_prompt=system_prompt)
    example = formatter.tokenize(conversation)
    prompt_ids = tiny_tokenizer(formatter.prompt_text(conversation[:-1]), add_special_tokens=False)["input_ids"]
    assert example.input_ids[: len(prompt_ids)] == prompt_ids
    # The first learned token is the one the model must produce right after that prompt.
    assert example.labels[len(prompt_ids) - 1] == IGNORE_INDEX
    assert example.labels[len(prompt_ids)] == example.input_ids[len(prompt_ids)]
    assert formatter.prompt_text(conversation[:-1]).endswith("<|im_start|>assistant\n")


def test_system_prompt_replaces_the_template_default(tiny_tokenizer) -> None:
    formatter = ChatFormatter(tiny_tokenizer, system_prompt="Eres un tutor.")
    assert formatter.prompt_text(SINGLE[:1]) == (
        "<|im_start|>system\nEres un tutor.<|im_end|>\n<|im_start|>user\n¿Cuánto es 2 + 2?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert "tiny test assistant" not in formatter.segments(SINGLE)[0][0]


def test_system_prompt_is_not_added_when_the_conversation_has_one(tiny_tokenizer) -> None:
    formatter = ChatFormatter(tiny_tokenizer, system_prompt="Eres un tutor.")
    own: list[Message] = [{"role": "system", "content": "Sé breve."}, *SINGLE]
    assert formatter.with_system_prompt(own) == own
    text = formatter.prompt_text(own[:-1])
    assert text.startswith("<|im_start|>system\nSé breve.<|im_end|>\n<|im_start|>user\n")
    assert "Eres un tutor." not in text
    assert text.count("<|im_start|>system") == 1


def test_without_system_prompt_the_template_default_is_kept(formatter: ChatFormatter) -> None:
    assert formatter.with_system_prompt(SINGLE) == SINGLE
    assert formatter.prompt_text(SINGLE[:1]).startswith(DEFAULT_SYSTEM)


def test_fallback_template_when_the_tokenizer_has_none(no_template_tokenizer) -> None:
    formatter = ChatFormatter(no_template_tokenizer)
    assert formatter.chat_template == FALLBACK_CHAT_TEMPLATE
    conversation: list[Message] = [
        {"role": "user", "content": "¿Cuánto es 2 + 2?"},
        {"role": "assistant", "content": "4"},
    ]
    assert formatter.render(conversation) == "Pregunta: ¿Cuánto es 2 + 2?\nRespuesta: 4<|im_end|>\n"
    assert formatter.prompt_text(conversation[:1]) == "Pregunta: ¿Cuánto es 2 + 2?\nRespuesta:"
    example = formatter.tokenize(conversation)
    assert labelled_text(no_template_tokenizer, example.labels) == " 4<|im_end|>"
    assert example.labels[-1] == IGNORE_INDEX  # the newline after the EOS
    prompt_ids = no_template_tokenizer(formatter.prompt_text(conversation[:1]), add_special_tokens=False)["input_ids"]
    assert example.input_ids[: len(prompt_ids)] == prompt_ids


def test_fallback_template_puts_the_system_prompt_first(no_template_tokenizer) -> None:
    formatter = ChatFormatter(no_template_tokenizer, system_prompt="Eres un tutor.")
    assert formatter.prompt_text(SINGLE[:1]) == "Eres un tutor.\n\nPregunta: ¿Cuánto es 2 + 2?\nRespuesta:"


def test_explicit_chat_template_overrides_the_tokenizers(tiny_tokenizer) -> None:
    formatter = ChatFormatter(tiny_tokenizer, chat_template=FALLBACK_CHAT_TEMPLATE)
    assert formatter.prompt_text(SINGLE[:1]) == "Pregunta: ¿Cuánto es 2 + 2?\nRespuesta:"


def test_truncation_cuts_to_max_length_and_is_reported(formatter: ChatFormatter) -> None:
    full = formatter.tokenize(MULTI)
    cut = formatter.tokenize(MULTI, max_length=20)
    assert len(full.input_ids) > 20
    assert cut.truncated is True
    assert cut.input_ids == full.input_ids[:20]
    assert cut.labels == full.labels[:20]
    exact = formatter.tokenize(MULTI, max_length=len(full.input_ids))
    assert exact.truncated is False
    assert exact.input_ids == full.input_ids


def test_template_that_does_not_render_growing_prefixes_is_rejected(tiny_tokenizer) -> None:
    # The message count at the end changes with every prefix, so no prefix is a prefix of the whole.
    template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}{{ messages | length }}"
    formatter = ChatFormatter(tiny_tokenizer, chat_template=template)
    with pytest.raises(ValueError, match=r"data\.chat_template"):
        formatter.tokenize(SINGLE)


@pytest.mark.parametrize(
    "answer_ids, expected",
    [
        ([5, 6, 2, 7], [5, 6, 2, IGNORE_INDEX]),  # up to and including the end-of-turn token
        ([5, 2, 6, 2, 7, 8], [5, 2, 6, 2, IGNORE_INDEX, IGNORE_INDEX]),  # the last one counts
        ([5, 6, 7], [5, 6, 7]),  # no end-of-turn token: the whole answer
    ],
)
def test_answer_labels(formatter: ChatFormatter, answer_ids, expected) -> None:
    assert formatter.answer_labels(answer_ids) == expected


SMOLLM2_CONFIG_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' }}"
    "{% if not (loop.last and message['role'] == 'assistant') %}{{ '\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@pytest.mark.parametrize("system_prompt", [None, 'Eres un tutor "paciente".\nResponde: ¿vale? \\ {{ no }} %}'])
@pytest.mark.parametrize("chat_template", [None, SMOLLM2_CONFIG_TEMPLATE])
def test_the_standalone_template_renders_the_training_prompt_from_a_saved_tokenizer(
    tiny_tokenizer, tmp_path, system_prompt, chat_template
) -> None:
    from transformers import AutoTokenizer

    formatter = ChatFormatter(tiny_tokenizer, system_prompt=system_prompt, chat_template=chat_template)
    saved = copy.deepcopy(tiny_tokenizer)
    saved.chat_template = formatter.standalone_template()
    saved.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    own_system: list[Message] = [{"role": "system", "content": "Sé breve."}, *MULTI]
    for conversation in (SINGLE[:1], MULTI[:3], own_system[:2]):
        text = loaded.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        assert text == formatter.prompt_text(conversation)
    for conversation in (SINGLE, MULTI, own_system):
        assert loaded.apply_chat_template(conversation, tokenize=False) == formatter.render(
            formatter.with_system_prompt(conversation)
        )
