// Attention over a KV cache for XLA:CPU (XLA FFI custom calls; built and registered by
// gift/model/cpu_kernels.py). Decode (gift_decode_attention): One query token per row, each row reading only the cache span
// [lo, hi) that its mask can select, so a batch of short and long sequences costs the sum of
// their lengths instead of rows x cache extent (XLA's dense form reads every slot).
//
//   q    f32  [R, K, G, H]  queries, already scaled (R rows, K kv heads, G queries per kv head)
//   k, v f32  [R, K, W, H]  the cache
//   mask pred [R, W]        which slots each row sees (segment, causality, sliding window)
//   lo   s32  [R]           first slot with mask set (W: none)
//   hi   s32  [R]           one past the last slot with mask set (0: none)
//   attr logit_cap f32      soft-capping of the scores (0: off)
//   out  f32  [R, K, G, H]  softmax(q k^T) v; zeros for a row that sees nothing
//
// With AVX-512 (the library is built with -march=native) and H = 64, 128 or 256, each cache slot
// is loaded once for all G queries of its kv head, the weights' exp is vectorized 16 at a time,
// and G = 1 sums its output in registers (at 32 rows x 4 layers x 4 heads x 64 of a 2-core
// EPYC: in-cache spans 2.4x faster than the portable loop below, GQA with G = 4 2.4x at spans of
// 260 slots; at G = 1 and long spans both are bound by memory, ~30 GB/s, the AVX-512 path ~15%
// ahead). Otherwise the portable loop runs: any H, any ISA.
//
// A second target, gift_prefill_attention, takes T queries per row (a prompt or a chunk), each
// with its own mask row: q/out [R, K, G, T, H], mask transposed to [R, W, T], lo/hi [R, T]
// (see PrefillProblem below). 16 consecutive queries share a work item and visit the union of
// their spans only: a causal prompt costs its lower triangle (at 416 tokens, 4 heads of 64:
// 2.4x faster than XLA's form; GQA 512 tokens, 8 kv heads x 4 of 128: 3x).
//
// Work items are (row, kv head) pairs, spread over XLA's intra-op thread pool; each item is
// computed start to end by one thread in a fixed order, so a row's result does not depend on
// the other rows, the cache extent W or the thread count (greedy decoding gives the same tokens
// whatever else is in the batch).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

struct Problem {
  const float* q;
  const float* k;
  const float* v;
  const bool* mask;
  const int32_t* lo;
  const int32_t* hi;
  float* out;
  int64_t rows, heads, groups, width, dim;
  float cap;
};

// q . k over H values: 16 partial sums (one vector register's worth at any ISA width), then a
// fixed tree: vectorized without reassociation, and the same sum whatever the ISA.
inline float Dot(const float* a, const float* b, int64_t n) {
  constexpr int kLanes = 16;
  float acc[kLanes] = {};
  int64_t d = 0;
  for (; d + kLanes <= n; d += kLanes)
    for (int i = 0; i < kLanes; ++i) acc[i] += a[d + i] * b[d + i];
  for (int i = 0; d < n; ++d, ++i) acc[i % kLanes] += a[d] * b[d];
  for (int width = kLanes / 2; width > 0; width /= 2)
    for (int i = 0; i < width; ++i) acc[i] += acc[i + width];
  return acc[0];
}

// One work item's operands, narrowed to its row's span [lo, hi) of n slots (out zeroed; n = 0:
// the row sees nothing and out stays zero).
struct Item {
  const float* q;
  const float* k;
  const float* v;
  const bool* mask;
  float* out;
  int64_t n;
};

Item Locate(const Problem& p, int64_t item) {
  const int64_t r = item / p.heads;
  const int64_t G = p.groups, H = p.dim, W = p.width;
  const int64_t lo = std::max<int64_t>(0, p.lo[r]);
  const int64_t hi = std::min<int64_t>(W, p.hi[r]);
  Item it{p.q + item * G * H, p.k + (item * W + lo) * H, p.v + (item * W + lo) * H,
          p.mask + r * W + lo, p.out + item * G * H, std::max<int64_t>(0, hi - lo)};
  std::fill(it.out, it.out + G * H, 0.0f);
  return it;
}

#if defined(__AVX512F__)
// exp of 16 floats (Cephes' expf: range reduction by ln 2 in two parts, a degree-6 polynomial,
// 2^n by scalef; ~1 ulp), for the softmax weights. Inputs below -87 give exp(-87), ~1e-38: the
// caller zeroes masked slots itself.
inline __m512 Exp16(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 y = _mm512_set1_ps(1.9875691500e-4f);
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.3981999507e-3f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(8.3334519073e-3f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(4.1665795894e-2f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.6666665459e-1f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(5.0000001201e-1f));
  y = _mm512_fmadd_ps(y, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(y, n);
}

// AttendItem for H = 16 * V with AVX-512: each key and value slot is loaded once for all G
// queries; scores in blocks of 16 slots; the output accumulated unnormalized in registers (for
// small G * V) and divided by the weights' sum at the end.
template <int V>
void AttendItem16(const Problem& p, int64_t item, std::vector<float>& scores) {
  const int64_t G = p.groups;
  constexpr int64_t H = 16 * V;
  const auto [q, k, v, mask, out, n] = Locate(p, item);
  if (n == 0) return;
  const int64_t n16 = (n + 15) / 16 * 16;
  scores.resize(n16 * G + G);  // [G, n16] scores, then G sums of weights
  float* sums = scores.data() + n16 * G;
  for (int64_t j = 0; j < n; ++j) {
    const float* kj = k + j * H;
    for (int c = 0; c < V; ++c)
      _mm_prefetch(reinterpret_cast<const char*>(kj + 8 * H + 16 * c), _MM_HINT_NTA);
    __m512 kc[V];
    for (int c = 0; c < V; ++c) kc[c] = _mm512_loadu_ps(kj + 16 * c);
    for (int64_t g = 0; g < G; ++g) {
      const float* qg = q + g * H;
      __m512 acc = _mm512_mul_ps(_mm512_loadu_ps(qg), kc[0]);
      for (int c = 1; c < V; ++c) acc = _mm512_fmadd_ps(_mm512_loadu_ps(qg + 16 * c), kc[c], acc);
      scores[g * n16 + j] = _mm512_reduce_add_ps(acc);
    }
  }
  for (int64_t g = 0; g < G; ++g) {
    float* sg = scores.data() + g * n16;
    if (p.cap > 0.0f)
      for (int64_t j = 0; j < n; ++j) sg[j] = p.cap * std::tanh(sg[j] / p.cap);
    __m512 top = _mm512_set1_ps(-INFINITY);
    for (int64_t j = 0; j < n16; j += 16) {
      const __mmask16 tail = j + 16 <= n ? 0xFFFF : (1u << (n - j)) - 1;
      const __mmask16 live = _mm_mask_test_epi8_mask(
          tail, _mm_maskz_loadu_epi8(tail, mask + j), _mm_set1_epi8(1));
      const __m512 s = _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), live, sg + j);
      _mm512_storeu_ps(sg + j, s);
      top = _mm512_max_ps(top, s);
    }
    const __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(top));
    __m512 total = _mm512_setzero_ps();
    for (int64_t j = 0; j < n16; j += 16) {
      const __m512 s = _mm512_loadu_ps(sg + j);
      const __mmask16 live = _mm512_cmp_ps_mask(s, _mm512_set1_ps(-INFINITY), _CMP_NEQ_OQ);
      const __m512 e = _mm512_maskz_mov_ps(live, Exp16(_mm512_sub_ps(s, m)));
      _mm512_storeu_ps(sg + j, e);
      total = _mm512_add_ps(total, e);
    }
    sums[g] = _mm512_reduce_add_ps(total);
  }
  // Values: each slot loaded once for all G queries; G = 1 keeps its sums in registers.
  if (G == 1) {
    __m512 acc[V];
    for (int c = 0; c < V; ++c) acc[c] = _mm512_setzero_ps();
    for (int64_t j = 0; j < n; ++j) {
      const float* vj = v + j * H;
      for (int c = 0; c < V; ++c)
        _mm_prefetch(reinterpret_cast<const char*>(vj + 8 * H + 16 * c), _MM_HINT_NTA);
      const __m512 w = _mm512_set1_ps(scores[j]);
      for (int c = 0; c < V; ++c) acc[c] = _mm512_fmadd_ps(w, _mm512_loadu_ps(vj + 16 * c), acc[c]);
    }
    const __m512 inv = _mm512_set1_ps(1.0f / sums[0]);
    for (int c = 0; c < V; ++c) _mm512_storeu_ps(out + 16 * c, _mm512_mul_ps(acc[c], inv));
    return;
  }
  for (int64_t j = 0; j < n; ++j) {  // out holds the unnormalized sums (zeroed above)
    const float* vj = v + j * H;
    for (int c = 0; c < V; ++c)
      _mm_prefetch(reinterpret_cast<const char*>(vj + 8 * H + 16 * c), _MM_HINT_NTA);
    __m512 vc[V];
    for (int c = 0; c < V; ++c) vc[c] = _mm512_loadu_ps(vj + 16 * c);
    for (int64_t g = 0; g < G; ++g) {
      const __m512 w = _mm512_set1_ps(scores[g * n16 + j]);
      float* og = out + g * H;
      for (int c = 0; c < V; ++c)
        _mm512_storeu_ps(og + 16 * c, _mm512_fmadd_ps(w, vc[c], _mm512_loadu_ps(og + 16 * c)));
    }
  }
  for (int64_t g = 0; g < G; ++g) {
    const __m512 inv = _mm512_set1_ps(1.0f / sums[g]);
    for (int c = 0; c < V; ++c)
      _mm512_storeu_ps(out + g * H + 16 * c, _mm512_mul_ps(_mm512_loadu_ps(out + g * H + 16 * c), inv));
  }
}
#endif

// One (row, kv head): scores of all G queries against the span's keys, their softmax weights,
// then one pass over the span's values. The cache is streamed with non-temporal prefetches
// (8 slots ahead): on a busy step it is tens of MB read once, and left out of the shared cache
// it evicts less of the weights the step's matmuls read next (decode step at 520 slots, 32
// rows, 2-core EPYC: 7.0 -> 6.8 ms; a temporal prefetch made it slower, 7.5).
void AttendItem(const Problem& p, int64_t item, std::vector<float>& scores) {
#if defined(__AVX512F__)
  switch (p.dim) {
    case 64: return AttendItem16<4>(p, item, scores);
    case 128: return AttendItem16<8>(p, item, scores);
    case 256: return AttendItem16<16>(p, item, scores);
  }
#endif
  const int64_t G = p.groups, H = p.dim;
  const auto [q, k, v, mask, out, n] = Locate(p, item);
  if (n == 0) return;
  scores.resize(n * G);  // [G, n]
  for (int64_t g = 0; g < G; ++g) {
    const float* qg = q + g * H;
    float* sg = scores.data() + g * n;
    float top = -INFINITY;
    for (int64_t j = 0; j < n; ++j) {
      for (int64_t d = 0; d < H; d += 16) __builtin_prefetch(k + (j + 8) * H + d, 0, 0);
      float s = Dot(qg, k + j * H, H);
      if (p.cap > 0.0f) s = p.cap * std::tanh(s / p.cap);
      s = mask[j] ? s : -INFINITY;
      sg[j] = s;
      top = std::max(top, s);
    }
    for (int64_t j = 0; j < n; ++j) sg[j] = std::exp(sg[j] - top);  // masked: exp(-inf) = 0
    float total = 0.0f;
    for (int64_t j = 0; j < n; ++j) total += sg[j];
    float* og = out + g * H;
    for (int64_t j = 0; j < n; ++j) {
      const float w = sg[j] / total;
      const float* vj = v + j * H;
      for (int64_t d = 0; d < H; d += 16) __builtin_prefetch(vj + 8 * H + d, 0, 0);
      for (int64_t d = 0; d < H; ++d) og[d] += w * vj[d];
    }
  }
}

// Prefill: T query tokens per row (a prompt, or a chunk of one), each with its own mask row.
// Work items are (row, kv head, query head, block of 16 queries); the block's 16 queries are the
// 16 lanes of every vector: scores against a slot are 16 dot products computed as H broadcast
// FMAs (no horizontal sums), the softmax runs down the slots per lane, and the values are
// summed the same way. Only the slots in the union of the block's spans are visited, so a
// causal prompt costs its lower triangle (XLA's form computes and exponentiates all T x S).
constexpr int64_t kLanes = 16;

struct PrefillProblem {
  const float* q;       // [R, K, G, T, H], already scaled
  const float* k;       // [R, K, W, H]
  const float* v;       // [R, K, W, H]
  const bool* mask_t;   // [R, W, T]: which queries see each slot (the mask, transposed)
  const int32_t* lo;    // [R, T]: first slot the query sees (W: none)
  const int32_t* hi;    // [R, T]: one past the last (0: none)
  float* out;           // [R, K, G, T, H]
  int64_t rows, heads, groups, steps, width, dim;
  float cap;

  int64_t Blocks() const { return (steps + kLanes - 1) / kLanes; }
  int64_t Items() const { return rows * heads * groups * Blocks(); }
  void Run(int64_t item, std::vector<float>& buf) const;
};

// exp(x - m) per lane, 0 where x is -inf (a slot the query does not see).
inline void ExpLanes(float* x, const float* m, float* sum) {
#if defined(__AVX512F__)
  const __m512 xv = _mm512_loadu_ps(x);
  const __mmask16 live = _mm512_cmp_ps_mask(xv, _mm512_set1_ps(-INFINITY), _CMP_NEQ_OQ);
  const __m512 e = _mm512_maskz_mov_ps(live, Exp16(_mm512_sub_ps(xv, _mm512_loadu_ps(m))));
  _mm512_storeu_ps(x, e);
  _mm512_storeu_ps(sum, _mm512_add_ps(_mm512_loadu_ps(sum), e));
#else
  for (int64_t i = 0; i < kLanes; ++i) {
    x[i] = x[i] == -INFINITY ? 0.0f : std::exp(x[i] - m[i]);
    sum[i] += x[i];
  }
#endif
}

void PrefillProblem::Run(int64_t item, std::vector<float>& buf) const {
  const int64_t T = steps, H = dim, W = width;
  const int64_t block = item % Blocks(), head = item / Blocks();  // head: (r, kv head, g)
  const int64_t rk = head / groups, r = rk / heads;
  const int64_t t0 = block * kLanes, nt = std::min<int64_t>(kLanes, T - t0);
  const float* qb = q + (head * T + t0) * H;
  float* ob = out + (head * T + t0) * H;
  std::fill(ob, ob + nt * H, 0.0f);
  int64_t first = W, last = 0;
  for (int64_t i = 0; i < nt; ++i) {
    const int64_t a = std::max<int64_t>(0, lo[r * T + t0 + i]);
    const int64_t b = std::min<int64_t>(W, hi[r * T + t0 + i]);
    if (b > a) first = std::min(first, a), last = std::max(last, b);
  }
  if (last <= first) return;
  const int64_t n = last - first;
  const float* kb = k + (rk * W + first) * H;
  const float* vb = v + (rk * W + first) * H;
  const bool* mb = mask_t + (r * W + first) * T + t0;  // slot j's row: mb + j * T
  buf.resize((2 * H + n) * kLanes);
  float* qt = buf.data();         // [H, 16]: the block's queries, lanes = queries
  float* sc = qt + H * kLanes;    // [n, 16]: scores, then softmax weights
  float* ot = sc + n * kLanes;    // [H, 16]: the block's outputs, unnormalized
  for (int64_t d = 0; d < H; ++d)
    for (int64_t i = 0; i < kLanes; ++i) qt[d * kLanes + i] = i < nt ? qb[i * H + d] : 0.0f;
  float top[kLanes], sum[kLanes];
  std::fill(top, top + kLanes, -INFINITY);
  std::fill(sum, sum + kLanes, 0.0f);
#if defined(__AVX512F__)
  const __mmask16 block_lanes = static_cast<__mmask16>((1u << nt) - 1);
  __m512 topv = _mm512_set1_ps(-INFINITY);
  for (int64_t j = 0; j < n; ++j) {
    const float* kj = kb + j * H;
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();  // two chains, then summed
    int64_t d = 0;
    for (; d + 1 < H; d += 2) {
      acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(qt + d * kLanes), _mm512_set1_ps(kj[d]), acc0);
      acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(qt + (d + 1) * kLanes), _mm512_set1_ps(kj[d + 1]),
                             acc1);
    }
    if (d < H)
      acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(qt + d * kLanes), _mm512_set1_ps(kj[d]), acc0);
    __m512 x = _mm512_add_ps(acc0, acc1);
    if (cap > 0.0f) {
      alignas(64) float lane[kLanes];
      _mm512_store_ps(lane, x);
      for (int64_t i = 0; i < kLanes; ++i) lane[i] = cap * std::tanh(lane[i] / cap);
      x = _mm512_load_ps(lane);
    }
    const __mmask16 live = _mm_mask_test_epi8_mask(
        block_lanes, _mm_maskz_loadu_epi8(block_lanes, mb + j * T), _mm_set1_epi8(1));
    x = _mm512_mask_mov_ps(_mm512_set1_ps(-INFINITY), live, x);
    _mm512_storeu_ps(sc + j * kLanes, x);
    topv = _mm512_max_ps(topv, x);
  }
  _mm512_storeu_ps(top, topv);
#else
  for (int64_t j = 0; j < n; ++j) {
    float acc[kLanes] = {};
    const float* kj = kb + j * H;
    for (int64_t d = 0; d < H; ++d) {
      const float kd = kj[d];
      for (int64_t i = 0; i < kLanes; ++i) acc[i] += qt[d * kLanes + i] * kd;
    }
    const bool* mj = mb + j * T;
    float* sj = sc + j * kLanes;
    for (int64_t i = 0; i < kLanes; ++i) {
      float x = acc[i];
      if (cap > 0.0f) x = cap * std::tanh(x / cap);
      sj[i] = (i < nt && mj[i]) ? x : -INFINITY;
      top[i] = std::max(top[i], sj[i]);
    }
  }
#endif
  for (int64_t i = 0; i < kLanes; ++i) top[i] = top[i] == -INFINITY ? 0.0f : top[i];
  for (int64_t j = 0; j < n; ++j) ExpLanes(sc + j * kLanes, top, sum);
  // Values: 8 output dims at a time, their 8 x 16 sums in registers across all n slots.
  constexpr int64_t kDims = 8;
#if defined(__AVX512F__)
  if (H % kDims == 0) {
    for (int64_t d0 = 0; d0 < H; d0 += kDims) {
      __m512 acc[kDims];
      for (int64_t e = 0; e < kDims; ++e) acc[e] = _mm512_setzero_ps();
      for (int64_t j = 0; j < n; ++j) {
        const __m512 w = _mm512_loadu_ps(sc + j * kLanes);
        const float* vj = vb + j * H + d0;
        for (int64_t e = 0; e < kDims; ++e)
          acc[e] = _mm512_fmadd_ps(w, _mm512_set1_ps(vj[e]), acc[e]);
      }
      for (int64_t e = 0; e < kDims; ++e) _mm512_storeu_ps(ot + (d0 + e) * kLanes, acc[e]);
    }
  } else
#endif
  for (int64_t d0 = 0; d0 < H; d0 += kDims) {
    const int64_t nd = std::min<int64_t>(kDims, H - d0);
    float acc[kDims][kLanes] = {};
    for (int64_t j = 0; j < n; ++j) {
      const float* sj = sc + j * kLanes;
      const float* vj = vb + j * H + d0;
      for (int64_t e = 0; e < kDims; ++e) {
        const float vd = e < nd ? vj[e] : 0.0f;
        for (int64_t i = 0; i < kLanes; ++i) acc[e][i] += sj[i] * vd;
      }
    }
    for (int64_t e = 0; e < nd; ++e)
      for (int64_t i = 0; i < kLanes; ++i) ot[(d0 + e) * kLanes + i] = acc[e][i];
  }
  for (int64_t i = 0; i < nt; ++i) {
    const float inv = sum[i] > 0.0f ? 1.0f / sum[i] : 0.0f;
    for (int64_t d = 0; d < H; ++d) ob[i * H + d] = ot[d * kLanes + i] * inv;
  }
}

struct DecodeProblem {
  Problem p;
  int64_t Items() const { return p.rows * p.heads; }
  void Run(int64_t item, std::vector<float>& buf) const { AttendItem(p, item, buf); }
};

// Items are taken from a shared counter by the calling thread and by up to (threads - 1) pool
// tasks; the caller returns once every item is done. A task that starts after the work is gone
// takes nothing, so the call never waits on a task that has not started (no deadlock when the
// pool is busy), and the shared state outlives the call through the tasks' shared_ptr.
template <typename P>
struct Shared {
  explicit Shared(const P& p) : p(p) {}
  P p;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  std::mutex mu;
  std::condition_variable cv;

  void Work() {
    std::vector<float> buf;
    const int64_t items = p.Items();
    int64_t mine = 0;
    for (int64_t i; (i = next.fetch_add(1)) < items;) {
      p.Run(i, buf);
      ++mine;
    }
    if (mine && done.fetch_add(mine) + mine == items) {
      std::lock_guard<std::mutex> lock(mu);
      cv.notify_all();
    }
  }
};

template <typename P>
void RunItems(ffi::ThreadPool& pool, const P& problem) {
  const int64_t items = problem.Items();
  if (items == 0) return;
  auto shared = std::make_shared<Shared<P>>(problem);
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), items) - 1;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([shared] { shared->Work(); });
  shared->Work();
  std::unique_lock<std::mutex> lock(shared->mu);
  shared->cv.wait(lock, [&] { return shared->done.load() == items; });
}

ffi::Error DecodeAttention(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q,
                           ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> v,
                           ffi::Buffer<ffi::PRED> mask, ffi::Buffer<ffi::S32> lo,
                           ffi::Buffer<ffi::S32> hi, float logit_cap,
                           ffi::ResultBuffer<ffi::F32> out) {
  auto kd = k.dimensions(), qd = q.dimensions();
  if (kd.size() < 3 || qd.size() < 3)
    return ffi::Error::InvalidArgument("decode_attention: q and k need rank >= 3");
  Problem p;
  p.heads = kd[kd.size() - 3];
  p.width = kd[kd.size() - 2];
  p.dim = kd[kd.size() - 1];
  p.groups = qd[qd.size() - 2];
  p.rows = static_cast<int64_t>(k.element_count()) / (p.heads * p.width * p.dim);
  if (qd[qd.size() - 1] != p.dim || qd[qd.size() - 3] != p.heads ||
      static_cast<int64_t>(q.element_count()) != p.rows * p.heads * p.groups * p.dim ||
      v.element_count() != k.element_count() ||
      static_cast<int64_t>(mask.element_count()) != p.rows * p.width ||
      static_cast<int64_t>(lo.element_count()) != p.rows ||
      static_cast<int64_t>(hi.element_count()) != p.rows)
    return ffi::Error::InvalidArgument("decode_attention: inconsistent operand shapes");
  p.q = q.typed_data();
  p.k = k.typed_data();
  p.v = v.typed_data();
  p.mask = mask.typed_data();
  p.lo = lo.typed_data();
  p.hi = hi.typed_data();
  p.out = out->typed_data();
  p.cap = logit_cap;
  RunItems(pool, DecodeProblem{p});
  return ffi::Error::Success();
}

ffi::Error PrefillAttention(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q,
                            ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> v,
                            ffi::Buffer<ffi::PRED> mask_t, ffi::Buffer<ffi::S32> lo,
                            ffi::Buffer<ffi::S32> hi, float logit_cap,
                            ffi::ResultBuffer<ffi::F32> out) {
  auto kd = k.dimensions(), qd = q.dimensions();
  if (kd.size() < 3 || qd.size() < 4)
    return ffi::Error::InvalidArgument("prefill_attention: q needs rank >= 4, k rank >= 3");
  PrefillProblem p;
  p.heads = kd[kd.size() - 3];
  p.width = kd[kd.size() - 2];
  p.dim = kd[kd.size() - 1];
  p.groups = qd[qd.size() - 3];
  p.steps = qd[qd.size() - 2];
  p.rows = static_cast<int64_t>(k.element_count()) / (p.heads * p.width * p.dim);
  if (qd[qd.size() - 1] != p.dim || qd[qd.size() - 4] != p.heads ||
      static_cast<int64_t>(q.element_count()) !=
          p.rows * p.heads * p.groups * p.steps * p.dim ||
      v.element_count() != k.element_count() ||
      static_cast<int64_t>(mask_t.element_count()) != p.rows * p.width * p.steps ||
      static_cast<int64_t>(lo.element_count()) != p.rows * p.steps ||
      static_cast<int64_t>(hi.element_count()) != p.rows * p.steps)
    return ffi::Error::InvalidArgument("prefill_attention: inconsistent operand shapes");
  p.q = q.typed_data();
  p.k = k.typed_data();
  p.v = v.typed_data();
  p.mask_t = mask_t.typed_data();
  p.lo = lo.typed_data();
  p.hi = hi.typed_data();
  p.out = out->typed_data();
  p.cap = logit_cap;
  RunItems(pool, p);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(GiftDecodeAttention, DecodeAttention,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::PRED>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Attr<float>("logit_cap")
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(GiftPrefillAttention, PrefillAttention,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::PRED>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Attr<float>("logit_cap")
                                  .Ret<ffi::Buffer<ffi::F32>>());
