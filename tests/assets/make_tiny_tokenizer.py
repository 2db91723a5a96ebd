"""Build the tiny byte-level BPE tokenizer used by the tests (`tests/assets/tiny-chatml-tokenizer/`).

It behaves like SmolLM2's where it matters for the tests: ChatML template with a default system
text, `<|im_end|>` as both EOS and pad, any text encodable (byte-level, no unknown tokens).
Regenerate with: python tests/assets/make_tiny_tokenizer.py
"""

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a tiny test assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS = [
    "¿Cuánto es 45 - 27? Respuesta: 18. What is 6 × 7? Answer: 42.",
    "Calcula 12 + 30 = 42, primero 3 × 4 = 12, luego 5 + 12 = 17.",
    "Pikachu es un Pokémon de tipo Eléctrico. Pregunta: Respuesta:",
    "def suma(a, b):\n    return a + b\nprint(suma(2, 3))",
    "The answer is 0.75 or 3/4; la respuesta es 2,5.",
]


def build(out_dir: Path) -> None:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
        chat_template=CHATML_TEMPLATE,
    )
    fast.save_pretrained(out_dir)


if __name__ == "__main__":
    build(Path(__file__).parent / "tiny-chatml-tokenizer")
