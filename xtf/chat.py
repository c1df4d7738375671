"""Conversations → token ids with exact answer positions: every assistant turn is trained on, the rest is context.

A chat example carries `messages`: [{"role": "system" | "user" | "assistant", "content": str}, ...] (checked by
`check_messages`). It is rendered through the tokenizer's chat template when `model.chat_template=true`, else
through the plain template below, and cut into segments that are tokenised one by one and concatenated, so a
segment boundary is a token boundary whatever the tokenizer (as xtf.data does for prompt + response):

    context   template text around the turns, and every system / user turn     never trained
    answer    the content of an assistant turn                                  trained (response_mask True)
    end       the turn's end marker when it is a special token (<|im_end|>,    trained: a model that never sees
              <|eot_id|>, EOS), the first token after the content               a loss on it never learns to stop

With a chat template the text of assistant turn i is found by rendering twice: the conversation up to turn i with
the generation prompt (`before`), and up to and including turn i (`through`); `through` must extend `before`
(a template that rewrites earlier turns cannot give exact positions and is refused, naming the turn), and the
turn's content must appear verbatim in the difference.

Plain template (a model without one, or model.chat_template=false), one line per turn:
    "<system content>\\n\\n"     "User: <content>\\n"     "Assistant: " <content> EOS "\\n"
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Optional

from xtf.errors import DataError

ROLES = ("system", "user", "assistant")
PLAIN_LABEL = {"user": "User: ", "assistant": "Assistant: "}


class ChatError(DataError):
    """A conversation cannot be rendered with exact answer positions; the message names the turn (a user error:
    run.py prints it in one line, as it prints a bad row)."""


@dataclass(frozen=True)
class Segment:
    text: str
    kind: str                 # "context" | "answer" | "end"
    turn: Optional[int]       # index into messages for "answer" / "end" segments, else None


def check_messages(messages) -> Optional[str]:
    """What is wrong with a conversation, or None. Roles: an optional system turn first, then user and assistant
    alternating, starting with user and ending with an assistant turn (at least one)."""
    if not isinstance(messages, list) or not messages:
        return "must be a non-empty list of {role, content} turns"
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            return f"turn {i} must be an object with 'role' and 'content', got {type(m).__name__}"
        if m.get("role") not in ROLES:
            return f"turn {i} has role {m.get('role')!r}; allowed: {list(ROLES)}"
        if not isinstance(m.get("content"), str):
            return f"turn {i} ({m['role']}) has content of type {type(m.get('content')).__name__}, not a string"
        if not m["content"].strip():
            return f"turn {i} ({m['role']}) has empty content"
    roles = [m["role"] for m in messages]
    body = roles[1:] if roles[0] == "system" else roles
    if "system" in body:
        return f"turn {roles.index('system', 1)}: a system turn is allowed only first"
    if not body:
        return "has no user or assistant turn"
    for j, role in enumerate(body):
        expected = "user" if j % 2 == 0 else "assistant"
        if role != expected:
            return f"turn {j + len(roles) - len(body)} is {role}, expected {expected} (user and assistant alternate, " \
                   f"starting with user)"
    if body[-1] != "assistant":
        return "has no assistant turn" if "assistant" not in body else "ends with a user turn that no assistant answers"
    return None


def segments(tokenizer, messages: list[dict], chat_template: bool) -> list[Segment]:
    """The conversation as context / answer / end segments (module docstring); their texts concatenate to the
    rendered conversation."""
    if chat_template:
        return _template_segments(tokenizer, messages)
    out = []
    for i, m in enumerate(messages):
        if m["role"] == "system":
            out.append(Segment(m["content"] + "\n\n", "context", None))
        elif m["role"] == "user":
            out.append(Segment(PLAIN_LABEL["user"] + m["content"] + "\n", "context", None))
        else:
            out += [Segment(PLAIN_LABEL["assistant"], "context", None), Segment(m["content"], "answer", i),
                    Segment(tokenizer.eos_token, "end", i), Segment("\n", "context", None)]
    return out


def _render(tokenizer, messages: list[dict], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=False)


def _template_segments(tokenizer, messages: list[dict]) -> list[Segment]:
    if not getattr(tokenizer, "chat_template", None):
        raise ChatError("model.chat_template=true but the tokenizer has no chat template; set it to false (the "
                        "plain template, xtf/chat.py)")
    turns = [{"role": m["role"], "content": m["content"]} for m in messages]  # the template sees role/content only
    out, done = [], ""
    for i, m in enumerate(turns):
        if m["role"] != "assistant":
            continue
        before = _render(tokenizer, turns[:i], True)
        through = _render(tokenizer, turns[: i + 1], False)
        if not before.startswith(done) or not through.startswith(before):
            raise ChatError(f"the chat template rewrites earlier text when assistant turn {i} is added, so the "
                            f"answer positions cannot be exact; use model.chat_template=false")
        piece = through[len(before):]
        at = piece.find(m["content"])
        if at < 0:
            raise ChatError(f"the chat template does not render assistant turn {i}'s content verbatim (it changes "
                            f"whitespace or text), so the answer positions cannot be exact; use "
                            f"model.chat_template=false")
        out.append(Segment(before[len(done):] + piece[:at], "context", None))
        out.append(Segment(m["content"], "answer", i))
        rest = piece[at + len(m["content"]):]
        marker = _leading_special(tokenizer, rest)
        if marker:
            out.append(Segment(marker, "end", i))
            rest = rest[len(marker):]
        if rest:
            out.append(Segment(rest, "context", None))
        done = through
    full = _render(tokenizer, turns, False)
    if full != done:   # turns after the last assistant one cannot exist (check_messages); a template may add text
        if not full.startswith(done):
            raise ChatError("the chat template renders the whole conversation differently from its turns; use "
                            "model.chat_template=false")
        out.append(Segment(full[len(done):], "context", None))
    return out


_specials: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer → its special texts, longest first


def _special_texts(tokenizer) -> list[str]:
    """The tokenizer's special token texts (named and added-special), longest first; computed once per tokenizer
    (tens of thousands of rows each ask)."""
    try:
        return _specials[tokenizer]
    except (KeyError, TypeError):
        pass
    named = {t for t in getattr(tokenizer, "all_special_tokens", []) if t}
    added = {str(t) for t in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values()
             if getattr(t, "special", False)}
    texts = sorted(named | added, key=len, reverse=True)
    try:
        _specials[tokenizer] = texts
    except TypeError:
        pass  # not weak-referenceable: computed again next time
    return texts


def _leading_special(tokenizer, text: str) -> str:
    """The special token text at the start of `text` (the turn's end marker), or ""."""
    return next((tok for tok in _special_texts(tokenizer) if text.startswith(tok)), "")


def encode(tokenizer, messages: list[dict], chat_template: bool
           ) -> tuple[list[int], list[bool], list[Optional[tuple[int, int, int]]]]:
    """(input_ids, response_mask, spans) of a conversation. spans[t] = (turn, start, end) for every answer position
    t (character offsets into that turn's content; start == end for its end marker), None elsewhere. BOS is added
    exactly when the tokenizer adds one to plain text and the rendered text does not start with it. Position 0 is
    never trainable (xtf.data's alignment convention)."""
    ids: list[int] = []
    mask: list[bool] = []
    spans: list[Optional[tuple[int, int, int]]] = []
    for j, seg in enumerate(segments(tokenizer, messages, chat_template)):
        if seg.kind == "answer":
            enc = tokenizer(seg.text, add_special_tokens=False, return_offsets_mapping=True)
            ids += enc["input_ids"]
            mask += [True] * len(enc["input_ids"])
            spans += [(seg.turn, int(a), int(b)) for a, b in enc["offset_mapping"]]
            continue
        bos = tokenizer.bos_token
        add_special = j == 0 and not (bos and seg.text.startswith(bos))
        piece = tokenizer(seg.text, add_special_tokens=add_special)["input_ids"]
        if seg.kind == "end":
            if len(piece) != 1:
                raise ChatError(f"the end marker {seg.text!r} of turn {seg.turn} is not one token")
            end = len(messages[seg.turn]["content"])
            ids, mask, spans = ids + piece, mask + [True], spans + [(seg.turn, end, end)]
        else:
            ids, mask, spans = ids + piece, mask + [False] * len(piece), spans + [None] * len(piece)
    if mask:
        mask[0], spans[0] = False, None
    return ids, mask, spans
