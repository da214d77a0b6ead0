"""Parsing judge scores and meta-judge verdicts out of generated text.

Pure string functions, no model and no I/O. The grammar they implement is written out in
``docs/judging.md``; in short:

* a judgment's score is its **last** ``Score: x`` statement (``Final score``, ``Total score`` ...,
  markdown emphasis, ``x/5``, ``x out of 5``, fractions such as 4.5 and 4.75), and it must lie in
  [0, 5]; no statement, or a last statement out of range, makes the judgment invalid (None);
* a meta-judgment's verdict is its last ``Winner: Judg(e)ment A|B`` statement; a statement naming
  both judgments or a tie, or no statement at all, is None (the battle result 0);
* text the judge **quotes** does not count, wherever it sits: text inside echoed ``<response>`` tags,
  fenced code blocks, ``>`` block quotes, paragraphs introduced as a restatement ("Response:",
  "The original question:" ...), inline quotations ("...", “...”, '...') and inline code spans holding
  a whole statement (`` `Score: 6/7` `` copied from a program's output). Quoted regions are found
  by their *position in the judgment's structure*, never by comparing the judge's words with the
  response: a response therefore cannot change how the judge's own words are read, and a judge's
  own "Score: 4" is never erased because the response also contains "Score: 4".
* The constrained scoring mode cuts the generated text before the first ``Score:``/``Winner:`` label
  that is not inside a quoted region, appends its own label and reads the next-token distribution;
  ``check_probabilities`` says whether that distribution is usable, ``expected_score`` and
  ``most_likely_value`` turn it into a score (``metareward.choice_probs``, re-exported here).

Text is NFKC-normalised first, so fullwidth colons and digits ("Score：４", common in CJK output)
read as their ASCII forms.
"""

from __future__ import annotations

import bisect
import re
import unicodedata

from metareward.choice_probs import PROB_SUM_TOL, check_probabilities, expected_score, most_likely_value

__all__ = [
    "PROB_SUM_TOL",
    "SCORE_RE",
    "VERDICT_RE",
    "check_probabilities",
    "close_open_fence",
    "expected_score",
    "most_likely_value",
    "parse_score",
    "parse_response_verdict",
    "parse_verdict",
    "quoted_spans",
    "strip_markdown",
    "truncate_before_score",
    "truncate_before_verdict",
]

# A number that is not the prefix of a longer malformed number: "4.5.6" and "3,5" do not match (they
# are ambiguous -- a version string, a European decimal -- so the statement is treated as unparseable),
# while a sentence-ending period ("Score: 5.") does.
_NUMBER = r"[0-9]+(?:\.[0-9]+)?(?![.,]?[0-9])"

SCORE_RE = re.compile(rf"(?i)\bscore[ \t]*:[ \t]*({_NUMBER})(?:[ \t]*(?:/|\bout[ \t]+of\b)[ \t]*({_NUMBER}))?")
"""Score statement (the paper's ``Score: <total points>``). Group 1 is the score, group 2 an optional
denominator ("4/5", "4 out of 5") that must equal the top of the scale.

``\\b`` before "score", so "underscore: 5" is not a statement but "Final score: 4" is; a malformed
number ("4.5.6", "3,5") is not a match; negative numbers and words ("Score: -1", "Score: ten") never
match. Spaces around the colon may not cross a line break.
"""

VERDICT_RE = re.compile(r"(?i)winner[ \t]*:[ \t]*\[?[ \t]*(?:the[ \t]+)?judge?ment[ \t]*([AB])\b")
"""Meta-judge verdict. Group 1 is the winning letter; "Judgment" and "Judgement" both match."""

# "Winner:" statement that names both judgments: the template's "[Judgement A | Judgement B]" copied,
# "Judgment A or Judgment B", "Judgment A/B". The second name is either "Judg(e)ment X" after one of
# | / or and & vs, or an UPPER-CASE bare letter after | / or -- never an English word such as "a"
# ("Winner: Judgment A, a clear ..." names one judgment). Separators do not cross a line break.
_AMBIGUOUS_VERDICT_RE = re.compile(
    r"(?i)winner[ \t]*:[ \t]*\[?[ \t]*(?:the[ \t]+)?judge?ment[ \t]*[AB][ \t]*"
    r"(?:(?:\||/|\bor\b|\band\b|&|\bvs\b\.?)[ \t]*\[?[ \t]*(?:the[ \t]+)?judge?ment[ \t]*[AB]\b"
    r"|(?:\||/|\bor\b)[ \t]*(?-i:[AB])(?![\w]))"
)
_TIE_VERDICT_RE = re.compile(r"(?i)winner[ \t]*:[ \t]*\[?[ \t]*(?:tie|draw|neither|none|both|equal)\b")
_WINNER_LABEL_RE = re.compile(r"(?i)\bwinner[ \t]*:")

# Labels at which the constrained modes cut the generation: "Score:" / "Winner:" with optional markdown
# emphasis around the word ("**Score:**", "**Score**:", "`Score:`").
_SCORE_LABEL_RE = re.compile(r"(?i)(?:[*_`]+[ \t]*)?\bscore[ \t]*[*_`]*[ \t]*:")
_VERDICT_LABEL_RE = re.compile(r"(?i)(?:[*_`]+[ \t]*)?\bwinner[ \t]*[*_`]*[ \t]*:")

_MARKDOWN_RE = re.compile(r"[*_`]")

# ------------------------------------------------------------------ quoted regions

_TAG_OPEN_RE = re.compile(r"(?i)<response>")
_TAG_CLOSE_RE = re.compile(r"(?i)</response>")
_FENCE_RE = re.compile(r"^[ \t]*(`{3,}|~{3,})")
_PARAGRAPH_OR_FENCE_RE = re.compile(r"\n[ \t]*(?:\n|`{3,}|~{3,})")
_BLOCKQUOTE_RE = re.compile(r"^[ \t]*>")
# A restatement label at the start of a line: optional list/heading/emphasis marks, an optional
# lead-in ("For reference,", "Here is"), an optional qualifier ("the original", "the assistant's"),
# the restated thing, optional "was"/"reads"/"(verbatim)", then a colon. "Evaluation of the response:"
# is the judge's own heading and does not match (the label must START with the restated thing).
_LEAD_IN = r"(?:(?:for[ \t]+reference|to[ \t]+recap|recall|restating|restated|quoting|quoted)[ \t]*[,:]?[ \t]+)?"
_HERE = r"(?:(?:here[ \t]+is|here's|here’s)[ \t]+)?"
_QUALIFIER = (
    r"(?:(?:the|original|restated|quoted|full|given|candidate|user'?s|user’s|assistant'?s|assistant’s"
    r"|ai'?s|ai’s|model'?s|model’s|ai|assistant)[ \t]+)*"
)
_THING = r"(?:response|question|instruction|prompt|user)"
_TAIL = r"(?:[ \t]+(?:was|is|reads|says|states|text|\(restated\)|\(quoted\)|\(verbatim\)|verbatim|as[ \t]+follows))*"
_SECTION_RE = re.compile(
    rf"(?i)^[ \t]*(?:[-+*>#]+[ \t]*|[0-9]+[.)][ \t]*)*[*_`]*[ \t]*{_LEAD_IN}{_HERE}{_QUALIFIER}{_THING}{_TAIL}"
    r"[ \t]*[*_`]*[ \t]*:[ \t]*[*_`]*(.*)$"
)
# A line that starts a new labelled part of the judgment and so ends a restatement section: a markdown
# heading ("## Evaluation") or a bold label ("**Evaluation:**", "**Evaluation**:", "- **Score:** 4").
_NEW_PART_RE = re.compile(r"^[ \t]*(?:#{1,6}[ \t]+\S|(?:[-+][ \t]*)?(?:\*\*|__)[^*_\n]{1,40}?(?:\*\*|__)?[ \t]*:)")
_QUOTE_OPENERS = "\"“„«「『'‘<"
_DOUBLE_QUOTES_RE = re.compile(r'"[^"]*"|“[^”]*”|„[^“”]*[“”]|«[^»]*»|「[^」]*」|『[^』]*』')
_SINGLE_QUOTES_RE = re.compile(r"(?<!\w)'(?=\S)[^'\n]*?(?<=\S)'(?!\w)|(?<!\w)‘[^’\n]*?’(?!\w)")
_BARE_STATEMENT_RE = re.compile(
    r"(?i)^[\s*_`]*(?:(?:final|total|overall)[ \t]+)?(?:score|winner)[ \t]*:[^\n]*$"
)
# An inline code span (a run of n backticks to the next run of exactly n, within a line) whose content is a
# whole statement: a Score:/Winner: label with a value after it (`Score: 6/7`, not the bare label `Score:`).
_CODE_SPAN_RE = re.compile(r"(?<!`)(`+)(?!`)([^\n]*?[^`\n])\1(?!`)")
_CODE_STATEMENT_RE = re.compile(r"(?i)^[ \t*_]*(?:(?:final|total|overall)[ \t]+)?(?:score|winner)[ \t]*:[ \t*_]*[^\s*_]")


def _normalise_map(text: str) -> tuple[str, list[int]]:
    """NFKC per character (fullwidth "：４" -> ":4") with "\r\n" and "\r" unified to "\n", and for each
    original character the offset where its normalised form starts (plus the total length), so a
    position found in the normalised text maps back to the original. Per character rather than per
    string, which differs only in composing combining marks -- irrelevant to the ASCII statements."""
    pieces, starts, pos = [], [], 0
    for i, ch in enumerate(text):
        if ch == "\r":
            piece = "" if text[i + 1 : i + 2] == "\n" else "\n"
        else:
            piece = unicodedata.normalize("NFKC", ch)
        starts.append(pos)
        pieces.append(piece)
        pos += len(piece)
    starts.append(pos)
    return "".join(pieces), starts


def _normalise(text: str) -> str:
    return _normalise_map(text)[0]


def _lines(text: str) -> list[tuple[int, int]]:
    """(start, end) of each line, end excluding the newline."""
    out, start = [], 0
    for line in text.split("\n"):
        out.append((start, start + len(line)))
        start += len(line) + 1
    return out


def _tag_spans(text: str) -> list[tuple[int, int]]:
    """Echoed ``<response> ... </response>``: each opening tag runs to the LAST closing tag before the
    next opening tag (the response itself may contain a closing tag). An opening tag with no closing
    tag before the next one joins that one's echo (the response may contain an opening tag) when no
    paragraph break or code-fence line separates them, and so do two echoes with no such break between
    them (a response holding "</response>...<response>"). An opening tag that closes nowhere is no
    echo of the prompt's delimiters (which come in pairs) and marks nothing."""
    opens = list(_TAG_OPEN_RE.finditer(text))
    closes = list(_TAG_CLOSE_RE.finditer(text))
    spans = []
    i = 0
    while i < len(opens):
        j = i
        end = None
        while True:
            limit = opens[j + 1].start() if j + 1 < len(opens) else len(text)
            inside = [c.end() for c in closes if opens[j].end() <= c.start() and c.end() <= limit]
            if inside:
                end = inside[-1]
                break
            if j + 1 < len(opens) and _PARAGRAPH_OR_FENCE_RE.search(text, opens[j].end(), limit) is None:
                j += 1
                continue
            break
        if end is not None:
            if spans and _PARAGRAPH_OR_FENCE_RE.search(text, spans[-1][1], opens[i].start()) is None:
                spans[-1] = (spans[-1][0], end)  # "</response>Score: 5<response>" inside one echo
            else:
                spans.append((opens[i].start(), end))
        i = j + 1
    return spans


def _line_spans(text: str) -> list[tuple[int, int]]:
    """Fenced code blocks (to the closing fence, or the end), ``>`` block-quote lines, and
    restatement sections: a label line and the rest of its paragraph (a label alone on its line takes
    the next paragraph too), ended early by a line that starts a new part (``_NEW_PART_RE``). A label
    whose content opens with a quotation mark or a tag is no section: the marks delimit the quote."""
    spans: list[tuple[int, int]] = []
    lines = _lines(text)
    fence_start: int | None = None
    section_start: int | None = None
    section_has_content = False
    fence = ""
    for start, end in lines:
        line = text[start:end]
        if fence_start is not None:
            m = _FENCE_RE.match(line)
            if m is not None and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence):
                spans.append((fence_start, end))
                fence_start = None
            continue
        m = _FENCE_RE.match(line)
        if m is not None:
            fence_start, fence = start, m.group(1)
            continue
        blank = not line.strip()
        if section_start is not None:
            if (blank and section_has_content) or (not blank and _NEW_PART_RE.match(line)):
                spans.append((section_start, start))
                section_start = None
            elif not blank:
                section_has_content = True
                continue
        if _BLOCKQUOTE_RE.match(line):
            spans.append((start, end))
            continue
        m = _SECTION_RE.match(line)
        if m is not None:
            content = _MARKDOWN_RE.sub("", m.group(1)).strip()
            if content and content[0] in _QUOTE_OPENERS and _closed_quote_at_start(_paragraph_from(text, start + m.start(1))):
                continue  # the quotation marks delimit the restatement (``_inline_quote_spans``)
            section_start = start
            section_has_content = bool(content)
    if fence_start is not None:
        spans.append((fence_start, len(text)))
    if section_start is not None:
        spans.append((section_start, len(text)))
    return spans


def _paragraph_from(text: str, pos: int) -> str:
    """``text`` from ``pos`` to the end of that paragraph, leading markdown and spaces removed."""
    blank = re.search(r"\n[ \t]*\n", text[pos:])
    return text[pos : pos + blank.start() if blank else len(text)].lstrip(" \t*_`")


def _closed_quote_at_start(content: str) -> bool:
    """Whether ``content`` opens with a quotation (or tag) that is closed within it."""
    if content.lower().startswith("<response>"):
        return "</response>" in content.lower()
    return bool(_DOUBLE_QUOTES_RE.match(content) or _SINGLE_QUOTES_RE.match(content))


def _inline_quote_spans(text: str) -> list[tuple[int, int]]:
    """Inline quotations: double quotes paired within a paragraph, single quotes within a line.

    Not a quotation: a quote holding nothing but one score/verdict statement that fills its whole
    line (``“Score: 4”`` alone on a line) -- that is the judge writing the template's format, which
    shows the statement in quotation marks.
    """
    spans = []
    pos = 0
    for paragraph in re.split(r"(\n[ \t]*\n)", text):
        if paragraph and not paragraph.strip(" \t\n"):
            pos += len(paragraph)
            continue
        for pattern in (_DOUBLE_QUOTES_RE, _SINGLE_QUOTES_RE):
            for m in pattern.finditer(paragraph):
                a, b = pos + m.start(), pos + m.end()
                if _BARE_STATEMENT_RE.match(text[a + 1 : b - 1]) and _fills_its_line(text, a, b):
                    continue
                spans.append((a, b))
        pos += len(paragraph)
    return spans


def _fills_its_line(text: str, a: int, b: int) -> bool:
    """Whether ``text[a:b]`` is alone on its line, but for markdown emphasis and a closing ``.`` or ``!``."""
    line_start = text.rfind("\n", 0, a) + 1
    line_end = text.find("\n", b)
    outside = text[line_start:a] + text[b : len(text) if line_end == -1 else line_end]
    return not _MARKDOWN_RE.sub("", outside).strip(" \t.!")


def _code_spans(text: str) -> list[tuple[int, int]]:
    """Inline code spans holding a whole ``Score:``/``Winner:`` statement: copied material (a program's
    output, the response's line), like a quotation -- except a span that fills its line, the judge
    writing its own statement in code format (``docs/judging.md``, "Quoted text")."""
    return [(m.start(), m.end()) for m in _CODE_SPAN_RE.finditer(text)
            if _CODE_STATEMENT_RE.match(m.group(2)) and not _fills_its_line(text, m.start(), m.end())]


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for a, b in sorted(spans):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def _mask(text: str, spans: list[tuple[int, int]]) -> str:
    """``text`` with every character of ``spans`` except line breaks replaced by NUL: offsets and line
    structure stay, while the masked text can no longer open a quote, a fence or a section."""
    chars = list(text)
    for a, b in spans:
        for i in range(a, b):
            if chars[i] != "\n":
                chars[i] = "\0"
    return "".join(chars)


def quoted_spans(text: str) -> list[tuple[int, int]]:
    """Sorted, disjoint (start, end) spans of ``text`` that are quotations, not the writer's own
    statements (``docs/judging.md``, "Quoted text"). ``text`` must already be normalised (NFKC)
    for the offsets to mean what the parsers use them for.

    Found in four passes, each on the text with the previous passes' spans masked, so that quoted
    material (a response with a stray ``"``, a fence or a tag) cannot open a quote that runs into the
    judge's own text: echoed ``<response>`` tags, then line structures (fences, block quotes,
    restatement sections), then inline code spans holding a statement, then inline quotations.
    """
    spans = _merge(_tag_spans(text))
    spans = _merge(spans + _line_spans(_mask(text, spans)))
    spans = _merge(spans + _code_spans(_mask(text, spans)))
    return _merge(spans + _inline_quote_spans(_mask(text, spans)))


def _own_text(text: str) -> str:
    """The normalised, markdown-stripped text with every quoted span replaced by a line break (so the
    text on both sides can never join into a new statement)."""
    text = _normalise(text)
    pieces, last = [], 0
    for a, b in quoted_spans(text):
        pieces.append(text[last:a])
        pieces.append("\n")
        last = b
    pieces.append(text[last:])
    return strip_markdown("".join(pieces))


def strip_markdown(text: str) -> str:
    """Remove markdown emphasis/code characters (``*``, ``_`` and backtick) so "**Score:** 3" and
    "__Score: 3__" read "Score: 3". None of the statement patterns needs these characters."""
    return _MARKDOWN_RE.sub("", text)


# ------------------------------------------------------------------ scores and verdicts


def parse_score(
    judgment: str, response: str | None = None, low: float = 0.0, high: float = 5.0
) -> float | None:
    """The score a judgment concludes with, or None when the judgment is invalid.

    1. the text is NFKC-normalised, quoted regions are set aside (``quoted_spans``) and markdown
       emphasis is stripped;
    2. the **last** ``SCORE_RE`` match is the score; None if there is none;
    3. None if that score is outside ``[low, high]`` or has a denominator other than ``high``
       ("Score: 4/5" -> 4.0, "Score: 4/10" -> None).

    The last match decides even when it is invalid: "Score: 3 ... Score: 6" is None, not 3. A final
    "Score: ten" or "Score: 4.5.6" is not a match at all, so an earlier valid statement then decides.

    ``response`` (the judged response) is accepted so callers can pass what they have, and is
    deliberately not read: what counts is decided by position in the judgment alone, so no response
    text can change the score the judge's own words state (``docs/judging.md``).
    """
    del response  # position-based: the response's text never takes part (see the docstring)
    if low > high:
        raise ValueError(f"low ({low}) > high ({high})")
    matches = list(SCORE_RE.finditer(_own_text(judgment)))
    if not matches:
        return None
    last = matches[-1]
    value = float(last.group(1))
    if last.group(2) is not None and float(last.group(2)) != high:
        return None
    if not (low <= value <= high):
        return None
    return value


def parse_verdict(text: str) -> str | None:
    """The meta-judge's verdict: "A", "B", or None for a parse error or tie.

    Quoted regions are set aside as for scores. Every remaining "Winner:" statement is classified as
    naming one judgment (``VERDICT_RE``), naming both ("Winner: [Judgement A | Judgement B]",
    "Judgment A or Judgment B", "Judgment A/B") or a tie ("Winner: Tie", "Neither", ...), or
    unrecognised ("Winner: it depends"). The last recognised statement decides: one letter -> that
    letter; both or a tie -> None; no recognised statement -> None. A bare letter ("Winner: B") is not
    a verdict, since the template always names the judgment.
    """
    text = _own_text(text)
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


# The pairwise judge's verdicts ("Winner: Response A"): the meta-judge's grammar with "Response" for
# "Judg(e)ment" (templates/pairwise_judge.txt).
RESPONSE_VERDICT_RE = re.compile(VERDICT_RE.pattern.replace("judge?ment", "response"))
_AMBIGUOUS_RESPONSE_VERDICT_RE = re.compile(_AMBIGUOUS_VERDICT_RE.pattern.replace("judge?ment", "response"))


def parse_response_verdict(text: str) -> str | None:
    """The pairwise judge's verdict: "A", "B", or None (parse error or tie), read exactly as
    ``parse_verdict`` reads the meta-judge's, with "Response A|B" in place of "Judgment A|B"."""
    text = _own_text(text)
    decision: str | None = None
    for label in _WINNER_LABEL_RE.finditer(text):
        pos = label.start()
        if _AMBIGUOUS_RESPONSE_VERDICT_RE.match(text, pos) or _TIE_VERDICT_RE.match(text, pos):
            decision = None
            continue
        m = RESPONSE_VERDICT_RE.match(text, pos)
        if m is not None:
            decision = m.group(1).upper()
    return decision


def _truncate_before(text: str, label: re.Pattern[str]) -> str:
    """``text`` up to its first ``label`` outside a quoted region, right-stripped. Labels and quotes
    are found on the normalised text; the cut is made in the original, which is returned unchanged."""
    norm, starts = _normalise_map(text)
    spans = quoted_spans(norm)
    for m in label.finditer(norm):
        if not any(a <= m.start() < b for a, b in spans):
            cut = bisect.bisect_right(starts, m.start()) - 1  # the original character the label starts in
            return text[:cut].rstrip()
    return text.rstrip()


def truncate_before_score(judgment: str, response: str | None = None) -> str:
    """The judgment up to (not including) its first own "Score:" label, right-stripped.

    The label is matched case-insensitively with optional markdown emphasis ("**Score:**",
    "**Score**:"), whether or not a number follows; a label inside a quoted region (e.g. the judge
    quoting the response's "Score: 5") does not cut. With no label the whole judgment is returned.
    Used by the constrained scoring mode, which appends "\\nScore: " and reads the digit probabilities.
    The kept text is the judge's own, unnormalised. ``response`` is not read, as in ``parse_score``.
    """
    del response
    return _truncate_before(judgment, _SCORE_LABEL_RE)


def truncate_before_verdict(text: str) -> str:
    """The meta-judgment up to (not including) its first own "Winner:" label, right-stripped.

    Analogous to ``truncate_before_score``; used by the constrained verdict mode, which appends its
    own "Winner: Judgement " and reads the probabilities of "A" and "B". The cut is at the FIRST
    label outside a quoted region, so a meta-judgment that writes the format line early is cut there.
    """
    return _truncate_before(text, _VERDICT_LABEL_RE)


# ------------------------------------------------------------------ constrained prefixes

def close_open_fence(text: str) -> str:
    """``text`` with its last code fence closed when the text ends inside one, else unchanged.

    The constrained modes cut a judgment before its own score label and append ``Score: `` (or
    ``Winner: Judgment ``). A judgment cut at ``max_tokens`` can end inside an open fence; appending the
    label there would ask the model for its score in code context, and the stored text would then hold
    its score inside a quoted region (which never counts, see ``quoted_spans``). Fences follow the same
    rule as ``quoted_spans``: closed by a line of the same character at least as long.
    """
    fence = ""
    for start, end in _lines(text):
        m = _FENCE_RE.match(text[start:end])
        if m is None:
            continue
        if not fence:
            fence = m.group(1)
        elif m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence):
            fence = ""
    return f"{text}\n{fence}" if fence else text
