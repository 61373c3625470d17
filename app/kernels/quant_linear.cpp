// Weight-only quantized matrix products for the CPU: y (M, N) = x (M, K) . W^T, with W
// stored as int8 per output channel or as int4 in groups along K.
//
// Batch-1 decode streams every weight once per token, so the bytes read decide the
// speed. These loops read the quantized bytes once, widen them to float in registers and
// multiply-add against x in float. They are written so that GCC vectorises them (the
// build passes -O3 -ffast-math and the ISA flags of the CPU at hand: AVX2+FMA or
// AVX-512), with several independent accumulators so the FMA latency is hidden.
//
// Threads split the output features N (at::parallel_for, torch's own pool), each thread
// walking its rows of W once. With several rows of x, a tile of W rows is widened to
// float once and reused for every row of x, so the conversion cost is paid once per
// weight, not once per weight and row.
//
// int4 layout (see app/modeling/quantize.py): for each group of G columns, G/2 bytes;
// byte j holds column j of the group in its low nibble and column j + G/2 in its high
// nibble. w = q * scale + min (q in 0..15), scale and min in float16 per (row, group).

#include <torch/extension.h>
#include <c10/util/Half.h>

#include <initializer_list>

#include "block_products.h"  // the vector primitives and the float / bf16 tile products
#include "bf16_widening.h"   // int8 / int4 rows to bf16 for the AVX512-BF16 products

namespace {

inline float dot_i8(const float* x, const int8_t* q, int64_t k) {
  float acc[16] = {0};
  int64_t i = 0;
  for (; i + 16 <= k; i += 16) {
#pragma GCC unroll 16
    for (int j = 0; j < 16; ++j) acc[j] += x[i + j] * static_cast<float>(q[i + j]);
  }
  float sum = 0.f;
  for (; i < k; ++i) sum += x[i] * static_cast<float>(q[i]);
  for (int j = 0; j < 16; ++j) sum += acc[j];
  return sum;
}

typedef uint8_t vbytes __attribute__((vector_size(kVec)));
typedef int32_t vint __attribute__((vector_size(kVec * sizeof(int32_t))));

inline vfloat widen(vbytes b) {
  return __builtin_convertvector(__builtin_convertvector(b, vint), vfloat);
}

inline vbytes load_bytes(const uint8_t* p) {
  vbytes v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}

// Dot product of x (one group-aligned row) with one int4 row: sum over groups of
// scale * (x_g . q_g) + min * sum(x_g), xsum holding sum(x_g) per group. The codes are
// unpacked a vector at a time (one mask, one shift), widened to float in registers, and
// the per-group scale is applied to a vector accumulator: one horizontal sum per row.
inline float dot_i4(const float* x, const float* xsum, const uint8_t* q,
                    const c10::Half* scale, const c10::Half* mins, int64_t groups,
                    int64_t g) {
  const int64_t half = g / 2;
  vfloat total = {};
  float offset = 0.f;
  for (int64_t gi = 0; gi < groups; ++gi) {
    const uint8_t* qg = q + gi * half;
    const float* xg = x + gi * g;
    vfloat acc = {};
    for (int64_t j = 0; j < half; j += kVec) {
      const vbytes b = load_bytes(qg + j);
      acc += load(xg + j) * widen(b & 0x0F) + load(xg + half + j) * widen(b >> 4);
    }
    total += acc * static_cast<float>(scale[gi]);
    offset += static_cast<float>(mins[gi]) * xsum[gi];
  }
  return hsum(total) + offset;
}

// y[r] for weight rows begin <= r < end, one row of x; every operand by value, so a thread
// keeps them in its own registers and stack.
void int4_row_dots(const float* x, const float* xsum, const uint8_t* q, const c10::Half* scale,
                   const c10::Half* mins, int64_t groups, int64_t g, float* y, int64_t begin,
                   int64_t end) {
  const int64_t row_bytes = groups * g / 2;
  for (int64_t r = begin; r < end; ++r)
    y[r] = dot_i4(x, xsum, q + r * row_bytes, scale + r * groups, mins + r * groups, groups, g);
}

void widen_i4(const uint8_t* q, const c10::Half* scale, const c10::Half* mins,
              int64_t groups, int64_t g, float* out) {
  const int64_t half = g / 2;
  for (int64_t gi = 0; gi < groups; ++gi) {
    const float s = static_cast<float>(scale[gi]);
    const float m = static_cast<float>(mins[gi]);
    const uint8_t* qg = q + gi * half;
    float* o = out + gi * g;
    for (int64_t j = 0; j < half; j += kVec) {
      const vbytes b = load_bytes(qg + j);
      const vfloat lo = widen(b & 0x0F) * s + m;
      const vfloat hi = widen(b >> 4) * s + m;
      __builtin_memcpy(o + j, &lo, sizeof(lo));
      __builtin_memcpy(o + half + j, &hi, sizeof(hi));
    }
  }
}

// x's rows as float: x itself when it is contiguous float32, else a converted copy
// (bf16 and fp16 activations), converted here rather than through another torch op.
struct FloatRows {
  std::vector<float> copy;
  const float* data = nullptr;
  int64_t m = 0;
};

FloatRows float_rows(const torch::Tensor& x) {
  TORCH_CHECK(x.scalar_type() == torch::kFloat || x.scalar_type() == torch::kBFloat16 ||
                  x.scalar_type() == torch::kHalf,
              "x must be float32, bfloat16 or float16");
  FloatRows rows;
  const int64_t k = x.size(-1);
  rows.m = k ? x.numel() / k : 0;
  if (x.scalar_type() == torch::kFloat && x.is_contiguous()) {
    rows.data = x.data_ptr<float>();
    return rows;
  }
  const torch::Tensor xc = x.contiguous();
  rows.copy.resize(xc.numel());
  const int64_t count = xc.numel();
  if (xc.scalar_type() == torch::kBFloat16) {
    const c10::BFloat16* p = xc.data_ptr<c10::BFloat16>();
    for (int64_t i = 0; i < count; ++i) rows.copy[i] = static_cast<float>(p[i]);
  } else if (xc.scalar_type() == torch::kHalf) {
    const c10::Half* p = xc.data_ptr<c10::Half>();
    for (int64_t i = 0; i < count; ++i) rows.copy[i] = static_cast<float>(p[i]);
  } else {
    const float* p = xc.data_ptr<float>();
    std::copy(p, p + count, rows.copy.begin());
  }
  rows.data = rows.copy.data();
  return rows;
}

// The result tensor, (..., n) in x's dtype; results are written as float into `buffer`
// (or straight into a float32 result) and stored by `store`.
torch::Tensor result_like(const torch::Tensor& x, int64_t n) {
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = n;
  return torch::empty(shape, x.options());
}

float* float_output(torch::Tensor& out, std::vector<float>& buffer) {
  if (out.scalar_type() == torch::kFloat) return out.data_ptr<float>();
  buffer.resize(out.numel());
  return buffer.data();
}

void store(const std::vector<float>& buffer, torch::Tensor& out) {
  const int64_t count = out.numel();
  if (out.scalar_type() == torch::kBFloat16) {
    c10::BFloat16* p = out.data_ptr<c10::BFloat16>();
    for (int64_t i = 0; i < count; ++i) p[i] = c10::BFloat16(buffer[i]);
  } else if (out.scalar_type() == torch::kHalf) {
    c10::Half* p = out.data_ptr<c10::Half>();
    for (int64_t i = 0; i < count; ++i) p[i] = c10::Half(buffer[i]);
  }
}

// Whether the AVX512-BF16 path serves this call (compiled in, bf16 x, several rows).
inline bool bf16_dot_serves(const torch::Tensor& x, int64_t k) {
#if defined(LLM_BF16_DOT)
  return x.scalar_type() == torch::kBFloat16 && k % 32 == 0 && x.numel() > k;
#else
  (void)x;
  (void)k;
  return false;
#endif
}

// Every input on the CPU (these loops read host memory), and x a float tensor with
// a feature dimension: checked before any pointer is taken.
void check_activations(const torch::Tensor& x, std::initializer_list<torch::Tensor> weights) {
  TORCH_CHECK(x.device().is_cpu(), "x must be on the CPU, not ", x.device());
  for (const torch::Tensor& t : weights)
    TORCH_CHECK(t.device().is_cpu(), "the quantized weight tensors must be on the CPU, not ",
                t.device());
  TORCH_CHECK(x.dim() >= 1, "x must have a feature dimension");
  TORCH_CHECK(x.scalar_type() == torch::kFloat || x.scalar_type() == torch::kBFloat16 ||
                  x.scalar_type() == torch::kHalf,
              "x must be float32, bfloat16 or float16, not ", x.scalar_type());
}

}  // namespace

// x (..., K) float/bf16/fp16; q (N, K) int8; scale (N) float32 -> (..., N) in x's dtype.
torch::Tensor int8_linear(const torch::Tensor& x, const torch::Tensor& q,
                          const torch::Tensor& scale) {
  check_activations(x, {q, scale});
  TORCH_CHECK(q.scalar_type() == torch::kChar && q.dim() == 2 && q.is_contiguous(),
              "q must be a contiguous (N, K) int8 tensor");
  const int64_t n = q.size(0), k = q.size(1);
  TORCH_CHECK(scale.scalar_type() == torch::kFloat && scale.is_contiguous() &&
                  scale.dim() == 1 && scale.size(0) == n,
              "scale must be a contiguous float32 tensor of ", n, " values (one per row of q)");
  TORCH_CHECK(x.size(-1) == k, "x has ", x.size(-1), " features, the weight ", k);
  const int8_t* qp = q.data_ptr<int8_t>();
  const float* sp = scale.data_ptr<float>();
#if defined(LLM_BF16_DOT)
  if (bf16_dot_serves(x, k)) {
    const torch::Tensor xc = x.contiguous();
    torch::Tensor y = result_like(x, n);
    std::vector<float> buffer;
    bf16_products(reinterpret_cast<const uint16_t*>(xc.data_ptr<c10::BFloat16>()),
                  xc.numel() / k, n, k, float_output(y, buffer),
                  [&](int64_t row, uint16_t* dst) {
                    prefetch_next_tile(qp + row * k, k, n - row);
                    widen_i8_bf16(qp + row * k, k, dst);
                    return sp[row];
                  });
    store(buffer, y);
    return y;
  }
#endif
  const FloatRows xr = float_rows(x);
  const int64_t m = xr.m;
  torch::Tensor y = result_like(x, n);
  std::vector<float> buffer;
  const float* xp = xr.data;
  float* yp = float_output(y, buffer);
  const int64_t grain = std::max<int64_t>(kRowTile, 16384 / std::max<int64_t>(k, 1));
  at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
    if (m == 1) {
      for (int64_t r = begin; r < end; ++r) yp[r] = dot_i8(xp, qp + r * k, k) * sp[r];
      return;
    }
    std::vector<float> tile(kRowTile * k);
    for (int64_t r0 = begin; r0 < end; r0 += kRowTile) {
      const int64_t rows = std::min(kRowTile, end - r0);
      for (int64_t t = 0; t < rows; ++t) {
        const int8_t* src = qp + (r0 + t) * k;
        prefetch_next_tile(src, k, n - r0 - t);
        float* dst = tile.data() + t * k;
        const float s = sp[r0 + t];
        for (int64_t i = 0; i < k; ++i) dst[i] = static_cast<float>(src[i]) * s;
      }
      tile_product(xp, m, tile.data(), rows, k, yp + r0, n);
    }
  });
  store(buffer, y);
  return y;
}

// x (..., K); q (N, K/2) uint8; scale, mins (N, K/G) float16 -> (..., N) in x's dtype.
torch::Tensor int4_linear(const torch::Tensor& x, const torch::Tensor& q,
                          const torch::Tensor& scale, const torch::Tensor& mins,
                          int64_t group) {
  check_activations(x, {q, scale, mins});
  TORCH_CHECK(q.scalar_type() == torch::kByte && q.dim() == 2 && q.is_contiguous(),
              "q must be a contiguous (N, K/2) uint8 tensor");
  TORCH_CHECK(scale.scalar_type() == torch::kHalf && mins.scalar_type() == torch::kHalf &&
                  scale.is_contiguous() && mins.is_contiguous(),
              "scale and mins must be contiguous float16");
  TORCH_CHECK(group >= 32 && group <= 256 && group % 32 == 0,
              "group size must be a multiple of 32, at most 256, not ", group);
  const int64_t n = q.size(0), k = q.size(1) * 2, groups = k / group;
  TORCH_CHECK(k % group == 0, "the group size ", group, " does not divide ", k,
              " input features");
  TORCH_CHECK(scale.dim() == 2 && mins.dim() == 2 && scale.size(0) == n &&
                  mins.size(0) == n && scale.size(1) == groups && mins.size(1) == groups,
              "scale and mins must be (", n, ", ", groups, "): ", groups, " groups of ", group,
              " for each of the ", n, " rows of q");
  TORCH_CHECK(x.size(-1) == k, "x has ", x.size(-1), " features, the weight ", k);
#if defined(LLM_BF16_DOT)
  if (bf16_dot_serves(x, k)) {
    const uint8_t* q4 = q.data_ptr<uint8_t>();
    const c10::Half* s4 = scale.data_ptr<c10::Half>();
    const c10::Half* m4 = mins.data_ptr<c10::Half>();
    const torch::Tensor xc = x.contiguous();
    torch::Tensor y = result_like(x, n);
    std::vector<float> buffer;
    bf16_products(reinterpret_cast<const uint16_t*>(xc.data_ptr<c10::BFloat16>()),
                  xc.numel() / k, n, k, float_output(y, buffer),
                  [&](int64_t row, uint16_t* dst) {
                    prefetch_next_tile(q4 + row * (k / 2), k / 2, n - row);
                    widen_i4_bf16(q4 + row * (k / 2), s4 + row * groups, m4 + row * groups,
                                  groups, group, dst);
                    return 1.f;
                  });
    store(buffer, y);
    return y;
  }
#endif
  const FloatRows xr = float_rows(x);
  const int64_t m = xr.m;
  const float* xp = xr.data;
  std::vector<float> xsum(m * groups, 0.f);  // sum of x over each group, per row
  for (int64_t i = 0; i < m * groups; ++i)
    for (int64_t j = 0; j < group; ++j) xsum[i] += xp[i * group + j];
  const float* xs = xsum.data();
  torch::Tensor y = result_like(x, n);
  std::vector<float> buffer;
  const uint8_t* qp = q.data_ptr<uint8_t>();
  const c10::Half* sp = scale.data_ptr<c10::Half>();
  const c10::Half* mp = mins.data_ptr<c10::Half>();
  float* yp = float_output(y, buffer);
  const int64_t grain = std::max<int64_t>(kRowTile, 32768 / std::max<int64_t>(k, 1));
  at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
    if (m == 1) {
      int4_row_dots(xp, xs, qp, sp, mp, groups, group, yp, begin, end);
      return;
    }
    std::vector<float> tile(kRowTile * k);
    for (int64_t r0 = begin; r0 < end; r0 += kRowTile) {
      const int64_t rows = std::min(kRowTile, end - r0);
      for (int64_t t = 0; t < rows; ++t) {
        prefetch_next_tile(qp + (r0 + t) * (k / 2), k / 2, n - r0 - t);
        widen_i4(qp + (r0 + t) * (k / 2), sp + (r0 + t) * groups, mp + (r0 + t) * groups,
                 groups, group, tile.data() + t * k);
      }
      tile_product(xp, m, tile.data(), rows, k, yp + r0, n);
    }
  });
  store(buffer, y);
  return y;
}

// x (..., K); w (N, K) float32, or bfloat16 where the AVX512-BF16 path is built ->
// (..., N) in x's dtype. For a few rows of x (a verification step's k + 1 tokens, a
// small decode batch): each thread walks its share of W's rows once, 4 of them against 4
// rows of x at a time, where a BLAS call with a handful of rows streams W several times
// (measured on AMD Zen 5 with MKL: 5 rows of the 8192 x 256 LM head cost 3-4x one row).
torch::Tensor float_linear(const torch::Tensor& x, const torch::Tensor& w) {
  check_activations(x, {w});
  TORCH_CHECK(w.dim() == 2 && w.is_contiguous(), "w must be a contiguous (N, K) tensor");
  const int64_t n = w.size(0), k = w.size(1);
  TORCH_CHECK(x.size(-1) == k, "x has ", x.size(-1), " features, the weight ", k);
  TORCH_CHECK(x.scalar_type() == w.scalar_type(), "x and w must have one dtype, not ",
              x.scalar_type(), " and ", w.scalar_type());
  if (w.scalar_type() == torch::kBFloat16) {
#if defined(LLM_BF16_DOT)
    TORCH_CHECK(k % 32 == 0, "bfloat16 weights need a multiple of 32 input features");
    const torch::Tensor xc = x.contiguous();
    torch::Tensor y = result_like(x, n);
    std::vector<float> buffer;
    bf16_products_in_place(reinterpret_cast<const uint16_t*>(xc.data_ptr<c10::BFloat16>()),
                           xc.numel() / k, n, k,
                           reinterpret_cast<const uint16_t*>(w.data_ptr<c10::BFloat16>()),
                           float_output(y, buffer));
    store(buffer, y);
    return y;
#else
    TORCH_CHECK(false, "bfloat16 weights need the AVX512-BF16 build");
#endif
  }
  TORCH_CHECK(w.scalar_type() == torch::kFloat, "w must be float32 or bfloat16");
  const FloatRows xr = float_rows(x);
  const int64_t m = xr.m;
  torch::Tensor y = result_like(x, n);
  const float* xp = xr.data;
  const float* wp = w.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const int64_t grain = std::max<int64_t>(kRowTile, 16384 / std::max<int64_t>(k, 1));
  at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
    if (m == 1) {
      for (int64_t r = begin; r < end; ++r) yp[r] = dot_f(xp, wp + r * k, k);
      return;
    }
    for (int64_t r0 = begin; r0 < end; r0 += kRowTile) {
      const int64_t rows = std::min(kRowTile, end - r0);
      for (int64_t t = 0; t < rows; ++t)
        prefetch_next_tile(wp + (r0 + t) * k, k * 4, n - r0 - t);
      tile_product(xp, m, wp + r0 * k, rows, k, yp + r0, n);
    }
  });
  return y;
}

// Registered as torch ops (llm_quant::int8_linear, llm_quant::int4_linear) so compiled
// graphs call them through the dispatcher, with no Python in between; the shapes for
// tracing are registered from Python (app.modeling.quantized_linear).
TORCH_LIBRARY(llm_quant, m) {
  m.def("int8_linear(Tensor x, Tensor q, Tensor scale) -> Tensor");
  m.def("int4_linear(Tensor x, Tensor q, Tensor scale, Tensor mins, int group) -> Tensor");
  m.def("float_linear(Tensor x, Tensor w) -> Tensor");
}

TORCH_LIBRARY_IMPL(llm_quant, CPU, m) {
  m.impl("int8_linear", &int8_linear);
  m.impl("int4_linear", &int4_linear);
  m.impl("float_linear", &float_linear);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("int8_linear", &int8_linear, "x @ (int8 per-channel weight)^T");
  m.def("int4_linear", &int4_linear, "x @ (int4 group-wise weight)^T");
  m.def("float_linear", &float_linear, "x @ w^T for a few rows of x");
}
