// CPU mode: paged attention of one query per sequence (decode-only batches), the plugin's
// own kernel. Compiled on the user's machine at first use (kernels/native_decode.py:
// g++ -O3 -march=native -fopenmp) and loaded with ctypes; no torch headers, so it
// compiles in seconds. Why it exists: IPEX 2.8's CPU decode kernels are bound by
// their own work per KV element (~1.4 cycles per bf16 element), not by memory; this one
// reads each K/V row once for all query heads sharing it, in 16-float vectors, reduces the
// scores of 16 tokens together, prefetches the next block and has a vectorized exp
// (docs/performance.md, "Decode attention").
//
// Layout (device.kv_cache_layout() "HND" in CPU mode): key/value cache
// [num_blocks, num_kv_heads, block_size, head_size], head_size contiguous. Work is split
// into (sequence, KV head, partition of PART_TOKENS tokens) tasks, each producing a
// partial softmax (max, sum, unnormalized output) that a second loop combines
// (flash-decoding), so that a batch of one long sequence still uses every thread.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#ifdef __AVX512F__
#include <immintrin.h>
#endif

namespace {

typedef float vf __attribute__((vector_size(64)));
typedef float vf8 __attribute__((vector_size(32)));
typedef float vf4 __attribute__((vector_size(16)));
typedef int32_t vi __attribute__((vector_size(64)));
typedef uint16_t vh __attribute__((vector_size(32)));
typedef uint32_t vu __attribute__((vector_size(64)));

constexpr int kMaxGroup = 16;  // query heads per KV head (kernels/native_decode.py checks)

struct BF16 {
  typedef uint16_t T;
  static vf load16(const T* p) {
#ifdef __AVX512F__
    // One zero-extending load (GCC 12 splits the generic conversion below into four).
    return reinterpret_cast<vf>(_mm512_slli_epi32(
        _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
#else
    vh h;
    std::memcpy(&h, p, sizeof h);
    vu u = __builtin_convertvector(h, vu) << 16;
    vf f;
    std::memcpy(&f, &u, sizeof f);
    return f;
#endif
  }
  static float load1(const T* p) {
    uint32_t u = static_cast<uint32_t>(*p) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  static void store1(T* p, float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7f800000u) == 0x7f800000u) {  // inf / nan: truncate, keep nan a nan
      *p = static_cast<T>((u >> 16) | ((u & 0xffffu) ? 0x40u : 0u));
      return;
    }
    u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even, as torch's conversion
    *p = static_cast<T>(u >> 16);
  }
};

struct F32 {
  typedef float T;
  static vf load16(const T* p) {
    vf f;
    std::memcpy(&f, p, sizeof f);
    return f;
  }
  static float load1(const T* p) { return *p; }
  static void store1(T* p, float f) { *p = f; }
};

inline float hsum(vf v) {
  vf8 a = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
          __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
  vf4 b = __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
  return (b[0] + b[2]) + (b[1] + b[3]);
}

// exp(x) for x <= 0 (scores minus their max): 2^(x log2 e) = 2^n 2^f, |f| <= 0.5, 2^f by a
// degree-6 polynomial (relative error ~2e-7); below 2^-126 it returns ~0, as expf would.
inline vf vexp(vf x) {
  vf t = x * 1.4426950408889634f;
  t = t < -126.0f ? vf{} - 126.0f : t;
  vf n = __builtin_convertvector(__builtin_convertvector(t + (t < 0 ? -0.5f : 0.5f), vi), vf);
  vf f = t - n;
  vf p = vf{} + 1.535336188319500e-4f;
  p = p * f + 1.339887440266574e-3f;
  p = p * f + 9.618437357674640e-3f;
  p = p * f + 5.550332471162809e-2f;
  p = p * f + 2.402264791363012e-1f;
  p = p * f + 6.931472028550421e-1f;
  p = p * f + 1.0f;
  vi e = (__builtin_convertvector(n, vi) + 127) << 23;
  vf scale;
  std::memcpy(&scale, &e, sizeof scale);
  return p * scale;
}

struct Args {
  void* out;
  int64_t out_stride_tok, out_stride_head;
  const void* query;
  int64_t q_stride_tok, q_stride_head;
  const void* key_cache;
  const void* value_cache;
  int64_t kv_stride_block, kv_stride_head, kv_stride_tok;
  const int32_t* block_table;
  int64_t bt_stride;
  const int32_t* seq_lens;
  int num_seqs, num_heads, num_kv_heads, block_size, part_tokens, num_threads;
  float scale;
};

// Sums of 16 vectors at once: lane i of the result is the sum of the lanes of v[i]
// (a transposing reduction, 15 shuffle-add steps instead of 16 separate horizontal sums).
inline vf hsum16(vf (&v)[16]) {
  vf r[8], s[4], u[2];
  for (int i = 0; i < 8; ++i)
    r[i] = __builtin_shufflevector(v[2 * i], v[2 * i + 1], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17,
                                   18, 19, 20, 21, 22, 23) +
           __builtin_shufflevector(v[2 * i], v[2 * i + 1], 8, 9, 10, 11, 12, 13, 14, 15, 24,
                                   25, 26, 27, 28, 29, 30, 31);
  for (int i = 0; i < 4; ++i)
    s[i] = __builtin_shufflevector(r[2 * i], r[2 * i + 1], 0, 1, 2, 3, 8, 9, 10, 11, 16, 17,
                                   18, 19, 24, 25, 26, 27) +
           __builtin_shufflevector(r[2 * i], r[2 * i + 1], 4, 5, 6, 7, 12, 13, 14, 15, 20, 21,
                                   22, 23, 28, 29, 30, 31);
  for (int i = 0; i < 2; ++i)
    u[i] = __builtin_shufflevector(s[2 * i], s[2 * i + 1], 0, 1, 4, 5, 8, 9, 12, 13, 16, 17,
                                   20, 21, 24, 25, 28, 29) +
           __builtin_shufflevector(s[2 * i], s[2 * i + 1], 2, 3, 6, 7, 10, 11, 14, 15, 18, 19,
                                   22, 23, 26, 27, 30, 31);
  return __builtin_shufflevector(u[0], u[1], 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24,
                                 26, 28, 30) +
         __builtin_shufflevector(u[0], u[1], 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25,
                                 27, 29, 31);
}

// Rows fetched ahead of the one being read. The next block of a sequence lies anywhere in
// the cache, where the hardware prefetcher cannot follow: fetching it 8 rows early gained
// 1.1x at Llama-8B's heads (32 x 1024 tokens, KV in DRAM) and cost nothing measurable at
// SmolLM2's (AMD EPYC, AVX512-BF16, 2 threads, 2026-12-07).
constexpr int kPrefetchRows = 8;

// Calls f(t, row) for the tokens [start, start + n) of one sequence and KV head (rows of D
// elements), t counted from start, a block at a time: one block-table read per block and no
// division per token.
template <int D, typename T, typename F>
inline void for_each_row(const Args& a, const T* cache, const int32_t* blocks, int h,
                         int start, int n, F f) {
  for (int t = 0; t < n;) {
    const int pos = start + t;
    const int in_block = pos % a.block_size;
    const int count = std::min(a.block_size - in_block, n - t);
    const T* row = cache + blocks[pos / a.block_size] * a.kv_stride_block +
                   h * a.kv_stride_head + static_cast<int64_t>(in_block) * a.kv_stride_tok;
    const int next_pos = pos + count;
    const T* next = next_pos < start + n
                        ? cache + blocks[next_pos / a.block_size] * a.kv_stride_block +
                              h * a.kv_stride_head
                        : nullptr;
    for (int i = 0; i < count; ++i, row += a.kv_stride_tok) {
      const T* ahead = i + kPrefetchRows < count ? row + kPrefetchRows * a.kv_stride_tok
                       : next ? next + (i + kPrefetchRows - count) * a.kv_stride_tok
                              : nullptr;
      if (ahead)
        for (size_t off = 0; off < D * sizeof(T); off += 64)
          __builtin_prefetch(reinterpret_cast<const char*>(ahead) + off);
      f(t + i, row);
    }
    t += count;
  }
}

// The probability-weighted sum of the value rows, for G query heads (scores s: G x n,
// probabilities by now; acc: G x D).
template <typename E, int D, int G>
void weighted_values(const Args& a, const typename E::T* vc, const int32_t* blocks, int h,
                     int start, int n, const float* s, float* acc) {
  constexpr int NV = D / 16;
  vf out[G][NV] = {};
  for_each_row<D>(a, vc, blocks, h, start, n, [&](int t, const typename E::T* v) {
    vf vv[NV];
    for (int j = 0; j < NV; ++j) vv[j] = E::load16(v + j * 16);
    for (int gi = 0; gi < G; ++gi) {
      const float p = s[gi * n + t];
      for (int j = 0; j < NV; ++j) out[gi][j] += p * vv[j];
    }
  });
  std::memcpy(acc, out, sizeof out);
}

// One task: query heads h*g .. h*g+g-1 of one sequence over tokens [start, start + n).
// Scores go to s (g x n); m/l/acc get the partition's max, sum of exp and sum of
// exp-weighted values.
template <typename E, int D>
void partition(const Args& a, const vf (&q)[kMaxGroup][D / 16], int g, int64_t seq, int h,
               int start, int n, float* s, float* m_out, float* l_out, float* acc) {
  constexpr int NV = D / 16;
  typedef typename E::T T;
  const T* kc = static_cast<const T*>(a.key_cache);
  const T* vc = static_cast<const T*>(a.value_cache);
  const int32_t* blocks = a.block_table + seq * a.bt_stride;
  // Scores, 16 tokens at a time per head: per-token partial sums (16 lanes), reduced
  // together by hsum16.
  vf part[kMaxGroup][16];
  for_each_row<D>(a, kc, blocks, h, start, n, [&](int t, const T* k) {
    vf kv[NV];
    for (int j = 0; j < NV; ++j) kv[j] = E::load16(k + j * 16);
    const int lane = t % 16;
    for (int gi = 0; gi < g; ++gi) {
      vf a0 = q[gi][0] * kv[0];
      vf a1 = vf{};
      for (int j = 1; j < NV; j += 2) {
        a1 += q[gi][j] * kv[j];
        if (j + 1 < NV) a0 += q[gi][j + 1] * kv[j + 1];
      }
      part[gi][lane] = a0 + a1;
    }
    if (lane == 15 || t == n - 1) {
      const int first = t - lane;
      for (int gi = 0; gi < g; ++gi) {
        for (int i = lane + 1; i < 16; ++i) part[gi][i] = vf{};
        const vf sums = hsum16(part[gi]);
        std::memcpy(s + gi * n + first, &sums, (lane + 1) * sizeof(float));
      }
    }
  });
  for (int gi = 0; gi < g; ++gi) {
    float* sg = s + gi * n;
    float m = -INFINITY;
    for (int t = 0; t < n; ++t) m = std::max(m, sg[t]);
    vf lv = vf{};
    int t = 0;
    for (; t + 16 <= n; t += 16) {
      vf x;
      std::memcpy(&x, sg + t, sizeof x);
      x = vexp(x - m);
      std::memcpy(sg + t, &x, sizeof x);
      lv += x;
    }
    float l = hsum(lv);
    for (; t < n; ++t) {
      sg[t] = expf(sg[t] - m);
      l += sg[t];
    }
    m_out[gi] = m;
    l_out[gi] = l;
  }
  // Values: heads in chunks of kHeads (a compile-time count, so that the chunk's
  // accumulators live in registers; with a runtime count they went through memory, a
  // store and a load per accumulator and token), each chunk one pass over the rows.
  constexpr int kHeads = std::max(1, std::min(4, 24 / NV));
  for (int g0 = 0; g0 < g; g0 += kHeads) {
    const float* sc = s + g0 * n;
    float* ac = acc + g0 * D;
    // Chunks never exceed kHeads: min() keeps the unreachable cases instantiable.
    switch (std::min(kHeads, g - g0)) {
      case 1:
        weighted_values<E, D, 1>(a, vc, blocks, h, start, n, sc, ac);
        break;
      case 2:
        weighted_values<E, D, std::min(2, kHeads)>(a, vc, blocks, h, start, n, sc, ac);
        break;
      case 3:
        weighted_values<E, D, std::min(3, kHeads)>(a, vc, blocks, h, start, n, sc, ac);
        break;
      default:
        weighted_values<E, D, kHeads>(a, vc, blocks, h, start, n, sc, ac);
    }
  }
}

template <typename E, int D>
void decode(const Args& a) {
  constexpr int NV = D / 16;
  typedef typename E::T T;
  const int g = a.num_heads / a.num_kv_heads;
  int parts = 1;
  for (int b = 0; b < a.num_seqs; ++b)
    parts = std::max(parts, (a.seq_lens[b] + a.part_tokens - 1) / a.part_tokens);
  const int64_t tasks = static_cast<int64_t>(a.num_seqs) * a.num_kv_heads * parts;
  std::vector<float> M(tasks * g), L(tasks * g), A(tasks * g * D);
#pragma omp parallel num_threads(a.num_threads)
  {
    std::vector<float> s(static_cast<size_t>(g) * a.part_tokens);
    vf q[kMaxGroup][NV];
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; ++task) {
      const int p = task % parts;
      const int h = (task / parts) % a.num_kv_heads;
      const int64_t b = task / parts / a.num_kv_heads;
      const int start = p * a.part_tokens;
      const int len = a.seq_lens[b];
      if (start >= len) {
        for (int gi = 0; gi < g; ++gi) {
          M[task * g + gi] = -INFINITY;
          L[task * g + gi] = 0.0f;
        }
        continue;
      }
      const T* qs = static_cast<const T*>(a.query) + b * a.q_stride_tok;
      for (int gi = 0; gi < g; ++gi) {
        const T* qh = qs + static_cast<int64_t>(h * g + gi) * a.q_stride_head;
        for (int j = 0; j < NV; ++j) q[gi][j] = E::load16(qh + j * 16) * a.scale;
      }
      partition<E, D>(a, q, g, b, h, start, std::min(a.part_tokens, len - start), s.data(),
                      &M[task * g], &L[task * g], &A[task * g * D]);
    }
#pragma omp for schedule(static)
    for (int64_t bh = 0; bh < static_cast<int64_t>(a.num_seqs) * a.num_kv_heads; ++bh) {
      const int64_t b = bh / a.num_kv_heads;
      const int h = bh % a.num_kv_heads;
      for (int gi = 0; gi < g; ++gi) {
        float m = -INFINITY;
        for (int p = 0; p < parts; ++p) m = std::max(m, M[(bh * parts + p) * g + gi]);
        float o[D] = {};
        float l = 0.0f;
        for (int p = 0; p < parts; ++p) {
          const int64_t t = (bh * parts + p) * g + gi;
          if (L[t] == 0.0f) continue;
          const float w = expf(M[t] - m);
          l += w * L[t];
          for (int d = 0; d < D; ++d) o[d] += w * A[t * D + d];
        }
        T* oh = static_cast<T*>(a.out) + b * a.out_stride_tok +
                static_cast<int64_t>(h * g + gi) * a.out_stride_head;
        const float inv = l > 0.0f ? 1.0f / l : 0.0f;  // no tokens: zeros, not nan
        for (int d = 0; d < D; ++d) E::store1(oh + d, o[d] * inv);
      }
    }
  }
}

template <typename E>
int dispatch_head_size(const Args& a, int head_size) {
  switch (head_size) {
#define HEAD_SIZE(D) \
  case D:            \
    decode<E, D>(a); \
    return 0;
    HEAD_SIZE(32) HEAD_SIZE(48) HEAD_SIZE(64) HEAD_SIZE(80) HEAD_SIZE(96) HEAD_SIZE(112)
    HEAD_SIZE(128) HEAD_SIZE(160) HEAD_SIZE(192) HEAD_SIZE(224) HEAD_SIZE(256)
#undef HEAD_SIZE
  }
  return 2;
}

}  // namespace

extern "C" {

// The head sizes this build handles (kernels/native_decode.py reads them).
int xpu_plugin_decode_head_sizes(int* out, int capacity) {
  static const int sizes[] = {32, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256};
  const int n = sizeof sizes / sizeof sizes[0];
  for (int i = 0; i < n && i < capacity; ++i) out[i] = sizes[i];
  return n;
}

int xpu_plugin_max_group() { return kMaxGroup; }

// dtype: 0 bfloat16, 1 float32. Returns 0, or 1 (bad dtype / group), 2 (bad head size).
int xpu_plugin_decode_attention(
    int dtype, void* out, int64_t out_stride_tok, int64_t out_stride_head, const void* query,
    int64_t q_stride_tok, int64_t q_stride_head, const void* key_cache,
    const void* value_cache, int64_t kv_stride_block, int64_t kv_stride_head,
    int64_t kv_stride_tok, const int32_t* block_table, int64_t bt_stride,
    const int32_t* seq_lens, int num_seqs, int num_heads, int num_kv_heads, int head_size,
    int block_size, int part_tokens, int num_threads, float scale) {
  if (num_kv_heads <= 0 || num_heads % num_kv_heads || num_heads / num_kv_heads > kMaxGroup)
    return 1;
  Args a{out, out_stride_tok, out_stride_head, query, q_stride_tok, q_stride_head, key_cache,
         value_cache, kv_stride_block, kv_stride_head, kv_stride_tok, block_table, bt_stride,
         seq_lens, num_seqs, num_heads, num_kv_heads, block_size, part_tokens,
         std::max(1, num_threads), scale};
  if (dtype == 0) return dispatch_head_size<BF16>(a, head_size);
  if (dtype == 1) return dispatch_head_size<F32>(a, head_size);
  return 1;
}
}
