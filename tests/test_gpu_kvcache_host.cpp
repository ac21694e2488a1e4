// Host-side pieces of the GPU kv-cache path (kernels/gpu/kvcache) that need no GPU: the split-KV
// heuristic, the default tile, and the Status built from the kernels' error word.
#include <catch2/catch.hpp>

#include "gpu/heuristics.h"
#include "gpu/kvcache/kvcache.h"

using namespace flashplus;
using namespace flashplus::gpu;

namespace {

// A decoding step as the bench runs it: GQA 32/8, d 128, one new token on a cache of `cache`.
AttnParams decode(int batch, int cache, int sq = 1) {
  AttnParams p;
  p.batch = batch;
  p.seqlen_q = sq;
  p.seqlen_k = cache + sq;
  p.nheads = 32;
  p.nheads_k = 8;
  p.head_dim = 128;
  p.dtype = DType::bf16;
  p.is_kvcache = true;
  p.num_splits = 0;
  return p;
}

DeviceInfo h100() {
  DeviceInfo d;
  d.arch = 90;
  d.multiprocessors = 132;
  d.smem_per_block_optin = 227 * 1024;
  return d;
}

}  // namespace

TEST_CASE("kv-cache blocks pack the query heads of a kv head into 16-row blocks", "[gpu][kvcache]") {
  CHECK(kvcache_blocks(decode(1, 1000)) == 8);        // 1 token x 4 heads: one block per kv head
  CHECK(kvcache_blocks(decode(2, 1000, 4)) == 16);    // 4 x 4 = 16 rows: still one
  CHECK(kvcache_blocks(decode(1, 1000, 5)) == 16);    // 20 rows: two
}

TEST_CASE("kv-cache split heuristic fills 0.64 of a wave of the H100 with the fewest splits",
          "[gpu][kvcache]") {
  const DeviceInfo dev = h100();
  // The decode workloads of configs/models/llama3-8b.json at the default tile (32 keys, 6 blocks
  // per SM: 792 slots, 0.64 of a wave = 506.9 blocks; docs/PERF.md round 3 swept these).
  CHECK(kvcache_num_splits(decode(1, 131072), dev, 32, 6) == 64);  // 512 blocks
  CHECK(kvcache_num_splits(decode(8, 16384), dev, 32, 6) == 8);    // 512 blocks
  CHECK(kvcache_num_splits(decode(64, 4096), dev, 32, 6) == 1);    // 512 blocks already
  // Fewer slots per SM: fewer splits.
  CHECK(kvcache_num_splits(decode(1, 131072), dev, 64, 1) == 11);  // 88 blocks >= 84.5
  CHECK(kvcache_num_splits(decode(1, 131072), dev, 64, 3) == 32);  // 256 >= 253.4
  CHECK(kvcache_num_splits(decode(8, 16384), dev, 64, 3) == 4);    // 256 >= 253.4
  // Every split keeps at least 4 key tiles: a short cache is split less (or not at all).
  CHECK(kvcache_num_splits(decode(1, 511), dev, 64, 1) == 2);
  CHECK(kvcache_num_splits(decode(1, 100), dev, 64, 1) == 1);
  // Never more than 128.
  DeviceInfo big = dev;
  big.multiprocessors = 4096;
  CHECK(kvcache_num_splits(decode(1, 1 << 24), big, 64, 8) == 128);
}

TEST_CASE("kv-cache splits keep the partial results' traffic small", "[gpu][kvcache]") {
  // GQA 32/8 bf16: 8 bytes x 4 rows per split against 4 bytes per key: splits <= sk / 256.
  CHECK(kvcache_max_splits_for_traffic(decode(1, 131072)) == 128);
  CHECK(kvcache_max_splits_for_traffic(decode(64, 4096)) == 16);
  CHECK(kvcache_max_splits_for_traffic(decode(1, 1023)) == 4);
  // A short cache: at most sk / 256 splits even where more would fill the device.
  CHECK(kvcache_num_splits(decode(1, 2047), h100(), 32, 6) == 8);
}

TEST_CASE("kv-cache split count given by the caller wins", "[gpu][kvcache]") {
  AttnParams p = decode(64, 4096);
  p.num_splits = 5;
  CHECK(kvcache_num_splits(p, h100(), 64, 1) == 5);
  p.num_splits = 1;
  CHECK(kvcache_num_splits(p, h100(), 64, 1) == 1);
}

TEST_CASE("kv-cache default tiles keep bytes in flight per head-dim bucket", "[gpu][kvcache]") {
  const KernelConfig c128 = kvcache_default_tile(128);
  CHECK(c128.block_n == 32);  // 6 blocks of 2 warps per SM (docs/PERF.md tile sweep)
  CHECK(c128.num_warps == 2);
  CHECK(c128.stages >= 2);
  CHECK(c128.block_n % (16 * c128.num_warps) == 0);  // each warp takes whole k16 steps
  const KernelConfig c256 = kvcache_default_tile(256);
  CHECK(c256.block_n % (16 * c256.num_warps) == 0);
  CHECK(kvcache_default_tile(96).block_n == c128.block_n);
  CHECK(kvcache_default_tile(40).block_n % (16 * kvcache_default_tile(40).num_warps) == 0);
}

TEST_CASE("kv-cache device error word becomes an Invalid status naming the index", "[gpu][kvcache]") {
  CHECK(kvcache_error_status(0).ok());
  const Status bt = kvcache_error_status(kKvErrBlockTable);
  CHECK(bt.code() == StatusCode::invalid_args);
  CHECK(bt.message().find("block_table") != std::string::npos);
  CHECK(bt.message().find("cache_seqlens") == std::string::npos);
  const Status both = kvcache_error_status(kKvErrSeqlens | kKvErrRotary);
  CHECK(both.message().find("cache_seqlens") != std::string::npos);
  CHECK(both.message().find("rotary") != std::string::npos);
  CHECK(kvcache_error_status(kKvErrBatchIdx).message().find("cache_batch_idx") != std::string::npos);
  CHECK(kvcache_error_status(kKvErrLeftpad).message().find("cache_leftpad") != std::string::npos);
}

TEST_CASE("tile_selected: the default runs a family's first tile, a named tile its own",
          "[gpu][tuning]") {
  using flashplus::KernelConfig;
  using flashplus::gpu::tile_selected;
  const KernelConfig dflt{};
  CHECK(tile_selected(dflt, 128, 64, 4, /*first=*/true));
  CHECK_FALSE(tile_selected(dflt, 128, 64, 4, /*first=*/false));  // a later tile of the list
  KernelConfig named{};
  named.block_m = 64;
  named.block_n = 128;
  CHECK(tile_selected(named, 64, 128, 4, false));  // num_warps 0 = any
  CHECK(tile_selected(named, 64, 128, 8, true));
  CHECK_FALSE(tile_selected(named, 128, 64, 4, true));  // block_m/block_n swapped
  named.num_warps = 8;
  CHECK(tile_selected(named, 64, 128, 8, false));
  CHECK_FALSE(tile_selected(named, 64, 128, 4, true));
}
