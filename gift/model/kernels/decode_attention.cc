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

// One (row, kv head): scores of all G queries against the span's keys, their softmax weights,
// then one pass over the span's values. The cache is streamed with non-temporal prefetches
// (8 slots ahead): on a busy step it is tens of MB read once, and left out of the shared cache
// it evicts less of the weights the step's matmuls read next (decode step at 520 slots, 32
// rows, 2-core EPYC: 7.0 -> 6.8 ms; a temporal prefetch made it slower, 7.5).
void AttendItem(const Problem& p, int64_t item, std::vector<float>& scores) {
  const int64_t r = item / p.heads;
  const int64_t G = p.groups, H = p.dim, W = p.width;
  const float* q = p.q + item * G * H;
  float* out = p.out + item * G * H;
  const int64_t lo = std::max<int64_t>(0, p.lo[r]);
  const int64_t hi = std::min<int64_t>(W, p.hi[r]);
  std::fill(out, out + G * H, 0.0f);
  if (hi <= lo) return;
  const int64_t n = hi - lo;
  const bool* mask = p.mask + r * W + lo;
  const float* k = p.k + (item * W + lo) * H;
  const float* v = p.v + (item * W + lo) * H;
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
