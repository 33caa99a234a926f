"""Align a source's embedding table to the base model's vocabulary, token by token."""

from .canonical import (
    FAMILIES,
    PLACEHOLDER_PATTERNS,
    TokenizerFamily,
    canonical_forms,
    detect_family,
    is_placeholder,
)
from .cascade import COMBINE_MODES, AlignedSource, AlignmentError, align_source
from .report import ANCHOR_OUTCOMES, COVERED_OUTCOMES, OUTCOMES, AlignmentReport
from .vocabulary import ROLES, Vocabulary

__all__ = [
    "ANCHOR_OUTCOMES",
    "COMBINE_MODES",
    "COVERED_OUTCOMES",
    "FAMILIES",
    "OUTCOMES",
    "PLACEHOLDER_PATTERNS",
    "ROLES",
    "AlignedSource",
    "AlignmentError",
    "AlignmentReport",
    "TokenizerFamily",
    "Vocabulary",
    "align_source",
    "canonical_forms",
    "detect_family",
    "is_placeholder",
]
