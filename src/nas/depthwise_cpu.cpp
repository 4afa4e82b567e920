// Weight gradient of a depthwise 3D convolution on the CPU, channels-last (NDHWC) tensors.
//
//   dW[a, b, e, c] = sum over n, d, h, w of
//       x[n, d*s0 + a*l0 - p0, h*s1 + b*l1 - p1, w*s2 + e*l2 - p2, c] * g[n, d, h, w, c]
//
// with s the stride, l the dilation, p the padding (taps that land in it contribute nothing). torch 2.13's CPU kernel for
// this runs at a few % of peak (benchmarks/depthwise_grads.py): here the channels are the
// vector lanes, the kernel's last axis is unrolled so its accumulators stay in registers
// along a row, and each thread sums into its own buffer (reduced at the end), so every
// multiply-add costs one load. bf16 inputs are widened to fp32; sums are fp32.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <cstdint>
#include <cstring>
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
            // all channels: blocks of 16, then 8, then single lanes
            int64_t c0 = 0;
            for (; c0 + 16 <= c; c0 += 16)
              row<T, 16, KW>(xrow + c0, grow + c0, acc_ab + c0, G, w_lo, w_hi);
            for (; c0 + 8 <= c; c0 += 8)
              row<T, 8, KW>(xrow + c0, grow + c0, acc_ab + c0, G, w_lo, w_hi);
            for (; c0 < c; ++c0) row<T, 1, KW>(xrow + c0, grow + c0, acc_ab + c0, G, w_lo, w_hi);
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

// One output row, BW channels: out[w] = sum over the row's (input row, weight row) pairs and
// the w axis taps of weight * input.
template <typename T, int BW>
void gather_row(const std::vector<std::pair<const T*, const float*>>& rows,
                const std::vector<std::vector<std::pair<int64_t, int64_t>>>& wtaps,
                float* out, int64_t wo, int64_t c, int64_t c0) {
  for (int64_t w = 0; w < wo; ++w) {
    float acc[BW] = {};
    for (const auto& rw : rows) {
      for (const auto& ti : wtaps[w]) {
        const T* xi = rw.first + ti.second * c + c0;
        const float* wi = rw.second + ti.first * c + c0;
#pragma GCC unroll 16
        for (int i = 0; i < BW; ++i) acc[i] += wi[i] * widen(xi[i]);
      }
    }
#pragma GCC unroll 16
    for (int i = 0; i < BW; ++i) out[w * c + c0 + i] = acc[i];
  }
}

template <typename T>
void gather_all(const T* x, const float* wt, float* out, int64_t N, int64_t Di, int64_t Hi,
                int64_t Wi, int64_t C, int64_t Do, int64_t Ho, int64_t Wo, int64_t k1,
                int64_t k2, const std::vector<std::vector<std::pair<int64_t, int64_t>>>& t0,
                const std::vector<std::vector<std::pair<int64_t, int64_t>>>& t1,
                const std::vector<std::vector<std::pair<int64_t, int64_t>>>& t2) {
  at::parallel_for(0, N * Do, 1, [&](int64_t begin, int64_t end) {
    std::vector<std::pair<const T*, const float*>> rows;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / Do, d = item % Do;
      for (int64_t h = 0; h < Ho; ++h) {
        rows.clear();
        for (const auto& ad : t0[d])
          for (const auto& bh : t1[h])
            rows.emplace_back(x + ((n * Di + ad.second) * Hi + bh.second) * Wi * C,
                              wt + (ad.first * k1 + bh.first) * k2 * C);
        float* orow = out + ((n * Do + d) * Ho + h) * Wo * C;
        int64_t c0 = 0;
        for (; c0 + 16 <= C; c0 += 16) gather_row<T, 16>(rows, t2, orow, Wo, C, c0);
        for (; c0 + 8 <= C; c0 += 8) gather_row<T, 8>(rows, t2, orow, Wo, C, c0);
        for (; c0 < C; ++c0) gather_row<T, 1>(rows, t2, orow, Wo, C, c0);
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
  auto buffers = torch::zeros({at::get_num_threads(), taps * G.C}, g.options().dtype(torch::kFloat));
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
  std::vector<std::vector<std::vector<std::pair<int64_t, int64_t>>>> taps;
  for (int i = 0; i < 3; ++i) {
    TORCH_CHECK(D[i] >= 1, "D must be positive");
    taps.push_back(axis_taps(out_size[i], x.size(1 + i), w.size(i), A[i], B[i], off[i], D[i]));
  }
  auto out = torch::empty({N, out_size[0], out_size[1], out_size[2], C},
                          x.options().dtype(torch::kFloat));
  const float* wt = w.data_ptr<float>();
  float* o = out.data_ptr<float>();
  if (x.scalar_type() == torch::kFloat) {
    gather_all<float>(x.data_ptr<float>(), wt, o, N, x.size(1), x.size(2), x.size(3), C,
                      out_size[0], out_size[1], out_size[2], w.size(1), w.size(2), taps[0],
                      taps[1], taps[2]);
  } else {
    TORCH_CHECK(x.scalar_type() == torch::kBFloat16, "expected float32 or bfloat16");
    gather_all<uint16_t>(reinterpret_cast<const uint16_t*>(x.data_ptr()), wt, o, N, x.size(1),
                         x.size(2), x.size(3), C, out_size[0], out_size[1], out_size[2],
                         w.size(1), w.size(2), taps[0], taps[1], taps[2]);
  }
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("gather", &gather, "depthwise conv3d in gather form (NDHWC, CPU)");
  m.def("grad_weight", &grad_weight, "depthwise conv3d weight gradient (NDHWC, CPU)");
}
