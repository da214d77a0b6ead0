"""How the hf engine schedules a stage's requests: batch order, prefix sharing, feed grouping, costs.

Pure functions of token sequences and counts (no model, no tensors), so each is tested exactly
(``tests/test_engine_prefix_tree.py``, ``tests/test_engine_follow_up.py``) and the decoding code in
``engine.py`` only carries out what they decide:

* ``sharing_order`` and ``cut_batches``: the order in which requests are cut into batches of about
  ``batch_size`` sequences, families of prompts sharing a long prefix kept together;
* ``shared_roots``: within a batch, which prompts are prefilled once at a common root, and how deep;
* ``feed_groups``: how rows that need different numbers of known tokens fed (follow-up contexts) are
  split into feeds, by the cost models ``FEED_FORWARD_COST`` (transformers' forward) and
  ``KERNEL_FEED_COST`` / ``KERNEL_COLUMN_COST`` (the C++ kernels).

The costs are rough estimates in units of one fed position, not measurements; what they are fitted
to is in ``docs/DESIGN.md`` (the hf engine).
"""

from __future__ import annotations

from collections.abc import Sequence

from metareward.engines.tokens import common_prefix

FEED_CHUNK = 64  # positions per forward when rows are fed several known tokens (choice contexts, follow-ups)
FEED_FORWARD_COST = 32  # a forward's fixed cost (weights read, per-layer dispatch) in fed positions
KERNEL_FEED_COST = 20  # a kernel feed's fixed cost in fed positions (rough)
KERNEL_COLUMN_COST = 1 / 64  # one more continuation position in a row's buffers (memory, zeroing), in fed positions


def sharing_order(prompts: Sequence[list[int]], min_shared: int) -> list[int]:
    """The order in which ``generate`` cuts requests into batches: prompts sharing at least
    ``min_shared`` leading tokens with another (e.g. the meta-judge's battles of one response, the judge
    prompts of one question) stay together, so their batch prefills the shared part once
    (``shared_roots``); each such family shortest first, families and lone prompts by their shortest
    prompt (little padding, as plain length order gives). Deterministic: a function of the prompts."""
    lexical = sorted(range(len(prompts)), key=lambda i: prompts[i])
    units: list[list[int]] = []
    for prev, i in zip([None, *lexical], lexical):
        if prev is not None and common_prefix(prompts[prev], prompts[i]) >= min_shared:
            units[-1].append(i)
        else:
            units.append([i])
    units = [sorted(u, key=lambda i: (len(prompts[i]), i)) for u in units]
    units.sort(key=lambda u: (len(prompts[u[0]]), u[0]))
    return [i for u in units for i in u]


def cut_batches(sizes: Sequence[int], costs: Sequence[int], batch_size: int,
                order: Sequence[int] | None = None) -> list[list[int]]:
    """Indices grouped into batches of about ``batch_size`` sequences (``sizes[i]``: request i's samples;
    a request larger than ``batch_size`` is a batch of its own), in ``order`` (default: by ``costs``,
    shortest prompts first)."""
    order = sorted(range(len(sizes)), key=lambda i: costs[i]) if order is None else order
    batches: list[list[int]] = []
    cur: list[int] = []
    seqs = 0
    for i in order:
        if cur and seqs + sizes[i] > batch_size:
            batches.append(cur)
            cur, seqs = [], 0
        cur.append(i)
        seqs += sizes[i]
    if cur:
        batches.append(cur)
    return batches


def feed_groups(need: Sequence[int], forward_cost: int = FEED_FORWARD_COST, kernel: bool = False) -> list[list[int]]:
    """Split rows to be fed ``need[i]`` tokens each into feeds, at the least cost in computed positions.

    A feed pads its rows to its widest need, w. Through transformers' forward (``HFEngine._feed``) the
    padding is computed: a feed costs ``rows * w`` positions plus ``forward_cost`` per forward
    (``FEED_CHUNK`` positions each), so where most rows need the few tokens of ``"\\nScore: "`` and a few
    need their whole text, those few go to a feed of their own. Through the C++ kernels (``kernel``:
    ``HFEngine._feed_kernel``) only the rows' own tokens are computed: a feed costs ``sum(need)`` plus
    ``KERNEL_FEED_COST``, and its padding only buffer space: w more positions for every row still waiting
    (this feed's and the wider ones'), ``KERNEL_COLUMN_COST`` each; so one feed, or a few where a few rows
    need many more tokens. Exact minimum over contiguous runs of the rows sorted by need (dynamic
    programming, O(rows^2)); a feed always beats leaving a row to a re-prefill, which computes its prompt
    too. Returns the feeds, each a list of row indices in ascending need, the narrowest feed first (fed
    first, so that the wider feeds' buffer positions are added to the fewest rows)."""
    order = sorted(range(len(need)), key=lambda i: need[i])
    total = [0]  # total[i]: the needs of the i narrowest rows
    for i in order:
        total.append(total[-1] + need[i])
    best = [0.0] * (len(order) + 1)  # best[i]: least cost of the i narrowest rows
    start = [0] * (len(order) + 1)  # where the last feed of that least cost starts
    for i in range(1, len(order) + 1):
        width = need[order[i - 1]]
        if kernel:
            best[i], start[i] = min((best[j] + total[i] - total[j] + KERNEL_FEED_COST
                                     + KERNEL_COLUMN_COST * (len(order) - j) * width, j) for j in range(i))
        else:
            fixed = forward_cost * -(-width // FEED_CHUNK)
            best[i], start[i] = min((best[j] + (i - j) * width + fixed, j) for j in range(i))
    feeds, i = [], len(order)
    while i:
        feeds.append(order[start[i] : i])
        i = start[i]
    return feeds[::-1]


def shared_roots(prompts: Sequence[list[int]], min_shared: int) -> tuple[list[int], list[int]]:
    """Prefix sharing across the requests of one batch: (root group of each prompt, its root length).

    Prompts sharing a long common prefix form a group whose common prefix (the root; capped so that
    every member keeps at least one token of its own, and at least ``min_shared`` tokens) is prefilled
    once; each member's remainder then runs against it. A prompt in no group is its own root, whole
    (remainder empty). How deep the roots reach is chosen: the meta-judge's battles all share the
    rubric, and those of one response also its question and response; cutting at the rubric prefills
    it once but feeds every battle its question and response, cutting deeper prefills the rubric once
    per response but each response once. Every depth at which the lexically sorted prompts' runs
    change is tried (runs of adjacent common prefixes at least that long), and the one that computes
    the smallest padded token rectangle (roots x widest root + requests with a remainder x widest
    remainder) is kept, or no sharing where that computes less (prompts x widest prompt). This is the
    two-level case of the prefix tree vLLM's automatic prefix caching and SGLang's radix attention
    share on GPUs."""
    count = len(prompts)
    whole = [len(p) for p in prompts]
    lexical = sorted(range(count), key=lambda i: prompts[i])
    # in lexical order the common prefix of a run is the least common prefix of its neighbours
    adjacent = [common_prefix(prompts[a], prompts[b]) for a, b in zip(lexical, lexical[1:], strict=False)]
    best = (count * max(whole), list(range(count)), whole)
    for depth in sorted({d for d in adjacent if d >= min_shared}):
        root_of, cut = list(range(count)), list(whole)
        run = [lexical[0]]
        shared = None
        for k, i in enumerate(lexical[1:]):
            if adjacent[k] >= depth:
                run.append(i)
                shared = adjacent[k] if shared is None else min(shared, adjacent[k])
                continue
            _root_run(run, shared, prompts, min_shared, root_of, cut)
            run, shared = [i], None
        _root_run(run, shared, prompts, min_shared, root_of, cut)
        remainders = [w - c for w, c in zip(whole, cut, strict=True)]
        cost = len(set(root_of)) * max(cut) + sum(r > 0 for r in remainders) * max(remainders)
        if cost < best[0]:
            best = (cost, root_of, cut)
    return best[1], best[2]


def _root_run(run: list[int], shared: int | None, prompts: Sequence[list[int]], min_shared: int,
              root_of: list[int], cut: list[int]) -> None:
    """Make the prompts of ``run`` (lexically sorted, common prefix ``shared``) one group rooted at its
    first member, if the root, capped to leave each member a token, is ``min_shared`` tokens or more."""
    if len(run) < 2:
        return
    root = min(shared, min(len(prompts[i]) for i in run) - 1)
    if root >= min_shared:
        for i in run:
            root_of[i], cut[i] = run[0], root
