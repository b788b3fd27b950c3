// fastpggan._C CUDA kernels for the schemas declared in ops_cpu.cpp (same formulas; see there).
// Every launch goes on the current stream, so the ops can be captured in CUDA graphs. fp16/bf16 compute in fp32.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common.h"
#include "tail.h"

namespace fastpggan {
namespace {

constexpr int kThreads = 256;

inline int blocks_for(int64_t n, int threads = kThreads) {
  return static_cast<int>(std::min<int64_t>((n + threads - 1) / threads, int64_t(1) << 20));
}

template <typename acc_t>
__device__ __forceinline__ acc_t lrelu(acc_t v, acc_t slope) {
  return v > acc_t(0) ? v : v * slope;
}

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum over a block of kThreads threads; every thread gets the result.
template <typename acc_t>
__device__ acc_t block_sum(acc_t v) {
  __shared__ acc_t partial[kThreads / 32];
  v = warp_sum(v);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  __syncthreads();
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  acc_t total = 0;
  for (int w = 0; w < kThreads / 32; ++w) total += partial[w];
  return total;
}

// ---- vectorized elementwise machinery ------------------------------------------------------------------------
// Elements per 16-byte access: 4 fp32, 8 fp16/bf16, 2 fp64. A kernel instantiated with V = kVec<T> moves 16 bytes
// per load and store instruction (LDG.E.128 / STG.E.128); V = 1 is the scalar form for misaligned or odd-sized
// tensors. Offsets inside a row or chunk are 32-bit; a row's or chunk's start is one 64-bit multiply. No kernel
// divides a 64-bit index (tests/test_cuda_static.py reads that from the compiled code).
template <typename T>
constexpr int kVec = 16 / int(sizeof(T));
constexpr int kItems = 4;  // vectors per thread per grid-stride step of the flat kernels

template <typename T, int V>
__device__ __forceinline__ void load_vec(const T* p, T (&out)[V]) {
  if constexpr (V * sizeof(T) == 16) {
    const uint4 raw = *reinterpret_cast<const uint4*>(p);
    memcpy(out, &raw, 16);
  } else {
#pragma unroll
    for (int k = 0; k < V; ++k) out[k] = p[k];
  }
}

template <typename T, int V>
__device__ __forceinline__ void store_vec(T* p, const T (&in)[V]) {
  if constexpr (V * sizeof(T) == 16) {
    uint4 raw;
    memcpy(&raw, in, 16);
    *reinterpret_cast<uint4*>(p) = raw;
  } else {
#pragma unroll
    for (int k = 0; k < V; ++k) p[k] = in[k];
  }
}

// A whole vector (count == V) in one 16-byte access, or the tensor's last count < V elements lane by lane.
template <typename T, int V>
__device__ __forceinline__ void load_part(const T* p, int count, T (&out)[V]) {
  if (count == V)
    load_vec<T, V>(p, out);
  else
    load_tail<T, V>(p, count, out);
}

template <typename T, int V>
__device__ __forceinline__ void store_part(T* p, int count, const T (&in)[V]) {
  if (count == V)
    store_vec<T, V>(p, in);
  else
    store_tail<T, V>(p, count, in);
}

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

inline int pow2_at_least(int64_t n, int cap) {
  int p = 1;
  while (p < n && p < cap) p *= 2;
  return p;
}

// A rows x cols row-major problem: blockDim (tx, ty) with tx threads along a row (vectors of V) and ty rows per
// block; grid x over rows (up to 2^31 - 1 blocks), grid y over a row's chunks (<= 65535).
struct Grid2D {
  dim3 grid, block;
};

inline Grid2D grid_2d(int64_t rows, int64_t cols, int V) {
  TORCH_CHECK(rows < (int64_t(1) << 31) && cols < (int64_t(1) << 30), "fastpggan_ext: tensor too large (", rows,
              " x ", cols, ")");
  const int64_t vecs = (cols + V - 1) / V;
  const int tx = pow2_at_least(vecs, kThreads), ty = kThreads / tx;
  const int64_t gx = (rows + ty - 1) / ty, gy = std::min<int64_t>((vecs + int64_t(tx) * kItems - 1) / (int64_t(tx) * kItems), 65535);
  return {dim3(static_cast<unsigned>(gx), static_cast<unsigned>(std::max<int64_t>(gy, 1))), dim3(tx, ty)};
}

// A flat problem of n elements in chunks of kThreads * V * kItems: grid x over chunks.
inline int flat_blocks(int64_t n, int V) {
  const int64_t chunk = int64_t(kThreads) * V * kItems;
  return static_cast<int>(std::min<int64_t>((n + chunk - 1) / chunk, (int64_t(1) << 31) - 1));
}

// Calls f(offset, count) for this thread's vectors of a flat problem: count == V for a whole vector, fewer for
// the scalar tail at the end of the tensor. 64-bit chunk start, 32-bit offsets within it.
template <int V, typename F>
__device__ __forceinline__ void for_each_flat_vector(int64_t n, F f) {
  const int64_t chunk = int64_t(kThreads) * V * kItems;
  // Not unrolled: to unroll a loop with a 64-bit counter the compiler counts its trips with a 64-bit division
  // (__cuda_sm20_div_u64 in the V = 1 kernels at sm_100 and sm_120).
#pragma unroll 1
  for (int64_t start = blockIdx.x * chunk; start < n; start += int64_t(gridDim.x) * chunk) {
    const int64_t left = n - start;
#pragma unroll
    for (int it = 0; it < kItems; ++it) {
      const int off = (it * kThreads + int(threadIdx.x)) * V;
      if (off < left) f(start + off, left - off >= V ? V : int(left - off));
    }
  }
}

template <typename T>
inline bool vectorizable(int64_t cols, std::initializer_list<const void*> ptrs) {
  if (cols % kVec<T> != 0) return false;
  for (auto p : ptrs)
    if (!aligned16(p)) return false;
  return true;
}

// ---- bias_act -------------------------------------------------------------------------------------------------

// bias_act without pixel norm as rows x cols: NCHW rows are (n, c) planes of H*W pixels, the bias one per row
// (PER_ROW); channels_last rows are pixels of C channels, the bias one per column. b may be null (no bias).
template <typename scalar_t, typename acc_t, int V, bool PER_ROW>
__global__ void bias_act_kernel(const scalar_t* __restrict__ x, const acc_t* __restrict__ b, scalar_t* __restrict__ y,
                                int rows, int cols, int C, acc_t gain, acc_t slope) {
  const int row = blockIdx.x * blockDim.y + threadIdx.y;
  if (row >= rows) return;
  const int64_t base = int64_t(row) * cols;
  const acc_t row_bias = (PER_ROW && b) ? b[row % C] : acc_t(0);
  for (int j = (blockIdx.y * blockDim.x + threadIdx.x) * V; j < cols; j += gridDim.y * blockDim.x * V) {
    scalar_t in[V], out[V];
    load_vec<scalar_t, V>(x + base + j, in);
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const acc_t bias = PER_ROW ? row_bias : (b ? b[j + k] : acc_t(0));
      out[k] = scalar_t(lrelu(acc_t(in[k]) * gain + bias, slope));
    }
    store_vec<scalar_t, V>(y + base + j, out);
  }
}

// dx = dy * (y > 0 ? gain : slope * gain), flat.
template <typename scalar_t, typename acc_t, int V>
__global__ void bias_act_grad_kernel(const scalar_t* __restrict__ dy, const scalar_t* __restrict__ y,
                                     scalar_t* __restrict__ dx, int64_t numel, acc_t gain, acc_t neg) {
  for_each_flat_vector<V>(numel, [&](int64_t i, int count) {
    scalar_t d[V], v[V], out[V];
    load_part<scalar_t, V>(dy + i, count, d);
    load_part<scalar_t, V>(y + i, count, v);
#pragma unroll
    for (int k = 0; k < V; ++k) out[k] = scalar_t(acc_t(d[k]) * (acc_t(v[k]) > acc_t(0) ? gain : neg));
    store_part<scalar_t, V>(dx + i, count, out);
  });
}

// Pixel norm, NCHW (H*W > 1): a block is a tile of TP pixels of one sample (threadIdx.x, coalesced along the
// plane) by TC channel lanes (threadIdx.y, each taking every TC-th channel), TP * TC = 256. The per-pixel sums
// are reduced over the channel lanes in shared memory in a fixed order, so the 4x4-16x16 stages run 256 threads
// per 32 pixels, not one. Two passes over the channels: the sum, then the output (the re-read hits L2).
template <typename acc_t>
__device__ __forceinline__ acc_t tile_channel_sum(acc_t v, acc_t* red) {
  const int tx = threadIdx.x, ty = threadIdx.y, tp = blockDim.x;
  red[ty * tp + tx] = v;
  __syncthreads();
  for (int s = blockDim.y / 2; s > 0; s >>= 1) {
    if (ty < s) red[ty * tp + tx] += red[(ty + s) * tp + tx];
    __syncthreads();
  }
  const acc_t total = red[tx];
  __syncthreads();   // red is reused by the next call
  return total;
}

template <typename scalar_t, typename acc_t>
__global__ void pn_fwd_nchw_kernel(const scalar_t* __restrict__ x, const acc_t* __restrict__ b,
                                   scalar_t* __restrict__ y, acc_t* __restrict__ r, int HW, int C, int tiles,
                                   acc_t gain, acc_t slope) {
  __shared__ acc_t red[kThreads];
  const int n = blockIdx.x / tiles, hw = (blockIdx.x - n * tiles) * blockDim.x + threadIdx.x;
  const bool valid = hw < HW;
  const int64_t base = int64_t(n) * C * HW + hw;
  acc_t ss = 0;
  if (valid)
    for (int c = threadIdx.y; c < C; c += blockDim.y) {
      const acc_t a = lrelu(acc_t(x[base + int64_t(c) * HW]) * gain + (b ? b[c] : acc_t(0)), slope);
      ss += a * a;
    }
  const acc_t rr = rsqrt(tile_channel_sum(ss, red) / acc_t(C) + acc_t(kPixelNormEps));
  if (!valid) return;
  if (threadIdx.y == 0) r[int64_t(n) * HW + hw] = rr;
  for (int c = threadIdx.y; c < C; c += blockDim.y) {
    const int64_t i = base + int64_t(c) * HW;
    y[i] = scalar_t(lrelu(acc_t(x[i]) * gain + (b ? b[c] : acc_t(0)), slope) * rr);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void pn_bwd_nchw_kernel(const scalar_t* __restrict__ dy, const scalar_t* __restrict__ y,
                                   const acc_t* __restrict__ r, scalar_t* __restrict__ dx, int HW, int C, int tiles,
                                   acc_t gain, acc_t neg) {
  __shared__ acc_t red[kThreads];
  const int n = blockIdx.x / tiles, hw = (blockIdx.x - n * tiles) * blockDim.x + threadIdx.x;
  const bool valid = hw < HW;
  const int64_t base = int64_t(n) * C * HW + hw;
  acc_t dot = 0;
  if (valid)
    for (int c = threadIdx.y; c < C; c += blockDim.y) {
      const int64_t i = base + int64_t(c) * HW;
      dot += acc_t(dy[i]) * acc_t(y[i]);
    }
  dot = tile_channel_sum(dot, red) / acc_t(C);
  if (!valid) return;
  const acc_t rr = r[int64_t(n) * HW + hw];
  for (int c = threadIdx.y; c < C; c += blockDim.y) {
    const int64_t i = base + int64_t(c) * HW;
    const acc_t yv = acc_t(y[i]);
    dx[i] = scalar_t(rr * (acc_t(dy[i]) - yv * dot) * (yv > acc_t(0) ? gain : neg));
  }
}

// Pixel norm over contiguous channels (channels_last, or a dense (N, C) layer): rows of C values, L lanes per row
// (threadIdx.x, L = the power of two covering C / V, at most 32), 256 / L rows per block (threadIdx.y), so a warp
// holds 32 / L rows: at C = 16 in bf16 two lanes per pixel, sixteen pixels per warp. Lanes reduce with shuffles
// within their group of L; every lane reaches them (no early return before).
template <typename acc_t>
__device__ __forceinline__ acc_t lane_group_sum(acc_t v) {
  for (int o = blockDim.x / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <typename scalar_t, typename acc_t, int V>
__global__ void pn_fwd_rows_kernel(const scalar_t* __restrict__ x, const acc_t* __restrict__ b,
                                   scalar_t* __restrict__ y, acc_t* __restrict__ r, int rows, int C, acc_t gain,
                                   acc_t slope) {
  const int row = blockIdx.x * blockDim.y + threadIdx.y;
  const bool valid = row < rows;
  const int64_t base = int64_t(valid ? row : 0) * C;
  acc_t ss = 0;
  if (valid)
    for (int j = threadIdx.x * V; j < C; j += blockDim.x * V) {
      scalar_t in[V];
      load_vec<scalar_t, V>(x + base + j, in);
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const acc_t a = lrelu(acc_t(in[k]) * gain + (b ? b[j + k] : acc_t(0)), slope);
        ss += a * a;
      }
    }
  const acc_t rr = rsqrt(lane_group_sum(ss) / acc_t(C) + acc_t(kPixelNormEps));
  if (!valid) return;
  if (threadIdx.x == 0) r[row] = rr;
  for (int j = threadIdx.x * V; j < C; j += blockDim.x * V) {
    scalar_t in[V], out[V];
    load_vec<scalar_t, V>(x + base + j, in);
#pragma unroll
    for (int k = 0; k < V; ++k) out[k] = scalar_t(lrelu(acc_t(in[k]) * gain + (b ? b[j + k] : acc_t(0)), slope) * rr);
    store_vec<scalar_t, V>(y + base + j, out);
  }
}

template <typename scalar_t, typename acc_t, int V>
__global__ void pn_bwd_rows_kernel(const scalar_t* __restrict__ dy, const scalar_t* __restrict__ y,
                                   const acc_t* __restrict__ r, scalar_t* __restrict__ dx, int rows, int C,
                                   acc_t gain, acc_t neg) {
  const int row = blockIdx.x * blockDim.y + threadIdx.y;
  const bool valid = row < rows;
  const int64_t base = int64_t(valid ? row : 0) * C;
  acc_t dot = 0;
  if (valid)
    for (int j = threadIdx.x * V; j < C; j += blockDim.x * V) {
      scalar_t d[V], v[V];
      load_vec<scalar_t, V>(dy + base + j, d);
      load_vec<scalar_t, V>(y + base + j, v);
#pragma unroll
      for (int k = 0; k < V; ++k) dot += acc_t(d[k]) * acc_t(v[k]);
    }
  dot = lane_group_sum(dot) / acc_t(C);
  if (!valid) return;
  const acc_t rr = r[row];
  for (int j = threadIdx.x * V; j < C; j += blockDim.x * V) {
    scalar_t d[V], v[V], out[V];
    load_vec<scalar_t, V>(dy + base + j, d);
    load_vec<scalar_t, V>(y + base + j, v);
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const acc_t yv = acc_t(v[k]);
      out[k] = scalar_t(rr * (acc_t(d[k]) - yv * dot) * (yv > acc_t(0) ? gain : neg));
    }
    store_vec<scalar_t, V>(dx + base + j, out);
  }
}

// Launch shapes of the two pixel-norm forms.
struct PixelNormLaunch {
  bool rows;       // the contiguous-channel form
  dim3 grid, block;
  int tiles;       // NCHW: tiles per sample
};

inline PixelNormLaunch pixel_norm_launch(const Geometry& g, int64_t N, int V) {
  TORCH_CHECK(g.P < (int64_t(1) << 31) && g.C < (int64_t(1) << 30) && g.HW < (int64_t(1) << 30),
              "fastpggan_ext: pixel norm tensor too large");
  if (g.channels_last || g.HW == 1) {
    const int lanes = std::min(32, pow2_at_least((g.C + V - 1) / V, 32));
    const int per_block = kThreads / lanes;
    return {true, dim3(static_cast<unsigned>((g.P + per_block - 1) / per_block)), dim3(lanes, per_block), 0};
  }
  const int tp = std::min(32, pow2_at_least(g.HW, 32));
  const int tiles = static_cast<int>((g.HW + tp - 1) / tp);
  TORCH_CHECK(N * tiles < (int64_t(1) << 31), "fastpggan_ext: pixel norm tensor too large");
  return {false, dim3(static_cast<unsigned>(N * tiles)), dim3(tp, kThreads / tp), tiles};
}

// The bias in the accumulation dtype, or an undefined tensor for none (the kernels take a null pointer).
inline at::Tensor bias_acc(const c10::optional<at::Tensor>& bias, const at::Tensor& x) {
  return bias.has_value() ? bias->to(acc_type(x)).contiguous() : at::Tensor();
}

at::Tensor bias_act_cuda(const at::Tensor& x_in, const c10::optional<at::Tensor>& bias, double gain, double slope) {
  check_bias_act(x_in, bias, "bias_act");
  const c10::cuda::CUDAGuard guard(x_in.device());
  auto x = dense(x_in);
  auto y = fresh(at::empty_like(x));
  auto g = geometry(x);
  if (x.numel() == 0) return y;
  auto b = bias_acc(bias, x);
  const bool per_row = !g.channels_last;
  const int64_t rows = per_row ? x.size(0) * g.C : g.P, cols = per_row ? g.HW : g.C;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bias_act", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    constexpr int V = kVec<scalar_t>;
    const bool vec = vectorizable<scalar_t>(cols, {x.const_data_ptr(), y.const_data_ptr()});
    const auto l = grid_2d(rows, cols, vec ? V : 1);
    const acc_t* bp = b.defined() ? b.const_data_ptr<acc_t>() : nullptr;
    const auto* xp = x.const_data_ptr<scalar_t>();
    auto* yp = y.mutable_data_ptr<scalar_t>();
    const int r = int(rows), c = int(cols), C = int(g.C);
    if (per_row && vec)
      bias_act_kernel<scalar_t, acc_t, V, true><<<l.grid, l.block, 0, stream>>>(xp, bp, yp, r, c, C, acc_t(gain),
                                                                               acc_t(slope));
    else if (per_row)
      bias_act_kernel<scalar_t, acc_t, 1, true><<<l.grid, l.block, 0, stream>>>(xp, bp, yp, r, c, C, acc_t(gain),
                                                                               acc_t(slope));
    else if (vec)
      bias_act_kernel<scalar_t, acc_t, V, false><<<l.grid, l.block, 0, stream>>>(xp, bp, yp, r, c, C, acc_t(gain),
                                                                                acc_t(slope));
    else
      bias_act_kernel<scalar_t, acc_t, 1, false><<<l.grid, l.block, 0, stream>>>(xp, bp, yp, r, c, C, acc_t(gain),
                                                                                acc_t(slope));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return y;
}

at::Tensor bias_act_grad_cuda(const at::Tensor& dy_in, const at::Tensor& y_in, double gain, double slope) {
  const c10::cuda::CUDAGuard guard(y_in.device());
  const auto in = prepare_bias_act_grad(dy_in, y_in);
  const auto& y = in.y;
  const auto& dy = in.dy;
  auto dx = fresh(at::empty_like(y));
  if (y.numel() == 0) return dx;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "bias_act_grad", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    constexpr int V = kVec<scalar_t>;
    const auto *dyp = dy.const_data_ptr<scalar_t>(), *yp = y.const_data_ptr<scalar_t>();
    auto* dxp = dx.mutable_data_ptr<scalar_t>();
    if (vectorizable<scalar_t>(0, {dyp, yp, dxp}))
      bias_act_grad_kernel<scalar_t, acc_t, V><<<flat_blocks(y.numel(), V), kThreads, 0, stream>>>(
          dyp, yp, dxp, y.numel(), acc_t(gain), acc_t(slope * gain));
    else
      bias_act_grad_kernel<scalar_t, acc_t, 1><<<flat_blocks(y.numel(), 1), kThreads, 0, stream>>>(
          dyp, yp, dxp, y.numel(), acc_t(gain), acc_t(slope * gain));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return dx;
}

std::tuple<at::Tensor, at::Tensor> bias_act_pn_cuda(const at::Tensor& x_in, const c10::optional<at::Tensor>& bias,
                                                    double gain, double slope) {
  check_bias_act(x_in, bias, "bias_act_pn");
  const c10::cuda::CUDAGuard guard(x_in.device());
  auto x = dense(x_in);
  auto y = fresh(at::empty_like(x));
  auto g = geometry(x);
  auto r = fresh(at::empty({g.P}, x.options().dtype(acc_type(x))));
  if (x.numel() == 0) return {y, r};
  auto b = bias_acc(bias, x);
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bias_act_pn", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    constexpr int V = kVec<scalar_t>;
    const acc_t* bp = b.defined() ? b.const_data_ptr<acc_t>() : nullptr;
    const auto* xp = x.const_data_ptr<scalar_t>();
    auto* yp = y.mutable_data_ptr<scalar_t>();
    auto* rp = r.mutable_data_ptr<acc_t>();
    const bool vec = vectorizable<scalar_t>(g.C, {xp, yp});
    const auto l = pixel_norm_launch(g, x.size(0), vec ? V : 1);
    if (!l.rows)
      pn_fwd_nchw_kernel<scalar_t, acc_t><<<l.grid, l.block, 0, stream>>>(xp, bp, yp, rp, int(g.HW), int(g.C),
                                                                        l.tiles, acc_t(gain), acc_t(slope));
    else if (vec)
      pn_fwd_rows_kernel<scalar_t, acc_t, V><<<l.grid, l.block, 0, stream>>>(xp, bp, yp, rp, int(g.P), int(g.C),
                                                                           acc_t(gain), acc_t(slope));
    else
      pn_fwd_rows_kernel<scalar_t, acc_t, 1><<<l.grid, l.block, 0, stream>>>(xp, bp, yp, rp, int(g.P), int(g.C),
                                                                           acc_t(gain), acc_t(slope));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {y, r};
}

at::Tensor bias_act_pn_grad_cuda(const at::Tensor& dy_in, const at::Tensor& y_in, const at::Tensor& r_in, double gain,
                                 double slope) {
  const c10::cuda::CUDAGuard guard(y_in.device());
  const auto in = prepare_bias_act_pn_grad(dy_in, y_in, r_in);
  const auto& y = in.y;
  const auto& dy = in.dy;
  const auto& r = in.r;
  const auto& g = in.g;
  auto dx = fresh(at::empty_like(y));
  if (y.numel() == 0) return dx;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "bias_act_pn_grad", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    constexpr int V = kVec<scalar_t>;
    const auto *dyp = dy.const_data_ptr<scalar_t>(), *yp = y.const_data_ptr<scalar_t>();
    const auto* rp = r.const_data_ptr<acc_t>();
    auto* dxp = dx.mutable_data_ptr<scalar_t>();
    const bool vec = vectorizable<scalar_t>(g.C, {dyp, yp, dxp});
    const auto l = pixel_norm_launch(g, y.size(0), vec ? V : 1);
    if (!l.rows)
      pn_bwd_nchw_kernel<scalar_t, acc_t><<<l.grid, l.block, 0, stream>>>(dyp, yp, rp, dxp, int(g.HW), int(g.C),
                                                                        l.tiles, acc_t(gain), acc_t(slope * gain));
    else if (vec)
      pn_bwd_rows_kernel<scalar_t, acc_t, V><<<l.grid, l.block, 0, stream>>>(dyp, yp, rp, dxp, int(g.P), int(g.C),
                                                                           acc_t(gain), acc_t(slope * gain));
    else
      pn_bwd_rows_kernel<scalar_t, acc_t, 1><<<l.grid, l.block, 0, stream>>>(dyp, yp, rp, dxp, int(g.P), int(g.C),
                                                                           acc_t(gain), acc_t(slope * gain));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return dx;
}

// ---- minibatch stddev -------------------------------------------------------------------------------------------
// F = C*H*W features per sample, M = N / G groups, sample n = g*M + m in group m. The statistics are split across
// blocks: grid (feature chunks of kThreads, groups), each block writing one partial sum of the per-feature stds,
// then one thread per group adds its partials in chunk order (deterministic, no atomics).

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void group_moments(const scalar_t* x, int m, int M, int G, int64_t F, int64_t f,
                                              acc_t& mean, acc_t& sd) {
  mean = 0;
  for (int g = 0; g < G; ++g) mean += acc_t(x[int64_t(g * M + m) * F + f]);
  mean /= acc_t(G);
  acc_t var = 0;
  for (int g = 0; g < G; ++g) {
    const acc_t d = acc_t(x[int64_t(g * M + m) * F + f]) - mean;
    var += d * d;
  }
  sd = sqrt(var / acc_t(G) + acc_t(kStddevEps));
}

template <typename scalar_t, typename acc_t>
__global__ void mbstd_partial_kernel(const scalar_t* __restrict__ x, acc_t* __restrict__ partial, int M, int G,
                                     int64_t F) {
  const int m = blockIdx.y;
  const int64_t f = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  acc_t sd = 0;
  if (f < F) {
    acc_t mean;
    group_moments(x, m, M, G, F, f, mean, sd);
  }
  sd = block_sum(sd);
  if (threadIdx.x == 0) partial[int64_t(m) * gridDim.x + blockIdx.x] = sd;
}

template <typename acc_t>
__global__ void mbstd_finish_kernel(const acc_t* __restrict__ partial, acc_t* __restrict__ s, int M, int chunks,
                                    int64_t F) {
  const int m = blockIdx.x * blockDim.x + threadIdx.x;
  if (m >= M) return;
  acc_t total = 0;
  for (int k = 0; k < chunks; ++k) total += partial[int64_t(m) * chunks + k];
  s[m] = total / acc_t(F);
}

// NCHW: rows are out's N*(C+1) planes of HW; plane c < C copies x's plane, plane C is s[n % M].
template <typename scalar_t, typename acc_t, int V>
__global__ void mbstd_concat_nchw_kernel(const scalar_t* __restrict__ x, const acc_t* __restrict__ s,
                                         scalar_t* __restrict__ out, int rows, int HW, int C, int M) {
  const int row = blockIdx.x * blockDim.y + threadIdx.y;
  if (row >= rows) return;
  const int n = row / (C + 1), c = row - n * (C + 1);
  const int64_t obase = int64_t(row) * HW, xbase = (int64_t(n) * C + c) * HW;
  const scalar_t fill = scalar_t(s[n % M]);
  for (int j = (blockIdx.y * blockDim.x + threadIdx.x) * V; j < HW; j += gridDim.y * blockDim.x * V) {
    scalar_t v[V];
    if (c < C) {
      load_vec<scalar_t, V>(x + xbase + j, v);
    } else {
#pragma unroll
      for (int k = 0; k < V; ++k) v[k] = fill;
    }
    store_vec<scalar_t, V>(out + obase + j, v);
  }
}

// channels_last: rows are the N*HW pixels, C values in and C+1 out.
template <typename scalar_t, typename acc_t>
__global__ void mbstd_concat_cl_kernel(const scalar_t* __restrict__ x, const acc_t* __restrict__ s,
                                       scalar_t* __restrict__ out, int rows, int HW, int C, int M) {
  const int row = blockIdx.x * blockDim.y + threadIdx.y;
  if (row >= rows) return;
  const int n = row / HW;
  const int64_t obase = int64_t(row) * (C + 1), xbase = int64_t(row) * C;
  for (int j = blockIdx.y * blockDim.x + threadIdx.x; j <= C; j += gridDim.y * blockDim.x)
    out[obase + j] = j < C ? x[xbase + j] : scalar_t(s[n % M]);
}

// One block per group: ds[m] = sum over the group's members and pixels of dout's extra map (G*HW values).
template <typename scalar_t, typename acc_t>
__global__ void mbstd_ds_kernel(const scalar_t* __restrict__ dout, acc_t* __restrict__ ds, int M, int G, int C,
                                int HW, bool channels_last) {
  const int m = blockIdx.x;
  acc_t total = 0;
  for (int g = 0; g < G; ++g) {
    const int64_t n = int64_t(g) * M + m;
    for (int p = threadIdx.x; p < HW; p += blockDim.x)
      total += acc_t(channels_last ? dout[(n * HW + p) * (C + 1) + C] : dout[(n * (C + 1) + C) * HW + p]);
  }
  total = block_sum(total);
  if (threadIdx.x == 0) ds[m] = total;
}

// grid (feature chunks, groups), one thread per feature: dx = dout_x + ds[m] (x - mean) / (F G std) for every
// member. channels_last features are in memory order (hw*C + c): one 32-bit division finds dout's pixel.
template <typename scalar_t, typename acc_t>
__global__ void mbstd_dx_kernel(const scalar_t* __restrict__ dout, const scalar_t* __restrict__ x,
                                const acc_t* __restrict__ ds, scalar_t* __restrict__ dx, int M, int G, int C, int HW,
                                bool channels_last) {
  const int m = blockIdx.y;
  const int f = blockIdx.x * blockDim.x + threadIdx.x;
  const int64_t F = int64_t(C) * HW;
  if (f >= F) return;
  acc_t mean, sd;
  group_moments(x, m, M, G, F, f, mean, sd);
  const acc_t coef = ds[m] / (acc_t(F) * acc_t(G) * sd);
  int64_t dout_f = f;   // NCHW: out's first C*HW values of a sample are x's
  if (channels_last) {
    const int hw = f / C;
    dout_f = int64_t(hw) * (C + 1) + (f - hw * C);
  }
  for (int g = 0; g < G; ++g) {
    const int64_t n = int64_t(g) * M + m;
    dx[n * F + f] = scalar_t(acc_t(dout[n * (F + HW) + dout_f]) + coef * (acc_t(x[n * F + f]) - mean));
  }
}

at::Tensor minibatch_stddev_cuda(const at::Tensor& x_in, int64_t group_size) {
  check_mbstd(x_in, group_size, "minibatch_stddev");
  const c10::cuda::CUDAGuard guard(x_in.device());
  auto x = dense(x_in);
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3), F = C * HW, M = N / group_size;
  auto out = fresh(empty_in_layout_of(x, {N, C + 1, x.size(2), x.size(3)}, x.scalar_type()));
  if (out.numel() == 0) return out;
  TORCH_CHECK(F < (int64_t(1) << 31) && M <= 65535 && N * (C + 1) < (int64_t(1) << 31),
              "fastpggan_ext::minibatch_stddev: tensor too large");
  auto s = at::full({M}, std::sqrt(kStddevEps), x.options().dtype(acc_type(x)));
  const int64_t chunks = (F + kThreads - 1) / kThreads;
  auto partial = at::empty({M, std::max<int64_t>(chunks, 1)}, x.options().dtype(acc_type(x)));
  auto stream = at::cuda::getCurrentCUDAStream();
  const bool cl = is_channels_last(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "minibatch_stddev", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    constexpr int V = kVec<scalar_t>;
    const auto* xp = x.const_data_ptr<scalar_t>();
    auto* op = out.mutable_data_ptr<scalar_t>();
    if (F) {
      mbstd_partial_kernel<scalar_t, acc_t><<<dim3(static_cast<unsigned>(chunks), static_cast<unsigned>(M)), kThreads,
                                             0, stream>>>(xp, partial.mutable_data_ptr<acc_t>(), int(M),
                                                          int(group_size), F);
      mbstd_finish_kernel<acc_t><<<blocks_for(M), kThreads, 0, stream>>>(
          partial.const_data_ptr<acc_t>(), s.mutable_data_ptr<acc_t>(), int(M), int(chunks), F);
    }
    const auto* sp = s.const_data_ptr<acc_t>();
    if (cl) {
      const auto l = grid_2d(N * HW, C + 1, 1);
      mbstd_concat_cl_kernel<scalar_t, acc_t><<<l.grid, l.block, 0, stream>>>(xp, sp, op, int(N * HW), int(HW),
                                                                              int(C), int(M));
    } else {
      const bool vec = vectorizable<scalar_t>(HW, {xp, op});
      const auto l = grid_2d(N * (C + 1), HW, vec ? V : 1);
      if (vec)
        mbstd_concat_nchw_kernel<scalar_t, acc_t, V><<<l.grid, l.block, 0, stream>>>(
            xp, sp, op, int(N * (C + 1)), int(HW), int(C), int(M));
      else
        mbstd_concat_nchw_kernel<scalar_t, acc_t, 1><<<l.grid, l.block, 0, stream>>>(
            xp, sp, op, int(N * (C + 1)), int(HW), int(C), int(M));
    }
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor minibatch_stddev_grad_cuda(const at::Tensor& dout_in, const at::Tensor& x_in, int64_t group_size) {
  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto in = prepare_minibatch_stddev_grad(dout_in, x_in, group_size);
  const auto& x = in.x;
  const auto& dout = in.dout;
  const auto C = in.C;
  const auto HW = in.HW;
  const auto M = in.M;
  auto dx = fresh(at::empty_like(x));
  if (x.numel() == 0) return dx;
  TORCH_CHECK(C * HW < (int64_t(1) << 31) && M <= 65535, "fastpggan_ext::minibatch_stddev_grad: tensor too large");
  auto ds = fresh(at::empty({M}, x.options().dtype(acc_type(x))));
  auto stream = at::cuda::getCurrentCUDAStream();
  const bool cl = is_channels_last(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "minibatch_stddev_grad", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    mbstd_ds_kernel<scalar_t, acc_t><<<static_cast<unsigned>(M), kThreads, 0, stream>>>(
        dout.const_data_ptr<scalar_t>(), ds.mutable_data_ptr<acc_t>(), int(M), int(group_size), int(C), int(HW), cl);
    mbstd_dx_kernel<scalar_t, acc_t><<<dim3(static_cast<unsigned>((C * HW + kThreads - 1) / kThreads),
                                            static_cast<unsigned>(M)), kThreads, 0, stream>>>(
        dout.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), ds.const_data_ptr<acc_t>(),
        dx.mutable_data_ptr<scalar_t>(), int(M), int(group_size), int(C), int(HW), cl);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return dx;
}

// ---- gradient penalty ---------------------------------------------------------------------------------------------

constexpr int64_t kChunk = 16384;  // elements per partial sum

// grid (chunks, N): partial[n, chunk] = sum of squares; deterministic (no atomics). 32-bit loop counters: a
// 64-bit one makes the compiler divide to count the trips.
template <typename scalar_t, typename acc_t>
__global__ void gp_partial_kernel(const scalar_t* __restrict__ g, acc_t* __restrict__ partial, int64_t D,
                                  int chunks) {
  const int n = blockIdx.y, chunk = blockIdx.x;
  const int64_t lo = int64_t(chunk) * kChunk;
  const int len = static_cast<int>(min(D - lo, kChunk));
  const scalar_t* gp = g + int64_t(n) * D + lo;
  acc_t ss = 0;
  for (int i = threadIdx.x; i < len; i += blockDim.x) {
    const acc_t v = acc_t(gp[i]);
    ss += v * v;
  }
  ss = block_sum(ss);
  if (threadIdx.x == 0) partial[int64_t(n) * chunks + chunk] = ss;
}

template <typename acc_t>
__global__ void gp_finish_kernel(const acc_t* __restrict__ partial, acc_t* __restrict__ gp, acc_t* __restrict__ r,
                                 int N, int chunks, acc_t target) {
  const int n = blockIdx.x * blockDim.x + threadIdx.x;
  if (n >= N) return;
  acc_t ss = 0;
  for (int k = 0; k < chunks; ++k) ss += partial[int64_t(n) * chunks + k];
  const acc_t norm = sqrt(ss);
  r[n] = norm;
  gp[n] = (norm - target) * (norm - target);
}

// Per-sample rows of D elements: dg = coef[n] * g with coef = dgp 2 (r - target) / r (0 where r = 0).
template <typename scalar_t, typename acc_t, int V>
__global__ void gp_grad_kernel(const acc_t* __restrict__ dgp, const scalar_t* __restrict__ g,
                               const acc_t* __restrict__ r, scalar_t* __restrict__ dg, int rows, int cols,
                               acc_t target) {
  const int row = blockIdx.x * blockDim.y + threadIdx.y;
  if (row >= rows) return;
  const int64_t base = int64_t(row) * cols;
  const acc_t rn = r[row];
  const acc_t coef = rn > acc_t(0) ? dgp[row] * acc_t(2) * (rn - target) / rn : acc_t(0);
  for (int j = (blockIdx.y * blockDim.x + threadIdx.x) * V; j < cols; j += gridDim.y * blockDim.x * V) {
    scalar_t in[V], out[V];
    load_vec<scalar_t, V>(g + base + j, in);
#pragma unroll
    for (int k = 0; k < V; ++k) out[k] = scalar_t(coef * acc_t(in[k]));
    store_vec<scalar_t, V>(dg + base + j, out);
  }
}

// Per-sample rows: out = real + u[n] (fake - real).
template <typename scalar_t, typename acc_t, int V>
__global__ void gp_interpolate_kernel(const scalar_t* __restrict__ real, const scalar_t* __restrict__ fake,
                                      const acc_t* __restrict__ u, scalar_t* __restrict__ out, int rows, int cols) {
  const int row = blockIdx.x * blockDim.y + threadIdx.y;
  if (row >= rows) return;
  const int64_t base = int64_t(row) * cols;
  const acc_t un = u[row];
  for (int j = (blockIdx.y * blockDim.x + threadIdx.x) * V; j < cols; j += gridDim.y * blockDim.x * V) {
    scalar_t a[V], f[V], o[V];
    load_vec<scalar_t, V>(real + base + j, a);
    load_vec<scalar_t, V>(fake + base + j, f);
#pragma unroll
    for (int k = 0; k < V; ++k) o[k] = scalar_t(acc_t(a[k]) + un * (acc_t(f[k]) - acc_t(a[k])));
    store_vec<scalar_t, V>(out + base + j, o);
  }
}

std::tuple<at::Tensor, at::Tensor> gradient_penalty_cuda(const at::Tensor& g_in, double target) {
  check_gp(g_in, "gradient_penalty");
  const c10::cuda::CUDAGuard guard(g_in.device());
  auto g = dense(g_in);
  const int64_t N = g.size(0), D = N ? g.numel() / N : 0;
  auto gp = fresh(at::empty({N}, g.options().dtype(acc_type(g))));
  auto r = fresh(at::empty({N}, g.options().dtype(acc_type(g))));
  if (N == 0) return {gp, r};
  const int64_t chunks = std::max<int64_t>(1, (D + kChunk - 1) / kChunk);
  TORCH_CHECK(N <= 65535 && chunks < (int64_t(1) << 31), "fastpggan_ext::gradient_penalty: tensor too large");
  auto partial = at::zeros({N, chunks}, g.options().dtype(acc_type(g)));
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "gradient_penalty", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (D)
      gp_partial_kernel<scalar_t, acc_t><<<dim3(static_cast<unsigned>(chunks), static_cast<unsigned>(N)), kThreads, 0,
                                           stream>>>(g.const_data_ptr<scalar_t>(), partial.mutable_data_ptr<acc_t>(), D,
                                                     int(chunks));
    gp_finish_kernel<acc_t><<<blocks_for(N), kThreads, 0, stream>>>(
        partial.const_data_ptr<acc_t>(), gp.mutable_data_ptr<acc_t>(), r.mutable_data_ptr<acc_t>(), int(N),
        int(chunks), acc_t(target));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {gp, r};
}

at::Tensor gradient_penalty_grad_cuda(const at::Tensor& dgp_in, const at::Tensor& g_in, const at::Tensor& r_in,
                                      double target) {
  const c10::cuda::CUDAGuard guard(g_in.device());
  const auto in = prepare_gradient_penalty_grad(dgp_in, g_in, r_in);
  const auto& g = in.g;
  const auto& dgp = in.dgp;
  const auto& r = in.r;
  const auto N = in.N;
  const auto D = in.D;
  auto dg = fresh(at::empty_like(g));
  if (g.numel() == 0) return dg;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "gradient_penalty_grad", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    constexpr int V = kVec<scalar_t>;
    const auto* gp_ = g.const_data_ptr<scalar_t>();
    auto* dgp_ = dg.mutable_data_ptr<scalar_t>();
    const bool vec = vectorizable<scalar_t>(D, {gp_, dgp_});
    const auto l = grid_2d(N, D, vec ? V : 1);
    if (vec)
      gp_grad_kernel<scalar_t, acc_t, V><<<l.grid, l.block, 0, stream>>>(
          dgp.const_data_ptr<acc_t>(), gp_, r.const_data_ptr<acc_t>(), dgp_, int(N), int(D), acc_t(target));
    else
      gp_grad_kernel<scalar_t, acc_t, 1><<<l.grid, l.block, 0, stream>>>(
          dgp.const_data_ptr<acc_t>(), gp_, r.const_data_ptr<acc_t>(), dgp_, int(N), int(D), acc_t(target));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return dg;
}

at::Tensor gp_interpolate_cuda(const at::Tensor& real_in, const at::Tensor& fake_in, const at::Tensor& u_in) {
  const c10::cuda::CUDAGuard guard(real_in.device());
  const auto in = prepare_gp_interpolate(real_in, fake_in, u_in);
  const auto& real = in.real;
  const auto& fake = in.fake;
  const auto& u = in.u;
  const auto N = in.N;
  const auto D = in.D;
  auto out = fresh(at::empty_like(real));
  if (real.numel() == 0) return out;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, real.scalar_type(), "gp_interpolate", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    constexpr int V = kVec<scalar_t>;
    const auto *rp = real.const_data_ptr<scalar_t>(), *fp = fake.const_data_ptr<scalar_t>();
    auto* op = out.mutable_data_ptr<scalar_t>();
    const bool vec = vectorizable<scalar_t>(D, {rp, fp, op});
    const auto l = grid_2d(N, D, vec ? V : 1);
    if (vec)
      gp_interpolate_kernel<scalar_t, acc_t, V><<<l.grid, l.block, 0, stream>>>(rp, fp, u.const_data_ptr<acc_t>(), op,
                                                                              int(N), int(D));
    else
      gp_interpolate_kernel<scalar_t, acc_t, 1><<<l.grid, l.block, 0, stream>>>(rp, fp, u.const_data_ptr<acc_t>(), op,
                                                                              int(N), int(D));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}


// ---- fade-in ------------------------------------------------------------------------------------------------------

template <typename acc_t>
__device__ __forceinline__ acc_t fade_weight(acc_t alpha, const acc_t* alpha_t) {
  return alpha_t ? alpha_t[0] : alpha;
}

// Same-size fade, flat: y = (1 - a) low + a high; its gradient dlow = (1 - a) dy, dhigh = a dy.
template <typename scalar_t, typename acc_t, int V>
__global__ void fade_same_fwd_kernel(const scalar_t* __restrict__ low, const scalar_t* __restrict__ high,
                                     scalar_t* __restrict__ y, int64_t numel, acc_t alpha, const acc_t* alpha_t) {
  const acc_t a = fade_weight(alpha, alpha_t);
  for_each_flat_vector<V>(numel, [&](int64_t i, int count) {
    scalar_t l[V], h[V], out[V];
    load_part<scalar_t, V>(low + i, count, l);
    load_part<scalar_t, V>(high + i, count, h);
#pragma unroll
    for (int k = 0; k < V; ++k) out[k] = scalar_t((acc_t(1) - a) * acc_t(l[k]) + a * acc_t(h[k]));
    store_part<scalar_t, V>(y + i, count, out);
  });
}

template <typename scalar_t, typename acc_t, int V>
__global__ void fade_same_bwd_kernel(const scalar_t* __restrict__ dy, scalar_t* __restrict__ dlow,
                                     scalar_t* __restrict__ dhigh, int64_t numel, acc_t alpha, const acc_t* alpha_t) {
  const acc_t a = fade_weight(alpha, alpha_t);
  for_each_flat_vector<V>(numel, [&](int64_t i, int count) {
    scalar_t d[V], dl[V], dh[V];
    load_part<scalar_t, V>(dy + i, count, d);
#pragma unroll
    for (int k = 0; k < V; ++k) {
      dl[k] = scalar_t((acc_t(1) - a) * acc_t(d[k]));
      dh[k] = scalar_t(a * acc_t(d[k]));
    }
    store_part<scalar_t, V>(dlow + i, count, dl);
    store_part<scalar_t, V>(dhigh + i, count, dh);
  });
}

// Upsampling fade (low at half size, nearest upsampling). NCHW: rows are the N*C*H rows of high, and high row R
// reads low row R >> 1 (H is even), high column w low column w >> 1. channels_last: rows are high's pixels, C
// contiguous values each; pixel (n, h, w) reads low pixel (n, h >> 1, w >> 1), found with one 32-bit division per
// thread. The backward walks low rows (NCHW: the high row pair 2L, 2L + 1; channels_last: the 2x2 pixels).
template <typename scalar_t, typename acc_t, int V>
__global__ void fade_up_fwd_nchw_kernel(const scalar_t* __restrict__ low, const scalar_t* __restrict__ high,
                                        scalar_t* __restrict__ y, int rows, int W, acc_t alpha, const acc_t* alpha_t) {
  const int row = blockIdx.x * blockDim.y + threadIdx.y;
  if (row >= rows) return;
  const acc_t a = fade_weight(alpha, alpha_t);
  const int64_t hbase = int64_t(row) * W, lbase = int64_t(row >> 1) * (W >> 1);
  for (int j = (blockIdx.y * blockDim.x + threadIdx.x) * V; j < W; j += gridDim.y * blockDim.x * V) {
    scalar_t h[V], o[V];
    load_vec<scalar_t, V>(high + hbase + j, h);
#pragma unroll
    for (int k = 0; k < V; ++k)
      o[k] = scalar_t((acc_t(1) - a) * acc_t(low[lbase + ((j + k) >> 1)]) + a * acc_t(h[k]));
    store_vec<scalar_t, V>(y + hbase + j, o);
  }
}

template <typename scalar_t, typename acc_t, int V>
__global__ void fade_up_fwd_cl_kernel(const scalar_t* __restrict__ low, const scalar_t* __restrict__ high,
                                      scalar_t* __restrict__ y, int rows, int W, int C, acc_t alpha,
                                      const acc_t* alpha_t) {
  const int row = blockIdx.x * blockDim.y + threadIdx.y;
  if (row >= rows) return;
  const acc_t a = fade_weight(alpha, alpha_t);
  const int prow = row / W, w = row - prow * W;   // pixel row n*H + h, column w
  const int64_t hbase = int64_t(row) * C, lbase = (int64_t(prow >> 1) * (W >> 1) + (w >> 1)) * C;
  for (int j = (blockIdx.y * blockDim.x + threadIdx.x) * V; j < C; j += gridDim.y * blockDim.x * V) {
    scalar_t h[V], l[V], o[V];
    load_vec<scalar_t, V>(high + hbase + j, h);
    load_vec<scalar_t, V>(low + lbase + j, l);
#pragma unroll
    for (int k = 0; k < V; ++k) o[k] = scalar_t((acc_t(1) - a) * acc_t(l[k]) + a * acc_t(h[k]));
    store_vec<scalar_t, V>(y + hbase + j, o);
  }
}

// VL low columns per thread, so 2 VL high columns of each row of the pair (16 bytes when VEC).
template <typename scalar_t, typename acc_t, int VL, bool VEC>
__global__ void fade_up_bwd_nchw_kernel(const scalar_t* __restrict__ dy, scalar_t* __restrict__ dlow,
                                        scalar_t* __restrict__ dhigh, int rows, int Wl, acc_t alpha,
                                        const acc_t* alpha_t) {
  constexpr int VH = 2 * VL;
  const int row = blockIdx.x * blockDim.y + threadIdx.y;
  if (row >= rows) return;
  const acc_t a = fade_weight(alpha, alpha_t);
  const int64_t lbase = int64_t(row) * Wl, top = int64_t(row) * 4 * Wl, bottom = top + 2 * Wl;
  for (int jl = (blockIdx.y * blockDim.x + threadIdx.x) * VL; jl < Wl; jl += gridDim.y * blockDim.x * VL) {
    const int jh = 2 * jl;
    scalar_t d0[VH], d1[VH], o0[VH], o1[VH];
    if (VEC) {
      load_vec<scalar_t, VH>(dy + top + jh, d0);
      load_vec<scalar_t, VH>(dy + bottom + jh, d1);
    } else {
#pragma unroll
      for (int k = 0; k < VH; ++k) d0[k] = dy[top + jh + k], d1[k] = dy[bottom + jh + k];
    }
#pragma unroll
    for (int k = 0; k < VH; ++k) o0[k] = scalar_t(a * acc_t(d0[k])), o1[k] = scalar_t(a * acc_t(d1[k]));
    if (VEC) {
      store_vec<scalar_t, VH>(dhigh + top + jh, o0);
      store_vec<scalar_t, VH>(dhigh + bottom + jh, o1);
    } else {
#pragma unroll
      for (int k = 0; k < VH; ++k) dhigh[top + jh + k] = o0[k], dhigh[bottom + jh + k] = o1[k];
    }
#pragma unroll
    for (int k = 0; k < VL; ++k)
      dlow[lbase + jl + k] = scalar_t((acc_t(1) - a) * (acc_t(d0[2 * k]) + acc_t(d0[2 * k + 1]) +
                                                         acc_t(d1[2 * k]) + acc_t(d1[2 * k + 1])));
  }
}

template <typename scalar_t, typename acc_t, int V>
__global__ void fade_up_bwd_cl_kernel(const scalar_t* __restrict__ dy, scalar_t* __restrict__ dlow,
                                      scalar_t* __restrict__ dhigh, int rows, int Wl, int C, acc_t alpha,
                                      const acc_t* alpha_t) {
  const int row = blockIdx.x * blockDim.y + threadIdx.y;
  if (row >= rows) return;
  const acc_t a = fade_weight(alpha, alpha_t);
  const int lrow = row / Wl, wl = row - lrow * Wl;   // low pixel row n*Hl + hl, column wl
  const int64_t W = 2 * int64_t(Wl), p00 = int64_t(lrow) * 2 * W + 2 * wl;
  const int64_t off[4] = {p00 * C, (p00 + 1) * C, (p00 + W) * C, (p00 + W + 1) * C};
  const int64_t lbase = int64_t(row) * C;
  for (int j = (blockIdx.y * blockDim.x + threadIdx.x) * V; j < C; j += gridDim.y * blockDim.x * V) {
    acc_t sum[V];
#pragma unroll
    for (int k = 0; k < V; ++k) sum[k] = acc_t(0);
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      scalar_t d[V], o[V];
      load_vec<scalar_t, V>(dy + off[q] + j, d);
#pragma unroll
      for (int k = 0; k < V; ++k) {
        sum[k] += acc_t(d[k]);
        o[k] = scalar_t(a * acc_t(d[k]));
      }
      store_vec<scalar_t, V>(dhigh + off[q] + j, o);
    }
    scalar_t l[V];
#pragma unroll
    for (int k = 0; k < V; ++k) l[k] = scalar_t((acc_t(1) - a) * sum[k]);
    store_vec<scalar_t, V>(dlow + lbase + j, l);
  }
}

at::Tensor fade_in_cuda(const at::Tensor& low_in, const at::Tensor& high_in, double alpha,
                        const c10::optional<at::Tensor>& alpha_t) {
  const c10::cuda::CUDAGuard guard(high_in.device());
  const auto in = prepare_fade_in(low_in, high_in);
  const auto& low = in.low;
  const auto& high = in.high;
  auto y = fresh(at::empty_like(high));
  if (high.numel() == 0) return y;
  auto at_ = alpha_t.has_value() ? alpha_t->to(high.device(), acc_type(high)).contiguous() : at::Tensor();
  auto stream = at::cuda::getCurrentCUDAStream();
  const bool up = low.size(3) != high.size(3);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, high.scalar_type(), "fade_in", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    constexpr int V = kVec<scalar_t>;
    const acc_t* ap = at_.defined() ? at_.const_data_ptr<acc_t>() : nullptr;
    const auto *lp = low.const_data_ptr<scalar_t>(), *hp = high.const_data_ptr<scalar_t>();
    auto* yp = y.mutable_data_ptr<scalar_t>();
    if (!up && vectorizable<scalar_t>(0, {lp, hp, yp})) {
      fade_same_fwd_kernel<scalar_t, acc_t, V><<<flat_blocks(high.numel(), V), kThreads, 0, stream>>>(
          lp, hp, yp, high.numel(), acc_t(alpha), ap);
      return;
    }
    if (!up) {
      fade_same_fwd_kernel<scalar_t, acc_t, 1><<<flat_blocks(high.numel(), 1), kThreads, 0, stream>>>(
          lp, hp, yp, high.numel(), acc_t(alpha), ap);
      return;
    }
    const int64_t H = high.size(2), W = high.size(3), C = high.size(1);
    if (is_channels_last(high)) {
      const bool vec = vectorizable<scalar_t>(C, {lp, hp, yp});
      const auto l = grid_2d(high.size(0) * H * W, C, vec ? V : 1);
      if (vec)
        fade_up_fwd_cl_kernel<scalar_t, acc_t, V><<<l.grid, l.block, 0, stream>>>(
            lp, hp, yp, int(high.size(0) * H * W), int(W), int(C), acc_t(alpha), ap);
      else
        fade_up_fwd_cl_kernel<scalar_t, acc_t, 1><<<l.grid, l.block, 0, stream>>>(
            lp, hp, yp, int(high.size(0) * H * W), int(W), int(C), acc_t(alpha), ap);
    } else {
      const bool vec = vectorizable<scalar_t>(W, {hp, yp});
      const auto l = grid_2d(high.size(0) * C * H, W, vec ? V : 1);
      if (vec)
        fade_up_fwd_nchw_kernel<scalar_t, acc_t, V><<<l.grid, l.block, 0, stream>>>(
            lp, hp, yp, int(high.size(0) * C * H), int(W), acc_t(alpha), ap);
      else
        fade_up_fwd_nchw_kernel<scalar_t, acc_t, 1><<<l.grid, l.block, 0, stream>>>(
            lp, hp, yp, int(high.size(0) * C * H), int(W), acc_t(alpha), ap);
    }
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return y;
}

std::tuple<at::Tensor, at::Tensor> fade_in_grad_cuda(const at::Tensor& dy_in, at::IntArrayRef low_size, double alpha,
                                                     const c10::optional<at::Tensor>& alpha_t) {
  check_float(dy_in, "fade_in_grad", "dy");
  TORCH_CHECK(dy_in.dim() == 4 && low_size.size() == 4, "fastpggan_ext::fade_in_grad: dy must be NCHW and low_size 4-d");
  const c10::cuda::CUDAGuard guard(dy_in.device());
  auto dy = dense(dy_in);
  auto dhigh = fresh(at::empty_like(dy));
  auto dlow = fresh(empty_in_layout_of(dy, low_size, dy.scalar_type()));
  if (dy.numel() == 0) return {dlow, dhigh};
  auto at_ = alpha_t.has_value() ? alpha_t->to(dy.device(), acc_type(dy)).contiguous() : at::Tensor();
  auto stream = at::cuda::getCurrentCUDAStream();
  const bool up = low_size[3] != dy.size(3);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dy.scalar_type(), "fade_in_grad", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    constexpr int V = kVec<scalar_t>;
    const acc_t* ap = at_.defined() ? at_.const_data_ptr<acc_t>() : nullptr;
    const auto* dyp = dy.const_data_ptr<scalar_t>();
    auto *dlp = dlow.mutable_data_ptr<scalar_t>(), *dhp = dhigh.mutable_data_ptr<scalar_t>();
    if (!up && vectorizable<scalar_t>(0, {dyp, dlp, dhp})) {
      fade_same_bwd_kernel<scalar_t, acc_t, V><<<flat_blocks(dy.numel(), V), kThreads, 0, stream>>>(
          dyp, dlp, dhp, dy.numel(), acc_t(alpha), ap);
      return;
    }
    if (!up) {
      fade_same_bwd_kernel<scalar_t, acc_t, 1><<<flat_blocks(dy.numel(), 1), kThreads, 0, stream>>>(
          dyp, dlp, dhp, dy.numel(), acc_t(alpha), ap);
      return;
    }
    const int64_t N = dy.size(0), C = dy.size(1), Hl = low_size[2], Wl = low_size[3];
    if (is_channels_last(dy)) {
      const bool vec = vectorizable<scalar_t>(C, {dyp, dlp, dhp});
      const auto l = grid_2d(N * Hl * Wl, C, vec ? V : 1);
      if (vec)
        fade_up_bwd_cl_kernel<scalar_t, acc_t, V><<<l.grid, l.block, 0, stream>>>(
            dyp, dlp, dhp, int(N * Hl * Wl), int(Wl), int(C), acc_t(alpha), ap);
      else
        fade_up_bwd_cl_kernel<scalar_t, acc_t, 1><<<l.grid, l.block, 0, stream>>>(
            dyp, dlp, dhp, int(N * Hl * Wl), int(Wl), int(C), acc_t(alpha), ap);
    } else {
      constexpr int VL = V / 2;   // V >= 2 for every dtype: 16 bytes of high per row of the pair
      const bool vec = vectorizable<scalar_t>(2 * Wl, {dyp, dhp});
      const auto l = grid_2d(N * C * Hl, Wl, vec ? VL : 1);
      if (vec)
        fade_up_bwd_nchw_kernel<scalar_t, acc_t, VL, true><<<l.grid, l.block, 0, stream>>>(
            dyp, dlp, dhp, int(N * C * Hl), int(Wl), acc_t(alpha), ap);
      else
        fade_up_bwd_nchw_kernel<scalar_t, acc_t, 1, false><<<l.grid, l.block, 0, stream>>>(
            dyp, dlp, dhp, int(N * C * Hl), int(Wl), acc_t(alpha), ap);
    }
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {dlow, dhigh};
}

}  // namespace
}  // namespace fastpggan

TORCH_LIBRARY_IMPL(fastpggan_ext, CUDA, m) {
  m.impl("fade_in", &fastpggan::fade_in_cuda);
  m.impl("fade_in_grad", &fastpggan::fade_in_grad_cuda);
  m.impl("bias_act", &fastpggan::bias_act_cuda);
  m.impl("bias_act_grad", &fastpggan::bias_act_grad_cuda);
  m.impl("bias_act_pn", &fastpggan::bias_act_pn_cuda);
  m.impl("bias_act_pn_grad", &fastpggan::bias_act_pn_grad_cuda);
  m.impl("minibatch_stddev", &fastpggan::minibatch_stddev_cuda);
  m.impl("minibatch_stddev_grad", &fastpggan::minibatch_stddev_grad_cuda);
  m.impl("gradient_penalty", &fastpggan::gradient_penalty_cuda);
  m.impl("gradient_penalty_grad", &fastpggan::gradient_penalty_grad_cuda);
  m.impl("gp_interpolate", &fastpggan::gp_interpolate_cuda);
}
