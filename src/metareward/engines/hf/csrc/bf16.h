// bf16 <-> float32 bit conversions shared by the decoding kernels (bf16 as its raw 16 bits).
#pragma once
#include <cstdint>
#include <cstring>

namespace metareward {

inline float bf16_to_float(uint16_t bits) {
  uint32_t u = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// Round to nearest even, as PyTorch does (finite inputs: the kernels are compiled with -ffast-math).
inline uint16_t float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  u += 0x7FFF + ((u >> 16) & 1);
  return static_cast<uint16_t>(u >> 16);
}

}  // namespace metareward
