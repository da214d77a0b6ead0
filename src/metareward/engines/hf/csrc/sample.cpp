// Next-token sampling for the hf engine's decoding steps on a CPU, one task per row, straight from the
// LM head's output (bf16, or float32 for a float32 model).
//
// Why: in torch a step's sampling is a float32 copy of the [B, V] logits, a division by the
// temperature, a softmax written to memory, block maxima, top-k's and gathers: ~8 passes over B x V
// floats (~14 ms a step at B = 256, V = 49152 on 2 cores, ~8% of an actor stage). Here each row is read
// twice (its maxima, then the softmax normaliser) while it is still in cache, and only the few
// columns that can hold the nucleus are ever sorted.
//
// What it draws (the same distribution as ``hf.sample_next``): temperature <= 0: the argmax (the first
// column of the largest logit, as torch.argmax). Otherwise softmax(logits / temperature) restricted to
// the nucleus: sorted by probability (equal ones by column, the lower first: bf16 logits tie often), a
// column is kept while the mass ranked above it is < top_p (the top column always stays; top_p >= 1
// keeps every column). The nucleus is searched in tiers, and a tier serves a row once its columns hold
// mass >= top_p (the nucleus then lies within it, so the result is exact whichever tier serves):
// 1. the top 16 columns, then the top 64, found among the columns of the k blocks of 64 with the largest
//    maxima (k columns are >= the k-th largest block maximum, so the k-th largest column is too), plus
//    the columns past the last whole block;
// 2. bands of the scaled logit below the maximum (1/8 wide): the fewest top bands whose mass reaches
//    top_p, their columns sorted (every column of a higher band ranks above every one of a lower);
// 3. should rounding leave those just short, every column sorted.
// The draw: a uniform u in [0, 1) per row (from the caller's generator, so seeds reproduce), the first
// kept column whose cumulative mass exceeds u times the nucleus's mass.
//
// Numerics: logits as the head wrote them, everything after in float32: the normaliser summed
// in float lanes, the masses of bands and of the nucleus in double; exp is the compiler's vectorised
// one (-ffast-math), so probabilities differ from torch's in float32's last bits, and a column at the
// nucleus's edge can be kept by one and not the other only when its mass above equals top_p to within
// that.
//
// Assumptions: logits a contiguous bf16 or float32 CPU matrix [B, V]; temperature, top_p float32 [B];
// u float64 [B].
// A row with a NaN or an infinity is an error (as for torch's sampler), not a draw.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include "bf16.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <vector>

namespace {

using metareward::bf16_to_float;

constexpr int64_t BLOCK = 64;            // columns per block maximum (TOPK_BLOCK in engines/hf/sampling.py)
constexpr int64_t TIERS[] = {16, 64};  // top-k widths searched through block maxima
constexpr int64_t BANDS = 128, BANDS_PER_UNIT = 8;  // wider nuclei: bands of 1/8 in logit / temperature

struct Scratch {
  std::vector<float> block_max;
  std::vector<int32_t> blocks, columns;
};

// A row of logits as raw bits: bf16 (uint16_t) or float32 (uint32_t).
inline float as_float(uint16_t bits) { return bf16_to_float(bits); }
inline float as_float(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}
constexpr uint32_t exponent_bits(uint16_t) { return 0x7F80u; }
constexpr uint32_t exponent_bits(uint32_t) { return 0x7F800000u; }

// Whether a row holds a NaN or an infinity (all exponent bits set). On the raw bits, because
// -ffast-math lets the compiler assume floats are finite.
template <typename Bits>
bool non_finite(const Bits* row, int64_t V) {
  const Bits mask = static_cast<Bits>(exponent_bits(Bits{}));
  Bits bad = 0;
  for (int64_t j = 0; j < V; ++j) bad |= static_cast<Bits>((row[j] & mask) == mask);
  return bad != 0;
}

// One row's token; `row` holds its V logits (finite).
template <typename Bits>
int64_t sample_row(const Bits* row, int64_t V, float temperature, float top_p, double u, Scratch& s) {
  const auto l = [row](int64_t j) { return as_float(row[j]); };
  // block maxima and the row's maximum (vectorised: a max over each block of 64)
  const int64_t n_blocks = V / BLOCK, body = n_blocks * BLOCK;
  s.block_max.resize(n_blocks);
  float m = -INFINITY;
  for (int64_t b = 0; b < n_blocks; ++b) {
    float bm = -INFINITY;
    for (int64_t j = 0; j < BLOCK; ++j) bm = std::max(bm, l(b * BLOCK + j));
    s.block_max[b] = bm;
    m = std::max(m, bm);
  }
  for (int64_t j = body; j < V; ++j) m = std::max(m, l(j));
  if (temperature <= 0.f) {  // greedy: the first column of the maximum
    for (int64_t j = 0; j < V; ++j) {
      if (l(j) == m) return j;
    }
  }
  const float inv_t = 1.f / temperature;
  float z = 0.f;  // the softmax normaliser (float lanes, vectorised)
  for (int64_t j = 0; j < V; ++j) z += std::exp((l(j) - m) * inv_t);
  if (top_p >= 1.f) {  // the whole row: walk it in column order
    const double target = u * z;
    double acc = 0.0;
    int64_t last = 0;
    for (int64_t j = 0; j < V; ++j) {
      const float e = std::exp((l(j) - m) * inv_t);
      if (e > 0.f) last = j;
      acc += e;
      if (acc > target) return j;
    }
    return last;
  }
  const double need = static_cast<double>(top_p) * z;
  const auto by_logit = [&l](int32_t a, int32_t b) { return l(a) > l(b) || (l(a) == l(b) && a < b); };
  // The nucleus from sorted candidate columns: kept while the mass above them is < need (the first
  // always), then the draw. Returns -1 when the candidates' mass stays below need (a wider search).
  const auto draw = [&](int64_t top) -> int64_t {
    double above = 0.0;
    int64_t kept = 0;
    while (kept < top && (kept == 0 || above < need)) {
      above += std::exp((l(s.columns[kept]) - m) * inv_t);
      ++kept;
    }
    if (above < need) return -1;
    const double target = u * above;
    double acc = 0.0;
    for (int64_t i = 0; i < kept; ++i) {
      acc += std::exp((l(s.columns[i]) - m) * inv_t);
      if (acc > target) return s.columns[i];
    }
    return s.columns[kept - 1];
  };
  // Tiers 16 and 64: the top k columns lie among the columns of the k blocks with the largest maxima.
  for (const int64_t k : TIERS) {
    if (4 * k > n_blocks) break;
    s.blocks.resize(n_blocks);
    std::iota(s.blocks.begin(), s.blocks.end(), 0);
    const auto& bmax = s.block_max;
    std::nth_element(s.blocks.begin(), s.blocks.begin() + (k - 1), s.blocks.end(),
                     [&bmax](int32_t a, int32_t b) { return bmax[a] > bmax[b]; });
    s.columns.clear();
    for (int64_t i = 0; i < k; ++i) {
      for (int64_t j = 0; j < BLOCK; ++j) s.columns.push_back(static_cast<int32_t>(s.blocks[i] * BLOCK + j));
    }
    for (int64_t j = body; j < V; ++j) s.columns.push_back(static_cast<int32_t>(j));
    std::partial_sort(s.columns.begin(), s.columns.begin() + k, s.columns.end(), by_logit);
    const int64_t token = draw(k);
    if (token >= 0) return token;
  }
  // Wider nuclei: the mass of each band of scaled logits below the maximum (bands 1/BANDS_PER_UNIT wide;
  // the last takes the rest), the fewest top bands whose mass reaches need, and their columns sorted:
  // every column of a higher band ranks above every column of a lower one, so they hold the nucleus.
  double band_mass[BANDS + 1] = {};
  const auto band = [&](int64_t j) {
    const float depth = (m - l(j)) * inv_t * BANDS_PER_UNIT;  // >= 0; clamped before the cast
    return depth >= static_cast<float>(BANDS) ? BANDS : static_cast<int64_t>(depth);
  };
  for (int64_t j = 0; j < V; ++j) band_mass[band(j)] += std::exp((l(j) - m) * inv_t);
  int64_t last_band = 0;
  for (double acc = band_mass[0]; acc < need && last_band < BANDS; acc += band_mass[++last_band]) {
  }
  s.columns.clear();
  for (int64_t j = 0; j < V; ++j) {
    if (band(j) <= last_band) s.columns.push_back(static_cast<int32_t>(j));
  }
  std::sort(s.columns.begin(), s.columns.end(), by_logit);
  int64_t token = draw(static_cast<int64_t>(s.columns.size()));
  if (token >= 0) return token;
  // rounding left the bands' columns just short of need: every column, sorted
  s.columns.resize(V);
  std::iota(s.columns.begin(), s.columns.end(), 0);
  std::sort(s.columns.begin(), s.columns.end(), by_logit);
  token = draw(V);
  return token >= 0 ? token : s.columns[V - 1];
}

template <typename Bits>
void sample_rows(const Bits* src, int64_t rows, int64_t V, const float* temp, const float* nucleus,
                 const double* uniform, int64_t* tokens) {
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    Scratch s;
    for (int64_t r = begin; r < end; ++r) {
      // a row with a NaN or an infinity gets -1, reported by the caller (torch's sampler raises on it too)
      tokens[r] = non_finite(src + r * V, V) ? -1 : sample_row(src + r * V, V, temp[r], nucleus[r], uniform[r], s);
    }
  });
}

}  // namespace

// logits [B, V] bf16 or float32; temperature, top_p [B] float32; u [B] float64 uniforms in [0, 1).
// Returns [B] int64.
torch::Tensor sample_next(torch::Tensor logits, torch::Tensor temperature, torch::Tensor top_p, torch::Tensor u) {
  const bool bf16 = logits.scalar_type() == at::kBFloat16;
  TORCH_CHECK((bf16 || logits.scalar_type() == at::kFloat) && logits.is_contiguous() && logits.device().is_cpu() &&
                  logits.dim() == 2,
              "sample_next: logits must be a contiguous bf16 or float32 CPU matrix");
  const int64_t rows = logits.size(0), V = logits.size(1);
  TORCH_CHECK(V > 0 && V < (int64_t{1} << 31), "sample_next: vocabulary size ", V);
  TORCH_CHECK(temperature.scalar_type() == at::kFloat && top_p.scalar_type() == at::kFloat &&
                  u.scalar_type() == at::kDouble,
              "sample_next: temperature and top_p float32, u float64");
  for (const auto* t : {&temperature, &top_p, &u}) {
    TORCH_CHECK(t->is_contiguous() && t->numel() == rows, "sample_next: one temperature, top_p and u per row");
  }
  auto out = torch::empty({rows}, logits.options().dtype(at::kLong));
  int64_t* tokens = out.data_ptr<int64_t>();
  if (bf16) {
    sample_rows(reinterpret_cast<const uint16_t*>(logits.data_ptr<at::BFloat16>()), rows, V,
                temperature.data_ptr<float>(), top_p.data_ptr<float>(), u.data_ptr<double>(), tokens);
  } else {
    sample_rows(reinterpret_cast<const uint32_t*>(logits.data_ptr<float>()), rows, V, temperature.data_ptr<float>(),
                top_p.data_ptr<float>(), u.data_ptr<double>(), tokens);
  }
  for (int64_t r = 0; r < rows; ++r) {
    TORCH_CHECK(tokens[r] >= 0, "sample_next: the logits of row ", r,
                " hold a NaN or an infinity (has the model diverged, e.g. after a bad training step?)");
  }
  return out;
}
