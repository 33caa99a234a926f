"""The target vocabulary: load the tokenizer a model is to use, and add tokens to it."""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..model_names import local_name
from ..sources._checkpoint import looks_like_repo_id
from .added_tokens import AddedTokensReport, add_tokens, read_added_tokens
from .errors import TargetError
from .special_tokens import SpecialTokens, map_special_tokens

logger = logging.getLogger(__name__)


@dataclass
class Target:
    """The tokenizer whose vocabulary the fused model gets, and where it came from.

    Attributes:
        tokenizer: the target tokenizer (a copy: adding tokens never changes the caller's).
        name: what it was given as (a path, a Hub id, `source:N`, `base`, or the tokenizer's class).
        added: what adding tokens did, when tokens were added.
        special_tokens: which target tokens play the body's start, end, pad and chat roles (a transplant).
    """

    tokenizer: Any
    name: str
    added: AddedTokensReport | None = None
    special_tokens: SpecialTokens | None = None
    _saved: Any = field(default=None, init=False, repr=False, compare=False)

    @property
    def saved_tokenizer(self) -> Any:
        """The tokenizer to save and to take the config's bos/eos/pad ids from, once the rows are laid.

        `tokenizer` already adds the body's start token where the body's did; this one also names the
        chosen tokens in their roles, which the alignment must not see (it matches special tokens by role).
        """
        if self.special_tokens is None:
            return self.tokenizer
        if self._saved is None:
            self._saved = self.special_tokens.with_roles(self.tokenizer)
        return self._saved

    def to_dict(self) -> dict[str, Any]:
        return {
            "tokenizer": self.name,
            "size": len(self.tokenizer),
            "added_tokens": None if self.added is None else self.added.to_dict(),
            "special_tokens": None if self.special_tokens is None else self.special_tokens.to_dict(),
        }


def load_target_tokenizer(spec: str | os.PathLike) -> Any:
    """A tokenizer from a folder, a Hub id or a `.gguf` file (its tokenizer converted once, then cached).

    Raises:
        TargetError: nothing there, or no tokenizer could be read from it.
    """
    from transformers import AutoTokenizer

    name = os.fspath(spec)
    path = Path(name).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        from ..sources._gguf_tokenizer import load_gguf_tokenizer
        from ..sources.errors import SourceError

        try:
            return load_gguf_tokenizer(path)[0]
        except SourceError as error:
            raise TargetError(f"Target tokenizer {name!r}: {error}") from None
    if not path.exists() and not looks_like_repo_id(name):
        raise TargetError(
            f"Target tokenizer {name!r} not found: no such file or folder, and not a Hub repo id. Give a tokenizer "
            "folder, a Hub id, a .gguf file, or `source:N` for the tokenizer of source N."
        )
    if path.is_file():
        raise TargetError(
            f"Target tokenizer {name!r} is a file but not a .gguf; give the folder that holds tokenizer.json."
        )
    try:
        return AutoTokenizer.from_pretrained(name, trust_remote_code=False)
    except (OSError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise TargetError(f"Target tokenizer {name!r} could not be loaded: {first_line}") from None


def resolve_target(
    tokenizer: Any,
    base_tokenizer: Any,
    added_tokens: list = (),
    added_tokens_file: str | os.PathLike | None = None,
    *,
    source_tokenizers: dict[int, Any] | None = None,
    source_names: dict[int, str] | None = None,
) -> Target:
    """The target of a build: a tokenizer (object, path, Hub id, GGUF, `source:N`) or the base's, plus added tokens.

    Args:
        tokenizer: the target; `None` for the base tokenizer.
        base_tokenizer: the base model's tokenizer.
        added_tokens: tokens to add (strings, `AddedTokenRecipe`s).
        added_tokens_file: a file of tokens to add, one per line (`TOKEN` or `TOKEN<TAB>ROLE`).
        source_tokenizers: source number (1 = the first source) -> its tokenizer, for `source:N`.
        source_names: source number -> its name, to name a `source:N` target by.
    """
    if tokenizer is None:
        name, loaded = "base", base_tokenizer
    elif isinstance(tokenizer, (str, os.PathLike)) and os.fspath(tokenizer).startswith("source:"):
        name = os.fspath(tokenizer)
        number = int(name[len("source:") :])
        loaded = (source_tokenizers or {}).get(number)
        if number in (source_names or {}):
            name = f"{name} ({source_names[number]})"
        if loaded is None:
            raise TargetError(
                f"Target tokenizer {name!r}: that source has no tokenizer (static word vectors?)."
            )
    elif isinstance(tokenizer, (str, os.PathLike)):
        # Reports and the config name it like a source: a Hub id, or a file / folder name, never a path.
        name, loaded = local_name(os.fspath(tokenizer)), load_target_tokenizer(tokenizer)
    else:
        if not hasattr(tokenizer, "get_vocab"):
            raise TargetError(
                f"`tokenizer` must be a tokenizer, a path, a Hub id or 'source:N'; got {type(tokenizer).__name__}."
            )
        name, loaded = (
            local_name(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__),
            tokenizer,
        )
    special = None
    if tokenizer is not None:
        # A copy whenever something changes: the caller's (or a source's) tokenizer is never touched.
        special, loaded = map_special_tokens(loaded, base_tokenizer)
    entries = read_added_tokens(list(added_tokens))
    if added_tokens_file is not None:
        entries += read_added_tokens(added_tokens_file)
    if not entries:
        return Target(loaded, name, special_tokens=special)
    target = copy.deepcopy(loaded)  # never add to the caller's (or the base's) tokenizer
    report = add_tokens(target, entries)
    logger.info(
        "Target %s: %d tokens added, %d already there.", name, len(report.added), len(report.existing)
    )
    return Target(target, name if tokenizer is not None else "base + added tokens", report, special)
