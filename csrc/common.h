// Shared by the CPU (ops_cpu.cpp) and CUDA (ops_cuda.cu) kernels of fastpggan._C.
// Layout rule, identical to the Triton backend's: an input is used as is when it is NCHW-contiguous or 4-d
// channels_last, else made NCHW-contiguous; outputs take that layout.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <limits>

namespace fastpggan {

constexpr double kPixelNormEps = 1e-8;
constexpr double kStddevEps = 1e-8;

inline bool is_channels_last(const at::Tensor& t) {
  return t.dim() == 4 && !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

inline at::Tensor dense(const at::Tensor& t) {
  return (t.is_contiguous() || is_channels_last(t)) ? t : t.contiguous();
}

inline at::Tensor like_layout(const at::Tensor& t, const at::Tensor& ref) {
  return is_channels_last(ref) ? t.contiguous(at::MemoryFormat::ChannelsLast) : t.contiguous();
}

inline at::Tensor empty_in_layout_of(const at::Tensor& ref, at::IntArrayRef shape, at::ScalarType dtype) {
  auto fmt = is_channels_last(ref) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  return at::empty(shape, ref.options().dtype(dtype).memory_format(fmt));
}

// Tests switch this on (op fastpggan_ext::set_poison) so every output starts as NaN: an element a kernel
// forgets to write then fails the comparison with the reference.
inline bool& poison_outputs() {
  static bool on = false;
  return on;
}

inline at::Tensor fresh(at::Tensor t) {
  if (poison_outputs() && at::isFloatingType(t.scalar_type())) t.fill_(std::numeric_limits<double>::quiet_NaN());
  return t;
}

inline at::ScalarType acc_type(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// (C, pixels per sample, pixel count) of a tensor with the channel axis at dim 1.
struct Geometry {
  int64_t C, HW, P;
  bool channels_last;
};

inline Geometry geometry(const at::Tensor& x) {
  int64_t C = x.size(1);
  int64_t HW = C ? x.numel() / (x.size(0) * C) : 0;
  if (x.size(0) == 0) HW = 0;
  return {C, HW, x.size(0) * HW, is_channels_last(x)};
}

inline void check_float(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), "fastpggan_ext::", op, ": ", name,
              " must be a floating-point tensor, got ", t.scalar_type());
}

inline void check_same_device(const at::Tensor& a, const at::Tensor& b, const char* op) {
  TORCH_CHECK(a.device() == b.device(), "fastpggan_ext::", op, ": tensors must be on one device, got ", a.device(),
              " and ", b.device());
}

inline void check_bias_act(const at::Tensor& x, const c10::optional<at::Tensor>& bias, const char* op) {
  check_float(x, op, "x");
  TORCH_CHECK(x.dim() >= 2, "fastpggan_ext::", op, ": x needs a channel axis at dim 1, got shape ", x.sizes());
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == x.size(1), "fastpggan_ext::", op, ": bias must have shape (",
                x.size(1), ",), got ", bias->sizes());
    check_float(*bias, op, "bias");
    check_same_device(x, *bias, op);
  }
}

inline void check_mbstd(const at::Tensor& x, int64_t group_size, const char* op) {
  check_float(x, op, "x");
  TORCH_CHECK(x.dim() == 4, "fastpggan_ext::", op, ": x must be NCHW, got shape ", x.sizes());
  TORCH_CHECK(group_size >= 1 && x.size(0) % group_size == 0, "fastpggan_ext::", op, ": the minibatch ", x.size(0),
              " must be divisible by the group size ", group_size);
}

inline void check_gp(const at::Tensor& g, const char* op) {
  check_float(g, op, "grads");
  TORCH_CHECK(g.dim() >= 1, "fastpggan_ext::", op, ": grads must be (N, ...), got shape ", g.sizes());
}

inline void check_fade(const at::Tensor& low, const at::Tensor& high, const char* op) {
  check_float(high, op, "high");
  check_same_device(low, high, op);
  TORCH_CHECK(high.dim() == 4 && low.dim() == 4 && low.size(0) == high.size(0) && low.size(1) == high.size(1),
              "fastpggan_ext::", op, ": low and high must be NCHW with equal N and C, got ", low.sizes(), " and ",
              high.sizes());
  const bool same = low.size(2) == high.size(2) && low.size(3) == high.size(3);
  TORCH_CHECK(same || (low.size(2) * 2 == high.size(2) && low.size(3) * 2 == high.size(3)), "fastpggan_ext::", op,
              ": low must be high's size or half of it, got ", low.sizes(), " and ", high.sizes());
}

// The bias as a contiguous vector in the accumulation dtype; zeros when there is none, so kernels need no branch.
inline at::Tensor bias_in_acc(const c10::optional<at::Tensor>& bias, const at::Tensor& x) {
  return bias.has_value() ? bias->to(acc_type(x)).contiguous() : at::zeros({x.size(1)}, x.options().dtype(acc_type(x)));
}

// ---- Inputs of the ops, checked and laid out once for both backends. Callers copy the fields out instead of
// using structured bindings, which lambdas (AT_DISPATCH) may capture only from C++20 on; older torch builds C++17.

// bias_act_grad: y dense, dy in y's layout and dtype.
struct MaskedGradInputs {
  at::Tensor y, dy;
};

inline MaskedGradInputs prepare_bias_act_grad(const at::Tensor& dy_in, const at::Tensor& y_in) {
  check_float(dy_in, "bias_act_grad", "dy");
  check_same_device(dy_in, y_in, "bias_act_grad");
  TORCH_CHECK(dy_in.sizes() == y_in.sizes(), "fastpggan_ext::bias_act_grad: dy and y shapes differ: ", dy_in.sizes(),
              " vs ", y_in.sizes());
  auto y = dense(y_in);
  return {y, like_layout(dy_in, y).to(y.scalar_type())};
}

// bias_act_pn_grad: as above, plus r (one value per pixel, accumulation dtype).
struct PixelNormGradInputs {
  at::Tensor y, dy, r;
  Geometry g;
};

inline PixelNormGradInputs prepare_bias_act_pn_grad(const at::Tensor& dy_in, const at::Tensor& y_in,
                                                    const at::Tensor& r_in) {
  check_float(dy_in, "bias_act_pn_grad", "dy");
  check_same_device(dy_in, y_in, "bias_act_pn_grad");
  auto y = dense(y_in);
  auto g = geometry(y);
  auto r = r_in.to(acc_type(y)).contiguous();
  TORCH_CHECK(r.numel() == g.P, "fastpggan_ext::bias_act_pn_grad: r must hold one value per pixel (", g.P, "), got ",
              r.numel());
  return {y, like_layout(dy_in, y).to(y.scalar_type()), r, g};
}

// minibatch_stddev_grad: x dense, dout (N, C+1, H, W) in x's layout and dtype.
struct StddevGradInputs {
  at::Tensor x, dout;
  int64_t N, C, HW, M;
};

inline StddevGradInputs prepare_minibatch_stddev_grad(const at::Tensor& dout_in, const at::Tensor& x_in,
                                                      int64_t group_size) {
  check_mbstd(x_in, group_size, "minibatch_stddev_grad");
  check_same_device(dout_in, x_in, "minibatch_stddev_grad");
  auto x = dense(x_in);
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  TORCH_CHECK(dout_in.dim() == 4 && dout_in.size(0) == N && dout_in.size(1) == C + 1,
              "fastpggan_ext::minibatch_stddev_grad: dout must be (N, C+1, H, W), got ", dout_in.sizes());
  return {x, like_layout(dout_in, x).to(x.scalar_type()), N, C, HW, N / group_size};
}

// gradient_penalty_grad: g dense; dgp and r one value per sample, accumulation dtype.
struct PenaltyGradInputs {
  at::Tensor g, dgp, r;
  int64_t N, D;
};

inline PenaltyGradInputs prepare_gradient_penalty_grad(const at::Tensor& dgp_in, const at::Tensor& g_in,
                                                       const at::Tensor& r_in) {
  check_gp(g_in, "gradient_penalty_grad");
  check_same_device(dgp_in, g_in, "gradient_penalty_grad");
  auto g = dense(g_in);
  const int64_t N = g.size(0), D = N ? g.numel() / N : 0;
  TORCH_CHECK(dgp_in.numel() == N && r_in.numel() == N,
              "fastpggan_ext::gradient_penalty_grad: dgp and r must have one value per sample (", N, ")");
  return {g, dgp_in.to(acc_type(g)).contiguous(), r_in.to(acc_type(g)).contiguous(), N, D};
}

// gp_interpolate: real dense, fake in its layout and dtype, u one value per sample on real's device.
struct InterpolateInputs {
  at::Tensor real, fake, u;
  int64_t N, D;
};

inline InterpolateInputs prepare_gp_interpolate(const at::Tensor& real_in, const at::Tensor& fake_in,
                                                const at::Tensor& u_in) {
  check_gp(real_in, "gp_interpolate");
  check_same_device(real_in, fake_in, "gp_interpolate");
  TORCH_CHECK(real_in.sizes() == fake_in.sizes(), "fastpggan_ext::gp_interpolate: real and fake shapes differ: ",
              real_in.sizes(), " vs ", fake_in.sizes());
  auto real = dense(real_in);
  const int64_t N = real.size(0), D = N ? real.numel() / N : 0;
  TORCH_CHECK(u_in.numel() == N, "fastpggan_ext::gp_interpolate: u must have one value per sample (", N, "), got ",
              u_in.numel());
  return {real, like_layout(fake_in, real).to(real.scalar_type()), u_in.to(real.device(), acc_type(real)).contiguous(),
          N, D};
}

// fade_in: high dense, low in its layout and dtype.
struct FadeInputs {
  at::Tensor low, high;
};

inline FadeInputs prepare_fade_in(const at::Tensor& low_in, const at::Tensor& high_in) {
  check_fade(low_in, high_in, "fade_in");
  auto high = dense(high_in);
  return {like_layout(low_in, high).to(high.scalar_type()), high};
}

}  // namespace fastpggan
