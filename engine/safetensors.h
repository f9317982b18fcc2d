// The safetensors format (Hugging Face), read and written without any library:
//
//   u64 (little-endian)  N = header length in bytes
//   N bytes              JSON header, padded with spaces to a multiple of 8 (as the reference writer does):
//                          {"__metadata__": {"format": "pt", ...},            <- optional, string -> string
//                           "name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...}
//   data buffer          every tensor's bytes, row-major little-endian; offsets are relative to the buffer
//                        start, and the tensors tile it exactly (no gap, no overlap, nothing left over)
//
// bertforge's checkpoints also record hash64 of the data buffer in the metadata (kDataHashKey, 16 hex
// digits), checked when they are loaded: a flipped bit in a weight is still a valid float, so without it
// a damaged checkpoint would load. Other readers (transformers) ignore the entry; files without it
// (Hugging Face's) are not checked.
//
// Writing is one atomic file replace (temp + fsync + rename); reading memory-maps the file and validates
// the whole header up front, so every later access is a bounds-checked view. BERT-base is ~440 MB of
// fp32: reading it is one page-cache copy per tensor (the fp32 conversion), writing one extra copy.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/file.h"

namespace bert {

// The reference implementation's dtypes. Only F32, F16 and BF16 convert to fp32; the others can be
// listed and read raw.
inline constexpr std::string_view kDataHashKey = "bertforge_data_hash64";

enum class Dtype { kBool, kU8, kI8, kF8E5M2, kF8E4M3, kI16, kU16, kF16, kBF16, kI32, kU32, kF32, kF64, kI64, kU64 };

std::string_view dtype_name(Dtype dtype);  // "F32", "BF16", ...
size_t dtype_size_bytes(Dtype dtype);      // 1, 2, 4 or 8
std::optional<Dtype> parse_dtype(std::string_view name);

// Scalar conversions. f32 -> 16 bit rounds to nearest even (as numpy, PyTorch and CUDA do); NaN stays
// NaN; values past the f16 range become +-inf.
float bf16_to_f32(uint16_t bits);
uint16_t f32_to_bf16(float value);
float f16_to_f32(uint16_t bits);
uint16_t f32_to_f16(float value);

// "[2, 3]"; "[]" for a scalar.
std::string shape_string(std::span<const int64_t> shape);
// Product of the dims (1 for a scalar).
size_t shape_numel(std::span<const int64_t> shape);

struct TensorInfo {
  std::string name;
  Dtype dtype = Dtype::kF32;
  std::vector<int64_t> shape;
  size_t begin = 0, end = 0;  // byte range inside the data buffer
  size_t numel() const { return shape_numel(shape); }
  size_t bytes() const { return end - begin; }
};

// Collects named tensors (views: the caller's data must stay alive until write()) and writes them in
// the order they were added. The metadata starts as {"format": "pt"}, which transformers requires
// before it loads a safetensors checkpoint.
class SafetensorsWriter {
 public:
  SafetensorsWriter();

  void add_f32(std::string name, std::vector<int64_t> shape, std::span<const float> values);
  // Raw little-endian bytes of any dtype (e.g. bf16/f16 bit patterns from the device).
  void add_raw(std::string name, Dtype dtype, std::vector<int64_t> shape, std::span<const std::byte> bytes);
  void add_bf16(std::string name, std::vector<int64_t> shape, std::span<const uint16_t> bits);
  void add_f16(std::string name, std::vector<int64_t> shape, std::span<const uint16_t> bits);
  // Sets (or replaces) one metadata entry.
  void set_metadata(std::string key, std::string value);
  // Records the data buffer's hash64 as metadata kDataHashKey when the file is written (not by default:
  // without it the bytes equal the reference writer's).
  void add_data_hash() { data_hash_ = true; }

  size_t tensor_count() const { return tensors_.size(); }
  // The whole file image: length, padded header, buffer.
  std::string serialize() const;
  // serialize() to `path` atomically: an existing file is replaced only by a complete new one.
  void write(const std::string& path) const;

 private:
  struct Entry {
    std::string name;
    Dtype dtype;
    std::vector<int64_t> shape;
    std::span<const std::byte> bytes;
  };
  std::vector<Entry> tensors_;
  std::vector<std::pair<std::string, std::string>> metadata_;
  bool data_hash_ = false;
};

// A validated, memory-mapped safetensors file. Errors are one-line bert::Errors naming the file, the
// tensor and what is wrong.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);

  const std::string& path() const { return file_.path(); }
  // In header order.
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const std::vector<std::pair<std::string, std::string>>& metadata() const { return metadata_; }
  // nullptr when absent.
  const std::string* metadata_value(std::string_view key) const;
  bool contains(std::string_view name) const { return find(name) != nullptr; }
  const TensorInfo* find(std::string_view name) const;
  // When the metadata holds kDataHashKey: hashes the data buffer (one pass, ~0.2 s for BERT-base) and
  // throws a one-line error if it differs or the entry is malformed. Returns whether there was one.
  // The pages it has hashed leave the process's resident set as it goes (release()).
  bool verify_data_hash() const;
  // The tensor's pages leave the resident set (a later read brings them back from the file): a
  // reader done with a tensor calls it, so a load's peak is its arena, not the arena and the file.
  void release(const TensorInfo& tensor) const;
  // Throws "tensor 'name' not found".
  const TensorInfo& info(std::string_view name) const;
  std::span<const std::byte> raw(const TensorInfo& tensor) const;

  // The tensor as fp32 (from F32, BF16 or F16). `expected_shape` is checked exactly.
  std::vector<float> read_f32(std::string_view name, const std::vector<int64_t>& expected_shape) const;
  void read_f32(std::string_view name, const std::vector<int64_t>& expected_shape, std::span<float> out) const;
  // Any shape (see info(name).shape).
  std::vector<float> read_f32(std::string_view name) const;

 private:
  MappedFile file_;
  size_t data_start_ = 0;  // 8 + header length
  std::vector<TensorInfo> tensors_;
  std::vector<std::pair<std::string, std::string>> metadata_;
  void convert(const TensorInfo& tensor, std::span<float> out) const;
  void check_shape(const TensorInfo& tensor, const std::vector<int64_t>& expected_shape) const;
};

}  // namespace bert
