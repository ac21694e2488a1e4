// CPU forward: FlashAttention-2 on the CPU.
//
// Work item = (batch, query head, tile of kBlockM query rows). A thread converts its query tile
// to fp32 once, then walks the key tiles its rows can see (skipping fully masked ones), keeping
// an online softmax (running max m, running sum l, unnormalised output O) per row. Extra memory
// is O(kBlockM * (kBlockN + head_dim)) per thread; no Sq x Sk matrix exists anywhere.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>

#include "cpu/cpu_kernels.h"

namespace flashplus::cpu {

namespace {

// Per-thread scratch for one query tile.
struct FwdScratch {
  int dp;          // head_dim padded to kNr
  Buffer q;        // [kBlockM][dp]
  Buffer kt;       // [dp][kBlockN]   K tile, transposed: S = Q @ K^T vectorises over keys
  Buffer v;        // [kBlockN][dp]
  Buffer s;        // [kBlockM][kBlockN] scores, then probabilities
  Buffer o;        // [kBlockM][dp] unnormalised output
  Buffer row;      // [dp] conversion staging
  float m[kBlockM];
  float l[kBlockM];
  explicit FwdScratch(int d)
      : dp(round_up(d, kNr)),
        q(static_cast<size_t>(kBlockM) * dp),
        kt(static_cast<size_t>(dp) * kBlockN),
        v(static_cast<size_t>(kBlockN) * dp),
        s(static_cast<size_t>(kBlockM) * kBlockN),
        o(static_cast<size_t>(kBlockM) * dp),
        row(dp) {}
};

void fwd_tile(const AttnParams& p, int b, int h, int qt, FwdScratch& w) {
  const int d = p.head_dim, dp = w.dp;
  const int hk = h / p.group();
  const int i0 = qt * kBlockM;
  const int nr = std::min(kBlockM, p.seqlen_q - i0);
  const float scale = p.softmax_scale;
  const float cap = p.softcap;
  const bool has_alibi = p.alibi_slopes != nullptr;
  const float slope = alibi_slope(p, b, h);
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();

  float* q = w.q.data();
  float* s = w.s.data();
  float* o = w.o.data();
  std::fill(o, o + static_cast<int64_t>(kBlockM) * dp, 0.f);
  load_tile_rows(p.q, p.dtype, p.q_stride, b, h, i0, nr, d, dp, kBlockM, q);
  int lo[kBlockM], hi[kBlockM];
  for (int r = 0; r < nr; ++r) {
    key_range(p, i0 + r, &lo[r], &hi[r]);
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
    kv.kt = w.kt.data();
    kv.v = w.v.data();
    load_kv_tile(p, b, hk, j0, nc, dp, kv, w.row.data());
    std::fill(s, s + static_cast<int64_t>(kBlockM) * kBlockN, 0.f);
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
        if (has_alibi) z += alibi_bias(p, slope, i, j0 + c);
        srow[c] = z;
        mx = std::max(mx, z);
      }
      const float m_new = std::max(w.m[r], mx);
      // exp(-inf) = 0 on the first visible tile; O and l are still zero then anyway.
      const float alpha = std::exp(w.m[r] - m_new);
      float sum = 0.f;
      for (int c = 0; c < kBlockN; ++c) {
        const float pv = (c >= c0 && c < c1) ? std::exp(srow[c] - m_new) : 0.f;
        srow[c] = pv;
        sum += pv;
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

  // Epilogue: normalise and store; an empty row gets out = 0 and lse = +inf (API.md §2.2).
  for (int r = 0; r < nr; ++r) {
    const int64_t i = i0 + r;
    const bool empty = !(w.l[r] > 0.f);
    const float inv = empty ? 0.f : 1.f / w.l[r];
    float* orow = o + static_cast<int64_t>(r) * dp;
    if (empty) std::fill(orow, orow + dp, 0.f);
    store_row(p.out, p.dtype, b * p.out_stride.batch + i * p.out_stride.row + h * p.out_stride.head,
              d, orow, inv);
    if (p.softmax_lse) {
      p.softmax_lse[(static_cast<int64_t>(b) * p.nheads + h) * p.seqlen_q + i] =
          empty ? std::numeric_limits<float>::infinity() : w.m[r] + std::log(w.l[r]);
    }
  }
}

}  // namespace

Status fwd(const AttnParams& p, const RunOptions& opts) {
  if (p.dtype == DType::i32) return Status::Unsupported("cpu backend: int32 attention");
  if (p.batch <= 0 || p.nheads <= 0 || p.seqlen_q <= 0) return Status::Ok();
  const int nqt = (p.seqlen_q + kBlockM - 1) / kBlockM;
  const int64_t bh = static_cast<int64_t>(p.batch) * p.nheads;
  const int64_t items = bh * nqt;
  const int nthreads = static_cast<int>(std::min<int64_t>(resolve_threads(opts), items));
  std::atomic<int64_t> next{0};
  return run_threads(nthreads, [&](int) {
    FwdScratch w(p.head_dim);
    for (int64_t it; (it = next.fetch_add(1)) < items;) {
      // Last query tiles first: under a causal mask they see the most keys, so the long items
      // start early and the short ones fill the gaps at the end.
      const int qt = nqt - 1 - static_cast<int>(it / bh);
      const int64_t rest = it % bh;
      fwd_tile(p, static_cast<int>(rest / p.nheads), static_cast<int>(rest % p.nheads), qt, w);
    }
  });
}

}  // namespace flashplus::cpu
