"""The error of a target vocabulary that cannot be used."""


class TargetError(ValueError):
    """A target tokenizer or added-token list that cannot be used; the message names it and the fix."""
