// The LSTM recurrence of seqjax.models.lstm_recurrence as two XLA FFI custom calls on CPU: the
// whole forward time loop in one call, the whole backward loop in another.
//
// Shapes: T steps, B batch, H units, G = 4H. Inputs are time-major and already scaled by
// models.gate_scale, so one tanh over the G columns gives every gate (see models.py).
//
// Each batch row's recurrence is independent of the others, so the batch is split into one
// contiguous slice per thread and every thread runs the whole time loop on its slice: no
// synchronisation inside the loop. The backward pass also sums the weights' gradients as it
// goes, every few steps, per chunk of 16 rows, while the steps' gradients are still in cache.
// The matmuls are a register-blocked micro-kernel (8 rows x 32 columns of accumulators with
// AVX-512, else 6 x 16) over weights packed once per call into panels of as many columns (the
// last one vector wide where the columns come to an odd number of vectors); every output
// element sums its products in the same order whatever the thread count or the row's place in
// its slice, so results are bitwise reproducible. What the forward pass keeps for the backward
// (every step's gates, c and h) is stored past the caches: only the backward reads it, after
// the last step.
//
// Built by seqjax/native_lstm.py with the machine's C++ compiler on first use.

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <sched.h>
#endif
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// The micro-kernel's vectors: 16 floats where the CPU has AVX-512 (twice the multiply-adds of
// AVX2 per instruction; measured 1.7-2.1 times faster here), else 8, which the compiler maps to
// AVX, SSE or NEON as -march allows.
#if defined(__AVX512F__)
typedef float vec __attribute__((vector_size(64)));
constexpr int kRows = 8;  // Rows of a micro-kernel block: 16 accumulators of the 32 registers.
#else
typedef float vec __attribute__((vector_size(32)));
constexpr int kRows = 6;  // 12 accumulators of AVX2's 16 registers.
#endif
constexpr int kLanes = sizeof(vec) / sizeof(float);
constexpr int kPanel = 2 * kLanes;  // Columns of a panel: two vectors.

inline vec Load(const float* p) {
  vec v;
  __builtin_memcpy(&v, p, sizeof(vec));  // Unaligned.
  return v;
}
inline void Store(float* p, vec v) { __builtin_memcpy(p, &v, sizeof(vec)); }

// c + a * b, rounded once. Spelled out on x86 because GCC, tuned for AMD, splits a loop's only
// chain of multiply-adds into multiplies and adds (a shorter chain), which round twice: the
// result would then depend on the micro-kernel's shape.
inline vec Fma(float a, vec b, vec c) {
#if defined(__AVX512F__)
  return _mm512_fmadd_ps(_mm512_set1_ps(a), b, c);
#elif defined(__FMA__)
  return _mm256_fmadd_ps(_mm256_set1_ps(a), b, c);
#else
  return c + a * b;  // -ffp-contract=fast fuses it where the CPU can.
#endif
}

// C[m, 0:V * kLanes] (+)= sum_k A[m, k] * B[k * ldb + 0:V * kLanes], for m < M; k ascending.
// A[m, k] is a[m * lda + k], or a[k * lda + m] if kTransposedA.
template <int M, int V, bool kTransposedA>
inline void MicroKernel(long depth, const float* __restrict a, long lda,
                        const float* __restrict b, long ldb, float* __restrict c, long ldc,
                        bool accumulate) {
  vec acc[V][M];
  for (int v = 0; v < V; ++v) {
    for (int m = 0; m < M; ++m) acc[v][m] = accumulate ? Load(c + m * ldc + v * kLanes) : vec{};
  }
  for (long k = 0; k < depth; ++k) {
    vec bk[V];
    for (int v = 0; v < V; ++v) bk[v] = Load(b + k * ldb + v * kLanes);
    for (int m = 0; m < M; ++m) {
      const float x = kTransposedA ? a[k * lda + m] : a[m * lda + k];
      for (int v = 0; v < V; ++v) acc[v][m] = Fma(x, bk[v], acc[v][m]);
    }
  }
  for (int v = 0; v < V; ++v) {
    for (int m = 0; m < M; ++m) Store(c + m * ldc + v * kLanes, acc[v][m]);
  }
}

// A block of `rows` (<= R) rows of a panel.
template <int R, int V, bool kTransposedA>
inline void Tail(long rows, long depth, const float* a, long lda, const float* b, long ldb,
                 float* c, long ldc, bool accumulate) {
  if constexpr (R > 0) {
    if (rows == R) {
      MicroKernel<R, V, kTransposedA>(depth, a, lda, b, ldb, c, ldc, accumulate);
    } else {
      Tail<R - 1, V, kTransposedA>(rows, depth, a, lda, b, ldb, c, ldc, accumulate);
    }
  }
}

// C (rows, V * kLanes) (+)= A (rows, depth) @ B (depth, V * kLanes), B's rows ldb apart.
template <int V, bool kTransposedA>
void Panel(long rows, long depth, const float* a, long lda, const float* b, long ldb, float* c,
           long ldc, bool accumulate) {
  // Blocks as even as kRows allows: 32 rows as 6, 6, 5, 5, 5, 5 rather than five of 6 and one
  // of 2, whose few accumulators would wait on each other's multiply-adds.
  const long blocks = (rows + kRows - 1) / kRows;
  for (long i = 0, m = 0; i < blocks; ++i) {
    const long block = rows / blocks + (i < rows % blocks);
    Tail<kRows, V, kTransposedA>(block, depth, kTransposedA ? a + m : a + m * lda, lda, b, ldb,
                                 c + m * ldc, ldc, accumulate);
    m += block;
  }
}

// Columns as the matmuls compute them: whole vectors.
long Padded(long cols) { return (cols + kLanes - 1) / kLanes * kLanes; }

// C (rows, cols) (+)= A (rows, depth) @ B (depth, cols), cols a multiple of kLanes: panels of
// kPanel columns, then one of kLanes if cols is an odd number of vectors. B's panel p starts at
// b + p * panel_stride, its rows ldb apart (last_ldb in a last narrow panel); A as in
// MicroKernel. The panel loop is outside so that a panel stays in cache over all rows.
template <bool kTransposedA>
void Matmul(long rows, long depth, const float* a, long lda, const float* b, long ldb,
            long last_ldb, long panel_stride, long cols, float* c, long ldc, bool accumulate) {
  const long panels = cols / kPanel;
  for (long p = 0; p < panels; ++p) {
    Panel<2, kTransposedA>(rows, depth, a, lda, b + p * panel_stride, ldb, c + p * kPanel, ldc,
                           accumulate);
  }
  if (cols % kPanel) {
    Panel<1, kTransposedA>(rows, depth, a, lda, b + panels * panel_stride, last_ldb,
                           c + panels * kPanel, ldc, accumulate);
  }
}

// C (rows, cols) (+)= A (rows, depth) @ B, B packed by Pack, cols = Padded(B's columns).
void Matmul(long rows, long depth, const float* a, long lda, const float* b, long cols, float* c,
            long ldc, bool accumulate) {
  Matmul<false>(rows, depth, a, lda, b, kPanel, kLanes, depth * kPanel, cols, c, ldc, accumulate);
}

// w (depth, cols) row-major, or its transpose when `transpose` (w then (cols, depth)) -> panels
// as Matmul reads them: each (depth, kPanel) contiguous, the last (depth, kLanes) if Padded(cols)
// is an odd number of vectors; zero beyond `cols`.
std::vector<float> Pack(const float* w, long depth, long cols, bool transpose) {
  std::vector<float> packed(depth * Padded(cols), 0.0f);
  for (long p = 0; p * kPanel < cols; ++p) {
    const long width = std::min<long>(kPanel, Padded(cols) - p * kPanel);
    for (long k = 0; k < depth; ++k) {
      for (long j = 0; j < width && p * kPanel + j < cols; ++j) {
        const long col = p * kPanel + j;
        packed[p * depth * kPanel + k * width + j] =
            transpose ? w[col * depth + k] : w[k * cols + col];
      }
    }
  }
  return packed;
}

// tanh in float32 as Eigen approximates it: a 13/6 rational function on [-7.9, 7.9], within
// 4e-7 of tanh; unlike std::tanh, the compiler vectorizes it.
inline float Tanh(float x) {
  const float clamp = 7.90531110763549805f;
  const float y = x < -clamp ? -clamp : (x > clamp ? clamp : x);
  const float y2 = y * y;
  float p = y2 * -2.76076847742355e-16f + 2.00018790482477e-13f;
  p = y2 * p + -8.60467152213735e-11f;
  p = y2 * p + 5.12229709037114e-08f;
  p = y2 * p + 1.48572235717979e-05f;
  p = y2 * p + 6.37261928875436e-04f;
  p = y2 * p + 4.89352455891786e-03f;
  p = y * p;
  float q = y2 * 1.19825839466702e-06f + 1.18534705686654e-04f;
  q = y2 * q + 2.26843463243900e-03f;
  q = y2 * q + 4.89352518554385e-03f;
  const float t = p / q;
  return (x > -0.0004f && x < 0.0004f) ? x : t;
}

// dst[0, n) = src[0, n), the whole vectors stored past the caches where dst is aligned for
// them: the forward's residuals are read only by the backward pass, after every step, so
// storing them around the cache saves reading each line in before it is overwritten.
// Callers end with StoreFence.
inline void StreamCopy(float* __restrict dst, const float* __restrict src, long n) {
  long i = 0;
#if defined(__AVX512F__)
  if (reinterpret_cast<uintptr_t>(dst) % 64 == 0) {
    for (; i + 16 <= n; i += 16) _mm512_stream_ps(dst + i, _mm512_loadu_ps(src + i));
  }
#elif defined(__AVX__)
  if (reinterpret_cast<uintptr_t>(dst) % 32 == 0) {
    for (; i + 8 <= n; i += 8) _mm256_stream_ps(dst + i, _mm256_loadu_ps(src + i));
  }
#endif
  std::memcpy(dst + i, src + i, (n - i) * sizeof(float));
}

// Orders StreamCopy's stores before whatever the thread stores next (the end of its part).
inline void StoreFence() {
#if defined(__SSE__)
  _mm_sfence();
#endif
}

// Asks for the n floats from p to be brought into the cache, to be written.
inline void Prefetch(const float* p, long n) {
  for (long i = 0; i < n; i += 64 / sizeof(float)) __builtin_prefetch(p + i, 1);
}

int ThreadCount() {
  static const int count = [] {
    const char* forced = std::getenv("SEQJAX_LSTM_THREADS");
    if (forced != nullptr && std::atoi(forced) > 0) return std::atoi(forced);
#if defined(__linux__)
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
#endif
    return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  }();
  return count;
}

// Batch rows are handled in chunks of kChunk: the weights' gradients are summed per chunk, then
// over the chunks in order, so that no sum depends on how many threads share the batch.
constexpr long kChunk = 16;
// Rows (steps x a chunk's rows) of the weights' gradients' matmul: each adds into the sums.
constexpr long kGradientDepth = 128;

long Chunks(long rows) { return (rows + kChunk - 1) / kChunk; }

// The parts of one ParallelFor. Whoever claims a part runs it: the calling thread and the tasks
// it schedules on XLA's pool alike, so the call ends even where the pool runs none of them; a
// task that starts after every part is claimed touches nothing but this object, which it shares.
struct Parts {
  std::function<void(long)> run;  // Called only for a claimed part, while the caller waits.
  long count;
  std::atomic<long> next{0};
  std::mutex mutex;
  std::condition_variable all_done;
  long done = 0;

  void Work() {
    for (long i = next++; i < count; i = next++) {
      run(i);
      const std::lock_guard<std::mutex> lock(mutex);
      if (++done == count) all_done.notify_all();
    }
  }
};

// Runs fn(begin, end) over the batch rows [0, n) split into contiguous parts of whole chunks,
// one part per thread, on the calling thread and the threads of XLA's CPU pool: they are
// running already (often spinning for work), where a thread of our own would be created for
// each call and wait its turn for a core.
template <typename Fn>
void ParallelFor(ffi::ThreadPool& threads, long n, Fn fn) {
  const long chunks = Chunks(n);
  const long count = std::max(1L, std::min<long>(ThreadCount(), chunks));
  auto parts = std::make_shared<Parts>();
  parts->count = count;
  parts->run = [&](long i) { fn(std::min(n, chunks * i / count * kChunk),
                                std::min(n, chunks * (i + 1) / count * kChunk)); };
  for (long i = 1; i < count; ++i) threads.Schedule([parts] { parts->Work(); });
  parts->Work();
  std::unique_lock<std::mutex> lock(parts->mutex);
  parts->all_done.wait(lock, [&] { return parts->done == count; });
}

struct Shapes {
  long steps, batch, units;
};

// Where a row's gate pre-activations start each step, before the matmul adds [x_t, h] @ the
// stacked kernels: its row of xw (stride 4H; the matmul has no x_t); the bias (stride 0; the
// matmul projects x_t); or the row of the projected embedding table (stride Gp) that the row's
// token id picks (no x_t either).
struct Start {
  const float* rows;
  long stride;
  const int32_t* ids = nullptr;  // (T, B)
  const float* Row(long row) const { return rows + (ids ? ids[row] : row) * stride; }
};

// One step of one row: the gates' tanh from their scaled pre-activations z (4H, in place),
// then c and h.
inline void GateStep(long H, float* __restrict z, float* __restrict c, float* __restrict h) {
  for (long j = 0; j < 4 * H; ++j) z[j] = Tanh(z[j]);
  const float *gi = z, *gf = z + H, *gg = z + 2 * H, *go = z + 3 * H;
  for (long j = 0; j < H; ++j) {
    const float i = gi[j] * 0.5f + 0.5f, f = gf[j] * 0.5f + 0.5f, o = go[j] * 0.5f + 0.5f;
    c[j] = f * c[j] + i * gg[j];
    h[j] = o * Tanh(c[j]);
  }
}

// Forward over batch rows [b0, b1). Writes h_final (B, H) and, where given, hs, cs (T, B, H)
// and gates (T, B, 4H), the tanh of the scaled pre-activations. `packed` holds the input
// kernel's E rows, where x_t (inputs (T, B, E)) is projected here, above the recurrent kernel's:
// one matmul of [x_t, h] a step.
void ForwardRows(const Shapes& s, long b0, long b1, const Start& start, long E,
                 const float* inputs, const float* packed, const bool* mask,
                 const float* recurrent_mask, bool reverse, float* h_final, float* hs, float* cs,
                 float* gates) {
  const long rows = b1 - b0, H = s.units, G = 4 * H, Gp = Padded(G), D = E + H;
  // xh: each row's [x_t, h * recurrent mask], the matmul's input; z: each row's gate
  // pre-activations, the matmul's output, then their tanh.
  std::vector<float> c(rows * H, 0.0f), h(rows * H, 0.0f), xh(rows * D, 0.0f);
  std::vector<float> z(rows * Gp, 0.0f);
  for (long step = 0; step < s.steps; ++step) {
    const long t = reverse ? s.steps - 1 - step : step;
    const long first = t * s.batch + b0;  // The slice's first row at step t.
    const bool* keep = mask ? mask + first : nullptr;
    bool any = keep == nullptr;
    for (long r = 0; r < rows && !any; ++r) any = keep[r];
    if (any) {
      for (long r = 0; r < rows; ++r) {
        std::memcpy(&z[r * Gp], start.Row(first + r), G * sizeof(float));
        // x_t @ kernel here rather than in XLA: no (T, B, 4H) xw in memory.
        if (E) std::memcpy(&xh[r * D], inputs + (first + r) * E, E * sizeof(float));
      }
      Matmul(rows, D, xh.data(), D, packed, Gp, z.data(), Gp, true);
    }
    for (long r = 0; r < rows; ++r) {
      float* zr = &z[r * Gp];
      if (keep == nullptr || keep[r]) {
        float* hr = &h[r * H];
        GateStep(H, zr, &c[r * H], hr);
        const float* rm = recurrent_mask ? recurrent_mask + (b0 + r) * H : nullptr;
        float* h_in = &xh[r * D + E];
        for (long j = 0; j < H; ++j) h_in[j] = rm ? hr[j] * rm[j] : hr[j];
      } else {
        std::fill(zr, zr + G, 0.0f);  // Never read: the backward pass zeroes padded steps.
      }
    }
    for (long r = 0; gates && r < rows; ++r) StreamCopy(gates + (first + r) * G, &z[r * Gp], G);
    if (cs) StreamCopy(cs + first * H, c.data(), rows * H);
    if (hs) StreamCopy(hs + first * H, h.data(), rows * H);
  }
  std::memcpy(h_final + b0 * H, h.data(), rows * H * sizeof(float));
  StoreFence();
}

// One step's d xw (dz) of one row, and the row's dc carried to the step before, from the
// gates' tanh (4H), c and c before, dh and dc.
inline void GateGradients(long H, const float* __restrict gates, const float* __restrict c,
                          const float* __restrict c_before, const float* __restrict dh,
                          float* __restrict dc, float* __restrict dz) {
  const float *gi = gates, *gf = gates + H, *gg = gates + 2 * H, *go = gates + 3 * H;
  for (long j = 0; j < H; ++j) {
    const float i = gi[j] * 0.5f + 0.5f, f = gf[j] * 0.5f + 0.5f, o = go[j] * 0.5f + 0.5f;
    const float tanh_c = Tanh(c[j]);
    const float dc_total = dc[j] + dh[j] * o * (1.0f - tanh_c * tanh_c);
    dz[j] = dc_total * gg[j] * 0.5f * (1.0f - gi[j] * gi[j]);
    dz[H + j] = dc_total * c_before[j] * 0.5f * (1.0f - gf[j] * gf[j]);
    dz[2 * H + j] = dc_total * i * (1.0f - gg[j] * gg[j]);
    dz[3 * H + j] = dh[j] * tanh_c * 0.5f * (1.0f - go[j] * go[j]);
    dc[j] = dc_total * f;
  }
}

// What the backward pass adds the weights' gradients into, when it computes them: per chunk of
// kChunk batch rows, a (D, Gp) block of sums, D = E + H + 1: the input kernel's gradient
// (E rows), the recurrent kernel's (H rows) and the bias's (1 row), each sum over the steps and
// the chunk's rows of [x_t, h_before * recurrent mask, 1] outer d xw_t. Where the forward
// looked x_t up in an embedding table (E = 0 here), each chunk instead sums d xw_t per token id
// into `by_id` (V, Gp), a row written first where `touched` is 0: the gradients of the table
// and the input kernel follow from those V rows (LstmBackwardImpl), not from every token's.
struct WeightGradients {
  const float* inputs = nullptr;  // x (T, B, E)
  const float* hs = nullptr;      // h (T, B, H)
  float* sums = nullptr;          // (Chunks(B), D, Gp)
  const int32_t* ids = nullptr;   // (T, B)
  long vocabulary = 0;            // V
  float* by_id = nullptr;         // (Chunks(B), V, Gp)
  uint8_t* touched = nullptr;     // (Chunks(B), V)
};

// Backward over batch rows [b0, b1) (b0 a multiple of kChunk): from the forward's residuals and
// the output's gradient, dh_final (B, H) or dhs (T, B, H) (the other null), either d xw
// (T, B, 4H) into `dxw`, or, where the forward projected E features, d inputs (T, B, E) and
// the weights' gradients. `packed_t` is the transpose of the input kernel (E, 4H) above the
// recurrent kernel (H, 4H), packed: one matmul a step gives d x_t and d h_before.
void BackwardRows(const Shapes& s, long b0, long b1, const float* gates, const float* cs,
                  const float* packed_t, const bool* mask, const float* recurrent_mask,
                  bool reverse, const float* dh_final, const float* dhs, float* dxw,
                  long features, float* d_inputs, const WeightGradients& weights) {
  const long rows = b1 - b0, H = s.units, G = 4 * H, E = features, D = E + H + 1;
  const long Gp = Padded(G), Cp = Padded(H + E);
  // Each chunk keeps `slots` steps of d xw (and of [x, h_before, 1]), the rows of a step
  // together, for one matmul into the sums when the slots are full.
  const long chunks = Chunks(rows), slots = weights.sums ? kGradientDepth / kChunk : 1;
  const auto chunk_rows = [&](long c) { return std::min(kChunk, rows - c * kChunk); };
  const auto at = [&](long slot, long r) {  // Row r's place in the chunk buffers at `slot`.
    const long c = r / kChunk;
    return c * slots * kChunk + slot * chunk_rows(c) + r % kChunk;
  };
  // dhx: each row's [d x_t, d h_before], the matmul's output.
  std::vector<float> dh(rows * H, 0.0f), dc(rows * H, 0.0f), dhx(rows * Cp, 0.0f);
  std::vector<float> dz(chunks * slots * kChunk * Gp, 0.0f);
  std::vector<float> xh(weights.sums ? chunks * slots * kChunk * D : 0, 0.0f), zeros(H, 0.0f);
  std::vector<long> slot_step(slots);  // The time step each slot holds.
  long slot = 0;
  const auto add_to_sums = [&] {
    for (long c = 0; c < chunks; ++c) {
      const long first = at(0, c * kChunk), chunk = b0 / kChunk + c;
      Matmul<true>(D, slot * chunk_rows(c), &xh[first * D], D, &dz[first * Gp], Gp, Gp, kPanel,
                   Gp, weights.sums + chunk * D * Gp, Gp, true);
      if (!weights.ids) continue;
      float* by_id = weights.by_id + chunk * weights.vocabulary * Gp;
      uint8_t* touched = weights.touched + chunk * weights.vocabulary;
      // The rows in the order they are added, each one's id fetched a few rows ahead: the sums
      // of an id lie anywhere in the (V, Gp) block.
      long ids[kGradientDepth], dz_rows[kGradientDepth], n = 0;
      for (long i = 0; i < slot; ++i) {
        for (long r = c * kChunk; r < c * kChunk + chunk_rows(c); ++r, ++n) {
          ids[n] = weights.ids[slot_step[i] * s.batch + b0 + r];
          dz_rows[n] = at(i, r);
        }
      }
      constexpr long kAhead = 4;
      for (long k = 0; k < n; ++k) {
        if (k + kAhead < n) Prefetch(by_id + ids[k + kAhead] * Gp, G);
        const float* dzr = &dz[dz_rows[k] * Gp];
        float* sum = by_id + ids[k] * Gp;
        if (touched[ids[k]]) {
          for (long j = 0; j < G; ++j) sum[j] += dzr[j];
        } else {
          std::memcpy(sum, dzr, G * sizeof(float));
          touched[ids[k]] = 1;
        }
      }
    }
    slot = 0;
  };
  if (dh_final) std::memcpy(dh.data(), dh_final + b0 * H, rows * H * sizeof(float));
  for (long step = s.steps - 1; step >= 0; --step) {
    const long t = reverse ? s.steps - 1 - step : step;
    const long before = reverse ? t + 1 : t - 1;  // The step whose state this one started from.
    const bool has_before = before >= 0 && before < s.steps;
    const bool* keep = mask ? mask + t * s.batch + b0 : nullptr;
    bool any = keep == nullptr;
    for (long r = 0; r < rows && !any; ++r) any = keep[r];
    if (dhs) {  // The output's gradient reaches dh at padded steps too (it passes through).
      const float* dhs_t = dhs + (t * s.batch + b0) * H;
      for (long k = 0; k < rows * H; ++k) dh[k] += dhs_t[k];
    }
    if (!any) {
      if (dxw) std::memset(dxw + (t * s.batch + b0) * G, 0, rows * G * sizeof(float));
      if (d_inputs) std::memset(d_inputs + (t * s.batch + b0) * E, 0, rows * E * sizeof(float));
      continue;
    }
    for (long r = 0; r < rows; ++r) {
      const long at_h = (t * s.batch + b0 + r) * H;
      float* dhr = &dh[r * H];
      float* dzr = &dz[at(slot, r) * Gp];
      if (weights.sums) {
        float* xhr = &xh[at(slot, r) * D];
        if (E) std::memcpy(xhr, weights.inputs + (t * s.batch + b0 + r) * E, E * sizeof(float));
        if (has_before) {
          std::memcpy(xhr + E, weights.hs + (before * s.batch + b0 + r) * H, H * sizeof(float));
          if (recurrent_mask) {
            const float* rm = recurrent_mask + (b0 + r) * H;
            for (long j = 0; j < H; ++j) xhr[E + j] *= rm[j];
          }
        } else {
          std::fill(xhr + E, xhr + E + H, 0.0f);
        }
        xhr[E + H] = 1.0f;
      }
      if (keep && !keep[r]) {  // Padding: no gradient to xw; dh and dc pass through.
        std::fill(dzr, dzr + G, 0.0f);
        continue;
      }
      GateGradients(H, gates + (t * s.batch + b0 + r) * G, cs + at_h,
                    has_before ? cs + (before * s.batch + b0 + r) * H : zeros.data(), dhr,
                    &dc[r * H], dzr);
    }
    for (long c = 0; c < chunks; ++c) {
      Matmul(chunk_rows(c), G, &dz[at(slot, c * kChunk) * Gp], Gp, packed_t, Cp,
             &dhx[c * kChunk * Cp], Cp, false);
    }
    for (long r = 0; r < rows; ++r) {
      const long row = t * s.batch + b0 + r;
      if (dxw) std::memcpy(dxw + row * G, &dz[at(slot, r) * Gp], G * sizeof(float));
      if (d_inputs) std::memcpy(d_inputs + row * E, &dhx[r * Cp], E * sizeof(float));
      if (keep && !keep[r]) continue;
      float* dhr = &dh[r * H];
      const float* rm = recurrent_mask ? recurrent_mask + (b0 + r) * H : nullptr;
      const float* dh_before = &dhx[r * Cp + E];
      for (long j = 0; j < H; ++j) dhr[j] = rm ? dh_before[j] * rm[j] : dh_before[j];
    }
    if (weights.sums) slot_step[slot] = t;
    if (weights.sums && ++slot == slots) add_to_sums();
  }
  if (weights.sums && slot > 0) add_to_sums();
}

// The input kernel's E rows (E = 0: none) above the recurrent kernel's H, each 4H wide: the
// weights of the forward's one matmul over [x_t, h], and transposed, of the backward's.
std::vector<float> Stacked(const float* kernel, long E, const float* recurrent_kernel, long H) {
  std::vector<float> stacked(kernel, kernel + E * 4 * H);
  stacked.insert(stacked.end(), recurrent_kernel, recurrent_kernel + H * 4 * H);
  return stacked;
}

// The embedding table (V, E) projected: bias + table @ kernel (V, Gp), each row's sum in the
// order the forward's matmul would take for that token (bias, then k ascending), so that
// looking a row up gives the very bits of projecting the token at its step.
std::vector<float> ProjectedTable(ffi::ThreadPool& threads, const float* table, long V, long E,
                                  const float* kernel, const float* bias, long G) {
  const long Gp = Padded(G);
  const std::vector<float> packed = Pack(kernel, E, G, false);
  std::vector<float> projected(V * Gp, 0.0f);
  ParallelFor(threads, V, [&](long v0, long v1) {
    for (long v = v0; v < v1; ++v) std::memcpy(&projected[v * Gp], bias, G * sizeof(float));
    Matmul(v1 - v0, E, table + v0 * E, E, packed.data(), Gp, &projected[v0 * Gp], Gp, true);
  });
  return projected;
}

// From the chunks' d xw sums per token id (see WeightGradients), in chunk order: dz (V, Gp),
// then the table's gradient dz @ kernel^T (V, E) and the input kernel's table^T @ dz (E, 4H).
void TableGradients(ffi::ThreadPool& threads, const float* table, long V, long E,
                    const float* kernel, long G, long chunks, float* by_id,
                    const uint8_t* touched, float* d_table, float* d_kernel) {
  const long Gp = Padded(G), Ep = Padded(E);
  float* dz = by_id;  // Chunk 0's sums become the total.
  const std::vector<float> packed_t = Pack(kernel, G, E, true);
  std::vector<float> d_rows(V * Ep);
  ParallelFor(threads, V, [&](long v0, long v1) {
    for (long v = v0; v < v1; ++v) {
      float* total = dz + v * Gp;
      if (!touched[v]) std::fill(total, total + G, 0.0f);
      for (long c = 1; c < chunks; ++c) {
        if (!touched[c * V + v]) continue;
        const float* sum = by_id + (c * V + v) * Gp;
        for (long j = 0; j < G; ++j) total[j] += sum[j];
      }
      std::fill(total + G, total + Gp, 0.0f);
    }
    Matmul(v1 - v0, G, dz + v0 * Gp, Gp, packed_t.data(), Ep, &d_rows[v0 * Ep], Ep, false);
    for (long v = v0; v < v1; ++v) {
      std::memcpy(d_table + v * E, &d_rows[v * Ep], E * sizeof(float));
    }
  });
  std::vector<float> d_kernel_padded(E * Gp);
  ParallelFor(threads, E, [&](long e0, long e1) {
    Matmul<true>(e1 - e0, V, table + e0, E, dz, Gp, Gp, kPanel, Gp, &d_kernel_padded[e0 * Gp],
                 Gp, false);
  });
  for (long e = 0; e < E; ++e) {
    std::memcpy(d_kernel + e * G, &d_kernel_padded[e * Gp], G * sizeof(float));
  }
}

// Token ids index a table of `rows` rows: any outside it is an error, not a stray read.
ffi::Error CheckIds(ffi::Buffer<ffi::S32>& ids, long rows) {
  for (long i = 0; i < ids.element_count(); ++i) {
    if (ids.typed_data()[i] < 0 || ids.typed_data()[i] >= rows) {
      return ffi::Error::InvalidArgument("an id lies outside the embedding table");
    }
  }
  return ffi::Error::Success();
}

}  // namespace

// The gates' pre-activations start from one of: xw (T, B, 4H); the bias (4H,), with inputs
// (T, B, E) and kernel (E, 4H) to project each step (xw and ids empty); or, given ids (T, B),
// the rows that ids pick of the embedding table inputs (V, E) projected by kernel and bias.
ffi::Error LstmForwardImpl(ffi::ThreadPool threads, ffi::Buffer<ffi::F32> xw,
                           ffi::Buffer<ffi::F32> recurrent_kernel,
                           ffi::Buffer<ffi::PRED> mask, ffi::Buffer<ffi::F32> recurrent_mask,
                           ffi::Buffer<ffi::F32> inputs, ffi::Buffer<ffi::F32> kernel,
                           ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::S32> ids, int32_t reverse,
                           ffi::ResultBuffer<ffi::F32> h_final, ffi::ResultBuffer<ffi::F32> hs,
                           ffi::ResultBuffer<ffi::F32> cs, ffi::ResultBuffer<ffi::F32> gates) {
  const bool lookup = ids.element_count() != 0;
  const bool project = !lookup && xw.element_count() == 0;
  const auto dims = lookup ? ids.dimensions() : (project ? inputs : xw).dimensions();
  const auto rk_dims = recurrent_kernel.dimensions();
  if (dims.size() != (lookup ? 2 : 3) || rk_dims.size() != 2) {
    return ffi::Error::InvalidArgument(
        "expected ids (T, B), or xw or inputs (T, B, .), and recurrent_kernel (H, 4H)");
  }
  const Shapes s{dims[0], dims[1], rk_dims[0]};
  const long G = 4 * s.units, E = project ? inputs.dimensions()[2] : 0;
  std::vector<float> table;
  Start start{xw.typed_data(), G};
  if (project) start = {bias.typed_data(), 0};
  if (lookup) {
    const long V = inputs.dimensions()[0];
    if (ffi::Error error = CheckIds(ids, V); error.failure()) return error;
    table = ProjectedTable(threads, inputs.typed_data(), V, inputs.dimensions()[1],
                           kernel.typed_data(), bias.typed_data(), G);
    start = {table.data(), Padded(G), ids.typed_data()};
  }
  const std::vector<float> packed = Pack(
      Stacked(kernel.typed_data(), E, recurrent_kernel.typed_data(), s.units).data(), E + s.units,
      G, false);
  const bool* m = mask.element_count() ? mask.typed_data() : nullptr;
  const float* rm = recurrent_mask.element_count() ? recurrent_mask.typed_data() : nullptr;
  float* hs_out = hs->element_count() ? hs->typed_data() : nullptr;
  float* cs_out = cs->element_count() ? cs->typed_data() : nullptr;
  float* gates_out = gates->element_count() ? gates->typed_data() : nullptr;
  ParallelFor(threads, s.batch, [&](long b0, long b1) {
    ForwardRows(s, b0, b1, start, E, inputs.typed_data(), packed.data(), m, rm, reverse != 0,
                h_final->typed_data(), hs_out, cs_out, gates_out);
  });
  return ffi::Error::Success();
}

// Either d xw (T, B, 4H), or, given the input kernel (E, 4H), its inputs (T, B, E) and the
// forward's hs (T, B, H), d inputs (T, B, E) and the gradients of the input kernel, the
// recurrent kernel and the bias (d xw then empty: never written out). Given also ids (T, B),
// inputs is the embedding table (V, E) the forward looked x_t up in, and d inputs is the
// table's gradient (V, E).
ffi::Error LstmBackwardImpl(ffi::ThreadPool threads, ffi::Buffer<ffi::F32> gates,
                            ffi::Buffer<ffi::F32> cs, ffi::Buffer<ffi::F32> recurrent_kernel,
                            ffi::Buffer<ffi::PRED> mask,
                            ffi::Buffer<ffi::F32> recurrent_mask, ffi::Buffer<ffi::F32> dh_final,
                            ffi::Buffer<ffi::F32> dhs, ffi::Buffer<ffi::F32> kernel,
                            ffi::Buffer<ffi::F32> inputs, ffi::Buffer<ffi::F32> hs,
                            ffi::Buffer<ffi::S32> ids, int32_t reverse,
                            ffi::ResultBuffer<ffi::F32> dxw,
                            ffi::ResultBuffer<ffi::F32> d_inputs,
                            ffi::ResultBuffer<ffi::F32> d_kernel,
                            ffi::ResultBuffer<ffi::F32> d_recurrent_kernel,
                            ffi::ResultBuffer<ffi::F32> d_bias) {
  const auto dims = cs.dimensions();
  if (dims.size() != 3) return ffi::Error::InvalidArgument("cs must be (T, B, H)");
  const Shapes s{dims[0], dims[1], dims[2]};
  const long H = s.units, G = 4 * H, Gp = Padded(G);
  const bool project = kernel.element_count() != 0, lookup = ids.element_count() != 0;
  const long E = project ? kernel.dimensions()[0] : 0, V = lookup ? inputs.dimensions()[0] : 0;
  const long Ex = lookup ? 0 : E, D = Ex + H + 1;  // Ex: the features x_t has in the loop.
  const std::vector<float> packed_t = Pack(
      Stacked(kernel.typed_data(), Ex, recurrent_kernel.typed_data(), H).data(), G, Ex + H, true);
  const bool* m = mask.element_count() ? mask.typed_data() : nullptr;
  const float* rm = recurrent_mask.element_count() ? recurrent_mask.typed_data() : nullptr;
  const float* dh = dh_final.element_count() ? dh_final.typed_data() : nullptr;
  const float* dh_seq = dhs.element_count() ? dhs.typed_data() : nullptr;
  const long chunks = Chunks(s.batch);
  std::vector<float> sums(project ? chunks * D * Gp : 0, 0.0f);
  // Left unset: a row is written before it is read (`touched`), and most rows of a short
  // batch never are.
  const std::unique_ptr<float[]> by_id(new float[chunks * V * Gp]);
  std::vector<uint8_t> touched(chunks * V, 0);
  WeightGradients weights;
  if (project) weights = {inputs.typed_data(), hs.typed_data(), sums.data()};
  if (lookup) weights = {nullptr, hs.typed_data(), sums.data(), ids.typed_data(), V,
                         by_id.get(), touched.data()};
  ParallelFor(threads, s.batch, [&](long b0, long b1) {
    BackwardRows(s, b0, b1, gates.typed_data(), cs.typed_data(), packed_t.data(), m, rm,
                 reverse != 0, dh, dh_seq, dxw->element_count() ? dxw->typed_data() : nullptr,
                 Ex, project && !lookup ? d_inputs->typed_data() : nullptr, weights);
  });
  if (project) {  // Chunk by chunk, in order.
    float* outs[3] = {d_kernel->typed_data(), d_recurrent_kernel->typed_data(),
                      d_bias->typed_data()};
    const long first_row[3] = {0, Ex, Ex + H}, count[3] = {Ex, H, 1};
    for (int o = 0; o < 3; ++o) {
      std::fill(outs[o], outs[o] + count[o] * G, 0.0f);
      for (long c = 0; c < chunks; ++c) {
        for (long i = 0; i < count[o]; ++i) {
          const float* sum = &sums[(c * D + first_row[o] + i) * Gp];
          for (long j = 0; j < G; ++j) outs[o][i * G + j] += sum[j];
        }
      }
    }
  }
  if (lookup) TableGradients(threads, inputs.typed_data(), V, E, kernel.typed_data(), G, chunks,
                             by_id.get(), touched.data(), d_inputs->typed_data(),
                             d_kernel->typed_data());
  return ffi::Error::Success();
}

// The conv front end of seqjax.models.ConvFrontEnd on embedded ids, as two more custom calls:
// Conv1D(F, K, padding='same') -> relu -> MaxPooling1D(P). The convolution of embedded words is
// a sum of looked-up rows: taps (V, K F) holds each word's table row times each of the K kernel
// slices, so the conv at step t is bias + sum_k taps[ids[t + k - (K - 1) / 2], k], taps outside
// the sequence or on padding (mask false) left out. The caller computes taps (one small matmul),
// pads F to whole vectors, and turns the taps' gradient back into the table's and the kernel's.

namespace {

typedef int32_t ivec __attribute__((vector_size(sizeof(vec))));

// The pre-activation of one row's conv at step t, the n vectors of features from f0, into acc:
// the bias, then the taps in order.
inline void ConvAt(long t, long T, long K, long F, long f0, long n, const float* taps,
                   const int32_t* ids, const bool* mask, const float* bias, vec* acc) {
  for (long v = 0; v < n; ++v) acc[v] = Load(&bias[f0 + v * kLanes]);
  for (long k = 0; k < K; ++k) {
    const long s = t + k - (K - 1) / 2;
    if (s < 0 || s >= T || (mask != nullptr && !mask[s])) continue;
    const float* row = &taps[(ids[s] * K + k) * F + f0];
    for (long v = 0; v < n; ++v) acc[v] += Load(row + v * kLanes);
  }
}

inline vec Relu(vec x) { return x < vec{} ? vec{} : x; }

// Pooling window t of one row, the same n vectors of features: the largest relu of the conv
// over its P steps into best, and which of them gave it into winner (the first of ties, as
// models.max_pool_over_time). acc is scratch. Both passes call it, so they agree on every bit
// and every choice. Selections, not branches: they vectorize.
inline void PoolWindow(long t, long P, long T, long K, long F, long f0, long n,
                       const float* taps, const int32_t* ids, const bool* mask,
                       const float* bias, vec* acc, vec* best, ivec* winner) {
  for (long j = 0; j < P; ++j) {
    ConvAt(t * P + j, T, K, F, f0, n, taps, ids, mask, bias, acc);
    for (long v = 0; v < n; ++v) {
      const vec value = Relu(acc[v]);
      const ivec better = j == 0 ? ivec{} == ivec{} : value > best[v];
      best[v] = better ? value : best[v];
      winner[v] = better ? ivec{} + static_cast<int32_t>(j) : winner[v];
    }
  }
}

struct ConvShapes {
  long batch, steps, taps, features, pool;  // B, T, K, F, P.
};

ffi::Error CheckConv(ffi::Buffer<ffi::F32>& taps, ffi::Buffer<ffi::S32>& ids,
                     ffi::Buffer<ffi::PRED>& mask, ffi::Buffer<ffi::F32>& bias, int32_t pool,
                     ConvShapes* s) {
  const auto id_dims = ids.dimensions(), tap_dims = taps.dimensions();
  if (id_dims.size() != 2 || tap_dims.size() != 2 || bias.dimensions().size() != 1 ||
      pool < 1 || bias.dimensions()[0] == 0 || bias.dimensions()[0] % kLanes != 0 ||
      tap_dims[1] % bias.dimensions()[0] != 0) {
    return ffi::Error::InvalidArgument(
        "expected taps (V, K F), ids (B, T), bias (F,), F a positive multiple of " +
        std::to_string(kLanes) + ", and pool_size >= 1");
  }
  if (mask.element_count() != 0 && mask.element_count() != ids.element_count()) {
    return ffi::Error::InvalidArgument("the mask must be empty or shaped as the ids (B, T)");
  }
  const long F = bias.dimensions()[0];
  *s = {id_dims[0], id_dims[1], tap_dims[1] / F, F, pool};
  return CheckIds(ids, tap_dims[0]);
}

}  // namespace

// out (B, T / P, F): the largest relu of the conv over each window of P steps.
ffi::Error ConvForwardImpl(ffi::ThreadPool threads, ffi::Buffer<ffi::F32> taps,
                           ffi::Buffer<ffi::S32> ids, ffi::Buffer<ffi::PRED> mask,
                           ffi::Buffer<ffi::F32> bias, int32_t pool,
                           ffi::ResultBuffer<ffi::F32> out) {
  ConvShapes s;
  if (ffi::Error error = CheckConv(taps, ids, mask, bias, pool, &s); error.failure()) {
    return error;
  }
  const long T = s.steps, F = s.features, n = F / kLanes, pooled = T / s.pool;
  const bool* m = mask.element_count() ? mask.typed_data() : nullptr;
  ParallelFor(threads, s.batch, [&](long b0, long b1) {
    std::vector<vec> acc(n), best(n);
    std::vector<ivec> winner(n);
    for (long b = b0; b < b1; ++b) {
      for (long t = 0; t < pooled; ++t) {
        PoolWindow(t, s.pool, T, s.taps, F, 0, n, taps.typed_data(), &ids.typed_data()[b * T],
                   m ? &m[b * T] : nullptr, bias.typed_data(), acc.data(), best.data(),
                   winner.data());
        float* o = &out->typed_data()[(b * pooled + t) * F];
        for (long v = 0; v < n; ++v) Store(o + v * kLanes, best[v]);
      }
    }
  });
  return ffi::Error::Success();
}

// Given d out (B, T / P, F): d taps (V, K F) and d bias (F,). Each window's gradient goes to the
// step that won it, where the conv was positive, and from there to the taps that step read.
// The features are split between the threads, and every sum runs over the rows and steps in
// order, so no result depends on the thread count.
ffi::Error ConvBackwardImpl(ffi::ThreadPool threads, ffi::Buffer<ffi::F32> taps,
                            ffi::Buffer<ffi::S32> ids, ffi::Buffer<ffi::PRED> mask,
                            ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::F32> d_out, int32_t pool,
                            ffi::ResultBuffer<ffi::F32> d_taps,
                            ffi::ResultBuffer<ffi::F32> d_bias) {
  ConvShapes s;
  if (ffi::Error error = CheckConv(taps, ids, mask, bias, pool, &s); error.failure()) {
    return error;
  }
  const long T = s.steps, K = s.taps, F = s.features, P = s.pool, pooled = T / P;
  const bool* m = mask.element_count() ? mask.typed_data() : nullptr;
  float* dt = d_taps->typed_data();
  std::fill(dt, dt + d_taps->element_count(), 0.0f);
  // Whole chunks of 16 features: whole vectors.
  ParallelFor(threads, F, [&](long f0, long f1) {
    const long n = (f1 - f0) / kLanes;
    std::vector<vec> acc(n), best(n), db(n, vec{});
    std::vector<ivec> winner(n);
    for (long b = 0; b < s.batch; ++b) {
      const int32_t* row_ids = &ids.typed_data()[b * T];
      const bool* row_mask = m ? &m[b * T] : nullptr;
      for (long t = 0; t < pooled; ++t) {
        PoolWindow(t, P, T, K, F, f0, n, taps.typed_data(), row_ids, row_mask, bias.typed_data(),
                   acc.data(), best.data(), winner.data());
        const float* d = &d_out.typed_data()[(b * pooled + t) * F + f0];
        for (long j = 0; j < P; ++j) {
          for (long v = 0; v < n; ++v) {
            const ivec won = (winner[v] == static_cast<int32_t>(j)) & (best[v] > vec{});
            const vec g = won ? Load(d + v * kLanes) : vec{};
            db[v] += g;
            for (long k = 0; k < K; ++k) {
              const long step = t * P + j + k - (K - 1) / 2;
              if (step < 0 || step >= T || (row_mask != nullptr && !row_mask[step])) continue;
              float* row = &dt[(row_ids[step] * K + k) * F + f0 + v * kLanes];
              Store(row, Load(row) + g);
            }
          }
        }
      }
    }
    for (long v = 0; v < n; ++v) Store(&d_bias->typed_data()[f0 + v * kLanes], db[v]);
  });
  return ffi::Error::Success();
}

// The buffers' types, in the order native_lstm.py passes them (see the Impl functions).
using F32 = ffi::Buffer<ffi::F32>;
using Pred = ffi::Buffer<ffi::PRED>;

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    SeqjaxLstmForward, LstmForwardImpl,
    ffi::Ffi::Bind()
        .Ctx<ffi::ThreadPool>()
        .Arg<F32>().Arg<F32>().Arg<Pred>().Arg<F32>().Arg<F32>().Arg<F32>()
        .Arg<F32>().Arg<ffi::Buffer<ffi::S32>>().Attr<int32_t>("reverse").Ret<F32>().Ret<F32>()
        .Ret<F32>().Ret<F32>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    SeqjaxLstmBackward, LstmBackwardImpl,
    ffi::Ffi::Bind()
        .Ctx<ffi::ThreadPool>()
        .Arg<F32>().Arg<F32>().Arg<F32>().Arg<Pred>().Arg<F32>().Arg<F32>()
        .Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<ffi::Buffer<ffi::S32>>()
        .Attr<int32_t>("reverse").Ret<F32>()
        .Ret<F32>().Ret<F32>().Ret<F32>().Ret<F32>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    SeqjaxConvForward, ConvForwardImpl,
    ffi::Ffi::Bind()
        .Ctx<ffi::ThreadPool>()
        .Arg<F32>().Arg<ffi::Buffer<ffi::S32>>().Arg<Pred>().Arg<F32>()
        .Attr<int32_t>("pool").Ret<F32>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    SeqjaxConvBackward, ConvBackwardImpl,
    ffi::Ffi::Bind()
        .Ctx<ffi::ThreadPool>()
        .Arg<F32>().Arg<ffi::Buffer<ffi::S32>>().Arg<Pred>().Arg<F32>().Arg<F32>()
        .Attr<int32_t>("pool").Ret<F32>().Ret<F32>());
