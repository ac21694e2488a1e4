// The .npy reader (cli/npy.cpp) on arbitrary bytes, as float32 and as int32. A file it accepts
// must describe exactly the data it returns and survive an encode/parse round trip.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "fuzz_util.h"
#include "npy.h"

using namespace flashplus;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  const std::string name = "fuzz.npy";
  try {
    const cli::NpyArray a = cli::parse_npy(bytes, name);
    if (a.numel() != static_cast<int64_t>(a.data.size())) std::abort();
    const cli::NpyArray b = cli::parse_npy(cli::encode_npy(a.data.data(), a.shape), name);
    if (b.shape != a.shape || b.data.size() != a.data.size() ||
        (!a.data.empty() && std::memcmp(a.data.data(), b.data.data(), a.data.size() * 4) != 0))
      std::abort();
  } catch (const cli::Error& e) {
    fuzz::check_error(e, name);
  }
  try {
    const cli::NpyIntArray a = cli::parse_npy_int32(bytes, name);
    int64_t n = 1;
    for (int64_t s : a.shape) n *= s;
    if (n != static_cast<int64_t>(a.data.size())) std::abort();
    const cli::NpyIntArray b = cli::parse_npy_int32(cli::encode_npy_int32(a.data.data(), a.shape), name);
    if (b.shape != a.shape || b.data != a.data) std::abort();
  } catch (const cli::Error& e) {
    fuzz::check_error(e, name);
  }
  return 0;
}
