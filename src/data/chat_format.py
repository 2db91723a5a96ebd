"""Render conversations with a chat template and mark which tokens the model learns.

Only assistant turns carry labels, and each one keeps its end-of-turn token: a collator that masks
labels by the pad token's value also masks the end-of-turn token whenever pad == eos (SmolLM2, and
the seeds' `pad_token = eos_token`), and the tuned model then never learns to stop.

The rendered text is split at turn boundaries and each piece is tokenised on its own, so the prompt
is tokenised exactly as it is at generation time (`add_generation_prompt=True`) and the answer's
first token is the one the model must produce after it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from src.data.conversation import Message, with_system_turn
from src.errors import ConfigurationError

IGNORE_INDEX = -100

# For base models with no chat template of their own (phi-2, gpt2-xl): seed 002's Q&A layout.
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'user' %}Pregunta: {{ message['content'] }}\n"
    "{% else %}Respuesta: {{ message['content'] }}{{ eos_token }}\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Respuesta:{% endif %}"
)

# Tokens that close an assistant turn in common templates, besides the tokenizer's own EOS.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")


@dataclass
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]
    full_length: int  # before truncation, so statistics can show what max_length cuts

    @property
    def truncated(self) -> bool:
        return self.full_length > len(self.input_ids)


class ChatFormatter:
    """Turns conversations into prompt text, or into token ids with assistant-only labels.

    Args:
        tokenizer: the base model's tokenizer.
        system_prompt: system text added to conversations that have none. It replaces the
            template's default system text (SmolLM2's is ~20 tokens), so prompts stay short.
            None keeps the template's behaviour.
        chat_template: Jinja template overriding the tokenizer's; None uses the tokenizer's own,
            or `FALLBACK_CHAT_TEMPLATE` when it has none.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        system_prompt: str | None = None,
        chat_template: str | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.chat_template = chat_template or tokenizer.chat_template or FALLBACK_CHAT_TEMPLATE
        self.end_of_turn_ids = end_of_turn_token_ids(tokenizer)

    def with_system_prompt(self, messages: list[Message]) -> list[Message]:
        return with_system_turn(messages, self.system_prompt)

    def standalone_template(self) -> str:
        """The chat template with this formatter's system prompt built in, for the saved tokenizer.

        `tokenizer.apply_chat_template(messages)` with the returned template renders exactly what
        `render(with_system_prompt(messages))` does, so anyone who loads an adapter folder with plain
        `AutoTokenizer` prompts the model as it was trained (not with the base template's default
        system turn, such as SmolLM2's "You are a helpful AI assistant named SmolLM").
        """
        if self.system_prompt is None:
            return self.chat_template
        # json.dumps escapes quotes, backslashes, newlines and non-ASCII as \uXXXX, which Jinja's
        # string literals read back unchanged.
        system = json.dumps({"role": "system", "content": self.system_prompt})
        return (
            f"{{% if not messages or messages[0]['role'] != 'system' %}}"
            f"{{% set messages = [{system}] + messages %}}{{% endif %}}" + self.chat_template
        )

    def render(self, messages: list[Message], add_generation_prompt: bool = False) -> str:
        return self.tokenizer.apply_chat_template(
            messages, chat_template=self.chat_template, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def prompt_text(self, messages: list[Message]) -> str:
        """The text a model continues to answer the conversation's last user turn."""
        return self.render(self.with_system_prompt(messages), add_generation_prompt=True)

    def segments(self, messages: list[Message]) -> list[tuple[str, bool]]:
        """Split the rendered conversation into (text, is_assistant_answer) pieces."""
        messages = self.with_system_prompt(messages)
        full = self.render(messages)
        pieces: list[tuple[str, bool]] = []
        cursor = 0
        for index, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prompt = self.render(messages[:index], add_generation_prompt=True)
            through_answer = self.render(messages[: index + 1])
            if not (full.startswith(through_answer) and through_answer.startswith(prompt) and len(prompt) >= cursor):
                raise ConfigurationError(
                    "The chat template does not render conversations as growing prefixes, so assistant turns "
                    "cannot be located for label masking. Set `data.chat_template` to a template that does "
                    f"(turn {index} of: {messages!r})."
                )
            pieces.append((full[cursor : len(prompt)], False))
            pieces.append((full[len(prompt) : len(through_answer)], True))
            cursor = len(through_answer)
        pieces.append((full[cursor:], False))
        return [(text, is_answer) for text, is_answer in pieces if text]

    def tokenize(self, messages: list[Message], max_length: int | None = None) -> TokenizedExample:
        input_ids: list[int] = []
        labels: list[int] = []
        for text, is_answer in self.segments(messages):
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            input_ids.extend(ids)
            labels.extend(self.answer_labels(ids) if is_answer else [IGNORE_INDEX] * len(ids))
        full_length = len(input_ids)
        if max_length is not None:
            input_ids, labels = input_ids[:max_length], labels[:max_length]
        return TokenizedExample(input_ids=input_ids, labels=labels, full_length=full_length)

    def answer_labels(self, ids: list[int]) -> list[int]:
        """Label an answer's tokens up to and including its end-of-turn token.

        What the template adds after the end-of-turn token (usually a newline) is not learned:
        generation stops at the end-of-turn token and never sees it.
        """
        last_end = max((i for i, token in enumerate(ids) if token in self.end_of_turn_ids), default=len(ids) - 1)
        return ids[: last_end + 1] + [IGNORE_INDEX] * (len(ids) - last_end - 1)


def end_of_turn_token_ids(tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """The ids that end an assistant turn: EOS plus known end-of-turn tokens in the vocabulary."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    vocab = tokenizer.get_vocab()
    ids.update(vocab[token] for token in END_OF_TURN_TOKENS if token in vocab)
    return ids
