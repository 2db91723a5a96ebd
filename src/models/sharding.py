"""What FSDP shards as one unit: each decoder block of any transformers causal LM.

FSDP needs an auto-wrap policy naming the repeated block class, which differs per architecture
(`LlamaDecoderLayer`, `PhiDecoderLayer`, `GPT2Block`, ...). One config overlay should serve every
model, so this policy recognises the blocks by transformers' naming convention instead of by class.
"""

from __future__ import annotations

from torch import nn

BLOCK_SUFFIXES = ("DecoderLayer", "Block")


def wrap_decoder_layers(module: nn.Module, recurse: bool, nonwrapped_numel: int) -> bool:
    """FSDP auto-wrap policy: descend everywhere, wrap each decoder block in its own FSDP unit."""
    if recurse:
        return True
    return type(module).__name__.endswith(BLOCK_SUFFIXES)
