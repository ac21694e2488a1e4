// The AMD MFMA forward's and backward's index math, run on the CPU. No AMD device exists where this project is
// built, so this is the evidence that the kernel's fragment layouts are consistent:
//
//   - isa_mfma() below is the instruction as AMD documents it (AMD Matrix Instruction Calculator,
//     CDNA2, V_MFMA_F32_16X16X16F16 / V_MFMA_F32_16X16X16BF16_1K), written out independently of
//     kernels/primitives/mfma_layout.h: a simulated 64-lane wave, each lane holding its 4 operand
//     elements and 4 accumulator registers.
//   - Everything else (which LDS address a lane reads, which query row / key / head-dim column a
//     register holds, the C -> B reuse of P, the row reductions over lanes l^16 and l^32, the
//     global -> LDS copy including the transposed tiles) comes from mfma_layout.h, the header the
//     HIP kernels (kernels/gpu/fwd/fwd_kernel_mfma.h, kernels/gpu/bwd/bwd_kernel_mfma.h) compute
//     their addresses with, and the block emulations below follow those kernels step by step.
//
// If the layout header disagreed with the documented instruction, the products below would be
// wrong. What this cannot show: that the documented layout is the hardware's (AMD's table is the
// source), and anything about the HIP code itself beyond its index math (it compiles; see
// docs/GPU_KERNELS.md).
#include <catch2/catch.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "flashplus/numerics.h"
#include "flashplus/params.h"
#include "kernels/primitives/mfma_layout.h"

using namespace flashplus;
using prim::mfma::FwdMfmaGeom;
using prim::mfma::Mfma16;

namespace {

constexpr int kLanes = 64;
using Operand = std::array<std::array<uint16_t, 4>, kLanes>;  // A or B: 4 16-bit elements a lane
using Accum = std::array<std::array<float, 4>, kLanes>;       // C/D: 4 fp32 registers a lane

float to_float(bool bf16, uint16_t x) { return bf16 ? bf16_bits_to_float(x) : half_bits_to_float(x); }
uint16_t to_bits(bool bf16, float x) { return bf16 ? float_to_bf16_bits(x) : float_to_half_bits(x); }

// D = A B + C as the ISA defines it, fp32 accumulation:
//   A[i][k] is element k%4 of lane 16*(k/4) + i;  B[k][j] is element k%4 of lane 16*(k/4) + j;
//   C/D[i][j] is register i%4 of lane 16*(i/4) + j.
void isa_mfma(bool bf16, Accum& c, const Operand& a, const Operand& b) {
  float A[16][16], B[16][16];
  for (int i = 0; i < 16; ++i)
    for (int k = 0; k < 16; ++k) {
      A[i][k] = to_float(bf16, a[16 * (k / 4) + i][k % 4]);
      B[k][i] = to_float(bf16, b[16 * (k / 4) + i][k % 4]);
    }
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j) {
      float acc = c[16 * (i / 4) + j][i % 4];
      for (int k = 0; k < 16; ++k) acc += A[i][k] * B[k][j];
      c[16 * (i / 4) + j][i % 4] = acc;
    }
}

// One 8-byte read: 4 consecutive 16-bit elements from `base + offset` into a lane's operand.
void load4(std::array<uint16_t, 4>& dst, const uint16_t* base, int64_t offset) {
  for (int e = 0; e < 4; ++e) dst[e] = base[offset + e];
}

// __shfl_xor over the simulated wave.
std::array<float, kLanes> shfl_xor(const std::array<float, kLanes>& x, int mask) {
  std::array<float, kLanes> r{};
  for (int l = 0; l < kLanes; ++l) r[l] = x[l ^ mask];
  return r;
}
std::array<float, kLanes> column_max(std::array<float, kLanes> x) {
  for (int m : {Mfma16::kColumnXor0, Mfma16::kColumnXor1}) {
    const auto o = shfl_xor(x, m);
    for (int l = 0; l < kLanes; ++l) x[l] = std::max(x[l], o[l]);
  }
  return x;
}
std::array<float, kLanes> column_sum(std::array<float, kLanes> x) {
  for (int m : {Mfma16::kColumnXor0, Mfma16::kColumnXor1}) {
    const auto o = shfl_xor(x, m);
    for (int l = 0; l < kLanes; ++l) x[l] += o[l];
  }
  return x;
}

std::vector<uint16_t> random_bits(bool bf16, size_t n, std::mt19937& rng, float scale = 1.f) {
  std::normal_distribution<float> dist(0.f, scale);
  std::vector<uint16_t> v(n);
  for (auto& x : v) x = to_bits(bf16, dist(rng));
  return v;
}

}  // namespace

TEST_CASE("mfma layout: fragments loaded by Mfma16 multiply like the documented instruction",
          "[mfma]") {
  // C (16 x 16) = A (16 x K) B (K x 16), A row-major, B stored as B^T row-major (like Q and K),
  // K = 64 in four k-steps; each lane loads its fragments at the offsets Mfma16 gives.
  for (const bool bf16 : {false, true}) {
    std::mt19937 rng(bf16 ? 7 : 11);
    constexpr int kK = 64;
    const auto a = random_bits(bf16, 16 * kK, rng), bt = random_bits(bf16, 16 * kK, rng);
    Accum c{};
    for (int kk = 0; kk < kK / 16; ++kk) {
      Operand fa{}, fb{};
      for (int l = 0; l < kLanes; ++l) {
        load4(fa[l], a.data(), Mfma16::a_row(l) * kK + kk * 16 + Mfma16::a_k(l, 0));
        load4(fb[l], bt.data(), Mfma16::b_col(l) * kK + kk * 16 + Mfma16::b_k(l, 0));
      }
      isa_mfma(bf16, c, fa, fb);
    }
    int checked = 0;
    for (int l = 0; l < kLanes; ++l)
      for (int e = 0; e < 4; ++e) {
        const int i = Mfma16::c_row(l, e), j = Mfma16::c_col(l);
        double ref = 0;
        for (int k = 0; k < kK; ++k)
          ref += double(to_float(bf16, a[i * kK + k])) * to_float(bf16, bt[j * kK + k]);
        REQUIRE(std::abs(c[l][e] - ref) <= 1e-4 * (1 + std::abs(ref)));
        ++checked;
      }
    REQUIRE(checked == 256);
  }
}

TEST_CASE("mfma layout: every lane/register is a distinct matrix element", "[mfma]") {
  std::vector<int> seen_a(256, 0), seen_b(256, 0), seen_c(256, 0);
  for (int l = 0; l < kLanes; ++l)
    for (int e = 0; e < 4; ++e) {
      ++seen_a[Mfma16::a_row(l) * 16 + Mfma16::a_k(l, e)];
      ++seen_b[Mfma16::b_k(l, e) * 16 + Mfma16::b_col(l)];
      ++seen_c[Mfma16::c_row(l, e) * 16 + Mfma16::c_col(l)];
      // the ISA's register of C[i][j]: lane 16*(i/4) + j, register i%4
      REQUIRE(16 * (Mfma16::c_row(l, e) / 4) + Mfma16::c_col(l) == l);
      REQUIRE(Mfma16::c_row(l, e) % 4 == e);
    }
  for (int x = 0; x < 256; ++x) {
    REQUIRE(seen_a[x] == 1);
    REQUIRE(seen_b[x] == 1);
    REQUIRE(seen_c[x] == 1);
  }
}

namespace {

// One attention problem (one batch, one head), 16-bit inputs with row strides > head_dim.
struct Problem {
  bool bf16 = true;
  int sq = 0, sk = 0, head_dim = 0, stride = 0;
  int window_left = -1, window_right = -1;
  float scale = 0.f;
  std::vector<uint16_t> q, k, v;
};

AttnParams params_of(const Problem& pr) {
  AttnParams p;
  p.seqlen_q = pr.sq;
  p.seqlen_k = pr.sk;
  p.head_dim = pr.head_dim;
  p.window_left = pr.window_left;
  p.window_right = pr.window_right;
  p.softmax_scale = pr.scale;
  return p;
}

// The kernel fwd_mfma_kernel<T, D, BM, BN, NW> on one (batch, head), plain path (no softcap, no
// ALiBi: those go through primitives/attn_score.h, shared with the NVIDIA kernel), every block and
// every wave simulated, same step order. Output: out (sq x head_dim, NaN where never written), lse.
template <int D, int BM, int BN, int NW>
void emulate_fwd(const Problem& pr, std::vector<float>& out, std::vector<float>& lse) {
  using G = FwdMfmaGeom<D, BM, BN, NW>;
  constexpr int kMT = G::kMT, kNT = G::kNT, kDT = G::kDT;
  const AttnParams p = params_of(pr);
  const bool bf = pr.bf16;
  const int head_dim = pr.head_dim, dchunks = head_dim / 8;
  out.assign(static_cast<size_t>(pr.sq) * head_dim, std::numeric_limits<float>::quiet_NaN());
  lse.assign(pr.sq, std::numeric_limits<float>::quiet_NaN());
  const float mul = pr.scale * 1.4426950408889634f;  // plain path: raw accumulators

  for (int m_block = 0; m_block * BM < pr.sq; ++m_block) {
    const int m0 = m_block * BM, rows_q = std::min(BM, pr.sq - m0);
    int lo_first, hi_first, lo_last, hi_last;
    p.key_range(m0, &lo_first, &hi_first);
    p.key_range(m0 + rows_q - 1, &lo_last, &hi_last);
    if (lo_first >= hi_last) {
      for (int r = 0; r < rows_q; ++r) {
        for (int d = 0; d < head_dim; ++d) out[(m0 + r) * head_dim + d] = 0.f;
        lse[m0 + r] = INFINITY;
      }
      continue;
    }
    const int n_first = lo_first / BN, n_last = (hi_last - 1) / BN;

    // Per wave: Q fragments, accumulators, row statistics (index [wave][mt][...][lane]).
    std::vector<std::array<Operand, kDT>> qf(NW * kMT);
    std::vector<std::array<Accum, kDT>> acc_o(NW * kMT);
    std::vector<std::array<float, kLanes>> row_max(NW * kMT), row_sum(NW * kMT);
    for (int w = 0; w < NW; ++w)
      for (int mt = 0; mt < kMT; ++mt) {
        auto& qw = qf[w * kMT + mt];
        for (int kk = 0; kk < kDT; ++kk)
          for (int l = 0; l < kLanes; ++l) {
            const int r = G::tile_row0(w, mt) + G::q_row(l), c = G::q_col(l, kk);
            if (r < rows_q && c < head_dim)
              load4(qw[kk][l], pr.q.data(), static_cast<int64_t>(m0 + r) * pr.stride + c);
            else
              qw[kk][l] = {0, 0, 0, 0};
          }
        for (auto& t : acc_o[w * kMT + mt])
          for (auto& lane : t) lane = {0.f, 0.f, 0.f, 0.f};
        row_max[w * kMT + mt].fill(-INFINITY);
        row_sum[w * kMT + mt].fill(0.f);
      }

    std::vector<uint16_t> sK(G::kKElems, 0xffff), sVt(G::kVtElems, 0xffff);  // NaN poison
    for (int nb = n_first; nb <= n_last; ++nb) {
      const int n0 = nb * BN, rows_valid = pr.sk - n0;
      // load_kv_regs + store_kv_lds, thread by thread.
      for (int tid = 0; tid < G::kThreads; ++tid)
        for (int it = 0; it < G::kCopyIters; ++it) {
          const int kr = G::k_copy_row(tid, it), kc = G::k_copy_chunk(tid, it);
          const int vr = G::v_copy_row(tid, it), vc = G::v_copy_chunk(tid, it);
          for (int e = 0; e < 8; ++e) {
            const uint16_t kx = kr < rows_valid && kc < dchunks
                                    ? pr.k[static_cast<int64_t>(n0 + kr) * pr.stride + kc * 8 + e]
                                    : 0;
            const uint16_t vx = vr < rows_valid && vc < dchunks
                                    ? pr.v[static_cast<int64_t>(n0 + vr) * pr.stride + vc * 8 + e]
                                    : 0;
            sK[G::k_lds(kr, kc * 8 + e)] = kx;
            sVt[G::vt_lds(vc * 8 + e, vr)] = vx;
          }
        }
      const bool full_tile = n0 + BN <= pr.sk && n0 >= lo_last && n0 + BN <= hi_first;

      for (int w = 0; w < NW; ++w) {
        // S^T = K Q^T
        std::array<std::array<Accum, kNT>, kMT> s{};
        for (int kk = 0; kk < kDT; ++kk) {
          if (kk * 16 >= head_dim) continue;
          for (int nt = 0; nt < kNT; ++nt) {
            Operand a{};
            for (int l = 0; l < kLanes; ++l) load4(a[l], sK.data(), G::k_frag(l, nt, kk));
            for (int mt = 0; mt < kMT; ++mt) isa_mfma(bf, s[mt][nt], a, qf[w * kMT + mt][kk]);
          }
        }
        // mask, online softmax, P^T = the C registers rounded to 16 bits
        std::array<std::array<Operand, kNT>, kMT> pf{};
        for (int mt = 0; mt < kMT; ++mt) {
          auto& rmax = row_max[w * kMT + mt];
          auto& rsum = row_sum[w * kMT + mt];
          std::array<float, kLanes> mx{};
          for (int l = 0; l < kLanes; ++l) {
            const int i = m0 + G::tile_row0(w, mt) + G::s_query(l);
            int lo, hi;
            p.key_range(i, &lo, &hi);
            mx[l] = -INFINITY;
            for (int nt = 0; nt < kNT; ++nt)
              for (int e = 0; e < 4; ++e) {
                const int j = n0 + G::s_key(l, nt, e);
                if (!full_tile && (j < lo || j >= hi)) s[mt][nt][l][e] = -INFINITY;
                mx[l] = std::max(mx[l], s[mt][nt][l][e]);
              }
          }
          mx = column_max(mx);
          for (int l = 0; l < kLanes; ++l) {
            const float new_max = std::max(rmax[l], mx[l]);
            const float m_scaled = (new_max == -INFINITY ? 0.f : new_max) * mul;
            const float corr = std::exp2(rmax[l] * mul - m_scaled);
            rmax[l] = new_max;
            float sum = 0.f;
            for (int nt = 0; nt < kNT; ++nt)
              for (int e = 0; e < 4; ++e) {
                const float x = std::exp2(std::fma(s[mt][nt][l][e], mul, -m_scaled));
                s[mt][nt][l][e] = x;
                sum += x;
                pf[mt][nt][l][e] = to_bits(bf, x);  // pack4: register e -> element e
              }
            rsum[l] = rsum[l] * corr + sum;
            for (auto& t : acc_o[w * kMT + mt])
              for (auto& r : t[l]) r *= corr;
          }
        }
        // O^T += V^T P^T
        for (int kk = 0; kk < kNT; ++kk)
          for (int dt = 0; dt < kDT; ++dt) {
            if (dt * 16 >= head_dim) continue;
            Operand a{};
            for (int l = 0; l < kLanes; ++l) load4(a[l], sVt.data(), G::vt_frag(l, dt, kk));
            for (int mt = 0; mt < kMT; ++mt) isa_mfma(bf, acc_o[w * kMT + mt][dt], a, pf[mt][kk]);
          }
      }
    }

    // epilogue
    for (int w = 0; w < NW; ++w)
      for (int mt = 0; mt < kMT; ++mt) {
        const auto l_sum = column_sum(row_sum[w * kMT + mt]);
        for (int l = 0; l < kLanes; ++l) {
          const float lsum = l_sum[l], inv = lsum > 0.f ? 1.f / lsum : 0.f;
          const int r = G::tile_row0(w, mt) + G::o_query(l);
          if (r >= rows_q) continue;
          for (int dt = 0; dt < kDT; ++dt)
            for (int e = 0; e < 4; ++e) {
              const int d = G::o_d(l, dt, e);
              if (G::o_d(l, dt, 0) >= head_dim) continue;
              float& o = out[static_cast<int64_t>(m0 + r) * head_dim + d];
              REQUIRE(std::isnan(o));  // written once
              o = to_float(bf, to_bits(bf, acc_o[w * kMT + mt][dt][l][e] * inv));
            }
          if (G::writes_lse(l)) {
            const float m = row_max[w * kMT + mt][l] == -INFINITY ? 0.f : row_max[w * kMT + mt][l];
            float& ls = lse[m0 + r];
            REQUIRE(std::isnan(ls));
            ls = lsum > 0.f ? m * mul * 0.6931471805599453f + std::log(lsum) : INFINITY;
          }
        }
      }
  }
}

// fp64 attention of the rounded inputs; fully masked rows: out 0, lse +inf.
void reference_fwd(const Problem& pr, std::vector<double>& out, std::vector<double>& lse) {
  const AttnParams p = params_of(pr);
  const bool bf = pr.bf16;
  out.assign(static_cast<size_t>(pr.sq) * pr.head_dim, 0.0);
  lse.assign(pr.sq, INFINITY);
  std::vector<double> s(pr.sk);
  for (int i = 0; i < pr.sq; ++i) {
    int lo, hi;
    p.key_range(i, &lo, &hi);
    if (lo >= hi) continue;
    double m = -INFINITY;
    for (int j = lo; j < hi; ++j) {
      double acc = 0;
      for (int d = 0; d < pr.head_dim; ++d)
        acc += double(to_float(bf, pr.q[static_cast<int64_t>(i) * pr.stride + d])) *
               to_float(bf, pr.k[static_cast<int64_t>(j) * pr.stride + d]);
      s[j] = acc * pr.scale;
      m = std::max(m, s[j]);
    }
    double sum = 0;
    for (int j = lo; j < hi; ++j) sum += std::exp(s[j] - m);
    lse[i] = m + std::log(sum);
    for (int j = lo; j < hi; ++j) {
      const double pj = std::exp(s[j] - m) / sum;
      for (int d = 0; d < pr.head_dim; ++d)
        out[static_cast<int64_t>(i) * pr.head_dim + d] +=
            pj * to_float(bf, pr.v[static_cast<int64_t>(j) * pr.stride + d]);
    }
  }
}

template <int D, int BM, int BN, int NW>
void check_case(bool bf16, int sq, int sk, int head_dim, int wl, int wr, uint32_t seed) {
  CAPTURE(D, BM, BN, NW, bf16, sq, sk, head_dim, wl, wr, seed);
  Problem pr;
  pr.bf16 = bf16;
  pr.sq = sq;
  pr.sk = sk;
  pr.head_dim = head_dim;
  pr.stride = head_dim + 24;  // row stride > head_dim: strided rows, as in a packed qkv
  pr.window_left = wl;
  pr.window_right = wr;
  pr.scale = 1.f / std::sqrt(static_cast<float>(head_dim));
  std::mt19937 rng(seed);
  pr.q = random_bits(bf16, static_cast<size_t>(sq) * pr.stride, rng, 1.5f);
  pr.k = random_bits(bf16, static_cast<size_t>(sk) * pr.stride, rng, 1.5f);
  pr.v = random_bits(bf16, static_cast<size_t>(sk) * pr.stride, rng);
  // The padding between head_dim and the stride is NaN: reading it would show.
  for (auto* t : {&pr.q, &pr.k, &pr.v})
    for (size_t r = 0; r < t->size() / pr.stride; ++r)
      for (int d = head_dim; d < pr.stride; ++d) (*t)[r * pr.stride + d] = bf16 ? 0x7fc0 : 0x7e00;

  std::vector<float> out, lse;
  emulate_fwd<D, BM, BN, NW>(pr, out, lse);
  std::vector<double> ref_out, ref_lse;
  reference_fwd(pr, ref_out, ref_lse);

  // P is rounded to 16 bits before P V (as on every tensor-core path), O to the output dtype.
  const double tol = bf16 ? 1.5e-2 : 2.5e-3;
  double max_err = 0, max_lse_err = 0;
  int empty_rows = 0;
  for (int i = 0; i < sq; ++i) {
    if (std::isinf(ref_lse[i])) {
      ++empty_rows;
      REQUIRE(std::isinf(lse[i]));
      REQUIRE(lse[i] > 0);
    } else {
      REQUIRE(std::isfinite(lse[i]));
      max_lse_err = std::max(max_lse_err, std::abs(lse[i] - ref_lse[i]));
    }
    for (int d = 0; d < head_dim; ++d) {
      const float o = out[static_cast<int64_t>(i) * head_dim + d];
      REQUIRE(std::isfinite(o));  // written, and no NaN from padding or poisoned LDS
      max_err = std::max(max_err, std::abs(o - ref_out[static_cast<int64_t>(i) * head_dim + d]));
    }
  }
  INFO("max |out - ref| " << max_err << ", max |lse - ref| " << max_lse_err << ", empty rows "
                          << empty_rows);
  CHECK(max_err <= tol);
  CHECK(max_lse_err <= 2e-4);
}

}  // namespace

TEST_CASE("mfma forward: the kernel's block emulated on a 64-lane wave matches fp64 attention",
          "[mfma]") {
  // The compiled default tiles of each bucket (fwd_kernel_mfma.h), a few masks and sizes: sq and
  // sk not multiples of the tiles, sq != sk, padded head dims, windows, rows with no key.
  for (const bool bf16 : {true, false}) {
    SECTION(bf16 ? "bf16" : "f16") {
      check_case<64, 128, 64, 4>(bf16, 150, 133, 64, -1, -1, 1);    // full attention
      check_case<64, 128, 64, 4>(bf16, 70, 201, 40, 201, 0, 2);     // causal, sq < sk, d 40
      check_case<64, 64, 64, 4>(bf16, 130, 47, 64, 47, 0, 3);       // causal, sq > sk: empty rows
      check_case<128, 64, 32, 4>(bf16, 97, 100, 96, 37, 11, 4);     // window (37, 11), d 96
      check_case<128, 128, 64, 4>(bf16, 1, 77, 128, -1, -1, 5);     // one query row
      check_case<256, 64, 16, 4>(bf16, 65, 50, 200, 50, 0, 6);      // causal, d 200
      check_case<256, 64, 32, 4>(bf16, 33, 1, 256, -1, -1, 7);      // one key
    }
  }
}

namespace {

// Backward inputs besides Problem: dO, the forward's output O (16-bit) and lse (fp32), both
// from the fp64 reference so that the comparison isolates the backward.
struct BwdInputs {
  std::vector<uint16_t> dout, out;  // row stride pr.stride
  std::vector<float> lse;
};

// The kernel bwd_mfma_kernel<T, D, BN, BM, NW> (plus preprocess and dQ conversion) on one
// (batch, head), plain path, every block and wave simulated in the kernel's step order.
// GQA: hs[g] / ins[g] are the query heads of one kv head (same k, v), dq[g] their gradients.
template <int D, int BN, int BM, int NW>
void emulate_bwd(const std::vector<Problem>& hs, const std::vector<BwdInputs>& ins,
                 std::vector<std::vector<float>>& dq, std::vector<float>& dk,
                 std::vector<float>& dv) {
  const Problem& pr = hs[0];  // sizes, k, v
  const int group = static_cast<int>(hs.size());
  using G = prim::mfma::BwdMfmaGeom<D, BN, BM, NW>;
  constexpr int kQT = G::kQT, kDT = G::kDT, kKT = G::kKT;
  const AttnParams p = params_of(pr);
  const bool bf = pr.bf16;
  const int head_dim = pr.head_dim, dchunks = head_dim / 8, sq = pr.sq, sk = pr.sk;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  dk.assign(static_cast<size_t>(sk) * head_dim, nan);
  dv.assign(static_cast<size_t>(sk) * head_dim, nan);
  const float scale_log2 = pr.scale * 1.4426950408889634f;

  // 1. preprocess (per query head)
  std::vector<std::vector<float>> dsum(group, std::vector<float>(sq)),
      dq_accum(group, std::vector<float>(static_cast<size_t>(sq) * D, 0.f));
  for (int g = 0; g < group; ++g)
    for (int i = 0; i < sq; ++i) {
      float s = 0.f;
      for (int d = 0; d < head_dim; ++d)
        s += to_float(bf, ins[g].out[static_cast<int64_t>(i) * pr.stride + d]) *
             to_float(bf, ins[g].dout[static_cast<int64_t>(i) * pr.stride + d]);
      dsum[g][i] = s;
    }

  for (int n_block = 0; n_block * BN < sk; ++n_block) {
    const int n0 = n_block * BN, rows_k = std::min(BN, sk - n0);
    int i_min, i_max;
    p.query_range(n0, n0 + rows_k, &i_min, &i_max);
    if (i_min > i_max) {
      for (int r = 0; r < rows_k; ++r)
        for (int d = 0; d < head_dim; ++d) {
          dk[static_cast<int64_t>(n0 + r) * head_dim + d] = 0.f;
          dv[static_cast<int64_t>(n0 + r) * head_dim + d] = 0.f;
        }
      continue;
    }
    const int m_first = i_min / BM, m_count = i_max / BM - m_first + 1;

    std::vector<std::array<Operand, kDT>> kf(NW), vf(NW);
    for (int w = 0; w < NW; ++w)
      for (int kk = 0; kk < kDT; ++kk)
        for (int l = 0; l < kLanes; ++l) {
          const int r = w * 16 + G::kv_row(l), c = G::kv_col(l, kk);
          if (r < rows_k && c < head_dim) {
            load4(kf[w][kk][l], pr.k.data(), static_cast<int64_t>(n0 + r) * pr.stride + c);
            load4(vf[w][kk][l], pr.v.data(), static_cast<int64_t>(n0 + r) * pr.stride + c);
          } else {
            kf[w][kk][l] = vf[w][kk][l] = {0, 0, 0, 0};
          }
        }
    std::vector<uint16_t> sKt(G::kKtElems, 0xffff);
    for (int c = 0; c < BN * G::kChunks; ++c) {
      const int key = G::kt_copy_key(c), ch = G::kt_copy_chunk(c);
      for (int e = 0; e < 8; ++e)
        sKt[G::kt_lds(ch * 8 + e, key)] =
            key < rows_k && ch < dchunks ? pr.k[static_cast<int64_t>(n0 + key) * pr.stride + ch * 8 + e] : 0;
    }
    std::vector<std::array<Accum, kDT>> acc_dk(NW), acc_dv(NW);
    for (int w = 0; w < NW; ++w)
      for (int dt = 0; dt < kDT; ++dt)
        for (int l = 0; l < kLanes; ++l) acc_dk[w][dt][l] = acc_dv[w][dt][l] = {0.f, 0.f, 0.f, 0.f};

    for (int it = 0; it < group * m_count; ++it) {  // (query head, query block), as the kernel
      const int hq = it / m_count;
      const int m0 = (m_first + it % m_count) * BM, rows_q = std::min(BM, sq - m0);
      const Problem& ph = hs[hq];
      const BwdInputs& in = ins[hq];
      std::vector<uint16_t> sQ(G::kRowElems, 0xffff), sdO(G::kRowElems, 0xffff);
      std::vector<uint16_t> sQt(G::kTElems, 0xffff), sdOt(G::kTElems, 0xffff);
      std::vector<uint16_t> sdS(G::kDsElems, 0xffff);
      std::vector<float> sLse(BM), sDs(BM);
      for (int c = 0; c < BM * G::kChunks; ++c) {
        const int r = G::q_copy_row(c), ch = G::q_copy_chunk(c);
        for (int e = 0; e < 8; ++e) {
          const bool ok = r < rows_q && ch < dchunks;
          const int64_t src = static_cast<int64_t>(m0 + r) * pr.stride + ch * 8 + e;
          const uint16_t xq = ok ? ph.q[src] : 0, xd = ok ? in.dout[src] : 0;
          sQ[G::row_lds(r, ch * 8 + e)] = xq;
          sdO[G::row_lds(r, ch * 8 + e)] = xd;
          sQt[G::t_lds(ch * 8 + e, r)] = xq;
          sdOt[G::t_lds(ch * 8 + e, r)] = xd;
        }
      }
      for (int r = 0; r < BM; ++r) {
        sLse[r] = r < rows_q ? in.lse[m0 + r] * 1.4426950408889634f : INFINITY;
        sDs[r] = r < rows_q ? dsum[hq][m0 + r] : 0.f;
      }
      const int q_last = m0 + rows_q - 1;
      bool full_tile = n0 + BN <= sk;
      if (p.has_window()) {
        int lo_a, hi_a, lo_b, hi_b;
        p.key_range(m0, &lo_a, &hi_a);
        p.key_range(q_last, &lo_b, &hi_b);
        full_tile = full_tile && lo_b <= n0 && hi_a >= n0 + BN;
      }

      for (int w = 0; w < NW; ++w) {
        std::array<Accum, kQT> pc{};
        std::array<Operand, kQT> pf{};
        for (int qt = 0; qt < kQT; ++qt) {
          Accum s{};
          for (int kk = 0; kk < kDT; ++kk) {
            if (kk * 16 >= head_dim) continue;
            Operand a{};
            for (int l = 0; l < kLanes; ++l) load4(a[l], sQ.data(), G::row_frag(l, qt, kk));
            isa_mfma(bf, s, a, kf[w][kk]);
          }
          for (int l = 0; l < kLanes; ++l) {
            const int j = n0 + w * 16 + G::sc_key(l);
            for (int e = 0; e < 4; ++e) {
              const int ql = qt * 16 + G::sc_query(l, e), i = m0 + ql;
              float x = std::exp2(std::fma(s[l][e], scale_log2, -sLse[ql]));
              if (!full_tile) {
                int lo, hi;
                p.key_range(i, &lo, &hi);
                if (j < lo || j >= hi) x = 0.f;
              }
              pc[qt][l][e] = x;
              pf[qt][l][e] = to_bits(bf, x);  // pack4
            }
          }
        }
        for (int qt = 0; qt < kQT; ++qt)
          for (int dt = 0; dt < kDT; ++dt) {
            if (dt * 16 >= head_dim) continue;
            Operand a{};
            for (int l = 0; l < kLanes; ++l) load4(a[l], sdOt.data(), G::t_frag(l, dt, qt));
            isa_mfma(bf, acc_dv[w][dt], a, pf[qt]);
          }
        for (int qt = 0; qt < kQT; ++qt) {
          Accum dp{};
          for (int kk = 0; kk < kDT; ++kk) {
            if (kk * 16 >= head_dim) continue;
            Operand a{};
            for (int l = 0; l < kLanes; ++l) load4(a[l], sdO.data(), G::row_frag(l, qt, kk));
            isa_mfma(bf, dp, a, vf[w][kk]);
          }
          Operand dsf{};
          for (int l = 0; l < kLanes; ++l)
            for (int e = 0; e < 4; ++e) {
              const float x = pc[qt][l][e] * (dp[l][e] - sDs[qt * 16 + G::sc_query(l, e)]);
              dsf[l][e] = to_bits(bf, x);
            }
          for (int dt = 0; dt < kDT; ++dt) {
            if (dt * 16 >= head_dim) continue;
            Operand a{};
            for (int l = 0; l < kLanes; ++l) load4(a[l], sQt.data(), G::t_frag(l, dt, qt));
            isa_mfma(bf, acc_dk[w][dt], a, dsf);
          }
          for (int l = 0; l < kLanes; ++l)
            for (int e = 0; e < 4; ++e)
              sdS[G::ds_lds(qt * 16 + G::sc_query(l, e), w * 16 + G::sc_key(l))] = dsf[l][e];
        }
      }
      // dQ phase (after the barrier)
      for (int w = 0; w < NW; ++w)
        for (int x = 0; x < G::kDqTiles; ++x) {
          const int qt = G::dq_qt(w, x), dt = G::dq_dt(w, x);
          if (dt * 16 >= head_dim) continue;
          Accum acc{};
          for (int kk = 0; kk < kKT; ++kk) {
            Operand a{}, bb{};
            for (int l = 0; l < kLanes; ++l) {
              load4(a[l], sdS.data(), G::ds_frag(l, qt, kk));
              load4(bb[l], sKt.data(), G::kt_frag(l, dt, kk));
            }
            isa_mfma(bf, acc, a, bb);
          }
          for (int l = 0; l < kLanes; ++l) {
            const int d = dt * 16 + G::dq_d(l);
            if (d >= head_dim) continue;
            for (int e = 0; e < 4; ++e) {
              const int ql = qt * 16 + G::dq_query(l, e);
              if (ql < rows_q) dq_accum[hq][static_cast<int64_t>(m0 + ql) * D + d] += acc[l][e] * pr.scale;
            }
          }
        }
    }
    // epilogue
    for (int w = 0; w < NW; ++w)
      for (int l = 0; l < kLanes; ++l) {
        const int kr = w * 16 + G::acc_key(l);
        if (kr >= rows_k) continue;
        for (int dt = 0; dt < kDT; ++dt) {
          if (G::acc_d(l, dt, 0) >= head_dim) continue;
          for (int e = 0; e < 4; ++e) {
            const int64_t o = static_cast<int64_t>(n0 + kr) * head_dim + G::acc_d(l, dt, e);
            REQUIRE(std::isnan(dk[o]));
            dk[o] = to_float(bf, to_bits(bf, acc_dk[w][dt][l][e] * pr.scale));
            dv[o] = to_float(bf, to_bits(bf, acc_dv[w][dt][l][e]));
          }
        }
      }
  }
  // 3. convert
  dq.assign(group, std::vector<float>(static_cast<size_t>(sq) * head_dim, 0.f));
  for (int g = 0; g < group; ++g)
    for (int i = 0; i < sq; ++i)
      for (int d = 0; d < head_dim; ++d)
        dq[g][static_cast<int64_t>(i) * head_dim + d] =
            to_float(bf, to_bits(bf, dq_accum[g][static_cast<int64_t>(i) * D + d]));
}

// fp64 backward of the rounded inputs, with the given (rounded) O for Dsum.
void reference_bwd(const Problem& pr, const BwdInputs& in, const std::vector<double>& lse,
                   std::vector<double>& dq, std::vector<double>& dk, std::vector<double>& dv) {
  const AttnParams p = params_of(pr);
  const bool bf = pr.bf16;
  const int hd = pr.head_dim;
  dq.assign(static_cast<size_t>(pr.sq) * hd, 0.0);
  dk.assign(static_cast<size_t>(pr.sk) * hd, 0.0);
  dv.assign(static_cast<size_t>(pr.sk) * hd, 0.0);
  const auto at = [&](const std::vector<uint16_t>& t, int r, int d) {
    return double(to_float(bf, t[static_cast<int64_t>(r) * pr.stride + d]));
  };
  for (int i = 0; i < pr.sq; ++i) {
    int lo, hi;
    p.key_range(i, &lo, &hi);
    if (lo >= hi) continue;
    double dsum = 0;
    for (int d = 0; d < hd; ++d) dsum += at(in.dout, i, d) * at(in.out, i, d);
    for (int j = lo; j < hi; ++j) {
      double s = 0, dp = 0;
      for (int d = 0; d < hd; ++d) {
        s += at(pr.q, i, d) * at(pr.k, j, d);
        dp += at(in.dout, i, d) * at(pr.v, j, d);
      }
      const double pij = std::exp(s * pr.scale - lse[i]);
      const double ds = pij * (dp - dsum);
      for (int d = 0; d < hd; ++d) {
        dv[static_cast<int64_t>(j) * hd + d] += pij * at(in.dout, i, d);
        dk[static_cast<int64_t>(j) * hd + d] += pr.scale * ds * at(pr.q, i, d);
        dq[static_cast<int64_t>(i) * hd + d] += pr.scale * ds * at(pr.k, j, d);
      }
    }
  }
}

double rel_l2(const std::vector<float>& x, const std::vector<double>& ref) {
  double num = 0, den = 0;
  for (size_t n = 0; n < x.size(); ++n) {
    REQUIRE(std::isfinite(x[n]));
    num += (x[n] - ref[n]) * (x[n] - ref[n]);
    den += ref[n] * ref[n];
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

template <int D, int BN, int BM, int NW>
void check_bwd_case(bool bf16, int sq, int sk, int head_dim, int wl, int wr, uint32_t seed,
                    int group = 1) {
  CAPTURE(D, BN, BM, NW, bf16, sq, sk, head_dim, wl, wr, seed, group);
  Problem pr;
  pr.bf16 = bf16;
  pr.sq = sq;
  pr.sk = sk;
  pr.head_dim = head_dim;
  pr.stride = head_dim + 24;
  pr.window_left = wl;
  pr.window_right = wr;
  pr.scale = 1.f / std::sqrt(static_cast<float>(head_dim));
  std::mt19937 rng(seed);
  pr.k = random_bits(bf16, static_cast<size_t>(sk) * pr.stride, rng, 1.5f);
  pr.v = random_bits(bf16, static_cast<size_t>(sk) * pr.stride, rng);
  const uint16_t nan_bits = bf16 ? 0x7fc0 : 0x7e00;
  const auto poison_padding = [&](std::vector<uint16_t>& t) {
    for (size_t r = 0; r < t.size() / pr.stride; ++r)
      for (int d = head_dim; d < pr.stride; ++d) t[r * pr.stride + d] = nan_bits;
  };
  poison_padding(pr.k);
  poison_padding(pr.v);
  std::vector<Problem> hs(group, pr);  // the query heads of the kv head: own q, shared k, v
  std::vector<BwdInputs> ins(group);
  std::vector<std::vector<double>> ref_lse(group);
  for (int g = 0; g < group; ++g) {
    hs[g].q = random_bits(bf16, static_cast<size_t>(sq) * pr.stride, rng, 1.5f);
    ins[g].dout = random_bits(bf16, static_cast<size_t>(sq) * pr.stride, rng);
    poison_padding(hs[g].q);
    poison_padding(ins[g].dout);
    std::vector<double> ref_out;
    reference_fwd(hs[g], ref_out, ref_lse[g]);
    ins[g].out.assign(static_cast<size_t>(sq) * pr.stride, nan_bits);
    ins[g].lse.resize(sq);
    for (int i = 0; i < sq; ++i) {
      for (int d = 0; d < head_dim; ++d)
        ins[g].out[static_cast<int64_t>(i) * pr.stride + d] =
            to_bits(bf16, static_cast<float>(ref_out[static_cast<int64_t>(i) * head_dim + d]));
      ins[g].lse[i] = static_cast<float>(ref_lse[g][i]);
    }
  }

  std::vector<std::vector<float>> dq;
  std::vector<float> dk, dv;
  emulate_bwd<D, BN, BM, NW>(hs, ins, dq, dk, dv);
  // Reference: per query head; dK, dV summed over the group.
  std::vector<double> rdk(static_cast<size_t>(sk) * head_dim, 0.0), rdv(rdk);
  // P and dS are rounded to 16 bits before their products (as on every tensor-core path).
  const double tol = bf16 ? 1e-2 : 1.5e-3;
  for (int g = 0; g < group; ++g) {
    std::vector<double> rdq, gdk, gdv;
    reference_bwd(hs[g], ins[g], ref_lse[g], rdq, gdk, gdv);
    for (size_t n = 0; n < rdk.size(); ++n) {
      rdk[n] += gdk[n];
      rdv[n] += gdv[n];
    }
    const double edq = rel_l2(dq[g], rdq);
    INFO("head " << g << ": rel L2 dq " << edq);
    CHECK(edq <= tol);
  }
  const double edk = rel_l2(dk, rdk), edv = rel_l2(dv, rdv);
  INFO("rel L2: dk " << edk << ", dv " << edv);
  CHECK(edk <= tol);
  CHECK(edv <= tol);
}

}  // namespace

TEST_CASE("mfma backward: the kernel's blocks emulated on a 64-lane wave match fp64 gradients",
          "[mfma]") {
  for (const bool bf16 : {true, false}) {
    SECTION(bf16 ? "bf16" : "f16") {
      check_bwd_case<64, 64, 32, 4>(bf16, 77, 90, 64, -1, -1, 21);     // full attention
      check_bwd_case<64, 64, 64, 4>(bf16, 70, 150, 40, 150, 0, 22);    // causal sq < sk, d 40
      check_bwd_case<64, 64, 32, 4>(bf16, 20, 150, 64, 10, 0, 23);     // window: unseen key blocks
      check_bwd_case<128, 64, 32, 4>(bf16, 97, 100, 96, 37, 11, 24);   // window (37, 11), d 96
      check_bwd_case<128, 64, 16, 4>(bf16, 90, 47, 128, 47, 0, 25);    // causal sq > sk: empty rows
      check_bwd_case<128, 64, 32, 4>(bf16, 1, 33, 128, -1, -1, 26);    // one query row
      check_bwd_case<64, 64, 64, 4>(bf16, 40, 1, 64, -1, -1, 27);      // one key
      check_bwd_case<128, 64, 32, 4>(bf16, 50, 70, 128, 70, 0, 28, 3); // GQA: 3 query heads
    }
  }
}
