// Tuned tables: run-time kernel configurations, as data (STYLE.md 5).
//
// A table maps a kernel key (backend arch, dtype, head-dim bucket, mask kind, mode) to the
// configuration `flashplus autotune` measured best. The library loads the table for the current
// device once (thread-safe) and falls back to built-in heuristics for missing keys. A corrupt,
// foreign-version or unreadable table never crashes and never picks a wrong kernel: one warning
// line on stderr, then the heuristics. Schema: docs/TUNING.md.
#pragma once
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "flashplus/api.h"
#include "flashplus/params.h"
#include "flashplus/status.h"
#include "flashplus/tensor.h"

namespace flashplus {

// One kernel configuration. 0 in a field means "the kernel family's default".
struct KernelConfig {
  int block_m = 0;     // query rows per tile / thread block
  int block_n = 0;     // key columns per main-loop step
  int num_warps = 0;   // GPU: warps per block
  int stages = 0;      // GPU: shared-memory pipeline depth
  int num_splits = 0;  // split-KV pieces (decode); 0 = choose
  bool operator==(const KernelConfig& o) const {
    return block_m == o.block_m && block_n == o.block_n && num_warps == o.num_warps &&
           stages == o.stages && num_splits == o.num_splits;
  }
  bool operator!=(const KernelConfig& o) const { return !(*this == o); }
  // "m128n64w4s2k1"
  std::string to_string() const;
};

// Mask kinds that select different kernels/configs.
enum class MaskKind { none, causal, window };
const char* mask_kind_name(MaskKind m);
// The mask kind of a call, from the arguments as passed to mha_fwd: causal with an unbounded left
// side is `causal`; any other bounded side (or causal with a left window) is `window`.
MaskKind mask_kind_for(bool is_causal, int window_left, int window_right);
// The same for validated, canonicalised params (pure causal keeps its bounded left side).
inline MaskKind mask_kind_of(const AttnParams& p) {
  return p.is_causal ? MaskKind::causal : p.has_window() ? MaskKind::window : MaskKind::none;
}

struct TuneKey {
  std::string arch;  // "sm_90", "gfx90a", "cpu"
  DType dtype = DType::bf16;
  int head_dim_bucket = 128;  // head_dim_bucket(head_dim)
  MaskKind mask = MaskKind::none;
  std::string mode = "fwd";   // "fwd" | "bwd"
  // Query rows of the call (batch * nheads * seqlen_q, or nheads * total_q), bucketed by
  // rows_bucket(): small grids want other tiles than large ones (a 512-token batch of one
  // sequence does not fill an H100 with 128-row tiles).
  int rows_bucket = 20;
  // "sm_90/bf16/d128/causal/fwd/r16": the table's key string.
  std::string to_string() const;
  static bool parse(const std::string& s, TuneKey* out);
};

// Query rows are tuned in buckets of powers of 4: r12 (<= 4096 rows), r14, r16, r18, r20 (more).
inline int rows_bucket(long long rows) {
  int b = 12;
  while (b < 20 && rows > (1LL << b)) b += 2;
  return b;
}

// Head dims are tuned in buckets of 32 (1..32 -> 32, 33..64 -> 64, ...).
inline int head_dim_bucket(int head_dim) { return (head_dim + 31) / 32 * 32; }

// The kernel key of a validated call on a device of architecture `arch` ("sm_90", "cpu").
inline TuneKey tune_key_of(const AttnParams& p, const std::string& arch, const char* mode) {
  TuneKey k;
  k.arch = arch;
  k.dtype = p.dtype;
  k.head_dim_bucket = head_dim_bucket(p.head_dim);
  k.mask = mask_kind_of(p);
  k.mode = mode;
  const long long rows_per_head =
      p.is_varlen() ? p.total_q : static_cast<long long>(p.batch) * p.seqlen_q;
  k.rows_bucket = rows_bucket(rows_per_head * p.nheads);
  return k;
}

struct TunedEntry {
  KernelConfig config;
  std::string kernel;         // the winning instance's name
  double time_ms = 0;         // its median time on the tuning workload
  std::string runner_up;      // second best ("" if only one candidate)
  double runner_up_ms = 0;
  std::string workload;       // the shape it was tuned on, e.g. "b1 sq4096 sk4096 h32 hk32"
};

class TunedTable {
 public:
  static constexpr int kSchemaVersion = 2;  // 2: keys gained the rows bucket

  // Parse a table. Errors name the file and the offending key.
  static Status load(const std::string& path, TunedTable* out);
  static Status parse(const std::string& text, const std::string& origin, TunedTable* out);
  // Write atomically: a temp file in the same folder, then rename over `path`.
  Status save(const std::string& path) const;
  std::string dump() const;
  // Entries of `other` replace ours with the same key; other keys are kept.
  void merge(const TunedTable& other);

  const TunedEntry* find(const TuneKey& key) const;
  void set(const TuneKey& key, const TunedEntry& e) { entries_[key.to_string()] = e; }
  const std::map<std::string, TunedEntry>& entries() const { return entries_; }

  // Metadata written by autotune.
  std::string device;        // "NVIDIA H100 80GB HBM3"
  std::string fingerprint;   // "sm_90-132sm-79g": the device class it was measured on
  std::string git_revision;
  std::string created;       // ISO date

 private:
  std::map<std::string, TunedEntry> entries_;
};

// The device class a tuned table is valid for: "<arch>-<N>sm-<M>g" on GPUs (SM count, memory in
// GiB rounded: "sm_90-132sm-79g"), "cpu-<arch>" on the CPU ("cpu-x86_64").
std::string device_fingerprint(const DeviceDesc& d);
// The fingerprint of the first device of backend `b` ("" when it has none).
std::string backend_fingerprint(Backend b);

// A GPU fingerprint's parts: "sm_90-132sm-79g" = arch "sm_90", 132 SMs, 79 GiB (memory -1 when the
// fingerprint has none: "sm_90-132sm"). False for anything else (CPU fingerprints "cpu-x86_64").
struct FingerprintParts {
  std::string arch;
  int multiprocessors = 0;
  int memory_gib = -1;
};
bool parse_fingerprint(const std::string& fingerprint, FingerprintParts* out);

// Which of the `available` tables' fingerprints a device of fingerprint `want` uses: `want`
// itself when present; else the nearest of the same architecture (GPU fingerprints only): the
// same SM count first, then the closest memory size, then the closest SM count, then the
// smallest name. "" when none qualifies (another architecture, a CPU fingerprint). `nearest`
// (optional) tells whether the answer is not `want` itself.
std::string nearest_fingerprint(const std::string& want, const std::vector<std::string>& available,
                                bool* nearest = nullptr);

// ---- the table in use ----------------------------------------------------------------------
// Loaded once per process from $FLASHPLUS_TUNED_TABLE, else <fingerprint>.json relative to the
// loaded library (<libdir>/../share/flashplus/tuned, the build tree), else relative to the
// executable (docs/TUNING.md); when no file carries the device's exact fingerprint, the nearest
// table of the same architecture (nearest_fingerprint) found there. Returns nullptr when no
// usable table exists (the heuristics are used).
const TunedTable* active_table(const std::string& fingerprint);
// Where the active table came from, or why none is used ("none: ..."), for `flashplus info`.
std::string active_table_source(const std::string& fingerprint);
// Why that table was chosen: "exact" (it names this fingerprint), "nearest: <its fingerprint>,
// same arch, ..." (the fallback rule above), or "" when no table is in use.
std::string active_table_match(const std::string& fingerprint);
// Tests: forget the cached table so the next call reloads (not thread-safe with lookups).
void reset_active_tables_for_testing();

// The configuration to run for `key`: the tuned entry if one exists, else `heuristic`.
// `from_table` (optional) tells which one was used.
KernelConfig choose_config(const std::string& fingerprint, const TuneKey& key,
                           const KernelConfig& heuristic, bool* from_table = nullptr);
// The same for a backend that can tell whether it compiled an entry's configuration: an entry
// `compiled` rejects (a stale or unknown kernel) is a warning on stderr (once per key) and the
// heuristics' choice.
KernelConfig choose_config(const std::string& fingerprint, const TuneKey& key,
                           const KernelConfig& heuristic,
                           const std::function<bool(const KernelConfig&)>& compiled,
                           bool* from_table = nullptr);

}  // namespace flashplus
