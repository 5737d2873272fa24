// Fused neighborhood attention for CPUs: forward and backward over a precomputed neighbour table.
//
// Layouts: query [B, N, heads, D], key [B, N, heads_kv, D], value [B, N, heads_kv, Dv] (spatial
// axes flattened; grouped-query attention when heads_kv < heads: query head h reads key/value
// head h / (heads / heads_kv), nothing is repeated), read
// through their strides, whatever they are, as long as the last axis is contiguous (q, k, v are
// often slices of a packed qkv projection). Everything else is contiguous: neighbour table nbr
// [N, P] and RPB index table bidx [N, P] (int32), valid [N, P] (bool, only for causal windows),
// rpb [heads, R], and in the backward dout/out [B, N, heads, Dv]. Softmax statistics are float32
// (float64 for double inputs): lse [B, heads, N]. The entry points check all of this (and that
// every table entry indexes inside its tensor) before a kernel reads anything. Every score is
// computed once, in registers and L1, so the memory traffic is that of q, k, v and out: no score
// matrix is ever written to memory.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

namespace {

// Element strides of a [B, N, heads, D] view whose last axis is contiguous: q, k, v may be
// slices of a packed qkv projection, read in place.
struct Strides {
  int64_t b, n, h;
};

// exp for float, written so that `#pragma omp simd` loops vectorise it (no libm call, no branch).
// Cephes-style: exp(x) = 2^n * exp(r), |r| <= ln2/2, degree-6 polynomial; max error ~2 ulp.
inline float fast_exp(float x) {
  x = x < -87.3f ? -87.3f : (x > 88.7f ? 88.7f : x);
  const float fx = std::nearbyint(x * 1.44269504088896341f);
  const float r = x - fx * 0.693359375f + fx * 2.12194440e-4f;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.0f;
  const int32_t n = static_cast<int32_t>(fx);
  int32_t bits = (n + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(float));
  return y * scale;
}

inline double fast_exp(double x) { return std::exp(x); }

// kD/kDv > 0 fix the head dims at compile time (fully unrolled, register-resident rows);
// 0 means "runtime", for any other head dim.
template <typename scalar_t, typename acc_t, int kD, int kDv>
void forward_kernel(
    const scalar_t* q, const scalar_t* k, const scalar_t* v, Strides qs, Strides ks, Strides vs,
    const scalar_t* rpb,
    const int32_t* nbr, const int32_t* bidx, const bool* valid, scalar_t* out, acc_t* lse,
    int64_t B, int64_t N, int64_t H, int64_t G, int64_t D_, int64_t Dv_, int64_t P, int64_t R,
    acc_t scale) {
  const int64_t D = kD > 0 ? kD : D_;
  const int64_t Dv = kDv > 0 ? kDv : Dv_;
  constexpr int64_t kBlock = 32;
  const int64_t blocks = (N + kBlock - 1) / kBlock;
  at::parallel_for(0, B * H * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> s_buf(P), qv_buf(kD > 0 ? 0 : D), acc_buf(kDv > 0 ? 0 : Dv);
    acc_t qv_fixed[kD > 0 ? kD : 1], acc_fixed[kDv > 0 ? kDv : 1];
    acc_t* __restrict__ s = s_buf.data();
    acc_t* __restrict__ qv = kD > 0 ? qv_fixed : qv_buf.data();
    acc_t* __restrict__ acc = kDv > 0 ? acc_fixed : acc_buf.data();
    for (int64_t work = begin; work < end; ++work) {
      const int64_t block = work % blocks;
      const int64_t h = (work / blocks) % H;
      const int64_t b = work / (blocks * H);
      const scalar_t* kb = k + b * ks.b + (h / G) * ks.h;
      const scalar_t* vb = v + b * vs.b + (h / G) * vs.h;
      const scalar_t* bias = rpb ? rpb + h * R : nullptr;
      const int64_t n_end = std::min(N, (block + 1) * kBlock);
      for (int64_t n = block * kBlock; n < n_end; ++n) {
        const scalar_t* qp = q + b * qs.b + n * qs.n + h * qs.h;
        for (int64_t d = 0; d < D; ++d) qv[d] = static_cast<acc_t>(qp[d]) * scale;
        const int32_t* nb = nbr + n * P;
        const bool* ok = valid ? valid + n * P : nullptr;
        acc_t mx = -std::numeric_limits<acc_t>::infinity();
        for (int64_t p = 0; p < P; ++p) {
          const scalar_t* kp = kb + static_cast<int64_t>(nb[p]) * ks.n;
          acc_t dot = 0;
#pragma omp simd reduction(+ : dot)
          for (int64_t d = 0; d < D; ++d) dot += qv[d] * static_cast<acc_t>(kp[d]);
          if (bias) dot += static_cast<acc_t>(bias[bidx[n * P + p]]);
          s[p] = dot;
          if ((!ok || ok[p]) && dot > mx) mx = dot;
        }
        acc_t sum = 0;
        if (ok) {
          for (int64_t p = 0; p < P; ++p) {
            s[p] = ok[p] ? fast_exp(s[p] - mx) : acc_t(0);
            sum += s[p];
          }
        } else {
#pragma omp simd reduction(+ : sum)
          for (int64_t p = 0; p < P; ++p) {
            s[p] = fast_exp(s[p] - mx);
            sum += s[p];
          }
        }
        const acc_t inv = acc_t(1) / sum;
        for (int64_t d = 0; d < Dv; ++d) acc[d] = 0;
        for (int64_t p = 0; p < P; ++p) {
          const acc_t w = s[p] * inv;
          const scalar_t* vp = vb + static_cast<int64_t>(nb[p]) * vs.n;
#pragma omp simd
          for (int64_t d = 0; d < Dv; ++d) acc[d] += w * static_cast<acc_t>(vp[d]);
        }
        scalar_t* op = out + ((b * N + n) * H + h) * Dv;
        for (int64_t d = 0; d < Dv; ++d) op[d] = static_cast<scalar_t>(acc[d]);
        lse[(b * H + h) * N + n] = mx + std::log(sum);
      }
    }
  });
}

template <typename scalar_t, typename acc_t>
void backward_kernel(
    const scalar_t* dout, const scalar_t* q, const scalar_t* k, const scalar_t* v, Strides qs,
    Strides ks, Strides vs, const scalar_t* rpb, const scalar_t* out, const acc_t* lse, const int32_t* nbr,
    const int32_t* bidx, const bool* valid, const acc_t* dlse, acc_t* dq, acc_t* dk, acc_t* dv,
    acc_t* drpb, int64_t B, int64_t N, int64_t H, int64_t G, int64_t D, int64_t Dv, int64_t P,
    int64_t R, acc_t scale) {
  // One (batch, head) slice per task: the scatter into dk/dv/drpb stays inside the slice.
  // Gradients are head-major [B, heads, N, D] (see backward_vec).
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> s(P), qv(D), dov(Dv);
    for (int64_t work = begin; work < end; ++work) {
      const int64_t h = work % H;
      const int64_t b = work / H;
      const int64_t v_base = b * N * H * Dv + h * Dv;
      acc_t* dq_slice = dq + (b * H + h) * N * D;
      acc_t* dk_slice = dk + (b * H + h) * N * D;
      acc_t* dv_slice = dv + (b * H + h) * N * Dv;
      const scalar_t* bias = rpb ? rpb + h * R : nullptr;
      acc_t* drpb_slice = drpb ? drpb + (b * H + h) * R : nullptr;
      for (int64_t n = 0; n < N; ++n) {
        const int64_t row = n * H;
        const scalar_t* qp = q + b * qs.b + n * qs.n + h * qs.h;
        const scalar_t* dop = dout + v_base + row * Dv;
        const scalar_t* op = out + v_base + row * Dv;
        acc_t delta = 0;
        for (int64_t d = 0; d < Dv; ++d) {
          dov[d] = static_cast<acc_t>(dop[d]);
          delta += dov[d] * static_cast<acc_t>(op[d]);
        }
        // A gradient reaching the log-sum-exp adds dlse * P to dS: fold it into delta.
        if (dlse) delta -= dlse[(b * H + h) * N + n];
        for (int64_t d = 0; d < D; ++d) qv[d] = static_cast<acc_t>(qp[d]) * scale;
        const int32_t* nb = nbr + n * P;
        const bool* ok = valid ? valid + n * P : nullptr;
        const acc_t l = lse[(b * H + h) * N + n];
        acc_t* dqp = dq_slice + n * D;
        for (int64_t p = 0; p < P; ++p) {
          if (ok && !ok[p]) continue;
          const scalar_t* kp = k + b * ks.b + (h / G) * ks.h + static_cast<int64_t>(nb[p]) * ks.n;
          const scalar_t* vp = v + b * vs.b + (h / G) * vs.h + static_cast<int64_t>(nb[p]) * vs.n;
          acc_t dot = 0, dp = 0;
#pragma omp simd reduction(+ : dot)
          for (int64_t d = 0; d < D; ++d) dot += qv[d] * static_cast<acc_t>(kp[d]);
#pragma omp simd reduction(+ : dp)
          for (int64_t d = 0; d < Dv; ++d) dp += dov[d] * static_cast<acc_t>(vp[d]);
          if (bias) dot += static_cast<acc_t>(bias[bidx[n * P + p]]);
          const acc_t prob = fast_exp(dot - l);
          const acc_t ds = prob * (dp - delta);
          acc_t* dkp = dk_slice + static_cast<int64_t>(nb[p]) * D;
          acc_t* dvp = dv_slice + static_cast<int64_t>(nb[p]) * Dv;
#pragma omp simd
          for (int64_t d = 0; d < D; ++d) {
            dqp[d] += ds * static_cast<acc_t>(kp[d]) * scale;
            dkp[d] += ds * qv[d];
          }
#pragma omp simd
          for (int64_t d = 0; d < Dv; ++d) dvp[d] += prob * dov[d];
          if (drpb_slice) drpb_slice[bidx[n * P + p]] += ds;
        }
      }
    }
  });
}

// ---- vector fast path: explicit 16-lane float32 vectors (GCC/Clang vector extensions) -------
// Used when the head dims are 16, 32, 64 or 128, for float32, bfloat16 and float16 inputs:
// reduced-precision rows are widened to float32 as they are loaded and every sum, the softmax
// and the gradients are float32; outputs are rounded once, to nearest even. With -march=native
// these map to AVX-512 registers (or pairs of AVX2 ones); the generic templates above handle
// everything else.

typedef float vf16 __attribute__((vector_size(64), aligned(4)));
typedef float vf8 __attribute__((vector_size(32), aligned(4)));
typedef int32_t vi16 __attribute__((vector_size(64), aligned(4)));

// Unaligned, aliasing-safe views for loads and stores. A memcpy here compiles (GCC 12, Intel
// tuning) to two 32-byte stores to the stack and one 64-byte reload: a store-forwarding stall on
// every load, which made the kernel ~6x slower on Sapphire Rapids.
typedef float vf16_mem __attribute__((vector_size(64), aligned(4), may_alias));

inline vf16 load16(const float* p) { return *reinterpret_cast<const vf16_mem*>(p); }

inline void store16(float* p, vf16 v) { *reinterpret_cast<vf16_mem*>(p) = v; }

typedef uint16_t vu16x16_mem __attribute__((vector_size(32), aligned(2), may_alias));
typedef uint32_t vu16 __attribute__((vector_size(64), aligned(4)));
typedef _Float16 vh16_mem __attribute__((vector_size(32), aligned(2), may_alias));
typedef _Float16 vh16 __attribute__((vector_size(32), aligned(2)));

// bfloat16 is float32's upper half: widen by a shift.
inline vf16 load16(const c10::BFloat16* p) {
  const vu16 bits = __builtin_convertvector(*reinterpret_cast<const vu16x16_mem*>(p), vu16) << 16;
  vf16 v;
  std::memcpy(&v, &bits, sizeof(v));
  return v;
}

// Round to nearest even, NaN to the quiet NaN 0x7fc0: c10::BFloat16's own rounding.
inline void store16(c10::BFloat16* p, vf16 v) {
  vu16 bits;
  std::memcpy(&bits, &v, sizeof(bits));
  const vu16 rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
  const vu16 out = v != v ? vu16{} + 0x7fc0u : rounded;
  *reinterpret_cast<vu16x16_mem*>(p) = __builtin_convertvector(out, vu16x16_mem);
}

inline vf16 load16(const c10::Half* p) {
  return __builtin_convertvector(*reinterpret_cast<const vh16_mem*>(p), vf16);
}

inline void store16(c10::Half* p, vf16 v) {
  *reinterpret_cast<vh16_mem*>(p) = __builtin_convertvector(v, vh16);
}

inline vf16 splat16(float x) { return vf16{} + x; }

typedef float vf4 __attribute__((vector_size(16), aligned(4)));

inline vf8 fold16(vf16 v) {
  return __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
         __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
}

inline float hsum16(vf16 v) {
  const vf8 a = fold16(v);
  const vf4 b = __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
  return (b[0] + b[2]) + (b[1] + b[3]);
}

// The four sums of a, b, c, d at once: a transposing reduction, ~5 vector ops per vector
// instead of ~8 for separate horizontal sums.
inline vf4 hsum16x4(vf16 a, vf16 b, vf16 c, vf16 d) {
  const vf8 a8 = fold16(a), b8 = fold16(b), c8 = fold16(c), d8 = fold16(d);
  const vf8 ab = __builtin_shufflevector(a8, b8, 0, 1, 2, 3, 8, 9, 10, 11) +
                 __builtin_shufflevector(a8, b8, 4, 5, 6, 7, 12, 13, 14, 15);
  const vf8 cd = __builtin_shufflevector(c8, d8, 0, 1, 2, 3, 8, 9, 10, 11) +
                 __builtin_shufflevector(c8, d8, 4, 5, 6, 7, 12, 13, 14, 15);
  // lanes: a01 a23 b01 b23 | c01 c23 d01 d23 (pairs summed)
  const vf8 abcd = __builtin_shufflevector(ab, cd, 0, 1, 4, 5, 8, 9, 12, 13) +
                   __builtin_shufflevector(ab, cd, 2, 3, 6, 7, 10, 11, 14, 15);
  // lanes: (a0+a2, a1+a3), (b..), (c..), (d..)
  return __builtin_shufflevector(abcd, abcd, 0, 2, 4, 6) +
         __builtin_shufflevector(abcd, abcd, 1, 3, 5, 7);
}

// 16 lanes of fast_exp (same polynomial, so the vector and scalar paths agree bit for bit).
inline vf16 exp16(vf16 x) {
  x = x < -87.3f ? splat16(-87.3f) : x;
  x = x > 88.7f ? splat16(88.7f) : x;
  const vf16 magic = splat16(12582912.0f);  // 1.5 * 2^23: adding it rounds to nearest integer
  const vf16 fx = (x * 1.44269504088896341f + magic) - magic;
  const vf16 r = x - fx * 0.693359375f + fx * 2.12194440e-4f;
  vf16 y = splat16(1.9875691500e-4f);
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.0f;
  const vi16 bits = (__builtin_convertvector(fx, vi16) + 127) << 23;
  vf16 scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return y * scale;
}

// Queries per forward task: neighbouring queries share most keys, so a block reuses them from L1.
constexpr int64_t kRowBlock = 32;

// The *_range functions take everything by value: their arguments are locals that no vector
// store (may_alias) can overwrite, so sizes, strides and pointers stay in registers. Read through
// a parallel_for lambda's captured references they were reloaded after every store (and h / G
// recomputed with an integer division per neighbour).
template <typename scalar_t, int ND, int NDV>
void forward_vec_range(
    const scalar_t* q, const scalar_t* k, const scalar_t* v, Strides qs, Strides ks, Strides vs,
    const scalar_t* rpb, const int32_t* nbr,
    const int32_t* bidx, const bool* valid, scalar_t* out, float* lse, int64_t B, int64_t N,
    int64_t H, int64_t G, int64_t P, int64_t R, float scale,
    int64_t begin, int64_t end) {
  constexpr int64_t D = 16 * ND, Dv = 16 * NDV, kBlock = kRowBlock;
  const int64_t blocks = (N + kBlock - 1) / kBlock;
  const int64_t padded = (P + 15) / 16 * 16;
  std::vector<float> s_buf(padded);
  float* s = s_buf.data();
  for (int64_t work = begin; work < end; ++work) {
    const int64_t block = work % blocks;
    const int64_t h = (work / blocks) % H;
    const int64_t b = work / (blocks * H);
    const scalar_t* kb = k + b * ks.b + (h / G) * ks.h;
    const scalar_t* vb = v + b * vs.b + (h / G) * vs.h;
    const scalar_t* bias = rpb ? rpb + h * R : nullptr;
    const int64_t n_end = std::min(N, (block + 1) * kBlock);
    for (int64_t n = block * kBlock; n < n_end; ++n) {
      const scalar_t* qp = q + b * qs.b + n * qs.n + h * qs.h;
      vf16 qv[ND];
      for (int j = 0; j < ND; ++j) qv[j] = load16(qp + 16 * j) * scale;
      const int32_t* nb = nbr + n * P;
      const int32_t* bi = bidx + n * P;
      const bool* ok = valid ? valid + n * P : nullptr;
      auto dot = [&](int64_t p) {
        const scalar_t* kp = kb + static_cast<int64_t>(nb[p]) * ks.n;
        vf16 acc = qv[0] * load16(kp);
        for (int j = 1; j < ND; ++j) acc += qv[j] * load16(kp + 16 * j);
        return acc;
      };
      int64_t p = 0;
      for (; p + 4 <= P; p += 4) {
        const vf4 d4 = hsum16x4(dot(p), dot(p + 1), dot(p + 2), dot(p + 3));
        std::memcpy(s + p, &d4, sizeof(d4));
      }
      for (; p < P; ++p) s[p] = hsum16(dot(p));
      if (bias) {
        for (int64_t p = 0; p < P; ++p) s[p] += static_cast<float>(bias[bi[p]]);
      }
      float mx = -std::numeric_limits<float>::infinity();
      for (int64_t p = 0; p < P; ++p) {
        if ((!ok || ok[p]) && s[p] > mx) mx = s[p];
      }
      for (int64_t p = P; p < padded; ++p) s[p] = mx;
      for (int64_t p = 0; p < padded; p += 16) store16(s + p, exp16(load16(s + p) - mx));
      if (ok) {
        for (int64_t p = 0; p < P; ++p) s[p] = ok[p] ? s[p] : 0.0f;
      }
      float sum = 0;
      for (int64_t p = 0; p < P; ++p) sum += s[p];
      vf16 o[NDV] = {};
      for (int64_t p = 0; p < P; ++p) {
        const scalar_t* vp = vb + static_cast<int64_t>(nb[p]) * vs.n;
        const float w = s[p];
        for (int j = 0; j < NDV; ++j) o[j] += w * load16(vp + 16 * j);
      }
      const float inv = 1.0f / sum;
      scalar_t* op = out + ((b * N + n) * H + h) * Dv;
      for (int j = 0; j < NDV; ++j) store16(op + 16 * j, o[j] * inv);
      lse[(b * H + h) * N + n] = mx + std::log(sum);
    }
  }
}

template <typename scalar_t, int ND, int NDV>
void forward_vec(
    const scalar_t* q, const scalar_t* k, const scalar_t* v, Strides qs, Strides ks, Strides vs,
    const scalar_t* rpb, const int32_t* nbr,
    const int32_t* bidx, const bool* valid, scalar_t* out, float* lse, int64_t B, int64_t N,
    int64_t H, int64_t G, int64_t P, int64_t R, float scale) {
  at::parallel_for(0, B * H * ((N + kRowBlock - 1) / kRowBlock), 1, [&](int64_t begin, int64_t end) {
    forward_vec_range<scalar_t, ND, NDV>(
        q, k, v, qs, ks, vs, rpb, nbr, bidx, valid, out, lse, B, N, H, G, P, R, scale, begin, end);
  });
}

template <typename scalar_t, int ND, int NDV>
void backward_vec_range(
    const scalar_t* dout, const scalar_t* q, const scalar_t* k, const scalar_t* v, Strides qs,
    Strides ks, Strides vs, const scalar_t* rpb,
    const scalar_t* out, const float* lse, const int32_t* nbr, const int32_t* bidx,
    const bool* valid, const float* dlse, float* dq, float* dk, float* dv, float* drpb, int64_t B,
    int64_t N, int64_t H, int64_t G, int64_t P, int64_t R, float scale,
    int64_t begin, int64_t end) {
  constexpr int64_t D = 16 * ND, Dv = 16 * NDV;
  const int64_t padded = (P + 15) / 16 * 16;
  std::vector<float> s_buf(padded), dp_buf(padded);
  float* s = s_buf.data();
  float* dp = dp_buf.data();
  for (int64_t work = begin; work < end; ++work) {
    const int64_t h = work % H;
    const int64_t b = work / H;
    const int64_t v_base = b * N * H * Dv + h * Dv;
    const scalar_t* bias = rpb ? rpb + h * R : nullptr;
    float* drpb_slice = drpb ? drpb + (b * H + h) * R : nullptr;
    // Gradients are [B, heads, N, D]: each slice is contiguous, so the scatter into dK/dV never
    // hits the 4 KiB store-to-load aliasing that the heads-interleaved layout causes.
    float* dq_slice = dq + (b * H + h) * N * D;
    float* dk_slice = dk + (b * H + h) * N * D;
    float* dv_slice = dv + (b * H + h) * N * Dv;
    for (int64_t n = 0; n < N; ++n) {
      const int64_t row = n * H;
      vf16 qv[ND], dov[NDV], dqv[ND] = {};
      vf16 dacc = {};
      for (int j = 0; j < NDV; ++j) {
        dov[j] = load16(dout + v_base + row * Dv + 16 * j);
        dacc += dov[j] * load16(out + v_base + row * Dv + 16 * j);
      }
      // A gradient reaching the log-sum-exp adds dlse * P to dS: fold it into delta.
      const float delta = hsum16(dacc) - (dlse ? dlse[(b * H + h) * N + n] : 0.0f);
      const scalar_t* qp = q + b * qs.b + n * qs.n + h * qs.h;
      for (int j = 0; j < ND; ++j) qv[j] = load16(qp + 16 * j) * scale;
      const int32_t* nb = nbr + n * P;
      const int32_t* bi = bidx + n * P;
      const bool* ok = valid ? valid + n * P : nullptr;
      // 1. logits and dP = dO . V for every neighbour.
      auto logit = [&](int64_t p) {
        const scalar_t* kp = k + b * ks.b + (h / G) * ks.h + static_cast<int64_t>(nb[p]) * ks.n;
        vf16 acc = qv[0] * load16(kp);
        for (int j = 1; j < ND; ++j) acc += qv[j] * load16(kp + 16 * j);
        return acc;
      };
      auto dprob = [&](int64_t p) {
        const scalar_t* vp = v + b * vs.b + (h / G) * vs.h + static_cast<int64_t>(nb[p]) * vs.n;
        vf16 acc = dov[0] * load16(vp);
        for (int j = 1; j < NDV; ++j) acc += dov[j] * load16(vp + 16 * j);
        return acc;
      };
      int64_t p = 0;
      for (; p + 4 <= P; p += 4) {
        const vf4 s4 = hsum16x4(logit(p), logit(p + 1), logit(p + 2), logit(p + 3));
        const vf4 d4 = hsum16x4(dprob(p), dprob(p + 1), dprob(p + 2), dprob(p + 3));
        std::memcpy(s + p, &s4, sizeof(s4));
        std::memcpy(dp + p, &d4, sizeof(d4));
      }
      for (; p < P; ++p) {
        s[p] = hsum16(logit(p));
        dp[p] = hsum16(dprob(p));
      }
      if (bias) {
        for (int64_t p = 0; p < P; ++p) s[p] += static_cast<float>(bias[bi[p]]);
      }
      // 2. probabilities (into s) and dS (into dp), 16 at a time.
      const float l = lse[(b * H + h) * N + n];
      for (int64_t p = P; p < padded; ++p) s[p] = l, dp[p] = delta;
      for (int64_t p = 0; p < padded; p += 16) {
        const vf16 prob = exp16(load16(s + p) - l);
        store16(s + p, prob);
        store16(dp + p, prob * (load16(dp + p) - delta));
      }
      if (ok) {
        for (int64_t p = 0; p < P; ++p) {
          if (!ok[p]) s[p] = dp[p] = 0.0f;
        }
      }
      // 3. scatter into dK, dV (and dRPB); gather into dQ.
      for (int64_t p = 0; p < P; ++p) {
        const scalar_t* kp = k + b * ks.b + (h / G) * ks.h + static_cast<int64_t>(nb[p]) * ks.n;
        float* dkp = dk_slice + static_cast<int64_t>(nb[p]) * D;
        float* dvp = dv_slice + static_cast<int64_t>(nb[p]) * Dv;
        const float ds = dp[p], prob = s[p];
        for (int j = 0; j < ND; ++j) {
          dqv[j] += ds * load16(kp + 16 * j);
          store16(dkp + 16 * j, load16(dkp + 16 * j) + ds * qv[j]);
        }
        for (int j = 0; j < NDV; ++j) store16(dvp + 16 * j, load16(dvp + 16 * j) + prob * dov[j]);
      }
      if (drpb_slice) {
        for (int64_t p = 0; p < P; ++p) drpb_slice[bi[p]] += dp[p];
      }
      for (int j = 0; j < ND; ++j) store16(dq_slice + n * D + 16 * j, dqv[j] * scale);
    }
  }
}

template <typename scalar_t, int ND, int NDV>
void backward_vec(
    const scalar_t* dout, const scalar_t* q, const scalar_t* k, const scalar_t* v, Strides qs,
    Strides ks, Strides vs, const scalar_t* rpb,
    const scalar_t* out, const float* lse, const int32_t* nbr, const int32_t* bidx,
    const bool* valid, const float* dlse, float* dq, float* dk, float* dv, float* drpb, int64_t B,
    int64_t N, int64_t H, int64_t G, int64_t P, int64_t R, float scale) {
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    backward_vec_range<scalar_t, ND, NDV>(
        dout, q, k, v, qs, ks, vs, rpb, out, lse, nbr, bidx, valid, dlse, dq, dk, dv, drpb, B, N,
        H, G, P, R, scale, begin, end);
  });
}

// Calls fn(ND, NDV) as integral constants for the vector path's head dims; false otherwise.
template <typename Fn>
bool with_vec_dims(int64_t D, int64_t Dv, Fn&& fn) {
  if (D == 32 && Dv == 32) return fn(std::integral_constant<int, 2>{}, std::integral_constant<int, 2>{});
  if (D == 64 && Dv == 64) return fn(std::integral_constant<int, 4>{}, std::integral_constant<int, 4>{});
  if (D == 16 && Dv == 16) return fn(std::integral_constant<int, 1>{}, std::integral_constant<int, 1>{});
  if (D == 128 && Dv == 128) return fn(std::integral_constant<int, 8>{}, std::integral_constant<int, 8>{});
  return false;
}

template <typename T>
struct TypeTag {
  using type = T;
};

// Calls fn(TypeTag<scalar_t>) for the vector path's input types; false otherwise.
template <typename Fn>
bool with_vec_type(at::ScalarType dtype, Fn&& fn) {
  if (dtype == at::kFloat) return fn(TypeTag<float>{});
  if (dtype == at::kBFloat16) return fn(TypeTag<c10::BFloat16>{});
  if (dtype == at::kHalf) return fn(TypeTag<c10::Half>{});
  return false;
}

const int32_t* table_ptr(const torch::Tensor& t) { return t.data_ptr<int32_t>(); }

// Element strides of a [B, N, heads, D] input, after check_rows.
Strides strides(const torch::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2)}; }

void check_cpu(const char* name, const torch::Tensor& t, at::ScalarType dtype) {
  TORCH_CHECK(t.device().is_cpu(), name, " is on ", t.device(), "; the fused kernel runs on CPU");
  TORCH_CHECK(t.scalar_type() == dtype, name, " has dtype ", t.scalar_type(), "; expected ", dtype);
}

void check_shape(const char* name, const torch::Tensor& t, at::IntArrayRef expected) {
  TORCH_CHECK(t.sizes() == expected, name, " has shape ", t.sizes(), "; expected ", expected);
}

// A [B, N, heads, D] input read through its strides: only the last axis must be contiguous.
void check_rows(const char* name, const torch::Tensor& t, at::IntArrayRef shape,
                at::ScalarType dtype) {
  check_cpu(name, t, dtype);
  check_shape(name, t, shape);
  TORCH_CHECK(t.stride(3) == 1 || t.size(3) <= 1, name, " has strides ", t.strides(),
              "; the kernel needs a contiguous last (head_dim) axis");
}

// An input indexed with contiguous offsets.
void check_dense(const char* name, const torch::Tensor& t, at::IntArrayRef shape,
                 at::ScalarType dtype) {
  check_cpu(name, t, dtype);
  check_shape(name, t, shape);
  TORCH_CHECK(t.is_contiguous(), name, " has strides ", t.strides(), "; expected contiguous");
}

// A table whose entries index an axis of `bound` entries: every entry in [0, bound).
void check_table(const char* name, const torch::Tensor& t, int64_t N, int64_t P, int64_t bound) {
  check_dense(name, t, {N, P}, at::kInt);
  if (t.numel() == 0) return;
  const auto [lo, hi] = at::aminmax(t);
  TORCH_CHECK(lo.item<int32_t>() >= 0 && hi.item<int32_t>() < bound, name, " has entries in [",
              lo.item<int32_t>(), ", ", hi.item<int32_t>(), "]; they must lie in [0, ", bound, ")");
}

// Checks what both entry points read: q/k/v, the tables and rpb. Returns the window size P.
int64_t check_inputs(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                     const c10::optional<torch::Tensor>& rpb, const torch::Tensor& nbr,
                     const torch::Tensor& bidx, const c10::optional<torch::Tensor>& valid) {
  TORCH_CHECK(q.dim() == 4, "query has shape ", q.sizes(), "; expected [B, N, heads, D]");
  TORCH_CHECK(v.dim() == 4, "value has shape ", v.sizes(), "; expected [B, N, heads, Dv]");
  TORCH_CHECK(k.dim() == 4, "key has shape ", k.sizes(), "; expected [B, N, heads_kv, D]");
  const int64_t B = q.size(0), N = q.size(1), H = q.size(2), D = q.size(3), Dv = v.size(3);
  const int64_t Hkv = k.size(2);
  TORCH_CHECK(Hkv == H || (Hkv >= 1 && H % Hkv == 0), "key has ", Hkv, " heads; query's ", H,
              " heads must be a multiple of it");
  const auto dtype = q.scalar_type();
  check_rows("query", q, {B, N, H, D}, dtype);
  check_rows("key", k, {B, N, Hkv, D}, dtype);
  check_rows("value", v, {B, N, Hkv, Dv}, dtype);
  TORCH_CHECK(nbr.dim() == 2, "nbr has shape ", nbr.sizes(), "; expected [N, P]");
  const int64_t P = nbr.size(1);
  check_table("nbr", nbr, N, P, N);
  if (valid) check_dense("valid", *valid, {N, P}, at::kBool);
  if (rpb) {
    TORCH_CHECK(rpb->dim() == 2, "rpb has shape ", rpb->sizes(), "; expected [heads, R]");
    check_dense("rpb", *rpb, {H, rpb->size(1)}, dtype);
    check_table("bidx", bidx, N, P, rpb->size(1));
  }
  return P;
}

}  // namespace

std::vector<torch::Tensor> na_forward(
    torch::Tensor q, torch::Tensor k, torch::Tensor v, c10::optional<torch::Tensor> rpb,
    torch::Tensor nbr, torch::Tensor bidx, c10::optional<torch::Tensor> valid, double scale) {
  const int64_t P = check_inputs(q, k, v, rpb, nbr, bidx, valid);
  const int64_t B = q.size(0), N = q.size(1), H = q.size(2), D = q.size(3), Dv = v.size(3);
  const int64_t G = k.size(2) ? H / k.size(2) : 1;
  const Strides qs = strides(q), ks = strides(k), vs = strides(v);
  const int64_t R = rpb ? rpb->size(1) : 0;
  auto out = torch::empty({B, N, H, Dv}, v.options());
  const auto acc_type = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto lse = torch::empty({B, H, N}, q.options().dtype(acc_type));
  const bool vectorised = with_vec_type(q.scalar_type(), [&](auto type) {
    using scalar_t = typename decltype(type)::type;
    return with_vec_dims(D, Dv, [&](auto nd, auto ndv) {
      forward_vec<scalar_t, decltype(nd)::value, decltype(ndv)::value>(
          q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), qs, ks, vs,
          rpb ? rpb->data_ptr<scalar_t>() : nullptr, table_ptr(nbr), table_ptr(bidx),
          valid ? valid->data_ptr<bool>() : nullptr, out.data_ptr<scalar_t>(),
          lse.data_ptr<float>(), B, N, H, G, P, R, static_cast<float>(scale));
      return true;
    });
  });
  if (vectorised) return {out, lse};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "na_forward", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    auto run = [&](auto kernel) {
      kernel(q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), qs, ks, vs,
             rpb ? rpb->data_ptr<scalar_t>() : nullptr, table_ptr(nbr), table_ptr(bidx),
             valid ? valid->data_ptr<bool>() : nullptr, out.data_ptr<scalar_t>(),
             lse.data_ptr<acc_t>(), B, N, H, G, D, Dv, P, R, static_cast<acc_t>(scale));
    };
    if (D == 32 && Dv == 32) {
      run(forward_kernel<scalar_t, acc_t, 32, 32>);
    } else if (D == 64 && Dv == 64) {
      run(forward_kernel<scalar_t, acc_t, 64, 64>);
    } else if (D == 16 && Dv == 16) {
      run(forward_kernel<scalar_t, acc_t, 16, 16>);
    } else {
      run(forward_kernel<scalar_t, acc_t, 0, 0>);
    }
  });
  return {out, lse};
}

std::vector<torch::Tensor> na_backward(
    torch::Tensor dout, torch::Tensor q, torch::Tensor k, torch::Tensor v,
    c10::optional<torch::Tensor> rpb, torch::Tensor out, torch::Tensor lse, torch::Tensor nbr,
    torch::Tensor bidx, c10::optional<torch::Tensor> valid, c10::optional<torch::Tensor> dlse,
    double scale) {
  const int64_t P = check_inputs(q, k, v, rpb, nbr, bidx, valid);
  const int64_t B = q.size(0), N = q.size(1), H = q.size(2), D = q.size(3), Dv = v.size(3);
  const int64_t Hkv = k.size(2), G = Hkv ? H / Hkv : 1;
  const Strides qs = strides(q), ks = strides(k), vs = strides(v);
  const int64_t R = rpb ? rpb->size(1) : 0;
  const auto acc_type = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  check_dense("grad_out", dout, {B, N, H, Dv}, q.scalar_type());
  check_dense("out", out, {B, N, H, Dv}, q.scalar_type());
  check_dense("lse", lse, {B, H, N}, acc_type);
  if (dlse) check_dense("dlse", *dlse, {B, H, N}, acc_type);
  const auto acc_opts = lse.options();
  const bool vec = with_vec_type(q.scalar_type(), [](auto) { return true; }) &&
                   with_vec_dims(D, Dv, [](auto, auto) { return true; });
  // Head-major [B, heads, N, D] gradients; the vector path writes every dq row exactly once.
  // dk/dv get one slice per query head (no two threads share one); grouped heads are summed below.
  auto dq = vec ? torch::empty({B, H, N, D}, acc_opts) : torch::zeros({B, H, N, D}, acc_opts);
  auto dk = torch::zeros({B, H, N, D}, acc_opts);
  auto dv = torch::zeros({B, H, N, Dv}, acc_opts);
  auto drpb = torch::zeros({B, H, rpb ? R : 0}, acc_opts);
  const bool fast = vec && with_vec_type(q.scalar_type(), [&](auto type) {
    using scalar_t = typename decltype(type)::type;
    return with_vec_dims(D, Dv, [&](auto nd, auto ndv) {
      backward_vec<scalar_t, decltype(nd)::value, decltype(ndv)::value>(
          dout.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(),
          v.data_ptr<scalar_t>(), qs, ks, vs, rpb ? rpb->data_ptr<scalar_t>() : nullptr,
          out.data_ptr<scalar_t>(), lse.data_ptr<float>(), table_ptr(nbr), table_ptr(bidx),
          valid ? valid->data_ptr<bool>() : nullptr, dlse ? dlse->data_ptr<float>() : nullptr,
          dq.data_ptr<float>(), dk.data_ptr<float>(), dv.data_ptr<float>(),
          rpb ? drpb.data_ptr<float>() : nullptr, B, N, H, G, P, R, static_cast<float>(scale));
      return true;
    });
  });
  auto grouped = [&](const torch::Tensor& g) {
    return G == 1 ? g : g.view({B, Hkv, G, N, g.size(3)}).sum(2);
  };
  if (fast) return {dq, grouped(dk), grouped(dv), drpb.sum(0)};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "na_backward", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    backward_kernel<scalar_t, acc_t>(
        dout.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(),
        v.data_ptr<scalar_t>(), qs, ks, vs, rpb ? rpb->data_ptr<scalar_t>() : nullptr,
        out.data_ptr<scalar_t>(), lse.data_ptr<acc_t>(), table_ptr(nbr), table_ptr(bidx),
        valid ? valid->data_ptr<bool>() : nullptr, dlse ? dlse->data_ptr<acc_t>() : nullptr,
        dq.data_ptr<acc_t>(), dk.data_ptr<acc_t>(), dv.data_ptr<acc_t>(),
        rpb ? drpb.data_ptr<acc_t>() : nullptr, B, N, H, G, D, Dv, P, R,
        static_cast<acc_t>(scale));
  });
  return {dq, grouped(dk), grouped(dv), drpb.sum(0)};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("na_forward", &na_forward, "fused neighborhood attention forward (CPU)");
  m.def("na_backward", &na_backward, "fused neighborhood attention backward (CPU)");
}
