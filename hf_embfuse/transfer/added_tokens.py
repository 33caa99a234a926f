"""Added tokens: read them (a recipe list or a file), add them to a tokenizer, say what was new."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..recipe import SPECIAL_ROLES, AddedTokenRecipe
from .errors import TargetError

logger = logging.getLogger(__name__)


@dataclass
class AddedTokensReport:
    """What adding tokens did: the tokens that were new, and those the tokenizer already had (not duplicated)."""

    added: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    roles: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"added": self.added, "existing": self.existing, "roles": self.roles}


def read_added_tokens(entries: list[str | AddedTokenRecipe] | str | os.PathLike) -> list[AddedTokenRecipe]:
    """The tokens of a recipe's `added_tokens`: a list, or a UTF-8 file with `TOKEN` or `TOKEN<TAB>ROLE` per line."""
    if isinstance(entries, (str, os.PathLike)):
        return _read_file(Path(entries))
    return [AddedTokenRecipe(content=e) if isinstance(e, str) else e for e in entries]


def _read_file(path: Path) -> list[AddedTokenRecipe]:
    if not path.is_file():
        raise TargetError(
            f"added_tokens file {os.fspath(path)!r} does not exist; give a file with one token per line."
        )
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise TargetError(f"added_tokens file {os.fspath(path)!r} is not UTF-8 ({error.reason}).") from None
    tokens = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        content, _, role = line.partition("\t")
        role = role.strip()
        if role and role not in SPECIAL_ROLES:
            raise TargetError(
                f"{os.fspath(path)}:{number}: special token {content!r} has no role ({role!r} is none); write "
                f"TOKEN<TAB>ROLE with ROLE one of {', '.join(SPECIAL_ROLES)}, or the token alone for a plain one."
            )
        tokens.append(AddedTokenRecipe(content=content, role=role or None, special=bool(role)))
    if not tokens:
        raise TargetError(f"added_tokens file {os.fspath(path)!r} holds no tokens.")
    return tokens


def add_tokens(tokenizer: Any, tokens: list[AddedTokenRecipe]) -> AddedTokensReport:
    """Add `tokens` to `tokenizer` in place; tokens it already has are reported, not added again.

    A special token gets its role (`pad` -> `tokenizer.pad_token`, `additional` -> one more of
    `additional_special_tokens`), also when the token existed already.
    """
    from tokenizers import AddedToken

    report = AddedTokensReport()
    vocabulary = tokenizer.get_vocab()
    seen: set[str] = set()
    plain, extra_special = [], []
    for token in tokens:
        if token.content in seen:
            continue
        seen.add(token.content)
        (report.existing if token.content in vocabulary else report.added).append(token.content)
        if not token.is_special:
            if token.content not in vocabulary:
                plain.append(AddedToken(token.content, normalized=False, special=False))
            continue
        report.roles[token.content] = token.role
        if token.role == "additional":
            extra_special.append(AddedToken(token.content, normalized=False, special=True))
        else:
            tokenizer.add_special_tokens({f"{token.role}_token": AddedToken(token.content, special=True)})
    if plain:
        tokenizer.add_tokens(plain)
    if extra_special:
        tokenizer.add_special_tokens(
            {"additional_special_tokens": extra_special}, replace_extra_special_tokens=False
        )
    if report.existing:
        logger.warning(
            "%d added token(s) are already in the tokenizer and were not duplicated: %s",
            len(report.existing),
            ", ".join(map(repr, report.existing[:10])),
        )
    return report
