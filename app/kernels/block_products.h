// Products of a few rows, the building blocks of this extension's matrix products: a tile
// of up to 4 rows of x against 4 rows of (widened) weights, kept in vector registers, in
// float (GCC vector extensions, AVX-512 or AVX2 by the build's flags) and, where the CPU
// has AVX512-BF16, in bf16 with `vdpbf16ps`. The quantized kernels (quant_linear.cpp)
// widen their codes into such tiles; float_linear multiplies float weights in place.
// Included once, by quant_linear.cpp: its definitions are that translation unit's own.

#pragma once

#include <ATen/Parallel.h>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

namespace {

constexpr int64_t kRowTile = 4;  // W rows widened together for several x rows

inline float dot_f(const float* x, const float* w, int64_t k) {
  float acc[16] = {0};
  int64_t i = 0;
  for (; i + 16 <= k; i += 16) {
#pragma GCC unroll 16
    for (int j = 0; j < 16; ++j) acc[j] += x[i + j] * w[i + j];
  }
  float sum = 0.f;
  for (; i < k; ++i) sum += x[i] * w[i];
  for (int j = 0; j < 16; ++j) sum += acc[j];
  return sum;
}

// Vector width follows the build's ISA (GCC vector extensions, lowered to AVX-512 or AVX2).
#if defined(__AVX512F__)
constexpr int kVec = 16;
#else
constexpr int kVec = 8;
#endif
typedef float vfloat __attribute__((vector_size(kVec * sizeof(float))));

inline vfloat load(const float* p) {
  vfloat v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}

// A vector's lanes summed: a shuffle tree where the ISA has one (a lane-by-lane loop
// costs as much as the multiply-adds themselves when K is a few hundred, as in a small
// model's products of a few rows).
inline float hsum(vfloat v) {
#if defined(__AVX512F__)
  __m512 m;
  __builtin_memcpy(&m, &v, sizeof(m));
  return _mm512_reduce_add_ps(m);
#elif defined(__AVX2__)
  __m256 m;
  __builtin_memcpy(&m, &v, sizeof(m));
  const __m128 lo = _mm256_castps256_ps128(m), hi = _mm256_extractf128_ps(m, 1);
  __m128 s = _mm_add_ps(lo, hi);
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
#else
  float s = 0.f;
  for (int i = 0; i < kVec; ++i) s += v[i];
  return s;
#endif
}

// The lane sums of four vectors, written to out[0..3]: halves added, then `vhaddps` three
// times, about a third of the instructions of four separate reductions. Blocks reduce
// all their accumulators through this, with constant indices, even where fewer rows are
// wanted: reading only the first few of them (a count known at run time) made GCC keep
// the accumulator array in memory and store all 16 of them on every iteration.
inline void sum4(vfloat a, vfloat b, vfloat c, vfloat d, float* out) {
#if defined(__AVX512F__) || defined(__AVX2__)
  const auto fold = [](vfloat v) {  // to 8 lanes
#if defined(__AVX512F__)
    __m512 m;
    __builtin_memcpy(&m, &v, sizeof(m));
    return _mm256_add_ps(_mm512_castps512_ps256(m),
                         _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(m), 1)));
#else
    __m256 m;
    __builtin_memcpy(&m, &v, sizeof(m));
    return m;
#endif
  };
  const __m256 ab = _mm256_hadd_ps(fold(a), fold(b));  // a01 a23 b01 b23 | a45 a67 b45 b67
  const __m256 cd = _mm256_hadd_ps(fold(c), fold(d));
  const __m256 abcd = _mm256_hadd_ps(ab, cd);  // a b c d (lanes 0-3) | a b c d (lanes 4-7)
  _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1)));
#else
  out[0] = hsum(a), out[1] = hsum(b), out[2] = hsum(c), out[3] = hsum(d);
#endif
}

// Asks the cache for `bytes` from p, a line at a time. Written as an instruction:
// GCC 12 at -O2 and above dropped every __builtin_prefetch (and _mm_prefetch) in this
// translation unit's kernels.
inline void prefetch_bytes(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (int64_t b = 0; b < bytes; b += 64) asm volatile("prefetcht0 %0" : : "m"(*(c + b)));
}

// Asks for the same row of the next tile (kRowTile rows on, `row_bytes` each) while this
// tile is widened and multiplied. The tile's products read no memory, so without it the
// hardware prefetcher idles through them and the next tile's first loads wait on DRAM:
// measured on AMD Zen 5, half of the int8 several-row kernel's samples sat on its first
// load, and asking ahead made the 8-row int8 and int4 products 2.5x faster.
inline void prefetch_next_tile(const void* row, int64_t row_bytes, int64_t rows_left) {
  if (rows_left > kRowTile)
    prefetch_bytes(static_cast<const char*>(row) + kRowTile * row_bytes, row_bytes);
}

// Calls f(std::integral_constant<int, R>{}) with R = rows (1 to 4): a block's row count
// as a template argument, so a block of fewer rows keeps fewer accumulators.
template <typename F>
inline void with_rows(int rows, const F& f) {
  switch (rows) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    default: f(std::integral_constant<int, 4>{}); break;
  }
}

// y[i][j] = x_i . w_j for XR (<= 4) rows of x and 4 rows of (widened) w at once: up to 16
// vector accumulators, 4 + XR vector loads per 4 * XR multiply-adds. A block's row count
// is a template argument so that 5 rows cost a block of 4 and a block of 1, not two of 4
// (a speculative verification step scores 5): each output's sum is the same whatever its
// block's row count, so a row's result does not depend on its batch.
// x: XR rows of k floats, stride k; w: wr rows (<= 4) of k floats, stride k;
// out[i * out_stride + j]. k must be a multiple of kVec (checked by the caller).
template <int XR>
inline void block_rows(const float* x, const float* w, int wr, int64_t k, float* out,
                       int64_t out_stride) {
  vfloat acc[XR][4] = {};
  const float* wp[4];
  for (int j = 0; j < 4; ++j) wp[j] = w + std::min(j, wr - 1) * k;
  for (int64_t c = 0; c < k; c += kVec) {
    vfloat wv[4];
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) wv[j] = load(wp[j] + c);
#pragma GCC unroll 4
    for (int i = 0; i < XR; ++i) {
      const vfloat xv = load(x + i * k + c);
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) acc[i][j] += xv * wv[j];
    }
  }
#pragma GCC unroll 4
  for (int i = 0; i < XR; ++i) {
    float sums[4];
    sum4(acc[i][0], acc[i][1], acc[i][2], acc[i][3], sums);
    for (int j = 0; j < wr; ++j) out[i * out_stride + j] = sums[j];
  }
}

inline void block_4x4(const float* x, int xr, const float* w, int wr, int64_t k, float* out,
                      int64_t out_stride) {
  with_rows(xr, [&](auto rows) { block_rows<rows>(x, w, wr, k, out, out_stride); });
}

// Several rows of x against a tile of widened weight rows.
inline void tile_product(const float* x, int64_t m, const float* tile, int64_t rows,
                         int64_t k, float* y, int64_t n) {
  if (k % kVec) {
    for (int64_t row = 0; row < m; ++row)
      for (int64_t t = 0; t < rows; ++t) y[row * n + t] = dot_f(x + row * k, tile + t * k, k);
    return;
  }
  for (int64_t i = 0; i < m; i += 4)
    for (int64_t j = 0; j < rows; j += 4)
      block_4x4(x + i * k, static_cast<int>(std::min<int64_t>(4, m - i)), tile + j * k,
                static_cast<int>(std::min<int64_t>(4, rows - j)), k, y + i * n + j, n);
}

#if defined(__AVX512BF16__)
// The AVX512-BF16 path for several rows of a bf16 model (a decode batch): x stays bf16,
// a tile of weight rows is widened to bf16, and `vdpbf16ps` does 32 multiply-adds per
// instruction, twice the float FMA's 16. int8 codes are exact in bf16 (integers up to
// 256), so the int8 path rounds nothing but x, which the model already holds in bf16;
// int4 rows are widened to q * scale + min, rounded to bf16 (2^-9 relative, far below
// int4's own step).
#define LLM_BF16_DOT 1

inline __m512bh load_bh(const uint16_t* p) {
  const __m512i v = _mm512_loadu_si512(reinterpret_cast<const void*>(p));
  __m512bh out;
  __builtin_memcpy(&out, &v, sizeof(out));
  return out;
}

// x: XR (<= 4) rows of k bf16; w: wr (<= 4) rows of k bf16; k a multiple of 32. The row
// count is a template argument, as in block_rows.
template <int XR>
inline void block_rows_bf16(const uint16_t* x, const uint16_t* w, int wr, int64_t k,
                            float* out, int64_t out_stride) {
  __m512 acc[XR][4];
  for (int i = 0; i < XR; ++i)
    for (int j = 0; j < 4; ++j) acc[i][j] = _mm512_setzero_ps();
  const uint16_t* wp[4];
  for (int j = 0; j < 4; ++j) wp[j] = w + std::min(j, wr - 1) * k;
  for (int64_t c = 0; c < k; c += 32) {
    __m512bh wv[4];
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) wv[j] = load_bh(wp[j] + c);
#pragma GCC unroll 4
    for (int i = 0; i < XR; ++i) {
      const __m512bh xv = load_bh(x + i * k + c);
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], xv, wv[j]);
    }
  }
#pragma GCC unroll 4
  for (int i = 0; i < XR; ++i) {  // as in block_rows
    float sums[4];
    sum4(acc[i][0], acc[i][1], acc[i][2], acc[i][3], sums);  // __m512 is a vfloat here
    for (int j = 0; j < wr; ++j) out[i * out_stride + j] = sums[j];
  }
}

inline void block_4x4_bf16(const uint16_t* x, int xr, const uint16_t* w, int wr, int64_t k,
                           float* out, int64_t out_stride) {
  with_rows(xr, [&](auto rows) { block_rows_bf16<rows>(x, w, wr, k, out, out_stride); });
}

// y (m, n) = x (m, k, bf16) . W^T for W already in bf16: blocks read W's rows in place.
inline void bf16_products_in_place(const uint16_t* x, int64_t m, int64_t n, int64_t k,
                                   const uint16_t* w, float* y) {
  const int64_t grain = std::max<int64_t>(kRowTile, 16384 / std::max<int64_t>(k, 1));
  at::parallel_for(0, n, grain, [=](int64_t begin, int64_t end) {
    for (int64_t r0 = begin; r0 < end; r0 += kRowTile) {
      const int rows = static_cast<int>(std::min(kRowTile, end - r0));
      for (int t = 0; t < rows; ++t) prefetch_next_tile(w + (r0 + t) * k, 2 * k, n - r0 - t);
      for (int64_t i = 0; i < m; i += 4)
        block_4x4_bf16(x + i * k, static_cast<int>(std::min<int64_t>(4, m - i)), w + r0 * k,
                       rows, k, y + i * n + r0, n);
    }
  });
}

// y (m, n) = x (m, k, bf16) . W^T, W's rows widened to bf16 a tile at a time by
// `widen(row, dst)`, which returns the factor the row's dot products are multiplied by.
template <typename Widen>
void bf16_products(const uint16_t* x, int64_t m, int64_t n, int64_t k, float* y,
                   const Widen& widen) {
  const int64_t grain = std::max<int64_t>(kRowTile, 16384 / std::max<int64_t>(k, 1));
  at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
    std::vector<uint16_t> tile(kRowTile * k);
    float factor[kRowTile];
    for (int64_t r0 = begin; r0 < end; r0 += kRowTile) {
      const int64_t rows = std::min(kRowTile, end - r0);
      for (int64_t t = 0; t < rows; ++t) factor[t] = widen(r0 + t, tile.data() + t * k);
      for (int64_t i = 0; i < m; i += 4)
        for (int64_t j = 0; j < rows; j += 4)
          block_4x4_bf16(x + i * k, static_cast<int>(std::min<int64_t>(4, m - i)),
                         tile.data() + j * k, static_cast<int>(std::min<int64_t>(4, rows - j)),
                         k, y + i * n + r0 + j, n);
      for (int64_t i = 0; i < m; ++i)
        for (int64_t t = 0; t < rows; ++t) y[i * n + r0 + t] *= factor[t];
    }
  });
}
#endif

}  // namespace
