"""The transformers engine: CPU or one GPU, the default, runs the embedded model offline.

What it does with a stage's requests:
* applies the model's chat template (``add_generation_prompt``) to each request's messages;
* sorts requests by prompt length and cuts them into batches of about ``batch_size`` sequences
  (a request with ``n`` samples counts ``n``), so padding stays small;
* generates with left padding and ``num_return_sequences=n``, stopping each sequence at end-of-turn
  (the tokenizer's eos, e.g. ``<|im_end|>``, plus the generation config's eos ids) or ``max_tokens``;
* seeds each batch from its requests' seeds, so a given chunk of requests always yields the same texts.

``choice_probs`` runs one forward pass over ``template(messages) + assistant_prefix`` and reads the
softmax of the last position's logits at each choice's token, renormalised over the choices.

Assumptions: a causal LM with a chat template; each choice is a single token after the prefix (checked).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence

import torch

from metareward.engines.base import (
    ChoiceOutput,
    ChoiceRequest,
    Engine,
    GenerationOutput,
    GenerationRequest,
)


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return getattr(torch, dtype)


def batch_seed(seeds: Sequence[int]) -> int:
    digest = hashlib.sha256(",".join(map(str, seeds)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


class HFEngine(Engine):
    """transformers ``generate`` on one device. See the module docstring."""

    name = "hf"

    def __init__(
        self,
        model_path: str,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 32,
        threads: int = 0,
        model=None,
        tokenizer=None,
    ):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if threads > 0:
            torch.set_num_threads(threads)
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self.batch_size = batch_size
        self.tokenizer = tokenizer or AutoTokenizer.from_pretrained(model_path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = model or AutoModelForCausalLM.from_pretrained(model_path, dtype=self.dtype)
        self.model.to(self.device).eval()
        self.stop_ids = self._stop_ids()

    def _stop_ids(self) -> list[int]:
        ids = set()
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        gen_eos = getattr(self.model.generation_config, "eos_token_id", None)
        if isinstance(gen_eos, int):
            ids.add(gen_eos)
        elif gen_eos:
            ids.update(gen_eos)
        for tok in ("<|im_end|>", "<|eot_id|>", "<|end|>"):
            tid = self.tokenizer.convert_tokens_to_ids(tok)
            if isinstance(tid, int) and tid != self.tokenizer.unk_token_id and tid is not None:
                ids.add(tid)
        return sorted(ids)

    # ------------------------------------------------------------------ helpers

    def render(self, messages: Sequence[dict[str, str]]) -> list[int]:
        """Token ids of the chat-templated conversation, ending with the assistant turn's header."""
        out = self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True)
        if isinstance(out, dict) or hasattr(out, "keys"):
            out = out["input_ids"]
        return list(out)

    def _pad_left(self, seqs: Sequence[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in seqs)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s) :] = 1
        return ids.to(self.device), mask.to(self.device)

    def _batches(self, sizes: Sequence[int], costs: Sequence[int]) -> list[list[int]]:
        """Indices grouped into batches of about ``batch_size`` sequences, shortest prompts first."""
        order = sorted(range(len(sizes)), key=lambda i: costs[i])
        batches: list[list[int]] = []
        cur: list[int] = []
        seqs = 0
        for i in order:
            if cur and seqs + sizes[i] > self.batch_size:
                batches.append(cur)
                cur, seqs = [], 0
            cur.append(i)
            seqs += sizes[i]
        if cur:
            batches.append(cur)
        return batches

    # ------------------------------------------------------------------ generation

    @torch.inference_mode()
    def generate(self, requests: Sequence[GenerationRequest]) -> Iterator[GenerationOutput]:
        prompts = [self.render(r.messages) for r in requests]
        # Requests of one batch must share n and sampling settings (one generate call).
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault((r.n, r.sampling), []).append(i)
        for (n, _sampling), idx in groups.items():
            for batch in self._batches([n] * len(idx), [len(prompts[i]) for i in idx]):
                members = [idx[b] for b in batch]
                yield from self._generate_batch([requests[i] for i in members], [prompts[i] for i in members])

    def _generate_batch(self, reqs: Sequence[GenerationRequest], prompts: Sequence[list[int]]):
        n, sampling = reqs[0].n, reqs[0].sampling
        ids, mask = self._pad_left(prompts)
        torch.manual_seed(batch_seed([r.seed for r in reqs]))
        greedy = sampling.temperature == 0
        kwargs = dict(do_sample=False) if greedy else dict(
            do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0
        )
        out = self.model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=sampling.max_tokens,
            num_return_sequences=n,
            eos_token_id=self.stop_ids,
            pad_token_id=self.tokenizer.pad_token_id,
            **kwargs,
        )
        new = out[:, ids.shape[1] :].tolist()
        for k, r in enumerate(reqs):
            texts, counts, finished = [], [], []
            for seq in new[k * n : (k + 1) * n]:
                toks, done = self.cut_at_stop(seq)
                texts.append(self.tokenizer.decode(toks, skip_special_tokens=True).strip())
                counts.append(len(toks) + int(done))
                finished.append(done)
            yield GenerationOutput(id=r.id, texts=texts, n_tokens=counts, finished=finished)

    def cut_at_stop(self, seq: list[int]) -> tuple[list[int], bool]:
        """Generated tokens up to (not including) the first stop token, and whether one was hit."""
        for j, t in enumerate(seq):
            if t in self.stop_ids:
                return seq[:j], True
        return seq, False

    # ------------------------------------------------------------------ choice probabilities

    def choice_context(self, prefix: str, choices: Sequence[str]) -> tuple[list[int], list[int]]:
        """Context tokens and one token per choice, tokenized the way the text would naturally be.

        ``prefix + choice`` is encoded whole for every choice; the context is their common leading
        tokens and each choice must add exactly one token. This absorbs a trailing space of the
        prefix into the choice token where the tokenizer merges them (``"Judgment " + "A"`` is
        ``"ĠJudgment" "ĠA"`` in BPE, not ``"ĠJudgment" "Ġ" "A"``), so the model is asked the question
        in the form it has seen in training.
        """
        encoded = [self.tokenizer.encode(prefix + c, add_special_tokens=False) for c in choices]
        common = 0
        shortest = min(len(e) for e in encoded)
        while common < shortest and all(e[common] == encoded[0][common] for e in encoded):
            common += 1
        bad = [c for c, e in zip(choices, encoded) if len(e) != common + 1]
        if bad or common == 0 and prefix:
            raise ValueError(f"choices {list(choices)} are not single tokens after {prefix[-20:]!r}")
        return encoded[0][:common], [e[common] for e in encoded]

    @torch.inference_mode()
    def choice_probs(self, requests: Sequence[ChoiceRequest]) -> Iterator[ChoiceOutput]:
        seqs, tokens = [], []
        for r in requests:
            context, choice_ids = self.choice_context(r.assistant_prefix, r.choices)
            seqs.append(self.render(r.messages) + context)
            tokens.append(choice_ids)
        for batch in self._batches([1] * len(requests), [len(s) for s in seqs]):
            ids, mask = self._pad_left([seqs[i] for i in batch])
            logits = self.model(input_ids=ids, attention_mask=mask).logits[:, -1, :].float()
            logprobs = torch.log_softmax(logits, dim=-1)
            for row, i in enumerate(batch):
                p = logprobs[row, tokens[i]].exp()
                p = p / p.sum()
                yield ChoiceOutput(id=requests[i].id, probs=[float(x) for x in p])

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
