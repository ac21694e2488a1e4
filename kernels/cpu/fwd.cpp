// CPU forward: FlashAttention-2 on the CPU.
//
// Work item = (batch, query head, tile of kBlockM query rows). A thread converts its query tile
// to fp32 once, then walks the key tiles its rows can see (skipping fully masked ones), keeping
// an online softmax (running max m, running sum l, unnormalised output O) per row. Extra memory
// is O(kBlockM * (kBlockN + head_dim)) per thread; no Sq x Sk matrix exists anywhere.
//
// Every mode goes through the same tile: fixed length, varlen (per-sequence lengths and packed
// row offsets from AttnParams' helpers; work items exist only for real tokens) and kv cache
// (keys addressed through the cache geometry). With num_splits > 1 the key sequence of each
// (sequence, head, query tile) is cut into pieces run as separate work items; each writes a
// normalised fp32 partial output and its LSE (-inf when the piece sees nothing), and a combine
// pass merges them: lse = log sum_s exp(lse_s), out = sum_s exp(lse_s - lse) out_s, as the GPU
// split-KV kernels do. A row no piece sees gets out = 0 and lse = +inf.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "cpu/cpu_kernels.h"
#include "cpu/tiles.h"

namespace flashplus::cpu {

namespace {

// Per-thread scratch for one query tile. Every function below is instantiated for each tile
// shape of tiles.h; kBlockM/kBlockN are the instance's template parameters.
template <int kBlockM, int kBlockN>
struct FwdScratch {
  int dp;          // head_dim padded to kNr
  Buffer q;        // [kBlockM][dp]
  Buffer kt;       // [dp][kBlockN]   K tile, transposed: S = Q @ K^T vectorises over keys
  Buffer v;        // [kBlockN][dp]
  Buffer s;        // [kBlockM][kBlockN] scores, then probabilities
  Buffer o;        // [kBlockM][dp] unnormalised output
  Buffer row;      // [dp] conversion staging
  // bf16 inputs on a path with a bf16 dot product (bf16_dot_active): S = Q K^T from bf16 pairs.
  Buffer q16;      // [kBlockM][dp] bf16 bits
  Buffer ktp;      // [dp / 2][kBlockN][2] bf16 bits
  float m[kBlockM];
  float l[kBlockM];
  explicit FwdScratch(int d)
      : dp(round_up(d, kNr)),
        q(static_cast<size_t>(kBlockM) * dp),
        kt(static_cast<size_t>(dp) * kBlockN),
        v(static_cast<size_t>(kBlockN) * dp),
        s(static_cast<size_t>(kBlockM) * kBlockN),
        o(static_cast<size_t>(kBlockM) * dp),
        row(dp),
        q16(static_cast<size_t>(kBlockM) * dp / 2),
        ktp(static_cast<size_t>(dp) * kBlockN / 2) {}
  uint16_t* q16p() { return reinterpret_cast<uint16_t*>(q16.data()); }
  uint16_t* ktpp() { return reinterpret_cast<uint16_t*>(ktp.data()); }
};

// One work item: query tile qt of head h of sequence b (actual lengths sq, sk), restricted to keys
// [key_lo, key_hi) (the whole sequence unless split). oacc/lacc: split accumulators of this
// piece (nullptr: write out and softmax_lse directly).
struct TileJob {
  int b, h, qt, sq, sk, key_lo, key_hi;
};

template <int kBlockM, int kBlockN>
void fwd_tile(const AttnParams& p, const TileJob& job, FwdScratch<kBlockM, kBlockN>& w, float* oacc,
              float* lacc) {
  const int b = job.b, h = job.h, sq = job.sq, sk = job.sk;
  const int d = p.head_dim, dp = w.dp;
  const int hk = h / p.group();
  const int i0 = job.qt * kBlockM;
  const int nr = std::min(kBlockM, sq - i0);
  const float scale = p.softmax_scale;
  const float cap = p.softcap;
  const bool has_alibi = p.alibi_slopes != nullptr;
  const float slope = alibi_slope(p, b, h);
  const bool dropout = p.has_dropout();
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  const bool bfdot = p.dtype == DType::bf16 && bf16_dot_active();

  float* q = w.q.data();
  float* s = w.s.data();
  float* o = w.o.data();
  std::fill(o, o + static_cast<int64_t>(kBlockM) * dp, 0.f);
  std::fill(q, q + static_cast<int64_t>(kBlockM) * dp, 0.f);
  for (int r = 0; r < nr; ++r)
    load_row(p.q, p.dtype, p.q_offset(p.q_stride, b, i0 + r) + h * p.q_stride.head, d,
             q + static_cast<int64_t>(r) * dp);
  if (bfdot) pack_bf16_rows(q, dp, kBlockM, dp, w.q16p());
  int lo[kBlockM], hi[kBlockM];
  for (int r = 0; r < nr; ++r) {
    p.key_range(i0 + r, sq, sk, &lo[r], &hi[r]);
    lo[r] = std::max(lo[r], job.key_lo);  // clamping by constants keeps lo, hi non-decreasing
    hi[r] = std::min(hi[r], job.key_hi);
    w.m[r] = kNegInf;
    w.l[r] = 0.f;
  }
  // lo and hi are non-decreasing in i, so the tile sees keys [lo[0], hi[nr-1]).
  const int klo = lo[0], khi = hi[nr - 1];
  // Padding rows have an M dimension rounded to the micro-tile.
  const int mr = round_up(nr, kMr);

  for (int j0 = klo; j0 < khi; j0 += kBlockN) {
    const int nc = std::min(kBlockN, khi - j0);
    KvTileDst kv;
    if (bfdot)
      kv.ktp = w.ktpp();
    else
      kv.kt = w.kt.data();
    kv.v = w.v.data();
    kv.ld = kBlockN;
    load_kv_tile(p, b, hk, j0, nc, dp, kv, w.row.data());
    std::fill(s, s + static_cast<int64_t>(kBlockM) * kBlockN, 0.f);
    if (bfdot)
      gemm_bf16_acc(mr, kBlockN, d, w.q16p(), dp, w.ktpp(), 2 * kBlockN, s, kBlockN);
    else
      gemm_acc(mr, kBlockN, d, q, dp, w.kt.data(), kBlockN, s, kBlockN);

    for (int r = 0; r < nr; ++r) {
      float* srow = s + static_cast<int64_t>(r) * kBlockN;
      const int c0 = std::max(lo[r], j0) - j0;
      const int c1 = std::min(hi[r], j0 + nc) - j0;
      if (c0 >= c1) {  // row sees nothing in this tile: contributes nothing
        std::fill(srow, srow + kBlockN, 0.f);
        continue;
      }
      const int i = i0 + r;
      float mx = kNegInf;
      for (int c = c0; c < c1; ++c) {
        float z = srow[c] * scale;
        if (cap > 0.f) z = cap * std::tanh(z / cap);
        if (has_alibi) z += alibi_bias(p, slope, i, j0 + c, sq, sk);
        srow[c] = z;
        mx = std::max(mx, z);
      }
      // std::max skips NaN scores (NaN < x is false): they reach exp() below and make the row's
      // l NaN, so out and lse become NaN (not the empty-row sentinel). A max of -inf (every score
      // so far -inf or NaN) is subtracted as 0, as upstream does: -inf scores then weigh 0
      // instead of exp(-inf + inf) = NaN.
      const float m_new = std::max(w.m[r], mx);
      const float m_sub = m_new == kNegInf ? 0.f : m_new;
      // exp(-inf) = 0 on the first visible tile; O and l are still zero then anyway.
      const float alpha = std::exp(w.m[r] - m_sub);
      float sum = 0.f;
      for (int c = 0; c < kBlockN; ++c) {
        const float pv = (c >= c0 && c < c1) ? std::exp(srow[c] - m_sub) : 0.f;
        sum += pv;  // the softmax sum (and lse) is taken before dropout
        srow[c] = dropout && pv != 0.f && !p.dropout_keep(b, h, i, j0 + c) ? 0.f : pv;
      }
      w.l[r] = w.l[r] * alpha + sum;
      w.m[r] = m_new;
      if (alpha != 1.f) {
        float* orow = o + static_cast<int64_t>(r) * dp;
        for (int x = 0; x < dp; ++x) orow[x] *= alpha;
      }
    }
    for (int r = nr; r < mr; ++r)
      std::fill(s + static_cast<int64_t>(r) * kBlockN, s + static_cast<int64_t>(r + 1) * kBlockN, 0.f);
    gemm_acc(mr, dp, kBlockN, s, kBlockN, w.v.data(), dp, o, dp);
  }

  // Epilogue: normalise and store; an empty row gets out = 0 and lse = +inf (API.md §2.2), an
  // empty split piece lse = -inf (it then weighs nothing in the combine). A row whose sum is NaN
  // (NaN in q, k or an ALiBi slope; inf that met inf) is not empty: out and lse come out NaN
  // (docs/API_NOTES.md, "NaN and inf").
  for (int r = 0; r < nr; ++r) {
    const int i = i0 + r;
    const bool empty = w.l[r] == 0.f;
    // Dropout: kept probabilities are scaled by 1 / (1 - p), once, here.
    const float inv = empty ? 0.f : (dropout ? p.rp_dropout : 1.f) / w.l[r];
    float* orow = o + static_cast<int64_t>(r) * dp;
    if (empty) std::fill(orow, orow + dp, 0.f);
    const int64_t li = p.lse_offset(b, h, i);
    if (oacc) {
      float* dst = oacc + li * d;
      for (int x = 0; x < d; ++x) dst[x] = orow[x] * inv;
      lacc[li] = empty ? kNegInf : w.m[r] + std::log(w.l[r]);
      continue;
    }
    store_row(p.out, p.dtype, p.q_offset(p.out_stride, b, i) + h * p.out_stride.head, d, orow, inv);
    if (p.softmax_lse)
      p.softmax_lse[li] = empty ? std::numeric_limits<float>::infinity() : w.m[r] + std::log(w.l[r]);
  }
}

// Merge the pieces of row i of (b, h): lse = log sum exp(lse_s); out = sum exp(lse_s - lse) out_s.
void combine_row(const AttnParams& p, int nsplit, const float* oacc, const float* lacc, int b,
                 int h, int i, float* acc) {
  const int d = p.head_dim;
  const int64_t li = p.lse_offset(b, h, i);
  const int64_t stride = p.lse_size();
  float mx = -std::numeric_limits<float>::infinity();
  bool nan = false;  // a piece whose row met NaN: the whole row is NaN, as unsplit
  for (int s = 0; s < nsplit; ++s) {
    mx = std::max(mx, lacc[s * stride + li]);
    nan = nan || std::isnan(lacc[s * stride + li]);
  }
  std::fill(acc, acc + d, 0.f);
  float lse = std::numeric_limits<float>::infinity();  // no piece saw a key: out 0, lse +inf
  if (nan) {
    lse = std::numeric_limits<float>::quiet_NaN();
    std::fill(acc, acc + d, lse);
  } else if (mx > -std::numeric_limits<float>::infinity()) {
    float sum = 0.f;
    for (int s = 0; s < nsplit; ++s) sum += std::exp(lacc[s * stride + li] - mx);
    lse = mx + std::log(sum);
    for (int s = 0; s < nsplit; ++s) {
      const float wgt = std::exp(lacc[s * stride + li] - lse);
      if (wgt == 0.f) continue;
      const float* src = oacc + (s * stride + li) * d;
      for (int x = 0; x < d; ++x) acc[x] += wgt * src[x];
    }
  }
  store_row(p.out, p.dtype, p.q_offset(p.out_stride, b, i) + h * p.out_stride.head, d, acc, 1.f);
  if (p.softmax_lse) p.softmax_lse[li] = lse;
}

// Fill out with 0 and softmax_lse with -inf everywhere (zero_tensors, varlen).
void zero_outputs(const AttnParams& p) {
  const int rows = p.is_varlen() ? p.total_q : p.seqlen_q;
  const int nb = p.is_varlen() ? 1 : p.batch;
  std::vector<float> z(p.head_dim, 0.f);
  for (int b = 0; b < nb; ++b)
    for (int i = 0; i < rows; ++i)
      for (int h = 0; h < p.nheads; ++h)
        store_row(p.out, p.dtype, b * p.out_stride.batch + static_cast<int64_t>(i) * p.out_stride.row +
                                      h * p.out_stride.head, p.head_dim, z.data(), 1.f);
  if (p.softmax_lse)
    std::fill(p.softmax_lse, p.softmax_lse + p.lse_size(), -std::numeric_limits<float>::infinity());
}

template <int kBlockM, int kBlockN>
Status fwd_tiles(const AttnParams& p, const RunOptions& opts) {
  // (sequence, query tile) pairs over the real lengths; per-sequence key counts.
  std::vector<std::pair<int, int>> tiles;
  std::vector<int> sqs(p.batch), sks(p.batch);
  int max_kblocks = 0;
  for (int b = 0; b < p.batch; ++b) {
    sqs[b] = p.actual_seqlen_q(b);
    sks[b] = p.actual_seqlen_k(b);
    for (int qt = 0; qt * kBlockM < sqs[b]; ++qt) tiles.emplace_back(b, qt);
    max_kblocks = std::max(max_kblocks, (sks[b] + kBlockN - 1) / kBlockN);
  }
  if (tiles.empty()) return Status::Ok();
  const int64_t base = static_cast<int64_t>(tiles.size()) * p.nheads;
  const int nthreads_max = resolve_threads(opts);
  const int nsplit = choose_num_splits(p, base, max_kblocks, nthreads_max);
  // Last query tiles first: under a causal mask they see the most keys, so the long items start
  // early and the short ones fill the gaps at the end.
  std::sort(tiles.begin(), tiles.end(),
            [](const auto& x, const auto& y) { return x.second > y.second; });
  const int64_t items = base * nsplit;
  const int nthreads = static_cast<int>(std::min<int64_t>(nthreads_max, items));
  std::vector<float> oacc, lacc;
  if (nsplit > 1) {
    oacc.assign(static_cast<size_t>(nsplit * p.lse_size()) * p.head_dim, 0.f);
    lacc.assign(static_cast<size_t>(nsplit * p.lse_size()), 0.f);
  }
  std::atomic<int64_t> next{0};
  FLASHPLUS_RETURN_IF_ERROR(run_threads(nthreads, [&](int) {
    FwdScratch<kBlockM, kBlockN> w(p.head_dim);
    for (int64_t it; (it = next.fetch_add(1)) < items;) {
      const int s = static_cast<int>(it % nsplit);
      const int64_t th = it / nsplit;
      const auto& t = tiles[static_cast<size_t>(th / p.nheads)];
      TileJob job{t.first, static_cast<int>(th % p.nheads), t.second, sqs[t.first], sks[t.first],
                  0, sks[t.first]};
      if (nsplit == 1) {
        fwd_tile(p, job, w, nullptr, nullptr);
        continue;
      }
      // Piece s: whole key blocks [s * per, (s + 1) * per) of this sequence (may be empty).
      const int nkb = (job.sk + kBlockN - 1) / kBlockN;
      const int per = (nkb + nsplit - 1) / nsplit * kBlockN;
      job.key_lo = std::min(job.sk, s * per);
      job.key_hi = std::min(job.sk, (s + 1) * per);
      const int64_t off = s * p.lse_size();
      fwd_tile(p, job, w, oacc.data() + off * p.head_dim, lacc.data() + off);
    }
  }));
  if (nsplit == 1) return Status::Ok();
  // Combine, per (sequence, head).
  const int64_t bh = static_cast<int64_t>(p.batch) * p.nheads;
  std::atomic<int64_t> next2{0};
  return run_threads(static_cast<int>(std::min<int64_t>(nthreads_max, bh)), [&](int) {
    std::vector<float> acc(p.head_dim);
    for (int64_t it; (it = next2.fetch_add(1)) < bh;) {
      const int b = static_cast<int>(it / p.nheads), h = static_cast<int>(it % p.nheads);
      for (int i = 0; i < sqs[b]; ++i) combine_row(p, nsplit, oacc.data(), lacc.data(), b, h, i, acc.data());
    }
  });
}

}  // namespace

Status attention_fwd(const AttnParams& p, const RunOptions& opts) {
  if (p.dtype == DType::i32) return Status::Unsupported("cpu backend: int32 attention");
  if (p.zero_tensors) zero_outputs(p);
  if (p.batch <= 0 || p.nheads <= 0) return Status::Ok();
  const KernelConfig c = tile_config(p, opts, "fwd");
  return with_tile(c.block_m, c.block_n, [&](auto bm, auto bn) {
    return fwd_tiles<decltype(bm)::value, decltype(bn)::value>(p, opts);
  });
}

int choose_num_splits(const AttnParams& p, int64_t items, int max_kblocks, int nthreads) {
  if (p.num_splits > 0) return p.num_splits;
  if (p.num_splits < 0 || items >= nthreads || max_kblocks <= 1) return 1;
  // Too few (sequence, head, query tile) items to fill the threads: split the keys so each
  // thread gets work, never into pieces smaller than one key block.
  const int64_t want = (nthreads + items - 1) / items;
  return static_cast<int>(std::min<int64_t>({want, max_kblocks, 128}));
}

Status fwd(const AttnParams& p, const RunOptions& opts) {
  if (!p.is_kvcache) return attention_fwd(p, opts);
  return kvcache_fwd(p, opts);
}

}  // namespace flashplus::cpu
