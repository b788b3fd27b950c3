// fastpggan._C: operator schemas (namespace fastpggan_ext) and their CPU kernels.
//
//   bias_act(x, bias?, gain, slope)            y = lrelu(x * gain + bias[c])
//   bias_act_grad(dy, y, gain, slope)          dx = where(y > 0, 1, slope) * dy * gain  (also its own 2nd order)
//   bias_act_pn(x, bias?, gain, slope)         (y, r): y = a * r, a = lrelu(x * gain + bias[c]), r = rsqrt(mean_c a^2 + 1e-8)
//   bias_act_pn_grad(dy, y, r, gain, slope)    dx = gain * mask(y) * r * (dy - y * mean_c(dy * y))
//   minibatch_stddev(x, G) / _grad(dout, x, G) the paper's minibatch-stddev layer and its backward
//   gradient_penalty(g, t)                     (gp, r): r = ||g_n||, gp = (r - t)^2
//   gradient_penalty_grad(dgp, g, r, t)        dg = dgp * 2 (r - t) / r * g   (0 where r = 0)
//   gp_interpolate(real, fake, u)              real + u[n] * (fake - real)
//   fade_in(low, high, a, a_t?) / _grad(dy, low_size, a, a_t?)   (1 - a) * up2x(low) + a * high and its adjoint
//
// fp16/bf16 are computed in fp32, fp64 in fp64. Inner loops are plain, unit-stride and branch-free so the
// compiler vectorizes them (see the flags in fastpggan/_build.py); at::parallel_for splits the outer loop.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "common.h"

namespace fastpggan {
namespace {

template <typename acc_t>
inline acc_t lrelu(acc_t v, acc_t slope) {
  return v > acc_t(0) ? v : v * slope;
}

int64_t grain_for(int64_t inner) { return std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(inner, 1)); }

// y[i] = lrelu(x[i] * gain + b[i * b_step]) over one unit-stride row (b_step 0: one bias for the row).
template <typename scalar_t, typename acc_t>
inline void act_row(const scalar_t* __restrict__ x, const acc_t* __restrict__ b, int64_t b_step,
                    scalar_t* __restrict__ y, int64_t n, acc_t gain, acc_t slope) {
  if (b_step == 0) {
    const acc_t bc = b[0];
    for (int64_t i = 0; i < n; ++i) y[i] = scalar_t(lrelu(acc_t(x[i]) * gain + bc, slope));
  } else {
    for (int64_t i = 0; i < n; ++i) y[i] = scalar_t(lrelu(acc_t(x[i]) * gain + b[i], slope));
  }
}

at::Tensor bias_act_cpu(const at::Tensor& x_in, const c10::optional<at::Tensor>& bias, double gain, double slope) {
  check_bias_act(x_in, bias, "bias_act");
  auto x = dense(x_in);
  auto y = fresh(at::empty_like(x));
  auto g = geometry(x);
  if (x.numel() == 0) return y;
  auto b = bias_in_acc(bias, x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bias_act", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    const acc_t* bp = b.const_data_ptr<acc_t>();
    const acc_t ga = acc_t(gain), sl = acc_t(slope);
    if (!g.channels_last) {  // planes of HW values share one bias
      at::parallel_for(0, x.size(0) * g.C, grain_for(g.HW), [&](int64_t begin, int64_t end) {
        for (int64_t nc = begin; nc < end; ++nc) act_row(xp + nc * g.HW, bp + nc % g.C, 0, yp + nc * g.HW, g.HW, ga, sl);
      });
    } else {  // pixels of C values, one bias each
      at::parallel_for(0, g.P, grain_for(g.C), [&](int64_t begin, int64_t end) {
        for (int64_t p = begin; p < end; ++p) act_row(xp + p * g.C, bp, 1, yp + p * g.C, g.C, ga, sl);
      });
    }
  });
  return y;
}

// dx[i] = dy[i] * (y[i] > 0 ? gain : slope * gain): both products are formed so the select vectorizes.
template <typename scalar_t, typename acc_t>
inline void masked_scale_row(const scalar_t* __restrict__ dy, const scalar_t* __restrict__ y,
                             scalar_t* __restrict__ dx, int64_t n, acc_t gain, acc_t neg) {
  for (int64_t i = 0; i < n; ++i) {
    const acc_t d = acc_t(dy[i]), pos = d * gain, negv = d * neg;
    dx[i] = scalar_t(acc_t(y[i]) > acc_t(0) ? pos : negv);
  }
}

at::Tensor bias_act_grad_cpu(const at::Tensor& dy_in, const at::Tensor& y_in, double gain, double slope) {
  const auto in = prepare_bias_act_grad(dy_in, y_in);
  const auto& y = in.y;
  const auto& dy = in.dy;
  auto dx = fresh(at::empty_like(y));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "bias_act_grad", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* dyp = dy.const_data_ptr<scalar_t>();
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    scalar_t* dxp = dx.mutable_data_ptr<scalar_t>();
    const acc_t ga = acc_t(gain), neg = acc_t(slope * gain);
    at::parallel_for(0, y.numel(), at::internal::GRAIN_SIZE, [&](int64_t begin, int64_t end) {
      masked_scale_row(dyp + begin, yp + begin, dxp + begin, end - begin, ga, neg);
    });
  });
  return dx;
}

// One channels_last pixel: sum of lrelu(x * gain + b)^2 over its C values; then those values times r.
template <typename scalar_t, typename acc_t>
inline acc_t act_sumsq_row(const scalar_t* __restrict__ x, const acc_t* __restrict__ b, int64_t n, acc_t gain,
                           acc_t slope) {
  acc_t ss = 0;
#pragma omp simd reduction(+ : ss)
  for (int64_t c = 0; c < n; ++c) {
    const acc_t a = lrelu(acc_t(x[c]) * gain + b[c], slope);
    ss += a * a;
  }
  return ss;
}

template <typename scalar_t, typename acc_t>
inline void act_scale_row(const scalar_t* __restrict__ x, const acc_t* __restrict__ b, scalar_t* __restrict__ y,
                          int64_t n, acc_t gain, acc_t slope, acc_t r) {
  for (int64_t c = 0; c < n; ++c) y[c] = scalar_t(lrelu(acc_t(x[c]) * gain + b[c], slope) * r);
}

template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
inline acc_t dot_row(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b, int64_t n) {
  acc_t s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += acc_t(a[i]) * acc_t(b[i]);
  return s;
}

// dx = gain * mask(y) * r * (dy - y * dot) over one channels_last pixel.
template <typename scalar_t, typename acc_t>
inline void pn_grad_row(const scalar_t* __restrict__ dy, const scalar_t* __restrict__ y, scalar_t* __restrict__ dx,
                        int64_t n, acc_t r, acc_t dot, acc_t gain, acc_t neg) {
  for (int64_t c = 0; c < n; ++c) {
    const acc_t yv = acc_t(y[c]), t = r * (acc_t(dy[c]) - yv * dot), pos = t * gain, negv = t * neg;
    dx[c] = scalar_t(yv > acc_t(0) ? pos : negv);
  }
}

// Pixel norm reduces over C per pixel. NCHW: a block of kPixBlock pixels is walked channel by channel, so every
// inner loop is unit-stride; channels_last: one pixel's C values are contiguous.
constexpr int64_t kPixBlock = 256;

std::tuple<at::Tensor, at::Tensor> bias_act_pn_cpu(const at::Tensor& x_in, const c10::optional<at::Tensor>& bias,
                                                   double gain, double slope) {
  check_bias_act(x_in, bias, "bias_act_pn");
  auto x = dense(x_in);
  auto y = fresh(at::empty_like(x));
  auto g = geometry(x);
  auto r = fresh(at::empty({g.P}, x.options().dtype(acc_type(x))));
  if (x.numel() == 0) return {y, r};
  auto b = bias_in_acc(bias, x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bias_act_pn", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    acc_t* rp = r.mutable_data_ptr<acc_t>();
    const acc_t* bp = b.const_data_ptr<acc_t>();
    const acc_t ga = acc_t(gain), sl = acc_t(slope), invC = acc_t(1) / acc_t(g.C), eps = acc_t(kPixelNormEps);
    if (!g.channels_last) {
      const int64_t blocks_per_n = (g.HW + kPixBlock - 1) / kPixBlock;
      at::parallel_for(0, x.size(0) * blocks_per_n, 1, [&](int64_t begin, int64_t end) {
        acc_t ss[kPixBlock];
        for (int64_t blk = begin; blk < end; ++blk) {
          const int64_t n = blk / blocks_per_n, h0 = (blk % blocks_per_n) * kPixBlock;
          const int64_t len = std::min(kPixBlock, g.HW - h0);
          const scalar_t* xn = xp + n * g.C * g.HW + h0;
          scalar_t* yn = yp + n * g.C * g.HW + h0;
          for (int64_t i = 0; i < len; ++i) ss[i] = acc_t(0);
          for (int64_t c = 0; c < g.C; ++c) {
            const acc_t bc = bp[c];
            const scalar_t* xi = xn + c * g.HW;
            for (int64_t i = 0; i < len; ++i) {
              const acc_t a = lrelu(acc_t(xi[i]) * ga + bc, sl);
              ss[i] += a * a;
            }
          }
          for (int64_t i = 0; i < len; ++i) {
            ss[i] = acc_t(1) / std::sqrt(ss[i] * invC + eps);
            rp[n * g.HW + h0 + i] = ss[i];
          }
          for (int64_t c = 0; c < g.C; ++c) {  // re-reads this block of x, which is still in cache
            const acc_t bc = bp[c];
            const scalar_t* xi = xn + c * g.HW;
            scalar_t* yi = yn + c * g.HW;
            for (int64_t i = 0; i < len; ++i) yi[i] = scalar_t(lrelu(acc_t(xi[i]) * ga + bc, sl) * ss[i]);
          }
        }
      });
    } else {
      at::parallel_for(0, g.P, grain_for(g.C), [&](int64_t begin, int64_t end) {
        for (int64_t p = begin; p < end; ++p) {
          const acc_t rr = acc_t(1) / std::sqrt(act_sumsq_row(xp + p * g.C, bp, g.C, ga, sl) * invC + eps);
          rp[p] = rr;
          act_scale_row(xp + p * g.C, bp, yp + p * g.C, g.C, ga, sl, rr);
        }
      });
    }
  });
  return {y, r};
}

at::Tensor bias_act_pn_grad_cpu(const at::Tensor& dy_in, const at::Tensor& y_in, const at::Tensor& r_in, double gain,
                                double slope) {
  const auto in = prepare_bias_act_pn_grad(dy_in, y_in, r_in);
  const auto& y = in.y;
  const auto& dy = in.dy;
  const auto& r = in.r;
  const auto& g = in.g;
  auto dx = fresh(at::empty_like(y));
  if (y.numel() == 0) return dx;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "bias_act_pn_grad", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* dyp = dy.const_data_ptr<scalar_t>();
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    const acc_t* rp = r.const_data_ptr<acc_t>();
    scalar_t* dxp = dx.mutable_data_ptr<scalar_t>();
    const acc_t ga = acc_t(gain), neg = acc_t(slope * gain), invC = acc_t(1) / acc_t(g.C);
    if (!g.channels_last) {
      const int64_t blocks_per_n = (g.HW + kPixBlock - 1) / kPixBlock;
      at::parallel_for(0, y.size(0) * blocks_per_n, 1, [&](int64_t begin, int64_t end) {
        acc_t dot[kPixBlock];
        for (int64_t blk = begin; blk < end; ++blk) {
          const int64_t n = blk / blocks_per_n, h0 = (blk % blocks_per_n) * kPixBlock;
          const int64_t len = std::min(kPixBlock, g.HW - h0), base = n * g.C * g.HW + h0;
          for (int64_t i = 0; i < len; ++i) dot[i] = acc_t(0);
          for (int64_t c = 0; c < g.C; ++c) {
            const scalar_t* dyi = dyp + base + c * g.HW;
            const scalar_t* yi = yp + base + c * g.HW;
            for (int64_t i = 0; i < len; ++i) dot[i] += acc_t(dyi[i]) * acc_t(yi[i]);
          }
          for (int64_t i = 0; i < len; ++i) dot[i] *= invC;
          const acc_t* rn = rp + n * g.HW + h0;
          for (int64_t c = 0; c < g.C; ++c) {
            const scalar_t* dyi = dyp + base + c * g.HW;
            const scalar_t* yi = yp + base + c * g.HW;
            scalar_t* dxi = dxp + base + c * g.HW;
            for (int64_t i = 0; i < len; ++i) {
              const acc_t yv = acc_t(yi[i]), t = rn[i] * (acc_t(dyi[i]) - yv * dot[i]), pos = t * ga, negv = t * neg;
              dxi[i] = scalar_t(yv > acc_t(0) ? pos : negv);
            }
          }
        }
      });
    } else {
      at::parallel_for(0, g.P, grain_for(g.C), [&](int64_t begin, int64_t end) {
        for (int64_t p = begin; p < end; ++p) {
          const acc_t dot = dot_row(dyp + p * g.C, yp + p * g.C, g.C) * invC;
          pn_grad_row(dyp + p * g.C, yp + p * g.C, dxp + p * g.C, g.C, rp[p], dot, ga, neg);
        }
      });
    }
  });
  return dx;
}

// Minibatch stddev. Sample n = g * M + m is member g of group m; each sample's F = C*H*W values are dense in
// memory (either layout), and the statistic is a mean over all of them, so they are visited in memory order.
template <typename scalar_t, typename acc_t>
void group_moments(const scalar_t* xp, int64_t m, int64_t M, int64_t G, int64_t F, acc_t* mean, acc_t* sd) {
  for (int64_t f = 0; f < F; ++f) mean[f] = acc_t(0);
  for (int64_t g = 0; g < G; ++g) {
    const scalar_t* xg = xp + (g * M + m) * F;
    for (int64_t f = 0; f < F; ++f) mean[f] += acc_t(xg[f]);
  }
  for (int64_t f = 0; f < F; ++f) {
    mean[f] /= acc_t(G);
    sd[f] = acc_t(0);
  }
  for (int64_t g = 0; g < G; ++g) {
    const scalar_t* xg = xp + (g * M + m) * F;
    for (int64_t f = 0; f < F; ++f) {
      const acc_t d = acc_t(xg[f]) - mean[f];
      sd[f] += d * d;
    }
  }
  for (int64_t f = 0; f < F; ++f) sd[f] = std::sqrt(sd[f] / acc_t(G) + acc_t(kStddevEps));
}

at::Tensor minibatch_stddev_cpu(const at::Tensor& x_in, int64_t group_size) {
  check_mbstd(x_in, group_size, "minibatch_stddev");
  auto x = dense(x_in);
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3), F = C * HW, M = N / group_size;
  auto out = fresh(empty_in_layout_of(x, {N, C + 1, x.size(2), x.size(3)}, x.scalar_type()));
  if (out.numel() == 0) return out;
  const bool cl = is_channels_last(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "minibatch_stddev", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    std::vector<acc_t> s(M);
    at::parallel_for(0, M, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> mean(F), sd(F);
      for (int64_t m = begin; m < end; ++m) {
        group_moments(xp, m, M, group_size, F, mean.data(), sd.data());
        acc_t total = 0;
          _Pragma("omp simd reduction(+ : total)")
        for (int64_t f = 0; f < F; ++f) total += sd[f];
        s[m] = F ? total / acc_t(F) : std::sqrt(acc_t(kStddevEps));
      }
    });
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        const scalar_t sv = scalar_t(s[n % M]);
        const scalar_t* xn = xp + n * F;
        scalar_t* on = op + n * (F + HW);
        if (!cl) {
          std::copy(xn, xn + F, on);
          std::fill(on + F, on + F + HW, sv);
        } else {
          for (int64_t p = 0; p < HW; ++p) {
            std::copy(xn + p * C, xn + (p + 1) * C, on + p * (C + 1));
            on[p * (C + 1) + C] = sv;
          }
        }
      }
    });
  });
  return out;
}

at::Tensor minibatch_stddev_grad_cpu(const at::Tensor& dout_in, const at::Tensor& x_in, int64_t group_size) {
  const auto in = prepare_minibatch_stddev_grad(dout_in, x_in, group_size);
  const auto& x = in.x;
  const auto& dout = in.dout;
  const auto N = in.N;
  const auto C = in.C;
  const auto HW = in.HW;
  const auto M = in.M;
  const int64_t F = C * HW;
  auto dx = fresh(at::empty_like(x));
  if (x.numel() == 0) return dx;
  const bool cl = is_channels_last(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "minibatch_stddev_grad", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* dp = dout.const_data_ptr<scalar_t>();
    scalar_t* dxp = dx.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, M, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> mean(F), sd(F);
      for (int64_t m = begin; m < end; ++m) {
        acc_t ds = 0;  // gradient of s[m]: the extra map of dout summed over the group
        for (int64_t g = 0; g < group_size; ++g) {
          const scalar_t* dn = dp + (g * M + m) * (F + HW);
          for (int64_t p = 0; p < HW; ++p) ds += acc_t(cl ? dn[p * (C + 1) + C] : dn[F + p]);
        }
        const acc_t coef = ds / acc_t(F * group_size);
        group_moments(xp, m, M, group_size, F, mean.data(), sd.data());
        for (int64_t g = 0; g < group_size; ++g) {
          const int64_t n = g * M + m;
          const scalar_t* xn = xp + n * F;
          const scalar_t* dn = dp + n * (F + HW);
          scalar_t* dxn = dxp + n * F;
          if (!cl) {
            for (int64_t f = 0; f < F; ++f) dxn[f] = scalar_t(acc_t(dn[f]) + coef * (acc_t(xn[f]) - mean[f]) / sd[f]);
          } else {
            for (int64_t p = 0; p < HW; ++p)
              for (int64_t c = 0; c < C; ++c) {
                const int64_t f = p * C + c;
                dxn[f] = scalar_t(acc_t(dn[p * (C + 1) + c]) + coef * (acc_t(xn[f]) - mean[f]) / sd[f]);
              }
          }
        }
      }
    });
  });
  return dx;
}

// Gradient penalty: per sample, sums of squares over chunks of kSumChunk values are vectorized in the
// accumulation dtype and added up in double (a sample has up to 3M values).
constexpr int64_t kSumChunk = 4096;

template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
inline acc_t sumsq_row(const scalar_t* __restrict__ x, int64_t n) {
  acc_t s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += acc_t(x[i]) * acc_t(x[i]);
  return s;
}

// out = real + u * (fake - real) over one sample's (part of a) row.
template <typename scalar_t, typename acc_t>
inline void lerp_row(const scalar_t* __restrict__ real, const scalar_t* __restrict__ fake, scalar_t* __restrict__ out,
                     int64_t n, acc_t u) {
  for (int64_t i = 0; i < n; ++i) {
    const acc_t a = acc_t(real[i]);
    out[i] = scalar_t(a + u * (acc_t(fake[i]) - a));
  }
}
std::tuple<at::Tensor, at::Tensor> gradient_penalty_cpu(const at::Tensor& g_in, double target) {
  check_gp(g_in, "gradient_penalty");
  auto g = dense(g_in);
  const int64_t N = g.size(0), D = N ? g.numel() / N : 0;
  auto gp = fresh(at::empty({N}, g.options().dtype(acc_type(g))));
  auto r = fresh(at::empty({N}, g.options().dtype(acc_type(g))));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "gradient_penalty", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* gptr = g.const_data_ptr<scalar_t>();
    acc_t* gpp = gp.mutable_data_ptr<acc_t>();
    acc_t* rp = r.mutable_data_ptr<acc_t>();
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        const scalar_t* gn = gptr + n * D;
        double ss = 0;  // vector sums over chunks, added up in double
        for (int64_t i0 = 0; i0 < D; i0 += kSumChunk) ss += double(sumsq_row(gn + i0, std::min(kSumChunk, D - i0)));
        const acc_t norm = acc_t(std::sqrt(ss));
        rp[n] = norm;
        gpp[n] = (norm - acc_t(target)) * (norm - acc_t(target));
      }
    });
  });
  return {gp, r};
}

at::Tensor gradient_penalty_grad_cpu(const at::Tensor& dgp_in, const at::Tensor& g_in, const at::Tensor& r_in,
                                     double target) {
  const auto in = prepare_gradient_penalty_grad(dgp_in, g_in, r_in);
  const auto& g = in.g;
  const auto& dgp = in.dgp;
  const auto& r = in.r;
  const auto N = in.N;
  const auto D = in.D;
  auto dg = fresh(at::empty_like(g));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "gradient_penalty_grad", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* gptr = g.const_data_ptr<scalar_t>();
    const acc_t* dgpp = dgp.const_data_ptr<acc_t>();
    const acc_t* rp = r.const_data_ptr<acc_t>();
    scalar_t* dgptr = dg.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        const acc_t coef = rp[n] > acc_t(0) ? dgpp[n] * acc_t(2) * (rp[n] - acc_t(target)) / rp[n] : acc_t(0);
        const scalar_t* gn = gptr + n * D;
        scalar_t* dn = dgptr + n * D;
        for (int64_t i = 0; i < D; ++i) dn[i] = scalar_t(coef * acc_t(gn[i]));
      }
    });
  });
  return dg;
}

at::Tensor gp_interpolate_cpu(const at::Tensor& real_in, const at::Tensor& fake_in, const at::Tensor& u_in) {
  const auto in = prepare_gp_interpolate(real_in, fake_in, u_in);
  const auto& real = in.real;
  const auto& fake = in.fake;
  const auto& u = in.u;
  const auto N = in.N;
  const auto D = in.D;
  auto out = fresh(at::empty_like(real));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, real.scalar_type(), "gp_interpolate", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* rp = real.const_data_ptr<scalar_t>();
    const scalar_t* fp = fake.const_data_ptr<scalar_t>();
    const acc_t* up = u.const_data_ptr<acc_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, N * D, at::internal::GRAIN_SIZE, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end;) {  // split [begin, end) at sample boundaries
        const int64_t n = i / D, stop = std::min(end, (n + 1) * D);
        lerp_row(rp + i, fp + i, op + i, stop - i, up[n]);
        i = stop;
      }
    });
  });
  return out;
}


// Fade-in: y = (1 - a) * up2x(low) + a * high, low at high's size or half of it; backward over low's elements.
inline double fade_alpha(double alpha, const c10::optional<at::Tensor>& alpha_t) {
  return alpha_t.has_value() ? alpha_t->item<double>() : alpha;
}

at::Tensor fade_in_cpu(const at::Tensor& low_in, const at::Tensor& high_in, double alpha,
                       const c10::optional<at::Tensor>& alpha_t) {
  const auto in = prepare_fade_in(low_in, high_in);
  const auto& low = in.low;
  const auto& high = in.high;
  auto y = fresh(at::empty_like(high));
  if (high.numel() == 0) return y;
  const bool up = low.size(3) != high.size(3), cl = is_channels_last(high);
  const int64_t N = high.size(0), C = high.size(1), H = high.size(2), W = high.size(3);
  const double a = fade_alpha(alpha, alpha_t);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, high.scalar_type(), "fade_in", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* lp = low.const_data_ptr<scalar_t>();
    const scalar_t* hp = high.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    const acc_t wa = acc_t(a), wl = acc_t(1) - acc_t(a);
    // a row = W values (NCHW) or C values (channels_last) whose low source is one row / one pixel
    const int64_t rows = cl ? N * H * W : N * C * H, len = cl ? C : W;
    at::parallel_for(0, rows, grain_for(len), [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const scalar_t* hi = hp + row * len;
        scalar_t* yi = yp + row * len;
        if (!up) {
          const scalar_t* li = lp + row * len;
          for (int64_t i = 0; i < len; ++i) yi[i] = scalar_t(wl * acc_t(li[i]) + wa * acc_t(hi[i]));
        } else if (!cl) {  // row = (n*C + c) * H + h
          const scalar_t* li = lp + ((row / H) * (H / 2) + (row % H) / 2) * (W / 2);
          for (int64_t i = 0; i < len; ++i) yi[i] = scalar_t(wl * acc_t(li[i / 2]) + wa * acc_t(hi[i]));
        } else {  // row = (n*H + h) * W + w
          const int64_t w = row % W, h = (row / W) % H, n = row / (W * H);
          const scalar_t* li = lp + ((n * (H / 2) + h / 2) * (W / 2) + w / 2) * C;
          for (int64_t i = 0; i < len; ++i) yi[i] = scalar_t(wl * acc_t(li[i]) + wa * acc_t(hi[i]));
        }
      }
    });
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor> fade_in_grad_cpu(const at::Tensor& dy_in, at::IntArrayRef low_size, double alpha,
                                                    const c10::optional<at::Tensor>& alpha_t) {
  check_float(dy_in, "fade_in_grad", "dy");
  TORCH_CHECK(dy_in.dim() == 4 && low_size.size() == 4, "fastpggan_ext::fade_in_grad: dy must be NCHW and low_size 4-d");
  auto dy = dense(dy_in);
  auto dhigh = fresh(at::empty_like(dy));
  auto dlow = fresh(empty_in_layout_of(dy, low_size, dy.scalar_type()));
  if (dy.numel() == 0) return {dlow, dhigh};
  const bool up = low_size[3] != dy.size(3), cl = is_channels_last(dy);
  const int64_t N = dy.size(0), C = dy.size(1), H = dy.size(2), W = dy.size(3);
  const double a = fade_alpha(alpha, alpha_t);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dy.scalar_type(), "fade_in_grad", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* dp = dy.const_data_ptr<scalar_t>();
    scalar_t* dhp = dhigh.mutable_data_ptr<scalar_t>();
    scalar_t* dlp = dlow.mutable_data_ptr<scalar_t>();
    const acc_t wa = acc_t(a), wl = acc_t(1) - acc_t(a);
    if (!up) {
      at::parallel_for(0, dy.numel(), at::internal::GRAIN_SIZE, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          dhp[i] = scalar_t(wa * acc_t(dp[i]));
          dlp[i] = scalar_t(wl * acc_t(dp[i]));
        }
      });
      return;
    }
    const int64_t Hl = H / 2, Wl = W / 2;
    // one low row: Wl values (NCHW) or one low pixel's C values (channels_last), from a 2x2 block of dy rows
    const int64_t rows = cl ? N * Hl * Wl : N * C * Hl, len = cl ? C : Wl;
    at::parallel_for(0, rows, grain_for(len * 4), [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        int64_t top, step_w;  // offset of the block's top-left element, and of its right neighbour
        if (!cl) {
          top = ((row / Hl) * H + 2 * (row % Hl)) * W;
          step_w = 1;
        } else {
          const int64_t wl_ = row % Wl, hl = (row / Wl) % Hl, n = row / (Wl * Hl);
          top = ((n * H + 2 * hl) * W + 2 * wl_) * C;
          step_w = C;
        }
        for (int64_t i = 0; i < len; ++i) {
          const int64_t o = top + (cl ? i : 2 * i);
          const acc_t d00 = acc_t(dp[o]), d01 = acc_t(dp[o + step_w]), d10 = acc_t(dp[o + W * step_w]),
                      d11 = acc_t(dp[o + W * step_w + step_w]);
          dhp[o] = scalar_t(wa * d00);
          dhp[o + step_w] = scalar_t(wa * d01);
          dhp[o + W * step_w] = scalar_t(wa * d10);
          dhp[o + W * step_w + step_w] = scalar_t(wa * d11);
          dlp[row * len + i] = scalar_t(wl * ((d00 + d01) + (d10 + d11)));
        }
      }
    });
  });
  return {dlow, dhigh};
}

}  // namespace
}  // namespace fastpggan

void set_poison(bool on) { fastpggan::poison_outputs() = on; }

TORCH_LIBRARY(fastpggan_ext, m) {
  m.def("set_poison(bool on) -> ()", &set_poison);
  m.def("fade_in(Tensor low, Tensor high, float alpha, Tensor? alpha_t) -> Tensor");
  m.def("fade_in_grad(Tensor dy, int[] low_size, float alpha, Tensor? alpha_t) -> (Tensor, Tensor)");
  m.def("bias_act(Tensor x, Tensor? bias, float gain, float slope) -> Tensor");
  m.def("bias_act_grad(Tensor dy, Tensor y, float gain, float slope) -> Tensor");
  m.def("bias_act_pn(Tensor x, Tensor? bias, float gain, float slope) -> (Tensor, Tensor)");
  m.def("bias_act_pn_grad(Tensor dy, Tensor y, Tensor r, float gain, float slope) -> Tensor");
  m.def("minibatch_stddev(Tensor x, int group_size) -> Tensor");
  m.def("minibatch_stddev_grad(Tensor dout, Tensor x, int group_size) -> Tensor");
  m.def("gradient_penalty(Tensor grads, float target) -> (Tensor, Tensor)");
  m.def("gradient_penalty_grad(Tensor dgp, Tensor grads, Tensor r, float target) -> Tensor");
  m.def("gp_interpolate(Tensor real, Tensor fake, Tensor u) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastpggan_ext, CPU, m) {
  m.impl("fade_in", &fastpggan::fade_in_cpu);
  m.impl("fade_in_grad", &fastpggan::fade_in_grad_cpu);
  m.impl("bias_act", &fastpggan::bias_act_cpu);
  m.impl("bias_act_grad", &fastpggan::bias_act_grad_cpu);
  m.impl("bias_act_pn", &fastpggan::bias_act_pn_cpu);
  m.impl("bias_act_pn_grad", &fastpggan::bias_act_pn_grad_cpu);
  m.impl("minibatch_stddev", &fastpggan::minibatch_stddev_cpu);
  m.impl("minibatch_stddev_grad", &fastpggan::minibatch_stddev_grad_cpu);
  m.impl("gradient_penalty", &fastpggan::gradient_penalty_cpu);
  m.impl("gradient_penalty_grad", &fastpggan::gradient_penalty_grad_cpu);
  m.impl("gp_interpolate", &fastpggan::gp_interpolate_cpu);
}
