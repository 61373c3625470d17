// The activations' side of the integer dot-product kernels (int_dot.cpp): x's rows
// quantized once per product to int8 in blocks of 32 (symmetric, one float scale a
// block), in the order the kernels read them: natural for int8 weights, and for int4
// weights split into the columns that meet low and high nibbles in the weight's byte
// order. Included once, by int_dot.cpp: its definitions are that translation unit's own.

#pragma once

#include <torch/extension.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

constexpr int64_t kBlock = 32;  // activations per scale

// The quantized rows as the kernels read them: pointers and sizes, passed by value so that
// each thread holds its own copy (see for_row_tiles).
struct CodeRows {
  const int8_t* q;
  const int8_t* hi;
  const float* lane_scale;
  const float* group_sum;
  int64_t m, k, lanes;
};

// x's rows quantized: int8 codes, in natural order (int8 weights) or split into the
// columns meeting low and high nibbles in the weight's byte order (int4); one float scale
// per block of 32, and per 4-byte lane (what the vector loop multiplies by).
struct Activations {
  int64_t m = 0, k = 0;
  std::vector<int8_t> q, hi;  // int8: q (m, k); int4: q = low columns, hi, each (m, k / 2)
  std::vector<float> lane_scale;  // (m, lanes per row)
  std::vector<float> group_sum;  // int4: (m, k / G), sum of the group's x as quantized
  int64_t lanes = 0;
  CodeRows rows() const {
    return {q.data(), hi.data(), lane_scale.data(), group_sum.data(), m, k, lanes};
  }
};

// Scale and codes of one block of 32 values: scale = max|x| / 127, code = round(x * 127 /
// max|x|). Returns the block's scale and adds the codes' sum to `sum`. Fixed-size loops
// over plain arrays, so the compiler vectorises them (this runs once per product, on one
// thread, before the threads split the weight rows).
inline float quantize_block(const float* v, int8_t* codes, int64_t& sum) {
  float amax = 0.f;
  for (int64_t t = 0; t < kBlock; ++t) amax = std::max(amax, std::fabs(v[t]));
  if (amax == 0.f) {
    std::memset(codes, 0, kBlock);
    return 0.f;
  }
  // Through a volatile: -ffast-math would otherwise fold x * (127 / amax) into
  // (x * 127) / amax, which rounds ties (x = amax / 2 in bf16) the other way than the
  // documented formula and the tests' reference.
  volatile float stored = 127.f / amax;
  const float inverse = stored;
  int32_t total = 0;
  for (int64_t t = 0; t < kBlock; ++t) {
    const int32_t code = static_cast<int32_t>(std::nearbyint(v[t] * inverse));
    codes[t] = static_cast<int8_t>(code);
    total += code;
  }
  sum += total;
  return amax / 127.f;
}

// Runs `body(pointer)` on x's data as its own element type (float, BFloat16, Half): the
// activations are read once, by the quantization, with no converted copy (a torch op
// for the conversion costs microseconds, ~50 times a decode step).
template <typename Body>
void with_rows(const torch::Tensor& x, const Body& body) {
  if (x.scalar_type() == torch::kBFloat16) {
    body(x.data_ptr<c10::BFloat16>());
  } else if (x.scalar_type() == torch::kHalf) {
    body(x.data_ptr<c10::Half>());
  } else {
    body(x.data_ptr<float>());
  }
}

template <typename T>
Activations quantize_int8_rows(const T* x, int64_t m, int64_t k) {
  Activations a;
  a.m = m;
  a.k = k;
  a.lanes = k / 4;
  a.q.resize(m * k);
  a.lane_scale.resize(m * a.lanes);
  for (int64_t r = 0; r < m; ++r)
    for (int64_t b = 0; b < k / kBlock; ++b) {
      const T* src = x + r * k + b * kBlock;
      float v[kBlock];
      for (int64_t t = 0; t < kBlock; ++t) v[t] = static_cast<float>(src[t]);
      int64_t sum = 0;
      const float s = quantize_block(v, a.q.data() + r * k + b * kBlock, sum);
      for (int64_t l = 0; l < kBlock / 4; ++l) a.lane_scale[r * a.lanes + b * 8 + l] = s;
    }
  return a;
}

template <typename T>
Activations quantize_int4_rows(const T* x, int64_t m, int64_t k, int64_t g) {
  Activations a;
  a.m = m;
  a.k = k;
  a.lanes = k / 8;  // lanes over the k / 2 weight bytes of a row
  a.q.resize(m * k / 2);
  a.hi.resize(m * k / 2);
  a.lane_scale.resize(m * a.lanes);
  const int64_t groups = k / g, half = g / 2;
  a.group_sum.assign(m * groups, 0.f);
  for (int64_t r = 0; r < m; ++r)
    for (int64_t gi = 0; gi < groups; ++gi)
      for (int64_t run = 0; run < half / 16; ++run) {
        // Bytes p .. p + 15 of the row: columns gi*g + run*16 + t (low nibbles) and
        // gi*g + half + run*16 + t (high nibbles).
        const int64_t p = gi * half + run * 16;
        const T* lo = x + r * k + gi * g + run * 16;
        const T* hi = lo + half;
        int8_t* qlo = a.q.data() + r * k / 2 + p;
        int8_t* qhi = a.hi.data() + r * k / 2 + p;
        float v[kBlock];
        for (int64_t t = 0; t < 16; ++t) {
          v[t] = static_cast<float>(lo[t]);
          v[16 + t] = static_cast<float>(hi[t]);
        }
        int8_t codes[kBlock];
        int64_t sum = 0;
        const float s = quantize_block(v, codes, sum);
        std::memcpy(qlo, codes, 16);
        std::memcpy(qhi, codes + 16, 16);
        a.group_sum[r * groups + gi] += s * static_cast<float>(sum);
        for (int64_t l = 0; l < 4; ++l) a.lane_scale[r * a.lanes + p / 4 + l] = s;
      }
  return a;
}

}  // namespace
