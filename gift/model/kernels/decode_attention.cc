// Decode attention over a KV cache for XLA:CPU (an XLA FFI custom call; built and registered by
// gift/model/cpu_kernels.py). One query token per row, each row reading only the cache span
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

// Items are taken from a shared counter by the calling thread and by up to (threads - 1) pool
// tasks; the caller returns once every item is done. A task that starts after the work is gone
// takes nothing, so the call never waits on a task that has not started (no deadlock when the
// pool is busy), and the shared state outlives the call through the tasks' shared_ptr.
struct Shared {
  explicit Shared(const Problem& p) : p(p) {}
  Problem p;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  std::mutex mu;
  std::condition_variable cv;

  void Work() {
    std::vector<float> scores;
    const int64_t items = p.rows * p.heads;
    int64_t mine = 0;
    for (int64_t i; (i = next.fetch_add(1)) < items;) {
      AttendItem(p, i, scores);
      ++mine;
    }
    if (mine && done.fetch_add(mine) + mine == items) {
      std::lock_guard<std::mutex> lock(mu);
      cv.notify_all();
    }
  }
};

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
  const int64_t items = p.rows * p.heads;
  if (items == 0) return ffi::Error::Success();
  auto shared = std::make_shared<Shared>(p);
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), items) - 1;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([shared] { shared->Work(); });
  shared->Work();
  std::unique_lock<std::mutex> lock(shared->mu);
  shared->cv.wait(lock, [&] { return shared->done.load() == items; });
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
