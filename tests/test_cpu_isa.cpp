// The CPU backend on every ISA path this machine runs (kernels/cpu/isa.h), forced through the
// internal API (not the environment): the micro-kernels against a double-precision product, and
// forward/backward cases against the fp64 reference with the project's tolerances.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "cpu/cpu_kernels.h"
#include "cpu/isa.h"
#include "harness.h"

using namespace flashplus;
using flashplus::cpu::Isa;
using flashplus::testing::Case;

namespace {

Case make(int b, int sq, int sk, int h, int hk, int d, DType t) {
  return flashplus::testing::make_case(b, sq, sk, h, hk, d, t, /*salt=*/7919);
}

uint16_t bf16_of(float x) {  // round to nearest even, as the inputs of a bf16 tensor are
  return float_to_bf16_bits(x);
}

}  // namespace

TEST_CASE("cpu isa: names parse back, the baseline is always there", "[cpu_isa]") {
  for (Isa i : {Isa::scalar, Isa::avx2, Isa::avx512, Isa::avx512bf16, Isa::neon}) {
    Isa back;
    REQUIRE(cpu::parse_isa(cpu::isa_name(i), &back));
    CHECK(back == i);
  }
  Isa x;
  CHECK_FALSE(cpu::parse_isa("AVX2", &x));
  CHECK_FALSE(cpu::parse_isa("", &x));
  const auto all = cpu::supported_isas();
  REQUIRE(!all.empty());
  CHECK(all.front() == Isa::scalar);
  CHECK(all.back() == cpu::detected_isa());
#if defined(__x86_64__)
  CHECK_FALSE(cpu::isa_supported(Isa::neon));
  const Isa before = cpu::active_isa();
  CHECK_FALSE(cpu::set_isa(Isa::neon));  // refused, nothing changes
  CHECK(cpu::active_isa() == before);
#elif defined(__aarch64__)
  CHECK_FALSE(cpu::set_isa(Isa::avx2));
#endif
}

TEST_CASE("cpu isa: every path's GEMM micro-kernels match a double product", "[cpu_isa]") {
  // Odd K, ragged M/N multiples of the micro-tile, leading dimensions wider than the rows.
  const int M = 20, N = 48, K = 37, lda = 41, ldb = 56, ldc = 52;
  std::mt19937_64 rng(99);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> A(static_cast<size_t>(M) * lda), B(static_cast<size_t>(K) * ldb),
      C0(static_cast<size_t>(M) * ldc);
  // bf16-exact values, so the same numbers feed the fp32 and the bf16-pair kernels.
  auto bfr = [&](float x) {
    const uint32_t u = static_cast<uint32_t>(bf16_of(x)) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  };
  for (auto& e : A) e = bfr(nd(rng));
  for (auto& e : B) e = bfr(nd(rng));
  for (auto& e : C0) e = nd(rng);
  // A as bf16 rows with a zero column K (odd K reads one pair past it); B as pairs.
  const int K2 = (K + 1) / 2, ldbp = 2 * N + 32;
  std::vector<uint16_t> A16(static_cast<size_t>(M) * lda, 0), Bp(static_cast<size_t>(K2) * ldbp, 0);
  for (int i = 0; i < M; ++i)
    for (int k = 0; k < K; ++k) A16[i * lda + k] = cpu::bf16_bits_exact(A[i * lda + k]);
  for (int k = 0; k < K; ++k)
    for (int j = 0; j < N; ++j) Bp[(k / 2) * ldbp + 2 * j + (k & 1)] = cpu::bf16_bits_exact(B[k * ldb + j]);
  std::vector<double> want(static_cast<size_t>(M) * N);
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      double s = C0[i * ldc + j];
      for (int k = 0; k < K; ++k) s += static_cast<double>(A[i * lda + k]) * B[k * ldb + j];
      want[i * N + j] = s;
    }
  std::vector<float> fma_result;  // the FMA paths sum in the same order: bit-identical
  for (Isa isa : cpu::supported_isas()) {
    cpu::ScopedIsa force(isa);
    REQUIRE(force.ok());
    REQUIRE(cpu::active_isa() == isa);
    INFO("isa " << cpu::isa_name(isa));
    for (int which = 0; which < 2; ++which) {
      INFO((which ? "gemm_bf16_acc" : "gemm_acc"));
      std::vector<float> C = C0;
      if (which)
        cpu::gemm_bf16_acc(M, N, K, A16.data(), lda, Bp.data(), ldbp, C.data(), ldc);
      else
        cpu::gemm_acc(M, N, K, A.data(), lda, B.data(), ldb, C.data(), ldc);
      double err = 0;
      for (int i = 0; i < M; ++i)
        for (int j = 0; j < N; ++j) err = std::max(err, std::abs(C[i * ldc + j] - want[i * N + j]));
      CHECK(err < 2e-5);  // |terms| ~ 1, 37 of them: fp32 rounding of the running sum
      for (int i = 0; i < M; ++i)  // columns past N untouched
        for (int j = N; j < ldc; ++j) CHECK(C[i * ldc + j] == C0[i * ldc + j]);
      if (!which && (isa == Isa::avx2 || isa == Isa::avx512 || isa == Isa::avx512bf16)) {
        if (fma_result.empty())
          fma_result = C;
        else
          CHECK(std::memcmp(C.data(), fma_result.data(), C.size() * sizeof(float)) == 0);
      }
    }
  }
}

TEST_CASE("cpu isa: forward and backward on every path agree with the fp64 reference", "[cpu_isa]") {
  std::vector<Case> cs;
  for (DType t : {DType::f32, DType::bf16, DType::f16}) {
    cs.push_back(make(2, 37, 37, 2, 2, 40, t));    // off the tile grid
    Case c = make(1, 150, 133, 4, 2, 72, t);       // GQA, sq > sk, causal
    c.p.causal = true;
    cs.push_back(c);
    c = make(1, 70, 200, 2, 1, 128, t);            // MQA, sq < sk, softcap
    c.p.softcap = 20.0;
    cs.push_back(c);
  }
  Case odd = make(1, 45, 61, 2, 2, 59, DType::bf16);  // odd head dim: the last bf16 pair is half pad
  odd.p.causal = true;
  cs.push_back(odd);
  for (Isa isa : cpu::supported_isas()) {
    cpu::ScopedIsa force(isa);
    REQUIRE(force.ok());
    CHECK(cpu::bf16_dot_active() == (isa == Isa::avx512bf16));
    for (const Case& c : cs) {
      const auto r = flashplus::testing::run_case(c, Backend::cpu);
      INFO("isa " << cpu::isa_name(isa) << ": " << c.describe());
      INFO(r.summary());
      CHECK(r.pass());
    }
  }
}
