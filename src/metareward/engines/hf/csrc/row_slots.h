// Row slots shared by the decoding kernels: batch row b keeps its continuation keys/values in row
// slots[b] of the cache's row buffers. Finished rows leave the batch by leaving this map (no buffer is
// copied); the cache gathers the live slots when its buffers next grow.
#pragma once
#include <torch/extension.h>

#include <cstdint>
#include <vector>

namespace metareward {

// slots[B] int64, each in [0, buffer_rows), and distinct where the kernel writes through them (two rows on
// one slot would write the same positions); a kernel that only reads (the attention) lets rows share a
// slot: the several queries a row is fed at once (FusedDecoder.kernel_feed).
inline const int64_t* checked_slots(const torch::Tensor& slots, int64_t rows, int64_t buffer_rows, const char* name,
                                    bool distinct = true) {
  TORCH_CHECK(slots.scalar_type() == at::kLong && slots.is_contiguous() && slots.device().is_cpu() && slots.dim() == 1,
              name, ": slots must be a contiguous int64 CPU vector");
  TORCH_CHECK(slots.size(0) == rows, name, ": ", slots.size(0), " slots for ", rows, " rows");
  const int64_t* s = slots.data_ptr<int64_t>();
  std::vector<bool> taken(static_cast<size_t>(buffer_rows), false);
  for (int64_t b = 0; b < rows; ++b) {
    TORCH_CHECK(s[b] >= 0 && s[b] < buffer_rows, name, ": slot ", s[b], " of row ", b, " outside the ", buffer_rows,
                " buffer rows");
    TORCH_CHECK(!distinct || !taken[s[b]], name, ": slot ", s[b], " given to two rows");
    taken[s[b]] = true;
  }
  return s;
}

}  // namespace metareward
