"""The simulator's deterministic tokenizer: one token per 4 characters.

Real BPE tokenizers average roughly 4 characters of English per token, so prompt lengths stay realistic, and a
prompt of exactly N tokens is simply 4N characters. Token ids are crc32 of the 4-character piece modulo the
vocabulary, so equal prefixes give equal ids (prefix caching sees them). Generated tokens are 4-character pieces
too, so re-tokenizing a completion gives back exactly its completion_tokens.
"""

from __future__ import annotations

import zlib

CHARS_PER_TOKEN = 4
VOCAB_SIZE = 2048  # the tiny Llama's vocabulary (../shared/notes/vllm-cpu.md)

# Output pieces: a space and three letters; ids sit in the same vocabulary as the prompt's.
_LETTERS = "abcdefghijklmnopqrstuvwxyz"
OUTPUT_PIECES = [f" {_LETTERS[i % 26]}{_LETTERS[(i // 26) % 26]}{_LETTERS[(i * 7 + 3) % 26]}" for i in range(256)]


def pieces(text: str) -> list[str]:
    return [text[i:i + CHARS_PER_TOKEN] for i in range(0, len(text), CHARS_PER_TOKEN)]


def piece_id(piece: str) -> int:
    return zlib.crc32(piece.encode("utf-8")) % VOCAB_SIZE


def encode(text: str) -> list[int]:
    return [piece_id(piece) for piece in pieces(text)]


def render_chat(messages: list[dict]) -> str:
    """A fixed chat template (role tags, one line each), ending with the assistant's turn."""
    parts = []
    for message in messages:
        content = message.get("content", "")
        if isinstance(content, list):  # OpenAI content parts: keep the text ones
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        parts.append(f"<|{message.get('role', 'user')}|>\n{content}\n")
    parts.append("<|assistant|>\n")
    return "".join(parts)
