// CPU kernels for the DARTS ops, channels-last (NDHWC) tensors: the depthwise 3D conv's weight
// gradient and gather-form correlation, and training BatchNorm + LeakyReLU fused.
//
// Depthwise weight gradient:
//
//   dW[a, b, e, c] = sum over n, d, h, w of
//       x[n, d*s0 + a*l0 - p0, h*s1 + b*l1 - p1, w*s2 + e*l2 - p2, c] * g[n, d, h, w, c]
//
// with s the stride, l the dilation, p the padding (taps that land in it contribute nothing).
// torch 2.13's CPU kernel for this runs at a few % of peak (benchmarks/depthwise_grads.py):
// here the channels are the vector lanes, the kernel's last axis is unrolled so its
// accumulators stay in registers along a row, and each thread sums into its own buffer
// (reduced at the end), so every multiply-add costs one load. bf16 inputs are widened to
// fp32; sums are fp32.
//
// Gather-form correlation (dilated forwards, strided/dilated input gradients): the w axis is
// split by residue class so consecutive outputs read consecutive inputs, and each weight
// vector loaded serves 8 outputs held in registers (register blocking; timings in
// docs/benchmarks.md, from benchmarks/depthwise_grads.py).
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <cstdint>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

namespace {

inline float widen(float v) { return v; }

inline float widen(uint16_t v) {  // bf16 bits -> fp32
  const uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// Calls f(std::integral_constant<int, BW>{}, c0) over the channels [0, C): blocks of BW = 16
// lanes (one AVX-512 register of fp32), then 8, then single lanes.
template <typename F>
void for_channel_blocks(int64_t C, F f) {
  int64_t c0 = 0;
  for (; c0 + 16 <= C; c0 += 16) f(std::integral_constant<int, 16>{}, c0);
  for (; c0 + 8 <= C; c0 += 8) f(std::integral_constant<int, 8>{}, c0);
  for (; c0 < C; ++c0) f(std::integral_constant<int, 1>{}, c0);
}

// Shapes and conv parameters; x is the unpadded input [N, Di, Hi, Wi, C], g the output
// gradient [N, Do, Ho, Wo, C]; input index = output index * s + tap * l - p on each axis.
struct Geometry {
  int64_t C, Di, Hi, Wi, Do, Ho, Wo, k0, k1;
  int64_t s[3], l[3], p[3];
};

// One output row (fixed n, d, h, kernel taps a, b) for BW channels starting at the pointers
// (x at the input row the taps a, b reach). Output voxels in [w_lo, w_hi) see no padding along
// w; the others skip the taps that fall outside the row.
template <typename T, int BW, int KW>
void row(const T* x, const T* g, float* acc, const Geometry& G, int64_t w_lo, int64_t w_hi) {
  const int64_t c = G.C, s2 = G.s[2], l2 = G.l[2], p2 = G.p[2];
  float r[KW][BW];
#pragma GCC unroll 8
  for (int e = 0; e < KW; ++e)
#pragma GCC unroll 16
    for (int i = 0; i < BW; ++i) r[e][i] = acc[e * c + i];
  for (int64_t w = 0; w < G.Wo; ++w) {
    const T* gp = g + w * c;
    float gv[BW];
#pragma GCC unroll 16
    for (int i = 0; i < BW; ++i) gv[i] = widen(gp[i]);
    const int64_t base = w * s2 - p2;
    const bool inside = w >= w_lo && w < w_hi;
#pragma GCC unroll 8
    for (int e = 0; e < KW; ++e) {
      const int64_t xw = base + e * l2;
      if (!inside && (xw < 0 || xw >= G.Wi)) continue;
      const T* xe = x + xw * c;
#pragma GCC unroll 16
      for (int i = 0; i < BW; ++i) r[e][i] += widen(xe[i]) * gv[i];
    }
  }
#pragma GCC unroll 8
  for (int e = 0; e < KW; ++e)
#pragma GCC unroll 16
    for (int i = 0; i < BW; ++i) acc[e * c + i] = r[e][i];
}

template <typename T, int KW>
void accumulate(const T* x, const T* g, float* buffers, int64_t N, const Geometry& G) {
  const int64_t c = G.C, taps = G.k0 * G.k1 * KW;
  // output w whose taps all land inside the row: w * s - p >= 0, w * s - p + (KW-1) * l < Wi
  const int64_t w_lo = (G.p[2] + G.s[2] - 1) / G.s[2];
  const int64_t last = G.Wi - 1 + G.p[2] - (KW - 1) * G.l[2];
  const int64_t w_hi = last < 0 ? w_lo : last / G.s[2] + 1;
  at::parallel_for(0, N * G.Do, 1, [&](int64_t begin, int64_t end) {
    float* acc = buffers + at::get_thread_num() * taps * c;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / G.Do, d = item % G.Do;
      for (int64_t a = 0; a < G.k0; ++a) {
        const int64_t zd = d * G.s[0] + a * G.l[0] - G.p[0];
        if (zd < 0 || zd >= G.Di) continue;  // padding: contributes nothing
        for (int64_t b = 0; b < G.k1; ++b) {
          float* acc_ab = acc + (a * G.k1 + b) * KW * c;
          for (int64_t h = 0; h < G.Ho; ++h) {
            const int64_t zh = h * G.s[1] + b * G.l[1] - G.p[1];
            if (zh < 0 || zh >= G.Hi) continue;
            const T* xrow = x + ((n * G.Di + zd) * G.Hi + zh) * G.Wi * c;
            const T* grow = g + ((n * G.Do + d) * G.Ho + h) * G.Wo * c;
            for_channel_blocks(c, [&](auto bw, int64_t c0) {
              row<T, decltype(bw)::value, KW>(xrow + c0, grow + c0, acc_ab + c0, G, w_lo, w_hi);
            });
          }
        }
      }
    }
  });
}

template <typename T>
void dispatch_kw(int64_t k2, const T* x, const T* g, float* buffers, int64_t N,
                 const Geometry& G) {
  switch (k2) {
    case 1: return accumulate<T, 1>(x, g, buffers, N, G);
    case 2: return accumulate<T, 2>(x, g, buffers, N, G);
    case 3: return accumulate<T, 3>(x, g, buffers, N, G);
    case 4: return accumulate<T, 4>(x, g, buffers, N, G);
    case 5: return accumulate<T, 5>(x, g, buffers, N, G);
    case 6: return accumulate<T, 6>(x, g, buffers, N, G);
    case 7: return accumulate<T, 7>(x, g, buffers, N, G);
    default: TORCH_CHECK(false, "depthwise grad_weight: kernel width ", k2, " above 7");
  }
}

// Valid (tap, input index) pairs of each output index along one axis:
// input index = (o * A + t * B + off) / D where that division is exact and in [0, n_in).
std::vector<std::vector<std::pair<int64_t, int64_t>>> axis_taps(int64_t n_out, int64_t n_in,
                                                                 int64_t k, int64_t A,
                                                                 int64_t B, int64_t off,
                                                                 int64_t D) {
  std::vector<std::vector<std::pair<int64_t, int64_t>>> taps(n_out);
  for (int64_t o = 0; o < n_out; ++o) {
    for (int64_t t = 0; t < k; ++t) {
      const int64_t z = o * A + t * B + off;
      if (z < 0 || z % D != 0 || z / D >= n_in) continue;
      taps[o].emplace_back(t, z / D);
    }
  }
  return taps;
}

int64_t floor_div(int64_t a, int64_t b) {  // b > 0
  return a >= 0 ? a / b : -((-a + b - 1) / b);
}

// The outputs of one residue class r along the w axis: o = r + D * j for j in [0, n). Their
// valid taps are the same for the whole class, each (t, q) reading input j * A + q; for j in
// [lo, hi) every one of them lands inside the row. Splitting by residue makes the inputs of
// consecutive j consecutive (stride A), also for strided input gradients (D > 1).
struct WClass {
  int64_t r, n, lo, hi;
  std::vector<std::pair<int64_t, int64_t>> taps;
};

std::vector<WClass> w_classes(int64_t n_out, int64_t n_in, int64_t k, int64_t A, int64_t B,
                              int64_t off, int64_t D) {
  std::vector<WClass> classes;
  for (int64_t r = 0; r < std::min(D, n_out); ++r) {
    WClass cls{r, (n_out - r + D - 1) / D, 0, 0, {}};
    cls.hi = cls.n;
    for (int64_t t = 0; t < k; ++t) {
      const int64_t z = r * A + t * B + off;
      if (((z % D) + D) % D != 0) continue;
      const int64_t q = z / D;  // exact
      cls.taps.emplace_back(t, q);
      cls.lo = std::max(cls.lo, floor_div(-q + A - 1, A));
      cls.hi = std::min(cls.hi, floor_div(n_in - 1 - q, A) + 1);
    }
    // no interior when the taps never all land in the row (large dilation, short rows)
    cls.lo = std::min(cls.lo, cls.n);
    cls.hi = std::max(cls.hi, cls.lo);
    classes.push_back(std::move(cls));
  }
  return classes;
}

using Rows = std::vector<std::pair<const void*, const float*>>;  // (input row, weight row)

// BW lanes of fp32 as one GCC vector (one AVX-512 register at 16), loaded from fp32 or bf16.
template <int BW>
struct Lanes {
  typedef float f32 __attribute__((vector_size(4 * BW)));
  typedef uint16_t u16 __attribute__((vector_size(2 * BW)));
  typedef uint32_t u32 __attribute__((vector_size(4 * BW)));
};
template <int BW>
using fvec = typename Lanes<BW>::f32;

template <int BW>
inline fvec<BW> load(const float* p) {
  fvec<BW> v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <int BW>
inline fvec<BW> load(const uint16_t* p) {  // bf16 bits -> fp32
  typename Lanes<BW>::u16 h;
  std::memcpy(&h, p, sizeof h);
  const typename Lanes<BW>::u32 bits =
      __builtin_convertvector(h, typename Lanes<BW>::u32) << 16;
  fvec<BW> v;
  std::memcpy(&v, &bits, sizeof v);
  return v;
}

// The outputs of one w class in one output row, BW channels from c0. Interior outputs go WB at
// a time: each weight vector loaded once serves WB outputs (register-blocked); the others check
// every tap against the row's ends.
template <typename T, int BW>
void gather_class(const Rows& rows, const WClass& k, float* orow, int64_t A, int64_t D,
                  int64_t n_in, int64_t c, int64_t c0) {
  constexpr int WB = 8;
  auto single = [&](int64_t j) {
    fvec<BW> acc = {};
    for (const auto& rw : rows) {
      const T* x = static_cast<const T*>(rw.first);
      for (const auto& tq : k.taps) {
        const int64_t xi = j * A + tq.second;
        if (xi < 0 || xi >= n_in) continue;
        acc += load<BW>(rw.second + tq.first * c + c0) * load<BW>(x + xi * c + c0);
      }
    }
    std::memcpy(orow + (k.r + D * j) * c + c0, &acc, sizeof acc);
  };
  int64_t j = 0;
  for (; j < std::min(k.lo, k.n); ++j) single(j);
  const int64_t step = A * c;
  for (; j + WB <= k.hi; j += WB) {
    fvec<BW> acc[WB] = {};
    for (const auto& rw : rows) {
      const T* x = static_cast<const T*>(rw.first) + j * step + c0;
      for (const auto& tq : k.taps) {
        const fvec<BW> wv = load<BW>(rw.second + tq.first * c + c0);
        const T* xp = x + tq.second * c;
#pragma GCC unroll 8
        for (int jj = 0; jj < WB; ++jj) acc[jj] += wv * load<BW>(xp + jj * step);
      }
    }
#pragma GCC unroll 8
    for (int jj = 0; jj < WB; ++jj)
      std::memcpy(orow + (k.r + D * (j + jj)) * c + c0, &acc[jj], sizeof acc[jj]);
  }
  for (; j < k.n; ++j) single(j);
}

template <typename T>
void gather_all(const T* x, const float* wt, float* out, int64_t N, int64_t Di, int64_t Hi,
                int64_t Wi, int64_t C, int64_t Do, int64_t Ho, int64_t Wo, int64_t k1,
                int64_t k2, const std::vector<std::vector<std::pair<int64_t, int64_t>>>& t0,
                const std::vector<std::vector<std::pair<int64_t, int64_t>>>& t1,
                const std::vector<WClass>& classes, int64_t A2, int64_t D2) {
  at::parallel_for(0, N * Do, 1, [&](int64_t begin, int64_t end) {
    Rows rows;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / Do, d = item % Do;
      for (int64_t h = 0; h < Ho; ++h) {
        rows.clear();
        for (const auto& ad : t0[d])
          for (const auto& bh : t1[h])
            rows.emplace_back(x + ((n * Di + ad.second) * Hi + bh.second) * Wi * C,
                              wt + (ad.first * k1 + bh.first) * k2 * C);
        float* orow = out + ((n * Do + d) * Ho + h) * Wo * C;
        for (const auto& cls : classes)
          for_channel_blocks(C, [&](auto bw, int64_t c0) {
            gather_class<T, decltype(bw)::value>(rows, cls, orow, A2, D2, Wi, C, c0);
          });
      }
    }
  });
}
}  // namespace

// x: input [N, Di, Hi, Wi, C], g: output gradient [N, Do, Ho, Wo, C], both contiguous, same
// dtype (float32 or bfloat16). Returns the fp32 weight gradient [k0, k1, k2, C].
torch::Tensor grad_weight(torch::Tensor x, torch::Tensor g, std::vector<int64_t> kernel,
                          std::vector<int64_t> stride, std::vector<int64_t> padding,
                          std::vector<int64_t> dilation) {
  TORCH_CHECK(x.dim() == 5 && g.dim() == 5, "expected 5-D NDHWC tensors");
  TORCH_CHECK(x.is_contiguous() && g.is_contiguous(), "expected contiguous NDHWC tensors");
  TORCH_CHECK(x.scalar_type() == g.scalar_type(), "x and g dtypes differ");
  TORCH_CHECK(kernel.size() == 3 && stride.size() == 3 && padding.size() == 3 &&
              dilation.size() == 3);
  const int64_t N = g.size(0);
  TORCH_CHECK(x.size(0) == N && x.size(4) == g.size(4), "x and g shapes disagree");
  Geometry G{g.size(4), x.size(1), x.size(2), x.size(3), g.size(1), g.size(2), g.size(3),
             kernel[0], kernel[1], {}, {}, {}};
  for (int i = 0; i < 3; ++i) {
    TORCH_CHECK(stride[i] >= 1 && dilation[i] >= 1 && padding[i] >= 0, "bad conv parameters");
    G.s[i] = stride[i];
    G.l[i] = dilation[i];
    G.p[i] = padding[i];
  }
  const int64_t taps = kernel[0] * kernel[1] * kernel[2];
  auto buffers =
      torch::zeros({at::get_num_threads(), taps * G.C}, g.options().dtype(torch::kFloat));
  float* buf = buffers.data_ptr<float>();
  if (x.scalar_type() == torch::kFloat) {
    dispatch_kw<float>(kernel[2], x.data_ptr<float>(), g.data_ptr<float>(), buf, N, G);
  } else {
    TORCH_CHECK(x.scalar_type() == torch::kBFloat16, "expected float32 or bfloat16");
    dispatch_kw<uint16_t>(kernel[2], reinterpret_cast<const uint16_t*>(x.data_ptr()),
                          reinterpret_cast<const uint16_t*>(g.data_ptr()), buf, N, G);
  }
  return buffers.sum(0).view({kernel[0], kernel[1], kernel[2], G.C});
}

// A depthwise correlation in gather form, for the forward of dilated convs and the input
// gradient of strided/dilated ones: out[n, o, c] = sum over taps t of
// w[t, c] * x[n, (o * A + t * B + off) / D, c] on each axis, where that division is exact and
// in range. x: [N, Di, Hi, Wi, C] contiguous float32/bfloat16; w: [k0, k1, k2, C] float32.
// Returns float32 [N, Do, Ho, Wo, C].
torch::Tensor gather(torch::Tensor x, torch::Tensor w, std::vector<int64_t> out_size,
                     std::vector<int64_t> A, std::vector<int64_t> B, std::vector<int64_t> off,
                     std::vector<int64_t> D) {
  TORCH_CHECK(x.dim() == 5 && x.is_contiguous(), "expected a contiguous NDHWC x");
  TORCH_CHECK(w.dim() == 4 && w.is_contiguous() && w.scalar_type() == torch::kFloat,
              "expected a contiguous float32 [k0, k1, k2, C] w");
  TORCH_CHECK(out_size.size() == 3 && A.size() == 3 && B.size() == 3 && off.size() == 3 &&
              D.size() == 3);
  const int64_t N = x.size(0), C = x.size(4);
  TORCH_CHECK(w.size(3) == C, "x and w channels disagree");
  std::vector<std::vector<std::pair<int64_t, int64_t>>> t0, t1;
  for (int i = 0; i < 3; ++i) TORCH_CHECK(D[i] >= 1 && (i < 2 || A[i] >= 1), "bad A or D");
  t0 = axis_taps(out_size[0], x.size(1), w.size(0), A[0], B[0], off[0], D[0]);
  t1 = axis_taps(out_size[1], x.size(2), w.size(1), A[1], B[1], off[1], D[1]);
  const auto classes = w_classes(out_size[2], x.size(3), w.size(2), A[2], B[2], off[2], D[2]);
  auto out = torch::empty({N, out_size[0], out_size[1], out_size[2], C},
                          x.options().dtype(torch::kFloat));
  const float* wt = w.data_ptr<float>();
  float* o = out.data_ptr<float>();
  if (x.scalar_type() == torch::kFloat) {
    gather_all<float>(x.data_ptr<float>(), wt, o, N, x.size(1), x.size(2), x.size(3), C,
                      out_size[0], out_size[1], out_size[2], w.size(1), w.size(2), t0, t1,
                      classes, A[2], D[2]);
  } else {
    TORCH_CHECK(x.scalar_type() == torch::kBFloat16, "expected float32 or bfloat16");
    gather_all<uint16_t>(reinterpret_cast<const uint16_t*>(x.data_ptr()), wt, o, N, x.size(1),
                         x.size(2), x.size(3), C, out_size[0], out_size[1], out_size[2],
                         w.size(1), w.size(2), t0, t1, classes, A[2], D[2]);
  }
  return out;
}

// ---- training-mode BatchNorm + LeakyReLU, fused --------------------------------------------
// x: [M, C] rows of channels (an NDHWC tensor viewed flat). Two passes forward (statistics,
// then y = leaky(x * scale + shift)) and two backward (per-channel sums, then dx), instead of
// torch's separate BN and LeakyReLU kernels; the BN output is never stored.

namespace {

constexpr int64_t kRowChunk = 256;  // rows summed in fp32 before joining the fp64 totals

// Per-channel sums over rows of f(row, c) pairs, computed in parallel over row chunks:
// out[0][c] += f0, out[1][c] += f1. f fills two float arrays of C for one row.
template <typename RowFn>
void channel_sums(int64_t M, int64_t C, RowFn f, std::vector<double>& s0,
                  std::vector<double>& s1) {
  const int64_t chunks = (M + kRowChunk - 1) / kRowChunk;
  const int nt = at::get_num_threads();
  std::vector<double> part(static_cast<size_t>(nt) * 2 * C, 0.0);
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    double* mine = part.data() + static_cast<size_t>(at::get_thread_num()) * 2 * C;
    std::vector<float> a(C), b(C);
    for (int64_t k = begin; k < end; ++k) {
      std::fill(a.begin(), a.end(), 0.f);
      std::fill(b.begin(), b.end(), 0.f);
      const int64_t r1 = std::min(M, (k + 1) * kRowChunk);
      for (int64_t r = k * kRowChunk; r < r1; ++r) f(r, a.data(), b.data());
      for (int64_t c = 0; c < C; ++c) {
        mine[c] += a[c];
        mine[C + c] += b[c];
      }
    }
  });
  s0.assign(C, 0.0);
  s1.assign(C, 0.0);
  for (int t = 0; t < nt; ++t)
    for (int64_t c = 0; c < C; ++c) {
      s0[c] += part[static_cast<size_t>(t) * 2 * C + c];
      s1[c] += part[static_cast<size_t>(t) * 2 * C + C + c];
    }
}

// branch-free forms, so the channel loops vectorise
inline float leaky(float z, float slope) { return std::max(z, 0.f) + slope * std::min(z, 0.f); }

inline float leaky_slope(float z, float slope) { return z > 0.f ? 1.f : slope; }

inline void store(float* p, float v) { *p = v; }

inline void store(uint16_t* p, float v) {  // fp32 -> bf16, round to nearest even
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  bits += 0x7FFFu + ((bits >> 16) & 1u);
  *p = static_cast<uint16_t>(bits >> 16);
}

template <typename T>
void bn_act_forward_impl(const T* x, T* y, int64_t M, int64_t C, const float* gamma,
                         const float* beta, double eps, float slope, float* mean_out,
                         float* var_out, float* invstd_out) {
  // shifted sums (by the first row) keep E[x^2] - E[x]^2 from cancelling
  std::vector<float> shift(C);
  for (int64_t c = 0; c < C; ++c) shift[c] = widen(x[c]);
  std::vector<double> s1, s2;
  const float* __restrict sh = shift.data();
  channel_sums(M, C, [&](int64_t r, float* __restrict a, float* __restrict b) {
    const T* __restrict xr = x + r * C;
    for (int64_t c = 0; c < C; ++c) {
      const float d = widen(xr[c]) - sh[c];
      a[c] += d;
      b[c] += d * d;
    }
  }, s1, s2);
  std::vector<float> scale(C), offset(C);
  for (int64_t c = 0; c < C; ++c) {
    const double m1 = s1[c] / M;
    const double var = std::max(s2[c] / M - m1 * m1, 0.0);
    const double mean = shift[c] + m1;
    const double invstd = 1.0 / std::sqrt(var + eps);
    mean_out[c] = static_cast<float>(mean);
    var_out[c] = static_cast<float>(var);
    invstd_out[c] = static_cast<float>(invstd);
    scale[c] = static_cast<float>(gamma[c] * invstd);
    offset[c] = static_cast<float>(beta[c] - mean * gamma[c] * invstd);
  }
  const float* __restrict sc = scale.data();
  const float* __restrict of = offset.data();
  at::parallel_for(0, M, kRowChunk, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* __restrict xr = x + r * C;
      T* __restrict yr = y + r * C;
      for (int64_t c = 0; c < C; ++c) store(yr + c, leaky(widen(xr[c]) * sc[c] + of[c], slope));
    }
  });
}

template <typename T>
void bn_act_backward_impl(const T* x, const T* gy, T* gx, int64_t M, int64_t C,
                          const float* gamma, const float* beta, const float* mean,
                          const float* invstd, float slope, float* ggamma, float* gbeta) {
  std::vector<float> scale(C), offset(C);
  for (int64_t c = 0; c < C; ++c) {
    scale[c] = gamma[c] * invstd[c];
    offset[c] = beta[c] - mean[c] * scale[c];
  }
  // gz = dL/d(BN output) through the LeakyReLU; sums of gz and gz * xhat per channel
  std::vector<double> sg, sgx;
  const float* __restrict sc = scale.data();
  const float* __restrict of = offset.data();
  channel_sums(M, C, [&](int64_t r, float* __restrict a, float* __restrict b) {
    const T* __restrict xr = x + r * C;
    const T* __restrict gr = gy + r * C;
    for (int64_t c = 0; c < C; ++c) {
      const float xv = widen(xr[c]);
      const float gz = widen(gr[c]) * leaky_slope(xv * sc[c] + of[c], slope);
      a[c] += gz;
      b[c] += gz * (xv - mean[c]) * invstd[c];
    }
  }, sg, sgx);
  // dx = gamma * invstd * (gz - mean(gz) - xhat * mean(gz * xhat)) = k1 * gz + k2 * x + k3
  std::vector<float> k1(C), k2(C), k3(C);
  for (int64_t c = 0; c < C; ++c) {
    ggamma[c] = static_cast<float>(sgx[c]);
    gbeta[c] = static_cast<float>(sg[c]);
    const double a = static_cast<double>(gamma[c]) * invstd[c];
    const double b = -a * invstd[c] * sgx[c] / M;
    k1[c] = static_cast<float>(a);
    k2[c] = static_cast<float>(b);
    k3[c] = static_cast<float>(-a * sg[c] / M - b * mean[c]);
  }
  const float* __restrict c1 = k1.data();
  const float* __restrict c2 = k2.data();
  const float* __restrict c3 = k3.data();
  at::parallel_for(0, M, kRowChunk, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* __restrict xr = x + r * C;
      const T* __restrict gr = gy + r * C;
      T* __restrict out = gx + r * C;
      for (int64_t c = 0; c < C; ++c) {
        const float xv = widen(xr[c]);
        const float gz = widen(gr[c]) * leaky_slope(xv * sc[c] + of[c], slope);
        store(out + c, c1[c] * gz + c2[c] * xv + c3[c]);
      }
    }
  });
}

void check_rows(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 2 && t.is_contiguous(), name, ": expected a contiguous [M, C] tensor");
  TORCH_CHECK(t.scalar_type() == torch::kFloat || t.scalar_type() == torch::kBFloat16, name,
              ": expected float32 or bfloat16");
}

void check_channels(const torch::Tensor& t, int64_t C, const char* name) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == C && t.is_contiguous() &&
                  t.scalar_type() == torch::kFloat,
              name, ": expected a contiguous float32 vector of ", C);
}

}  // namespace

// Returns (y, mean, biased var, invstd); y has x's dtype, the rest float32 [C].
std::vector<torch::Tensor> bn_act_forward(torch::Tensor x, torch::Tensor gamma,
                                          torch::Tensor beta, double eps, double slope) {
  check_rows(x, "x");
  const int64_t M = x.size(0), C = x.size(1);
  TORCH_CHECK(M > 1, "BatchNorm needs more than one value per channel");
  check_channels(gamma, C, "gamma");
  check_channels(beta, C, "beta");
  auto f32 = x.options().dtype(torch::kFloat);
  auto y = torch::empty_like(x);
  auto mean = torch::empty({C}, f32), var = torch::empty({C}, f32), inv = torch::empty({C}, f32);
  if (x.scalar_type() == torch::kFloat) {
    bn_act_forward_impl<float>(x.data_ptr<float>(), y.data_ptr<float>(), M, C,
                               gamma.data_ptr<float>(), beta.data_ptr<float>(), eps,
                               static_cast<float>(slope), mean.data_ptr<float>(),
                               var.data_ptr<float>(), inv.data_ptr<float>());
  } else {
    bn_act_forward_impl<uint16_t>(reinterpret_cast<const uint16_t*>(x.data_ptr()),
                                  reinterpret_cast<uint16_t*>(y.data_ptr()), M, C,
                                  gamma.data_ptr<float>(), beta.data_ptr<float>(), eps,
                                  static_cast<float>(slope), mean.data_ptr<float>(),
                                  var.data_ptr<float>(), inv.data_ptr<float>());
  }
  return {y, mean, var, inv};
}

// Returns (dx in x's dtype, dgamma, dbeta float32).
std::vector<torch::Tensor> bn_act_backward(torch::Tensor x, torch::Tensor gy, torch::Tensor gamma,
                                           torch::Tensor beta, torch::Tensor mean,
                                           torch::Tensor invstd, double slope) {
  check_rows(x, "x");
  check_rows(gy, "gy");
  TORCH_CHECK(gy.sizes() == x.sizes() && gy.scalar_type() == x.scalar_type(),
              "gy must match x");
  const int64_t M = x.size(0), C = x.size(1);
  for (auto* t : {&gamma, &beta, &mean, &invstd}) check_channels(*t, C, "channel vector");
  auto gx = torch::empty_like(x);
  auto ggamma = torch::empty({C}, gamma.options()), gbeta = torch::empty({C}, gamma.options());
  if (x.scalar_type() == torch::kFloat) {
    bn_act_backward_impl<float>(x.data_ptr<float>(), gy.data_ptr<float>(), gx.data_ptr<float>(),
                                M, C, gamma.data_ptr<float>(), beta.data_ptr<float>(),
                                mean.data_ptr<float>(), invstd.data_ptr<float>(),
                                static_cast<float>(slope), ggamma.data_ptr<float>(),
                                gbeta.data_ptr<float>());
  } else {
    bn_act_backward_impl<uint16_t>(
        reinterpret_cast<const uint16_t*>(x.data_ptr()),
        reinterpret_cast<const uint16_t*>(gy.data_ptr()),
        reinterpret_cast<uint16_t*>(gx.data_ptr()),
        M, C, gamma.data_ptr<float>(), beta.data_ptr<float>(), mean.data_ptr<float>(),
        invstd.data_ptr<float>(), static_cast<float>(slope), ggamma.data_ptr<float>(),
        gbeta.data_ptr<float>());
  }
  return {gx, ggamma, gbeta};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("bn_act_forward", &bn_act_forward, "training BatchNorm + LeakyReLU forward ([M, C])");
  m.def("bn_act_backward", &bn_act_backward, "training BatchNorm + LeakyReLU backward ([M, C])");
  m.def("gather", &gather, "depthwise conv3d in gather form (NDHWC, CPU)");
  m.def("grad_weight", &grad_weight, "depthwise conv3d weight gradient (NDHWC, CPU)");
}
