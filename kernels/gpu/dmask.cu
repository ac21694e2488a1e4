// The GPU backends' S_dmask pass (return_softmax): each element of the caller's
// (batch, nheads, rows, cols) buffer from the rule in dmask.h, after the forward wrote lse.
// Portable (no tensor cores): verification sized, one fp32 dot product per element. Compiled by
// nvcc and hipcc alike.
#include <string>

#include "dmask.h"
#include "gpu/gpu_kernels.h"
#include "platform/gpu_runtime.h"
#include "platform/types.h"

namespace flashplus::gpu {
namespace {

constexpr int kDmaskThreads = 128;  // key columns per block
constexpr int kMaxRowsPerGrid = 65535;

// grid.x = (b * nheads) * column blocks, grid.y strides over the rows.
template <class T>
__global__ void __launch_bounds__(kDmaskThreads) dmask_kernel(const AttnParams p) {
  __shared__ float sq_row[256];
  const int col_blocks = p.s_dmask_cols / kDmaskThreads;  // cols is a multiple of 128
  const int bh = blockIdx.x / col_blocks, cb = blockIdx.x % col_blocks;
  const int b = bh / p.nheads, h = bh % p.nheads, hk = h / p.group();
  const int j = cb * kDmaskThreads + threadIdx.x;
  const int sq = p.actual_seqlen_q(b), sk = p.actual_seqlen_k(b);
  const T* q = static_cast<const T*>(p.q);
  const T* k = static_cast<const T*>(p.k);
  T* out = static_cast<T*>(p.s_dmask);
  for (int i = blockIdx.y; i < p.s_dmask_rows; i += gridDim.y) {
    __syncthreads();  // the previous row's reads of sq_row are done
    if (i < sq)
      for (int c = threadIdx.x; c < p.head_dim; c += kDmaskThreads)
        sq_row[c] = platform::to_float(q[p.q_offset(p.q_stride, b, i) + h * p.q_stride.head + c]);
    __syncthreads();
    float dot = 0.f, lse = 0.f;
    if (i < sq && j < sk) {
      const T* kr = k + p.kv_offset(p.k_stride, b, j) + static_cast<int64_t>(hk) * p.k_stride.head;
      for (int c = 0; c < p.head_dim; ++c) dot += sq_row[c] * platform::to_float(kr[c]);
      lse = p.softmax_lse[p.lse_offset(b, h, i)];
    }
    out[detail::dmask_offset(p, b, h, i, j)] =
        platform::from_float<T>(detail::dmask_value(p, b, h, i, j, sq, sk, dot, lse));
  }
}

template <class T>
Status launch(const AttnParams& p, gpuStream_t stream) {
  const long long blocks = static_cast<long long>(p.batch) * p.nheads * (p.s_dmask_cols / kDmaskThreads);
  if (blocks == 0 || p.s_dmask_rows == 0) return Status::Ok();
  if (blocks > 0x7fffffffLL) return Status::Unsupported("S_dmask: too many blocks");
  const dim3 grid(static_cast<unsigned>(blocks),
                  static_cast<unsigned>(p.s_dmask_rows < kMaxRowsPerGrid ? p.s_dmask_rows : kMaxRowsPerGrid));
  dmask_kernel<T><<<grid, kDmaskThreads, 0, stream>>>(p);
  FLASHPLUS_GPU_CHECK_LAUNCH("dmask_kernel");
  return Status::Ok();
}

}  // namespace

Status run_dmask(const AttnParams& p, void* stream_ptr) {
  if (p.head_dim > 256) return Status::Unsupported("S_dmask: head_dim > 256");
  const auto stream = static_cast<gpuStream_t>(stream_ptr);
  switch (p.dtype) {
    case DType::f32: return launch<float>(p, stream);
    case DType::f16: return launch<platform::half_t>(p, stream);
    case DType::bf16: return launch<platform::bf16_t>(p, stream);
    default: break;
  }
  return Status::Unsupported("S_dmask: dtype " + std::string(dtype_name(p.dtype)));
}

}  // namespace flashplus::gpu
