// KV-cache decoding on the GPU (mha_fwd_kvcache): the host-side interface of kernels/gpu/kvcache.
//
// One call = up to three launches on the caller's stream:
//   1. pre-pass (only with rotary, or an append the attention cannot take: k_new/v_new
//      rows not 16-byte aligned): k_new/v_new appended into the cache in place at
//      logical positions cache_seqlens[b] .. + seqlen_new - 1 (k rotated there), q rotated at
//      AttnParams::rotary_pos_q into a stream-ordered workspace the attention then reads; an
//      append without rotary is otherwise done by the attention (new keys read from k_new, one
//      block per (b, kv head) writes them into the cache);
//   2. attention on tensor cores: one block per (query-row block, kv head, batch, split); the
//      group's query heads are packed into the rows so the cache is read once per kv head;
//   3. combine (num_splits > 1): the splits' fp32 partial O and LSE merged into out and lse.
// On sm_90, 2 and 3 use programmatic dependent launch (each waits in-kernel for its predecessor).
// Indices the caller passes in device memory (cache_seqlens, block_table, cache_batch_idx,
// cache_leftpad, rotary positions) are range-checked in the kernels: an out-of-range one is never
// dereferenced and sets the flag of its kind (KvcacheError bit i = flag i, in mapped pinned host
// memory); the host reads the flags once every attention block has checked its indices (before
// its key loop: the early report's done word, kvcache_kernel.cuh) and returns Status::Invalid
// while the kernels finish.
#pragma once
#include <string>
#include <vector>

#include "flashplus/params.h"
#include "flashplus/status.h"
#include "gpu/gpu_kernels.h"
#include "gpu/heuristics.h"

namespace flashplus::gpu {

// Kinds of out-of-range index (bit i = error flag i of the kernels; the portable path ORs the
// bits into one device word).
enum KvcacheError : int {
  kKvErrSeqlens = 1 << 0,     // cache_seqlens[b] < 0 or cache_seqlens[b] + seqlen_new > capacity
  kKvErrBlockTable = 1 << 1,  // a block_table entry of a used page outside [0, num_blocks)
  kKvErrBatchIdx = 1 << 2,    // cache_batch_idx[b] outside [0, batch_cache)
  kKvErrLeftpad = 1 << 3,     // cache_leftpad[b] outside [0, cache_seqlens[b] + seqlen_new]
  kKvErrRotary = 1 << 4,      // a rotary position outside [0, seqlen_ro)
};

// The Status for a non-zero error word: names every index kind that was out of range.
inline Status kvcache_error_status(int bits) {
  std::string m;
  auto add = [&](int bit, const char* what) {
    if (!(bits & bit)) return;
    if (!m.empty()) m += "; ";
    m += what;
  };
  add(kKvErrSeqlens, "cache_seqlens[b] + seqlen_new is negative or exceeds the cache capacity");
  add(kKvErrBlockTable, "a block_table entry of a used page is out of range [0, num_blocks)");
  add(kKvErrBatchIdx, "cache_batch_idx has an entry out of range [0, batch of k_cache)");
  add(kKvErrLeftpad, "cache_leftpad[b] is outside [0, cache_seqlens[b] + seqlen_new]");
  add(kKvErrRotary, "a rotary position is beyond rotary_cos's rows");
  if (m.empty()) return Status::Ok();
  return Status::Invalid("kv cache (checked on the device, nothing out of range was read): " + m);
}

// Ok when the tensor-core kv-cache kernels can take the call; else Unsupported with the reason.
Status kvcache_supports(const AttnParams& p);

// Runs the call with tile `cfg` (block_n, num_warps, stages; 0 = the heuristic's pick) and
// num_splits (p.num_splits > 0 wins, then cfg.num_splits > 0, else kvcache_num_splits). `check`:
// wait until every index the kernels read was checked and read the error flags (the kernels may
// still run). *used receives the
// configuration that ran. NoInstance when cfg names a tile that is not compiled.
Status run_kvcache(const AttnParams& p, const KernelConfig& cfg, const DeviceInfo& dev,
                   void* stream, bool check, KernelConfig* used);

// The portable path (kernels/gpu/fallback/kvcache.cu): the same index check (error word read
// back before anything is written), append, q rotary, then run_fwd_fallback. For the calls the
// tensor-core family does not take (fp32, head_dim not a multiple of 8, unaligned rows, HIP).
Status run_kvcache_fallback(const AttnParams& p, void* stream);

// The compiled tiles for `head_dim` (block_n, num_warps, stages), the bucket's default first.
std::vector<KernelConfig> kvcache_configs(int head_dim);

}  // namespace flashplus::gpu
