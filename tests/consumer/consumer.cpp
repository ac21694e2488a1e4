// Uses the installed libflashplus through its C++ API (flashplus/api.h): a windowed MHA forward
// with ALiBi on random fp32 CPU data, checked against a naive computation here. With arguments
//   consumer_cpp TUNED_DIR FINGERPRINT
// it also checks that the library found its tuned table TUNED_DIR/FINGERPRINT.json by itself
// (relative to the installed library; FLASHPLUS_TUNED_TABLE must be unset). Exit 0 = pass.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include <flashplus/api.h>
#include <flashplus/tuning.h>

using namespace flashplus;

namespace {

bool check_tuned(const std::string& dir, const std::string& fingerprint) {
  if (const char* e = std::getenv("FLASHPLUS_TUNED_TABLE"); e && *e) {
    std::fprintf(stderr, "consumer_cpp: unset FLASHPLUS_TUNED_TABLE for the table check\n");
    return false;
  }
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::path want = fs::canonical(fs::path(dir) / (fingerprint + ".json"), ec);
  const std::string got = active_table_source(fingerprint);
  const bool ok = !ec && active_table(fingerprint) != nullptr && fs::path(got) == want;
  std::printf("consumer_cpp: tuned table for %s: %s (want %s): %s\n", fingerprint.c_str(),
              got.c_str(), want.string().c_str(), ok ? "ok" : "FAIL");
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  const int b = 2, sq = 9, sk = 6, h = 3, d = 20, wl = 2, wr = 1;
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(0.05f, 1.f);
  auto fill = [&](std::vector<float>& x) {
    for (float& e : x) e = (rng() & 1) ? u(rng) : -u(rng);  // never 0
  };
  std::vector<float> q(b * sq * h * d), k(b * sk * h * d), v(b * sk * h * d), out(q.size()),
      lse(b * h * sq), slopes(h);
  fill(q), fill(k), fill(v);
  for (int i = 0; i < h; ++i) slopes[i] = 0.25f * (i + 1);

  FwdArgs a;
  a.q = TensorView::contiguous(q.data(), DType::f32, {b, sq, h, d});
  a.k = TensorView::contiguous(k.data(), DType::f32, {b, sk, h, d});
  a.v = TensorView::contiguous(v.data(), DType::f32, {b, sk, h, d});
  a.out = TensorView::contiguous(out.data(), DType::f32, {b, sq, h, d});
  a.softmax_lse = TensorView::contiguous(lse.data(), DType::f32, {b, h, sq});
  a.alibi_slopes = TensorView::contiguous(slopes.data(), DType::f32, {h});
  a.window_size_left = wl;
  a.window_size_right = wr;
  a.opts.backend = Backend::cpu;
  const Status st = mha_fwd(a);
  if (!st.ok()) {
    std::fprintf(stderr, "mha_fwd: %s\n", st.to_string().c_str());
    return 1;
  }

  // Naive: key j is visible to query i when i + sk - sq - wl <= j <= i + sk - sq + wr (windows
  // aligned bottom-right); ALiBi adds -slope * |i + sk - sq - j|.
  const double scale = 1.0 / std::sqrt(double(d));
  double max_err = 0;
  for (int bi = 0; bi < b; ++bi)
    for (int hi = 0; hi < h; ++hi)
      for (int i = 0; i < sq; ++i) {
        const int c = i + sk - sq;
        std::vector<double> s(sk, -INFINITY);
        double m = -INFINITY, sum = 0;
        for (int j = std::max(0, c - wl); j <= std::min(sk - 1, c + wr); ++j) {
          double dot = 0;
          for (int x = 0; x < d; ++x)
            dot += double(q[((bi * sq + i) * h + hi) * d + x]) * k[((bi * sk + j) * h + hi) * d + x];
          s[j] = dot * scale - slopes[hi] * std::abs(c - j);
          m = std::max(m, s[j]);
        }
        if (m == -INFINITY) {  // no visible key: out = 0, lse = +inf
          if (!std::isinf(lse[(bi * h + hi) * sq + i])) max_err = INFINITY;
          for (int x = 0; x < d; ++x)
            max_err = std::max(max_err, double(std::abs(out[((bi * sq + i) * h + hi) * d + x])));
          continue;
        }
        for (double e : s) sum += e == -INFINITY ? 0 : std::exp(e - m);
        max_err = std::max(max_err, std::abs(m + std::log(sum) - lse[(bi * h + hi) * sq + i]));
        for (int x = 0; x < d; ++x) {
          double o = 0;
          for (int j = 0; j < sk; ++j)
            if (s[j] != -INFINITY) o += std::exp(s[j] - m) / sum * v[((bi * sk + j) * h + hi) * d + x];
          max_err = std::max(max_err, std::abs(o - out[((bi * sq + i) * h + hi) * d + x]));
        }
      }
  bool ok = max_err < 1e-4;
  std::printf("consumer_cpp: max |err| %.3g: %s\n", max_err, ok ? "ok" : "FAIL");
  if (argc == 3) ok = check_tuned(argv[1], argv[2]) && ok;
  else if (argc != 1) {
    std::fprintf(stderr, "usage: consumer_cpp [TUNED_DIR FINGERPRINT]\n");
    return 1;
  }
  return ok ? 0 : 1;
}
