// run_kvcache: which calls the tensor-core kv-cache kernels take, and the dtype instance.
#include <cstdint>
#include <string>

#include "flashplus_gen/instances.h"
#include "gpu/fwd/fwd_instances.h"  // bucket_of
#include "gpu/kvcache/kvcache.h"
#include "platform/arch.h"
#include "platform/gpu_runtime.h"
#if !FLASHPLUS_VENDOR_HIP
#include "gpu/kvcache/kvcache_kernel.cuh"  // tile lists and declarations (nothing instantiated)
#endif

namespace flashplus::gpu {

Status kvcache_supports(const AttnParams& p) {
#if FLASHPLUS_VENDOR_HIP
  (void)p;
  return Status::Unsupported("kvcache: the AMD path is not implemented yet");
#else
  if (!platform::arch_has_mma_sync(current_arch(p.device_index)))
    return Status::Unsupported("kvcache: needs mma.sync (sm_80 or newer)");
  if (p.dtype != DType::f16 && p.dtype != DType::bf16)
    return Status::Unsupported(std::string("kvcache: ") + dtype_name(p.dtype) +
                               " storage is not implemented on the GPU yet (fp16/bf16 only)");
  if (p.head_dim % 8 != 0 || p.head_dim > 256)
    return Status::Unsupported("kvcache: head_dim " + std::to_string(p.head_dim) +
                               " is not implemented on the GPU yet (multiples of 8 up to 256)");
  // A subset build (FLASHPLUS_DTYPES / FLASHPLUS_HEAD_DIMS) sends what it left out to the
  // portable path.
  bool built_dtype = false;
  bool built_dim = false;
  const int d = tc::bucket_of(tc::kKvcacheHeadDims, p.head_dim);
#define FLASHPLUS_KV_BUILT_DTYPE(DT) built_dtype = built_dtype || p.dtype == DType::DT;
#define FLASHPLUS_KV_BUILT_DIM(D) built_dim = built_dim || d == D;
  FLASHPLUS_KVCACHE_INSTANCES(FLASHPLUS_KV_BUILT_DTYPE)
  FLASHPLUS_KVCACHE_BUILT_HEAD_DIMS(FLASHPLUS_KV_BUILT_DIM)
#undef FLASHPLUS_KV_BUILT_DTYPE
#undef FLASHPLUS_KV_BUILT_DIM
  if (!built_dtype || !built_dim)
    return Status::Unsupported(std::string("kvcache: ") + dtype_name(p.dtype) + " d" +
                               std::to_string(d) + " is not compiled into this build");
  // 16-byte copies of q, cache rows and out: 16-byte aligned bases, strides of 8 elements.
  auto aligned = [](const void* ptr, const Strides3& st) {
    return reinterpret_cast<uintptr_t>(ptr) % 16 == 0 && st.row % 8 == 0 && st.head % 8 == 0 &&
           st.batch % 8 == 0;
  };
  if (!aligned(p.q, p.q_stride) || !aligned(p.k, p.k_stride) || !aligned(p.v, p.v_stride) ||
      !aligned(p.out, p.out_stride))
    return Status::Unsupported(
        "kvcache: q, k_cache, v_cache and out need 16-byte aligned rows on the GPU (strides in "
        "multiples of 8 elements)");
  return Status::Ok();
#endif
}

Status run_kvcache(const AttnParams& p, const KernelConfig& cfg, const DeviceInfo& dev,
                   void* stream, bool check, KernelConfig* used) {
  FLASHPLUS_RETURN_IF_ERROR(kvcache_supports(p));
#if FLASHPLUS_VENDOR_HIP
  (void)cfg; (void)dev; (void)stream; (void)check; (void)used;
  return Status::NoInstance("kvcache: not compiled for HIP");
#else
  auto s = static_cast<cudaStream_t>(stream);
  // The built dtypes (FLASHPLUS_DTYPES may leave one out; kvcache_supports admits f16 and bf16).
#define FLASHPLUS_KV_RUN(DT) \
  if (p.dtype == DType::DT) return kv::run_##DT(p, cfg, dev, s, check, used);
  FLASHPLUS_KVCACHE_INSTANCES(FLASHPLUS_KV_RUN)
#undef FLASHPLUS_KV_RUN
  (void)s;
  return Status::NoInstance(std::string("kvcache: ") + dtype_name(p.dtype) +
                            " is not compiled into this build");
#endif
}

std::vector<KernelConfig> kvcache_configs(int head_dim) {
  std::vector<KernelConfig> r;
#if !FLASHPLUS_VENDOR_HIP
  const int d = tc::bucket_of(tc::kKvcacheHeadDims, head_dim);
  const KernelConfig def = kvcache_default_tile(head_dim);
#define FLASHPLUS_KV_CFG(DD, BN, NW, ST) \
  if (DD == d) {                         \
    KernelConfig c;                      \
    c.block_m = kv::kRows;               \
    c.block_n = BN;                      \
    c.num_warps = NW;                    \
    c.stages = ST;                       \
    const bool is_def = BN == def.block_n && NW == def.num_warps && ST == def.stages; \
    r.insert(is_def ? r.begin() : r.end(), c); \
  }
  FLASHPLUS_KV_TILES_ALL(FLASHPLUS_KV_CFG)
#undef FLASHPLUS_KV_CFG
#else
  (void)head_dim;
#endif
  return r;
}

}  // namespace flashplus::gpu
