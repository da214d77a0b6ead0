"""One decoding step of a Llama-architecture model, run straight from its weights (the hf engine's
fast path).

Why: a decoding step feeds one token per row, so every layer is a handful of small matrix products
plus a dozen element-wise operations. Driven through transformers' module stack, each step also pays
the modules' Python plumbing (keyword routing, cache and mask bookkeeping, dispatch per head), and
on a CPU each projection is its own matrix product. This step does the same arithmetic in the same
order with

* the query/key/value projections fused into one matrix product, and the gate/up projections into
  another (the fused weights are copies the decoder holds; the model is never modified, because it may
  be shared with training);
* rotary embeddings applied to the queries and keys in one pass;
* attention through the engine's cache (``SharedPrefixCache``) and its decoding attention, exactly as
  transformers' forward would call it.

Same operations, same dtypes: a test shows its logits equal the transformers path's bit for bit.

In bf16 on a CPU, where the engine's C++ extension is built (``kernels.py``), ``kernel_step``
goes further: per layer, four matrix products in torch and four passes in C++ (RMSNorm; rotary, query
scaling and the cache write; the attention kernel; SiLU-gating), with the residual adds folded into the
output and down products. Its roundings are transformers' except in the last bits of a float32 sum, a
reciprocal square root and an exp, and the residual add happening before the product is rounded:
tests bound it to bf16 rounding of the torch step, not bit-identity.

Memory: the fused copies cost about the size of the decoder's linear weights (~100 M parameters for
SmolLM2-135M's 30 layers: ~190 MB in bf16). ``refresh`` rebuilds them when a weight of the model has
changed (in place, e.g. by an optimizer, or replaced), which it detects by each parameter's storage
address and version counter.

Assumptions (checked by ``unsupported_reason``; other models take transformers' path): a
``LlamaForCausalLM``-shaped model (``model.model.layers``, ``embed_tokens``, ``rotary_emb``, ``norm``)
of type llama, mistral or qwen2, whose layers are pre-norm RMSNorm -> attention with ``q/k/v/o_proj``
(biases allowed, no query/key norms) -> RMSNorm -> SiLU-gated MLP ``gate/up/down_proj``, with full
attention (no sliding window).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from metareward.engines.hf.kernels import kernel_supports

SUPPORTED_TYPES = ("llama", "mistral", "qwen2")


def unsupported_reason(model) -> str | None:
    """Why ``FusedDecoder`` cannot run ``model`` (None when it can)."""
    config = model.config
    if config.model_type not in SUPPORTED_TYPES:
        return f"model type {config.model_type!r} is not one of {SUPPORTED_TYPES}"
    if getattr(config, "hidden_act", None) != "silu":
        return f"activation {getattr(config, 'hidden_act', None)!r} is not silu"
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return "sliding-window attention"
    inner = getattr(model, "model", None)
    if not all(hasattr(inner, name) for name in ("layers", "embed_tokens", "rotary_emb", "norm")):
        return "not a LlamaForCausalLM-shaped model"
    for layer in inner.layers:
        attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        names = [(attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")]
        names += [(mlp, n) for n in ("gate_proj", "up_proj", "down_proj")]
        if any(not isinstance(getattr(m, n, None), torch.nn.Linear) for m, n in names):
            return "a layer without Llama's q/k/v/o and gate/up/down projections"
        if hasattr(attn, "q_norm") or hasattr(attn, "k_norm"):
            return "query/key norms"
        for norm in (getattr(layer, "input_layernorm", None), getattr(layer, "post_attention_layernorm", None)):
            if not type(norm).__name__.endswith("RMSNorm") or not hasattr(norm, "variance_epsilon"):
                return "a layer whose norms are not Llama's RMSNorm"
    return None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' ``LlamaRMSNorm`` (the same operations in the same dtypes): the mean square in
    float32, the scale applied after rounding back to the input's dtype."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def apply_rotary(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """transformers' ``apply_rotary_pos_emb`` on one tensor (``rotate_half`` convention)."""
    half = t.shape[-1] // 2
    return t * cos + torch.cat((-t[..., half:], t[..., :half]), dim=-1) * sin


@dataclass
class LayerWeights:
    """One decoder layer's weights, the projections fused (``qkv``: rows q, then k, then v;
    ``gate_up``: rows gate, then up)."""

    norm_in: torch.Tensor
    eps_in: float
    qkv: torch.Tensor
    qkv_bias: torch.Tensor | None
    o: torch.Tensor
    o_bias: torch.Tensor | None
    norm_post: torch.Tensor
    eps_post: float
    gate_up: torch.Tensor
    gate_up_bias: torch.Tensor | None
    down: torch.Tensor
    down_bias: torch.Tensor | None


def _fused(linears: list[torch.nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None]:
    weight = torch.cat([m.weight.detach() for m in linears]).contiguous()
    if all(m.bias is None for m in linears):
        return weight, None
    bias = torch.cat([m.bias.detach() if m.bias is not None else m.weight.new_zeros(m.out_features) for m in linears])
    return weight, bias


def _bias(linear: torch.nn.Linear) -> torch.Tensor | None:
    return None if linear.bias is None else linear.bias.detach()


class FusedDecoder:
    """Decoding steps of ``model`` (see the module docstring) against a ``SharedPrefixCache``."""

    def __init__(self, model, compile_fn=None, kernels=None):
        reason = unsupported_reason(model)
        if reason is not None:
            raise ValueError(f"FusedDecoder cannot run this model: {reason}")
        self.model = model
        first = model.model.layers[0].self_attn
        self.heads = model.config.num_attention_heads
        self.kv_heads = model.config.num_key_value_heads
        self.scaling = first.scaling
        # compile_fn (e.g. the engine's compiled_or_eager) wraps the two halves of a layer around the
        # cache update, so a compiler can fuse their norms, rotary and activation element-wise work
        wrap = compile_fn or (lambda fn: fn)
        self._attention_inputs = wrap(attention_inputs)
        self._attention_output_and_mlp = wrap(attention_output_and_mlp)
        self._signature: tuple | None = None
        self.layers: list[LayerWeights] = []
        # the C++ decoding extension (kernels.py) or None; kernel_step runs where it applies
        self.kernels = kernels
        self._kernel_shape = False  # set by refresh: the model is one kernel_step can run
        self.refresh()

    def _current_signature(self) -> tuple:
        return tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in self.model.parameters())

    @torch.no_grad()
    def refresh(self) -> None:
        """Re-fuse the weights if any of the model's parameters changed since they were fused."""
        signature = self._current_signature()
        if signature == self._signature:
            return
        self.layers = []
        for layer in self.model.model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            qkv, qkv_bias = _fused([attn.q_proj, attn.k_proj, attn.v_proj])
            gate_up, gate_up_bias = _fused([mlp.gate_proj, mlp.up_proj])
            self.layers.append(LayerWeights(
                norm_in=layer.input_layernorm.weight.detach(), eps_in=layer.input_layernorm.variance_epsilon,
                qkv=qkv, qkv_bias=qkv_bias, o=attn.o_proj.weight.detach(), o_bias=_bias(attn.o_proj),
                norm_post=layer.post_attention_layernorm.weight.detach(),
                eps_post=layer.post_attention_layernorm.variance_epsilon,
                gate_up=gate_up, gate_up_bias=gate_up_bias, down=mlp.down_proj.weight.detach(),
                down_bias=_bias(mlp.down_proj),
            ))
        self._signature = signature
        first = self.layers[0]
        self._kernel_shape = kernel_supports(
            first.qkv, first.qkv.shape[0] // (self.heads + 2 * self.kv_heads), self.heads, self.kv_heads,
        ) and all(w.o_bias is None and w.gate_up_bias is None and w.down_bias is None for w in self.layers)

    def kernels_apply(self, cache) -> bool:
        """Whether ``kernel_step`` can run this decoding step: the C++ extension is there, the model's
        shape and dtype are ones the kernels take (``kernel_supports``; checked at ``refresh``, with no
        output or MLP biases), and the cache is one the attention kernel reads (right-padded prompts)."""
        return (self.kernels is not None and self._kernel_shape and cache.decode_kernel is not None
                and cache.prompt_len is not None)

    def step(self, cache, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The final-normed hidden state [B, hidden] after feeding ``tokens`` [B] at ``positions`` [B];
        appends each row's key/value to ``cache`` (in its rows phase, one position per row).
        Through ``kernel_step`` where ``kernels_apply``, else torch operations alone."""
        if self.kernels_apply(cache):
            return self.kernel_step(cache, tokens, positions)
        inner = self.model.model
        x = inner.embed_tokens(tokens)
        cos, sin = inner.rotary_emb(x, positions[:, None])  # [B, 1, head_dim]
        cos, sin = cos[:, :, None, :], sin[:, :, None, :]  # broadcast over [B, 1, heads, head_dim]
        for index, w in enumerate(self.layers):
            query, key, value = self._attention_inputs(
                x, w.norm_in, w.qkv, w.qkv_bias, cos, sin, self.heads, self.kv_heads, w.eps_in,
            )
            cache.layers[index].update(key, value)
            attended = cache.attend(index, query, self.scaling)
            x = self._attention_output_and_mlp(
                x, attended, w.o, w.o_bias, w.norm_post, w.gate_up, w.gate_up_bias, w.down, w.down_bias, w.eps_post,
            )
        return rms_norm(x, inner.norm.weight, inner.norm.variance_epsilon)

    def kernel_step(self, cache, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """``step`` with each layer as four matrix products (torch) and four C++ passes: RMSNorm,
        rotary + query scaling + cache write, the attention kernel, SiLU-gating (``csrc/``). The
        residual adds ride on the output and down products (``addmm``: added before rounding to bf16,
        where transformers rounds the product first). Within bf16 rounding of ``step``'s torch path
        (tests), not bit-identical to it."""
        kernels, inner = self.kernels, self.model.model
        x = inner.embed_tokens(tokens)
        rows = x.shape[0]
        cos, sin = inner.rotary_emb(x, positions[:, None])  # [B, 1, head_dim]
        cos, sin = cos.reshape(rows, -1).contiguous(), sin.reshape(rows, -1).contiguous()
        dim = cos.shape[1]
        cache.reserve(1, x.new_empty((rows, self.kv_heads, 0, dim)))  # may gather the buffers' live slots
        slots = cache.row_slots()  # row b's keys/values go to and come from buffer row slots[b]
        start, valid = cache.kernel_mask()
        for index, w in enumerate(self.layers):
            layer = cache.layers[index]
            qkv = F.linear(kernels.rms_norm(x, w.norm_in, w.eps_in), w.qkv, w.qkv_bias)
            query = kernels.rotary_into_cache(qkv, cos, sin, self.heads, self.kv_heads, self.scaling, layer.sk,
                                              layer.sv, layer.suffix_len, slots)
            layer.suffix_len += 1
            attended = kernels.decode_attention(query, layer.pk, layer.pv, cache.prompt_len, cache.owner, layer.sk,
                                                layer.sv, layer.suffix_len, slots, start, valid)
            x = torch.addmm(x, attended.view(rows, -1), w.o.t())
            gate_up = F.linear(kernels.rms_norm(x, w.norm_post, w.eps_post), w.gate_up)
            x = torch.addmm(x, kernels.silu_mul(gate_up), w.down.t())
        return kernels.rms_norm(x, inner.norm.weight, inner.norm.variance_epsilon)


    def kernel_feed(self, cache, tokens: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Several known tokens per row in one pass (a follow-up's context): ``kernel_step``'s arithmetic
        on every real token at once, as if each were a row of its own (a virtual row), so the matrix
        products run once over all of them and no padding is computed. Returns each row's final-normed
        hidden state after its last token [B, hidden].

        ``tokens``, ``positions`` [B, w]; ``mask`` [B, w] (1 = a real token): each row's tokens
        right-aligned, its last column real, as ``HFEngine._pad_left`` lays them out; the cache has
        recorded the w positions (``add_suffix(mask)``). Virtual row (b, j) writes its key and value to
        row b's continuation position ``written + j`` (the padded positions get zeros, never attended)
        and attends to what row b attends to before the feed (its mask, holes included) plus its own
        real positions up to j: the causal attention of a forward over those tokens, through the
        decoding kernel (which takes a mask with holes). The rotary embedding and the cache write are
        torch operations here (``kernel_step`` does them in C++ for one position): the same roundings
        (each product and the sum rounded to bf16, the query's scaling rounded)."""
        kernels, inner = self.kernels, self.model.model
        rows, width = tokens.shape
        real = mask.bool()
        flat = real.flatten().nonzero().squeeze(1)  # the virtual rows, row by row
        row_of, col_of = flat // width, flat % width
        x = inner.embed_tokens(tokens.flatten()[flat])
        count = x.shape[0]
        cos, sin = inner.rotary_emb(x, positions.flatten()[flat][:, None])  # [V, 1, head_dim]
        dim = cos.shape[-1]
        cache.reserve(width, x.new_empty((rows, self.kv_heads, 0, dim)))
        slots = cache.row_slots()
        written = cache.layers[0].suffix_len
        start, valid = cache.kernel_mask()
        seen = (torch.arange(written + width, device=x.device)[None, :] >= start[:, None] if valid.numel() == 0
                else valid[:, : written + width])[row_of]
        seen[:, written:] &= torch.arange(width, device=x.device)[None, :] <= col_of[:, None]
        seen = seen.contiguous()
        owner, vslots = cache.owner[row_of], slots[row_of]
        unread = torch.zeros(count, dtype=torch.long, device=x.device)  # ``seen`` decides
        heads, kv = self.heads, self.kv_heads
        cols = written + col_of  # each virtual row's continuation position
        padded = slots[~real.all(1)]  # the rows whose padded positions get zeros
        for index, w in enumerate(self.layers):
            layer = cache.layers[index]
            qkv = F.linear(kernels.rms_norm(x, w.norm_in, w.eps_in), w.qkv, w.qkv_bias).view(count, heads + 2 * kv, dim)
            qk = apply_rotary(qkv[:, : heads + kv], cos, sin)
            query = (qk[:, :heads] * self.scaling).reshape(count, kv, heads // kv, dim).contiguous()
            if len(padded):
                layer.sk[padded, :, :, written : written + width] = 0
                layer.sv[padded, :, written : written + width] = 0
            layer.sk[vslots, :, :, cols] = qk[:, heads:]
            layer.sv[vslots, :, cols] = qkv[:, heads + kv :]
            layer.suffix_len = written + width
            attended = kernels.decode_attention(query, layer.pk, layer.pv, cache.prompt_len, owner, layer.sk, layer.sv,
                                                layer.suffix_len, vslots, unread, seen)
            x = torch.addmm(x, attended.view(count, -1), w.o.t())
            gate_up = F.linear(kernels.rms_norm(x, w.norm_post, w.eps_post), w.gate_up)
            x = torch.addmm(x, kernels.silu_mul(gate_up), w.down.t())
        last = real.sum(1).cumsum(0) - 1  # each row's last real token is its last virtual row
        return kernels.rms_norm(x[last].contiguous(), inner.norm.weight, inner.norm.variance_epsilon)


def attention_inputs(x, norm_in, qkv_weight, qkv_bias, cos, sin, heads: int, kv_heads: int, eps: float):
    """Pre-norm, fused q/k/v projection and rotary embedding of one layer: query [B, heads, 1, d], key
    and value [B, kv_heads, 1, d] (views of one [B, 1, heads + 2 kv_heads, d] product)."""
    rows = x.shape[0]
    dim = qkv_weight.shape[0] // (heads + 2 * kv_heads)
    qkv = F.linear(rms_norm(x, norm_in, eps), qkv_weight, qkv_bias).view(rows, 1, heads + 2 * kv_heads, dim)
    qk = apply_rotary(qkv[:, :, : heads + kv_heads], cos, sin)
    return qk[:, :, :heads].transpose(1, 2), qk[:, :, heads:].transpose(1, 2), qkv[:, :, heads + kv_heads :].transpose(1, 2)


def attention_output_and_mlp(x, attended, o_weight, o_bias, norm_post, gate_up_weight, gate_up_bias, down_weight,
                             down_bias, eps: float):
    """The rest of one layer: output projection and residual, post-norm, SiLU-gated MLP (gate and up
    from one fused product) and residual. ``attended``: [B, 1, heads, d]."""
    x = x + F.linear(attended.reshape(x.shape[0], -1), o_weight, o_bias)
    gate_up = F.linear(rms_norm(x, norm_post, eps), gate_up_weight, gate_up_bias)
    inter = down_weight.shape[1]
    return x + F.linear(F.silu(gate_up[:, :inter]) * gate_up[:, inter:], down_weight, down_bias)
