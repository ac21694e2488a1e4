// CPU backward: FlashAttention-2's backward, deterministic by construction.
//
//   pass 0 (per batch, head, row):  D_i = rowsum(dout_i * out_i)   (-> softmax_d when given)
//   pass 1 (per batch, kv head, key tile): dK, dV of that key tile, accumulated over every query
//          tile of every query head of the kv head (GQA sum) in a fixed order;
//   pass 2 (per batch, head, query tile):  dQ of that tile over its visible key tiles.
// Each output element has exactly one writer and a fixed summation order, so results are
// bit-identical run to run and for any thread count. P is recomputed from the saved lse as
// exp(z - lse), which is 0 for empty rows (lse = +inf), so they contribute nothing.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

#include "cpu/cpu_kernels.h"

namespace flashplus::cpu {

namespace {

struct BwdScratch {
  int dp;
  Buffer q, dout;   // [kBlockM][dp]
  Buffer kt, vt;    // [dp][kBlockN]
  Buffer k;         // [kBlockN][dp] (pass 2: dQ += dS @ K)
  Buffer s;         // [kBlockM][kBlockN]: S, then the softcap derivative factor
  Buffer pr;        // [kBlockM][kBlockN]: P
  Buffer dpm;       // [kBlockM][kBlockN]: dP, then dS
  Buffer pt, dst;   // [kBlockN][kBlockM]: P^T and dS^T (pass 1)
  Buffer acc1, acc2;  // [kBlockN][dp] dK, dV (pass 1) or [kBlockM][dp] dQ (pass 2)
  Buffer row;
  explicit BwdScratch(int d)
      : dp(round_up(d, kNr)),
        q(static_cast<size_t>(kBlockM) * dp),
        dout(static_cast<size_t>(kBlockM) * dp),
        kt(static_cast<size_t>(dp) * kBlockN),
        vt(static_cast<size_t>(dp) * kBlockN),
        k(static_cast<size_t>(kBlockN) * dp),
        s(static_cast<size_t>(kBlockM) * kBlockN),
        pr(static_cast<size_t>(kBlockM) * kBlockN),
        dpm(static_cast<size_t>(kBlockM) * kBlockN),
        pt(static_cast<size_t>(kBlockN) * kBlockM),
        dst(static_cast<size_t>(kBlockN) * kBlockM),
        acc1(static_cast<size_t>(std::max(kBlockM, kBlockN)) * dp),
        acc2(static_cast<size_t>(std::max(kBlockM, kBlockN)) * dp),
        row(dp) {}
};

void load_kv(const AttnParams& p, int b, int hk, int j0, int n, bool want_k, BwdScratch& w) {
  KvTileDst kv;
  kv.kt = w.kt.data();
  kv.vt = w.vt.data();
  kv.k = want_k ? w.k.data() : nullptr;
  load_kv_tile(p, b, hk, j0, n, w.dp, kv, w.row.data());
}

// Q and dO rows [i0, i0 + nr) of head h; padding rows zeroed.
void load_q_do(const AttnParams& p, int b, int h, int i0, int nr, BwdScratch& w) {
  load_tile_rows(p.q, p.dtype, p.q_stride, b, h, i0, nr, p.head_dim, w.dp, kBlockM, w.q.data());
  load_tile_rows(p.dout, p.dtype, p.dout_stride, b, h, i0, nr, p.head_dim, w.dp, kBlockM,
                 w.dout.data());
}

// For the (query tile, key tile) pair: P, dP and dS = P * (dP - D) * softcap'(s), in w.pr and
// w.dpm (row-major [r][c]). Rows/columns outside the visible set get P = dS = 0.
void tile_grads(const AttnParams& p, int b, int h, int i0, int nr, int j0, int nc,
                const float* lse, const float* dvec, BwdScratch& w) {
  const int d = p.head_dim;
  const int mr = round_up(nr, kMr);
  const float scale = p.softmax_scale;
  const float cap = p.softcap;
  const bool has_alibi = p.alibi_slopes != nullptr;
  const float slope = alibi_slope(p, b, h);
  float* s = w.s.data();
  float* pr = w.pr.data();
  float* dpm = w.dpm.data();
  const size_t tile = static_cast<size_t>(kBlockM) * kBlockN;
  std::fill(s, s + tile, 0.f);
  std::fill(dpm, dpm + tile, 0.f);
  gemm_acc(mr, kBlockN, d, w.q.data(), w.dp, w.kt.data(), kBlockN, s, kBlockN);
  gemm_acc(mr, kBlockN, d, w.dout.data(), w.dp, w.vt.data(), kBlockN, dpm, kBlockN);
  for (int r = 0; r < kBlockM; ++r) {
    float* srow = s + static_cast<int64_t>(r) * kBlockN;
    float* prow = pr + static_cast<int64_t>(r) * kBlockN;
    float* drow = dpm + static_cast<int64_t>(r) * kBlockN;
    int c0 = 0, c1 = 0;
    const int i = i0 + r;
    if (r < nr && std::isfinite(lse[r])) {
      int lo, hi;
      key_range(p, i, &lo, &hi);
      c0 = std::max(lo, j0) - j0;
      c1 = std::min(hi, j0 + nc) - j0;
    }
    for (int c = 0; c < kBlockN; ++c) {
      if (c < c0 || c >= c1) {
        prow[c] = 0.f;
        drow[c] = 0.f;
        continue;
      }
      float z = srow[c] * scale;
      float fac = 1.f;
      if (cap > 0.f) {
        const float t = std::tanh(z / cap);
        z = cap * t;
        fac = 1.f - t * t;  // d/ds softcap * tanh(s / softcap)
      }
      if (has_alibi) z += alibi_bias(p, slope, i, j0 + c);
      const float pv = std::exp(z - lse[r]);
      prow[c] = pv;
      drow[c] = pv * (drow[c] - dvec[r]) * fac;
    }
  }
}

// Query tiles [first, last) of a head that can see keys [j0, j0 + nc).
void query_tiles_for_keys(const AttnParams& p, int j0, int nc, int* first, int* last) {
  const int nqt = (p.seqlen_q + kBlockM - 1) / kBlockM;
  int f = nqt, l = 0;
  for (int qt = 0; qt < nqt; ++qt) {
    const int i0 = qt * kBlockM, i1 = std::min(p.seqlen_q, i0 + kBlockM);
    int lo0, hi0, lo1, hi1;
    key_range(p, i0, &lo0, &hi0);
    key_range(p, i1 - 1, &lo1, &hi1);
    if (lo0 < hi1 && lo0 < j0 + nc && hi1 > j0) {
      f = std::min(f, qt);
      l = qt + 1;
    }
  }
  *first = f;
  *last = std::max(f, l);
}

void dkdv_tile(const AttnParams& p, int b, int hk, int kt_idx, const float* dall, BwdScratch& w) {
  const int d = p.head_dim, dp = w.dp;
  const int j0 = kt_idx * kBlockN;
  const int nc = std::min(kBlockN, p.seqlen_k - j0);
  load_kv(p, b, hk, j0, nc, false, w);
  float* dk = w.acc1.data();
  float* dv = w.acc2.data();
  std::fill(dk, dk + static_cast<int64_t>(kBlockN) * dp, 0.f);
  std::fill(dv, dv + static_cast<int64_t>(kBlockN) * dp, 0.f);
  int qt0, qt1;
  query_tiles_for_keys(p, j0, nc, &qt0, &qt1);
  const int G = p.group();
  for (int g = 0; g < G; ++g) {
    const int h = hk * G + g;
    const int64_t rowbase = (static_cast<int64_t>(b) * p.nheads + h) * p.seqlen_q;
    for (int qt = qt0; qt < qt1; ++qt) {
      const int i0 = qt * kBlockM;
      const int nr = std::min(kBlockM, p.seqlen_q - i0);
      load_q_do(p, b, h, i0, nr, w);
      tile_grads(p, b, h, i0, nr, j0, nc, p.softmax_lse + rowbase + i0, dall + rowbase + i0, w);
      // Transpose P and dS so dV += P^T dO and dK += dS^T Q are plain row-major GEMMs.
      float* pt = w.pt.data();
      float* dst = w.dst.data();
      for (int r = 0; r < kBlockM; ++r)
        for (int c = 0; c < kBlockN; ++c) {
          pt[static_cast<int64_t>(c) * kBlockM + r] = w.pr.data()[static_cast<int64_t>(r) * kBlockN + c];
          dst[static_cast<int64_t>(c) * kBlockM + r] = w.dpm.data()[static_cast<int64_t>(r) * kBlockN + c];
        }
      gemm_acc(kBlockN, dp, kBlockM, pt, kBlockM, w.dout.data(), dp, dv, dp);
      gemm_acc(kBlockN, dp, kBlockM, dst, kBlockM, w.q.data(), dp, dk, dp);
    }
  }
  for (int c = 0; c < nc; ++c) {
    const int64_t j = j0 + c;
    store_row(p.dk, p.dtype, b * p.dk_stride.batch + j * p.dk_stride.row + hk * p.dk_stride.head, d,
              dk + static_cast<int64_t>(c) * dp, p.softmax_scale);
    store_row(p.dv, p.dtype, b * p.dv_stride.batch + j * p.dv_stride.row + hk * p.dv_stride.head, d,
              dv + static_cast<int64_t>(c) * dp, 1.f);
  }
}

void dq_tile(const AttnParams& p, int b, int h, int qt, const float* dall, BwdScratch& w) {
  const int d = p.head_dim, dp = w.dp;
  const int hk = h / p.group();
  const int i0 = qt * kBlockM;
  const int nr = std::min(kBlockM, p.seqlen_q - i0);
  const int mr = round_up(nr, kMr);
  const int64_t rowbase = (static_cast<int64_t>(b) * p.nheads + h) * p.seqlen_q;
  float* dq = w.acc1.data();
  std::fill(dq, dq + static_cast<int64_t>(kBlockM) * dp, 0.f);
  int lo0, hi0, lo1, hi1;
  key_range(p, i0, &lo0, &hi0);
  key_range(p, i0 + nr - 1, &lo1, &hi1);
  if (lo0 < hi1) {
    load_q_do(p, b, h, i0, nr, w);
    for (int j0 = lo0; j0 < hi1; j0 += kBlockN) {
      const int nc = std::min(kBlockN, hi1 - j0);
      load_kv(p, b, hk, j0, nc, true, w);
      tile_grads(p, b, h, i0, nr, j0, nc, p.softmax_lse + rowbase + i0, dall + rowbase + i0, w);
      gemm_acc(mr, dp, kBlockN, w.dpm.data(), kBlockN, w.k.data(), dp, dq, dp);
    }
  }
  for (int r = 0; r < nr; ++r) {
    const int64_t i = i0 + r;
    store_row(p.dq, p.dtype, b * p.dq_stride.batch + i * p.dq_stride.row + h * p.dq_stride.head, d,
              dq + static_cast<int64_t>(r) * dp, p.softmax_scale);
  }
}

}  // namespace

Status bwd(const AttnParams& p, const RunOptions& opts) {
  if (p.dtype == DType::i32) return Status::Unsupported("cpu backend: int32 attention");
  if (p.batch <= 0 || p.nheads <= 0) return Status::Ok();
  const int nthreads_max = resolve_threads(opts);
  const int64_t bh = static_cast<int64_t>(p.batch) * p.nheads;
  const int d = p.head_dim;

  // ---- pass 0: D = rowsum(dout * out), O(b * h * sq) floats ----------------------------------
  std::vector<float> dtmp;
  float* dall = p.softmax_d;
  if (!dall) {
    dtmp.assign(static_cast<size_t>(bh) * std::max(p.seqlen_q, 0), 0.f);
    dall = dtmp.data();
  }
  if (p.seqlen_q > 0) {
    std::atomic<int64_t> next{0};
    const int nt = static_cast<int>(std::min<int64_t>(nthreads_max, bh));
    FLASHPLUS_RETURN_IF_ERROR(run_threads(nt, [&](int) {
      std::vector<float> a(d), o(d);
      for (int64_t it; (it = next.fetch_add(1)) < bh;) {
        const int b = static_cast<int>(it / p.nheads), h = static_cast<int>(it % p.nheads);
        for (int64_t i = 0; i < p.seqlen_q; ++i) {
          load_row(p.dout, p.dtype, b * p.dout_stride.batch + i * p.dout_stride.row + h * p.dout_stride.head, d, a.data());
          load_row(p.out, p.dtype, b * p.out_stride.batch + i * p.out_stride.row + h * p.out_stride.head, d, o.data());
          double acc = 0;
          for (int x = 0; x < d; ++x) acc += static_cast<double>(a[x]) * o[x];
          dall[it * p.seqlen_q + i] = static_cast<float>(acc);
        }
      }
    }));
  }

  // ---- pass 1: dK, dV per (batch, kv head, key tile) ------------------------------------------
  if (p.seqlen_k > 0) {
    const int nkt = (p.seqlen_k + kBlockN - 1) / kBlockN;
    const int64_t items = static_cast<int64_t>(p.batch) * p.nheads_k * nkt;
    std::atomic<int64_t> next{0};
    const int nt = static_cast<int>(std::min<int64_t>(nthreads_max, items));
    FLASHPLUS_RETURN_IF_ERROR(run_threads(nt, [&](int) {
      BwdScratch w(d);
      for (int64_t it; (it = next.fetch_add(1)) < items;) {
        const int kt = static_cast<int>(it % nkt);
        const int64_t bk = it / nkt;
        dkdv_tile(p, static_cast<int>(bk / p.nheads_k), static_cast<int>(bk % p.nheads_k), kt, dall, w);
      }
    }));
  }

  // ---- pass 2: dQ per (batch, head, query tile) -----------------------------------------------
  if (p.seqlen_q > 0) {
    const int nqt = (p.seqlen_q + kBlockM - 1) / kBlockM;
    const int64_t items = bh * nqt;
    std::atomic<int64_t> next{0};
    const int nt = static_cast<int>(std::min<int64_t>(nthreads_max, items));
    FLASHPLUS_RETURN_IF_ERROR(run_threads(nt, [&](int) {
      BwdScratch w(d);
      for (int64_t it; (it = next.fetch_add(1)) < items;) {
        const int qt = nqt - 1 - static_cast<int>(it / bh);
        const int64_t rest = it % bh;
        dq_tile(p, static_cast<int>(rest / p.nheads), static_cast<int>(rest % p.nheads), qt, dall, w);
      }
    }));
  }
  return Status::Ok();
}

}  // namespace flashplus::cpu
