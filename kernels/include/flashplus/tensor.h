// Non-owning tensor view: what every public entry point takes.
// Shapes and strides are in elements (not bytes), as in PyTorch.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>

namespace flashplus {

enum class DType : uint8_t { f32, f16, bf16, i32 };

enum class DeviceKind : uint8_t { cpu, cuda, hip };

inline constexpr size_t dtype_size(DType t) {
  return t == DType::f32 || t == DType::i32 ? 4 : 2;
}
inline constexpr const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "fp32";
    case DType::f16: return "fp16";
    case DType::bf16: return "bf16";
    case DType::i32: return "int32";
  }
  return "?";
}
inline constexpr const char* device_name(DeviceKind d) {
  switch (d) {
    case DeviceKind::cpu: return "cpu";
    case DeviceKind::cuda: return "cuda";
    case DeviceKind::hip: return "hip";
  }
  return "?";
}

struct TensorView {
  static constexpr int kMaxDims = 4;

  void* data = nullptr;
  DType dtype = DType::f32;
  int ndim = 0;
  std::array<int64_t, kMaxDims> shape{};
  std::array<int64_t, kMaxDims> stride{};  // elements; the last dim must be 1 for q/k/v/out
  DeviceKind device = DeviceKind::cpu;
  int device_index = 0;

  // A contiguous (row-major) view of `data` with the given shape.
  static TensorView contiguous(void* data, DType dtype, std::initializer_list<int64_t> shape,
                               DeviceKind device = DeviceKind::cpu, int device_index = 0) {
    TensorView t;
    t.data = data;
    t.dtype = dtype;
    t.ndim = static_cast<int>(shape.size());
    int i = 0;
    for (int64_t s : shape) t.shape[i++] = s;
    int64_t st = 1;
    for (int d = t.ndim - 1; d >= 0; --d) {
      t.stride[d] = st;
      st *= t.shape[d];
    }
    t.device = device;
    t.device_index = device_index;
    return t;
  }

  int64_t numel() const {
    int64_t n = 1;
    for (int d = 0; d < ndim; ++d) n *= shape[d];
    return n;
  }
  bool is_contiguous() const {
    int64_t st = 1;
    for (int d = ndim - 1; d >= 0; --d) {
      if (shape[d] != 1 && stride[d] != st) return false;
      st *= shape[d];
    }
    return true;
  }
  // "(2, 128, 32, 128)"
  std::string shape_str() const {
    std::string s = "(";
    for (int d = 0; d < ndim; ++d) s += (d ? ", " : "") + std::to_string(shape[d]);
    return s + ")";
  }
};

}  // namespace flashplus
