"""Parsing judge scores and meta-judge verdicts out of generated text.

Pure string functions, no model and no I/O. They implement the parsing rules of the spec
(/work/shared/paper_spec.md):

* §2.2 -- a judgment ends in ``Score: <total points>``; the score is read with a regular expression,
  the **last** match is taken, it must lie in [0, 5], fractional values (4.5, 4.75, ...) are accepted,
  and a judgment with no valid score is discarded (``parse_score`` returns None).
* §3.4 -- a meta-judgment ends in ``Winner: [Judgement A | Judgement B]``; the last verdict counts,
  both spellings "Judgment"/"Judgement" are accepted, ``**`` markdown is stripped, and no match or a
  statement naming both letters is a parse error (None, which the battle result maps to 0).
* The constrained scoring mode (§9, "expected score read from the score-token probabilities") cuts
  the generated text before the first ``Score:``/``Winner:`` label, appends its own label and reads
  the next-token distribution; ``truncate_before_score``/``truncate_before_verdict`` do the cut and
  ``expected_score``/``most_likely_value`` turn the distribution into a score.

Adversarial rule (an engineering choice, not in the paper): the response being judged is untrusted
text produced by the actor. A response that itself says "Score: 5" must not decide its own score when
the judge quotes or echoes it, so ``parse_score(judgment, response)`` removes the quoted response (and
each of its score-bearing lines) from the judgment before parsing. The cost: when the judge's own
conclusion is textually identical to a score line of the response (e.g. both are "Score: 4"), that
conclusion is removed too and the judgment becomes invalid -- the parser errs toward discarding a
judgment rather than letting the response grade itself.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

__all__ = [
    "SCORE_RE",
    "VERDICT_RE",
    "expected_score",
    "most_likely_value",
    "parse_score",
    "parse_verdict",
    "strip_markdown",
    "truncate_before_score",
    "truncate_before_verdict",
]

# A number that is not the prefix of a longer malformed number: "4.5.6" and "3,5" do not match (they
# are ambiguous -- a version string, a European decimal -- so the statement is treated as unparseable),
# while a sentence-ending period ("Score: 5.") does.
_NUMBER = r"[0-9]+(?:\.[0-9]+)?(?![.,]?[0-9])"

SCORE_RE = re.compile(rf"(?i)\bscore\s*:\s*({_NUMBER})(?:\s*/\s*({_NUMBER}))?")
"""Score statement (spec §2.2's recommended ``(?i)score\\s*:\\s*([0-9]+(?:\\.[0-9]+)?)``, tightened).

Group 1 is the score. Differences from the spec's pattern, each deliberate:

* ``\\b`` before "score", so "underscore: 5" is not a score statement;
* a malformed number ("4.5.6", "3,5") is not a match, instead of matching its prefix "4.5" / "3";
* an optional denominator (group 2): "Score: 4/5" is accepted because on the 5-point rubric it states
  the same 4 points unambiguously; ``parse_score`` rejects the statement when the denominator is not the
  top of the scale ("Score: 7/10" is another scale, so it is invalid rather than read as 7).

Negative numbers never match ("Score: -1" has no digit after the colon), nor do words ("Score: ten").
"""

VERDICT_RE = re.compile(r"(?i)winner\s*:\s*\[?\s*judge?ment\s*([AB])\b")
"""Meta-judge verdict (spec §3.4). Group 1 is the winning letter; "Judgment" and "Judgement" both match."""

# "Winner:" statement that names both letters (the template's "[Judgement A | Judgement B]" copied
# verbatim) or declares a tie; it matches at the same position as VERDICT_RE would, so it is checked
# first.
_AMBIGUOUS_VERDICT_RE = re.compile(
    r"(?i)winner\s*:\s*\[?\s*judge?ment\s*[AB]\s*(?:\||/|,|&|\bor\b|\band\b)\s*\[?\s*(?:judge?ment\s*)?[AB]\b"
)
_TIE_VERDICT_RE = re.compile(r"(?i)winner\s*:\s*\[?\s*(?:tie|draw|neither|none|both|equal)\b")
_WINNER_LABEL_RE = re.compile(r"(?i)winner\s*:")

# Label at which the constrained modes cut the generation: "Score:" / "Winner:" with optional markdown
# emphasis around the word ("**Score:**", "**Score**:", "`Score:`").
_SCORE_LABEL_RE = re.compile(r"(?i)(?:[*`]+\s*)?\bscore\s*[*`]*\s*:")
_VERDICT_LABEL_RE = re.compile(r"(?i)(?:[*`]+\s*)?\bwinner\s*[*`]*\s*:")

_MARKDOWN_RE = re.compile(r"[*`]")
_REMOVED = "\n[quoted response removed]\n"


def strip_markdown(text: str) -> str:
    """Remove markdown emphasis/code characters (``*`` and backtick) so "**Score:** 3" reads "Score: 3".

    Removing every ``*`` (not only ``**`` pairs) also handles "*Score:* 3"; none of the patterns
    above needs a literal ``*`` or backtick.
    """
    return _MARKDOWN_RE.sub("", text)


def _response_score_fragments(response: str) -> list[str]:
    """The pieces of ``response`` that must not count as the judge's score, longest first.

    Empty when the response contains no score statement: removing an innocent response from the
    judgment is pointless and harmful (a response "4" would erase the judge's "Score: 4"). Otherwise:
    the whole response, then each of its lines that contains a score statement (stripped of
    surrounding whitespace). Score statements are detected on markdown-stripped text, but the
    fragments are pieces of ``response`` as given. Longest first, so a longer fragment is removed
    before any shorter one inside it.
    """
    if not SCORE_RE.search(strip_markdown(response)):
        return []
    fragments = {response.strip()}
    fragments.update(line.strip() for line in response.splitlines() if SCORE_RE.search(strip_markdown(line)))
    fragments.discard("")
    return sorted(fragments, key=len, reverse=True)


def _remove_response(judgment: str, response: str | None) -> str:
    """``judgment`` with every verbatim occurrence of the response's score fragments removed.

    Both texts are markdown-stripped first so a quote with different emphasis still matches. Each
    occurrence is replaced by a separator line (not by nothing) so the text on both sides cannot join
    into a new score statement ("Score:" + removed + "4").
    """
    judgment = strip_markdown(judgment)
    if response is None:
        return judgment
    for fragment in _response_score_fragments(strip_markdown(response)):
        judgment = judgment.replace(fragment, _REMOVED)
    return judgment


def parse_score(
    judgment: str, response: str | None = None, low: float = 0.0, high: float = 5.0
) -> float | None:
    """The score a judgment concludes with, or None when the judgment is invalid (spec §2.2).

    Rules, in order:

    1. markdown emphasis is stripped (``strip_markdown``);
    2. if ``response`` (the judged response) is given and contains a score statement, every verbatim
       occurrence of it in the judgment, and of each of its score-bearing lines, is removed, so a
       response cannot grade itself by being quoted (see the module docstring);
    3. the **last** ``SCORE_RE`` match is the score; None if there is none;
    4. None if the score is outside ``[low, high]`` or the statement has a denominator other than
       ``high`` ("Score: 4/5" -> 4.0, "Score: 4/10" -> None).

    The last match decides even when it is invalid: "Score: 3 ... Score: 6" is None, not 3, because
    the judge's final statement is out of range. A final "Score: ten" or "Score: 4.5.6" is not a match
    at all, so an earlier valid statement would then decide.

    Examples: "Score: 5." -> 5.0; "score:4.75" -> 4.75; "**Score:** 3" -> 3.0;
    "Score: 3\\n\\nScore: 4" -> 4.0; "Score: 6" / "Score: -1" / "Score: ten" / "Score: 4.5.6" -> None.
    """
    if low > high:
        raise ValueError(f"low ({low}) > high ({high})")
    text = _remove_response(judgment, response)
    matches = list(SCORE_RE.finditer(text))
    if not matches:
        return None
    last = matches[-1]
    value = float(last.group(1))
    if last.group(2) is not None and float(last.group(2)) != high:
        return None
    if not (low <= value <= high):
        return None
    return value


def _excluded_spans(text: str, response: str | None) -> list[tuple[int, int]]:
    """Spans of ``text`` that are verbatim copies of the response's score fragments (raw text)."""
    if response is None:
        return []
    spans = []
    for fragment in _response_score_fragments(response):
        start = text.find(fragment)
        while start != -1:
            spans.append((start, start + len(fragment)))
            start = text.find(fragment, start + len(fragment))
    return spans


def truncate_before_score(judgment: str, response: str | None = None) -> str:
    """The judgment up to (not including) its first "Score:" label, right-stripped.

    The label is matched case-insensitively with optional markdown emphasis ("**Score:**",
    "**Score**:"), whether or not a number follows. With no label the whole judgment is returned
    (right-stripped). Used by the constrained scoring mode, which appends "\\nScore: " and reads the
    digit probabilities.

    With ``response`` given, a label inside a verbatim quote of the response (or of one of its
    score-bearing lines) is skipped, so a quoted "Score: 5" does not cut the judge's reasoning short.
    """
    spans = _excluded_spans(judgment, response)
    for m in _SCORE_LABEL_RE.finditer(judgment):
        if not any(a <= m.start() < b for a, b in spans):
            return judgment[: m.start()].rstrip()
    return judgment.rstrip()


def parse_verdict(text: str) -> str | None:
    """The meta-judge's verdict: "A", "B", or None for a parse error or tie (spec §3.4).

    After stripping markdown, every "Winner:" statement is classified as naming one letter
    (``VERDICT_RE``), naming both ("Winner: [Judgement A | Judgement B]", "Judgment A or Judgment B")
    or a tie ("Winner: Tie", "Neither", ...), or unrecognised ("Winner: it depends"). The last
    recognised statement decides: one letter -> that letter; both letters or a tie -> None. With no
    recognised statement -> None. Both spellings "Judgment"/"Judgement" and any case are accepted;
    a bare letter ("Winner: B") is not, since the template always names the judgment.
    """
    text = strip_markdown(text)
    decision: str | None = None
    for label in _WINNER_LABEL_RE.finditer(text):
        pos = label.start()
        if _AMBIGUOUS_VERDICT_RE.match(text, pos) or _TIE_VERDICT_RE.match(text, pos):
            decision = None
            continue
        m = VERDICT_RE.match(text, pos)
        if m is not None:
            decision = m.group(1).upper()
        # an unrecognised statement leaves the previous decision in place
    return decision


def truncate_before_verdict(text: str) -> str:
    """The meta-judgment up to (not including) its first "Winner:" label, right-stripped.

    Analogous to ``truncate_before_score``; used by the constrained verdict mode, which appends its
    own "Winner: Judgement " and reads the probabilities of "A" and "B". Note the cut is at the FIRST
    label, so a meta-judgment that echoes the format line early is cut there.
    """
    m = _VERDICT_LABEL_RE.search(text)
    return (text[: m.start()] if m else text).rstrip()


def _check_distribution(probs: Sequence[float], values: Sequence[float]) -> float:
    if len(probs) != len(values):
        raise ValueError(f"{len(probs)} probabilities for {len(values)} values")
    if not probs:
        raise ValueError("empty distribution")
    if any(not math.isfinite(p) or p < 0 for p in probs):
        raise ValueError(f"probabilities must be finite and non-negative: {list(probs)}")
    total = math.fsum(probs)
    if total <= 0:
        raise ValueError("probabilities sum to 0")
    return total


def expected_score(probs: Sequence[float], values: Sequence[float]) -> float:
    """Σ p_k·v_k / Σ p_k: the expected score under the (renormalised) distribution.

    ``probs[k]`` is the probability of the token for ``values[k]`` (e.g. the digits "0".."5" after
    "Score: "). The probabilities are renormalised over the given values because the model also puts
    some mass on other tokens; the result is the score conditional on the judge emitting a valid one.
    """
    total = _check_distribution(probs, values)
    return math.fsum(p * v for p, v in zip(probs, values)) / total


def most_likely_value(probs: Sequence[float], values: Sequence[float]) -> float:
    """The value with the highest probability (the first one on exact ties)."""
    _check_distribution(probs, values)
    best = max(range(len(probs)), key=lambda k: (probs[k], -k))
    return values[best]
