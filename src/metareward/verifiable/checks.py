"""Verifiable instruction following (IFEval / IFBench style): constraints checked by code, no judge.

Used by the evaluation suites (IFEval, IFBench) and by the ``verifier`` judge (``metareward.verifiable``).

Checks come from ``if-verifiable`` (``pip install --no-deps if-verifiable`` plus ``emoji immutabledict
langdetect nltk syllapy``; Apache-2.0; the IFEval checks of Zhou et al. 2023 and the IFBench checks of
Pyatkin et al. 2025); prompts and constraint arguments from IFBench's test set (``prompt_sets.ifbench_rows``).
For each response we report, like both benchmarks, prompt-level accuracy (all constraints of a prompt
pass) and instruction-level accuracy (share of constraints that pass), each *strict* (the response as
is) and *loose* (also trying the response without its first/last line or ``*`` markup).

Offline: ``if_verifiable``'s checker module calls ``nltk.download`` for four data packages when it is
imported, and some checks need them at run time. Here the network is never touched:

* while the checkers are imported, ``nltk.download`` is replaced (at our call site, ``unittest.mock``;
  nothing in site-packages is edited) by a function that downloads nothing;
* ``nltk.word_tokenize`` does what NLTK's does -- split sentences with Punkt, then Treebank-tokenize
  each -- but with an *untrained* ``PunktSentenceTokenizer`` (built into NLTK, no ``punkt_tab`` data
  file). It differs from the trained English model only on abbreviations ("Dr." ends a sentence);
  IFEval's sentence counter (``nltk.data.load`` of the Punkt English model) gets the same splitter
  when the model is not installed;
* an empty response fails every checkable constraint of its prompt (``if_verifiable`` returns no
  results for it, which would otherwise drop the prompt from the accuracies and inflate them);
* constraints that cannot be checked without NLTK data that is not installed (``ratio:stop_words``
  needs ``corpora/stopwords``, ``words:start_verb`` needs the POS tagger) are reported as *skipped*
  and left out of both accuracies; with the data installed (``python -m nltk.downloader stopwords
  averaged_perceptron_tagger_eng``) they are checked like the others.
"""

from __future__ import annotations

import contextlib
import functools
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any
from unittest import mock

from metareward.errors import InputError

NLTK_DATA_NEEDED = {
    "ratio:stop_words": "corpora/stopwords",
    "words:start_verb": "taggers/averaged_perceptron_tagger_eng",
}


def _nltk_has(resource: str) -> bool:
    import nltk

    try:
        nltk.data.find(resource)
    except LookupError:
        return False
    return True


@contextlib.contextmanager
def offline_nltk() -> Iterator[None]:
    """NLTK without network: no downloads, and word tokenizing without the Punkt data (see docstring)."""
    try:
        import nltk
    except ImportError:
        raise InputError("instruction following needs nltk: pip install nltk") from None
    word_tokenize = nltk.word_tokenize
    splitter = nltk.tokenize.PunktSentenceTokenizer()  # untrained: needs no data files

    def offline_word_tokenize(text: str, language: str = "english", preserve_line: bool = False) -> list[str]:
        sentences = [text] if preserve_line else splitter.tokenize(text)
        return [tok for sent in sentences for tok in word_tokenize(sent, language, preserve_line=True)]

    data_load = nltk.data.load

    def offline_load(resource_url: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return data_load(resource_url, *args, **kwargs)
        except LookupError:
            if "tokenizers/punkt" in resource_url:
                return splitter  # IFEval's count_sentences: the untrained Punkt splitter
            raise

    with (
        mock.patch.object(nltk, "download", lambda *a, **k: False),
        mock.patch.object(nltk, "word_tokenize", offline_word_tokenize),
        mock.patch.object(nltk.data, "load", offline_load),
    ):
        yield


@functools.lru_cache(maxsize=2)
def registry(benchmark: str) -> dict[str, Any]:
    """The instruction checkers of ``benchmark`` ("ifbench" or "ifeval"), imported offline."""
    try:
        with offline_nltk():
            if benchmark == "ifbench":
                from if_verifiable.ifbench.instructions_registry import INSTRUCTION_DICT
            elif benchmark == "ifeval":
                from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT
            else:
                raise InputError(f"unknown benchmark {benchmark!r}; expected ifbench or ifeval")
    except ImportError as e:
        raise InputError(
            f"instruction following needs if-verifiable ({e}): pip install --no-deps if-verifiable && "
            "pip install emoji immutabledict langdetect nltk syllapy"
        ) from None
    return dict(INSTRUCTION_DICT)


def check_response(row: dict[str, Any], response: str, benchmark: str = "ifbench") -> dict[str, Any]:
    """Strict/loose pass of each constraint of one prompt ``row`` (IFBench format) for ``response``."""
    from if_verifiable.common import evaluate_instructions

    checkable = [
        (i, kw)
        for i, kw in zip(row["instruction_id_list"], row["kwargs"])
        if i not in NLTK_DATA_NEEDED or _nltk_has(NLTK_DATA_NEEDED[i])
    ]
    skipped = [i for i in row["instruction_id_list"] if i not in {c[0] for c in checkable}]
    if not checkable:
        return {"key": row["key"], "results": [], "skipped": skipped}
    with offline_nltk():
        results, _scores = evaluate_instructions(
            response=response,
            instruction_id_list=[c[0] for c in checkable],
            kwargs_list=[c[1] for c in checkable],
            prompt=row["prompt"],
            instruction_registry=registry(benchmark),
        )
    if not results and not response.strip():
        return {"key": row["key"], "results": [{"id": i, "strict": False, "loose": False} for i, _ in checkable],
                "skipped": skipped}
    return {
        "key": row["key"],
        "results": [{"id": r.instruction_id, "strict": r.strict_pass, "loose": r.loose_pass} for r in results],
        "skipped": skipped,
    }


def summarize(checked: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Prompt- and instruction-level accuracy (strict and loose) over checked prompts."""
    prompts = [c for c in checked if c["results"]]
    instr = [r for c in prompts for r in c["results"]]

    def rate(xs: list[bool]) -> float:
        return sum(xs) / len(xs) if xs else float("nan")

    return {
        "prompts": len(checked),
        "prompts_checked": len(prompts),
        "instructions_checked": len(instr),
        "prompt_strict": rate([all(r["strict"] for r in c["results"]) for c in prompts]),
        "prompt_loose": rate([all(r["loose"] for r in c["results"]) for c in prompts]),
        "instruction_strict": rate([r["strict"] for r in instr]),
        "instruction_loose": rate([r["loose"] for r in instr]),
        "skipped_instructions": dict(Counter(i for c in checked for i in c["skipped"])),
    }
