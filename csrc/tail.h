// The partial vector at the end of a flat tensor: its count < V elements moved lane by lane. Used by the CUDA
// kernels (ops_cuda.cu) and compiled for the host by tests/test_ext_tail.py, which checks every count and dtype.
// Each loop is unrolled over the V lanes and each lane is predicated on `count`, so the arrays are indexed by
// constants only and stay in registers. A loop bounded by the runtime count (`for k < count`) forced them onto the
// stack: local-memory loads and stores in the vector path of every fp16, bf16 and fp64 flat kernel.
#pragma once

#if defined(__CUDACC__)
#define FASTPGGAN_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FASTPGGAN_HOST_DEVICE inline
#endif

namespace fastpggan {

// out[k] = p[k] for k < count, T() (zero) for the lanes after it; p[count..] is never read.
template <typename T, int V>
FASTPGGAN_HOST_DEVICE void load_tail(const T* p, int count, T (&out)[V]) {
#pragma unroll
  for (int k = 0; k < V; ++k) {
    if (k < count)
      out[k] = p[k];
    else
      out[k] = T();
  }
}

// p[k] = in[k] for k < count; p[count..] is never written.
template <typename T, int V>
FASTPGGAN_HOST_DEVICE void store_tail(T* p, int count, const T (&in)[V]) {
#pragma unroll
  for (int k = 0; k < V; ++k)
    if (k < count) p[k] = in[k];
}

}  // namespace fastpggan
