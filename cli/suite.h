// Verify suites (configs/suites/*.json; format in docs/VERIFY.md "## Suite format").
//
// A suite is data: defaults, matrices (axes whose cartesian product gives cases), explicit cases,
// exclusion rules with reasons, and known failures per backend with reasons. load_suite() expands
// it into the full case list, excluded cases included (with their reason) so `--list` shows them.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "flashplus/api.h"
#include "flashplus/tensor.h"

namespace flashplus::cli {

constexpr int kSuiteSchemaVersion = 1;
// A suite expands to at most this many cases (the shipped ones have at most 435); a
// larger matrix is refused before it is expanded (a few hundred bytes of axes can ask for 10^9).
constexpr size_t kMaxSuiteCases = 20000;

enum class AlibiMode { none, per_head, per_batch_head };  // "none" | "h" | "bh"
enum class Layout { contiguous, qkvpacked, kv_in_cache };

const char* alibi_mode_name(AlibiMode a);
const char* layout_name(Layout l);

struct Case {
  std::string group;  // matrix name or "cases"
  std::string name;   // group + "/" + a name derived from every parameter (unique in the suite)
  int batch = 1, seqlen_q = 16, seqlen_k = 16, nheads = 2, nheads_k = 2, head_dim = 64;
  DType dtype = DType::f32;
  bool causal = false;
  int window_left = -1, window_right = -1;
  double softcap = 0;
  AlibiMode alibi = AlibiMode::none;
  double scale = 0;  // 0 = 1/sqrt(head_dim)
  Layout layout = Layout::contiguous;
  bool bwd = false;            // also run and check the backward
  bool deterministic = false;  // bwd twice, dq/dk/dv must be bit-identical
  double dropout = 0;          // p_dropout (fwd and bwd; not with kvcache)
  // Variable-length batch (mha_varlen_fwd/bwd): one (seqlen_q, seqlen_k) per sequence; batch,
  // seqlen_q and seqlen_k then hold the count and the longest lengths. Empty = fixed length.
  std::vector<std::pair<int, int>> varlen;
  int num_splits = 0;  // varlen and kvcache forwards: 0 = choose
  // KV cache (mha_fwd_kvcache, forward only): sequence b holds cache_len - 3*b keys (at least 0)
  // and appends `new_keys` more; capacity cache_len + new_keys (rounded up to whole pages).
  bool kvcache = false;
  int cache_len = 0, page_size = 0;  // page_size 0 = contiguous cache, else paged
  int new_keys = 0;
  int rotary = 0;  // rotary_dim (0 = none; needs new_keys > 0)
  bool rotary_interleaved = false;
  std::string excluded;       // non-empty: not run, this is why
  std::string known_failure;  // non-empty: listed as known failure on the chosen backend
};

struct KnownFailure {
  std::string backend;  // "cpu" | "cuda" | "hip" | "*"
  std::string match;    // substring of the case name
  std::string reason;
};

struct Suite {
  std::string file, name, description;
  uint64_t seed = 0;
  std::vector<Case> cases;
  std::vector<KnownFailure> known_failures;
};

// Throws cli::Error(kExitUsage, "<file>: key '<key>': <reason>") on any problem. Known failures
// are resolved for `backend` (Case::known_failure set on matching cases).
Suite load_suite(const std::string& path, Backend backend);

// The derived part of a case name, e.g. "fwdbwd_bf16_b2_sq17_sk129_h4_hk2_d72_causal_win16.0".
std::string case_label(const Case& c);

}  // namespace flashplus::cli
