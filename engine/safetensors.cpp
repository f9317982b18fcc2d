#include "engine/safetensors.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>

#include "common/error.h"
#include "common/hash.h"
#include "common/json.h"

namespace bert {

static_assert(std::endian::native == std::endian::little, "safetensors I/O assumes a little-endian host");

namespace {

struct DtypeEntry {
  Dtype dtype;
  std::string_view name;
  size_t bytes;
};
constexpr std::array<DtypeEntry, 15> kDtypes = {{{Dtype::kBool, "BOOL", 1},
                                                 {Dtype::kU8, "U8", 1},
                                                 {Dtype::kI8, "I8", 1},
                                                 {Dtype::kF8E5M2, "F8_E5M2", 1},
                                                 {Dtype::kF8E4M3, "F8_E4M3", 1},
                                                 {Dtype::kI16, "I16", 2},
                                                 {Dtype::kU16, "U16", 2},
                                                 {Dtype::kF16, "F16", 2},
                                                 {Dtype::kBF16, "BF16", 2},
                                                 {Dtype::kI32, "I32", 4},
                                                 {Dtype::kU32, "U32", 4},
                                                 {Dtype::kF32, "F32", 4},
                                                 {Dtype::kF64, "F64", 8},
                                                 {Dtype::kI64, "I64", 8},
                                                 {Dtype::kU64, "U64", 8}}};

constexpr size_t kMaxHeaderBytes = 100'000'000;          // the reference implementation's limit
constexpr double kMaxExactInteger = 9007199254740992.0;  // 2^53: larger JSON numbers lose digits
constexpr std::string_view kMetadataKey = "__metadata__";

const DtypeEntry& dtype_entry(Dtype dtype) {
  for (const auto& e : kDtypes)
    if (e.dtype == dtype) return e;
  throw Error("unknown dtype enum value");  // unreachable: every enumerator is in the table
}

}  // namespace

std::string_view dtype_name(Dtype dtype) { return dtype_entry(dtype).name; }
size_t dtype_size_bytes(Dtype dtype) { return dtype_entry(dtype).bytes; }

std::optional<Dtype> parse_dtype(std::string_view name) {
  for (const auto& e : kDtypes)
    if (e.name == name) return e.dtype;
  return std::nullopt;
}

float bf16_to_f32(uint16_t bits) { return std::bit_cast<float>(static_cast<uint32_t>(bits) << 16); }

uint16_t f32_to_bf16(float value) {
  uint32_t x = std::bit_cast<uint32_t>(value);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);  // quiet NaN
  x += 0x7fffu + ((x >> 16) & 1u);  // round to nearest even; overflow carries into inf correctly
  return static_cast<uint16_t>(x >> 16);
}

float f16_to_f32(uint16_t bits) {
  const uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
  const uint32_t exponent = (bits >> 10) & 0x1fu;
  const uint32_t mantissa = bits & 0x3ffu;
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24, exact in fp32
    const float magnitude = std::ldexp(static_cast<float>(mantissa), -24);
    return sign ? -magnitude : magnitude;
  }
  if (exponent == 31) return std::bit_cast<float>(sign | 0x7f800000u | (mantissa << 13));
  return std::bit_cast<float>(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

uint16_t f32_to_f16(float value) {
  const uint32_t x = std::bit_cast<uint32_t>(value);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u)  // inf, or NaN kept quiet with the top payload bits
    return static_cast<uint16_t>(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u | ((ax >> 13) & 0x3ffu) : 0u));
  if (ax >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // >= 65520 rounds to inf
  if (ax < 0x38800000u) {                                               // below 2^-14: f16 subnormal or zero
    if (ax < 0x33000000u) return static_cast<uint16_t>(sign);           // <= 2^-25 rounds to 0
    const uint32_t exponent = ax >> 23;
    const uint32_t mantissa = (ax & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126 - exponent;  // 14..24: units of 2^-24
    uint32_t q = mantissa >> shift;
    const uint32_t rem = mantissa & ((1u << shift) - 1);
    const uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1u))) ++q;
    return static_cast<uint16_t>(sign | q);
  }
  uint32_t h = (((ax >> 23) - 112) << 10) | ((ax & 0x7fffffu) >> 13);
  const uint32_t rem = ax & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // a carry moves into the exponent correctly
  return static_cast<uint16_t>(sign | h);
}

std::string shape_string(std::span<const int64_t> shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

size_t shape_numel(std::span<const int64_t> shape) {
  size_t n = 1;
  for (const int64_t d : shape) n *= static_cast<size_t>(d);
  return n;
}

// ---- writer ---------------------------------------------------------------------------------------

SafetensorsWriter::SafetensorsWriter() { metadata_.emplace_back("format", "pt"); }

void SafetensorsWriter::add_raw(std::string name, Dtype dtype, std::vector<int64_t> shape,
                                std::span<const std::byte> bytes) {
  const std::string where = "safetensors writer: tensor '" + name + "'";
  if (name == kMetadataKey) throw Error(where + ": the name is reserved for the metadata");
  for (const auto& t : tensors_)
    if (t.name == name) throw Error(where + ": added twice");
  size_t numel = 1;
  for (const int64_t d : shape) {
    if (d < 0) throw Error(where + ": negative dimension in shape " + shape_string(shape));
    if (__builtin_mul_overflow(numel, static_cast<size_t>(d), &numel))
      throw Error(where + ": shape " + shape_string(shape) + " overflows");
  }
  if (numel * dtype_size_bytes(dtype) != bytes.size())
    throw Error(where + ": shape " + shape_string(shape) + " of " + std::string(dtype_name(dtype)) + " needs " +
                std::to_string(numel * dtype_size_bytes(dtype)) + " bytes, got " + std::to_string(bytes.size()));
  tensors_.push_back({std::move(name), dtype, std::move(shape), bytes});
}

void SafetensorsWriter::add_f32(std::string name, std::vector<int64_t> shape, std::span<const float> values) {
  add_raw(std::move(name), Dtype::kF32, std::move(shape), std::as_bytes(values));
}

void SafetensorsWriter::add_bf16(std::string name, std::vector<int64_t> shape, std::span<const uint16_t> bits) {
  add_raw(std::move(name), Dtype::kBF16, std::move(shape), std::as_bytes(bits));
}

void SafetensorsWriter::add_f16(std::string name, std::vector<int64_t> shape, std::span<const uint16_t> bits) {
  add_raw(std::move(name), Dtype::kF16, std::move(shape), std::as_bytes(bits));
}

void SafetensorsWriter::set_metadata(std::string key, std::string value) {
  for (auto& [k, v] : metadata_) {
    if (k == key) {
      v = std::move(value);
      return;
    }
  }
  metadata_.emplace_back(std::move(key), std::move(value));
}

std::string SafetensorsWriter::serialize() const {
  // Compact JSON exactly as serde_json writes it (no spaces), then space padding to 8 bytes. The data
  // hash goes in as 16 zeros, replaced once the buffer is in place.
  std::vector<std::pair<std::string, std::string>> metadata = metadata_;
  if (data_hash_) {
    std::erase_if(metadata, [](const auto& entry) { return entry.first == kDataHashKey; });
    metadata.emplace_back(std::string(kDataHashKey), hex64(0));
  }
  std::string header = "{";
  size_t hash_at = std::string::npos;
  if (!metadata.empty()) {
    json_escape(header, kMetadataKey);
    header += ":{";
    for (size_t i = 0; i < metadata.size(); ++i) {
      if (i) header += ',';
      json_escape(header, metadata[i].first);
      header += ':';
      if (data_hash_ && i + 1 == metadata.size()) hash_at = 8 + header.size() + 1;  // past the opening quote
      json_escape(header, metadata[i].second);
    }
    header += '}';
  }
  size_t offset = 0;
  for (const auto& t : tensors_) {
    if (header.size() > 1) header += ',';
    json_escape(header, t.name);
    header += ":{\"dtype\":\"" + std::string(dtype_name(t.dtype)) + "\",\"shape\":[";
    for (size_t i = 0; i < t.shape.size(); ++i) header += (i ? "," : "") + std::to_string(t.shape[i]);
    header += "],\"data_offsets\":[" + std::to_string(offset) + "," + std::to_string(offset + t.bytes.size()) + "]}";
    offset += t.bytes.size();
  }
  header += '}';
  header.append((8 - header.size() % 8) % 8, ' ');

  std::string out;
  out.reserve(8 + header.size() + offset);
  const uint64_t header_len = header.size();
  out.append(reinterpret_cast<const char*>(&header_len), 8);
  out += header;
  for (const auto& t : tensors_) out.append(reinterpret_cast<const char*>(t.bytes.data()), t.bytes.size());
  if (hash_at != std::string::npos)
    out.replace(hash_at, 16, hex64(hash64(out.data() + 8 + header.size(), out.size() - 8 - header.size())));
  return out;
}

void SafetensorsWriter::write(const std::string& path) const { write_file_atomic(path, serialize()); }

// ---- reader ---------------------------------------------------------------------------------------

namespace {

// The Json parser keeps the last of duplicated keys; the reference (serde) does so for tensor names
// and inside __metadata__, but refuses a repeated __metadata__ or one of a tensor entry's fields
// (dtype, shape, data_offsets) repeated in it. Found by scanning the (already validated) text: a message, or nullopt.
// (A repeated tensor name we refuse too, rather than take its last entry.)
std::optional<std::string> duplicate_in_header(std::string_view text, const std::string& source) {
  std::vector<std::string> names;   // top-level keys
  std::vector<std::string> fields;  // keys of the entry being read (depth 2), when it is a tensor's
  std::string entry;                // its name
  bool tensor = false;              // whether the last top-level key is a tensor's
  int depth = 0;
  const auto repeated = [](std::vector<std::string>& keys) -> std::optional<std::string> {
    std::sort(keys.begin(), keys.end());
    const auto dup = std::adjacent_find(keys.begin(), keys.end());
    if (dup == keys.end()) return std::nullopt;
    return *dup;
  };
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (c == '{' || c == '[') {
      ++depth;
    } else if (c == '}' || c == ']') {
      if (depth == 2 && c == '}' && tensor) {
        if (const auto field = repeated(fields))
          return "tensor '" + entry + "': field '" + *field + "' given twice in its entry";
        fields.clear();
        tensor = false;
      }
      --depth;
    } else if (c == '"') {
      const size_t start = i++;
      while (i < text.size() && text[i] != '"') i += text[i] == '\\' ? 2 : 1;
      if (depth != 1 && depth != 2) continue;
      size_t j = i + 1;
      while (j < text.size() && (text[j] == ' ' || text[j] == '\n' || text[j] == '\r' || text[j] == '\t')) ++j;
      if (j >= text.size() || text[j] != ':') continue;  // a value, not a key
      std::string key = Json::parse(text.substr(start, i + 1 - start), source).as_string();
      if (depth == 1) {
        names.push_back(key);
        tensor = key != kMetadataKey;  // the next object, if any, is its entry
        entry = key;
        fields.clear();
      } else if (tensor && (key == "dtype" || key == "shape" || key == "data_offsets")) {
        fields.push_back(std::move(key));  // (other keys the reference ignores, repeated or not)
      }
    }
  }
  if (const auto name = repeated(names))
    return *name == kMetadataKey ? std::string("__metadata__ given twice in the header")
                                 : "duplicate tensor name '" + *name + "' in the header";
  return std::nullopt;
}

}  // namespace

SafetensorsFile::SafetensorsFile(const std::string& path) : file_(path) {
  const auto fail = [&](const std::string& what) -> Error { return Error(path + ": " + what); };
  const size_t size = file_.size();
  if (size < 8)
    throw fail("truncated file: " + std::to_string(size) +
               " bytes, a safetensors file starts with an 8-byte header length");
  uint64_t header_len = 0;
  std::memcpy(&header_len, file_.data(), 8);
  if (header_len > size - 8)
    throw fail("header length " + std::to_string(header_len) + " runs past the end of the file (" +
               std::to_string(size) + " bytes): truncated, or not a safetensors file");
  if (header_len > kMaxHeaderBytes)
    throw fail("header length " + std::to_string(header_len) + " is over the 100 MB limit");
  data_start_ = 8 + static_cast<size_t>(header_len);
  const size_t buffer_bytes = size - data_start_;
  const std::string_view text = file_.view().substr(8, static_cast<size_t>(header_len));
  // (JSON whitespace may come first: the reference's serde_json skips it.)
  const size_t first = text.find_first_not_of(" \t\n\r");
  if (first == std::string_view::npos || text[first] != '{') throw fail("invalid JSON header: it must start with '{'");

  const std::string source = path + " (JSON header)";
  const Json header = Json::parse(text, source);
  if (!header.is_object()) throw fail("invalid JSON header: not an object");
  if (const auto dup = duplicate_in_header(text, source)) throw fail(*dup);

  const auto exact_size = [&](const Json& v, const std::string& where) -> size_t {
    if (!v.is_number() || v.as_number() < 0 || v.as_number() > kMaxExactInteger ||
        v.as_number() != std::floor(v.as_number()))
      throw fail(where + " must be a non-negative integer, got " + v.dump());
    return static_cast<size_t>(v.as_number());
  };

  for (const auto& [name, entry] : header.as_object()) {
    if (name == kMetadataKey) {
      if (entry.is_null()) continue;  // none, as the reference reads it
      if (!entry.is_object()) throw fail("__metadata__ must be an object of strings, got " + entry.dump());
      for (const auto& [key, value] : entry.as_object()) {
        if (!value.is_string()) throw fail("__metadata__ value of '" + key + "' must be a string, got " + value.dump());
        metadata_.emplace_back(key, value.as_string());
      }
      continue;
    }
    const std::string where = "tensor '" + name + "'";
    if (!entry.is_object()) throw fail(where + ": entry must be an object, got " + entry.dump());
    const Json* dtype = entry.find("dtype");
    const Json* shape = entry.find("shape");
    const Json* offsets = entry.find("data_offsets");
    if (!dtype || !shape || !offsets) throw fail(where + ": entry needs dtype, shape and data_offsets");
    if (!dtype->is_string()) throw fail(where + ": dtype must be a string, got " + dtype->dump());
    TensorInfo info;
    info.name = name;
    const auto parsed = parse_dtype(dtype->as_string());
    if (!parsed) throw fail(where + ": unknown dtype '" + dtype->as_string() + "'");
    info.dtype = *parsed;
    if (!shape->is_array()) throw fail(where + ": shape must be an array, got " + shape->dump());
    size_t numel = 1;
    for (const Json& d : shape->as_array()) {
      const size_t dim = exact_size(d, where + ": shape dimension");
      info.shape.push_back(static_cast<int64_t>(dim));
      if (__builtin_mul_overflow(numel, dim, &numel)) throw fail(where + ": shape " + shape->dump() + " overflows");
    }
    if (!offsets->is_array() || offsets->as_array().size() != 2)
      throw fail(where + ": data_offsets must be [begin, end], got " + offsets->dump());
    info.begin = exact_size(offsets->as_array()[0], where + ": data_offsets begin");
    info.end = exact_size(offsets->as_array()[1], where + ": data_offsets end");
    const std::string range = "[" + std::to_string(info.begin) + ", " + std::to_string(info.end) + ")";
    if (info.end < info.begin) throw fail(where + ": data_offsets " + range + " end before they begin");
    if (info.end > buffer_bytes)
      throw fail(where + ": data_offsets " + range + " run past the end of the " + std::to_string(buffer_bytes) +
                 "-byte data buffer (file truncated?)");
    size_t expected_bytes = 0;
    if (__builtin_mul_overflow(numel, dtype_size_bytes(info.dtype), &expected_bytes) || expected_bytes != info.bytes())
      throw fail(where + ": shape " + shape_string(info.shape) + " of " + std::string(dtype_name(info.dtype)) + " is " +
                 std::to_string(numel) + " x " + std::to_string(dtype_size_bytes(info.dtype)) +
                 " bytes but data_offsets " + range + " span " + std::to_string(info.bytes()));
    tensors_.push_back(std::move(info));
  }

  // The tensors must tile the buffer: sorted by offset, each starts where the previous one ended.
  std::vector<const TensorInfo*> by_offset;
  for (const auto& t : tensors_) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(), [](const TensorInfo* a, const TensorInfo* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  size_t covered = 0;
  const TensorInfo* previous = nullptr;
  for (const TensorInfo* t : by_offset) {
    if (t->begin < covered)
      throw fail("tensor '" + t->name + "': data_offsets [" + std::to_string(t->begin) + ", " + std::to_string(t->end) +
                 ") overlap tensor '" + previous->name + "' [" + std::to_string(previous->begin) + ", " +
                 std::to_string(previous->end) + ")");
    if (t->begin > covered)
      throw fail("data buffer bytes [" + std::to_string(covered) + ", " + std::to_string(t->begin) +
                 ") belong to no tensor (gap before tensor '" + t->name + "')");
    covered = t->end;
    previous = t;
  }
  if (covered != buffer_bytes)
    throw fail("tensors cover " + std::to_string(covered) + " of the " + std::to_string(buffer_bytes) +
               " data buffer bytes (trailing bytes belong to no tensor)");
}

const std::string* SafetensorsFile::metadata_value(std::string_view key) const {
  for (const auto& [k, v] : metadata_)
    if (k == key) return &v;
  return nullptr;
}

bool SafetensorsFile::verify_data_hash() const {
  const std::string* recorded = metadata_value(kDataHashKey);
  if (!recorded) return false;
  const std::optional<uint64_t> expected = parse_hex64(*recorded);
  if (!expected) {
    std::string shown;
    json_escape(shown, *recorded);  // quoted and escaped: the message stays one line whatever it holds
    throw Error(path() + ": __metadata__ value of '" + std::string(kDataHashKey) + "' must be 16 hex digits, got " +
                shown + "; the header is damaged");
  }
  const auto* data = static_cast<const std::byte*>(file_.data()) + data_start_;
  const size_t bytes = file_.size() - data_start_;
  Hash64 hash(bytes);
  constexpr size_t kWindow = size_t{64} << 20;  // a multiple of 8
  for (size_t done = 0; done < bytes; done += kWindow) {
    const size_t piece = std::min(kWindow, bytes - done);
    hash.update(data + done, piece);
    file_.release(data_start_ + done, data_start_ + done + piece);
  }
  const uint64_t actual = hash.value();
  if (actual != *expected)
    throw Error(path() + ": the tensor data hashes to " + hex64(actual) + ", the header records " + *recorded + " (" +
                std::string(kDataHashKey) + "): the file was damaged after it was written; restore a copy, or " +
                "delete that __metadata__ entry if the tensors were edited on purpose");
  return true;
}

const TensorInfo* SafetensorsFile::find(std::string_view name) const {
  for (const auto& t : tensors_)
    if (t.name == name) return &t;
  return nullptr;
}

const TensorInfo& SafetensorsFile::info(std::string_view name) const {
  if (const TensorInfo* t = find(name)) return *t;
  throw Error(path() + ": tensor '" + std::string(name) + "' not found (the file has " +
              std::to_string(tensors_.size()) + " tensors)");
}

void SafetensorsFile::release(const TensorInfo& tensor) const {
  file_.release(data_start_ + tensor.begin, data_start_ + tensor.end);
}

std::span<const std::byte> SafetensorsFile::raw(const TensorInfo& tensor) const {
  return {static_cast<const std::byte*>(file_.data()) + data_start_ + tensor.begin, tensor.bytes()};
}

void SafetensorsFile::check_shape(const TensorInfo& tensor, const std::vector<int64_t>& expected_shape) const {
  if (tensor.shape != expected_shape)
    throw Error(path() + ": tensor '" + tensor.name + "': expected shape " + shape_string(expected_shape) + ", got " +
                shape_string(tensor.shape));
}

void SafetensorsFile::convert(const TensorInfo& tensor, std::span<float> out) const {
  const std::span<const std::byte> bytes = raw(tensor);
  const size_t n = tensor.numel();
  switch (tensor.dtype) {
    case Dtype::kF32:
      if (n) std::memcpy(out.data(), bytes.data(), n * 4);
      return;
    case Dtype::kBF16:
    case Dtype::kF16: {
      const bool bf16 = tensor.dtype == Dtype::kBF16;
      for (size_t i = 0; i < n; ++i) {
        uint16_t bits;
        std::memcpy(&bits, bytes.data() + 2 * i, 2);  // the buffer is not necessarily 2-byte aligned
        out[i] = bf16 ? bf16_to_f32(bits) : f16_to_f32(bits);
      }
      return;
    }
    case Dtype::kF64:  // rounded to nearest, as torch's .float() and from_pretrained into fp32 do
      for (size_t i = 0; i < n; ++i) {
        double v;
        std::memcpy(&v, bytes.data() + 8 * i, 8);
        out[i] = static_cast<float>(v);
      }
      return;
    default:
      throw Error(path() + ": tensor '" + tensor.name + "': dtype " + std::string(dtype_name(tensor.dtype)) +
                  " cannot be read as fp32 (only F32, F64, BF16 and F16 can)");
  }
}

void SafetensorsFile::read_f32(std::string_view name, const std::vector<int64_t>& expected_shape,
                               std::span<float> out) const {
  const TensorInfo& tensor = info(name);
  check_shape(tensor, expected_shape);
  if (out.size() != tensor.numel())
    throw Error(path() + ": tensor '" + tensor.name + "': destination holds " + std::to_string(out.size()) +
                " floats, the tensor has " + std::to_string(tensor.numel()));
  convert(tensor, out);
}

std::vector<float> SafetensorsFile::read_f32(std::string_view name, const std::vector<int64_t>& expected_shape) const {
  const TensorInfo& tensor = info(name);
  check_shape(tensor, expected_shape);
  std::vector<float> out(tensor.numel());
  convert(tensor, out);
  return out;
}

std::vector<float> SafetensorsFile::read_f32(std::string_view name) const {
  const TensorInfo& tensor = info(name);
  std::vector<float> out(tensor.numel());
  convert(tensor, out);
  return out;
}

}  // namespace bert
