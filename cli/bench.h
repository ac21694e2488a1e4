// Benchmark machinery shared by `flashplus bench` and `flashplus autotune` (docs/BENCH.md):
// the timing loop (warm-up, then samples timed with runtime::Timer until the relative noise is low
// or the time budget is spent), buffer rotation past the cache, the byte convention, measured
// peaks cached per device fingerprint, and the provenance written into every result file.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common.h"
#include "config.h"
#include "flashplus/api.h"
#include "flashplus/tuning.h"

namespace flashplus::cli {

struct BenchSettings {
  double min_time_s = 0.5;  // sample at least this much timed time before the noise may stop it
  double max_time_s = 5.0;  // per case: stop after this much wall time (warm-up included)
  double max_noise = 0.01;  // stop once stddev/mean of the samples is at most this
  int min_samples = 3;      // ... and at least this many samples were taken
  int warmup = 1;           // untimed calls first
  int threads = 0;          // CPU backend threads (0 = all)
  // How a sample is timed (docs/BENCH.md): "call" = events around the call on an idle device
  // (the host's work before the first kernel is inside); "stream" = the same events, with a
  // delay kernel of delay_us enqueued before the start event, so the call is enqueued before the
  // start event fires (the device's own time); "flush" = triton's do_bench protocol exactly:
  // flush_bytes of zeros written on the device before the start event (the L2 cleared and left
  // dirty, the memory busy, the call enqueued before it starts): how the peers are timed.
  std::string timing = "call";
  double delay_us = 300;
  size_t flush_bytes = 256000000;  // do_bench's 256e6-byte cache-clearing buffer
};
// The device work enqueued before a sample's start event for `s.timing` (nothing for "call").
void before_sample(const BenchSettings& s, Backend be);
// Throws a usage error when `s.timing` is unknown or `be` cannot time that way (the CPU backend
// has no stream: --timing stream and flush are refused there).
void check_timing(const BenchSettings& s, Backend be);

struct BenchStats {
  int samples = 0;
  double median_ms = 0, min_ms = 0, max_ms = 0, mean_ms = 0;
  double noise = 0;        // relative standard deviation of the samples
  bool converged = false;  // stopped by the noise rule (not by --max-time)
  double seconds = 0;      // wall time of the case, warm-up included
  int buffer_sets = 0;     // input sets rotated across samples
};

// One benchmark case: a model workload at one (dtype, batch, seqlen) in one mode.
struct BenchCase {
  const ModelConfig* model = nullptr;
  DType dtype = DType::bf16;
  int batch = 1, seqlen = 1;  // decode: seqlen = cache_len; varlen: the longest sequence
  std::string mode;  // "fwd" | "bwd" | "fwd+bwd"
  // Workload kind (docs/CONFIGS.md): "prefill" (mha_fwd/bwd), "decode" (mha_fwd_kvcache: one
  // step of model->decode_seqlen_q tokens appended to a cache of `seqlen` keys; page_size 0 =
  // contiguous cache), "varlen" (mha_varlen_fwd/bwd over the packed sequences `varlen`).
  std::string kind = "prefill";
  int page_size = 0, num_splits = 0;
  std::vector<int> varlen;
};
BenchCase bench_case_of(const Workload& w, const std::string& mode);

// Decode and varlen cases: one input set on the device; run() makes one timed call (the forward,
// the backward after a setup forward, or both, by the case's mode).
class WorkloadRunner {
 public:
  WorkloadRunner(const BenchCase& c, Backend be, int threads, const KernelConfig* config_override,
                 int set_index);
  ~WorkloadRunner();
  void setup();  // untimed: the forward whose out/lse a "bwd" case needs
  void run();
  size_t set_bytes() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The cases of `work` in `modes` (each distinct (model, dtype, batch, seqlen) once per mode);
// empty modes = each workload in its own mode.
std::vector<BenchCase> bench_cases(const std::vector<Workload>& work,
                                   const std::vector<std::string>& modes);

// FLOPs of a case by THE convention of flops.h (fwd+bwd = fwd + bwd = 3.5x fwd). varlen: the sum
// over its sequences. decode: sq = decode_seqlen_q, sk = cache_len + sq (causal with one query
// row masks nothing and is counted unmasked).
double case_flops(const BenchCase& c);
// Minimum memory traffic of a case in bytes (docs/BENCH.md): fwd reads q, k, v once and writes out
// and lse (fp32); bwd reads q, k, v, out, dout, lse and writes dq, dk, dv; fwd+bwd is the sum.
// varlen: the sum over its sequences. decode: the KV-cache read only, 2 * b * (cache_len + sq) *
// hk * d * dtype bytes (what bounds a decoding step).
double case_bytes(const BenchCase& c);
// The tuned-table key a case's `pass` ("fwd" or "bwd") runs under on `be` (arch "cpu" on the
// CPU backend, the device arch on GPUs).
TuneKey case_key(const BenchCase& c, Backend be, const std::string& pass);
// "b4 sq4096 sk4096 h32 hk32 d128"
std::string case_shape(const BenchCase& c);

// Thrown by bench_case when the backend answers unsupported/no_instance for the case (bench reports
// the case as unsupported and goes on).
class UnsupportedCase : public Error {
 public:
  explicit UnsupportedCase(const std::string& m) : Error(kExitRuntime, m) {}
};

struct BenchResult {
  BenchStats stats;
  std::map<std::string, KernelConfig> configs;  // pass ("fwd"/"bwd") -> config it ran with
};

// Allocates the rotating input sets on `be` and times the case. `config_override` (may be null)
// is forwarded in RunOptions. Throws cli::Error on library errors.
BenchResult bench_case(const BenchCase& c, Backend be, const BenchSettings& s,
                       const KernelConfig* config_override = nullptr);

// The stop rule on its own (unit-testable): given the samples so far (ms), the timed and wall
// seconds spent, whether to take another sample.
bool keep_sampling(const std::vector<double>& samples_ms, double wall_s, const BenchSettings& s,
                   bool* converged);
// Median/min/max/mean/noise of samples.
BenchStats summarize(std::vector<double> samples_ms);

// ---- peaks ------------------------------------------------------------------------------------
struct Peaks {
  bool measured = false;
  double matmul_tflops = 0, copy_gbs = 0;
  std::string device, date, source;  // source: cache file, or why not measured
};
// $XDG_CACHE_HOME/flashplus/peaks.json, else ~/.cache/flashplus/peaks.json.
std::string peaks_cache_path();
// The cached peaks of `fingerprint` measured on a device named `device` (not measured if absent).
Peaks cached_peaks(Backend be);
// Measures the peaks of `be` now and stores them in the cache (other devices' entries are kept).
// Returns not-measured (with the reason) when the backend has no measurement.
Peaks measure_peaks(Backend be);

// ---- provenance -------------------------------------------------------------------------------
std::string utc_now_iso();       // "2026-11-25T23:10:00Z"
std::string git_revision();      // configure-time `git rev-parse --short HEAD`, or "unknown"
std::string compiler_id();       // "gcc 12.2.0" / __VERSION__
// The first device of `be` (throws when there is none).
DeviceDesc backend_device(Backend be);
// Files are written through file_io.h (write_file_atomic, FileSet).

}  // namespace flashplus::cli
