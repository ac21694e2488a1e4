// Memory and timing on any backend, so callers (the CLI, tests, bench) never include a vendor
// runtime header. On the CPU backend these are malloc/memcpy and the wall clock.
#pragma once
#include <cstddef>

#include "flashplus/api.h"
#include "flashplus/status.h"
#include "flashplus/tensor.h"
#include "flashplus/tuning.h"

#include <vector>

namespace flashplus::runtime {

DeviceKind device_kind(Backend b);  // cpu -> cpu, cuda -> cuda, hip -> hip (auto: best_backend)

Status alloc(Backend b, size_t bytes, void** ptr);
void free(Backend b, void* ptr);
Status copy_to_device(Backend b, void* dst, const void* src, size_t bytes);
Status copy_to_host(Backend b, void* dst, const void* src, size_t bytes);
Status synchronize(Backend b);

// Elapsed-time measurement: device events on GPUs, steady_clock on the CPU.
// ---- for bench and autotune -------------------------------------------------------------------
// Measured peaks of the backend's first device: dense matmul TFLOP/s (the backend's own GEMM; fp32
// on the CPU) and copy bandwidth GB/s (read + written bytes per second). Unsupported when the
// backend does not measure them ("not measured").
Status measure_matmul_tflops(Backend b, double* tflops);
Status measure_copy_gbs(Backend b, double* gbs);
// The kernel configurations the backend offers autotune for `key` (empty: nothing to tune).
std::vector<KernelConfig> tuning_candidates(Backend b, const TuneKey& key);
// The configuration the most recent mha_fwd/mha_bwd on this thread ran with on backend `b`;
// false when unknown (no call yet, or the backend does not report it).
bool last_kernel_config(Backend b, KernelConfig* out);
// Bytes of last-level cache a benchmark must exceed so repeated runs do not measure the cache:
// 64 MiB on GPUs (a default above every current L2), 0 on the CPU (bench rotates 2 sets).
size_t default_l2_bytes(Backend b);
// Keeps the backend's default stream busy for about `us` microseconds (one spinning thread), so
// what the host enqueues next starts on the device only after the host has enqueued it: the
// peers' way of timing (`flashplus bench --timing stream`, docs/BENCH.md). Unsupported on the CPU
// backend (nothing there runs behind the host's back) and where the backend has no delay kernel.
Status delay(Backend b, double us);
// Enqueues, on the backend's default stream, a write of `bytes` of zeros into a scratch buffer
// of the device (kept for later calls): what triton's do_bench does before each sample to clear
// the L2 (`flashplus bench --timing flush`, docs/BENCH.md). The next call then starts with the
// memory busy and the L2 full of dirty lines, as behind another kernel's writes, and the host has
// enqueued it before it starts. Unsupported on the CPU backend.
Status flush_l2(Backend b, size_t bytes);

class Timer {
 public:
  explicit Timer(Backend b);
  ~Timer();
  Timer(const Timer&) = delete;
  Timer& operator=(const Timer&) = delete;
  void start();
  // Milliseconds since start(), after waiting for the device.
  double stop_ms();

 private:
  Backend backend_;
  void* impl_ = nullptr;
};

}  // namespace flashplus::runtime
