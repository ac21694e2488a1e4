// Portable kv-cache preparation for the fallback attention (any dtype, any head_dim <= 256, any
// vendor): what the tensor-core kv-cache family (kernels/gpu/kvcache) does not take runs here.
//   1. check: every index the call reads (cache_seqlens, cache_batch_idx, cache_leftpad, the used
//      block_table entries, rotary positions) is range-checked on the device into an error word
//      that the host reads back before anything is written (nothing out of range is ever read);
//   2. append: k_new (rotated at its position when rotary is on) and v_new written into the cache
//      at cache_seqlens[b] + t, arithmetic in fp32 and rounded to the storage type as on the CPU;
//   3. q rotated at AttnParams::rotary_pos_q into a workspace the attention reads instead of q.
// Then the portable fallback forward reads the cache through AttnParams::kv_offset.
#include <string>

#include "gpu/fallback/common.h"
#include "gpu/gpu_kernels.h"
#include "gpu/kvcache/kvcache.h"  // the error-word bits and their Status
#include "platform/gpu_runtime.h"

namespace flashplus::gpu {
namespace fallback {
namespace {

// One thread per sequence b.
__global__ void kv_check_kernel(const AttnParams p, int* err) {
  const int b = blockIdx.x * blockDim.x + threadIdx.x;
  if (b >= p.batch) return;
  int bits = 0;
  const int cs = p.cache_seqlens ? p.cache_seqlens[b] : p.seqlen_k - p.seqlen_new;
  const long long end = static_cast<long long>(cs) + p.seqlen_new;
  if (cs < 0 || end > p.seqlen_k) bits |= kKvErrSeqlens;
  if (p.cache_batch_idx) {
    const int r = p.cache_batch_idx[b];
    if (r < 0 || r >= p.batch_cache) bits |= kKvErrBatchIdx;
  }
  if (p.cache_leftpad) {
    const int lp = p.cache_leftpad[b];
    if (lp < 0 || lp > end) bits |= kKvErrLeftpad;
  }
  if (p.block_table && !(bits & kKvErrSeqlens)) {
    const long long pages = (end + p.page_block_size - 1) / p.page_block_size;
    for (long long i = 0; i < pages; ++i) {
      const int blk = p.block_table[static_cast<int64_t>(b) * p.block_table_batch_stride + i];
      if (blk < 0 || blk >= p.num_blocks) bits |= kKvErrBlockTable;
    }
  }
  if (p.rotary_dim > 0) {
    // Largest position rotated: the last appended key, or q's last row (rotary_pos_q).
    const long long qmax = p.has_window() ? static_cast<long long>(cs) + p.seqlen_q - 1 : cs;
    const long long kmax = static_cast<long long>(cs) + p.seqlen_new - 1;
    const long long top = qmax > kmax ? qmax : kmax;
    if (cs < 0 || top >= p.seqlen_ro) bits |= kKvErrRotary;
  }
  if (bits) atomicOr(err, bits);
}

// Channel c of row x (fp32 from storage) after rotary at position pos (API.md §7.1).
template <class T>
__device__ float rotated(const AttnParams& p, const T* x, int c, int pos) {
  const float xc = platform::to_float(x[c]);
  if (c >= p.rotary_dim) return xc;
  const int half = p.rotary_dim / 2;
  const T* cs = static_cast<const T*>(p.rotary_cos) + static_cast<int64_t>(pos) * half;
  const T* sn = static_cast<const T*>(p.rotary_sin) + static_cast<int64_t>(pos) * half;
  int j, partner;
  bool first;
  if (p.rotary_interleaved) {
    j = c / 2;
    first = c % 2 == 0;
    partner = first ? c + 1 : c - 1;
  } else {
    first = c < half;
    j = first ? c : c - half;
    partner = first ? c + half : c - half;
  }
  const float co = platform::to_float(cs[j]), si = platform::to_float(sn[j]);
  const float xp = platform::to_float(x[partner]);
  return first ? xc * co - xp * si : xc * co + xp * si;
}

// grid (seqlen_new, nheads_k, batch): append k_new (rotated) and v_new.
template <class T>
__global__ void kv_append_kernel(const AttnParams p) {
  const int t = blockIdx.x, hk = blockIdx.y, b = blockIdx.z;
  const int pos = p.cache_seqlens[b] + t;
  const T* kn = static_cast<const T*>(p.k_new) + b * p.knew_stride.batch +
                static_cast<int64_t>(t) * p.knew_stride.row + hk * p.knew_stride.head;
  const T* vn = static_cast<const T*>(p.v_new) + b * p.vnew_stride.batch +
                static_cast<int64_t>(t) * p.vnew_stride.row + hk * p.vnew_stride.head;
  T* kc = static_cast<T*>(p.kcache) + p.cache_offset(p.k_stride, b, pos) +
          static_cast<int64_t>(hk) * p.k_stride.head;
  T* vc = static_cast<T*>(p.vcache) + p.cache_offset(p.v_stride, b, pos) +
          static_cast<int64_t>(hk) * p.v_stride.head;
  for (int c = threadIdx.x; c < p.head_dim; c += blockDim.x) {
    kc[c] = platform::from_float<T>(p.rotary_dim > 0 ? rotated(p, kn, c, pos)
                                                     : platform::to_float(kn[c]));
    vc[c] = vn[c];
  }
}

// grid (seqlen_q, nheads, batch): q rotated into the contiguous (b, sq, h, d) workspace.
template <class T>
__global__ void q_rotary_kernel(const AttnParams p, T* qrot) {
  const int i = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const T* q = static_cast<const T*>(p.q) + p.q_offset(p.q_stride, b, i) +
               static_cast<int64_t>(h) * p.q_stride.head;
  T* dst = qrot + ((static_cast<int64_t>(b) * p.seqlen_q + i) * p.nheads + h) * p.head_dim;
  const int pos = p.rotary_pos_q(b, i);
  for (int c = threadIdx.x; c < p.head_dim; c += blockDim.x)
    dst[c] = platform::from_float<T>(rotated(p, q, c, pos));
}

// Runs the index check and reads its error word back (synchronises the stream).
Status check_indices(const AttnParams& p, gpuStream_t stream, int* err) {
  int bits = 0;
  FLASHPLUS_GPU_CHECK(gpuMemsetAsync(err, 0, sizeof(int), stream));
  kv_check_kernel<<<(p.batch + 127) / 128, 128, 0, stream>>>(p, err);
  FLASHPLUS_GPU_CHECK_LAUNCH("kv_check_kernel");
  FLASHPLUS_GPU_CHECK(gpuMemcpyAsync(&bits, err, sizeof(int), gpuMemcpyDeviceToHost, stream));
  FLASHPLUS_GPU_CHECK(gpuStreamSynchronize(stream));
  return kvcache_error_status(bits);
}

// q rotated into qrot, then the fallback attention reading it.
template <class T>
Status rotate_and_run(const AttnParams& p, gpuStream_t stream, T* qrot) {
  q_rotary_kernel<T><<<dim3(p.seqlen_q, p.nheads, p.batch), 128, 0, stream>>>(p, qrot);
  FLASHPLUS_GPU_CHECK_LAUNCH("q_rotary_kernel");
  AttnParams r = p;
  r.q = qrot;
  r.q_stride = {static_cast<int64_t>(p.seqlen_q) * p.nheads * p.head_dim,
                static_cast<int64_t>(p.nheads) * p.head_dim, p.head_dim};
  FLASHPLUS_RETURN_IF_ERROR(run_fwd_fallback(r, stream));
  // The workspace must outlive the attention: the caller frees it after this drains.
  FLASHPLUS_GPU_CHECK(gpuStreamSynchronize(stream));
  return Status::Ok();
}

template <class T>
Status prepare_and_run(const AttnParams& p, gpuStream_t stream) {
  int* err = nullptr;
  FLASHPLUS_GPU_CHECK(gpuMalloc(reinterpret_cast<void**>(&err), sizeof(int)));
  const Status checked = check_indices(p, stream, err);
  (void)gpuFree(err);
  FLASHPLUS_RETURN_IF_ERROR(checked);
  if (p.seqlen_new > 0) {
    kv_append_kernel<T><<<dim3(p.seqlen_new, p.nheads_k, p.batch), 128, 0, stream>>>(p);
    FLASHPLUS_GPU_CHECK_LAUNCH("kv_append_kernel");
  }
  if (p.rotary_dim == 0 || p.seqlen_q == 0) return run_fwd_fallback(p, stream);
  T* qrot = nullptr;
  const size_t n = static_cast<size_t>(p.batch) * p.seqlen_q * p.nheads * p.head_dim;
  FLASHPLUS_GPU_CHECK(gpuMalloc(reinterpret_cast<void**>(&qrot), n * sizeof(T)));
  const Status ran = rotate_and_run<T>(p, stream, qrot);
  if (!ran.ok()) (void)gpuStreamSynchronize(stream);  // drain before freeing the workspace
  (void)gpuFree(qrot);
  return ran;
}

}  // namespace
}  // namespace fallback

Status run_kvcache_fallback(const AttnParams& p, void* stream_ptr) {
  using namespace fallback;
  if (p.head_dim < 1 || p.head_dim > kMaxHeadDim)
    return Status::Unsupported("kv cache fallback: head_dim " + std::to_string(p.head_dim));
  const auto stream = static_cast<gpuStream_t>(stream_ptr);
  switch (p.dtype) {
    case DType::f32: return prepare_and_run<float>(p, stream);
    case DType::f16: return prepare_and_run<platform::half_t>(p, stream);
    case DType::bf16: return prepare_and_run<platform::bf16_t>(p, stream);
    default: break;
  }
  return Status::Unsupported("kv cache fallback: dtype " + std::string(dtype_name(p.dtype)));
}

}  // namespace flashplus::gpu
