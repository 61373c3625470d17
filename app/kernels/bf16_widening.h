// Quantized weight rows widened to bf16 for the AVX512-BF16 products of several rows
// (block_products.h's `bf16_products`): int8 codes as they are, int4 codes as
// q * scale + min. Included by quant_linear.cpp after block_products.h, whose
// LLM_BF16_DOT says whether the build has AVX512-BF16.

#pragma once

#include <c10/util/Half.h>

#include <cstdint>

#include "block_products.h"

namespace {

#if defined(LLM_BF16_DOT)
// One int8 row to bf16, 32 codes at a time: integers up to 256 are exact in bf16, so the
// conversion rounds nothing (k is a multiple of 32, checked by bf16_dot_serves).
inline void widen_i8_bf16(const int8_t* q, int64_t k, uint16_t* out) {
  for (int64_t i = 0; i < k; i += 32) {
    const __m256i codes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + i));
    const __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(codes)));
    const __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(codes, 1)));
    const __m512bh both = _mm512_cvtne2ps_pbh(hi, lo);  // lo in lanes 0-15, hi in 16-31
    _mm512_storeu_si512(out + i, reinterpret_cast<const __m512i&>(both));
  }
}

// One int4 row straight to bf16: w = q * scale + min rounded to nearest even, the value
// the float path computes, 32 codes an instruction. A group has only 16 distinct values,
// so they are computed once (one multiply-add and one conversion for the group) and each
// code looks its value up with `vpermw`, where widening every code through int32 and
// float costs about four times the instructions and a float copy of the row.
inline void widen_i4_bf16(const uint8_t* q, const c10::Half* scale, const c10::Half* mins,
                          int64_t groups, int64_t g, uint16_t* out) {
  const int64_t half = g / 2;
  const __m512 codes = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i low_nibble = _mm512_set1_epi16(0x0F);
  for (int64_t gi = 0; gi < groups; ++gi) {
    const __m512 values = _mm512_fmadd_ps(codes, _mm512_set1_ps(static_cast<float>(scale[gi])),
                                          _mm512_set1_ps(static_cast<float>(mins[gi])));
    __m256i table16;
    const __m256bh rounded = _mm512_cvtneps_pbh(values);
    __builtin_memcpy(&table16, &rounded, sizeof(table16));
    // Codes are 0..15, so only the table's lower half is ever indexed.
    const __m512i table = _mm512_castsi256_si512(table16);
    const uint8_t* qg = q + gi * half;
    uint16_t* o = out + gi * g;
    int64_t j = 0;
    for (; j + 32 <= half; j += 32) {
      const __m512i b = _mm512_cvtepu8_epi16(
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qg + j)));
      _mm512_storeu_si512(o + j, _mm512_permutexvar_epi16(_mm512_and_si512(b, low_nibble), table));
      _mm512_storeu_si512(o + half + j, _mm512_permutexvar_epi16(_mm512_srli_epi16(b, 4), table));
    }
    if (j < half) {  // half is a multiple of 16: at most one 16-byte step is left
      const __m256i b =
          _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qg + j)));
      const __m256i t = _mm512_castsi512_si256(table);
      const __m256i low = _mm256_and_si256(b, _mm512_castsi512_si256(low_nibble));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + j), _mm256_permutexvar_epi16(low, t));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + half + j),
                          _mm256_permutexvar_epi16(_mm256_srli_epi16(b, 4), t));
    }
  }
}
#endif

}  // namespace
