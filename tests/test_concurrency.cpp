// Many host threads calling the library at once (issue 17, item 3): every entry point (mha_fwd,
// mha_bwd, varlen fwd/bwd, kvcache) through the C++ API and through the C ABI, with different
// shapes, dtypes, masks, dropout and CPU thread counts, while the tuned table is loaded lazily
// by whichever call comes first. Every result must be bit-identical to a single-threaded run of
// the same inputs, the table must be the one every call used, and flashplus_last_error() must be
// each thread's own. scripts/sanitize runs these under ThreadSanitizer.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <array>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <mutex>
#include <stdexcept>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "cpu/tiles.h"
#include "flashplus/api.h"
#include "flashplus/flashplus_c.h"
#include "flashplus/numerics.h"
#include "flashplus/tuning.h"

using namespace flashplus;
namespace fs = std::filesystem;

namespace {

enum class Kind { fwd, bwd, varlen_fwd, varlen_bwd, kvcache };
enum class Api { cpp, c };

struct Job {
  Kind kind = Kind::fwd;
  Api api = Api::cpp;
  DType dtype = DType::f16;
  int b = 1, sq = 1, sk = 1, h = 1, hk = 1, d = 32;
  bool causal = false;
  int wl = -1, wr = -1;
  float softcap = 0.f, dropout = 0.f;
  bool alibi = false;
  int threads = 1;
  std::vector<int> lens_q, lens_k;  // varlen
  int cache_len = 0, new_keys = 0, page = 0;  // kvcache (page 0 = contiguous)
  uint64_t seed = 1;
  std::string describe() const {
    static const char* const kinds[] = {"fwd", "bwd", "varlen_fwd", "varlen_bwd", "kvcache"};
    return fmt::format("{} {} {} b{} sq{} sk{} h{} hk{} d{} causal{} win({},{}) softcap{} p{} "
                       "alibi{} threads{} cache{} new{} page{} seed{}",
                       kinds[static_cast<int>(kind)], api == Api::c ? "C" : "C++",
                       dtype_name(dtype), b, sq, sk, h, hk, d, causal, wl, wr, softcap, dropout,
                       alibi, threads, cache_len, new_keys, page, seed);
  }
};

// A host tensor that owns its bytes; views for the C++ API and DLTensors for the C ABI.
struct Tensor {
  DType dtype = DType::f32;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
  std::array<int64_t, 4> dl_shape{};
  DLTensor dl{};

  Tensor(DType t, std::vector<int64_t> s) : dtype(t), shape(std::move(s)) {
    int64_t n = 1;
    for (int64_t x : shape) n *= x;
    bytes.assign(static_cast<size_t>(n) * dtype_size(t), 0);
  }
  int64_t numel() const { return static_cast<int64_t>(bytes.size() / dtype_size(dtype)); }
  void fill(std::mt19937_64& rng) {
    std::normal_distribution<float> dist(0.f, 1.f);
    for (int64_t i = 0; i < numel(); ++i) {
      float x = dist(rng);
      if (x == 0.f) x = 1e-3f;
      store_float(bytes.data(), dtype, i, x);
    }
  }
  void fill_ints(const std::vector<int>& v) {
    if (static_cast<int64_t>(v.size()) != numel()) throw std::logic_error("fill_ints: size");
    std::memcpy(bytes.data(), v.data(), v.size() * 4);
  }
  TensorView view() {
    TensorView t;
    t.data = bytes.data();
    t.dtype = dtype;
    t.ndim = static_cast<int>(shape.size());
    int64_t st = 1;
    for (int d = t.ndim - 1; d >= 0; --d) {
      t.shape[d] = shape[d];
      t.stride[d] = st;
      st *= shape[d];
    }
    return t;
  }
  const DLTensor* dlt() {
    for (size_t i = 0; i < shape.size(); ++i) dl_shape[i] = shape[i];
    dl.data = bytes.data();
    dl.device = {kDLCPU, 0};
    dl.ndim = static_cast<int32_t>(shape.size());
    switch (dtype) {
      case DType::f32: dl.dtype = {kDLFloat, 32, 1}; break;
      case DType::f16: dl.dtype = {kDLFloat, 16, 1}; break;
      case DType::bf16: dl.dtype = {kDLBfloat, 16, 1}; break;
      case DType::i32: dl.dtype = {kDLInt, 32, 1}; break;
    }
    dl.shape = dl_shape.data();
    dl.strides = nullptr;
    dl.byte_offset = 0;
    return &dl;
  }
};

// What a run produced: every output buffer's bytes, in a fixed order, and any failure.
struct Result {
  std::string error;
  std::vector<std::vector<uint8_t>> outputs;
  KernelConfig tile;  // the CPU tile the (last) call ran with
  bool operator==(const Result& o) const { return error == o.error && outputs == o.outputs; }
};

std::string c_status(flashplus_status s) {
  return s == FLASHPLUS_OK ? "" : fmt::format("{}: {}", flashplus_status_name(s), flashplus_last_error());
}

flashplus_run_options c_opts(const RunOptions& o) {
  flashplus_run_options r{};
  r.backend = FLASHPLUS_BACKEND_CPU;
  r.num_threads = o.num_threads;
  r.dropout_seed = o.dropout_seed;
  r.dropout_offset = o.dropout_offset;
  return r;
}

RunOptions opts_of(const Job& j) {
  RunOptions o;
  o.backend = Backend::cpu;
  o.num_threads = j.threads;
  o.dropout_seed = j.seed * 7919;
  o.dropout_offset = j.seed % 5;
  return o;
}

// The forward of a fixed-length job (also the first half of a backward job).
std::string run_fwd(const Job& j, Tensor& q, Tensor& k, Tensor& v, Tensor& out, Tensor& lse,
                    Tensor* alibi) {
  if (j.api == Api::cpp) {
    FwdArgs a;
    a.q = q.view(), a.k = k.view(), a.v = v.view(), a.out = out.view(), a.softmax_lse = lse.view();
    if (alibi) a.alibi_slopes = alibi->view();
    a.p_dropout = j.dropout;
    a.is_causal = j.causal;
    a.window_size_left = j.wl, a.window_size_right = j.wr;
    a.softcap = j.softcap;
    a.opts = opts_of(j);
    const Status st = mha_fwd(a);
    return st.ok() ? "" : st.to_string();
  }
  flashplus_fwd_args a{};
  a.struct_size = sizeof a;
  a.q = q.dlt(), a.k = k.dlt(), a.v = v.dlt(), a.out = out.dlt(), a.softmax_lse = lse.dlt();
  a.alibi_slopes = alibi ? alibi->dlt() : nullptr;
  a.p_dropout = j.dropout;
  a.is_causal = j.causal;
  a.window_size_left = j.wl, a.window_size_right = j.wr;
  a.softcap = j.softcap;
  a.opts = c_opts(opts_of(j));
  return c_status(flashplus_mha_fwd(&a));
}

Result run_fixed(const Job& j) {
  std::mt19937_64 rng(j.seed);
  Result r;
  Tensor q(j.dtype, {j.b, j.sq, j.h, j.d}), k(j.dtype, {j.b, j.sk, j.hk, j.d}),
      v(j.dtype, {j.b, j.sk, j.hk, j.d}), out(j.dtype, {j.b, j.sq, j.h, j.d}),
      lse(DType::f32, {j.b, j.h, j.sq}), alibi(DType::f32, {j.h});
  q.fill(rng), k.fill(rng), v.fill(rng), alibi.fill(rng);
  r.error = run_fwd(j, q, k, v, out, lse, j.alibi ? &alibi : nullptr);
  cpu::last_config(&r.tile);
  r.outputs = {out.bytes, lse.bytes};
  if (j.kind == Kind::fwd || !r.error.empty()) return r;
  Tensor dout(j.dtype, {j.b, j.sq, j.h, j.d}), dq(j.dtype, {j.b, j.sq, j.h, j.d}),
      dk(j.dtype, {j.b, j.sk, j.hk, j.d}), dv(j.dtype, {j.b, j.sk, j.hk, j.d}),
      dsum(DType::f32, {j.b, j.h, j.sq});
  dout.fill(rng);
  if (j.api == Api::cpp) {
    BwdArgs a;
    a.dout = dout.view(), a.q = q.view(), a.k = k.view(), a.v = v.view(), a.out = out.view();
    a.softmax_lse = lse.view(), a.dq = dq.view(), a.dk = dk.view(), a.dv = dv.view();
    if (j.alibi) a.alibi_slopes = alibi.view();
    a.softmax_d = dsum.view();
    a.p_dropout = j.dropout;
    a.is_causal = j.causal;
    a.window_size_left = j.wl, a.window_size_right = j.wr;
    a.softcap = j.softcap;
    a.deterministic = j.seed % 2 == 0;
    a.opts = opts_of(j);
    const Status st = mha_bwd(a);
    r.error = st.ok() ? "" : st.to_string();
  } else {
    flashplus_bwd_args a{};
    a.struct_size = sizeof a;
    a.dout = dout.dlt(), a.q = q.dlt(), a.k = k.dlt(), a.v = v.dlt(), a.out = out.dlt();
    a.softmax_lse = lse.dlt(), a.dq = dq.dlt(), a.dk = dk.dlt(), a.dv = dv.dlt();
    a.alibi_slopes = j.alibi ? alibi.dlt() : nullptr;
    a.softmax_d = dsum.dlt();
    a.p_dropout = j.dropout;
    a.is_causal = j.causal;
    a.window_size_left = j.wl, a.window_size_right = j.wr;
    a.softcap = j.softcap;
    a.deterministic = j.seed % 2 == 0;
    a.opts = c_opts(opts_of(j));
    r.error = c_status(flashplus_mha_bwd(&a));
  }
  cpu::last_config(&r.tile);
  r.outputs.insert(r.outputs.end(), {dq.bytes, dk.bytes, dv.bytes, dsum.bytes});
  return r;
}

Result run_varlen(const Job& j) {
  std::mt19937_64 rng(j.seed);
  Result r;
  std::vector<int> cu_q{0}, cu_k{0};
  int mq = 0, mk = 0;
  for (size_t i = 0; i < j.lens_q.size(); ++i) {
    cu_q.push_back(cu_q.back() + j.lens_q[i]);
    cu_k.push_back(cu_k.back() + j.lens_k[i]);
    mq = std::max(mq, j.lens_q[i]);
    mk = std::max(mk, j.lens_k[i]);
  }
  const int64_t b = static_cast<int64_t>(j.lens_q.size()), tq = cu_q.back(), tk = cu_k.back();
  Tensor q(j.dtype, {tq, j.h, j.d}), k(j.dtype, {tk, j.hk, j.d}), v(j.dtype, {tk, j.hk, j.d}),
      out(j.dtype, {tq, j.h, j.d}), lse(DType::f32, {j.h, tq}), cq(DType::i32, {b + 1}),
      ck(DType::i32, {b + 1});
  q.fill(rng), k.fill(rng), v.fill(rng);
  cq.fill_ints(cu_q), ck.fill_ints(cu_k);
  if (j.api == Api::cpp) {
    VarlenFwdArgs a;
    a.q = q.view(), a.k = k.view(), a.v = v.view(), a.out = out.view(), a.softmax_lse = lse.view();
    a.cu_seqlens_q = cq.view(), a.cu_seqlens_k = ck.view();
    a.max_seqlen_q = mq, a.max_seqlen_k = mk;
    a.p_dropout = j.dropout;
    a.is_causal = j.causal;
    a.window_size_left = j.wl, a.window_size_right = j.wr;
    a.softcap = j.softcap;
    a.opts = opts_of(j);
    const Status st = mha_varlen_fwd(a);
    r.error = st.ok() ? "" : st.to_string();
  } else {
    flashplus_varlen_fwd_args a{};
    a.struct_size = sizeof a;
    a.q = q.dlt(), a.k = k.dlt(), a.v = v.dlt(), a.out = out.dlt(), a.softmax_lse = lse.dlt();
    a.cu_seqlens_q = cq.dlt(), a.cu_seqlens_k = ck.dlt();
    a.max_seqlen_q = mq, a.max_seqlen_k = mk;
    a.p_dropout = j.dropout;
    a.is_causal = j.causal;
    a.window_size_left = j.wl, a.window_size_right = j.wr;
    a.softcap = j.softcap;
    a.opts = c_opts(opts_of(j));
    r.error = c_status(flashplus_mha_varlen_fwd(&a));
  }
  cpu::last_config(&r.tile);
  r.outputs = {out.bytes, lse.bytes};
  if (j.kind == Kind::varlen_fwd || !r.error.empty()) return r;
  Tensor dout(j.dtype, {tq, j.h, j.d}), dq(j.dtype, {tq, j.h, j.d}), dk(j.dtype, {tk, j.hk, j.d}),
      dv(j.dtype, {tk, j.hk, j.d});
  dout.fill(rng);
  if (j.api == Api::cpp) {
    VarlenBwdArgs a;
    a.dout = dout.view(), a.q = q.view(), a.k = k.view(), a.v = v.view(), a.out = out.view();
    a.softmax_lse = lse.view(), a.dq = dq.view(), a.dk = dk.view(), a.dv = dv.view();
    a.cu_seqlens_q = cq.view(), a.cu_seqlens_k = ck.view();
    a.max_seqlen_q = mq, a.max_seqlen_k = mk;
    a.p_dropout = j.dropout;
    a.is_causal = j.causal;
    a.window_size_left = j.wl, a.window_size_right = j.wr;
    a.softcap = j.softcap;
    a.deterministic = j.seed % 2 == 1;
    a.opts = opts_of(j);
    const Status st = mha_varlen_bwd(a);
    r.error = st.ok() ? "" : st.to_string();
  } else {
    flashplus_varlen_bwd_args a{};
    a.struct_size = sizeof a;
    a.dout = dout.dlt(), a.q = q.dlt(), a.k = k.dlt(), a.v = v.dlt(), a.out = out.dlt();
    a.softmax_lse = lse.dlt(), a.dq = dq.dlt(), a.dk = dk.dlt(), a.dv = dv.dlt();
    a.cu_seqlens_q = cq.dlt(), a.cu_seqlens_k = ck.dlt();
    a.max_seqlen_q = mq, a.max_seqlen_k = mk;
    a.p_dropout = j.dropout;
    a.is_causal = j.causal;
    a.window_size_left = j.wl, a.window_size_right = j.wr;
    a.softcap = j.softcap;
    a.deterministic = j.seed % 2 == 1;
    a.opts = c_opts(opts_of(j));
    r.error = c_status(flashplus_mha_varlen_bwd(&a));
  }
  cpu::last_config(&r.tile);
  r.outputs.insert(r.outputs.end(), {dq.bytes, dk.bytes, dv.bytes});
  return r;
}

Result run_kvcache(const Job& j) {
  std::mt19937_64 rng(j.seed);
  Result r;
  const int cap = j.cache_len + j.new_keys;
  std::vector<int> seqlens;
  for (int i = 0; i < j.b; ++i) seqlens.push_back(std::max(0, j.cache_len - 3 * i));
  const bool paged = j.page > 0;
  const int pages_per_seq = paged ? (cap + j.page - 1) / j.page : 0;
  const int64_t blocks = paged ? static_cast<int64_t>(j.b) * pages_per_seq + 1 : 0;
  Tensor q(j.dtype, {j.b, j.sq, j.h, j.d}), out(j.dtype, {j.b, j.sq, j.h, j.d}),
      lse(DType::f32, {j.b, j.h, j.sq}), sl(DType::i32, {j.b});
  Tensor kc(j.dtype, paged ? std::vector<int64_t>{blocks, j.page, j.hk, j.d}
                           : std::vector<int64_t>{j.b, cap, j.hk, j.d});
  Tensor vc(j.dtype, kc.shape);
  Tensor kn(j.dtype, {j.b, std::max(j.new_keys, 1), j.hk, j.d}), vn(j.dtype, kn.shape);
  Tensor bt(DType::i32, {j.b, std::max(pages_per_seq, 1)});
  q.fill(rng), kc.fill(rng), vc.fill(rng), kn.fill(rng), vn.fill(rng);
  sl.fill_ints(seqlens);
  if (paged) {  // pages handed out back to front, so the table is not the identity
    std::vector<int> table;
    for (int i = 0; i < j.b * pages_per_seq; ++i) table.push_back(static_cast<int>(blocks - 1 - i));
    bt.fill_ints(table);
  }
  const bool with_new = j.new_keys > 0;
  if (j.api == Api::cpp) {
    KvcacheArgs a;
    a.q = q.view(), a.kcache = kc.view(), a.vcache = vc.view();
    if (with_new) a.k_new = kn.view(), a.v_new = vn.view();
    a.cache_seqlens = sl.view();
    if (paged) a.block_table = bt.view();
    a.out = out.view(), a.softmax_lse = lse.view();
    a.is_causal = j.causal;
    a.window_size_left = j.wl, a.window_size_right = j.wr;
    a.softcap = j.softcap;
    a.num_splits = static_cast<int>(j.seed % 3);
    a.opts = opts_of(j);
    const Status st = mha_fwd_kvcache(a);
    r.error = st.ok() ? "" : st.to_string();
  } else {
    flashplus_kvcache_args a{};
    a.struct_size = sizeof a;
    a.q = q.dlt(), a.kcache = kc.dlt(), a.vcache = vc.dlt();
    a.k_new = with_new ? kn.dlt() : nullptr;
    a.v_new = with_new ? vn.dlt() : nullptr;
    a.cache_seqlens = sl.dlt();
    a.block_table = paged ? bt.dlt() : nullptr;
    a.out = out.dlt(), a.softmax_lse = lse.dlt();
    a.is_causal = j.causal;
    a.window_size_left = j.wl, a.window_size_right = j.wr;
    a.softcap = j.softcap;
    a.num_splits = static_cast<int>(j.seed % 3);
    a.opts = c_opts(opts_of(j));
    r.error = c_status(flashplus_mha_fwd_kvcache(&a));
  }
  cpu::last_config(&r.tile);
  r.outputs = {out.bytes, lse.bytes, kc.bytes, vc.bytes};
  return r;
}

Result run(const Job& j) {
  switch (j.kind) {
    case Kind::fwd:
    case Kind::bwd: return run_fixed(j);
    case Kind::varlen_fwd:
    case Kind::varlen_bwd: return run_varlen(j);
    case Kind::kvcache: return run_kvcache(j);
  }
  return {};
}

// Every entry point through both APIs, over dtypes, masks, dropout, softcap, ALiBi, GQA and CPU
// thread counts; sizes small and odd so a run under TSan stays short.
std::vector<Job> make_jobs() {
  std::vector<Job> jobs;
  const DType dtypes[] = {DType::f16, DType::bf16, DType::f32};
  for (int i = 0; i < 30; ++i) {
    Job j;
    j.kind = static_cast<Kind>(i % 5);
    j.api = (i / 5) % 2 ? Api::c : Api::cpp;
    j.dtype = dtypes[(i / 2) % 3];
    j.seed = 1000 + static_cast<uint64_t>(i) * 7;
    j.b = 1 + i % 2;
    j.sq = 5 + (i * 7) % 37;
    j.sk = 9 + (i * 11) % 41;
    j.hk = 1 + i % 2;
    j.h = j.hk * (1 + (i / 3) % 2);
    j.d = i % 4 == 0 ? 64 : i % 4 == 1 ? 40 : 32;
    j.causal = i % 3 == 0;
    if (i % 7 == 3) j.wl = 6, j.wr = 2;
    if (i % 4 == 2 && j.kind != Kind::kvcache) j.dropout = 0.15f;
    else if (i % 5 == 3) j.softcap = 8.f;
    j.alibi = i % 6 == 1;
    j.threads = 1 + i % 2;
    if (j.kind == Kind::varlen_fwd || j.kind == Kind::varlen_bwd) {
      j.lens_q = {j.sq, 0, 3 + i % 5};
      j.lens_k = {j.sk, 4, 3 + i % 5};
    }
    if (j.kind == Kind::kvcache) {
      j.sq = 1 + i % 3;
      j.cache_len = 20 + i;
      j.new_keys = i % 2 ? 0 : 1 + i % 3;
      j.page = i % 3 == 1 ? 16 : 0;
      j.wl = j.wr = -1;
    }
    jobs.push_back(j);
  }
  return jobs;
}

// A tuned table for this CPU whose entries pick tiles other than the default (different ones for
// different keys), so a call that missed the table would run other tiles.
std::string write_table(const fs::path& path, const std::vector<Job>& jobs, std::map<std::string, KernelConfig>* want) {
  TunedTable t;
  t.fingerprint = backend_fingerprint(Backend::cpu);
  t.device = "test cpu";
  const KernelConfig tiles[] = {{32, 32}, {64, 32}, {32, 128}, {64, 64}};
  int n = 0;
  for (DType dt : {DType::f16, DType::bf16, DType::f32})
    for (int d : {32, 64})
      for (MaskKind m : {MaskKind::none, MaskKind::causal, MaskKind::window})
        for (const char* mode : {"fwd", "bwd"})
          for (int rb : {12, 14}) {
            TuneKey k;
            k.arch = "cpu";
            k.dtype = dt;
            k.head_dim_bucket = d;
            k.mask = m;
            k.mode = mode;
            k.rows_bucket = rb;
            TunedEntry e;
            e.config = tiles[n++ % 4];
            e.kernel = "cpu_" + e.config.to_string();
            t.set(k, e);
            (*want)[k.to_string()] = e.config;
          }
  (void)jobs;
  const Status st = t.save(path.string());
  return st.ok() ? "" : st.to_string();
}

// A start line: every thread waits until all have arrived, so the first calls (and the lazy
// table load) really happen at once.
class StartLine {
 public:
  explicit StartLine(int n) : left_(n) {}
  void arrive_and_wait() {
    std::unique_lock<std::mutex> lock(mu_);
    if (--left_ == 0) cv_.notify_all();
    cv_.wait(lock, [&] { return left_ == 0; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int left_;
};

// A call the C ABI refuses with a message naming this thread's number.
flashplus_status failing_call(int tid) {
  flashplus_fwd_args a{};
  a.struct_size = static_cast<uint32_t>(1000 + tid);
  return flashplus_mha_fwd(&a);
}

}  // namespace

TEST_CASE("threads calling every entry point at once get the single-threaded results",
          "[concurrency]") {
  const std::vector<Job> jobs = make_jobs();
  const fs::path dir = fs::temp_directory_path() / fmt::format("flashplus-conc-{}", ::getpid());
  fs::create_directories(dir);
  std::map<std::string, KernelConfig> table;
  REQUIRE(write_table(dir / "cpu.json", jobs, &table) == "");
  ::setenv("FLASHPLUS_TUNED_TABLE", (dir / "cpu.json").c_str(), 1);
  reset_active_tables_for_testing();

  // Single-threaded results, one job after another.
  std::vector<Result> want;
  for (const Job& j : jobs) {
    INFO(j.describe());
    want.push_back(run(j));
    CHECK(want.back().error == "");
    CHECK(want.back().tile.block_m != 0);
  }
  // The table was used: a fixed-length forward job ran the tile its key names.
  {
    const Job& j = jobs[0];
    TuneKey k;
    k.arch = "cpu";
    k.dtype = j.dtype;
    k.head_dim_bucket = head_dim_bucket(j.d);
    k.mask = mask_kind_for(j.causal, j.wl, j.wr);
    k.mode = "fwd";
    k.rows_bucket = rows_bucket(static_cast<long long>(j.b) * j.sq * j.h);
    INFO(k.to_string());
    REQUIRE(table.count(k.to_string()));
    CHECK(want[0].tile == table[k.to_string()]);
  }

  // Now 8 threads, each running a different rotation of the jobs, with the table forgotten so
  // the first calls race to load it.
  reset_active_tables_for_testing();
  constexpr int kThreads = 8;
  const size_t per_thread = jobs.size();
  StartLine start(kThreads);
  std::vector<std::vector<std::string>> failures(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::vector<std::string>& fail = failures[t];
      const std::string mine = fmt::format("struct_size is {}", 1000 + t);
      start.arrive_and_wait();
      for (size_t n = 0; n < per_thread; ++n) {
        const size_t i = (static_cast<size_t>(t) * 5 + n * (t % 2 ? 1 : jobs.size() - 1)) % jobs.size();
        const Result got = run(jobs[i]);
        if (!(got == want[i]))
          fail.push_back(fmt::format("thread {}: {}: differs from the single-threaded run ({})", t,
                                     jobs[i].describe(), got.error));
        if (got.tile != want[i].tile)
          fail.push_back(fmt::format("thread {}: {}: tile {} instead of {}", t, jobs[i].describe(),
                                     got.tile.to_string(), want[i].tile.to_string()));
        // This thread's last C error is its own: set one now, check it after the next job (whose
        // C calls, if any, clear it: an OK call leaves "").
        if (failing_call(t) != FLASHPLUS_INVALID_ARGS ||
            std::string(flashplus_last_error()).find(mine) == std::string::npos)
          fail.push_back(fmt::format("thread {}: last_error is '{}'", t, flashplus_last_error()));
        std::this_thread::yield();
        if (std::string(flashplus_last_error()).find(mine) == std::string::npos)
          fail.push_back(fmt::format("thread {}: last_error changed to '{}'", t, flashplus_last_error()));
      }
    });
  }
  for (std::thread& th : threads) th.join();
  for (const auto& f : failures)
    for (const std::string& m : f) FAIL_CHECK(m);

  // A C call that succeeds clears the thread's message.
  {
    Job j = jobs[5];  // fwd through the C ABI
    REQUIRE(j.api == Api::c);
    REQUIRE(j.kind == Kind::fwd);
    REQUIRE(failing_call(0) == FLASHPLUS_INVALID_ARGS);
    CHECK(run(j) == want[5]);
    CHECK(std::string(flashplus_last_error()) == "");
  }
  ::unsetenv("FLASHPLUS_TUNED_TABLE");
  reset_active_tables_for_testing();
  fs::remove_all(dir);
}
