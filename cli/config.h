// Model workload configs (configs/models/*.json; schema in docs/CONFIGS.md).
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "flashplus/tensor.h"

namespace flashplus::cli {

// Version 2 adds the "decode" and "varlen" workloads; version 1 files are still read.
constexpr int kModelSchemaVersion = 2;

// One attention configuration of a real model, and the sizes to run it at.
struct ModelConfig {
  std::string file;                  // where it was read from (for messages)
  std::string name;                  // "llama7b"
  std::string description;           // free text
  std::string source;                // where the numbers come from (model card, config.json)
  std::string workload = "prefill";  // "prefill" | "decode" | "varlen" (the last two: schema 2)
  int nheads = 0, nheads_k = 0, head_dim = 0;
  bool causal = false;
  int window_left = -1, window_right = -1;  // -1 = unbounded
  double softcap = 0;                       // 0 = off
  double dropout = 0;                       // dropout_p of the fwd/bwd calls (not decode); 0 = off
  bool alibi = false;                       // slopes 2^(-8(h+1)/nheads), per head
  double softmax_scale = 0;                 // 0 = 1/sqrt(head_dim)
  std::vector<DType> dtypes;
  std::vector<int> batch_sizes;
  std::vector<int> seqlens;        // seqlen_q == seqlen_k
  std::vector<std::string> modes;  // "fwd", "bwd"
  // Instead of batch_sizes: batch = max(1, batch_tokens / seqlen) for each seqlen (a constant
  // number of tokens per batch, as FlashAttention's benchmarks use). 0 = use batch_sizes.
  int batch_tokens = 0;
  // workload "decode" (mha_fwd_kvcache): (batch, cache_len) pairs, each run at every page size
  // (0 = contiguous cache) and num_splits; every step appends decode_seqlen_q new keys.
  std::vector<std::pair<int, int>> decode_shapes;
  std::vector<int> page_sizes{0};
  std::vector<int> num_splits{0};
  int decode_seqlen_q = 1;
  // workload "varlen" (mha_varlen_fwd/bwd): each entry one packed batch of sequence lengths
  // (seqlen_q = seqlen_k per sequence).
  std::vector<std::vector<int>> varlen_batches;
};

// One concrete run: a config at one (dtype, batch, seqlen, mode).
struct Workload {
  const ModelConfig* model = nullptr;
  DType dtype = DType::bf16;
  int batch = 1, seqlen = 1;          // decode: seqlen = cache_len; varlen: the longest sequence
  std::string mode;                   // "fwd" | "bwd"
  std::string kind = "prefill";       // the model's workload
  int page_size = 0, num_splits = 0;  // decode
  std::vector<int> varlen;            // varlen: the sequence lengths (batch = their number)
};

// "decode page16 splits0", "varlen 8 seqs 18432 tok", "" for prefill.
std::string workload_label(const Workload& w);

// Throws cli::Error(kExitUsage, "<file>: key '<key>': <reason>") on any problem.
// For a file with "variants" (checked too): the base config, i.e. the file's own keys with no
// variant applied. Tools that run workloads use load_model_configs.
ModelConfig load_model_config(const std::string& path);
// Every config of a file: one, or one per entry of its "variants" list (docs/CONFIGS.md), each
// named "<name>/<variant name>".
std::vector<ModelConfig> load_model_configs(const std::string& path);

struct WorkloadFilter {
  int max_seqlen = 0;               // 0 = no limit; larger seqlens are skipped
  std::vector<int> batch_override;  // replaces the config's batch_sizes when non-empty
  std::vector<std::string> modes;   // keeps only these modes when non-empty
  std::vector<DType> dtypes;        // keeps only these dtypes when non-empty
  std::vector<std::string> kinds;   // keeps only these workloads (prefill|decode|varlen)
};
std::vector<Workload> expand_workloads(const ModelConfig& m, const WorkloadFilter& f);

// "causal", "causal+window(4096,0)", "none", with "+softcap50", "+alibi" appended as set.
std::string mask_label(const ModelConfig& m);

}  // namespace flashplus::cli
