"""Building the prompt pool the loop draws from (docs/method.md §1.2): import the user's data, or generate prompts
with the Self-Instruct recipe from a few seed prompts, with Self-Instruct's filters.

* ``importer.import_prompts``: JSONL, CSV/TSV or a Hugging Face dataset -> pool JSONL;
* ``self_instruct.generate_pool``: 8-shot generation (6 seeds + 2 generated) through any engine, resumable;
* ``filters``: format, length, banned keywords, exact and ROUGE-L near-duplicates.

A pool file is JSONL with one ``{"id": ..., "prompt": ...}`` per line; ``metareward.pool.load_prompt_pool``
reads it.
"""

from metareward.prompt_pool.filters import BANNED_KEYWORDS, FilterSettings, PromptFilter, RougePool
from metareward.prompt_pool.importer import ImportSettings, import_prompts
from metareward.prompt_pool.self_instruct import DEFAULT_SEEDS, SelfInstructSettings, generate_pool

__all__ = [
    "BANNED_KEYWORDS",
    "DEFAULT_SEEDS",
    "FilterSettings",
    "ImportSettings",
    "PromptFilter",
    "RougePool",
    "SelfInstructSettings",
    "generate_pool",
    "import_prompts",
]
