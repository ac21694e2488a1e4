// Device measurement (not in the CTest glob: needs a GPU): where the time of one decoding call
// goes. For the decode shapes of configs/models/llama3-8b.json (1 query token, 1 appended key,
// GQA 32/8, d 128, bf16, causal; contiguous cache and pages of 16 and 256, laid out as
// `flashplus bench` does) it times mha_fwd_kvcache three ways:
//   call: events around one call on an idle GPU, as `flashplus bench` samples it (the host's
//         work before the first launch and, when checked, the synchronisation are inside);
//   gpu:  the same after a ~300 us spin kernel, so the host has enqueued the call before the
//         start event fires: the GPU's own time from the first kernel to the last (plus the
//         synchronisation's return when checked), the way triton's do_bench times the peers;
//   host: wall time of the call on the host (enqueue only when not checked).
// Medians over `reps` calls, alternating two cache sets (the bench uses >= 2 too). Environment
// knobs of the library apply (FLASHPLUS_KVCACHE_CHECK / CONFIG, docs/ENV.md); KV_SPLITS="0,64,96"
// (0 = the heuristic's count), KV_PAGES="0,16,256" and KV_SHAPES="1x131072,8x16384,64x4096"
// choose the cases. KV_HOSTBENCH=1 first prints what the runtime calls a call makes before its
// first launch cost on the host (mean ns over 4000 calls each; docs/PERF.md round 5).
//   nvcc -O2 -std=c++17 -arch=sm_90a -Ikernels/include -Itests/device tests/device/kvcache_timing.cu \
//     build-cuda/kernels/libflashplus.a -lfmt -o kv_timing
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include <cuda.h>
#include <cuda_runtime.h>

#include "device_common.h"
#include "flashplus/api.h"

using namespace flashplus;
using device_test::fill_bf16;
using device_test::median;
using device_test::spin;

namespace {

void* dalloc(size_t bytes) {
  void* p = nullptr;
  CK(cudaMalloc(&p, bytes));
  return p;
}

std::vector<int> int_list(const char* env, const char* def, char sep2 = 0, std::vector<int>* second = nullptr) {
  const char* e = std::getenv(env);
  std::string str = e ? e : def;
  std::vector<int> out;
  size_t i = 0;
  while (i < str.size()) {
    size_t j = str.find(',', i);
    if (j == std::string::npos) j = str.size();
    const std::string item = str.substr(i, j - i);
    if (sep2 && second) {
      const size_t x = item.find(sep2);
      out.push_back(std::atoi(item.substr(0, x).c_str()));
      second->push_back(x == std::string::npos ? 0 : std::atoi(item.substr(x + 1).c_str()));
    } else {
      out.push_back(std::atoi(item.c_str()));
    }
    i = j + 1;
  }
  return out;
}

__global__ void empty_kernel(int) {}

template <class F>
double mean_ns(int n, F f) {
  for (int i = 0; i < 100; ++i) f(i);
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < n; ++i) f(i);
  const auto t1 = std::chrono::steady_clock::now();
  return std::chrono::duration<double, std::nano>(t1 - t0).count() / n;
}

// The host's cost of each runtime call a decoding call makes before its first launch.
void host_bench() {
  const int n = 4000;
  void* d = dalloc(1 << 20);
  int x = 0;
  std::printf("host: cudaGetDevice %.0f ns\n", mean_ns(n, [&](int) { CK(cudaGetDevice(&x)); }));
  std::printf("host: cudaPointerGetAttributes %.0f ns\n", mean_ns(n, [&](int) {
                cudaPointerAttributes a{};
                CK(cudaPointerGetAttributes(&a, d));
              }));
  using Fn = CUresult (*)(unsigned, CUpointer_attribute*, void**, CUdeviceptr);
  void* f = nullptr;
  cudaDriverEntryPointQueryResult q{};
  CK(cudaGetDriverEntryPointByVersion("cuPointerGetAttributes", &f, 12000, cudaEnableDefault, &q));
  const Fn fn = reinterpret_cast<Fn>(f);
  std::printf("host: cuPointerGetAttributes(4 attributes) %.0f ns\n", mean_ns(n, [&](int) {
                unsigned type = 0;
                unsigned long long managed = 0;
                CUdeviceptr start = 0;
                size_t size = 0;
                CUpointer_attribute at[4] = {CU_POINTER_ATTRIBUTE_MEMORY_TYPE,
                                             CU_POINTER_ATTRIBUTE_IS_MANAGED,
                                             CU_POINTER_ATTRIBUTE_RANGE_START_ADDR,
                                             CU_POINTER_ATTRIBUTE_RANGE_SIZE};
                void* data[4] = {&type, &managed, &start, &size};
                if (fn(4, at, data, reinterpret_cast<CUdeviceptr>(d)) != CUDA_SUCCESS) std::exit(4);
              }));
  std::vector<char> host(64);
  std::printf("host: cudaPointerGetAttributes(host memory) %.0f ns\n", mean_ns(n, [&](int) {
                cudaPointerAttributes a{};
                (void)cudaPointerGetAttributes(&a, host.data());
                (void)cudaGetLastError();
              }));
  cudaMemPool_t pool = nullptr;
  cudaMemPoolProps props{};
  props.allocType = cudaMemAllocationTypePinned;
  props.location.type = cudaMemLocationTypeDevice;
  props.location.id = 0;
  CK(cudaMemPoolCreate(&pool, &props));
  uint64_t keep = UINT64_MAX;
  CK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep));
  std::printf("host: cudaMallocFromPoolAsync+cudaFreeAsync %.0f ns\n", mean_ns(n, [&](int i) {
                void* w = nullptr;
                CK(cudaMallocFromPoolAsync(&w, 1 << 20, pool, nullptr));
                CK(cudaFreeAsync(w, nullptr));
                if (i % 256 == 255) CK(cudaStreamSynchronize(nullptr));
              }));
  CK(cudaDeviceSynchronize());
  auto launch = [&](bool pdl) {
    cudaLaunchConfig_t lc{};
    lc.gridDim = dim3(512);
    lc.blockDim = dim3(64);
    cudaLaunchAttribute at[1];
    at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[0].val.programmaticStreamSerializationAllowed = 1;
    lc.attrs = at;
    lc.numAttrs = pdl ? 1 : 0;
    CK(cudaLaunchKernelEx(&lc, empty_kernel, 0));
  };
  std::printf("host: cudaLaunchKernelEx %.0f ns, with PDL %.0f ns\n", mean_ns(n, [&](int i) {
                launch(false);
                if (i % 256 == 255) CK(cudaStreamSynchronize(nullptr));
              }),
              mean_ns(n, [&](int i) {
                launch(true);
                if (i % 256 == 255) CK(cudaStreamSynchronize(nullptr));
              }));
  CK(cudaDeviceSynchronize());
  std::printf("host: cudaStreamSynchronize(idle) %.0f ns, cudaStreamQuery(idle) %.0f ns\n",
              mean_ns(n, [&](int) { CK(cudaStreamSynchronize(nullptr)); }),
              mean_ns(n, [&](int) { CK(cudaStreamQuery(nullptr)); }));
  std::printf("host: launch + cudaStreamSynchronize %.0f ns\n", mean_ns(n / 4, [&](int) {
                launch(false);
                CK(cudaStreamSynchronize(nullptr));
              }));
  CK(cudaMemPoolDestroy(pool));
  CK(cudaFree(d));
  std::fflush(stdout);
}

struct Set {
  void *q, *k, *v, *kn, *vn, *out, *lse, *sl, *bt;
};

}  // namespace

int main(int argc, char** argv) {
  const int reps = argc > 1 ? std::atoi(argv[1]) : 40;
  const int H = 32, HK = 8, D = 128;
  std::vector<int> seqs;
  const std::vector<int> batches = int_list("KV_SHAPES", "1x131072,8x16384,64x4096", 'x', &seqs);
  const std::vector<int> pages = int_list("KV_PAGES", "0,16,256");
  const std::vector<int> splits = int_list("KV_SPLITS", "0");
  RunOptions opts;
  opts.backend = Backend::cuda;
  if (const char* hb = std::getenv("KV_HOSTBENCH"); hb && hb[0] == '1') host_bench();
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  const std::optional<TensorView> none;
  for (size_t si = 0; si < batches.size(); ++si) {
    const int B = batches[si], S = seqs[si], cap = S + 1;
    for (int page : pages) {
      const int mb = page ? (cap + page - 1) / page : 0;
      const int64_t c0 = page ? int64_t{B} * mb : B, c1 = page ? page : cap;
      const size_t cache = static_cast<size_t>(c0 * c1) * HK * D;
      Set sets[2];
      for (Set& s : sets) {
        s.q = dalloc(size_t{2} * B * H * D);
        s.k = dalloc(2 * cache);
        s.v = dalloc(2 * cache);
        s.kn = dalloc(size_t{2} * B * HK * D);
        s.vn = dalloc(size_t{2} * B * HK * D);
        s.out = dalloc(size_t{2} * B * H * D);
        s.lse = dalloc(size_t{4} * B * H);
        s.sl = dalloc(size_t{4} * B);
        s.bt = page ? dalloc(size_t{4} * B * mb) : nullptr;
        fill_bf16<<<1024, 256>>>(static_cast<uint16_t*>(s.q), size_t{1} * B * H * D, 1);
        fill_bf16<<<4096, 256>>>(static_cast<uint16_t*>(s.k), cache, 2);
        fill_bf16<<<4096, 256>>>(static_cast<uint16_t*>(s.v), cache, 3);
        fill_bf16<<<64, 256>>>(static_cast<uint16_t*>(s.kn), size_t{1} * B * HK * D, 4);
        fill_bf16<<<64, 256>>>(static_cast<uint16_t*>(s.vn), size_t{1} * B * HK * D, 5);
        std::vector<int> sl(B, S);
        CK(cudaMemcpy(s.sl, sl.data(), 4 * sl.size(), cudaMemcpyHostToDevice));
        if (page) {
          std::vector<int> tab(static_cast<size_t>(B) * mb);
          for (int b = 0; b < B; ++b)
            for (int j = 0; j < mb; ++j) tab[static_cast<size_t>(b) * mb + j] = j * B + b;
          CK(cudaMemcpy(s.bt, tab.data(), 4 * tab.size(), cudaMemcpyHostToDevice));
        }
      }
      CK(cudaDeviceSynchronize());
      int nsplit = 0;
      auto call = [&](const Set& s) {
        auto tv = [](void* p, DType t, std::initializer_list<int64_t> shape) {
          return TensorView::contiguous(p, t, shape, DeviceKind::cuda, 0);
        };
        std::optional<TensorView> tab;
        if (page) tab = tv(s.bt, DType::i32, {B, mb});
        const Status st = mha_fwd_kvcache(
            tv(s.q, DType::bf16, {B, 1, H, D}), tv(s.k, DType::bf16, {c0, c1, HK, D}),
            tv(s.v, DType::bf16, {c0, c1, HK, D}), tv(s.kn, DType::bf16, {B, 1, HK, D}),
            tv(s.vn, DType::bf16, {B, 1, HK, D}), tv(s.sl, DType::i32, {B}), none, none, none,
            none, tab, none, tv(s.out, DType::bf16, {B, 1, H, D}),
            tv(s.lse, DType::f32, {B, H, 1}), 1.f / std::sqrt(static_cast<float>(D)), true, -1,
            -1, 0.f, false, nsplit, opts);
        if (!st.ok()) {
          std::printf("call failed: %s\n", st.to_string().c_str());
          std::exit(3);
        }
      };
      for (int ns : splits) {
      nsplit = ns;
      for (int i = 0; i < 4; ++i) call(sets[i % 2]);
      CK(cudaDeviceSynchronize());
      std::vector<double> t_call, t_gpu, t_host;
      for (int i = 0; i < reps; ++i) {
        float ms = 0.f;
        CK(cudaEventRecord(e0, nullptr));
        call(sets[i % 2]);
        CK(cudaEventRecord(e1, nullptr));
        CK(cudaEventSynchronize(e1));
        CK(cudaEventElapsedTime(&ms, e0, e1));
        t_call.push_back(ms);
        spin<<<1, 1>>>(300000);
        CK(cudaEventRecord(e0, nullptr));
        const auto h0 = std::chrono::steady_clock::now();
        call(sets[(i + 1) % 2]);
        const auto h1 = std::chrono::steady_clock::now();
        CK(cudaEventRecord(e1, nullptr));
        CK(cudaEventSynchronize(e1));
        CK(cudaEventElapsedTime(&ms, e0, e1));
        t_gpu.push_back(ms);
        t_host.push_back(std::chrono::duration<double, std::micro>(h1 - h0).count());
      }
      const double bytes = 2.0 * B * cap * HK * D * 2;
      const double mc = median(t_call), mg = median(t_gpu);
      std::printf("b%-3d s%-6d page%-3d splits%-3d call %.4f ms %.3f TB/s | gpu %.4f ms %.3f TB/s | host %.1f us\n",
                  B, S, page, ns, mc, bytes / mc / 1e9, mg, bytes / mg / 1e9, median(t_host));
      std::fflush(stdout);
      }
      for (Set& s : sets)
        for (void* p : {s.q, s.k, s.v, s.kn, s.vn, s.out, s.lse, s.sl, s.bt})
          if (p) CK(cudaFree(p));
    }
  }
  return 0;
}
