// Decode attention over the paged KV cache, for the CPU: each sequence's query heads (one
// token, or each of a verification step's tokens as a row of its own) against the keys
// and values of its cached tokens, read in place from the blocks its table names.
//
// Why a kernel: written as tensor reductions for inductor (app/modeling/attention.py,
// decode_attention), each score is a 64-wide dot product ending in a horizontal sum,
// softmax walks the scores three more times, and the whole runs at about a quarter of
// the memory bandwidth (measured on AMD Zen 5, 2 threads, bf16, 32 sequences of about 96
// tokens, 12 heads of 64: 390 us a layer, 12 GB/s of K and V). Here each thread takes
// whole sequences (or runs of a sequence's KV heads, where there are few sequences) and
// streams their K and V once, a block of tokens at a time, with an online softmax
// (flash-decoding's running maximum and sum), so nothing is gathered, padded or written
// back but the output.
//
// Every (sequence, head) is computed alone, in a fixed order over its own tokens, so a
// sequence's result does not depend on what else is in the batch (batch invariance).
// K and V in float32 or bfloat16 (the model's dtype); accumulation in float32. The loops
// over the head dimension are written for GCC to vectorise (the build passes -O3
// -ffast-math and the CPU's ISA flags).

#include <torch/extension.h>
#include <ATen/Parallel.h>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace {

inline void widen(const float* src, float* dst, int64_t n) { std::memcpy(dst, src, n * 4); }

// bf16 -> float is the high half of the float's bits; AVX-512 does 16 at a time
inline void widen(const c10::BFloat16* src, float* dst, int64_t n) {
  const uint16_t* bits = reinterpret_cast<const uint16_t*>(src);
  int64_t i = 0;
#if defined(__AVX512F__)
  for (; i + 16 <= n; i += 16) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bits + i));
    _mm512_storeu_ps(dst + i, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)));
  }
#endif
  for (; i < n; ++i) {
    const uint32_t u = static_cast<uint32_t>(bits[i]) << 16;
    std::memcpy(dst + i, &u, 4);
  }
}

inline float dot(const float* a, const float* b, int64_t n) {
  int64_t i = 0;
  float s = 0.f;
#if defined(__AVX512F__)
  __m512 acc = _mm512_setzero_ps();
  for (; i + 16 <= n; i += 16)
    acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc);
  s = _mm512_reduce_add_ps(acc);
#endif
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

// Everything a task reads besides K, V and the tables, by value: each thread works from
// its own copy. (Read through the closure's references, these lived on the calling
// thread's stack beside the lines it writes while running its own share, and the other
// thread's reads of them bounced those lines between the cores: two threads took as long
// as one, finishing together.)
template <typename T>
struct Problem {
  const T* q;
  const T* k;
  const T* v;
  const int64_t* tables;
  const int64_t* lens;
  T* out;
  int64_t nh, nkv, hd, block_size, table_width, group, token_stride, runs, per_run;
  float scale;
};

// A thread's working arrays in one allocation, each on cache lines of its own.
class Scratch {
 public:
  Scratch(std::initializer_list<int64_t> sizes) {
    int64_t offset = 0;
    for (int64_t n : sizes) {
      at_.push_back(offset);
      offset += (n + kLine - 1) / kLine * kLine;
    }
    data_.assign(offset + kLine, 0.f);
  }
  float* part(size_t i) {
    const uintptr_t skew = reinterpret_cast<uintptr_t>(data_.data()) % 64;
    return data_.data() + at_[i] + (skew ? (64 - skew) / sizeof(float) : 0);
  }

 private:
  static constexpr int64_t kLine = 16;  // floats per cache line
  std::vector<float> data_;
  std::vector<int64_t> at_;
};

template <typename T>
void attend_tasks(const Problem<T> p, int64_t begin, int64_t end) {
  const int64_t hd = p.hd, group = p.group, block_size = p.block_size;
  const int64_t heads_max = p.per_run * group;  // query heads of one task, at most
  Scratch mem({heads_max * hd, heads_max * hd, p.per_run * hd, p.per_run * hd,
               heads_max * block_size, heads_max, heads_max});
  float* const qf = mem.part(0);
  float* const acc = mem.part(1);
  float* const kf = mem.part(2);
  float* const vf = mem.part(3);
  float* const scores = mem.part(4);
  float* const best = mem.part(5);
  float* const total = mem.part(6);
  for (int64_t task = begin; task < end; ++task) {
    const int64_t row = task / p.runs, h0 = (task % p.runs) * p.per_run;
    const int64_t kv_heads = std::min(p.per_run, p.nkv - h0);
    if (kv_heads <= 0) continue;
    const int64_t heads = kv_heads * group;  // query heads h0 * group .. + heads
    for (int64_t h = 0; h < heads; ++h) {
      widen(p.q + (row * p.nh + h0 * group + h) * hd, qf + h * hd, hd);
      for (int64_t i = 0; i < hd; ++i) qf[h * hd + i] *= p.scale;
    }
    std::fill(acc, acc + heads * hd, 0.f);
    std::fill(best, best + heads, -std::numeric_limits<float>::infinity());
    std::fill(total, total + heads, 0.f);
    const int64_t len = p.lens[row];
    const int64_t blocks = (len + block_size - 1) / block_size;
    TORCH_CHECK(blocks <= p.table_width, "a context of ", len, " tokens needs more than the ",
                p.table_width, " blocks of its table");
    const int64_t* table = p.tables + row * p.table_width;
    const int64_t run = kv_heads * hd;  // values of one token this task reads, K or V
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t n = std::min(block_size, len - b * block_size);
      const int64_t first = table[b] * block_size * p.token_stride + h0 * hd;
      for (int64_t j = 0; j < n; ++j) {  // this block's scores, every query head
        widen(p.k + first + j * p.token_stride, kf, run);
        for (int64_t h = 0; h < heads; ++h)
          scores[h * block_size + j] = dot(qf + h * hd, kf + (h / group) * hd, hd);
      }
      for (int64_t h = 0; h < heads; ++h) {  // rescale what came before to the new max
        float* sc = scores + h * block_size;
        float top = best[h];
        for (int64_t j = 0; j < n; ++j) top = std::max(top, sc[j]);
        const float shrink = std::exp(best[h] - top);  // 0 on the first block
        total[h] *= shrink;
        for (int64_t i = 0; i < hd; ++i) acc[h * hd + i] *= shrink;
        for (int64_t j = 0; j < n; ++j) {
          sc[j] = std::exp(sc[j] - top);
          total[h] += sc[j];
        }
        best[h] = top;
      }
      for (int64_t j = 0; j < n; ++j) {  // weighted values
        widen(p.v + first + j * p.token_stride, vf, run);
        for (int64_t h = 0; h < heads; ++h) {
          const float w = scores[h * block_size + j];
          const float* vh = vf + (h / group) * hd;
          float* a = acc + h * hd;
          for (int64_t i = 0; i < hd; ++i) a[i] += w * vh[i];
        }
      }
    }
    for (int64_t h = 0; h < heads; ++h) {
      const float inv = 1.f / total[h];
      T* o = p.out + (row * p.nh + h0 * group + h) * hd;
      for (int64_t i = 0; i < hd; ++i) o[i] = static_cast<T>(acc[h * hd + i] * inv);
    }
  }
}

template <typename T>
void attend(const T* q, const T* k, const T* v, const int64_t* tables, const int64_t* lens,
            T* out, int64_t rows, int64_t nh, int64_t nkv, int64_t hd, int64_t block_size,
            int64_t table_width, float scale) {
  // A task is a row and a run of its KV heads: each token's heads lie side by side, so a
  // task reads its share of every token contiguously (a block of a row is one contiguous
  // block_size x nkv x hd run). Rows are split into head runs only when there are fewer
  // rows than twice the threads (batch-1 would run on one thread otherwise).
  const int64_t threads = at::get_num_threads();
  const int64_t runs = std::min(nkv, std::max<int64_t>(1, (2 * threads + rows - 1) / rows));
  const int64_t per_run = (nkv + runs - 1) / runs;
  const Problem<T> problem{q, k, v, tables, lens, out, nh, nkv, hd, block_size, table_width,
                           nh / nkv, nkv * hd, runs, per_run, scale};
  at::parallel_for(0, rows * runs, 1, [problem](int64_t begin, int64_t end) {
    attend_tasks(problem, begin, end);
  });
}

// q (D, nh, hd); k_blocks, v_blocks (num_blocks, block_size, nkv, hd), contiguous;
// tables (D, W) int64 block ids; lens (D,) int64 context lengths (>= 1) -> (D, nh, hd).
torch::Tensor paged_decode_attention(const torch::Tensor& q, const torch::Tensor& k_blocks,
                                     const torch::Tensor& v_blocks, const torch::Tensor& tables,
                                     const torch::Tensor& lens) {
  TORCH_CHECK(q.device().is_cpu() && k_blocks.device().is_cpu(), "CPU tensors only");
  TORCH_CHECK(q.dim() == 3 && k_blocks.dim() == 4 && v_blocks.sizes() == k_blocks.sizes(),
              "q (D, nh, hd) and K/V blocks (num_blocks, block_size, nkv, hd) expected");
  TORCH_CHECK(q.scalar_type() == k_blocks.scalar_type() &&
                  k_blocks.scalar_type() == v_blocks.scalar_type(),
              "q, K and V must have one dtype");
  TORCH_CHECK(k_blocks.is_contiguous() && v_blocks.is_contiguous(), "K/V blocks must be contiguous");
  TORCH_CHECK(tables.scalar_type() == torch::kLong && lens.scalar_type() == torch::kLong,
              "tables and lens must be int64");
  const int64_t rows = q.size(0), nh = q.size(1), hd = q.size(2);
  const int64_t block_size = k_blocks.size(1), nkv = k_blocks.size(2);
  TORCH_CHECK(k_blocks.size(3) == hd && nh % nkv == 0, "head sizes do not match");
  TORCH_CHECK(tables.dim() == 2 && tables.size(0) == rows && lens.numel() == rows,
              "one table and one length per row");
  const torch::Tensor qc = q.contiguous(), tc = tables.contiguous(), lc = lens.contiguous();
  torch::Tensor out = torch::empty_like(qc);
  const float scale = 1.f / std::sqrt(static_cast<float>(hd));
  if (q.scalar_type() == torch::kFloat) {
    attend(qc.data_ptr<float>(), k_blocks.data_ptr<float>(), v_blocks.data_ptr<float>(),
           tc.data_ptr<int64_t>(), lc.data_ptr<int64_t>(), out.data_ptr<float>(), rows, nh,
           nkv, hd, block_size, tables.size(1), scale);
  } else {
    TORCH_CHECK(q.scalar_type() == torch::kBFloat16, "float32 or bfloat16 only, not ",
                q.scalar_type());
    attend(qc.data_ptr<c10::BFloat16>(), k_blocks.data_ptr<c10::BFloat16>(),
           v_blocks.data_ptr<c10::BFloat16>(), tc.data_ptr<int64_t>(), lc.data_ptr<int64_t>(),
           out.data_ptr<c10::BFloat16>(), rows, nh, nkv, hd, block_size, tables.size(1),
           scale);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(llm_quant, m) {
  m.def("paged_decode_attention(Tensor q, Tensor k_blocks, Tensor v_blocks, Tensor tables, "
        "Tensor lens) -> Tensor");
}

TORCH_LIBRARY_IMPL(llm_quant, CPU, m) {
  m.impl("paged_decode_attention", &paged_decode_attention);
}
