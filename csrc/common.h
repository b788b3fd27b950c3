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

}  // namespace fastpggan
