// Integer dot-product kernels for quantized weights: y (M, N) = x (M, K) . W^T with the
// activations quantized once per product to int8 in blocks of 32 (symmetric, one float
// scale per block), int32 accumulation of code products, and one float multiply per
// 4-byte lane of a block (lanes of one block share the scale).
//
// Why: the widening kernels (quant_linear.cpp) turn every weight code into a float and
// multiply-add in float; for int4 that is bound by the widening, not by memory (about
// 12 GB/s). Here a vector of 64 (AVX-512) or 32 (AVX2) weight bytes meets the
// activation codes in one `vpdpbusd` (AVX512-VNNI, AVX-VNNI) or `vpmaddubsw` +
// `vpmaddwd` (AVX2): u8 x s8 products summed four at a time into int32 lanes.
//
// int8 weights are signed; `vpdpbusd` multiplies an unsigned operand by a signed one, so
// the sign of the weight is moved onto the activation (|w| * (x * sign w), the sign
// trick): no extra copy of the weight and no offset correction.
//
// int4 weights (0..15, w = q * scale + min per group of G along K) keep the layout they
// are stored in (app/modeling/quantize.py: per group, G/2 bytes, byte j holding column j
// in its low nibble and column j + G/2 in its high nibble): the activations are the side
// that is rearranged, once per product, into two arrays in the weight's byte order (the
// columns that meet low nibbles, the columns that meet high nibbles). An activation block
// of 32 is the 16 low and the 16 high columns of one 16-byte run of a row's weight bytes,
// so one vector of weight bytes needs one pair of activation loads and no shuffles, and
// the weight needs no repacked second copy. The min term is sum_g min_g * (sum of the
// group's quantized activations), the sums kept per group when x is quantized.
//
// The vector path is chosen at compile time from the ISA macros (the build passes
// -mavx512vnni / -mavxvnni where the CPU has them): AVX512-VNNI, AVX-VNNI, AVX2, or a
// scalar fallback. Threads split the output features (at::parallel_for); several rows
// of x meet a tile of 4 weight rows at a time, each weight vector loaded and unpacked
// once for all rows.

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <c10/util/Half.h>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "int_dot_activations.h"

namespace {

constexpr int64_t kRowTile = 4;  // weight rows per tile in the several-rows kernel
constexpr int64_t kScalePad = 16;  // floats past a row's group scales a vector may read

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
#define IDOT_VECTOR 1
constexpr const char* kIsa = "avx512vnni";
constexpr int64_t kV = 64;  // weight bytes per vector
using vi = __m512i;
using vf = __m512;
inline vi load_i(const void* p) { return _mm512_loadu_si512(p); }
inline vf load_f(const float* p) { return _mm512_loadu_ps(p); }
inline vf zero_f() { return _mm512_setzero_ps(); }
inline vf mul_f(vf a, vf b) { return _mm512_mul_ps(a, b); }
inline vf fma_i(vi acc, vf scale, vf total) {
  return _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), scale, total);
}
inline float hsum(vf v) { return _mm512_reduce_add_ps(v); }
inline vi lane_index(const int32_t* idx) { return _mm512_loadu_si512(idx); }
inline vf expand(const float* s, vi idx) { return _mm512_permutexvar_ps(idx, load_f(s)); }
// int4: (low nibbles . xlo) + (high nibbles . xhi), per int32 lane.
struct W4 { vi lo, hi; };
inline W4 prep4(vi w) {
  const vi mask = _mm512_set1_epi8(0x0F);
  return {_mm512_and_si512(w, mask), _mm512_and_si512(_mm512_srli_epi16(w, 4), mask)};
}
inline vi dot4(const W4& w, vi xlo, vi xhi) {
  return _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), w.lo, xlo), w.hi,
                             xhi);
}
// int8: |w| . (x negated where w < 0).
struct W8 { vi mag; __mmask64 neg; };
inline W8 prep8(vi w) { return {_mm512_abs_epi8(w), _mm512_movepi8_mask(w)}; }
inline vi dot8(const W8& w, vi x) {
  const vi signed_x = _mm512_mask_sub_epi8(x, w.neg, _mm512_setzero_si512(), x);
  return _mm512_dpbusd_epi32(_mm512_setzero_si512(), w.mag, signed_x);
}
#elif defined(__AVX2__) && defined(__FMA__)
#define IDOT_VECTOR 1
#if defined(__AVXVNNI__)
constexpr const char* kIsa = "avxvnni";
#else
constexpr const char* kIsa = "avx2";
#endif
constexpr int64_t kV = 32;
using vi = __m256i;
using vf = __m256;
inline vi load_i(const void* p) { return _mm256_loadu_si256(static_cast<const vi*>(p)); }
inline vf load_f(const float* p) { return _mm256_loadu_ps(p); }
inline vf zero_f() { return _mm256_setzero_ps(); }
inline vf mul_f(vf a, vf b) { return _mm256_mul_ps(a, b); }
inline vf fma_i(vi acc, vf scale, vf total) {
  return _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc), scale, total);
}
inline float hsum(vf v) {
  const __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  __m128 s = _mm_add_ps(lo, hi);
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline vi lane_index(const int32_t* idx) { return load_i(idx); }
inline vf expand(const float* s, vi idx) { return _mm256_permutevar8x32_ps(load_f(s), idx); }
// u8 x s8 pairs into int32 lanes: one instruction with AVX-VNNI; with AVX2 the pairs
// sum into int16 first (no overflow: at most 2 * 127 * 127 for int8, 4 * 15 * 127 for
// the two nibble products of int4), then into int32.
inline vi dot_add(vi acc, vi u, vi s) {
#if defined(__AVXVNNI__)
  return _mm256_dpbusd_avx_epi32(acc, u, s);
#else
  return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s),
                                                 _mm256_set1_epi16(1)));
#endif
}
struct W4 { vi lo, hi; };
inline W4 prep4(vi w) {
  const vi mask = _mm256_set1_epi8(0x0F);
  return {_mm256_and_si256(w, mask), _mm256_and_si256(_mm256_srli_epi16(w, 4), mask)};
}
inline vi dot4(const W4& w, vi xlo, vi xhi) {
#if defined(__AVXVNNI__)
  return dot_add(dot_add(_mm256_setzero_si256(), w.lo, xlo), w.hi, xhi);
#else
  const vi pairs = _mm256_add_epi16(_mm256_maddubs_epi16(w.lo, xlo),
                                    _mm256_maddubs_epi16(w.hi, xhi));
  return _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
#endif
}
struct W8 { vi mag, w; };
inline W8 prep8(vi w) { return {_mm256_abs_epi8(w), w}; }
inline vi dot8(const W8& w, vi x) {
  return dot_add(_mm256_setzero_si256(), w.mag, _mm256_sign_epi8(x, w.w));
}
#else
constexpr const char* kIsa = "scalar";
constexpr int64_t kV = 16;  // the kernels' unit of work; the loops below are plain C++
#endif

constexpr int64_t kLanes = kV / 4;

// float16 -> float32 for a row's group scales and mins (a dozen values at a 134M model's
// widths: a scalar tail would cost as much as the vectors, so AVX-512 masks it instead).
void halves_to_floats(const c10::Half* src, int64_t count, float* dst) {
  int64_t i = 0;
#if defined(__AVX512F__) && defined(__AVX512BW__)
  for (; i < count; i += 16) {
    const __mmask16 mask = count - i >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (count - i)) - 1);
    const __m256i h = _mm256_maskz_loadu_epi16(mask, src + i);
    _mm512_mask_storeu_ps(dst + i, mask, _mm512_cvtph_ps(h));
  }
#elif defined(__F16C__)
  for (; i + 8 <= count; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(
                                  reinterpret_cast<const __m128i*>(src + i))));
#endif
  for (; i < count; ++i) dst[i] = static_cast<float>(src[i]);
}

// ------------------------------------------------------------------------ int8 weights

// One block of int8 codes (32 weights against 32 activations), in plain C++: the scalar
// build's loop, and the vector builds' tail where K is no whole number of vectors.
inline int32_t block_dot8(const int8_t* w, const int8_t* x) {
  int32_t acc = 0;
  for (int64_t t = 0; t < kBlock; ++t) acc += static_cast<int32_t>(w[t]) * x[t];
  return acc;
}

// One 16-byte run of int4 codes against its activation block (low and high columns).
inline int32_t run_dot4(const uint8_t* w, const int8_t* lo, const int8_t* hi) {
  int32_t acc = 0;
  for (int64_t t = 0; t < 16; ++t) acc += (w[t] & 0x0F) * lo[t] + (w[t] >> 4) * hi[t];
  return acc;
}

#if defined(IDOT_VECTOR)
// Runs `tile.template run<XR>(i0)` for the activation rows in chunks of up to 4: the
// chunk size a compile-time constant, so the XR x 4 accumulators stay in registers.
template <typename Tile>
void in_row_chunks(int64_t xr, const Tile& tile) {
  for (int64_t i0 = 0; i0 < xr; i0 += 4) {
    switch (std::min<int64_t>(4, xr - i0)) {
      case 1: tile.template run<1>(i0); break;
      case 2: tile.template run<2>(i0); break;
      case 3: tile.template run<3>(i0); break;
      default: tile.template run<4>(i0); break;
    }
  }
}

// XR activation rows (from `row`) against 4 weight rows; a tile of fewer weight rows
// repeats its last one (computed, not stored) so the loops keep their constant bounds.
struct Int8Tile {
  CodeRows a;
  int64_t x_row;
  const int8_t* w[kRowTile];
  int64_t wr;
  const float* w_scale;
  float* y;
  int64_t ys;

  template <int XR>
  void run(int64_t i0) const {
    const int64_t k = a.k;
    const int8_t* xq[XR];
    const float* xs[XR];
    for (int i = 0; i < XR; ++i) {
      xq[i] = a.q + (x_row + i0 + i) * k;
      xs[i] = a.lane_scale + (x_row + i0 + i) * a.lanes;
    }
    vf total[XR][kRowTile];
    for (int i = 0; i < XR; ++i)
      for (int j = 0; j < kRowTile; ++j) total[i][j] = zero_f();
    const int64_t whole = k - k % kV;
    for (int64_t p = 0; p < whole; p += kV) {
      W8 wv[kRowTile];
      for (int j = 0; j < kRowTile; ++j) wv[j] = prep8(load_i(w[j] + p));
      for (int i = 0; i < XR; ++i) {
        const vi xv = load_i(xq[i] + p);
        const vf scale = load_f(xs[i] + p / 4);
        for (int j = 0; j < kRowTile; ++j) total[i][j] = fma_i(dot8(wv[j], xv), scale, total[i][j]);
      }
    }
    for (int i = 0; i < XR; ++i)
      for (int64_t j = 0; j < wr; ++j) {
        float sum = hsum(total[i][j]);
        for (int64_t b = whole; b < k; b += kBlock)  // the tail: blocks short of a vector
          sum += static_cast<float>(block_dot8(w[j] + b, xq[i] + b)) * xs[i][b / 4];
        y[(i0 + i) * ys + j] = sum * w_scale[j];
      }
  }
};
#endif

// y[i * ys + j] for rows i < xr of the activations from x_row, weight rows j < wr.
void int8_tile(CodeRows a, int64_t x_row, int64_t xr, const int8_t* w, int64_t wr,
               const float* w_scale, float* y, int64_t ys) {
  const int64_t k = a.k;
#if defined(IDOT_VECTOR)
  Int8Tile tile{a, x_row, {}, wr, w_scale, y, ys};
  for (int64_t j = 0; j < kRowTile; ++j) tile.w[j] = w + std::min(j, wr - 1) * k;
  in_row_chunks(xr, tile);
#else
  for (int64_t i = 0; i < xr; ++i) {
    const int64_t row = x_row + i;
    for (int64_t j = 0; j < wr; ++j) {
      float total = 0.f;
      for (int64_t b = 0; b < k; b += kBlock)
        total += static_cast<float>(block_dot8(w + j * k + b, a.q + row * k + b)) *
                 a.lane_scale[row * a.lanes + b / 4];
      y[i * ys + j] = total * w_scale[j];
    }
  }
#endif
}

// ------------------------------------------------------------------------ int4 weights

// Lane l of a vector of weight bytes at a multiple of kV lies in group (4 l) / (G / 2)
// counted from the vector's first group (0 for every lane where a group spans the vector).
struct GroupLanes {
  int32_t index[16] = {0};
  explicit GroupLanes(int64_t g) {
    for (int64_t l = 0; l < kLanes; ++l) index[l] = static_cast<int32_t>((4 * l) / (g / 2));
  }
};

// One weight row's group scales as floats (padded for vector reads), and its min term
// sum_g min_g * group_sum_g for each activation row.
struct RowScales {
  std::vector<float> scale, mins;
  explicit RowScales(int64_t groups) : scale(groups + kScalePad, 0.f), mins(groups, 0.f) {}
  void load(const c10::Half* s, const c10::Half* mn, int64_t groups) {
    halves_to_floats(s, groups, scale.data());
    halves_to_floats(mn, groups, mins.data());
  }
  float min_term(CodeRows a, int64_t row, int64_t groups) const {
    float total = 0.f;
    const float* sums = a.group_sum + row * groups;
    for (int64_t gi = 0; gi < groups; ++gi) total += mins[gi] * sums[gi];
    return total;
  }
};

#if defined(IDOT_VECTOR)
struct Int4Tile {
  CodeRows a;
  int64_t x_row;
  const uint8_t* w[kRowTile];
  const RowScales* scales[kRowTile];
  const GroupLanes* lanes;  // made once per product: 16 integer divisions
  int64_t wr, g;
  float* y;
  int64_t ys;

  template <int XR>
  void run(int64_t i0) const {
    const int64_t bytes = a.k / 2, half = g / 2, groups = a.k / g;
    const vi index = lane_index(lanes->index);
    const int8_t* xlo[XR];
    const int8_t* xhi[XR];
    const float* xs[XR];
    for (int i = 0; i < XR; ++i) {
      xlo[i] = a.q + (x_row + i0 + i) * bytes;
      xhi[i] = a.hi + (x_row + i0 + i) * bytes;
      xs[i] = a.lane_scale + (x_row + i0 + i) * a.lanes;
    }
    vf total[XR][kRowTile];
    for (int i = 0; i < XR; ++i)
      for (int j = 0; j < kRowTile; ++j) total[i][j] = zero_f();
    const int64_t whole = bytes - bytes % kV;
    for (int64_t p = 0; p < whole; p += kV) {
      W4 wv[kRowTile];
      vf ws[kRowTile];
      for (int j = 0; j < kRowTile; ++j) {
        wv[j] = prep4(load_i(w[j] + p));
        ws[j] = expand(scales[j]->scale.data() + p / half, index);
      }
      for (int i = 0; i < XR; ++i) {
        const vi lo = load_i(xlo[i] + p), hi = load_i(xhi[i] + p);
        const vf x_scale = load_f(xs[i] + p / 4);
        for (int j = 0; j < kRowTile; ++j)
          total[i][j] = fma_i(dot4(wv[j], lo, hi), mul_f(x_scale, ws[j]), total[i][j]);
      }
    }
    for (int i = 0; i < XR; ++i)
      for (int64_t j = 0; j < wr; ++j) {
        float sum = hsum(total[i][j]);
        for (int64_t p = whole; p < bytes; p += 16)  // the tail: runs short of a vector
          sum += static_cast<float>(run_dot4(w[j] + p, xlo[i] + p, xhi[i] + p)) *
                 xs[i][p / 4] * scales[j]->scale[p / half];
        y[(i0 + i) * ys + j] = sum + scales[j]->min_term(a, x_row + i0 + i, groups);
      }
  }
};
#endif

void int4_tile(CodeRows a, int64_t x_row, int64_t xr, const uint8_t* w, int64_t wr,
               const RowScales* scales, const GroupLanes& lanes, int64_t g, float* y,
               int64_t ys) {
  const int64_t k = a.k, bytes = k / 2;
#if defined(IDOT_VECTOR)
  Int4Tile tile{a, x_row, {}, {}, &lanes, wr, g, y, ys};
  for (int64_t j = 0; j < kRowTile; ++j) {
    tile.w[j] = w + std::min(j, wr - 1) * bytes;
    tile.scales[j] = scales + std::min(j, wr - 1);
  }
  in_row_chunks(xr, tile);
#else
  (void)lanes;  // the vector loop's lane map
  const int64_t half = g / 2, groups = k / g;
  for (int64_t i = 0; i < xr; ++i) {
    const int64_t row = x_row + i;
    for (int64_t j = 0; j < wr; ++j) {
      float total = 0.f;
      for (int64_t p = 0; p < bytes; p += 16)
        total += static_cast<float>(run_dot4(w + j * bytes + p, a.q + row * bytes + p,
                                             a.hi + row * bytes + p)) *
                 a.lane_scale[row * a.lanes + p / 4] * scales[j].scale[p / half];
      y[i * ys + j] = total + scales[j].min_term(a, row, groups);
    }
  }
#endif
}

// ------------------------------------------------------------------------ the ops

void check_x(const torch::Tensor& x, int64_t k, std::initializer_list<torch::Tensor> weights) {
  TORCH_CHECK(x.device().is_cpu(), "x must be on the CPU, not ", x.device());
  for (const torch::Tensor& t : weights)
    TORCH_CHECK(t.device().is_cpu(), "the quantized weight tensors must be on the CPU");
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == k, "x must have ", k, " features");
  TORCH_CHECK(x.scalar_type() == torch::kFloat || x.scalar_type() == torch::kBFloat16 ||
                  x.scalar_type() == torch::kHalf,
              "x must be float32, bfloat16 or float16, not ", x.scalar_type());
}

// The result (..., n) in x's dtype, and where the kernels write it as float: straight
// into a float32 result, else into `buffer`, which `finish` converts (a plain loop, not
// another torch op).
struct Output {
  torch::Tensor out;
  std::unique_ptr<float[]> buffer;
  float* data = nullptr;

  Output(const torch::Tensor& x, int64_t n) {
    std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
    shape.back() = n;
    out = torch::empty(shape, x.options());
    if (out.scalar_type() == torch::kFloat) {
      data = out.data_ptr<float>();
    } else {
      buffer.reset(new float[out.numel()]);
      data = buffer.get();
    }
  }

  torch::Tensor finish() {
    const int64_t count = out.numel();
    if (out.scalar_type() == torch::kBFloat16) {
      c10::BFloat16* p = out.data_ptr<c10::BFloat16>();
      for (int64_t i = 0; i < count; ++i) p[i] = c10::BFloat16(data[i]);
    } else if (out.scalar_type() == torch::kHalf) {
      c10::Half* p = out.data_ptr<c10::Half>();
      for (int64_t i = 0; i < count; ++i) p[i] = c10::Half(data[i]);
    }
    return out;
  }
};

// Splits the weight rows between threads, tiles of kRowTile rows each. `tile` captures by
// value, and each thread runs its own copy: what a tile reads besides the weights is then
// in the thread's own stack. (Read through references into the calling thread's stack,
// beside lines that thread writes while it runs its share, such operands bounce between
// the cores; app/kernels/paged_attention.cpp measured two threads taking as long as one
// that way.)
template <typename Tile>
void for_row_tiles(int64_t n, int64_t row_bytes, const Tile& tile) {
  const int64_t grain = std::max<int64_t>(kRowTile, 16384 / std::max<int64_t>(row_bytes, 1));
  at::parallel_for(0, n, grain, [&tile](int64_t begin, int64_t end) {
    const Tile own = tile;
    for (int64_t r0 = begin; r0 < end; r0 += kRowTile) own(r0, std::min(kRowTile, end - r0));
  });
}

}  // namespace

// x (..., K) float32/bfloat16/float16; q (N, K) int8; scale (N) float32 -> (..., N) in
// x's dtype. K a multiple of 32.
torch::Tensor idot_int8_linear(const torch::Tensor& x, const torch::Tensor& q,
                               const torch::Tensor& scale) {
  TORCH_CHECK(q.scalar_type() == torch::kChar && q.dim() == 2 && q.is_contiguous(),
              "q must be a contiguous (N, K) int8 tensor");
  const int64_t n = q.size(0), k = q.size(1);
  check_x(x, k, {q, scale});
  TORCH_CHECK(k % kBlock == 0, "the integer kernel needs K a multiple of ", kBlock,
              ", not ", k);
  TORCH_CHECK(scale.scalar_type() == torch::kFloat && scale.is_contiguous() &&
                  scale.dim() == 1 && scale.size(0) == n,
              "scale must be a contiguous float32 tensor of ", n, " values");
  const torch::Tensor xc = x.contiguous();
  const int64_t m = x.numel() / k;
  Activations a;
  with_rows(xc, [&](const auto* rows) { a = quantize_int8_rows(rows, m, k); });
  Output result(x, n);
  float* y = result.data;
  const int8_t* qp = q.data_ptr<int8_t>();
  const float* sp = scale.data_ptr<float>();
  const CodeRows codes = a.rows();
  for_row_tiles(n, k, [=](int64_t r0, int64_t rows) {
    int8_tile(codes, 0, m, qp + r0 * k, rows, sp + r0, y + r0, n);
  });
  return result.finish();
}

// x (..., K); q (N, K/2) uint8 (quantize.py's layout); scale, mins (N, K/G) float16 ->
// (..., N) in x's dtype. G in 32..256, a multiple of 32.
torch::Tensor idot_int4_linear(const torch::Tensor& x, const torch::Tensor& q,
                               const torch::Tensor& scale, const torch::Tensor& mins,
                               int64_t group) {
  TORCH_CHECK(q.scalar_type() == torch::kByte && q.dim() == 2 && q.is_contiguous(),
              "q must be a contiguous (N, K/2) uint8 tensor");
  TORCH_CHECK(group >= 32 && group <= 256 && group % 32 == 0,
              "group size must be a multiple of 32, at most 256, not ", group);
  const int64_t n = q.size(0), k = q.size(1) * 2, groups = k / group;
  check_x(x, k, {q, scale, mins});
  TORCH_CHECK(k % group == 0, "the group size ", group, " does not divide ", k,
              " input features");
  TORCH_CHECK(scale.scalar_type() == torch::kHalf && mins.scalar_type() == torch::kHalf &&
                  scale.is_contiguous() && mins.is_contiguous() && scale.dim() == 2 &&
                  mins.dim() == 2 && scale.size(0) == n && mins.size(0) == n &&
                  scale.size(1) == groups && mins.size(1) == groups,
              "scale and mins must be contiguous float16 (", n, ", ", groups, ")");
  const torch::Tensor xc = x.contiguous();
  const int64_t m = x.numel() / k;
  Activations a;
  with_rows(xc, [&](const auto* rows) { a = quantize_int4_rows(rows, m, k, group); });
  Output result(x, n);
  float* y = result.data;
  const uint8_t* qp = q.data_ptr<uint8_t>();
  const c10::Half* sp = scale.data_ptr<c10::Half>();
  const c10::Half* mp = mins.data_ptr<c10::Half>();
  const GroupLanes lanes(group);
  const CodeRows codes = a.rows();
  for_row_tiles(n, k / 2, [=](int64_t r0, int64_t rows) {
    thread_local std::vector<RowScales> scales;
    if (scales.size() != static_cast<size_t>(kRowTile) ||
        scales[0].mins.size() != static_cast<size_t>(groups))
      scales.assign(kRowTile, RowScales(groups));
    for (int64_t j = 0; j < rows; ++j)
      scales[j].load(sp + (r0 + j) * groups, mp + (r0 + j) * groups, groups);
    int4_tile(codes, 0, m, qp + r0 * (k / 2), rows, scales.data(), lanes, group, y + r0, n);
  });
  return result.finish();
}

// The vector width the kernels step by (bytes of weight codes per vector; a row's bytes
// past the last whole vector run through a scalar tail) and the ISA they were built for.
int64_t idot_width() { return kV; }
std::string idot_isa() { return kIsa; }

TORCH_LIBRARY_FRAGMENT(llm_quant, m) {
  m.def("idot_int8_linear(Tensor x, Tensor q, Tensor scale) -> Tensor");
  m.def("idot_int4_linear(Tensor x, Tensor q, Tensor scale, Tensor mins, int group) -> Tensor");
  m.def("idot_width() -> int", &idot_width);
  m.def("idot_isa() -> str", &idot_isa);
}

TORCH_LIBRARY_IMPL(llm_quant, CPU, m) {
  m.impl("idot_int8_linear", &idot_int8_linear);
  m.impl("idot_int4_linear", &idot_int4_linear);
}
