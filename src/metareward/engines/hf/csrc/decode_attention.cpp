// Decoding-step attention for the hf engine's SharedPrefixCache, one pass per (row, KV head).
//
// Why: a decoding step attends each of B rows (one query token, `groups` query heads per KV head) to
// its prompt's keys (shared with the prompt's other rows) and to its own continuation. As batched
// matrix products that is 2 x B x kv_heads tiny products per layer plus ~20 element-wise passes, and
// on a CPU the per-product overhead dominates. Here each (row, KV head) is one task: scores against
// the prompt's and the continuation's keys, one float32 softmax over both, probabilities times values,
// with no intermediate tensors. The keys are stored transposed ([d, L]) so that scores vectorise over
// key positions without horizontal sums; values stay [L, d] so that the output vectorises over d.
//
// Numerics (the same as the engine's batched-matmul path where it matters): bf16 queries, keys and
// values; products accumulated in float32; softmax in float32; probabilities rounded to bf16 before
// the value product (as transformers' eager attention does); output rounded to bf16. The one
// difference: scores stay float32 here, where a bf16 matmul would round them to bf16 first.
//
// Two builds of the same arithmetic: on a CPU with AVX512-BF16 (compiled with -march=native), bf16 dot
// product instructions (``scores_dot``, ``weighted_values_dot``: ~1.4x faster, measured); elsewhere,
// or with METAREWARD_NO_BF16_DOT defined, plain loops the compiler vectorises (``scores``,
// ``weighted_values``). The tests run both where the CPU has AVX512-BF16.
//
// Assumptions: all tensors contiguous; prompts right-padded (prompt p's real keys are 0..plen[p]-1);
// every row has written the same number n of continuation positions (decoding runs rows in lockstep),
// of which row b's first start[b] are padding it does not attend to (the left padding of a prompt
// remainder fed into the row buffers: the engine's cross-request prefix sharing; start[b] == n while a
// short remainder's feed has not reached its first token, and the row attends to its prompt alone),
// or, where a valid mask is given, those it leaves unmarked (anywhere: a follow-up's
// context fed after a finished sample, whose last sampled tokens it does not repeat);
// every prompt has at least one real key; row b's continuation
// lies in row slots[b] of the row buffers (see row_slots.h).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include "bf16.h"
#include "row_slots.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

using bf16 = at::BFloat16;

using metareward::bf16_to_float;
using metareward::float_to_bf16;

constexpr int CHUNK = 32;  // key positions whose scores one register block accumulates

// scores[g * stride + j] = sum_d q[g][d] * kt[d * ld + j] for j < round_up(len, CHUNK), G query heads.
// kt must hold that many columns (the cache pads its key buffers to whole CHUNKs).
template <int G, int D>
void scores(const float* q, const uint16_t* kt, int64_t ld, int64_t len, float* out, int64_t stride) {
  for (int64_t j0 = 0; j0 < len; j0 += CHUNK) {
    float acc[G][CHUNK] = {};
    for (int d = 0; d < D; ++d) {
      const uint16_t* k = kt + d * ld + j0;
      float kf[CHUNK];
      for (int j = 0; j < CHUNK; ++j) kf[j] = bf16_to_float(k[j]);
      for (int g = 0; g < G; ++g) {
        const float qv = q[g * D + d];
        for (int j = 0; j < CHUNK; ++j) acc[g][j] += qv * kf[j];
      }
    }
    for (int g = 0; g < G; ++g) std::memcpy(out + g * stride + j0, acc[g], sizeof acc[g]);
  }
}

// acc[g][:] += sum_j p[g * stride + j] * v[j * dim + :] for j < len.
template <int G, int D>
void weighted_values(const float* p, int64_t stride, const uint16_t* v, int64_t len, float* acc) {
  float o[G][D];
  for (int g = 0; g < G; ++g) std::memcpy(o[g], acc + g * D, sizeof o[g]);
  for (int64_t j = 0; j < len; ++j) {
    float vf[D];
    for (int d = 0; d < D; ++d) vf[d] = bf16_to_float(v[j * D + d]);
    for (int g = 0; g < G; ++g) {
      const float w = p[g * stride + j];
      for (int d = 0; d < D; ++d) o[g][d] += w * vf[d];
    }
  }
  for (int g = 0; g < G; ++g) std::memcpy(acc + g * D, o[g], sizeof o[g]);
}

#if defined(__AVX512BF16__) && defined(__AVX512F__) && defined(__AVX512BW__) && !defined(METAREWARD_NO_BF16_DOT)
// The same two products with AVX512-BF16 dot products: each instruction multiplies 16 pairs of bf16 and
// adds both products of a pair to a float32 lane, so two consecutive positions of the reduced axis are
// interleaved into pairs first (vpunpck{l,h}wd). Interleaving works within 128-bit lanes, so the
// results come out in a fixed permuted order that one two-source permute per 16 results undoes.
#include <immintrin.h>
#define METAREWARD_BF16_DOT 1

inline void store_unpermuted(__m512 lo, __m512 hi, float* out) {
  const __m512i first = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
  const __m512i second = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
  _mm512_storeu_ps(out, _mm512_permutex2var_ps(lo, first, hi));
  _mm512_storeu_ps(out + 16, _mm512_permutex2var_ps(lo, second, hi));
}

// scores as above, from the bf16 query q [G, D] (pairs of d broadcast) and key pairs (d, d + 1).
template <int G, int D>
void scores_dot(const uint16_t* q, const uint16_t* kt, int64_t ld, int64_t len, float* out, int64_t stride) {
  static_assert(CHUNK == 32, "one chunk is one 512-bit row of 32 bf16 keys");
  uint32_t qpairs[G][D / 2];
  std::memcpy(qpairs, q, sizeof qpairs);
  for (int64_t j0 = 0; j0 < len; j0 += CHUNK) {
    __m512 lo[G], hi[G];
    for (int g = 0; g < G; ++g) lo[g] = hi[g] = _mm512_setzero_ps();
    for (int d = 0; d < D; d += 2) {
      const __m512i a = _mm512_loadu_si512(kt + d * ld + j0);
      const __m512i b = _mm512_loadu_si512(kt + (d + 1) * ld + j0);
      const __m512bh pl = (__m512bh)_mm512_unpacklo_epi16(a, b);
      const __m512bh ph = (__m512bh)_mm512_unpackhi_epi16(a, b);
      for (int g = 0; g < G; ++g) {
        const __m512bh qv = (__m512bh)_mm512_set1_epi32(static_cast<int>(qpairs[g][d / 2]));
        lo[g] = _mm512_dpbf16_ps(lo[g], pl, qv);
        hi[g] = _mm512_dpbf16_ps(hi[g], ph, qv);
      }
    }
    for (int g = 0; g < G; ++g) store_unpermuted(lo[g], hi[g], out + g * stride + j0);
  }
}

// weighted_values as above, probabilities already bf16-representable: pairs of positions (j, j + 1).
template <int G, int D>
void weighted_values_dot(const float* p, int64_t stride, const uint16_t* v, int64_t len, float* acc) {
  constexpr int Z = D / 32;  // 512-bit rows of 32 bf16 per value vector
  __m512 lo[G][Z], hi[G][Z];
  for (int g = 0; g < G; ++g)
    for (int z = 0; z < Z; ++z) lo[g][z] = hi[g][z] = _mm512_setzero_ps();
  for (int64_t j = 0; j < len; j += 2) {
    const bool pair = j + 1 < len;
    __m512bh pl[Z], ph[Z];
    for (int z = 0; z < Z; ++z) {
      const __m512i a = _mm512_loadu_si512(v + j * D + 32 * z);
      const __m512i b = pair ? _mm512_loadu_si512(v + (j + 1) * D + 32 * z) : _mm512_setzero_si512();
      pl[z] = (__m512bh)_mm512_unpacklo_epi16(a, b);
      ph[z] = (__m512bh)_mm512_unpackhi_epi16(a, b);
    }
    for (int g = 0; g < G; ++g) {
      const uint32_t w0 = float_to_bf16(p[g * stride + j]);
      const uint32_t w1 = pair ? float_to_bf16(p[g * stride + j + 1]) : 0u;
      const __m512bh w = (__m512bh)_mm512_set1_epi32(static_cast<int>(w0 | (w1 << 16)));
      for (int z = 0; z < Z; ++z) {
        lo[g][z] = _mm512_dpbf16_ps(lo[g][z], pl[z], w);
        hi[g][z] = _mm512_dpbf16_ps(hi[g][z], ph[z], w);
      }
    }
  }
  for (int g = 0; g < G; ++g) {
    for (int z = 0; z < Z; ++z) {
      float tmp[32];
      store_unpermuted(lo[g][z], hi[g][z], tmp);
      for (int d = 0; d < 32; ++d) acc[g * D + 32 * z + d] += tmp[d];
    }
  }
}
#endif

inline int64_t round_up(int64_t x) { return (x + CHUNK - 1) / CHUNK * CHUNK; }

template <int G, int D>
void attend_all(const uint16_t* q, const uint16_t* pkt, const uint16_t* pv, const int64_t* plen,
                const int64_t* owner, const int64_t* slots, const int64_t* start, const uint8_t* valid,
                int64_t valid_stride, const uint16_t* skt, const uint16_t* sv, uint16_t* out, int64_t rows,
                int64_t kv_heads, int64_t lp, int64_t width, int64_t n) {
  at::parallel_for(0, rows * kv_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> buf;
    float qf[G * D];
    float acc[G * D];
    float total[G];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / kv_heads, h = task % kv_heads, p = owner[b], slot = slots[b];
      const int64_t l1 = plen[p], len = l1 + n;
      // continuation position c is attended to iff keep[c] (a row of the valid mask), else iff c >= start[b]
      const uint8_t* keep = valid != nullptr ? valid + b * valid_stride : nullptr;
      const int64_t first = start[b];
      // row g's scores at s[g * stride ...]; the score blocks write whole CHUNKs past their ends
      const int64_t stride = std::max(round_up(l1), l1 + round_up(n));
      buf.resize(static_cast<size_t>(G * stride));
      const uint16_t* qrow = q + (b * kv_heads + h) * G * D;
      for (int i = 0; i < G * D; ++i) qf[i] = bf16_to_float(qrow[i]);
      float* s = buf.data();
#ifdef METAREWARD_BF16_DOT
      scores_dot<G, D>(qrow, pkt + (p * kv_heads + h) * D * lp, lp, l1, s, stride);
      scores_dot<G, D>(qrow, skt + (slot * kv_heads + h) * D * width, width, n, s + l1, stride);
#else
      scores<G, D>(qf, pkt + (p * kv_heads + h) * D * lp, lp, l1, s, stride);
      scores<G, D>(qf, skt + (slot * kv_heads + h) * D * width, width, n, s + l1, stride);
#endif
      for (int g = 0; g < G; ++g) {
        float* sg = s + g * stride;
        float* cont = sg + l1;  // the continuation's scores
        // masked positions get probability 0 outright (no -inf arithmetic: the build uses -ffast-math)
        // (separate loops per case, so that the common ones vectorise)
        float peak = sg[0];  // every prompt has a token
        for (int64_t j = 1; j < l1; ++j) peak = std::max(peak, sg[j]);
        if (keep != nullptr) {
          for (int64_t c = 0; c < n; ++c) peak = keep[c] ? std::max(peak, cont[c]) : peak;
        } else {
          for (int64_t c = first; c < n; ++c) peak = std::max(peak, cont[c]);
        }
        float sum = 0.f;
        for (int64_t j = 0; j < l1; ++j) {
          const float e = std::exp(sg[j] - peak);
          sum += e;
          sg[j] = e;
        }
        if (keep != nullptr) {
          for (int64_t c = 0; c < n; ++c) {
            const float e = keep[c] ? std::exp(cont[c] - peak) : 0.f;
            sum += e;
            cont[c] = e;
          }
        } else {
          for (int64_t c = 0; c < first; ++c) cont[c] = 0.f;
          for (int64_t c = first; c < n; ++c) {
            const float e = std::exp(cont[c] - peak);
            sum += e;
            cont[c] = e;
          }
        }
        // the numerators rounded to bf16 for the value product; the division comes at the end
        for (int64_t j = 0; j < len; ++j) sg[j] = bf16_to_float(float_to_bf16(sg[j]));
        total[g] = sum;
      }
      std::fill(acc, acc + G * D, 0.f);
#ifdef METAREWARD_BF16_DOT
      weighted_values_dot<G, D>(s, stride, pv + (p * kv_heads + h) * lp * D, l1, acc);
      weighted_values_dot<G, D>(s + l1, stride, sv + (slot * kv_heads + h) * width * D, n, acc);
#else
      weighted_values<G, D>(s, stride, pv + (p * kv_heads + h) * lp * D, l1, acc);
      weighted_values<G, D>(s + l1, stride, sv + (slot * kv_heads + h) * width * D, n, acc);
#endif
      uint16_t* orow = out + (b * kv_heads + h) * G * D;
      for (int g = 0; g < G; ++g) {
        const float inv = 1.f / total[g];
        for (int d = 0; d < D; ++d) orow[g * D + d] = float_to_bf16(acc[g * D + d] * inv);
      }
    }
  });
}

template <int D>
void dispatch_groups(int64_t groups, const uint16_t* q, const uint16_t* pkt, const uint16_t* pv, const int64_t* plen,
                     const int64_t* owner, const int64_t* slots, const int64_t* start, const uint8_t* valid,
                     int64_t valid_stride, const uint16_t* skt,
                     const uint16_t* sv, uint16_t* out, int64_t rows, int64_t kv_heads, int64_t lp, int64_t width,
                     int64_t n) {
  switch (groups) {
#define CASE(G) case G: attend_all<G, D>(q, pkt, pv, plen, owner, slots, start, valid, valid_stride, skt, sv, out, rows, kv_heads, lp, width, n); return;
    CASE(1) CASE(2) CASE(3) CASE(4) CASE(5) CASE(6) CASE(7) CASE(8)
#undef CASE
    default: TORCH_CHECK(false, "decode_attention: unsupported query heads per KV head: ", groups);
  }
}

}  // namespace

// query [B, kv, G, D]; prompt_keys_t [P, kv, D, Lp]; prompt_values [P, kv, Lp, D]; prompt_len [P] int64;
// owner [B] int64; row_keys_t [S, kv, D, W]; row_values [S, kv, W, D]; n continuation positions written;
// slots [B] int64: row b's continuation is row slots[b] of the row buffers (rows may share one); start [B] int64: row b does
// not attend to its first start[b] continuation positions (0 <= start[b] <= n); valid: empty, or a bool
// [B, >= n] mask of the continuation positions each row attends to (then start is ignored: a row's
// masked positions may lie anywhere, as after a follow-up's fed context). Returns [B, kv, G, D] bf16.
torch::Tensor decode_attention(torch::Tensor query, torch::Tensor prompt_keys_t, torch::Tensor prompt_values,
                               torch::Tensor prompt_len, torch::Tensor owner, torch::Tensor row_keys_t,
                               torch::Tensor row_values, int64_t n, torch::Tensor slots, torch::Tensor start,
                               torch::Tensor valid) {
  for (const auto& t : {query, prompt_keys_t, prompt_values, row_keys_t, row_values}) {
    TORCH_CHECK(t.scalar_type() == at::kBFloat16 && t.is_contiguous() && t.device().is_cpu(),
                "decode_attention: bf16 contiguous CPU tensors expected");
  }
  TORCH_CHECK(prompt_len.scalar_type() == at::kLong && owner.scalar_type() == at::kLong, "int64 indices expected");
  const int64_t rows = query.size(0), kv_heads = query.size(1), groups = query.size(2), dim = query.size(3);
  const int64_t lp = prompt_keys_t.size(3), width = row_keys_t.size(3);
  TORCH_CHECK(n <= width, "decode_attention: more positions written than the row buffers hold");
  TORCH_CHECK(lp % CHUNK == 0 && width % CHUNK == 0, "decode_attention: key buffers must hold whole blocks of ", CHUNK);
  const int64_t* slot = metareward::checked_slots(slots, rows, row_keys_t.size(0), "decode_attention",
                                                     /*distinct=*/false);
  TORCH_CHECK(row_values.size(0) == row_keys_t.size(0), "decode_attention: key and value buffers hold different rows");
  TORCH_CHECK(start.scalar_type() == at::kLong && start.is_contiguous() && start.device().is_cpu() && start.dim() == 1
                  && start.size(0) == rows, "decode_attention: start must be a contiguous int64 CPU vector, one per row");
  const uint8_t* keep = nullptr;
  int64_t keep_stride = 0;
  if (valid.numel() > 0) {
    TORCH_CHECK(valid.scalar_type() == at::kBool && valid.dim() == 2 && valid.size(0) == rows && valid.size(1) >= n
                    && valid.stride(1) == 1 && valid.device().is_cpu(),
                "decode_attention: valid must be a bool CPU [rows, >= n] mask with contiguous rows");
    keep = reinterpret_cast<const uint8_t*>(valid.data_ptr<bool>());
    keep_stride = valid.stride(0);
  }
  const int64_t* first = start.data_ptr<int64_t>();
  const int64_t* plen = prompt_len.data_ptr<int64_t>();
  const int64_t* own = owner.data_ptr<int64_t>();
  for (int64_t b = 0; b < rows; ++b) {
    TORCH_CHECK(first[b] >= 0 && first[b] <= n, "decode_attention: row ", b, " starts at ", first[b], " of ", n,
                " written positions");
    TORCH_CHECK(own[b] >= 0 && own[b] < prompt_len.size(0) && plen[own[b]] >= 1 && plen[own[b]] <= lp,
                "decode_attention: row ", b, " has no prompt, or a prompt without keys");
  }
  auto out = torch::empty_like(query);
  auto ptr = [](const torch::Tensor& t) { return reinterpret_cast<const uint16_t*>(t.data_ptr<bf16>()); };
  auto* o = reinterpret_cast<uint16_t*>(out.data_ptr<bf16>());
  if (dim == 64) {
    dispatch_groups<64>(groups, ptr(query), ptr(prompt_keys_t), ptr(prompt_values), prompt_len.data_ptr<int64_t>(),
                        owner.data_ptr<int64_t>(), slot, first, keep, keep_stride, ptr(row_keys_t), ptr(row_values), o, rows, kv_heads, lp, width,
                        n);
  } else if (dim == 128) {
    dispatch_groups<128>(groups, ptr(query), ptr(prompt_keys_t), ptr(prompt_values), prompt_len.data_ptr<int64_t>(),
                         owner.data_ptr<int64_t>(), slot, first, keep, keep_stride, ptr(row_keys_t), ptr(row_values), o, rows, kv_heads, lp, width,
                         n);
  } else {
    TORCH_CHECK(false, "decode_attention: unsupported head dimension ", dim);
  }
  return out;
}

// decode_layer.cpp
torch::Tensor rms_norm(torch::Tensor x, torch::Tensor weight, double eps);
torch::Tensor rotary_into_cache(torch::Tensor qkv, torch::Tensor cos, torch::Tensor sin, int64_t heads,
                                int64_t kv_heads, double scaling, torch::Tensor key_buffer_t,
                                torch::Tensor value_buffer, int64_t position, torch::Tensor slots);
torch::Tensor silu_mul(torch::Tensor gate_up);
// sample.cpp
torch::Tensor sample_next(torch::Tensor logits, torch::Tensor temperature, torch::Tensor top_p, torch::Tensor u);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("decode_attention", &decode_attention, "decoding-step attention over a shared-prefix cache (bf16, CPU)");
  m.def("rms_norm", &rms_norm, "transformers' LlamaRMSNorm over rows (bf16, CPU)");
  m.def("rotary_into_cache", &rotary_into_cache,
        "rotary embeddings, query scaling and the key/value cache write of one decoding step (bf16, CPU)");
  m.def("silu_mul", &silu_mul, "silu(gate) * up of a fused gate/up projection (bf16, CPU)");
  m.def("sample_next", &sample_next, "next tokens of a decoding step from bf16 logits: greedy or nucleus (CPU)");
}
