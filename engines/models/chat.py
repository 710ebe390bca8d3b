"""The chat template: how a prompt becomes the ids a chat model was tuned to read.

An instruct model such as SmolLM2-135M-Instruct learnt to answer a conversation written in its tokenizer's chat
template (`<|im_start|>user ... <|im_end|>`, then `<|im_start|>assistant` where its answer begins); fed the bare
prompt it continues text it was never tuned on. `prompt_ids` wraps the prompt, one user message or a whole
conversation, in that template, or encodes it as plain text.

Whether to wrap: `chat=True` or `False` says so; `None` (the default everywhere) wraps for a causal model whose
tokenizer has a template, unless its preset says it learnt plain text only (the embedded tiny models carry
SmolLM2's tokenizer, template and all). Masked LMs read plain text unless asked.
"""
from __future__ import annotations

from typing import Any, Sequence

from engines.models import presets
from engines.models.adapter import LM

ROLES = ("system", "user", "assistant")
# a prompt is a text (one user message) or a conversation: [{"role": "user", "content": "..."}, ...]
Prompt = str | Sequence[dict[str, str]]


def has_template(lm: LM) -> bool:
    return bool(getattr(lm.tokenizer, "chat_template", None))


def chat_by_default(lm: LM) -> bool:
    """What `chat=None` means for this model."""
    if not has_template(lm):
        return False
    preset = presets.PRESETS.get(lm.name)
    if lm.is_masked:   # a masked LM answers a conversation only if it was trained on them: its preset says so
        return bool(preset and preset.chat)
    return preset is None or preset.chat is None or preset.chat


def chat_by_default_for(name: str) -> bool | None:
    """`chat_by_default` by model name, without loading the model: known for a preset (every causal preset but
    the embedded ones is an instruct model with a template; a masked one only where its preset says so); None for
    a folder or hub id."""
    preset = presets.PRESETS.get(name)
    if preset is None:
        return None
    return bool(preset.chat) if preset.kind == "masked" else preset.chat is not False


def wants_chat(lm: LM, chat: bool | None) -> bool:
    """Whether a prompt for this model is wrapped; asking for the template of a model without one is refused."""
    if chat is None:
        return chat_by_default(lm)
    if chat and not has_template(lm):
        raise ValueError(f"'{lm.name}' has no chat template, so its prompt cannot be wrapped as a chat; "
                         f"turn chat off or choose an instruct model such as smollm2-135m-instruct.")
    return bool(chat)


def messages_of(prompt: Any) -> list[dict[str, str]]:
    """The conversation a prompt stands for: a text is one user message; a list of messages is checked."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if not isinstance(prompt, (list, tuple)) or not prompt:
        raise ValueError("The prompt is neither a text nor a list of messages such as "
                         "[{'role': 'user', 'content': 'Hello'}].")
    messages = []
    for i, m in enumerate(prompt):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str) \
                or not m["content"].strip():
            raise ValueError(f"Message {i + 1} is not a message: each is {{'role': one of {', '.join(ROLES)}, "
                             f"'content': some text}}.")
        messages.append({"role": m["role"], "content": m["content"]})
    if messages[-1]["role"] != "user":
        raise ValueError("The last message is not the user's: the model answers the user, so end with a user "
                         "message.")
    return messages


def prompt_ids(lm: LM, prompt: Prompt, chat: bool | None = None) -> tuple[list[int], bool]:
    """The ids the model reads for this prompt, and whether they are in its chat template. A conversation (a
    list of messages) needs the template; a text is wrapped as one user message or encoded as it is."""
    if chat not in (None, True, False):
        raise ValueError(f"chat is on (True), off (False) or automatic (None), not {str(chat)[:40]!r}.")
    if not isinstance(prompt, str):
        messages = messages_of(prompt)
        if chat is False:
            raise ValueError("A list of messages is a chat: turn chat on, or give the prompt as one text.")
        wants_chat(lm, True)   # refuses a model without a template
        return templated(lm, messages), True
    if not wants_chat(lm, chat):
        return lm.encode(prompt), False
    return templated(lm, messages_of(prompt)), True


def templated(lm: LM, messages: list[dict[str, str]]) -> list[int]:
    """The conversation in the model's template, ending where the assistant's answer begins."""
    ids = lm.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    return [int(i) for i in ids]


def prompt_text(prompt: Prompt) -> str:
    """The prompt as a trace's `prompt` text: the text itself, or the conversation's last user message (the whole
    conversation is the trace's `messages`)."""
    return prompt if isinstance(prompt, str) else messages_of(prompt)[-1]["content"]
