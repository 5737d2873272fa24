// Fused neighborhood attention for CPUs: forward and backward over a precomputed neighbour table.
//
// Layouts: query [B, N, heads, D], key [B, N, heads_kv, D], value [B, N, heads_kv, Dv] (spatial
// axes flattened; grouped-query attention when heads_kv < heads: query head h reads key/value
// head h / (heads / heads_kv), nothing is repeated), read
// through their strides, whatever they are, as long as the last axis is contiguous (q, k, v are
// often slices of a packed qkv projection). Everything else is contiguous: neighbour table nbr
// [N, P] and RPB index table bidx [N, P] (int32; or, with bias_pattern [N], bidx's U distinct
// rows [U, P] and each query's row), valid [N, P] (bool, only for causal windows), rpb [heads,
// R], and in the backward dout/out [B, N, heads, Dv]. Softmax statistics are float32 (float64 for
// double inputs): lse [B, heads, N]. The entry points check all of this (and that every table
// entry indexes inside its tensor) before a kernel reads anything. The forward computes every
// score in registers and L1, so its memory traffic is that of q, k, v and out. For training it
// can also keep each window's logits (keep_logits: P floats per query and head, less than q, k,
// v and out take at NAT's 7 x 7 windows), which the backward then reads instead of computing
// them again: 10-21% off the float32 backward at NAT-Tiny's levels (Zen 3 EPYC). For packed and
// bf16/fp16 gradients the vector path's backward runs in two passes per (batch, head) slice:
// query by query (P, dS, dQ, dRPB), then key by key over an inverse neighbour table (dK, dV, each
// row summed in registers and written once).

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <type_traits>
#include <vector>

// NAT_LANES8 (the "narrow" build) keeps 8-lane vectors on a CPU with AVX-512: on a Zen 5 EPYC its
// float32 calls were faster than the 16-lane ones (nat/ops/cpu/__init__.py says which build runs).
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && !defined(NAT_LANES8)
#include <immintrin.h>
#define NAT_AVX512 1
#elif defined(__AVX2__) || defined(__F16C__)
#include <immintrin.h>
#endif

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

// ---- vector fast path: explicit float32 vectors (GCC/Clang vector extensions) ---------------
// Used when the head dims are 16, 32, 64 or 128, for float32, bfloat16 and float16 inputs:
// reduced-precision rows are widened to float32 as they are loaded and every sum, the softmax
// and the gradients are float32; outputs are rounded once, to nearest even. (On CPUs with
// AVX512-BF16 the bf16 query-key products are exact bf16 pairs summed into float32 by
// vdpbf16ps.) A vector holds kLanes floats: 16 (one AVX-512 register) where the build has
// AVX-512, 8 (one AVX2 register) everywhere else. Each query's window is scored kLanes slots per
// vector, so its max, exponentials and sum are vector operations; head dims are kLanes * ND.
// (16-lane vectors on AVX2 were pairs of registers: the 16 partial dot products of a chunk, the
// forward's four sets of accumulators and the backward's rows did not fit in AVX2's 16
// registers, and every step spilled to the stack, which made NA 4-5x slower than Swin's window
// attention on a Zen 3 EPYC.) Masked loads and gathers use AVX-512 intrinsics where available,
// portable code elsewhere; the generic templates above handle everything else.

#ifdef NAT_AVX512
constexpr int kLanes = 16;
#else
constexpr int kLanes = 8;
#endif

typedef float vf __attribute__((vector_size(4 * kLanes), aligned(4)));
typedef float vf8 __attribute__((vector_size(32), aligned(4)));
typedef float vf4 __attribute__((vector_size(16), aligned(4)));
typedef int32_t vi __attribute__((vector_size(4 * kLanes), aligned(4)));

// Unaligned, aliasing-safe views for loads and stores. A memcpy here compiles (GCC 12, Intel
// tuning) to two 32-byte stores to the stack and one 64-byte reload: a store-forwarding stall on
// every load, which made the kernel ~6x slower on Sapphire Rapids.
typedef float vf_mem __attribute__((vector_size(4 * kLanes), aligned(4), may_alias));

inline vf loadv(const float* p) { return *reinterpret_cast<const vf_mem*>(p); }

inline void storev(float* p, vf v) { *reinterpret_cast<vf_mem*>(p) = v; }

typedef uint16_t vbits_mem __attribute__((vector_size(2 * kLanes), aligned(2), may_alias));
typedef uint32_t vu __attribute__((vector_size(4 * kLanes), aligned(4)));
typedef _Float16 vhalf_mem __attribute__((vector_size(2 * kLanes), aligned(2), may_alias));
typedef _Float16 vhalf __attribute__((vector_size(2 * kLanes), aligned(2)));

// bfloat16 is float32's upper half: widen by a shift.
inline vf loadv(const c10::BFloat16* p) {
#ifdef NAT_AVX512
  // GCC splits the generic conversion into two 256-bit halves: one vpmovzxwd zmm instead.
  const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return reinterpret_cast<vf>(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
#elif defined(__AVX2__)
  // Likewise one vpmovzxwd ymm. (With this and storev's vpackusdw, the bf16 forward took
  // 29-38% less time at NAT-Tiny's levels 1 and 3 on a Zen 3 EPYC than with the generic code.)
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return reinterpret_cast<vf>(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
#endif
  const vu bits = __builtin_convertvector(*reinterpret_cast<const vbits_mem*>(p), vu) << 16;
  vf v;
  std::memcpy(&v, &bits, sizeof(v));
  return v;
}

// The bfloat16 bits of each lane, in its low half: rounded to nearest even, NaN to the quiet NaN
// 0x7fc0 (c10::BFloat16's own rounding).
inline vu bf16_bits(vf v) {
  vu bits;
  std::memcpy(&bits, &v, sizeof(bits));
  const vu rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
  return v != v ? vu{} + 0x7fc0u : rounded;
}

inline void storev(c10::BFloat16* p, vf v) {
#if !defined(NAT_AVX512) && defined(__AVX2__)
  // The eight 16-bit halves packed by one vpackusdw (exact: every lane is below 2^16).
  const __m256i bits = reinterpret_cast<__m256i>(bf16_bits(v));
  const __m128i packed =
      _mm_packus_epi32(_mm256_castsi256_si128(bits), _mm256_extracti128_si256(bits, 1));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), packed);
#else
  *reinterpret_cast<vbits_mem*>(p) = __builtin_convertvector(bf16_bits(v), vbits_mem);
#endif
}

// float16 rows convert with vcvtph2ps / vcvtps2ph (AVX-512F, or F16C on AVX2 builds): GCC 12
// turns the generic conversions into scalar ones and shuffles each way, which made float16
// calls 4-7x slower than bfloat16 ones. Both convert exactly (and round to nearest even).
inline vf loadv(const c10::Half* p) {
#if defined(NAT_AVX512)
  const __m256i half = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return reinterpret_cast<vf>(_mm512_cvtph_ps(half));
#elif defined(__F16C__)
  const __m256 wide = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return reinterpret_cast<vf>(wide);
#else
  return __builtin_convertvector(*reinterpret_cast<const vhalf_mem*>(p), vf);
#endif
}

inline void storev(c10::Half* p, vf v) {
#if defined(NAT_AVX512)
  constexpr int kNearest = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  const __m256i half = _mm512_cvtps_ph(reinterpret_cast<__m512>(v), kNearest);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), half);
#elif defined(__F16C__)
  constexpr int kNearest = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  const __m128i half = _mm256_cvtps_ph(reinterpret_cast<__m256>(v), kNearest);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), half);
#else
  *reinterpret_cast<vhalf_mem*>(p) = __builtin_convertvector(v, vhalf);
#endif
}

inline vf splat(float x) { return vf{} + x; }

// 0, 1, ..., kLanes - 1.
inline vi lane_index() {
  vi lane = {};
  for (int i = 0; i < kLanes; ++i) lane[i] = i;
  return lane;
}

// Eight partial sums of v's lanes: its two halves added (16 lanes), or v itself (8 lanes).
#ifdef NAT_AVX512
inline vf8 fold_half(vf v) {
  return __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
         __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
}
#else
inline vf8 fold_half(vf v) { return v; }
#endif

inline float hsum(vf v) {
  const vf8 a = fold_half(v);
  const vf4 b = __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
  return (b[0] + b[2]) + (b[1] + b[3]);
}

// The four sums of a, b, c, d at once: a transposing reduction, ~5 vector ops per vector
// instead of ~8 for separate horizontal sums.
inline vf4 hsum_x4(vf a, vf b, vf c, vf d) {
  const vf8 a8 = fold_half(a), b8 = fold_half(b), c8 = fold_half(c), d8 = fold_half(d);
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

#ifdef NAT_AVX512
// The sixteen sums of v[0..15] at once, lane i holding v[i]'s: a transposing reduction that
// halves the vectors at each of four steps (30 shuffles and 15 adds for 16 sums, no scalar work).
inline vf hsum_all(const vf* v) {
  vf t[8], u[4], w[2];
  for (int i = 0; i < 8; ++i) {
    t[i] = __builtin_shufflevector(v[2 * i], v[2 * i + 1], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19,
                                   20, 21, 22, 23) +
           __builtin_shufflevector(v[2 * i], v[2 * i + 1], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26,
                                   27, 28, 29, 30, 31);
  }
  for (int i = 0; i < 4; ++i) {
    u[i] = __builtin_shufflevector(t[2 * i], t[2 * i + 1], 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19,
                                   24, 25, 26, 27) +
           __builtin_shufflevector(t[2 * i], t[2 * i + 1], 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22,
                                   23, 28, 29, 30, 31);
  }
  for (int i = 0; i < 2; ++i) {
    w[i] = __builtin_shufflevector(u[2 * i], u[2 * i + 1], 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21,
                                   24, 25, 28, 29) +
           __builtin_shufflevector(u[2 * i], u[2 * i + 1], 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22,
                                   23, 26, 27, 30, 31);
  }
  return __builtin_shufflevector(w[0], w[1], 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28,
                                 30) +
         __builtin_shufflevector(w[0], w[1], 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29,
                                 31);
}
#else
// The eight sums of v[0..7] at once, lane i holding v[i]'s. The first two steps add neighbouring
// pairs within each 128-bit half (vshufps + vaddps, as vhaddps does); the last adds the halves.
inline vf hsum_all(const vf* v) {
  vf t[4], u[2];
  for (int i = 0; i < 4; ++i) {
    t[i] = __builtin_shufflevector(v[2 * i], v[2 * i + 1], 0, 2, 8, 10, 4, 6, 12, 14) +
           __builtin_shufflevector(v[2 * i], v[2 * i + 1], 1, 3, 9, 11, 5, 7, 13, 15);
  }
  // t[i]: v[2i] pairs 01 23, v[2i+1] pairs 01 23 | v[2i] pairs 45 67, v[2i+1] pairs 45 67
  for (int i = 0; i < 2; ++i) {
    u[i] = __builtin_shufflevector(t[2 * i], t[2 * i + 1], 0, 2, 8, 10, 4, 6, 12, 14) +
           __builtin_shufflevector(t[2 * i], t[2 * i + 1], 1, 3, 9, 11, 5, 7, 13, 15);
  }
  // u[i]: v[4i..4i+3] lanes 0-3 summed | v[4i..4i+3] lanes 4-7 summed
  return __builtin_shufflevector(u[0], u[1], 0, 1, 2, 3, 8, 9, 10, 11) +
         __builtin_shufflevector(u[0], u[1], 4, 5, 6, 7, 12, 13, 14, 15);
}
#endif

// The largest of v's lanes (16 lanes: the two halves' maxima first).
inline float hmax(vf v) {
#ifdef NAT_AVX512
  const vf8 a = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7);
  const vf8 b = __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
  const vf8 m8 = a > b ? a : b;
#else
  const vf8 m8 = v;
#endif
  const vf4 c = __builtin_shufflevector(m8, m8, 0, 1, 2, 3);
  const vf4 d = __builtin_shufflevector(m8, m8, 4, 5, 6, 7);
  const vf4 m4 = c > d ? c : d;
  const float x = m4[0] > m4[1] ? m4[0] : m4[1], y = m4[2] > m4[3] ? m4[2] : m4[3];
  return x > y ? x : y;
}

// Which lanes of the chunk of kLanes window slots starting at `base` hold a neighbour: the first
// P - base, and (for causal windows) those whose `valid` entry is set. Never reads past slot P.
inline vi chunk_lanes(int64_t base, int64_t P, const bool* ok) {
  vi keep = lane_index() < static_cast<int32_t>(P - base);
  if (ok) {
    const int64_t count = std::min<int64_t>(kLanes, P - base);
    vi flags = {};
    for (int64_t j = 0; j < count; ++j) flags[j] = ok[base + j];
    keep &= flags != 0;
  }
  return keep;
}

// kLanes lanes of fast_exp (same polynomial, so the vector and scalar paths agree bit for bit).
inline vf expv(vf x) {
  x = x < -87.3f ? splat(-87.3f) : x;
  x = x > 88.7f ? splat(88.7f) : x;
  const vf magic = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to nearest integer
  const vf fx = (x * 1.44269504088896341f + magic) - magic;
  const vf r = x - fx * 0.693359375f + fx * 2.12194440e-4f;
  vf y = splat(1.9875691500e-4f);
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.0f;
  const vi bits = (__builtin_convertvector(fx, vi) + 127) << 23;
  vf scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return y * scale;
}

// Per-thread scratch slots (AlignedFloats).
constexpr int kSlotScores = 0, kSlotGrads = 1, kSlotBias = 2, kSlotQueries = 3, kSlotOutGrads = 4,
              kSlotBiasGrads = 5, kScratchSlots = 6;

// A float32 buffer whose data start on a 64-byte boundary, so that its vector rows never straddle
// a cache line. std::vector's data start 16 bytes past one: every row access to the bf16/fp16
// backward's dK/dV scratch was split over two lines (aligning it made those calls 10-13% faster).
// The memory is the calling thread's scratch `slot`, kept between calls and grown as needed: a
// fresh buffer of 128 KiB or more is mapped and unmapped by malloc each call, and with two
// threads those page faults and unmappings cost NAT-Tiny's 7 x 7 level forward ~20%. Each slot
// has one user at a time on a thread (the kernels do not nest). Past kKeptScratch elements it is
// freed again after use, so that one large input does not leave its memory held.
constexpr size_t kKeptScratch = size_t{1} << 21;  // 8 MiB of floats

// Releases a thread-local scratch vector after use if it grew past kKeptScratch elements.
template <typename T>
struct ScratchRelease {
  std::vector<T>& raw;
  ~ScratchRelease() {
    if (raw.size() > kKeptScratch) std::vector<T>().swap(raw);
  }
};

struct AlignedFloats {
  float* data;
  size_t size;
  ScratchRelease<float> release;
  AlignedFloats(int slot, size_t n) : size(n), release{slot_vector(slot)} {
    std::vector<float>& raw = release.raw;
    if (raw.size() < n + 16) raw.resize(n + 16);
    const auto at = reinterpret_cast<uintptr_t>(raw.data());
    data = raw.data() + (64 - at % 64) % 64 / sizeof(float);
  }
  AlignedFloats(const AlignedFloats&) = delete;
  AlignedFloats& operator=(const AlignedFloats&) = delete;
  void zero() { std::fill(data, data + size, 0.0f); }
  static std::vector<float>& slot_vector(int slot) {
    thread_local std::vector<float> slots[kScratchSlots];
    return slots[slot];
  }
};

// The bias each query adds to its window's logits, as rows of P float32 (padded with zeros to
// whole vectors): rows[h][u] = rpb[h, bidx[u, 0..P)]. With a pattern, query n reads row
// pattern[n] of the U distinct rows of bidx (at most K x K in 2D without dilation, however large
// the map): one vector load per chunk, where a gather from rpb cost the float32 forward ~10%.
// Without one, row n (bidx is [N, P]).
struct BiasRows {
  const float* table = nullptr;  // [heads, U, padded], or null without rpb
  const int32_t* pattern = nullptr;  // [N] row of each query, or null: row n
  const int32_t* bidx = nullptr;  // [U, P]
  int64_t per_head = 0, padded = 0, window = 0;  // U, P rounded up to whole vectors, and P
  // Query n's rpb indices (P of them).
  const int32_t* indices(int64_t n) const { return bidx + (pattern ? pattern[n] : n) * window; }
  const float* row(int64_t h, int64_t n) const {
    if (!table) return nullptr;
    return table + (h * per_head + (pattern ? pattern[n] : n)) * padded;
  }
};

// The dot products of `row` with the rows at base + nb[j] * stride, j < count (zero beyond), one
// per lane: summed together by hsum_all, or each by hsum in a chunk of at most a quarter of
// kLanes (a 7 x 7 window's last slot, alone in its chunk: hsum_all's 45 vector ops for one sum).
// The forward and the backward both sum through here, so a recomputed logit is the kept one.
template <typename Row, typename scalar_t>
inline vf window_dots(const Row& row, const scalar_t* base, int64_t stride, const int32_t* nb,
                      int64_t count) {
  if (count * 4 <= kLanes) {
    vf out = {};
    for (int64_t j = 0; j < count; ++j) out[j] = hsum(row.dot(base + nb[j] * stride));
    return out;
  }
  // (One set of kLanes partial-sum vectors at a time: two would spill.)
  vf dots[kLanes];
  for (int64_t j = 0; j < kLanes; ++j) {
    dots[j] = j < count ? row.dot(base + static_cast<int64_t>(nb[j]) * stride) : vf{};
  }
  return hsum_all(dots);
}

// Queries per forward task: neighbouring queries share most keys, so a block reuses them from L1.
constexpr int64_t kRowBlock = 32;

// Queries taken through each step of the forward (and of the backward's first pass) together: a
// query's steps form one long chain (dot products, their max, exp, the sum, the weighted rows),
// so one query at a time leaves the core waiting on it. Four at once took 0.72-0.85x the time of
// one at a time in the bf16 forward at NAT-Tiny's levels, and 0.87-0.94x in the packed backward
// at levels 2-4 (Zen 5 EPYC, same process, same results to the bit).
constexpr int64_t kQueryGroup = 4;

// The *_range functions take everything by value: their arguments are locals that no vector
// store (may_alias) can overwrite, so sizes, strides and pointers stay in registers. Read through
// a parallel_for lambda's captured references they were reloaded after every store (and h / G
// recomputed with an integer division per neighbour).
#if defined(NAT_AVX512) && defined(__AVX512BF16__)
#define NAT_DPBF16 1
#endif

// bfloat16 query-key products by vdpbf16ps (AVX512-BF16): bf16 pairs multiplied exactly and
// summed into float32 lanes, one instruction per 32 elements.
template <typename scalar_t, int ND>
constexpr bool kPairDots =
#ifdef NAT_DPBF16
    std::is_same_v<scalar_t, c10::BFloat16> && ND % 2 == 0;
#else
    false;
#endif

// The query row as kept for its dot products: float32 lanes premultiplied by the scale, or (for
// kPairDots) the raw bf16 row, 32 elements per register, with the scale applied to the sums.
template <typename scalar_t, int ND, bool kPairs = kPairDots<scalar_t, ND>>
struct QueryRow {
  vf lanes[ND];
  QueryRow(const scalar_t* qp, float scale) {
    for (int j = 0; j < ND; ++j) lanes[j] = loadv(qp + kLanes * j) * scale;
  }
  vf dot(const scalar_t* kp) const {
    vf acc = lanes[0] * loadv(kp);
    for (int j = 1; j < ND; ++j) acc += lanes[j] * loadv(kp + kLanes * j);
    return acc;
  }
  static vf scaled(vf sums, float) { return sums; }
};

#ifdef NAT_DPBF16
template <typename scalar_t, int ND>
struct QueryRow<scalar_t, ND, true> {
  __m512bh pairs[ND / 2];
  QueryRow(const scalar_t* qp, float) {
    for (int j = 0; j < ND / 2; ++j) pairs[j] = (__m512bh)_mm512_loadu_si512(qp + 32 * j);
  }
  vf dot(const scalar_t* kp) const {
    __m512 acc = _mm512_dpbf16_ps(_mm512_setzero_ps(), pairs[0],
                                  (__m512bh)_mm512_loadu_si512(kp));
    for (int j = 1; j < ND / 2; ++j)
      acc = _mm512_dpbf16_ps(acc, pairs[j], (__m512bh)_mm512_loadu_si512(kp + 32 * j));
    return reinterpret_cast<vf>(acc);
  }
  static vf scaled(vf sums, float scale) { return sums * scale; }
};
#endif

#ifdef NAT_AVX512
// 32 bfloat16 elements widened without a shuffle (loadv's vpmovzxwd is one, on the one port that
// runs them): lane i of `even` holds element 2i, lane i of `odd` element 2i + 1, the two halves
// of the i-th 32-bit pair. Measured 4-8% off the bf16 forward at NAT-Tiny's levels 1-3 (medians).
inline void load_split(const c10::BFloat16* p, vf& even, vf& odd) {
  const __m512i raw = _mm512_loadu_si512(p);
  even = reinterpret_cast<vf>(_mm512_slli_epi32(raw, 16));
  odd = reinterpret_cast<vf>(_mm512_and_si512(raw, _mm512_set1_epi32(-65536)));
}

// The lanes load_split gives, rounded as storev rounds and stored back interleaved: no shuffle
// either.
inline void store_split(c10::BFloat16* p, vf even, vf odd) {
  _mm512_storeu_si512(p, reinterpret_cast<__m512i>(bf16_bits(even) | (bf16_bits(odd) << 16)));
}
constexpr bool kHaveSplit = true;
#else
constexpr bool kHaveSplit = false;
#endif

// Whether rows of kLanes * NDV elements are read and written through load_split/store_split.
template <typename scalar_t, int NDV>
constexpr bool kSplitRows = kHaveSplit && std::is_same_v<scalar_t, c10::BFloat16> && NDV % 2 == 0;

// a[0..N) += w * the row at p: widened by load_split into its even/odd lane order (kSplit, bf16
// rows of 32 or more) or by loadv in element order.
template <bool kSplit, int N, typename scalar_t>
inline void add_row(vf* a, float w, const scalar_t* p) {
  if constexpr (kSplit) {
    for (int j = 0; j < N; j += 2) {
      vf even, odd;
      load_split(p + kLanes * j, even, odd);
      a[j] += w * even;
      a[j + 1] += w * odd;
    }
  } else {
    for (int j = 0; j < N; ++j) a[j] += w * loadv(p + kLanes * j);
  }
}

// The row v[0..N) stored at p: rounded and interleaved back from load_split's lane order (kSplit)
// or stored by storev in element order.
template <bool kSplit, int N, typename scalar_t>
inline void store_row(scalar_t* p, const vf* v) {
  if constexpr (kSplit) {
    for (int j = 0; j < N; j += 2) store_split(p + kLanes * j, v[j], v[j + 1]);
  } else {
    for (int j = 0; j < N; ++j) storev(p + kLanes * j, v[j]);
  }
}

// o = sum over the window of w[p] * V[nb[p]], in float32 (bf16 rows of 32 or more in load_split's
// lane order, each element summed exactly as through loadv). (Rounding the weights to bf16 for
// vdpbf16ps was tried: no faster here, and less exact.)
template <typename scalar_t, int NDV>
void weighted_rows(const float* wf, int64_t P, const int32_t* nb, const scalar_t* vb,
                   int64_t vstride, vf* o) {
  // Independent sets of accumulators, so that the FMAs do not all chain on one: four with
  // AVX-512's 32 registers; with AVX2's 16, as many as fit in half of them.
  constexpr int kSets = kLanes == 16 || NDV <= 2 ? 4 : (NDV <= 4 ? 2 : 1);
  vf acc[kSets][NDV] = {};
  int64_t p = 0;
  auto row = [&](const scalar_t* vp, float w, vf* a) {
    add_row<kSplitRows<scalar_t, NDV>, NDV>(a, w, vp);
  };
  for (; p + kSets <= P; p += kSets) {
    for (int u = 0; u < kSets; ++u) {
      row(vb + static_cast<int64_t>(nb[p + u]) * vstride, wf[p + u], acc[u]);
    }
  }
  for (; p < P; ++p) row(vb + static_cast<int64_t>(nb[p]) * vstride, wf[p], acc[0]);
  for (int j = 0; j < NDV; ++j) {
    if constexpr (kSets == 4) {
      o[j] = (acc[0][j] + acc[1][j]) + (acc[2][j] + acc[3][j]);
    } else if constexpr (kSets == 2) {
      o[j] = acc[0][j] + acc[1][j];
    } else {
      o[j] = acc[0][j];
    }
  }
}

// A vector of kept logits stored at p (64-byte aligned where `stream`), bypassing the caches
// where `stream` and the build has AVX-512; store_fence orders those stores before the memory
// is read again (by another thread, too).
inline void store_kept(float* p, vf v, bool stream) {
#ifdef NAT_AVX512
  if (stream) {
    _mm512_stream_ps(p, reinterpret_cast<__m512>(v));
    return;
  }
#endif
  storev(p, v);
}

inline void store_fence() {
#ifdef NAT_AVX512
  _mm_sfence();
#endif
}

template <typename scalar_t, int ND, int NDV, bool kKeep>
void forward_vec_range(
    const scalar_t* q, const scalar_t* k, const scalar_t* v, Strides qs, Strides ks, Strides vs,
    BiasRows bias_rows, const int32_t* nbr, const bool* valid, scalar_t* out, float* lse,
    float* logits, int64_t B, int64_t N, int64_t H, int64_t G, int64_t P, float scale,
    int64_t begin, int64_t end) {
  constexpr int64_t Dv = kLanes * NDV, kBlock = kRowBlock;
  constexpr float kInf = std::numeric_limits<float>::infinity();
  const int64_t blocks = (N + kBlock - 1) / kBlock;
  const int64_t chunks = (P + kLanes - 1) / kLanes;
  AlignedFloats s_buf(kSlotScores, kQueryGroup * kLanes * chunks);
  vf* group_scores[kQueryGroup];
  for (int64_t t = 0; t < kQueryGroup; ++t) {
    group_scores[t] = reinterpret_cast<vf*>(s_buf.data) + t * chunks;
  }
  // The kept logits are written with streaming stores where they are aligned (always, from
  // na_forward's allocation): the backward reads them long after, so caching them only evicted
  // what the next operators read (NAT-Tiny's bf16 training step 0.6-1.4% faster).
  const bool stream = kKeep && reinterpret_cast<uintptr_t>(logits) % 64 == 0;
  for (int64_t work = begin; work < end; ++work) {
    const int64_t block = work % blocks;
    const int64_t h = (work / blocks) % H;
    const int64_t b = work / (blocks * H);
    const scalar_t* kb = k + b * ks.b + (h / G) * ks.h;
    const scalar_t* vb = v + b * vs.b + (h / G) * vs.h;
    const int64_t n_end = std::min(N, (block + 1) * kBlock);
    for (int64_t n0 = block * kBlock; n0 < n_end; n0 += kQueryGroup) {
      const int64_t group = std::min(kQueryGroup, n_end - n0);
      float mx[kQueryGroup] = {};
      // 1. Scores, kLanes window slots per vector (slots past P or masked out are -inf), and
      // their max, query by query.
      for (int64_t t = 0; t < group; ++t) {
        const int64_t n = n0 + t;
        vf* s = group_scores[t];
        const QueryRow<scalar_t, ND> qrow(q + b * qs.b + n * qs.n + h * qs.h, scale);
        const int32_t* nb = nbr + n * P;
        const float* bias = bias_rows.row(h, n);
        const bool* ok = valid ? valid + n * P : nullptr;
        float* kept = kKeep ? logits + ((b * H + h) * N + n) * chunks * kLanes : nullptr;
        vf vmax = splat(-kInf);
        for (int64_t c = 0; c < chunks; ++c) {
          const int64_t base = kLanes * c, count = std::min<int64_t>(kLanes, P - base);
          vf sc = window_dots(qrow, kb, ks.n, nb + base, count);
          sc = QueryRow<scalar_t, ND>::scaled(sc, scale);
          if (bias) sc += loadv(bias + base);
          sc = chunk_lanes(base, P, ok) ? sc : splat(-kInf);
          s[c] = sc;
          if constexpr (kKeep) store_kept(kept + kLanes * c, sc, stream);  // the backward's
          vmax = vmax > sc ? vmax : sc;
        }
        mx[t] = hmax(vmax);
      }
      // 2. Unnormalised probabilities (exactly 0 outside the window) and their sums: the group's
      // exps side by side.
      vf vsum[kQueryGroup] = {};
      for (int64_t c = 0; c < chunks; ++c) {
        for (int64_t t = 0; t < group; ++t) {
          const bool* ok = valid ? valid + (n0 + t) * P : nullptr;
          const vf e = chunk_lanes(kLanes * c, P, ok) ? expv(group_scores[t][c] - mx[t]) : vf{};
          group_scores[t][c] = e;
          vsum[t] += e;
        }
      }
      // 3. Their weighted sums of value rows.
      for (int64_t t = 0; t < group; ++t) {
        const int64_t n = n0 + t;
        const float sum = hsum(vsum[t]);
        vf o[NDV];
        weighted_rows<scalar_t, NDV>(reinterpret_cast<const float*>(group_scores[t]), P,
                                     nbr + n * P, vb, vs.n, o);
        const float inv = 1.0f / sum;
        for (int j = 0; j < NDV; ++j) o[j] *= inv;
        store_row<kSplitRows<scalar_t, NDV>, NDV>(out + ((b * N + n) * H + h) * Dv, o);
        lse[(b * H + h) * N + n] = mx[t] + std::log(sum);
      }
    }
  }
  if (stream) store_fence();
}

template <typename scalar_t, int ND, int NDV>
void forward_vec(
    const scalar_t* q, const scalar_t* k, const scalar_t* v, Strides qs, Strides ks, Strides vs,
    BiasRows bias_rows, const int32_t* nbr, const bool* valid, scalar_t* out, float* lse,
    float* logits, int64_t B, int64_t N, int64_t H, int64_t G, int64_t P, float scale) {
  // Separate instantiations with and without kept logits: a runtime test in the chunk loop cost
  // inference calls 3-8% at NAT-Tiny's levels 1-3 (Zen 3 EPYC).
  auto run = [&](auto keep) {
    at::parallel_for(0, B * H * ((N + kRowBlock - 1) / kRowBlock), 1, [&](int64_t begin, int64_t end) {
      forward_vec_range<scalar_t, ND, NDV, decltype(keep)::value>(
          q, k, v, qs, ks, vs, bias_rows, nbr, valid, out, lse, logits, B, N, H, G, P, scale,
          begin, end);
    });
  };
  if (logits) {
    run(std::true_type{});
  } else {
    run(std::false_type{});
  }
}

// The gradients, addressed through element strides (batch, token, head): head-major buffers, or
// a packed q/k/v gradient's [B, N, 3, heads, D] buffer. float32 ones (Grads32) are written in
// place: dQ row by row; dK and dV row by row (packed) or accumulated (head-major). bfloat16/
// float16 ones (LowGrads, null for float32) are written rounded, row by row.
template <typename T>
struct GradRows {
  T* dq = nullptr;
  T* dk = nullptr;
  T* dv = nullptr;
  Strides dqs{}, dks{}, dvs{};
};
using Grads32 = GradRows<float>;
template <typename scalar_t>
using LowGrads = GradRows<scalar_t>;

// For each key, the (query, window slot) pairs whose window holds it, in ascending query order:
// pairs[start[j] .. start[j + 1]), each (query n, n * padded + slot: where the backward keeps the
// slot's P and dS). Slots that `valid` masks are left out (their probability and dS are 0). Built
// per call by the calling thread, in its own memory kept between calls (as AlignedFloats).
struct InverseTable {
  const int32_t* start;
  const int32_t* pairs;
  static std::vector<int32_t>& buffer(int i) {
    thread_local std::vector<int32_t> buffers[3];
    return buffers[i];
  }
  ScratchRelease<int32_t> release[3] = {{buffer(0)}, {buffer(1)}, {buffer(2)}};
  InverseTable(const int32_t* nbr, const bool* valid, int64_t N, int64_t P, int64_t padded) {
    std::vector<int32_t>&start_buf = buffer(0), &pairs_buf = buffer(1), &next = buffer(2);
    start_buf.assign(N + 1, 0);
    for (int64_t e = 0; e < N * P; ++e) {
      if (!valid || valid[e]) ++start_buf[nbr[e] + 1];
    }
    for (int64_t j = 0; j < N; ++j) start_buf[j + 1] += start_buf[j];
    pairs_buf.resize(2 * static_cast<size_t>(start_buf[N]));
    next.assign(start_buf.begin(), start_buf.end() - 1);
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t p = 0; p < P; ++p) {
        if (valid && !valid[n * P + p]) continue;
        const int32_t at = next[nbr[n * P + p]]++;
        pairs_buf[2 * at] = static_cast<int32_t>(n);
        pairs_buf[2 * at + 1] = static_cast<int32_t>(n * padded + p);
      }
    }
    start = start_buf.data();
    pairs = pairs_buf.data();
  }
};

// One (batch, head) slice at a time. For each query: the window's probabilities P and dS, dQ
// (gathered over the window) and dRPB. dK and dV, either (kGather) in a second pass key by key:
// sums of dS * scale * Q and P * dO over the (query, slot) pairs of the inverse table, in
// registers, each row written once, from the slice's P and dS and a contiguous float32 copy of
// its query and dO rows; or (float32 head-major gradients) scattered query by query into the
// slice's zeroed rows, a read-modify-write per window slot that stays in L1 there. Both sum in
// ascending query order.
template <typename scalar_t, int ND, int NDV, bool kSplit, bool kKeep, bool kGather>
void backward_vec_range(
    const scalar_t* dout, const scalar_t* q, const scalar_t* k, const scalar_t* v, Strides qs,
    Strides ks, Strides vs, BiasRows bias_rows,
    const scalar_t* out, const float* lse, const float* logits, const int32_t* nbr,
    const bool* valid, const float* dlse, const int32_t* inv_start,
    const int32_t* inv_pairs, Grads32 f32, float* drpb,
    LowGrads<scalar_t> low, int64_t B, int64_t N, int64_t H, int64_t G, int64_t P, int64_t R,
    float scale, int64_t begin, int64_t end) {
  constexpr int64_t D = kLanes * ND, Dv = kLanes * NDV;
  const int64_t chunks = (P + kLanes - 1) / kLanes;
  const int64_t padded = chunks * kLanes;
  // P and dS: the whole slice's for kGather's pass two, else a query group's (reused, in L1).
  AlignedFloats s_buf(kSlotScores, padded * (kGather ? N : kQueryGroup));
  AlignedFloats dp_buf(kSlotGrads, padded * (kGather ? N : kQueryGroup));
  // The slice's query rows times the scale and its dO rows, as float32 (in load_split's lane
  // order where kSplit), copied in pass one for pass two: contiguous rows, where the inputs'
  // rows lie H * D or 3 * H * D apart.
  AlignedFloats q_rows(kSlotQueries, kGather ? N * D : 0);
  AlignedFloats g_rows(kSlotOutGrads, kGather ? N * Dv : 0);
  // dRPB: each query's dS added (vector adds) to its bias row's sums, which go into the rpb
  // entries they index once the slice is done; per query and slot where there are no bias rows.
  const bool by_rows = drpb && bias_rows.pattern;
  AlignedFloats ds_rows(kSlotBiasGrads, by_rows ? padded * bias_rows.per_head : 0);
  for (int64_t work = begin; work < end; ++work) {
    if (by_rows) ds_rows.zero();
    const int64_t h = work % H;
    const int64_t b = work / H;
    const int64_t v_base = b * N * H * Dv + h * Dv;
    const scalar_t* kb = k + b * ks.b + (h / G) * ks.h;
    const scalar_t* vb = v + b * vs.b + (h / G) * vs.h;
    const scalar_t* qb = q + b * qs.b + h * qs.h;
    float* drpb_slice = drpb ? drpb + (b * H + h) * R : nullptr;
    float* dq_slice = low.dq ? nullptr : f32.dq + b * f32.dqs.b + h * f32.dqs.h;
    // Without kGather: float32 head-major gradients, each slice contiguous [N, D] (zeroed).
    float* dk_slice = kGather ? nullptr : f32.dk + b * f32.dks.b + h * f32.dks.h;
    float* dv_slice = kGather ? nullptr : f32.dv + b * f32.dvs.b + h * f32.dvs.h;
    // A group of queries at a time (kQueryGroup): first each one's P and dS, then each one's dQ
    // and dRPB (and without kGather its dK and dV scatter), in ascending query order.
    for (int64_t n0 = 0; n0 < N; n0 += kQueryGroup) {
      const int64_t n_end = std::min(N, n0 + kQueryGroup);
      for (int64_t n = n0; n < n_end; ++n) {
        const scalar_t* dop = dout + v_base + n * H * Dv;
        const scalar_t* qp = qb + n * qs.n;
        vf dacc = {};
        for (int j = 0; j < NDV; ++j) {
          dacc += loadv(dop + kLanes * j) * loadv(out + v_base + n * H * Dv + kLanes * j);
        }
        // A gradient reaching the log-sum-exp adds dlse * P to dS: fold it into delta.
        const float delta = hsum(dacc) - (dlse ? dlse[(b * H + h) * N + n] : 0.0f);
        const QueryRow<scalar_t, ND> qrow(qp, scale);
        const QueryRow<scalar_t, NDV> grow(dop, 1.0f);
        const int32_t* nb = nbr + n * P;
        const float* bias = bias_rows.row(h, n);
        const bool* ok = valid ? valid + n * P : nullptr;
        const float l = lse[(b * H + h) * N + n];
        // The forward's logits (bias added, masked slots -inf), where it kept them. With 8 lanes,
        // and for vdpbf16ps, the same floats as the dot products below would give again.
        const float* kept = kKeep ? logits + ((b * H + h) * N + n) * padded : nullptr;
        if constexpr (kGather) {
          float* qr = q_rows.data + n * D;
          float* gr = g_rows.data + n * Dv;
          if constexpr (kSplit) {
            for (int j = 0; j < ND; j += 2) {
              vf even, odd;
              load_split(qp + kLanes * j, even, odd);
              storev(qr + kLanes * j, even * scale), storev(qr + kLanes * (j + 1), odd * scale);
            }
            for (int j = 0; j < NDV; j += 2) {
              vf even, odd;
              load_split(dop + kLanes * j, even, odd);
              storev(gr + kLanes * j, even), storev(gr + kLanes * (j + 1), odd);
            }
          } else {
            for (int j = 0; j < ND; ++j) storev(qr + kLanes * j, loadv(qp + kLanes * j) * scale);
            for (int j = 0; j < NDV; ++j) storev(gr + kLanes * j, loadv(dop + kLanes * j));
          }
        }
        vf* s = reinterpret_cast<vf*>(s_buf.data + (kGather ? n : n - n0) * padded);
        vf* dp = reinterpret_cast<vf*>(dp_buf.data + (kGather ? n : n - n0) * padded);
        // 1. Probabilities P and dS = P * (dO . V - delta), kLanes window slots per vector; 0
        // outside.
        for (int64_t c = 0; c < chunks; ++c) {
          const int64_t base = kLanes * c, count = std::min<int64_t>(kLanes, P - base);
          vf logit, dprob;
          // A chunk's kLanes dot products at once, reduced by hsum_all: for vdpbf16ps, and with
          // AVX2's 8 lanes (10-20% off the backward on a Zen 3 EPYC, against four at a time).
          if constexpr (kPairDots<scalar_t, ND> || kLanes == 8) {
            if constexpr (!kKeep) {
              logit = QueryRow<scalar_t, ND>::scaled(window_dots(qrow, kb, ks.n, nb + base, count),
                                                     scale);
            }
            dprob = window_dots(grow, vb, vs.n, nb + base, count);
          } else {
            // Logits and dP four slots at a time, interleaved: measured faster with AVX-512 than
            // the 16-way sums for float32 rows.
            auto qdot = [&](int64_t j) {
              return qrow.dot(kb + static_cast<int64_t>(nb[base + j]) * ks.n);
            };
            auto gdot = [&](int64_t j) {
              return grow.dot(vb + static_cast<int64_t>(nb[base + j]) * vs.n);
            };
            float lg[kLanes], dg[kLanes];
            int64_t j = 0;
            for (; j + 4 <= count; j += 4) {
              if constexpr (!kKeep) {
                const vf4 l4 = hsum_x4(qdot(j), qdot(j + 1), qdot(j + 2), qdot(j + 3));
                std::memcpy(lg + j, &l4, sizeof(l4));
              }
              const vf4 d4 = hsum_x4(gdot(j), gdot(j + 1), gdot(j + 2), gdot(j + 3));
              std::memcpy(dg + j, &d4, sizeof(d4));
            }
            for (; j < count; ++j) lg[j] = kKeep ? 0.0f : hsum(qdot(j)), dg[j] = hsum(gdot(j));
            for (; j < kLanes; ++j) lg[j] = dg[j] = 0.0f;
            if constexpr (!kKeep) logit = loadv(lg);
            dprob = loadv(dg);
          }
          if constexpr (kKeep) {
            logit = loadv(kept + kLanes * c);
          } else if (bias) {
            logit += loadv(bias + base);
          }
          const vi keep = chunk_lanes(base, P, ok);
          const vf prob = keep ? expv(logit - l) : vf{};
          s[c] = prob;
          dp[c] = prob * (dprob - delta);
        }
      }
      for (int64_t n = n0; n < n_end; ++n) {
        const scalar_t* dop = dout + v_base + n * H * Dv;
        const scalar_t* qp = qb + n * qs.n;
        const int32_t* nb = nbr + n * P;
        const int64_t row = (kGather ? n : n - n0) * padded;
        const vf* s = reinterpret_cast<const vf*>(s_buf.data + row);
        const vf* dp = reinterpret_cast<const vf*>(dp_buf.data + row);
        // dQ = scale * sum over the window of dS * K, gathered. Without kGather, dK and dV are
        // scattered here too: += dS * scale * Q and P * dO into each neighbour's row.
        const float* dss = reinterpret_cast<const float*>(dp);
        const float* probs = reinterpret_cast<const float*>(s);
        vf qv[kGather ? 1 : ND], dov[kGather ? 1 : NDV];
        if constexpr (!kGather) {
          for (int j = 0; j < ND; ++j) qv[j] = loadv(qp + kLanes * j) * scale;
          for (int j = 0; j < NDV; ++j) dov[j] = loadv(dop + kLanes * j);
        }
        // A second dQ accumulator (odd slots), so that the FMAs chain less: with AVX-512's 32
        // registers; with AVX2's 16 the query, dO and dQ rows alone nearly fill them.
        constexpr bool kTwoDq = kLanes == 16;
        vf dqv[ND] = {}, dqv2[kTwoDq ? ND : 1] = {};
        auto gather = [&](int64_t p, vf* dq_acc) {
          const int64_t key = nb[p];
          add_row<kSplit, ND>(dq_acc, dss[p], kb + key * ks.n);
          if constexpr (!kGather) {
            float* dkp = dk_slice + key * D;
            float* dvp = dv_slice + key * Dv;
            const float ds = dss[p], prob = probs[p];
            for (int j = 0; j < ND; ++j) {
              storev(dkp + kLanes * j, loadv(dkp + kLanes * j) + ds * qv[j]);
            }
            for (int j = 0; j < NDV; ++j) {
              storev(dvp + kLanes * j, loadv(dvp + kLanes * j) + prob * dov[j]);
            }
          }
        };
        int64_t p = 0;
        if constexpr (kTwoDq) {
          for (; p + 2 <= P; p += 2) gather(p, dqv), gather(p + 1, dqv2);
          if (p < P) gather(p, dqv);
          for (int j = 0; j < ND; ++j) dqv[j] += dqv2[j];
        } else {
          for (; p < P; ++p) gather(p, dqv);
        }
        if (by_rows) {
          float* sums = ds_rows.data + bias_rows.pattern[n] * padded;
          for (int64_t c = 0; c < chunks; ++c) {
            storev(sums + kLanes * c, loadv(sums + kLanes * c) + dp[c]);
          }
        } else if (drpb_slice) {
          const int32_t* bi = bias_rows.indices(n);
          for (int64_t p = 0; p < P; ++p) drpb_slice[bi[p]] += dss[p];
        }
        for (int j = 0; j < ND; ++j) dqv[j] *= scale;
        if (low.dq) {
          store_row<kSplit, ND>(low.dq + b * low.dqs.b + n * low.dqs.n + h * low.dqs.h, dqv);
        } else {
          store_row<false, ND>(dq_slice + n * f32.dqs.n, dqv);
        }
      }
    }
    // dRPB: dS summed into each bias row's slots (vector adds), then added to the rpb entries
    // they index.
    if (by_rows) {
      for (int64_t u = 0; u < bias_rows.per_head; ++u) {
        const int32_t* bi = bias_rows.bidx + u * P;
        for (int64_t p = 0; p < P; ++p) drpb_slice[bi[p]] += ds_rows.data[u * padded + p];
      }
    }
    if constexpr (!kGather) continue;
    // 2. dK and dV, key by key, from the slice's P and dS, summed in ascending query order. For
    // bf16/fp16 rows of one or two vectors, two sets of accumulators (even and odd pairs), so that
    // the FMAs chain less. float32 sums in the scatter's order exactly, so that a packed gradient
    // equals the three-tensor call's (scattered) to the bit.
    constexpr int kSets = !std::is_same_v<scalar_t, float> && ND + NDV <= 4 ? 2 : 1;
    for (int64_t j = 0; j < N; ++j) {
      vf dkv[kSets][ND] = {}, dvv[kSets][NDV] = {};
      const int32_t* pr = inv_pairs + 2 * static_cast<int64_t>(inv_start[j]);
      const int32_t* pr_end = inv_pairs + 2 * static_cast<int64_t>(inv_start[j + 1]);
      auto add = [&](const int32_t* e, int set) {
        const int64_t i = e[0], at = e[1];
        add_row<false, ND>(dkv[set], dp_buf.data[at], q_rows.data + i * D);
        add_row<false, NDV>(dvv[set], s_buf.data[at], g_rows.data + i * Dv);
      };
      if constexpr (kSets == 2) {
        for (; pr + 4 <= pr_end; pr += 4) add(pr, 0), add(pr + 2, 1);
        if (pr < pr_end) add(pr, 0);
        for (int t = 0; t < ND; ++t) dkv[0][t] += dkv[1][t];
        for (int t = 0; t < NDV; ++t) dvv[0][t] += dvv[1][t];
      } else {
        for (; pr < pr_end; pr += 2) add(pr, 0);
      }
      if (low.dk) {
        store_row<kSplit, ND>(low.dk + b * low.dks.b + j * low.dks.n + h * low.dks.h, dkv[0]);
        store_row<kSplit, NDV>(low.dv + b * low.dvs.b + j * low.dvs.n + h * low.dvs.h, dvv[0]);
      } else {
        store_row<false, ND>(f32.dk + b * f32.dks.b + j * f32.dks.n + h * f32.dks.h, dkv[0]);
        store_row<false, NDV>(f32.dv + b * f32.dvs.b + j * f32.dvs.n + h * f32.dvs.h, dvv[0]);
      }
    }
  }
}

template <typename scalar_t, int ND, int NDV>
void backward_vec(
    const scalar_t* dout, const scalar_t* q, const scalar_t* k, const scalar_t* v, Strides qs,
    Strides ks, Strides vs, BiasRows bias_rows,
    const scalar_t* out, const float* lse, const float* logits, const int32_t* nbr,
    const bool* valid, const float* dlse, Grads32 f32, float* drpb,
    LowGrads<scalar_t> low, int64_t B, int64_t N, int64_t H, int64_t G, int64_t P, int64_t R,
    float scale, bool gather) {
  const int64_t padded = (P + kLanes - 1) / kLanes * kLanes;
  TORCH_CHECK(N * padded <= std::numeric_limits<int32_t>::max(), "the backward indexes ", N,
              " tokens x ", padded, " window slots with int32; at most 2^31 - 1");
  std::optional<InverseTable> inverse;
  if (gather) inverse.emplace(nbr, valid, N, P, padded);
  // bf16 rows of 32 or more, with gradients through the float32 scratch: rows are widened by
  // load_split (one shift or mask per 16 elements instead of a shuffle and a shift) and dQ, dK and
  // dV accumulate in its lane order, rounded back interleaved. Bit-identical, 2-5% faster.
  constexpr bool kSplit = kSplitRows<scalar_t, ND> && kSplitRows<scalar_t, NDV>;
  auto run = [&](auto split, auto keep, auto by_key) {
    at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
      backward_vec_range<scalar_t, ND, NDV, decltype(split)::value, decltype(keep)::value,
                         decltype(by_key)::value>(
          dout, q, k, v, qs, ks, vs, bias_rows, out, lse, logits, nbr, valid, dlse,
          inverse ? inverse->start : nullptr, inverse ? inverse->pairs : nullptr, f32, drpb, low,
          B, N, H, G, P, R, scale, begin, end);
    });
  };
  // With the forward's logits, or computing them again (no runtime test in the chunk loop).
  auto with_keep = [&](auto split, auto by_key) {
    if (logits) {
      run(split, std::true_type{}, by_key);
    } else {
      run(split, std::false_type{}, by_key);
    }
  };
  if (low.dk) {
    with_keep(std::bool_constant<kSplit>{}, std::true_type{});
  } else if (gather) {
    with_keep(std::false_type{}, std::true_type{});
  } else {
    with_keep(std::false_type{}, std::false_type{});
  }
}

// Calls fn(ND, NDV) as integral constants for the vector path's head dims; false otherwise.
template <typename Fn>
bool with_vec_dims(int64_t D, int64_t Dv, Fn&& fn) {
  auto rows = [&](auto dims) {
    constexpr int nd = decltype(dims)::value / kLanes;
    return fn(std::integral_constant<int, nd>{}, std::integral_constant<int, nd>{});
  };
  if (D != Dv) return false;
  if (D == 32) return rows(std::integral_constant<int, 32>{});
  if (D == 64) return rows(std::integral_constant<int, 64>{});
  if (D == 16) return rows(std::integral_constant<int, 16>{});
  if (D == 128) return rows(std::integral_constant<int, 128>{});
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
                     const torch::Tensor& bidx, const c10::optional<torch::Tensor>& valid,
                     const c10::optional<torch::Tensor>& pattern) {
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
    if (pattern) {
      // bidx holds U distinct rows; pattern[n] is query n's.
      TORCH_CHECK(bidx.dim() == 2, "bidx has shape ", bidx.sizes(), "; expected [U, P]");
      check_table("bidx", bidx, bidx.size(0), P, rpb->size(1));
      check_dense("bias_pattern", *pattern, {N}, at::kInt);
      check_table("bias_pattern", pattern->view({N, 1}), N, 1, bidx.size(0));
    } else {
      check_table("bidx", bidx, N, P, rpb->size(1));
    }
  }
  return P;
}

// The float32 bias rows the vector path adds (BiasRows), written into `table` (the calling
// thread's scratch, which must outlive the kernel call); empty without rpb. Without `values` (a
// backward reading kept logits), only the indices for dRPB.
BiasRows bias_rows(const c10::optional<torch::Tensor>& rpb, const torch::Tensor& bidx,
                   const c10::optional<torch::Tensor>& pattern, int64_t N, int64_t P,
                   std::optional<AlignedFloats>& table, bool values = true) {
  if (!rpb) return {};
  const int64_t H = rpb->size(0), U = pattern ? bidx.size(0) : N;
  const int64_t padded = (P + kLanes - 1) / kLanes * kLanes;
  const int32_t* bi = table_ptr(bidx);
  const int32_t* pat = pattern ? table_ptr(*pattern) : nullptr;
  if (!values) return {nullptr, pat, bi, U, padded, P};
  const auto rpb_f = rpb->to(at::kFloat).contiguous();
  table.emplace(kSlotBias, H * U * padded);
  table->zero();
  const float* src = rpb_f.data_ptr<float>();
  float* dst = table->data;
  const int64_t R = rpb_f.size(1);
  at::parallel_for(0, H * U, 64, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t h = r / U, u = r % U;
      for (int64_t p = 0; p < P; ++p) dst[r * padded + p] = src[h * R + bi[u * P + p]];
    }
  });
  return {dst, pat, bi, U, padded, P};
}

// bidx as [N, P] rows for the scalar loops: expanded through the pattern where there is one.
torch::Tensor full_bidx(const torch::Tensor& bidx, const c10::optional<torch::Tensor>& pattern) {
  return pattern ? bidx.index_select(0, pattern->view({-1}).to(at::kLong)).contiguous() : bidx;
}

}  // namespace

std::vector<torch::Tensor> na_forward(
    torch::Tensor q, torch::Tensor k, torch::Tensor v, c10::optional<torch::Tensor> rpb,
    torch::Tensor nbr, torch::Tensor bidx, c10::optional<torch::Tensor> valid, double scale,
    bool keep_logits, c10::optional<torch::Tensor> bias_pattern) {
  const int64_t P = check_inputs(q, k, v, rpb, nbr, bidx, valid, bias_pattern);
  const int64_t B = q.size(0), N = q.size(1), H = q.size(2), D = q.size(3), Dv = v.size(3);
  const int64_t G = k.size(2) ? H / k.size(2) : 1;
  const Strides qs = strides(q), ks = strides(k), vs = strides(v);
  const int64_t R = rpb ? rpb->size(1) : 0;
  auto out = torch::empty({B, N, H, Dv}, v.options());
  const auto acc_type = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto lse = torch::empty({B, H, N}, q.options().dtype(acc_type));
  // With keep_logits the vector path also writes every window's logits (bias added, masked slots
  // -inf; [B, heads, N, P rounded up to whole vectors], float32) for na_backward to read instead of
  // recomputing them. Empty where it keeps none.
  const int64_t padded = (P + kLanes - 1) / kLanes * kLanes;
  auto logits = torch::empty({0}, q.options().dtype(at::kFloat));
  const bool vectorised = with_vec_type(q.scalar_type(), [&](auto type) {
    using scalar_t = typename decltype(type)::type;
    return with_vec_dims(D, Dv, [&](auto nd, auto ndv) {
      if (keep_logits) logits = torch::empty({B, H, N, padded}, q.options().dtype(at::kFloat));
      std::optional<AlignedFloats> table;
      forward_vec<scalar_t, decltype(nd)::value, decltype(ndv)::value>(
          q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), qs, ks, vs,
          bias_rows(rpb, bidx, bias_pattern, N, P, table), table_ptr(nbr),
          valid ? valid->data_ptr<bool>() : nullptr, out.data_ptr<scalar_t>(),
          lse.data_ptr<float>(), keep_logits ? logits.data_ptr<float>() : nullptr, B, N, H, G, P,
          static_cast<float>(scale));
      return true;
    });
  });
  if (vectorised) return {out, lse, logits};
  bidx = full_bidx(bidx, bias_pattern);
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
  return {out, lse, logits};
}

std::vector<torch::Tensor> na_backward(
    torch::Tensor dout, torch::Tensor q, torch::Tensor k, torch::Tensor v,
    c10::optional<torch::Tensor> rpb, torch::Tensor out, torch::Tensor lse, torch::Tensor nbr,
    torch::Tensor bidx, c10::optional<torch::Tensor> valid, c10::optional<torch::Tensor> dlse,
    double scale, c10::optional<torch::Tensor> dqkv, c10::optional<torch::Tensor> logits,
    c10::optional<torch::Tensor> bias_pattern) {
  const int64_t P = check_inputs(q, k, v, rpb, nbr, bidx, valid, bias_pattern);
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
  const bool kept = logits && logits->numel() > 0;
  if (kept) {
    check_dense("logits", *logits, {B, H, N, (P + kLanes - 1) / kLanes * kLanes}, at::kFloat);
  }
  const bool vec = with_vec_type(q.scalar_type(), [](auto) { return true; }) &&
                   with_vec_dims(D, Dv, [](auto, auto) { return true; });
  if (dqkv) {
    // The gradient of a packed q/k/v projection, written in place: no stack of three afterwards.
    TORCH_CHECK(vec && G == 1 && D == Dv, "dqkv needs the vector path (float32, bfloat16 or ",
                "float16; head_dim 16, 32, 64 or 128), equal query and value head dims and as ",
                "many key as query heads; got ", q.scalar_type(), ", D=", D, ", Dv=", Dv,
                ", heads=", H, ", heads_kv=", Hkv);
    check_cpu("dqkv", *dqkv, q.scalar_type());
    check_shape("dqkv", *dqkv, {B, N, 3, H, D});
    TORCH_CHECK(dqkv->stride(4) == 1, "dqkv has strides ", dqkv->strides(),
                "; the kernel needs a contiguous last (head_dim) axis");
  }
  // bf16/fp16 without grouped heads: the kernel writes its gradients in that type (LowGrads).
  // Every other call of the vector path writes float32 ones. Each gradient row is written once.
  const bool low = vec && G == 1 && q.scalar_type() != at::kFloat;
  const bool packed32 = dqkv && !low;
  // Head-major [B, heads, N, D] gradients, every row of which the vector path writes.
  // dk/dv get one slice per query head (no two threads share one); grouped heads are summed below.
  const int64_t rows = low || packed32 ? 0 : B;
  auto dq = vec ? torch::empty({rows, H, N, D}, acc_opts) : torch::zeros({B, H, N, D}, acc_opts);
  // dK and dV key by key (written once) into a packed or a bf16/fp16 gradient, whose rows lie
  // apart; float32 head-major ones, contiguous per slice, are scattered into query by query
  // (zeroed first), which measured 9-46% faster there at NAT-Tiny's levels 2-4 (Zen 5 EPYC).
  const bool by_key = low || packed32;
  const auto grad_rows = [&](int64_t d) {
    return by_key ? torch::empty({rows, H, N, d}, acc_opts) : torch::zeros({rows, H, N, d}, acc_opts);
  };
  auto dk = grad_rows(D);
  auto dv = grad_rows(Dv);
  // What the vector path writes float32 gradients into, as [B, N, heads, D] views.
  const auto f32_view = [&](const torch::Tensor& head_major, int64_t i) {
    return packed32 ? dqkv->select(2, i) : head_major.transpose(1, 2);
  };
  Grads32 f32{};
  if (vec && !low) {
    const torch::Tensor views[3] = {f32_view(dq, 0), f32_view(dk, 1), f32_view(dv, 2)};
    f32 = {views[0].data_ptr<float>(), views[1].data_ptr<float>(), views[2].data_ptr<float>(),
           strides(views[0]), strides(views[1]), strides(views[2])};
  }
  auto drpb = torch::zeros({B, H, rpb ? R : 0}, acc_opts);
  torch::Tensor dq_low, dk_low, dv_low;
  if (dqkv && low) {
    dq_low = dqkv->select(2, 0);
    dk_low = dqkv->select(2, 1);
    dv_low = dqkv->select(2, 2);
  } else if (low) {
    // Head-major [B, heads, N, D], as [B, N, heads, D] views for their strides.
    dq_low = torch::empty({B, H, N, D}, q.options()).transpose(1, 2);
    dk_low = torch::empty({B, H, N, D}, q.options()).transpose(1, 2);
    dv_low = torch::empty({B, H, N, Dv}, q.options()).transpose(1, 2);
  }
  std::optional<AlignedFloats> table;
  const bool fast = vec && with_vec_type(q.scalar_type(), [&](auto type) {
    using scalar_t = typename decltype(type)::type;
    return with_vec_dims(D, Dv, [&](auto nd, auto ndv) {
      backward_vec<scalar_t, decltype(nd)::value, decltype(ndv)::value>(
          dout.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(),
          v.data_ptr<scalar_t>(), qs, ks, vs,
          bias_rows(rpb, bidx, bias_pattern, N, P, table, !kept),
          out.data_ptr<scalar_t>(), lse.data_ptr<float>(),
          kept ? logits->data_ptr<float>() : nullptr, table_ptr(nbr),
          valid ? valid->data_ptr<bool>() : nullptr, dlse ? dlse->data_ptr<float>() : nullptr,
          f32, rpb ? drpb.data_ptr<float>() : nullptr,
          low ? LowGrads<scalar_t>{dq_low.data_ptr<scalar_t>(), dk_low.data_ptr<scalar_t>(),
                                   dv_low.data_ptr<scalar_t>(), strides(dq_low),
                                   strides(dk_low), strides(dv_low)}
              : LowGrads<scalar_t>{},
          B, N, H, G, P, R, static_cast<float>(scale), by_key);
      return true;
    });
  });
  auto grouped = [&](const torch::Tensor& g) {
    return G == 1 ? g : g.view({B, Hkv, G, N, g.size(3)}).sum(2);
  };
  if (fast && dqkv) {
    return {dqkv->select(2, 0), dqkv->select(2, 1), dqkv->select(2, 2), drpb.sum(0)};
  }
  if (fast && low) {
    return {dq_low.transpose(1, 2), dk_low.transpose(1, 2), dv_low.transpose(1, 2), drpb.sum(0)};
  }
  if (fast) return {dq, grouped(dk), grouped(dv), drpb.sum(0)};
  bidx = full_bidx(bidx, bias_pattern);
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

// ---- LayerNorm into bfloat16 ------------------------------------------------------------------
// Under CPU autocast to bf16, ATen's LayerNorm of bf16 rows (with float32 weight and bias) took
// 0.79 ms forward and 0.62 backward at NAT-Tiny's level 1 ([25088, 64], Zen 5 EPYC, 2 threads);
// this kernel 0.32 and 0.25 (docs/benchmarks.md, round twenty). layer_norm_bf16 normalises
// float32 or bf16 rows into bf16 in one pass: each row's mean and variance in float32 (two passes
// over the row, in L1), the affine normalisation in float32, the result rounded once to nearest
// even. The backward takes the bf16 output gradient and returns the input's gradient in the
// input's type, with float32 weight and bias gradients. Rows of C = a multiple of kLanes
// elements, contiguous; weight and bias float32.

namespace {

void check_norm_args(const torch::Tensor& x, const torch::Tensor& gamma, const char* what) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() &&
                  (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16),
              what, ": x must be a contiguous float32 or bfloat16 [rows, C] tensor, got ",
              x.sizes(), " ", x.scalar_type());
  const int64_t C = x.size(1);
  TORCH_CHECK(C > 0 && C % kLanes == 0, what, ": C = ", C, " must be a positive multiple of ",
              kLanes);
  TORCH_CHECK(gamma.dim() == 1 && gamma.size(0) == C && gamma.is_contiguous() &&
                  gamma.scalar_type() == at::kFloat,
              what, ": weight must be a contiguous float32 [", C, "] tensor");
}

template <typename in_t>
void layer_norm_rows(const in_t* X, const float* G, const float* Bt, c10::BFloat16* Y, float* MU,
                     float* RS, int64_t M, int64_t C, float eps) {
  const float inv_c = 1.0f / static_cast<float>(C);
  at::parallel_for(0, M, std::max<int64_t>(1, 16384 / C), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const in_t* xr = X + r * C;
      vf s = {};
      for (int64_t c = 0; c < C; c += kLanes) s += loadv(xr + c);
      const float mu = hsum(s) * inv_c;
      vf q = {};
      for (int64_t c = 0; c < C; c += kLanes) {
        const vf d = loadv(xr + c) - mu;
        q += d * d;
      }
      const float rs = 1.0f / std::sqrt(hsum(q) * inv_c + eps);
      for (int64_t c = 0; c < C; c += kLanes) {
        storev(Y + r * C + c, (loadv(xr + c) - mu) * rs * loadv(G + c) + loadv(Bt + c));
      }
      MU[r] = mu;
      RS[r] = rs;
    }
  });
}

// The rows split into at most one chunk per thread, each with its own partial sums of the
// weight and bias gradients (PART: [chunks, 2, C]), added by the caller: the same sums whatever
// thread runs a chunk.
template <typename in_t>
void layer_norm_rows_backward(const c10::BFloat16* DY, const in_t* X, const float* MU,
                              const float* RS, const float* G, in_t* DX, float* PART,
                              int64_t chunks, int64_t M, int64_t C) {
  const float inv_c = 1.0f / static_cast<float>(C);
  const int64_t per_chunk = (M + chunks - 1) / chunks;
  at::parallel_for(0, chunks, 1, [&](int64_t first, int64_t last) {
    for (int64_t chunk = first; chunk < last; ++chunk) {
      float* dg = PART + chunk * 2 * C;
      float* db = dg + C;
      const int64_t end = std::min(M, (chunk + 1) * per_chunk);
      for (int64_t r = chunk * per_chunk; r < end; ++r) {
        const in_t* xr = X + r * C;
        const c10::BFloat16* dyr = DY + r * C;
        const float mu = MU[r], rs = RS[r];
        vf a = {}, b = {};
        for (int64_t c = 0; c < C; c += kLanes) {
          const vf g = loadv(dyr + c);
          const vf xhat = (loadv(xr + c) - mu) * rs;
          const vf gg = g * loadv(G + c);
          a += gg * xhat;
          b += gg;
          storev(dg + c, loadv(dg + c) + g * xhat);
          storev(db + c, loadv(db + c) + g);
        }
        const float ma = hsum(a) * inv_c, mb = hsum(b) * inv_c;
        for (int64_t c = 0; c < C; c += kLanes) {
          const vf xhat = (loadv(xr + c) - mu) * rs;
          const vf gg = loadv(dyr + c) * loadv(G + c);
          storev(DX + r * C + c, (gg - mb - xhat * ma) * rs);
        }
      }
    }
  });
}

}  // namespace

std::vector<torch::Tensor> layer_norm_bf16(const torch::Tensor& x, const torch::Tensor& gamma,
                                           const torch::Tensor& beta, double eps) {
  check_norm_args(x, gamma, "layer_norm_bf16");
  TORCH_CHECK(beta.sizes() == gamma.sizes() && beta.is_contiguous() &&
                  beta.scalar_type() == at::kFloat,
              "layer_norm_bf16: bias must be a contiguous float32 [", x.size(1), "] tensor");
  const int64_t M = x.size(0), C = x.size(1);
  auto y = torch::empty({M, C}, x.options().dtype(at::kBFloat16));
  auto mean = torch::empty({M}, x.options().dtype(at::kFloat));
  auto rstd = torch::empty({M}, x.options().dtype(at::kFloat));
  auto run = [&](auto* X) {
    layer_norm_rows(X, gamma.data_ptr<float>(), beta.data_ptr<float>(),
                    y.data_ptr<c10::BFloat16>(), mean.data_ptr<float>(), rstd.data_ptr<float>(),
                    M, C, static_cast<float>(eps));
  };
  if (x.scalar_type() == at::kFloat) {
    run(x.data_ptr<float>());
  } else {
    run(x.data_ptr<c10::BFloat16>());
  }
  return {y, mean, rstd};
}

std::vector<torch::Tensor> layer_norm_bf16_backward(const torch::Tensor& dy, const torch::Tensor& x,
                                                    const torch::Tensor& mean,
                                                    const torch::Tensor& rstd,
                                                    const torch::Tensor& gamma) {
  check_norm_args(x, gamma, "layer_norm_bf16_backward");
  const int64_t M = x.size(0), C = x.size(1);
  TORCH_CHECK(dy.sizes() == x.sizes() && dy.is_contiguous() && dy.scalar_type() == at::kBFloat16,
              "layer_norm_bf16_backward: dy must be a contiguous bf16 tensor shaped like x");
  TORCH_CHECK(mean.numel() == M && rstd.numel() == M && mean.is_contiguous() &&
                  rstd.is_contiguous() && mean.scalar_type() == at::kFloat &&
                  rstd.scalar_type() == at::kFloat,
              "layer_norm_bf16_backward: mean and rstd must be contiguous float32 [rows]");
  auto dx = torch::empty({M, C}, x.options());
  const int64_t min_rows = std::max<int64_t>(1, 16384 / C);
  const int64_t chunks = std::max<int64_t>(
      1, std::min<int64_t>(at::get_num_threads(), (M + min_rows - 1) / min_rows));
  auto partial = torch::zeros({chunks, 2, C}, x.options().dtype(at::kFloat));
  auto run = [&](auto* X, auto* DX) {
    layer_norm_rows_backward(dy.data_ptr<c10::BFloat16>(), X, mean.data_ptr<float>(),
                             rstd.data_ptr<float>(), gamma.data_ptr<float>(), DX,
                             partial.data_ptr<float>(), chunks, M, C);
  };
  if (x.scalar_type() == at::kFloat) {
    run(x.data_ptr<float>(), dx.data_ptr<float>());
  } else {
    run(x.data_ptr<c10::BFloat16>(), dx.data_ptr<c10::BFloat16>());
  }
  auto sums = partial.sum(0);
  return {dx, sums[0], sums[1]};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace py = pybind11;
  m.def("na_forward", &na_forward, "fused neighborhood attention forward (CPU)", py::arg("q"),
        py::arg("k"), py::arg("v"), py::arg("rpb"), py::arg("nbr"), py::arg("bidx"),
        py::arg("valid"), py::arg("scale"), py::arg("keep_logits") = false,
        py::arg("bias_pattern") = py::none());
  m.def("na_backward", &na_backward, "fused neighborhood attention backward (CPU)",
        py::arg("dout"), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("rpb"), py::arg("out"),
        py::arg("lse"), py::arg("nbr"), py::arg("bidx"), py::arg("valid"), py::arg("dlse"),
        py::arg("scale"), py::arg("dqkv") = py::none(), py::arg("logits") = py::none(),
        py::arg("bias_pattern") = py::none());
  m.def("layer_norm_bf16", &layer_norm_bf16,
        "LayerNorm of float32 or bfloat16 rows into bfloat16, with each row's mean and 1/std (CPU)",
        py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("eps"));
  m.def("layer_norm_bf16_backward", &layer_norm_bf16_backward,
        "layer_norm_bf16's gradients from a bfloat16 output gradient: dx, dweight, dbias (CPU)",
        py::arg("dy"), py::arg("x"), py::arg("mean"), py::arg("rstd"), py::arg("weight"));
  m.def("vector_lanes", [] { return kLanes; }, "float32 lanes per vector in the vector path");
}
