"""Self-Instruct's filters for generated prompts (docs/method.md §1.2): format, length, keywords, near-duplicates.

Self-Rewarding built its 20k prompt pool with the Self-Instruct recipe (Wang et al., 2023) and "applied
Self-Instruct's filters: ROUGE-L similarity check, keyword filtering, length filtering". The values here
are Self-Instruct's own (``generate_instructions.py`` of the Self-Instruct release):

* **length**: an instruction of fewer than 3 or more than 150 words is dropped;
* **keyword**: an instruction mentioning something a text-only model cannot do (``BANNED_KEYWORDS``,
  matched as whole words, case-insensitive) is dropped;
* **format**: empty, starting with punctuation, or starting with a non-ASCII character (Self-Instruct
  drops those as "not English") is dropped;
* **rouge**: an instruction whose ROUGE-L F1 with any prompt already in the pool (the seeds and every
  prompt kept so far) exceeds 0.7 is a near-duplicate and dropped. ROUGE-L comes from Google's
  ``rouge-score`` package (the implementation Self-Instruct used), with its default tokenizer (lower
  case, alphanumeric tokens, no stemming).

Every filter returns the name of the rule that rejected a text, or None, so a caller can count drops
per rule. The order of the checks is fixed (``FILTER_NAMES``) and a text is counted under the first rule
it fails.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from rouge_score import rouge_scorer, tokenizers

BANNED_KEYWORDS: tuple[str, ...] = (
    "image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps",
    "draw", "plot", "go to", "video", "audio", "music", "flowchart", "diagram",
)
"""Self-Instruct's keyword list: things a text-only model cannot see, produce or do."""

_BANNED_RE = re.compile(r"\b(?:" + "|".join(re.escape(k) for k in BANNED_KEYWORDS) + r")\b", re.IGNORECASE)

FILTER_NAMES: tuple[str, ...] = ("format", "length", "keyword", "duplicate", "rouge")
"""Rules in the order they are checked; a dropped text is counted under the first rule it fails.
``duplicate`` (exact match after normalising case and whitespace) is a cheap special case of ``rouge``,
counted separately so the report says whether the model repeats itself verbatim."""


@dataclass(frozen=True)
class FilterSettings:
    """Bounds of the filters (Self-Instruct's values by default)."""

    min_words: int = 3
    max_words: int = 150
    rouge_threshold: float = 0.7  # drop when ROUGE-L F1 with a pool prompt is strictly above this
    keywords: bool = True  # apply the banned-keyword filter


def banned_keyword(text: str) -> str | None:
    """The first banned keyword in ``text`` (whole word, any case), or None."""
    m = _BANNED_RE.search(text)
    return m.group(0).lower() if m else None


def bad_format(text: str) -> bool:
    """True for an empty text, or one that starts with punctuation or a non-ASCII character."""
    text = text.strip()
    if not text:
        return True
    first = text[0]
    return not first.isascii() or not first.isalnum()


def word_count(text: str) -> int:
    return len(text.split())


def normalise(text: str) -> str:
    """Case- and whitespace-insensitive key for exact-duplicate detection."""
    return " ".join(text.lower().split())


class RougePool:
    """A growing set of prompts and a fast "is this a near-duplicate of any of them?" check.

    Texts are tokenized once with ``rouge-score``'s tokenizer and compared with its LCS routine, which
    gives exactly ``RougeScorer(["rougeL"]).score(a, b)["rougeL"].fmeasure`` (tested) without
    re-tokenizing the whole pool for every candidate. A length bound skips pairs that cannot reach the
    threshold: ROUGE-L F1 <= 2*min(m, n)/(m + n) for token counts m and n.
    """

    def __init__(self, texts: Iterable[str] = (), threshold: float = 0.7):
        self.threshold = threshold
        self._tokenizer = tokenizers.DefaultTokenizer(use_stemmer=False)
        self._tokens: list[list[str]] = []
        for t in texts:
            self.add(t)

    def __len__(self) -> int:
        return len(self._tokens)

    def tokenize(self, text: str) -> list[str]:
        return self._tokenizer.tokenize(text)

    def add(self, text: str) -> None:
        self._tokens.append(self.tokenize(text))

    def max_similarity(self, text: str) -> float:
        """The highest ROUGE-L F1 between ``text`` and any pool prompt that could exceed the threshold
        (0.0 when none can)."""
        cand = self.tokenize(text)
        n = len(cand)
        best = 0.0
        for ref in self._tokens:
            m = len(ref)
            if m + n == 0 or 2 * min(m, n) / (m + n) <= self.threshold:
                continue
            f = rouge_scorer._score_lcs(ref, cand).fmeasure
            if f > best:
                best = f
                if best > self.threshold:
                    break
        return best

    def is_near_duplicate(self, text: str) -> bool:
        return self.max_similarity(text) > self.threshold


class PromptFilter:
    """Applies every rule to candidates in turn; kept candidates join the pool they are compared to."""

    def __init__(self, pool: Iterable[str], settings: FilterSettings = FilterSettings()):
        self.settings = settings
        pool = list(pool)
        self.rouge = RougePool(pool, settings.rouge_threshold)
        self.seen = {normalise(t) for t in pool}

    def reject_reason(self, text: str) -> str | None:
        """The rule ``text`` fails (see ``FILTER_NAMES``), or None if it passes every rule."""
        s = self.settings
        if bad_format(text):
            return "format"
        if not s.min_words <= word_count(text) <= s.max_words:
            return "length"
        if s.keywords and banned_keyword(text) is not None:
            return "keyword"
        if normalise(text) in self.seen:
            return "duplicate"
        if self.rouge.is_near_duplicate(text):
            return "rouge"
        return None

    def add(self, text: str) -> None:
        self.rouge.add(text)
        self.seen.add(normalise(text))

    def offer(self, text: str) -> str | None:
        """Check ``text``; add it to the pool if it passes. Returns the rejecting rule or None."""
        reason = self.reject_reason(text)
        if reason is None:
            self.add(text)
        return reason
