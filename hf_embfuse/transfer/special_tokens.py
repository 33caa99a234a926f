"""Which target tokens play the body's start, end, pad and chat roles after a transplant.

A body was trained with the tokens its own tokenizer puts around every text (Gemma's `<bos>` in front of
every document; SmolLM2's tokenizer puts nothing and its documents were separated by `<|endoftext|>`).
A transplanted model only works with plain `tokenizer(text)` and `generate()` when the target tokenizer
puts, in the same places, the target tokens whose rows hold those body rows. Which target token holds
which body row is decided by the alignment (`alignment/matching.py`: a special token by the same string,
else by role); this module follows the same rule, so it names the token whose row *is* the body's.

What the body's tokenizer adds is read by encoding a probe text with and without special tokens, never
guessed from token names. When nothing is prepended, the body's start token is the one its own score
puts before each line (`evaluation.bits_per_byte.start_token_id`); the target then prepends nothing either,
but its bos role names that token, so scoring and `generate()` without a prompt start from the body's row.
"""

from __future__ import annotations

import copy
import logging
import re
from dataclasses import dataclass, field
from typing import Any

from ..alignment.vocabulary import _ROLE_ATTRIBUTES, ROLES

logger = logging.getLogger(__name__)

_PROBE = "Hello world. 123"
# Roles whose target token may be moved to another token, with the attribute that names it.
_MOVABLE = {"bos": "bos_token", "eos": "eos_token", "pad": "pad_token"}


@dataclass
class TokenChoice:
    """One role's target token and the body token whose row it holds.

    Attributes:
        role: `bos`, `eos`, `pad`, or `chat` for a turn marker of the target's chat template.
        token: the target token (`None`: the role stays empty).
        token_id: its id in the target vocabulary.
        body_token: the body token whose row the alignment gives it (`None`: not matched to a body special).
        body_token_id: that token's id in the body's vocabulary.
        how: why this token: `kept` (the target's own), `moved` (the role now names another target token, the
            one on the body's row), `added` (the body's token, added to the target: its string matches it).
    """

    role: str
    token: str | None
    token_id: int | None
    body_token: str | None
    body_token_id: int | None
    how: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "token": self.token,
            "id": self.token_id,
            "body_token": self.body_token,
            "body_id": self.body_token_id,
            "how": self.how,
        }


@dataclass
class SpecialTokens:
    """The special-token choices of a transplant, and the flags that make `tokenizer(text)` add them.

    Attributes:
        prepend: whether `tokenizer(text)` puts the start token (`roles["bos"]`) in front, as the body's did.
        append: whether it puts the end token (`roles["eos"]`) at the end, as the body's did.
        roles: `bos`, `eos`, `pad` -> the choice for that role.
        chat: the chat-template markers (special tokens the template writes) and the body rows they hold.
        notes: anything a user should know (a chat marker on the start row, a role with no body token).
    """

    prepend: bool
    append: bool
    roles: dict[str, TokenChoice]
    chat: list[TokenChoice] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def moves_roles(self) -> bool:
        """Whether a role names another token than in the target tokenizer as loaded."""
        return any(choice.how != "kept" for choice in self.roles.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "prepend_start": self.prepend,
            "append_end": self.append,
            **{role: choice.to_dict() for role, choice in self.roles.items()},
            "chat_markers": [choice.to_dict() for choice in self.chat],
            "notes": list(self.notes),
        }

    def with_roles(self, tokenizer: Any) -> Any:
        """`tokenizer` with the chosen roles (a copy when a role moves; else `tokenizer` itself).

        Apply it only after the alignment: it matches special tokens by role, and a moved role would give
        the token another row.
        """
        if not self.moves_roles:
            return tokenizer
        tokenizer = copy.deepcopy(tokenizer)
        for role, choice in self.roles.items():
            if choice.how != "kept":
                setattr(tokenizer, _MOVABLE[role], choice.token)
        set_added_tokens(tokenizer, self.roles["bos"].token_id if self.prepend else None, self._end_id())
        return tokenizer

    def _end_id(self) -> int | None:
        return self.roles["eos"].token_id if self.append else None


def added_around(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids `tokenizer(text)` puts before and after a text's own tokens."""
    plain = tokenizer(_PROBE, add_special_tokens=False)["input_ids"]
    full = tokenizer(_PROBE, add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return list(full[:start]), list(full[start + len(plain) :])
    raise ValueError(
        f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} changes a text's own tokens when it adds special "
        "tokens; the tokens it adds cannot be told apart"
    )


def set_added_tokens(tokenizer: Any, start_id: int | None, end_id: int | None) -> None:
    """Make `tokenizer(text)` put `start_id` before and `end_id` after the text (`None`: nothing).

    Sets the fast tokenizer's post-processor: it is what acts in transformers 5, and `tokenizer.json` keeps it,
    so a reload in a process without hf_embfuse adds the same tokens. The `add_bos_token` / `add_eos_token`
    flags are set to match without letting their setters rebuild the post-processor from the bos/eos roles.
    """
    from tokenizers import processors

    start = [] if start_id is None else [tokenizer.convert_ids_to_tokens(int(start_id))]
    end = [] if end_id is None else [tokenizer.convert_ids_to_tokens(int(end_id))]
    single = [*(f"{t}:0" for t in start), "$A:0", *(f"{t}:0" for t in end)]
    pair = [*single, *(f"{t}:1" for t in start), "$B:1", *(f"{t}:1" for t in end)]
    specials = [(t, tokenizer.convert_tokens_to_ids(t)) for t in dict.fromkeys([*start, *end])]
    # The flags first: their setters rebuild the post-processor from the bos/eos roles, which may name
    # other tokens than the ones chosen here.
    object.__setattr__(tokenizer, "_add_bos_token", start_id is not None)
    object.__setattr__(tokenizer, "_add_eos_token", end_id is not None)
    tokenizer.init_kwargs["add_bos_token"] = start_id is not None
    tokenizer.init_kwargs["add_eos_token"] = end_id is not None
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=specials
    )


def _roles(tokenizer: Any) -> dict[str, int]:
    """Role -> token id, as `Vocabulary.from_tokenizer` reads them."""
    roles = {}
    for role in ROLES:
        for attribute in _ROLE_ATTRIBUTES[role]:
            token_id = getattr(tokenizer, f"{attribute}_id", None)
            if token_id is not None:
                roles[role] = int(token_id)
                break
    return roles


def _special_ids(tokenizer: Any) -> set[int]:
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    ids = {int(i) for i, token in decoder.items() if getattr(token, "special", False)}
    return ids | {int(i) for i in tokenizer.all_special_ids}


def body_rows_of_specials(target: Any, body: Any) -> dict[int, int]:
    """Target special token id -> the body token id whose row the alignment gives it.

    The rule of `alignment.matching.match_specials`: the same string first, else the first role (in `ROLES`
    order) that the target token holds and the body has.
    """
    body_specials = {body.convert_ids_to_tokens(j): j for j in _special_ids(body)}
    body_roles = _roles(body)
    roles_of: dict[int, list[str]] = {}
    for role, token_id in _roles(target).items():
        roles_of.setdefault(token_id, []).append(role)
    matched = {}
    for i in sorted(_special_ids(target)):
        j = body_specials.get(target.convert_ids_to_tokens(i))
        for role in roles_of.get(i, ()):
            if j is not None:
                break
            j = body_roles.get(role)
        if j is not None:
            matched[i] = j
    return matched


def _holder(matched: dict[int, int], body_id: int, preferred: int | None) -> int | None:
    """The target token on `body_id`'s row: `preferred` when it is one, else the lowest id."""
    holders = sorted(i for i, j in matched.items() if j == body_id)
    if preferred in holders:
        return preferred
    return holders[0] if holders else None


def map_special_tokens(target: Any, body: Any) -> tuple[SpecialTokens, Any]:
    """Choose the target's bos, eos, pad and say where its chat markers land, from the body's tokenizer.

    Returns:
        the choices, and the target tokenizer to lay rows on: `target` itself when nothing must change,
        else a copy (with the body's start token added when no target token holds its row, and with
        `tokenizer(text)` adding what the body's tokenizer adds). Roles are moved by
        `SpecialTokens.with_roles`, after the alignment.
    """
    body_before, body_after = added_around(body)
    target_before, target_after = added_around(target)
    body_start = body_before[0] if body_before else _document_start(body)
    body_roles = _roles(body)
    matched = body_rows_of_specials(target, body)
    notes, out = [], target

    def name(tokenizer: Any, token_id: int | None) -> str | None:
        return None if token_id is None else tokenizer.convert_ids_to_tokens(int(token_id))

    def choose(role: str, body_id: int | None) -> TokenChoice:
        own = getattr(target, f"{_MOVABLE[role]}_id", None)
        holder = None if body_id is None else _holder(matched, body_id, own)
        if holder is None:  # no target token on that body row: the target's own stays, on whatever row it has
            own_row = matched.get(own)
            return TokenChoice(role, name(target, own), own, name(body, own_row), own_row, "kept")
        how = "kept" if holder == own else "moved"
        return TokenChoice(role, name(target, holder), holder, name(body, body_id), body_id, how)

    start = choose("bos", body_start)
    if start.body_token is None and body_start is not None:
        # No target token holds the body's start row: add the body's token; its string matches it exactly.
        from tokenizers import AddedToken

        out = copy.deepcopy(target)
        token = name(body, body_start)
        out.add_tokens([AddedToken(token, special=True, normalized=False)], special_tokens=True)
        new_id = out.convert_tokens_to_ids(token)
        start = TokenChoice("bos", token, new_id, token, body_start, "added")
        notes.append(f"no target token holds the body's start token {token!r}: added it as id {new_id}")
    body_end = body_after[-1] if body_after else body_roles.get("eos")
    roles = {"bos": start, "eos": choose("eos", body_end), "pad": choose("pad", body_roles.get("pad"))}
    for role, choice in roles.items():
        if choice.body_token is None and choice.token is not None:
            notes.append(f"{role} {choice.token!r} holds no body special token's row")
        elif (
            role != "bos" and choice.body_token_id == body_start and choice.token_id != roles["bos"].token_id
        ):
            notes.append(f"{role} {choice.token!r} holds the body's start row {choice.body_token!r}")

    prepend, append = bool(body_before), bool(body_after)
    want_before = [start.token_id] if prepend else []
    want_after = [roles["eos"].token_id] if append else []
    if (target_before, target_after) != (want_before, want_after):
        if out is target:
            out = copy.deepcopy(target)
        set_added_tokens(out, want_before[0] if prepend else None, want_after[0] if append else None)

    chat = []
    for token_id in sorted(_chat_markers(target)):
        body_id = matched.get(token_id)
        chat.append(
            TokenChoice("chat", name(target, token_id), token_id, name(body, body_id), body_id, "kept")
        )
        if body_id is not None and body_id == body_start and token_id != start.token_id:
            notes.append(
                f"chat marker {name(target, token_id)!r} holds the body's start row {name(body, body_id)!r}"
            )
        elif body_id is not None and token_id == start.token_id:
            notes.append(
                f"chat marker {name(target, token_id)!r} is also the start token: every turn shows the body "
                f"its start row {name(body, body_id)!r}"
            )
    if not prepend:
        # Scoring a line (`start_token_id`) takes `<|endoftext|>` by name before bos, where nothing is prepended.
        from ..evaluation.bits_per_byte import DOCUMENT_SEPARATOR

        separator = out.get_vocab().get(DOCUMENT_SEPARATOR)
        if separator is not None and separator != roles["bos"].token_id:
            notes.append(
                f"`hf-embfuse eval --text` starts lines with {DOCUMENT_SEPARATOR!r} by name, not with the start "
                f"token {roles['bos'].token!r}: pass --start-token {roles['bos'].token!r}"
            )
    result = SpecialTokens(prepend, append, roles, chat, notes)
    for note in notes:
        logger.info("Special tokens: %s", note)
    return result, out


def _document_start(body: Any) -> int | None:
    """The token the body's own score puts before each line, when its tokenizer prepends nothing."""
    from ..evaluation.bits_per_byte import start_token_id

    try:
        return start_token_id(body)
    except ValueError:  # neither bos nor eos (a WordPiece encoder): its cls, if any
        return _roles(body).get("bos")


def _chat_markers(tokenizer: Any) -> set[int]:
    """Ids of the special tokens the chat template writes (`<|im_start|>`, `<start_of_turn>`)."""
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str) or not template:
        return set()
    found = set()
    for token_id in _special_ids(tokenizer):
        token = tokenizer.convert_ids_to_tokens(token_id)
        if token and re.search(re.escape(token), template):
            found.add(token_id)
    return found
