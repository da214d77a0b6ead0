// The element-wise work of a decoding step's layer, for the fused decoder on a CPU in bf16.
//
// Why: between its four matrix products, a Llama-architecture layer does ~25 small element-wise
// operations on [rows, hidden] tensors (two RMSNorms, rotary embeddings, the query's scaling, the
// cache writes, SiLU-gating). Each is one pass over a few hundred KB plus a dispatch; on 2 CPU cores
// they and their Python plumbing cost ~30 ms of a ~155 ms 256-row SmolLM2 step. Here they are three
// passes: ``rms_norm``, ``rotary_into_cache`` and ``silu_mul``.
//
// Numerics: the roundings of transformers' bf16 forward, in its order (every bf16 operation rounds its
// float result to bf16, nearest-even): RMSNorm's mean square in float32, scaled, rounded, times the
// weight, rounded; rotary as q*cos + rotate_half(q)*sin with each product and the sum rounded; the
// query then times the attention scaling, rounded; SiLU in float32, rounded, times the up projection,
// rounded. Three things differ in float32's last bits (so rarely in bf16): the order of the mean
// square's sum, the reciprocal square root and SiLU's exp (the compiler's and C library's fast versions,
// not PyTorch's). Tests bound each operation's difference from PyTorch's to one bf16 rounding step, and
// the decoding engine's distributions to those of transformers' own bf16 forward.
//
// Assumptions: contiguous bf16 CPU tensors; rotary in transformers' rotate_half convention with cos/sin
// rows of the head dimension; row buffers laid out as the engine's SharedPrefixCache keeps them (keys
// transposed [slots, kv, d, W], values [slots, kv, W, d]; batch row b writes buffer row slots[b]).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include "bf16.h"
#include "row_slots.h"

#include <cmath>
#include <cstdint>
#include <cstring>

namespace {

inline float bf(uint16_t bits) { return metareward::bf16_to_float(bits); }
inline uint16_t to_bf(float f) { return metareward::float_to_bf16(f); }
inline float round_bf(float f) { return bf(to_bf(f)); }

const uint16_t* data(const torch::Tensor& t) { return reinterpret_cast<const uint16_t*>(t.data_ptr<at::BFloat16>()); }
uint16_t* data_mut(torch::Tensor& t) { return reinterpret_cast<uint16_t*>(t.data_ptr<at::BFloat16>()); }

void check(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kBFloat16 && t.is_contiguous() && t.device().is_cpu(), "decode layer: ",
              name, " must be a contiguous bf16 CPU tensor");
}

}  // namespace

// transformers' LlamaRMSNorm on rows of x [B, H]: weight * bf16(x * rsqrt(mean(x^2) + eps)).
torch::Tensor rms_norm(torch::Tensor x, torch::Tensor weight, double eps) {
  check(x, "x");
  check(weight, "weight");
  const int64_t rows = x.size(0), hidden = x.size(1);
  TORCH_CHECK(weight.numel() == hidden, "rms_norm: weight size ", weight.numel(), " != hidden ", hidden);
  auto out = torch::empty_like(x);
  const uint16_t* xs = data(x);
  const uint16_t* w = data(weight);
  uint16_t* o = data_mut(out);
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const uint16_t* row = xs + r * hidden;
      float sum = 0.f;
      for (int64_t i = 0; i < hidden; ++i) {
        const float v = bf(row[i]);
        sum += v * v;
      }
      const float scale = 1.f / std::sqrt(sum / static_cast<float>(hidden) + static_cast<float>(eps));
      uint16_t* orow = o + r * hidden;
      for (int64_t i = 0; i < hidden; ++i) orow[i] = to_bf(bf(w[i]) * round_bf(bf(row[i]) * scale));
    }
  });
  return out;
}

// From one row's fused projection qkv [B, (heads + 2 kv) * d]: rotary embeddings on the queries and
// keys (cos/sin [B, d]), the queries times ``scaling`` -> returned [B, kv, heads / kv, d]; row b's keys
// written into key_buffer_t[slots[b], :, :, position], its values into value_buffer[slots[b], :, position, :].
torch::Tensor rotary_into_cache(torch::Tensor qkv, torch::Tensor cos, torch::Tensor sin, int64_t heads,
                                int64_t kv_heads, double scaling, torch::Tensor key_buffer_t,
                                torch::Tensor value_buffer, int64_t position, torch::Tensor slots) {
  for (const auto* t : {&qkv, &cos, &sin, &key_buffer_t, &value_buffer}) check(*t, "an operand");
  const int64_t rows = qkv.size(0), dim = cos.size(1), width = value_buffer.size(2);
  TORCH_CHECK(qkv.size(1) == (heads + 2 * kv_heads) * dim && dim % 2 == 0 && dim <= 256,
              "rotary_into_cache: qkv width or head dimension");
  TORCH_CHECK(position >= 0 && position < width && key_buffer_t.size(3) == width, "rotary_into_cache: position ",
              position, " outside the row buffers' ", width);
  TORCH_CHECK(key_buffer_t.size(0) == value_buffer.size(0) && cos.size(0) == rows, "rotary_into_cache: rows differ");
  const int64_t* slot = metareward::checked_slots(slots, rows, value_buffer.size(0), "rotary_into_cache");
  auto query = torch::empty({rows, kv_heads, heads / kv_heads, dim}, qkv.options());
  const uint16_t* src = data(qkv);
  const uint16_t* cs = data(cos);
  const uint16_t* sn = data(sin);
  uint16_t* q_out = data_mut(query);
  uint16_t* kt = data_mut(key_buffer_t);
  uint16_t* vb = data_mut(value_buffer);
  const float scale = static_cast<float>(scaling);
  const int64_t half = dim / 2;
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    float rotated[256];
    for (int64_t r = begin; r < end; ++r) {
      const uint16_t* row = src + r * (heads + 2 * kv_heads) * dim;
      const uint16_t* c = cs + r * dim;
      const uint16_t* s = sn + r * dim;
      for (int64_t h = 0; h < heads + kv_heads; ++h) {
        const uint16_t* t = row + h * dim;
        for (int64_t i = 0; i < dim; ++i) {
          const float other = i < half ? -bf(t[i + half]) : bf(t[i - half]);  // rotate_half
          rotated[i] = round_bf(round_bf(bf(t[i]) * bf(c[i])) + round_bf(other * bf(s[i])));
        }
        if (h < heads) {
          uint16_t* q = q_out + (r * heads + h) * dim;  // [B, kv, groups, d] is [B, heads, d] in order
          for (int64_t i = 0; i < dim; ++i) q[i] = to_bf(rotated[i] * scale);
        } else {
          uint16_t* k = kt + ((slot[r] * kv_heads + (h - heads)) * dim) * width + position;
          for (int64_t i = 0; i < dim; ++i) k[i * width] = to_bf(rotated[i]);
        }
      }
      const uint16_t* v = row + (heads + kv_heads) * dim;
      for (int64_t h = 0; h < kv_heads; ++h) {
        std::memcpy(vb + ((slot[r] * kv_heads + h) * width + position) * dim, v + h * dim, dim * sizeof(uint16_t));
      }
    }
  });
  return query;
}

// SiLU-gating of gate_up [B, 2 I] (gate columns first): bf16(bf16(silu(gate)) * up) -> [B, I].
torch::Tensor silu_mul(torch::Tensor gate_up) {
  check(gate_up, "gate_up");
  const int64_t rows = gate_up.size(0), inter = gate_up.size(1) / 2;
  auto out = torch::empty({rows, inter}, gate_up.options());
  const uint16_t* src = data(gate_up);
  uint16_t* o = data_mut(out);
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const uint16_t* g = src + r * 2 * inter;
      const uint16_t* u = g + inter;
      uint16_t* orow = o + r * inter;
      for (int64_t i = 0; i < inter; ++i) {
        const float x = bf(g[i]);
        orow[i] = to_bf(round_bf(x / (1.f + std::exp(-x))) * bf(u[i]));
      }
    }
  });
  return out;
}
