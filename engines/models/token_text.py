"""A token's text as a person can read it, including tokens that stand for part of a character.

Byte-level tokenizers (SmolLM2's and Qwen's BPE) and byte-fallback ones (Llama's SentencePiece `<0xF0>` pieces)
split an emoji, or a letter of Arabic, Hebrew or Chinese, into tokens that each hold only some of its UTF-8 bytes.
Decoding such a token alone gives the replacement character "�", which says nothing. Here a token reads as its
text where its bytes are whole characters, and as the bytes themselves, `<0xF0><0x9F>`, where they are not; and
`joined` puts consecutive tokens' bytes back together, so the character they spell can be shown beside them, as
tokenizer visualisers do.
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Iterable

BYTE = re.compile(r"<0x([0-9A-F]{2})>")


@lru_cache(maxsize=1)
def byte_level_alphabet() -> dict[str, int]:
    """The character byte-level BPE writes for each byte, inverted: the printable Latin-1 bytes stand for
    themselves, and every other byte (controls, space, 0x7F-0xA0, 0xAD) takes the next code point from 256 on,
    in byte order, so that every piece of the vocabulary is visible text."""
    visible = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    shifted = [b for b in range(256) if b not in visible]
    return {**{chr(b): b for b in visible}, **{chr(256 + i): b for i, b in enumerate(shifted)}}


def is_byte_level(tokenizer) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return backend is not None and "ByteLevel" in str(backend.decoder)


def token_bytes(tokenizer, token_id: int) -> bytes | None:
    """The bytes a token stands for, where the tokenizer says so: a byte-level piece, or a byte-fallback
    `<0xNN>` piece. None for special tokens and for pieces that are plain text (SentencePiece words)."""
    if token_id in set(getattr(tokenizer, "all_special_ids", ())):
        return None
    piece = tokenizer.convert_ids_to_tokens(token_id)
    if not isinstance(piece, str):
        return None
    if m := re.fullmatch(BYTE, piece):
        return bytes([int(m.group(1), 16)])
    if is_byte_level(tokenizer):
        alphabet = byte_level_alphabet()
        if all(ch in alphabet for ch in piece):
            return bytes(alphabet[ch] for ch in piece)
    return None


def readable(data: bytes) -> str:
    """Bytes as text: the UTF-8 characters they hold, and each byte that is not part of a whole character as
    `<0xNN>`."""
    out, at = [], 0
    while at < len(data):
        try:
            out.append(data[at:].decode("utf-8"))
            break
        except UnicodeDecodeError as e:
            out.append(data[at:at + e.start].decode("utf-8"))
            out.extend(f"<0x{b:02X}>" for b in data[at + e.start:at + e.end])
            at += e.end
    return "".join(out)


def token_text(tokenizer, token_id: int) -> str:
    """A token as one reads it: its decoded text, or, where that would be "�" because the token holds only part
    of a character, its bytes as `<0xNN>` (with any whole characters it also holds as text)."""
    text = tokenizer.decode([token_id], skip_special_tokens=False)
    if "\ufffd" not in text:
        return text
    data = token_bytes(tokenizer, token_id)
    return text if data is None else readable(data)


def text_bytes(text: str) -> bytes:
    """A token text back to bytes: its `<0xNN>` escapes as the bytes, the rest as UTF-8."""
    out, at = bytearray(), 0
    for m in BYTE.finditer(text):
        out += text[at:m.start()].encode("utf-8") + bytes([int(m.group(1), 16)])
        at = m.end()
    return bytes(out + text[at:].encode("utf-8"))


def has_bytes(text: str) -> bool:
    """Whether a token text holds part of a character (written as `<0xNN>`)."""
    return BYTE.search(text) is not None


def joined(texts: Iterable[str]) -> str:
    """Consecutive token texts as one text: bytes that together make a character become that character."""
    return readable(b"".join(text_bytes(t) for t in texts))
