// Engine I/O: safetensors (round trip, 16-bit conversions, every corruption rejected, atomic write),
// the TOML subset, the run config (defaults, every validation error with key and line) and HF's
// config.json. The [.python-roundtrip] case is driven by tests/conformance/test_safetensors_python.py.
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "common/error.h"
#include "common/file.h"
#include "common/hash.h"
#include "common/json.h"
#include "engine/config.h"
#include "engine/safetensors.h"
#include "engine/toml.h"
#include "tests/oracle_cases.h"

using namespace bert;
using Catch::Matchers::Contains;

namespace {

// A fresh directory per test case (ctest runs the cases in parallel processes).
std::string temp_dir(const std::string& name) {
  const std::string dir = "test_engine_io_tmp/" + name;
  std::filesystem::remove_all(dir);
  make_directories(dir);
  return dir;
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(out.good());
}

// The message of the bert::Error that `f` throws ("" when it does not throw). Messages are one line.
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    const std::string message = e.what();
    CHECK(message.find('\n') == std::string::npos);
    return message;
  }
  return "";
}

// A safetensors file from a hand-written header and a zero-filled buffer.
std::string crafted(const std::string& header, size_t buffer_bytes) {
  std::string out(8, '\0');
  const uint64_t n = header.size();
  std::memcpy(out.data(), &n, 8);
  return out + header + std::string(buffer_bytes, '\0');
}

uint32_t bits_of(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}

}  // namespace

// ---- safetensors ----------------------------------------------------------------------------------

TEST_CASE("safetensors: round trip of several tensors, scalars, empty dims and metadata") {
  const std::string dir = temp_dir("roundtrip");
  const std::vector<float> matrix = {1.5f, -2.25f, 3.0f, 0.0f, -0.0f, 1e-30f};
  const std::vector<float> scalar = {42.5f};
  const std::vector<float> empty;
  const std::vector<float> vec = {7, 8, 9, 10, 11};
  const std::vector<uint16_t> bf16 = {f32_to_bf16(1.0f), f32_to_bf16(-3.5f), f32_to_bf16(0.15625f)};
  const std::vector<uint16_t> f16 = {f32_to_f16(0.5f), f32_to_f16(-65504.0f), f32_to_f16(0.099975586f),
                                     f32_to_f16(2.0f)};
  const std::vector<int32_t> ints = {1, -2, 3};

  SafetensorsWriter w;
  w.add_f32("bert.embeddings.word_embeddings.weight", {2, 3}, matrix);
  w.add_f32("scalar", {}, scalar);
  w.add_f32("empty", {0, 4}, empty);
  w.add_bf16("half.bf16", {3}, bf16);
  w.add_f32("vec", {5}, vec);
  w.add_f16("half.f16", {2, 2}, f16);
  w.add_raw("ints", Dtype::kI32, {3}, std::as_bytes(std::span<const int32_t>(ints)));
  w.set_metadata("producer", "bertforge");
  const std::string path = dir + "/model.safetensors";
  w.write(path);

  const std::string bytes = read_file(path);
  uint64_t header_len = 0;
  std::memcpy(&header_len, bytes.data(), 8);
  CHECK(header_len % 8 == 0);  // padded like the reference writer
  CHECK(bytes[8] == '{');
  CHECK(bytes.size() == 8 + header_len + (6 + 1 + 5) * 4 + 3 * 2 + 4 * 2 + 3 * 4);

  const SafetensorsFile f(path);
  REQUIRE(f.tensors().size() == 7);
  std::vector<std::string> names;
  for (const auto& t : f.tensors()) names.push_back(t.name);
  CHECK(names == std::vector<std::string>{"bert.embeddings.word_embeddings.weight", "scalar", "empty", "half.bf16",
                                          "vec", "half.f16", "ints"});  // the order they were added
  REQUIRE(f.metadata().size() == 2);
  CHECK(*f.metadata_value("format") == "pt");
  CHECK(*f.metadata_value("producer") == "bertforge");
  CHECK(f.metadata_value("absent") == nullptr);

  CHECK(f.read_f32("bert.embeddings.word_embeddings.weight", {2, 3}) == matrix);
  CHECK(std::signbit(f.read_f32("bert.embeddings.word_embeddings.weight")[4]));
  CHECK(f.info("scalar").shape.empty());
  CHECK(f.read_f32("scalar", {}) == scalar);
  CHECK(f.info("empty").shape == std::vector<int64_t>{0, 4});
  CHECK(f.read_f32("empty", {0, 4}).empty());
  CHECK(f.read_f32("vec", {5}) == vec);
  CHECK(f.info("half.bf16").dtype == Dtype::kBF16);
  CHECK(f.read_f32("half.bf16", {3}) == std::vector<float>{1.0f, -3.5f, 0.15625f});
  CHECK(f.info("half.f16").dtype == Dtype::kF16);
  CHECK(f.read_f32("half.f16", {2, 2}) == std::vector<float>{0.5f, -65504.0f, 0.099975586f, 2.0f});
  std::vector<float> into(5);
  f.read_f32("vec", {5}, into);
  CHECK(into == vec);

  const TensorInfo& ints_info = f.info("ints");
  CHECK(ints_info.dtype == Dtype::kI32);
  CHECK(std::memcmp(f.raw(ints_info).data(), ints.data(), 12) == 0);
  CHECK_THAT(error_of([&] { (void)f.read_f32("ints"); }),
             Contains(path) && Contains("'ints'") && Contains("I32 cannot be read as fp32"));
  CHECK_THAT(error_of([&] { f.read_f32("vec", {5}, std::span<float>(into.data(), 4)); }),
             Contains("destination holds 4 floats"));
}

TEST_CASE("safetensors: header bytes equal the reference writer's (compact JSON, space padding)") {
  const std::string dir = temp_dir("layout");
  const std::vector<float> a = {1, 2};
  SafetensorsWriter w;
  w.add_f32("a", {2}, a);
  const std::string bytes = w.serialize();
  const std::string json = R"({"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  const std::string padded = json + std::string((8 - json.size() % 8) % 8, ' ');
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  CHECK(n == padded.size());
  CHECK(bytes.substr(8, n) == padded);
  CHECK(bytes.size() == 8 + n + 8);

  // Metadata can be replaced and extended; names are JSON-escaped.
  w.set_metadata("format", "np");
  w.set_metadata("quote\"d", "x\ny");
  const std::string path = dir + "/m.safetensors";
  w.write(path);
  const SafetensorsFile f(path);
  CHECK(*f.metadata_value("format") == "np");
  CHECK(*f.metadata_value("quote\"d") == "x\ny");
}

TEST_CASE("safetensors: writer rejects bad tensors") {
  const std::vector<float> three = {1, 2, 3};
  SafetensorsWriter w;
  w.add_f32("a", {3}, three);
  CHECK_THAT(error_of([&] { w.add_f32("a", {3}, three); }), Contains("'a'") && Contains("added twice"));
  CHECK_THAT(error_of([&] {
               w.add_f32("b", {2, 2}, three);
             }),
             Contains("'b'") && Contains("[2, 2]") && Contains("needs 16 bytes, got 12"));
  CHECK_THAT(error_of([&] { w.add_f32("c", {-3}, three); }), Contains("negative dimension"));
  CHECK_THAT(error_of([&] { w.add_f32("__metadata__", {3}, three); }), Contains("reserved"));
  CHECK(w.tensor_count() == 1);
}

TEST_CASE("safetensors: the data hash catches any changed byte of the buffer and a damaged entry") {
  const std::string dir = temp_dir("data_hash");
  const std::vector<float> a = {1, 2, 3}, b = {-0.5f, 0.25f};
  const std::vector<uint16_t> c = {f32_to_bf16(7.0f)};
  SafetensorsWriter w;
  w.add_f32("a", {3}, a);
  w.add_bf16("c", {1}, c);
  w.add_f32("b", {2}, b);
  w.set_metadata(std::string(kDataHashKey), "stale, replaced when written");
  w.add_data_hash();
  const std::string path = dir + "/m.safetensors";
  w.write(path);
  const std::string valid = read_file(path);
  uint64_t header_len = 0;
  std::memcpy(&header_len, valid.data(), 8);
  const size_t data_start = 8 + header_len;
  REQUIRE(valid.size() == data_start + 3 * 4 + 2 + 2 * 4);
  {
    const SafetensorsFile f(path);
    REQUIRE(f.metadata_value(kDataHashKey) != nullptr);
    CHECK(*f.metadata_value(kDataHashKey) == hex64(hash64(valid.data() + data_start, valid.size() - data_start)));
    CHECK(f.metadata().size() == 2);  // "format" and the hash: set_metadata's value was replaced, not doubled
    CHECK(f.verify_data_hash());
    CHECK(f.read_f32("b", {2}) == b);
  }
  // Every byte of the buffer, each with one bit flipped: the file still parses (any bits are a float)
  // but the hash refuses it.
  for (size_t at = data_start; at < valid.size(); ++at) {
    std::string damaged = valid;
    damaged[at] = static_cast<char>(damaged[at] ^ (1 << (at % 8)));
    write_bytes(path, damaged);
    const SafetensorsFile f(path);
    CHECK_THAT(error_of([&] { (void)f.verify_data_hash(); }), Contains(path + ": the tensor data hashes to ") &&
                                                                  Contains("damaged after it was written") &&
                                                                  Contains(std::string(kDataHashKey)));
  }
  // The recorded value itself damaged: one line naming the entry.
  std::string bad_digit = valid;
  const size_t value_at = bad_digit.find(std::string(kDataHashKey)) + kDataHashKey.size() + 3;
  REQUIRE(bad_digit[value_at - 1] == '"');
  bad_digit[value_at] = 'g';
  write_bytes(path, bad_digit);
  CHECK_THAT(error_of([&] { (void)SafetensorsFile(path).verify_data_hash(); }),
             Contains("'" + std::string(kDataHashKey) + "' must be 16 hex digits, got \"g"));
  // A value holding a newline (a JSON \n) still makes a one-line message.
  SafetensorsWriter odd;
  odd.add_f32("a", {3}, a);
  odd.set_metadata(std::string(kDataHashKey), "0123\n456789abcdef");
  odd.write(path);
  const std::string odd_message = error_of([&] { (void)SafetensorsFile(path).verify_data_hash(); });
  CHECK_THAT(odd_message, Contains("got \"0123\\n456789abcdef\""));
  CHECK(odd_message.find('\n') == std::string::npos);
  // Without the entry (the reference writer's files, Hugging Face's checkpoints): nothing to check.
  SafetensorsWriter plain;
  plain.add_f32("a", {3}, a);
  plain.write(path);
  CHECK_FALSE(SafetensorsFile(path).verify_data_hash());
  CHECK(hex64(0x0123456789abcdefull) == "0123456789abcdef");
  CHECK(parse_hex64("0123456789ABCDEF") == 0x0123456789abcdefull);
  CHECK_FALSE(parse_hex64("0123456789abcde").has_value());
  CHECK_FALSE(parse_hex64("0123456789abcdeg").has_value());
}

TEST_CASE("hash64 in pieces (Hash64) equals the one-shot hash, and a file past one hashing window verifies") {
  std::vector<unsigned char> bytes(1000);
  uint64_t x = 88172645463325252ull;
  for (unsigned char& b : bytes) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    b = static_cast<unsigned char>(x);
  }
  for (const size_t total : {size_t{0}, size_t{5}, size_t{8}, size_t{13}, size_t{999}, size_t{1000}})
    for (const size_t piece : {size_t{8}, size_t{16}, size_t{200}, size_t{1000}}) {
      INFO("total " << total << ", pieces of " << piece);
      Hash64 hash(total);
      for (size_t done = 0; done < total; done += piece)
        hash.update(bytes.data() + done, std::min(piece, total - done));
      CHECK(hash.value() == hash64(bytes.data(), total));
    }
  Hash64 misuse(20);
  misuse.update(bytes.data(), 5);
  CHECK_THROWS_AS(misuse.update(bytes.data() + 5, 15), std::logic_error);  // after a piece of 5 bytes
  CHECK_THROWS_AS(Hash64(8).value(), std::logic_error);                    // nothing hashed yet
  Hash64 past(8);
  CHECK_THROWS_AS(past.update(bytes.data(), 16), std::logic_error);

  // verify_data_hash reads the buffer 64 MiB at a time: a damaged byte in the second window is found.
  const std::string dir = temp_dir("data_hash_windows");
  const std::vector<float> big((size_t{64} << 20) / 4 + 1000, 0.5f);
  SafetensorsWriter w;
  w.add_f32("big", {static_cast<int64_t>(big.size())}, big);
  w.add_data_hash();
  const std::string path = dir + "/big.safetensors";
  w.write(path);
  CHECK(SafetensorsFile(path).verify_data_hash());
  // Its pages leave the resident set once hashed, and a tensor's once released: a later read brings
  // them back from the file. A file read from a pipe (anonymous memory) keeps them: release does nothing.
  // (Compared through a function: Catch would print both 16M-value vectors on a failure.)
  const auto is_big = [&](const std::vector<float>& values) { return values == big; };
  {
    const SafetensorsFile file(path);
    CHECK(file.verify_data_hash());
    CHECK(is_big(file.read_f32("big")));
    file.release(file.info("big"));
    CHECK(is_big(file.read_f32("big")));
  }
  const std::string fifo = dir + "/big.fifo";
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  std::thread writer([&] {
    std::ofstream out(fifo, std::ios::binary);
    const std::string bytes = read_file(path);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  });
  {
    const SafetensorsFile piped(fifo);
    writer.join();
    CHECK(piped.verify_data_hash());
    piped.release(piped.info("big"));
    CHECK(is_big(piped.read_f32("big")));
  }
  std::filesystem::remove(fifo);
  std::string damaged = read_file(path);
  damaged[damaged.size() - 100] ^= 1;
  write_bytes(path, damaged);
  const SafetensorsFile file(path);
  CHECK_THAT(error_of([&] { (void)file.verify_data_hash(); }), Contains("damaged after it was written"));
  std::filesystem::remove(path);
}

TEST_CASE("safetensors: bf16 and f16 conversions") {
  // Exact values and rounding to nearest even.
  CHECK(f32_to_f16(1.0f) == 0x3c00);
  CHECK(f32_to_f16(-2.0f) == 0xc000);
  CHECK(f32_to_f16(65504.0f) == 0x7bff);
  CHECK(f32_to_f16(65519.0f) == 0x7bff);
  CHECK(f32_to_f16(65520.0f) == 0x7c00);  // the tie rounds to even = inf
  CHECK(f32_to_f16(1e10f) == 0x7c00);
  CHECK(f32_to_f16(-INFINITY) == 0xfc00);
  CHECK(f32_to_f16(0.1f) == 0x2e66);
  CHECK(f32_to_f16(1.0f / 3) == 0x3555);
  CHECK(f32_to_f16(std::ldexp(1.0f, -14)) == 0x0400);  // smallest normal
  CHECK(f32_to_f16(std::ldexp(1.0f, -24)) == 0x0001);  // smallest subnormal
  CHECK(f32_to_f16(std::ldexp(1.0f, -25)) == 0x0000);  // tie -> even (0)
  CHECK(f32_to_f16(std::ldexp(1.5f, -25)) == 0x0001);
  CHECK(f32_to_f16(std::ldexp(3.0f, -25)) == 0x0002);  // 1.5 units: tie -> even (2)
  CHECK(f32_to_f16(-std::ldexp(1.0f, -30)) == 0x8000);
  CHECK(f32_to_f16(1.0f + std::ldexp(1.0f, -11)) == 0x3c00);      // tie -> even
  CHECK(f32_to_f16(1.0f + 3 * std::ldexp(1.0f, -11)) == 0x3c02);  // tie -> even (up)
  CHECK(std::isnan(f16_to_f32(f32_to_f16(NAN))));
  CHECK(f16_to_f32(0x0001) == std::ldexp(1.0f, -24));
  CHECK(f16_to_f32(0x7c00) == INFINITY);
  CHECK(f16_to_f32(0x8000) == 0.0f);
  CHECK(std::signbit(f16_to_f32(0x8000)));

  CHECK(f32_to_bf16(1.0f) == 0x3f80);
  CHECK(bf16_to_f32(0x3f80) == 1.0f);
  CHECK(f32_to_bf16(std::bit_cast<float>(0x3f808000u)) == 0x3f80);  // tie -> even
  CHECK(f32_to_bf16(std::bit_cast<float>(0x3f818000u)) == 0x3f82);  // tie -> even (up)
  CHECK(f32_to_bf16(std::bit_cast<float>(0x3f808001u)) == 0x3f81);
  CHECK(f32_to_bf16(std::bit_cast<float>(0x7f7fffffu)) == 0x7f80);  // max float rounds to inf
  CHECK(std::isnan(bf16_to_f32(f32_to_bf16(NAN))));
  CHECK(std::isnan(bf16_to_f32(f32_to_bf16(std::bit_cast<float>(0x7f800001u)))));  // payload in low bits

  // Every 16-bit pattern survives a round trip through fp32.
  for (uint32_t h = 0; h < 65536; ++h) {
    const auto bits = static_cast<uint16_t>(h);
    const float f = f16_to_f32(bits);
    if (std::isnan(f)) {
      CHECK(std::isnan(f16_to_f32(f32_to_f16(f))));
    } else if (f32_to_f16(f) != bits) {
      FAIL("f16 round trip of " << h);
    }
    const float b = bf16_to_f32(bits);
    if (!std::isnan(b) && f32_to_bf16(b) != bits) FAIL("bf16 round trip of " << h);
  }
  // f32 -> f16 agrees with rounding done in double arithmetic on a sweep of normal f16 magnitudes.
  for (uint32_t x = 0x38800000u; x < 0x477f0000u; x += 0x1235u) {
    const float f = std::bit_cast<float>(x);
    const float lo = f16_to_f32(static_cast<uint16_t>(f32_to_f16(f)));
    const uint16_t h = f32_to_f16(f);
    const float below = f16_to_f32(static_cast<uint16_t>(h - 1)), above = f16_to_f32(static_cast<uint16_t>(h + 1));
    if (std::fabs(static_cast<double>(lo) - f) > std::fabs(static_cast<double>(below) - f) ||
        std::fabs(static_cast<double>(lo) - f) > std::fabs(static_cast<double>(above) - f))
      FAIL("f16 rounding of " << f);
  }
}

TEST_CASE("safetensors: every corruption is rejected with a one-line message naming the file") {
  const std::string dir = temp_dir("corrupt");
  const std::string path = dir + "/bad.safetensors";
  const auto open_error = [&](const std::string& bytes) {
    write_bytes(path, bytes);
    return error_of([&] { SafetensorsFile f(path); });
  };
  const auto with_header = [&](const std::string& header, size_t buffer) {
    return open_error(crafted(header, buffer));
  };

  SECTION("too short for the header length") {
    CHECK_THAT(open_error("abc"), Contains(path) && Contains("truncated file: 3 bytes"));
    CHECK_THAT(open_error(""), Contains("truncated file: 0 bytes"));
  }
  SECTION("header length beyond the file") {
    std::string bytes = crafted(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 4);
    const uint64_t huge = 1000;
    std::memcpy(bytes.data(), &huge, 8);
    CHECK_THAT(open_error(bytes), Contains(path) && Contains("header length 1000 runs past the end of the file"));
  }
  SECTION("invalid JSON") {
    CHECK_THAT(with_header(R"({"a":{"dtype":"F32",)", 0), Contains(path) && Contains("invalid JSON"));
    CHECK_THAT(with_header(R"(["a"])", 0), Contains(path) && Contains("invalid JSON header"));
    CHECK_THAT(with_header(R"(x{})", 0), Contains(path) && Contains("invalid JSON header: it must start with '{'"));
    // As the safetensors package reads them: JSON whitespace before the header's '{', and a null
    // __metadata__ (none).
    CHECK(with_header(" \n\t{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4).empty());
    CHECK(with_header(R"({"__metadata__": null, "a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 4).empty());
    CHECK_THAT(with_header(R"({"__metadata__": [], "a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 4),
               Contains("__metadata__ must be an object of strings, got []"));
    CHECK_THAT(with_header(R"({"a": 5})", 0), Contains("tensor 'a': entry must be an object"));
    CHECK_THAT(with_header(R"({"a": {"dtype": "F32", "shape": [1]}})", 4),
               Contains("tensor 'a': entry needs dtype, shape and data_offsets"));
    CHECK_THAT(with_header(R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4),
               Contains("tensor 'a': shape dimension must be a non-negative integer, got -1"));
    CHECK_THAT(with_header(R"({"a":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})", 4),
               Contains("non-negative integer"));
    CHECK_THAT(with_header(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0]}})", 4),
               Contains("data_offsets must be [begin, end]"));
    CHECK_THAT(with_header(R"({"__metadata__":{"format":1}})", 0),
               Contains("__metadata__ value of 'format' must be a string"));
  }
  SECTION("unknown dtype") {
    CHECK_THAT(with_header(R"({"w":{"dtype":"F33","shape":[1],"data_offsets":[0,4]}})", 4),
               Contains(path) && Contains("tensor 'w': unknown dtype 'F33'"));
  }
  SECTION("offsets out of range, reversed, overlapping, with gaps, not covering the buffer") {
    CHECK_THAT(with_header(R"({"w":{"dtype":"F32","shape":[25],"data_offsets":[0,100]}})", 8),
               Contains(path) && Contains("tensor 'w': data_offsets [0, 100) run past the end of the 8-byte"));
    CHECK_THAT(with_header(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 8),
               Contains("tensor 'w': data_offsets [8, 0) end before they begin"));
    CHECK_THAT(with_header(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                           R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                           12),
               Contains(path) && Contains("tensor 'b': data_offsets [4, 12) overlap tensor 'a' [0, 8)"));
    CHECK_THAT(with_header(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                           R"("b":{"dtype":"F32","shape":[2],"data_offsets":[12,20]}})",
                           20),
               Contains("data buffer bytes [8, 12) belong to no tensor (gap before tensor 'b')"));
    CHECK_THAT(with_header(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 12),
               Contains(path) && Contains("tensors cover 8 of the 12 data buffer bytes"));
    CHECK_THAT(with_header(R"({})", 4), Contains("tensors cover 0 of the 4"));
  }
  SECTION("shape x dtype size differs from the byte span") {
    CHECK_THAT(
        with_header(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8),
        Contains(path) && Contains("tensor 'w': shape [3] of F32 is 3 x 4 bytes but data_offsets [0, 8) span 8"));
    CHECK_THAT(with_header(R"({"w":{"dtype":"BF16","shape":[2, 2],"data_offsets":[0,4]}})", 4),
               Contains("shape [2, 2] of BF16 is 4 x 2 bytes"));
    CHECK_THAT(
        with_header(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,8]}})", 8),
        Contains("overflows"));
  }
  SECTION("truncated file") {
    const std::vector<float> values(64, 1.0f);
    SafetensorsWriter w;
    w.add_f32("a", {64}, values);
    w.add_f32("last", {8, 8}, values);
    const std::string full = w.serialize();
    CHECK_THAT(open_error(full.substr(0, full.size() - 5)),
               Contains(path) && Contains("tensor 'last'") && Contains("run past the end") && Contains("truncated"));
    CHECK_THAT(open_error(full.substr(0, 20)), Contains("runs past the end of the file"));
    CHECK(open_error(full).empty());
  }
  SECTION("duplicate names") {
    CHECK_THAT(with_header(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                           R"( "a" : {"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                           8),
               Contains(path) && Contains("duplicate tensor name 'a'"));
    // A field repeated inside an entry, or a repeated __metadata__, the reference refuses too; a key
    // repeated inside __metadata__ it reads (the last value), as we do.
    CHECK_THAT(with_header(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"shape":[1]}})", 4),
               Contains(path) && Contains("tensor 'a': field 'shape' given twice in its entry"));
    CHECK_THAT(with_header(R"({"__metadata__":{"k":"1"},"__metadata__":{"k":"2"}})", 0),
               Contains("__metadata__ given twice in the header"));
    CHECK(with_header(R"({"__metadata__":{"k":"1","k":"2"}})", 0).empty());
    // Keys inside entries ("dtype" twice over all entries) are not tensor names.
    CHECK(with_header(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                      R"("b\"x":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                      8)
              .empty());
  }
  SECTION("missing tensor and wrong shape") {
    const std::vector<float> six(6, 0.5f);
    SafetensorsWriter w;
    w.add_f32("w", {2, 3}, six);
    w.write(path);
    const SafetensorsFile f(path);
    CHECK_THAT(error_of([&] { (void)f.read_f32("cls.predictions.bias", {6}); }),
               Contains(path) && Contains("tensor 'cls.predictions.bias' not found"));
    CHECK_THAT(error_of([&] { (void)f.info("nope"); }), Contains("'nope' not found"));
    CHECK_THAT(error_of([&] {
                 (void)f.read_f32("w", {3, 2});
               }),
               Contains(path) && Contains("tensor 'w': expected shape [3, 2], got [2, 3]"));
    CHECK_THAT(error_of([&] { (void)f.read_f32("w", {}); }), Contains("expected shape [], got [2, 3]"));
  }
  SECTION("missing file") {
    CHECK_THAT(error_of([&] { SafetensorsFile f(dir + "/absent.safetensors"); }),
               Contains(dir + "/absent.safetensors") && Contains("cannot open"));
  }
}

TEST_CASE("safetensors: a failed write leaves the previous file intact") {
  const std::string dir = temp_dir("atomic");
  const std::string path = dir + "/model.safetensors";
  const std::vector<float> old_values = {1, 2, 3};
  {
    SafetensorsWriter w;
    w.add_f32("old", {3}, old_values);
    w.write(path);
  }
  const std::string before = read_file(path);

  // The temp file cannot be created (a directory sits at its name), so the write fails before the
  // rename; this works as root too, unlike a read-only directory.
  const std::string temp = path + ".tmp." + std::to_string(::getpid());
  make_directories(temp);
  const std::vector<float> new_values = {4, 5, 6, 7};
  SafetensorsWriter w;
  w.add_f32("new", {4}, new_values);
  CHECK_THAT(error_of([&] { w.write(path); }), Contains(temp));
  CHECK(read_file(path) == before);
  CHECK(SafetensorsFile(path).read_f32("old", {3}) == old_values);

  // Once the obstacle is gone the write replaces the file, and no temp file is left behind.
  std::filesystem::remove(temp);
  w.write(path);
  CHECK(SafetensorsFile(path).read_f32("new", {4}) == new_values);
  size_t entries = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator(dir)) ++entries;
  CHECK(entries == 1);

  // Into a directory that does not exist: an error naming the path, nothing created.
  CHECK_THAT(error_of([&] { w.write(dir + "/missing/model.safetensors"); }), Contains(dir + "/missing/"));
}

// ---- TOML -----------------------------------------------------------------------------------------

TEST_CASE("toml: every supported value kind, tables and line numbers") {
  const std::string text =
      "# a run config\n"
      "title = \"basic \\\"quoted\\\" \\t\\n\\\\ \\u00e9 \\U0001F600\"  # trailing comment\n"
      "literal = 'C:\\path\\no escapes'\n"
      "\n"
      "[numbers]\n"
      "plain = 42\n"
      "negative = -17\n"
      "positive = +3\n"
      "big = 1_000_000\n"
      "zero = 0\n"
      "hex = 0xFF_ff\n"
      "oct = 0o17\n"
      "bin = 0b101\n"
      "float = 3.0\n"
      "lr = 5e-5\n"
      "small = 1e-4\n"
      "eps = 1E-12\n"
      "neg_float = -0.5\n"
      "exp_plus = 2.5e+3\n"
      "under_float = 1_000.000_5\n"
      "pos_inf = inf\n"
      "neg_inf = -inf\n"
      "not_a_number = nan\n"
      "yes = true\n"
      "no = false\n"
      "\n"
      "[a.b]  # nested table name\n"
      "\"quoted key\" = 1\n"
      "'literal key' = 2\n"
      "dash-key_1 = 3\n"
      "empty = []\n"
      "ints = [1, 2, 3]\n"
      "multi = [\n"
      "  \"x\",  # comment inside\n"
      "  'y',\n"
      "\n"
      "  \"z\",  # trailing comma\n"
      "]\n"
      "nested = [[1, 2], [3.5], [\"s\", true]]\n"
      "crlf = 1\r\n"
      "  [ spaced . name ]\n"
      "k = 'v'";
  const TomlDocument doc = parse_toml(text, "t.toml");
  REQUIRE(doc.tables.size() == 4);
  CHECK(doc.tables[0].name.empty());
  const TomlTable& root = doc.tables[0];
  CHECK(root.find("title")->value.string == "basic \"quoted\" \t\n\\ \xC3\xA9 \xF0\x9F\x98\x80");
  CHECK(root.find("title")->line == 2);
  CHECK(root.find("literal")->value.string == "C:\\path\\no escapes");

  const TomlTable* numbers = doc.find("numbers");
  REQUIRE(numbers);
  CHECK(numbers->line == 5);
  const auto num = [&](const char* key) { return numbers->find(key)->value; };
  CHECK(num("plain").kind == TomlValue::Kind::kInteger);
  CHECK(num("plain").integer == 42);
  CHECK(num("plain").line == 6);
  CHECK(num("negative").integer == -17);
  CHECK(num("positive").integer == 3);
  CHECK(num("big").integer == 1000000);
  CHECK(num("zero").integer == 0);
  CHECK(num("hex").integer == 0xFFFF);
  CHECK(num("oct").integer == 15);
  CHECK(num("bin").integer == 5);
  CHECK(num("float").kind == TomlValue::Kind::kFloat);
  CHECK(num("float").floating == 3.0);
  CHECK(num("lr").floating == 5e-5);
  CHECK(num("small").floating == 1e-4);
  CHECK(num("eps").floating == 1e-12);
  CHECK(num("neg_float").floating == -0.5);
  CHECK(num("exp_plus").floating == 2500.0);
  CHECK(num("under_float").floating == 1000.0005);
  CHECK(num("pos_inf").floating == INFINITY);
  CHECK(num("neg_inf").floating == -INFINITY);
  CHECK(std::isnan(num("not_a_number").floating));
  CHECK(num("yes").kind == TomlValue::Kind::kBool);
  CHECK(num("yes").boolean);
  CHECK_FALSE(num("no").boolean);
  CHECK(num("lr").to_string() == "5e-05");
  CHECK(num("float").to_string() == "3.0");  // a whole float still reads as a float

  const TomlTable* ab = doc.find("a.b");
  REQUIRE(ab);
  CHECK(ab->line == 27);
  CHECK(ab->find("quoted key")->value.integer == 1);
  CHECK(ab->find("literal key")->value.integer == 2);
  CHECK(ab->find("dash-key_1")->value.integer == 3);
  CHECK(ab->find("empty")->value.kind == TomlValue::Kind::kArray);
  CHECK(ab->find("empty")->value.array.empty());
  CHECK(ab->find("ints")->value.array.size() == 3);
  CHECK(ab->find("ints")->value.array[2].integer == 3);
  const TomlValue& multi = ab->find("multi")->value;
  CHECK(multi.line == 33);
  REQUIRE(multi.array.size() == 3);
  CHECK(multi.array[2].string == "z");
  CHECK(multi.array[2].line == 37);
  const TomlValue& nested = ab->find("nested")->value;
  REQUIRE(nested.array.size() == 3);
  CHECK(nested.array[1].array[0].floating == 3.5);
  CHECK(nested.array[2].array[1].boolean);
  CHECK(nested.to_string() == "[[1, 2], [3.5], [\"s\", true]]");
  CHECK(ab->find("crlf")->value.integer == 1);
  const TomlTable* spaced = doc.find("spaced.name");
  REQUIRE(spaced);
  CHECK(spaced->line == 41);
  CHECK(spaced->find("k")->value.string == "v");
  CHECK(spaced->find("k")->line == 42);
}

TEST_CASE("toml: errors are path:line: message") {
  const auto err = [](const std::string& text) { return error_of([&] { parse_toml(text, "run.toml"); }); };
  CHECK_THAT(err("a = 1\nb = 2\na = 3\n"), Contains("run.toml:3: duplicate key 'a' (first at line 1)"));
  CHECK_THAT(err("[t]\nx = 1\n\n[t]\n"), Contains("run.toml:4: table [t] defined twice (first at line 1)"));
  CHECK_THAT(err("[t]\nx = 1\nx = 2\n"), Contains("run.toml:3: duplicate key 'x' in [t]"));
  CHECK_THAT(err("\ns = \"abc\n"), Contains("run.toml:2: unterminated string"));
  CHECK_THAT(err("s = 'abc\n"), Contains("run.toml:1: unterminated string"));
  CHECK_THAT(err("\n\ns = \"a\\qb\"\n"), Contains("run.toml:3: unknown escape \\q"));
  CHECK_THAT(err("s = \"\\u12\"\n"), Contains("run.toml:1: escape \\u needs 4 hex digits"));
  CHECK_THAT(err("s = \"\\uD800\"\n"), Contains("not a Unicode scalar value"));
  CHECK_THAT(err("act = gelu\n"), Contains("run.toml:1: bad value 'gelu' (strings need quotes: \"gelu\")"));
  CHECK_THAT(err("x = 1__0\n"), Contains("run.toml:1: bad value '1__0'"));
  CHECK_THAT(err("x = _1\n"), Contains("bad value '_1'"));
  CHECK_THAT(err("x = 012\n"), Contains("leading zeros"));
  CHECK_THAT(err("x = 1.\n"), Contains("digits after the '.'"));
  CHECK_THAT(err("x = .5\n"), Contains("bad value '.5'"));
  CHECK_THAT(err("x = 1e\n"), Contains("bad exponent"));
  CHECK_THAT(err("x = 99999999999999999999\n"), Contains("out of the 64-bit range"));
  CHECK_THAT(err("x = 1e999\n"), Contains("out of range"));
  CHECK_THAT(err("x = -0x10\n"), Contains("take no sign"));
  CHECK_THAT(err("when = 1979-05-27\n"),
             Contains("run.toml:1: bad value '1979-05-27': dates and times are not supported"));
  CHECK_THAT(err("when = 07:32:00\n"), Contains("dates and times are not supported"));
  CHECK_THAT(err("t = {a = 1}\n"), Contains("inline tables"));
  CHECK_THAT(err("[[runs]]\n"), Contains("arrays of tables"));
  CHECK_THAT(err("a.b = 1\n"), Contains("dotted keys are not supported"));
  CHECK_THAT(err("a 1\n"), Contains("run.toml:1: expected '=' after key 'a'"));
  CHECK_THAT(err("a =\n"), Contains("missing value for key 'a'"));
  CHECK_THAT(err("a = 1 2\n"), Contains("run.toml:1: unexpected text '2' at the end of the line"));
  CHECK_THAT(err("a = [1, 2\n\nb = 3\n"),
             Contains("run.toml:3: expected ',' or ']' in the array opened at line 1, got 'b = 3'"));
  CHECK_THAT(err("a = [1, 2\n"), Contains("run.toml:1: unterminated array"));
  CHECK_THAT(err("\n[t] x = 1\n"), Contains("run.toml:2: unexpected text 'x = 1' at the end of the line"));
  CHECK_THAT(err("[t\n"), Contains("expected ']'"));
  CHECK_THAT(err("[]\n"), Contains("empty table name"));
  CHECK_THAT(err("s = \"\"\"x\"\"\"\n"), Contains("multi-line strings"));
  CHECK_THAT(err("= 1\n"), Contains("expected a key"));
  CHECK_THAT(err("a = 1\rb = 2\n"), Contains("carriage return"));
  // What TOML 1.0 (and Python's tomllib) refuses: control characters in comments and literal strings,
  // a bare CR in a comment, invalid UTF-8 anywhere; a key and a table of the same name.
  CHECK_THAT(err("a = 1 # \x01\n"), Contains("run.toml:1: control character in a comment"));
  CHECK_THAT(err("# \x7f\na = 1\n"), Contains("run.toml:1: control character in a comment"));
  CHECK_THAT(err("# \r x\na = 1\n"), Contains("run.toml:1: control character in a comment"));
  CHECK_THAT(err("a = [1, # \r 2\n]\n"), Contains("control character in a comment"));
  CHECK_THAT(err("\nk = 'a\x01b'\n"), Contains("run.toml:2: control character in a string"));
  CHECK_THAT(err("a = 1\nb = \"\xff\"\n"), Contains("run.toml:2: invalid UTF-8"));
  CHECK_THAT(err("# \xed\xa0\x80\n"), Contains("run.toml:1: invalid UTF-8"));
  CHECK_THAT(err("a = 1\n[a]\n"), Contains("run.toml:2: table [a] redefines the key 'a' (line 1)"));
  CHECK_THAT(err("[a]\nb = 1\n[a.b]\n"), Contains("run.toml:3: table [a.b] redefines the key 'b' in [a] (line 2)"));
  CHECK_THAT(err("[a.b]\nc = 1\n[a]\nb = 2\n"),
             Contains("run.toml:4: key 'b' in [a] has the name of the table [a.b] (line 1)"));
  // Every prefix of a header's name is a table: [a.b] after a key a at the top, [a.b.c] after a key b
  // in [a]; and a key may not take the name of a table a header made without naming it.
  CHECK_THAT(err("a = 1\n[a.b]\n"), Contains("run.toml:2: table [a.b] redefines the key 'a' (line 1)"));
  CHECK_THAT(err("[a]\nb = 1\n[a.b.c]\n"), Contains("run.toml:3: table [a.b.c] redefines the key 'b' in [a] (line 2)"));
  CHECK_THAT(err("[a.b.c]\n[a]\nb = 1\n"),
             Contains("run.toml:3: key 'b' in [a] has the name of the table [a.b] that the header at line 1 makes"));
  CHECK_NOTHROW(parse_toml("[a.b]\nx = 1\n[a]\ny = 2\n", "run.toml"));  // [a] named after [a.b] made it
  // A quoted key that is empty or holds a '.' names no table (tomllib reads these too).
  CHECK_NOTHROW(parse_toml("\"\" = 1\n[a.b.c]\n[a]\n\"b.c\" = 2\n'' = 3\n", "run.toml"));
  CHECK_THAT(err("\"\" = 1\n'' = 2\n"), Contains("run.toml:2: duplicate key ''"));
  // An unknown escape is shown whole: a multi-byte character, or a control character by its code.
  CHECK_THAT(err("k = \"\\\xea\xb0\x80\"\n"), Contains("unknown escape \\\xea\xb0\x80 in a string"));
  CHECK_THAT(err("k = \"\\\x01\"\n"), Contains("unknown escape \\ before U+0001 in a string"));
  CHECK_THAT(err(std::string("k = \"\\\0\"\n", 9)), Contains("unknown escape \\ before U+0000 in a string"));
  CHECK_THAT(err("k = \"ab\\"), Contains("run.toml:1: unterminated string"));  // a backslash ends the file
  CHECK_THAT(err("[\"\"]\n"),
             Contains("run.toml:1: an empty quoted table name or part of one (\"\") is not supported"));
  CHECK_THAT(err("[a.\"\"]\n[a]\n\"\" = 1\n"), Contains("run.toml:1: an empty quoted table name or part of one"));
  CHECK_THAT(err("[a.''.b]\n"), Contains("run.toml:1: an empty quoted table name or part of one"));
  CHECK_THAT(err("[\"a.b\"]\nx = 1\n"), Contains("run.toml:1: a quoted table name with a '.' inside"));
  CHECK_THAT(err("café = 1\n"), Contains("run.toml:1: bare keys are ASCII") && Contains("quote this one: \"café\""));
  CHECK_NOTHROW(parse_toml("# tab\tand CRLF\r\nk = 'tab\there' # ok\r\n", "run.toml"));
  CHECK_THAT(error_of([] { load_toml("test_engine_io_tmp/absent.toml"); }),
             Contains("test_engine_io_tmp/absent.toml") && Contains("cannot open"));
}

TEST_CASE("toml: closest_match suggests typos only") {
  const std::vector<std::string> keys = {"learning_rate", "warmup_steps", "warmup_ratio", "per_device_train_batch_size",
                                         "seed"};
  CHECK(closest_match("learning_rat", keys) == "learning_rate");
  CHECK(closest_match("lerning_rate", keys) == "learning_rate");
  CHECK(closest_match("learnign_rate", keys) == "learning_rate");  // transposition
  CHECK(closest_match("Learning_Rate", keys) == "learning_rate");
  CHECK(closest_match("warmup_step", keys) == "warmup_steps");
  CHECK(closest_match("batch_size", keys) == "per_device_train_batch_size");
  CHECK(closest_match("sed", keys) == "seed");
  CHECK(closest_match("optimizer", keys).empty());
  CHECK(closest_match("xyz", keys).empty());
}

// ---- run config -----------------------------------------------------------------------------------

namespace {

const std::string kMinimal =
    "[data]\n"
    "tokenizer = \"tok\"\n"
    "train_data = \"shards\"\n"
    "\n"
    "[training]\n"
    "output_dir = \"runs/x\"\n";

std::string config_error(const std::string& text) {
  return error_of([&] { parse_run_config(text, "run.toml"); });
}

}  // namespace

TEST_CASE("config: defaults equal Hugging Face's") {
  const RunConfig c = parse_run_config(kMinimal, "run.toml");
  CHECK(c.path == "run.toml");
  CHECK(c.warnings.empty());
  const BertConfig& m = c.model;
  CHECK(m.vocab_size == 0);
  CHECK(m.hidden_size == 768);
  CHECK(m.num_hidden_layers == 12);
  CHECK(m.num_attention_heads == 12);
  CHECK(m.intermediate_size == 3072);
  CHECK(m.hidden_act == "gelu");
  CHECK(m.hidden_dropout_prob == 0.1);
  CHECK(m.attention_probs_dropout_prob == 0.1);
  CHECK(m.max_position_embeddings == 512);
  CHECK(m.type_vocab_size == 2);
  CHECK(m.initializer_range == 0.02);
  CHECK(m.layer_norm_eps == 1e-12);
  CHECK(m.pad_token_id == 0);
  CHECK(m.head_dim() == 64);

  const DataConfig& d = c.data;
  CHECK(d.tokenizer == "tok");
  CHECK(d.train_data == "shards");
  CHECK(d.valid_data.empty());
  CHECK(d.mlm_probability == 0.15);
  CHECK(d.mask_replace_prob == 0.8);
  CHECK(d.random_replace_prob == 0.1);
  CHECK_FALSE(d.whole_word_mask);
  CHECK_FALSE(d.fixed_mask_count);
  CHECK(d.max_seq_length == 0);
  CHECK(d.mlm_masked_positions_only);
  CHECK(d.shuffle);
  CHECK(d.prefetch == 2);

  const TrainingConfig& t = c.training;
  CHECK(t.output_dir == "runs/x");
  CHECK_FALSE(t.overwrite_output_dir);
  CHECK(t.num_train_epochs == 3.0);
  CHECK(t.max_steps == -1);
  CHECK(t.per_device_train_batch_size == 8);
  CHECK(t.per_device_eval_batch_size == 8);
  CHECK(t.gradient_accumulation_steps == 1);
  CHECK(t.learning_rate == 5e-5);
  CHECK(t.weight_decay == 0.0);
  CHECK(t.adam_beta1 == 0.9);
  CHECK(t.adam_beta2 == 0.999);
  CHECK(t.adam_epsilon == 1e-8);
  CHECK(t.max_grad_norm == 1.0);
  CHECK(t.warmup_steps == 0);
  CHECK(t.warmup_ratio == 0.0);
  CHECK(t.lr_scheduler_type == "linear");
  CHECK(t.logging_steps == 500);
  CHECK(t.eval_steps == 500);
  CHECK(t.save_steps == 500);
  CHECK(t.save_total_limit == 0);
  CHECK(t.seed == 42);
  CHECK(t.device == "cpu");
  CHECK(t.threads == 0);
  CHECK(t.ddp_bucket_cap_mb == 25);  // HF's None: torch DDP's bucket_cap_mb
  CHECK(t.ddp_timeout == 1800);
  CHECK(t.gemm_autotune == 0);

  // eval_steps follows logging_steps unless set.
  CHECK(parse_run_config(kMinimal + "logging_steps = 100\n", "r").training.eval_steps == 100);
  CHECK(parse_run_config(kMinimal + "logging_steps = 100\neval_steps = 7\n", "r").training.eval_steps == 7);
}

TEST_CASE("config: every key can be set") {
  const std::string text =
      "# BERT-small on the demo corpus\n"
      "[model]\n"
      "vocab_size = 32000\n"
      "hidden_size = 256\n"
      "num_hidden_layers = 4\n"
      "num_attention_heads = 4\n"
      "intermediate_size = 1024\n"
      "hidden_act = \"gelu_new\"\n"
      "hidden_dropout_prob = 0.0\n"
      "attention_probs_dropout_prob = 0\n"
      "max_position_embeddings = 128\n"
      "type_vocab_size = 2\n"
      "initializer_range = 0.02\n"
      "layer_norm_eps = 1e-12\n"
      "pad_token_id = 0\n"
      "\n"
      "[data]\n"
      "tokenizer = '~/tok'\n"
      "train_data = \"data/train\"\n"
      "valid_data = \"data/valid/\"\n"  // a directory's trailing slash goes
      "mlm_probability = 0.2\n"
      "mask_replace_prob = 1.0\n"
      "random_replace_prob = 0.0\n"
      "whole_word_mask = true\n"
      "fixed_mask_count = true\n"
      "max_seq_length = 128\n"
      "mlm_masked_positions_only = false\n"
      "shuffle = false\n"
      "prefetch = 0\n"
      "\n"
      "[training]\n"
      "output_dir = \"runs/small\"\n"
      "overwrite_output_dir = true\n"
      "num_train_epochs = 40\n"
      "max_steps = 10_000\n"
      "per_device_train_batch_size = 64\n"
      "per_device_eval_batch_size = 128\n"
      "gradient_accumulation_steps = 4\n"
      "learning_rate = 1e-4\n"
      "weight_decay = 0.01\n"
      "adam_beta1 = 0.9\n"
      "adam_beta2 = 0.98\n"
      "adam_epsilon = 1e-6\n"
      "max_grad_norm = 0\n"
      "warmup_steps = 100\n"
      "warmup_ratio = 0.0\n"
      "lr_scheduler_type = \"cosine\"\n"
      "logging_steps = 10\n"
      "eval_steps = 200\n"
      "save_steps = 1000\n"
      "save_total_limit = 3\n"
      "seed = 1234\n"
      "device = \"cuda\"\n"
      "threads = 2\n"
      "ddp_bucket_cap_mb = 50\n"
      "ddp_timeout = 600\n"
      "gemm_autotune = 8\n";
  const RunConfig c = parse_run_config(text, "small.toml");
  CHECK(c.model.vocab_size == 32000);
  CHECK(c.model.hidden_size == 256);
  CHECK(c.model.head_dim() == 64);
  CHECK(c.model.hidden_act == "gelu_new");
  CHECK(c.model.attention_probs_dropout_prob == 0.0);
  CHECK(c.model.max_position_embeddings == 128);
  const char* home = std::getenv("HOME");
  CHECK(c.data.tokenizer == (home && *home ? std::string(home) + "/tok" : std::string("~/tok")));
  CHECK(c.data.valid_data == "data/valid");
  CHECK(c.data.mlm_probability == 0.2);
  CHECK(c.data.whole_word_mask);
  CHECK(c.data.fixed_mask_count);
  CHECK(c.data.max_seq_length == 128);
  CHECK_FALSE(c.data.mlm_masked_positions_only);
  CHECK_FALSE(c.data.shuffle);
  CHECK(c.data.prefetch == 0);
  CHECK(c.training.overwrite_output_dir);
  CHECK(c.training.num_train_epochs == 40.0);
  CHECK(c.training.max_steps == 10000);
  CHECK(c.training.per_device_train_batch_size == 64);
  CHECK(c.training.gradient_accumulation_steps == 4);
  CHECK(c.training.learning_rate == 1e-4);
  CHECK(c.training.adam_beta2 == 0.98);
  CHECK(c.training.adam_epsilon == 1e-6);
  CHECK(c.training.max_grad_norm == 0.0);
  CHECK(c.training.lr_scheduler_type == "cosine");
  CHECK(c.training.eval_steps == 200);
  CHECK(c.training.save_total_limit == 3);
  CHECK(c.training.seed == 1234);
  CHECK(c.training.device == "cuda");
  CHECK(c.training.threads == 2);
  CHECK(c.training.ddp_bucket_cap_mb == 50);
  CHECK(c.training.ddp_timeout == 600);
  CHECK(c.training.gemm_autotune == 8);
  CHECK(c.warnings.empty());
}

TEST_CASE("config: warmup_steps wins over warmup_ratio, as in Hugging Face") {
  TrainingConfig t;
  CHECK(t.warmup_steps_for(1000) == 0);
  t.warmup_ratio = 0.06;
  CHECK(t.warmup_steps_for(1000) == 60);
  CHECK(t.warmup_steps_for(1001) == 61);  // ceil, like HF
  t.warmup_steps = 5;
  CHECK(t.warmup_steps_for(1000) == 5);

  const RunConfig both = parse_run_config(kMinimal + "warmup_steps = 50\nwarmup_ratio = 0.1\n", "run.toml");
  CHECK(both.training.warmup_steps_for(10000) == 50);
  REQUIRE(both.warnings.size() == 1);
  CHECK_THAT(both.warnings[0], Contains("run.toml:8: [training] warmup_ratio") && Contains("warmup_steps 50 wins"));
  CHECK(parse_run_config(kMinimal + "warmup_ratio = 0.1\n", "r").warnings.empty());
  // gemm_autotune tunes the CUDA backend's GEMMs: on the CPU it is said to do nothing.
  const RunConfig tuned_cpu = parse_run_config(kMinimal + "gemm_autotune = 8\n", "run.toml");
  REQUIRE(tuned_cpu.warnings.size() == 1);
  CHECK_THAT(tuned_cpu.warnings[0],
             Contains("[training] gemm_autotune") && Contains("no effect with device = \"cpu\""));
  CHECK(parse_run_config(kMinimal + "device = \"cuda\"\ngemm_autotune = 8\n", "r").warnings.empty());
}

TEST_CASE("config: unknown sections and keys name the line and suggest a fix") {
  CHECK_THAT(config_error(kMinimal + "\n[trainig]\nseed = 1\n"),
             Contains("run.toml:8: unknown section [trainig]; did you mean [training]?"));
  CHECK_THAT(config_error("[optimizer]\n" + kMinimal),
             Contains("run.toml:1: unknown section [optimizer]; the sections are"));
  CHECK_THAT(config_error("[model.extra]\n" + kMinimal), Contains("run.toml:1: unknown section [model.extra]"));
  CHECK_THAT(config_error(kMinimal + "learning_rat = 1e-4\n"),
             Contains("run.toml:7: unknown key 'learning_rat' in [training]; did you mean 'learning_rate'?"));
  CHECK_THAT(
      config_error(kMinimal + "batch_size = 32\n"),
      Contains("run.toml:7: unknown key 'batch_size' in [training]; did you mean 'per_device_train_batch_size'?"));
  CHECK_THAT(config_error(kMinimal + "optimizer = \"adamw\"\n"),
             Contains("run.toml:7: unknown key 'optimizer' in [training]"));
  CHECK_THAT(config_error("[model]\nlearning_rate = 1e-4\n" + kMinimal),
             Contains("run.toml:2: key 'learning_rate' belongs in [training], not [model]"));
  CHECK_THAT(config_error("seed = 1\n" + kMinimal),
             Contains("run.toml:1: key 'seed' is outside any section; put it under [training]"));
  CHECK_THAT(config_error("colour = 1\n" + kMinimal), Contains("run.toml:1: key 'colour' is outside any section"));
  CHECK_THAT(config_error(kMinimal + "seed = 1\nseed = 2\n"),
             Contains("run.toml:8: duplicate key 'seed' in [training]"));
}

TEST_CASE("config: wrong types and out-of-range values name the key and the line") {
  const auto model = [](const std::string& lines) { return config_error("[model]\n" + lines + kMinimal); };
  const auto data = [](const std::string& lines) {
    return config_error("[data]\ntokenizer = \"t\"\ntrain_data = \"s\"\n" + lines + "[training]\noutput_dir = \"o\"\n");
  };
  const auto training = [](const std::string& lines) { return config_error(kMinimal + lines); };

  // types
  CHECK_THAT(model("hidden_size = \"768\"\n"),
             Contains("run.toml:2: [model] hidden_size = \"768\": expected an integer, got a string"));
  CHECK_THAT(model("hidden_size = 768.0\n"),
             Contains("run.toml:2: [model] hidden_size = 768.0: expected an integer, got a float"));
  CHECK_THAT(model("hidden_dropout_prob = \"0.1\"\n"),
             Contains("[model] hidden_dropout_prob") && Contains("expected a number"));
  CHECK_THAT(model("hidden_act = 1\n"), Contains("[model] hidden_act = 1: expected a string, got an integer"));
  CHECK_THAT(data("whole_word_mask = 1\n"), Contains("run.toml:4: [data] whole_word_mask = 1: expected true or false"));
  CHECK_THAT(data("valid_data = \"v\\u0000x\"\n"),
             Contains("run.toml:4: [data] valid_data = ") && Contains(": a path cannot contain a NUL character"));
  CHECK_THAT(data("train_data2 = [\"a\"]\n"),
             Contains("run.toml:4: unknown key 'train_data2' in [data]; did you mean 'train_data'?"));
  CHECK_THAT(training("seed = [1, 2]\n"),
             Contains("run.toml:7: [training] seed = [1, 2]: expected an integer, got an array"));
  CHECK_THAT(training("num_train_epochs = \"3\"\n"),
             Contains("[training] num_train_epochs") && Contains("expected a number"));

  // ranges
  CHECK_THAT(training("learning_rate = -1e-4\n"),
             Contains("run.toml:7: [training] learning_rate = -0.0001: must be > 0"));
  CHECK_THAT(training("learning_rate = 0\n"), Contains("[training] learning_rate = 0: must be > 0"));
  CHECK_THAT(training("learning_rate = nan\n"), Contains("[training] learning_rate = nan: must be finite"));
  CHECK_THAT(training("learning_rate = inf\n"), Contains("[training] learning_rate = inf: must be finite"));
  CHECK_THAT(model("hidden_dropout_prob = 1.0\n"),
             Contains("run.toml:2: [model] hidden_dropout_prob = 1.0: must be in [0, 1)"));
  CHECK_THAT(model("attention_probs_dropout_prob = -0.1\n"),
             Contains("[model] attention_probs_dropout_prob = -0.1: must be in [0, 1)"));
  CHECK_THAT(model("hidden_size = 0\n"), Contains("[model] hidden_size = 0: must be >= 1"));
  CHECK_THAT(model("hidden_size = 3000000000\n"),
             Contains("[model] hidden_size = 3000000000: out of range (at most 2147483647)"));
  CHECK_THAT(model("vocab_size = -1\n"), Contains("[model] vocab_size = -1: must be >= 0"));
  CHECK_THAT(model("layer_norm_eps = 0\n"), Contains("[model] layer_norm_eps = 0: must be > 0"));
  CHECK_THAT(training("per_device_train_batch_size = 0\n"),
             Contains("run.toml:7: [training] per_device_train_batch_size = 0: must be >= 1"));
  CHECK_THAT(training("per_device_eval_batch_size = -8\n"),
             Contains("[training] per_device_eval_batch_size = -8: must be >= 1"));
  CHECK_THAT(training("gradient_accumulation_steps = 0\n"),
             Contains("[training] gradient_accumulation_steps = 0: must be >= 1"));
  CHECK_THAT(training("weight_decay = -0.01\n"), Contains("[training] weight_decay = -0.01: must be >= 0"));
  CHECK_THAT(training("adam_beta2 = 1\n"), Contains("[training] adam_beta2 = 1: must be in [0, 1)"));
  CHECK_THAT(training("adam_epsilon = 0\n"), Contains("[training] adam_epsilon = 0: must be > 0"));
  CHECK_THAT(training("max_grad_norm = -1\n"), Contains("[training] max_grad_norm = -1: must be >= 0"));
  CHECK_THAT(training("warmup_ratio = 1.5\n"), Contains("[training] warmup_ratio = 1.5: must be in [0, 1]"));
  CHECK_THAT(training("warmup_steps = -1\n"), Contains("[training] warmup_steps = -1: must be >= 0"));
  CHECK_THAT(training("num_train_epochs = 0\n"), Contains("[training] num_train_epochs = 0: must be > 0"));
  CHECK_THAT(training("max_steps = -2\n"), Contains("[training] max_steps = -2: must be >= -1"));
  CHECK_THAT(training("max_steps = 0\n"), Contains("run.toml:7: [training] max_steps = 0: must be -1"));
  CHECK_THAT(training("logging_steps = 0\n"), Contains("[training] logging_steps = 0: must be >= 1"));
  CHECK_THAT(training("save_steps = 0\n"), Contains("[training] save_steps = 0: must be >= 1"));
  CHECK_THAT(training("save_total_limit = -1\n"), Contains("[training] save_total_limit = -1: must be >= 0"));
  CHECK_THAT(training("seed = -1\n"), Contains("[training] seed = -1: must be >= 0"));
  CHECK_THAT(training("threads = -1\n"), Contains("[training] threads = -1: must be in [0, 4096]"));
  CHECK_THAT(training("ddp_bucket_cap_mb = -1\n"),
             Contains("[training] ddp_bucket_cap_mb = -1: must be in [0, 65536]"));
  CHECK_THAT(training("ddp_timeout = 0\n"), Contains("[training] ddp_timeout = 0: must be >= 1"));
  CHECK_THAT(training("gemm_autotune = 33\n"), Contains("[training] gemm_autotune = 33: must be in [0, 32]"));
  CHECK_THAT(data("mlm_probability = 0\n"), Contains("run.toml:4: [data] mlm_probability = 0: must be in (0, 1]"));
  CHECK_THAT(data("mlm_probability = 1.5\n"), Contains("[data] mlm_probability = 1.5: must be in (0, 1]"));
  CHECK_THAT(data("max_seq_length = -1\n"), Contains("[data] max_seq_length = -1: must be >= 0"));
  CHECK_THAT(data("prefetch = -1\n"), Contains("[data] prefetch = -1: must be in [0, 1024]"));

  // choices
  CHECK_THAT(training("lr_scheduler_type = \"cosin\"\n"),
             Contains("run.toml:7: [training] lr_scheduler_type = \"cosin\": must be one of \"linear\", \"cosine\", "
                      "\"constant\", \"constant_with_warmup\"; did you mean \"cosine\"?"));
  CHECK_THAT(training("lr_scheduler_type = \"polynomial\"\n"),
             Contains("[training] lr_scheduler_type = \"polynomial\": must be one of"));
  CHECK_THAT(model("hidden_act = \"relu\"\n"),
             Contains("run.toml:2: [model] hidden_act = \"relu\": must be one of \"gelu\", \"gelu_new\""));
  CHECK_THAT(training("device = \"gpu\"\n"),
             Contains("run.toml:7: [training] device = \"gpu\": must be one of \"cpu\", \"cuda\""));
  CHECK_THAT(training("device = \"cdua\"\n"), Contains("did you mean \"cuda\"?"));
}

TEST_CASE("config: cross-field checks and required keys") {
  CHECK_THAT(
      config_error("[model]\nhidden_size = 768\nnum_attention_heads = 10\n" + kMinimal),
      Contains("run.toml:3: [model] num_attention_heads: hidden_size 768 is not divisible by num_attention_heads 10"));
  CHECK_THAT(config_error("[model]\nhidden_size = 100\n" + kMinimal),
             Contains("run.toml:2: [model] hidden_size: hidden_size 100 is not divisible by num_attention_heads 12"));
  CHECK_THAT(config_error("[model]\nvocab_size = 100\npad_token_id = 100\n" + kMinimal),
             Contains("run.toml:3: [model] pad_token_id = 100: must be < vocab_size 100"));
  CHECK_THAT(config_error(kMinimal + "[data]\n"), Contains("table [data] defined twice"));
  CHECK_THAT(
      config_error("[data]\ntokenizer = \"t\"\ntrain_data = \"s\"\nmask_replace_prob = 0.9\nrandom_replace_prob = 0.2\n"
                   "[training]\noutput_dir = \"o\"\n"),
      Contains("run.toml:5: [data] random_replace_prob: mask_replace_prob + random_replace_prob = 1.1 must be <= 1"));
  CHECK_THAT(config_error("[model]\nmax_position_embeddings = 128\n[data]\ntokenizer = \"t\"\ntrain_data = \"s\"\n"
                          "max_seq_length = 256\n[training]\noutput_dir = \"o\"\n"),
             Contains("run.toml:6: [data] max_seq_length = 256: must be <= [model] max_position_embeddings 128"));

  CHECK_THAT(config_error("[data]\ntokenizer = \"t\"\ntrain_data = \"s\"\n[training]\nseed = 1\n"),
             Contains("run.toml:4: [training] output_dir is required"));
  CHECK_THAT(config_error("[data]\ntokenizer = \"t\"\ntrain_data = \"s\"\n"),
             Contains("run.toml: [training] output_dir is required"));
  CHECK_THAT(config_error("\n[data]\ntrain_data = \"s\"\n[training]\noutput_dir = \"o\"\n"),
             Contains("run.toml:2: [data] tokenizer is required"));
  CHECK_THAT(config_error("[data]\ntokenizer = \"t\"\n[training]\noutput_dir = \"o\"\n"),
             Contains("run.toml:1: [data] train_data is required"));
  CHECK_THAT(config_error("[data]\ntokenizer = \"\"\ntrain_data = \"s\"\n[training]\noutput_dir = \"o\"\n"),
             Contains("run.toml:2: [data] tokenizer is required"));
  CHECK_THAT(config_error("[model]\nhidden_size = \"x\n"), Contains("run.toml:2: unterminated string"));
  CHECK_THAT(error_of([] { load_run_config("test_engine_io_tmp/absent.toml"); }),
             Contains("test_engine_io_tmp/absent.toml") && Contains("cannot open"));
}

TEST_CASE("config: load_run_config reads a file, and the repository's presets are valid") {
  const std::string dir = temp_dir("config_file");
  write_bytes(dir + "/run.toml", kMinimal + "seed = 7\n");
  const RunConfig c = load_run_config(dir + "/run.toml");
  CHECK(c.training.seed == 7);
  CHECK(c.path == dir + "/run.toml");
  write_bytes(dir + "/bad.toml", kMinimal + "seed = 'x'\n");
  CHECK_THAT(error_of([&] { load_run_config(dir + "/bad.toml"); }), Contains(dir + "/bad.toml:7: [training] seed"));

  const std::filesystem::path presets = std::filesystem::path(BERT_SOURCE_DIR) / "configs";
  if (std::filesystem::is_directory(presets)) {
    for (const auto& entry : std::filesystem::directory_iterator(presets)) {
      if (entry.path().extension() != ".toml") continue;
      INFO(entry.path().string());
      CHECK(error_of([&] { load_run_config(entry.path().string()); }).empty());
    }
  }
}

// ---- config.json ----------------------------------------------------------------------------------

TEST_CASE("config.json: BertConfig round trip through HF's format") {
  BertConfig m;
  m.vocab_size = 30522;
  m.hidden_size = 256;
  m.num_hidden_layers = 4;
  m.num_attention_heads = 8;
  m.intermediate_size = 1024;
  m.hidden_act = "gelu_new";
  m.hidden_dropout_prob = 0.05;
  m.attention_probs_dropout_prob = 0.0;
  m.max_position_embeddings = 128;
  m.type_vocab_size = 1;
  m.initializer_range = 0.01;
  m.layer_norm_eps = 1e-5;
  m.pad_token_id = 3;

  const Json j = m.to_hf_json();
  CHECK(j.find("architectures")->as_array().at(0).as_string() == "BertForPreTraining");
  CHECK(j.find("model_type")->as_string() == "bert");
  CHECK(j.find("position_embedding_type")->as_string() == "absolute");
  CHECK(j.find("use_cache")->as_bool());
  CHECK(j.find("torch_dtype")->as_string() == "float32");
  CHECK(j.find("transformers_version")->as_string() == "4.46.3");
  CHECK(j.find("classifier_dropout")->is_null());
  std::vector<std::string> keys;
  for (const auto& [k, v] : j.as_object()) keys.push_back(k);
  CHECK(std::is_sorted(keys.begin(), keys.end()));  // as transformers writes them
  CHECK(keys.size() == 20);

  const std::string text = j.dump(2);
  const BertConfig back = BertConfig::from_hf_json(Json::parse(text, "config.json"), "config.json");
  CHECK(back.vocab_size == m.vocab_size);
  CHECK(back.hidden_size == m.hidden_size);
  CHECK(back.num_hidden_layers == m.num_hidden_layers);
  CHECK(back.num_attention_heads == m.num_attention_heads);
  CHECK(back.intermediate_size == m.intermediate_size);
  CHECK(back.hidden_act == m.hidden_act);
  CHECK(back.hidden_dropout_prob == m.hidden_dropout_prob);
  CHECK(back.attention_probs_dropout_prob == m.attention_probs_dropout_prob);
  CHECK(back.max_position_embeddings == m.max_position_embeddings);
  CHECK(back.type_vocab_size == m.type_vocab_size);
  CHECK(back.initializer_range == m.initializer_range);
  CHECK(back.layer_norm_eps == m.layer_norm_eps);
  CHECK(back.pad_token_id == m.pad_token_id);

  const std::string dir = temp_dir("config_json");
  write_file_atomic(dir + "/config.json", text);
  CHECK(BertConfig::load_hf_json(dir + "/config.json").hidden_size == 256);

  BertConfig unresolved;
  CHECK_THAT(error_of([&] { (void)unresolved.to_hf_json(); }), Contains("vocab_size is 0"));
}

TEST_CASE("config.json: tolerant of HF's extra keys, strict about what we need") {
  // bert-base-uncased's config.json, as on the Hub.
  const std::string hub = R"({
    "architectures": ["BertForMaskedLM"], "attention_probs_dropout_prob": 0.1, "gradient_checkpointing": false,
    "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "hidden_size": 768, "initializer_range": 0.02,
    "intermediate_size": 3072, "layer_norm_eps": 1e-12, "max_position_embeddings": 512, "model_type": "bert",
    "num_attention_heads": 12, "num_hidden_layers": 12, "pad_token_id": 0, "position_embedding_type": "absolute",
    "transformers_version": "4.6.0.dev0", "type_vocab_size": 2, "use_cache": true, "vocab_size": 30522,
    "classifier_dropout": null, "id2label": {"0": "LABEL_0"}})";
  const BertConfig b = BertConfig::from_hf_json(Json::parse(hub, "hub.json"), "hub.json");
  CHECK(b.vocab_size == 30522);
  CHECK(b.hidden_size == 768);

  // Only the size fields are required; the rest take HF's defaults.
  const BertConfig minimal = BertConfig::from_hf_json(
      Json::parse(R"({"vocab_size": 100, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                      "intermediate_size": 128, "max_position_embeddings": 64, "type_vocab_size": 2})"),
      "m.json");
  CHECK(minimal.hidden_act == "gelu");
  CHECK(minimal.layer_norm_eps == 1e-12);
  CHECK(minimal.hidden_dropout_prob == 0.1);

  const auto err = [](const std::string& edit_key, const std::string& edit_value) {
    Json j = BertConfig{.vocab_size = 1000}.to_hf_json();
    if (edit_value.empty()) {
      Json copy = Json::object();
      for (const auto& [k, v] : j.as_object())
        if (k != edit_key) copy.set(k, v);
      j = copy;
    } else {
      j.set(edit_key, Json::parse(edit_value));
    }
    return error_of([&] { BertConfig::from_hf_json(j, "ckpt/config.json"); });
  };
  CHECK(err("use_cache", "false").empty());
  // A key left out takes HF's default, as from_pretrained does.
  CHECK(err("hidden_size", "").empty());
  CHECK(err("vocab_size", "").empty());
  const BertConfig bare = BertConfig::from_hf_json(Json::parse("{}"), "bare.json");
  CHECK(bare.vocab_size == 30522);
  CHECK(bare.hidden_size == 768);
  CHECK(bare.num_hidden_layers == 12);
  CHECK(bare.max_position_embeddings == 512);
  CHECK(bare.type_vocab_size == 2);
  CHECK(bare.pad_token_id == 0);
  // pad_token_id null: no padding row (written back as null).
  const BertConfig no_pad = BertConfig::from_hf_json(Json::parse(R"({"pad_token_id": null})"), "p.json");
  CHECK(no_pad.pad_token_id == -1);
  CHECK(no_pad.to_hf_json().find("pad_token_id")->is_null());
  CHECK(BertConfig::from_hf_json(no_pad.to_hf_json(), "p.json").pad_token_id == -1);
  // The other names transformers gives the two GELUs.
  CHECK(err("hidden_act", "\"gelu_pytorch_tanh\"").empty());
  CHECK(err("hidden_act", "\"gelu_python\"").empty());
  // Fields that change the maths in ways the engine does not implement are refused by name.
  CHECK(err("is_decoder", "false").empty());
  CHECK_THAT(err("is_decoder", "true"),
             Contains("ckpt/config.json: is_decoder = true: only encoder models are supported"));
  CHECK(err("add_cross_attention", "false").empty());
  CHECK_THAT(err("add_cross_attention", "true"),
             Contains("ckpt/config.json: add_cross_attention = true: cross-attention layers are not supported"));
  CHECK(err("pruned_heads", "{}").empty());
  CHECK_THAT(err("pruned_heads", R"({"0": [1]})"),
             Contains("ckpt/config.json: pruned_heads = {\"0\": [1]}: models with pruned attention heads"));
  CHECK_THAT(err("hidden_size", "\"768\""), Contains("ckpt/config.json: hidden_size = \"768\": expected an integer"));
  CHECK_THAT(err("hidden_size", "768.5"), Contains("hidden_size = 768.5: expected an integer, got a float"));
  CHECK_THAT(err("num_attention_heads", "5"),
             Contains("ckpt/config.json: num_attention_heads: hidden_size 768 is not divisible"));
  CHECK_THAT(err("hidden_act", "\"relu\""), Contains("ckpt/config.json: hidden_act = \"relu\": must be one of"));
  CHECK_THAT(err("hidden_dropout_prob", "1.5"), Contains("hidden_dropout_prob = 1.5: must be in [0, 1)"));
  CHECK_THAT(err("vocab_size", "0"), Contains("ckpt/config.json: vocab_size = 0: must be >= 1"));
  CHECK_THAT(err("model_type", "\"roberta\""),
             Contains("ckpt/config.json: model_type = \"roberta\": expected \"bert\""));
  CHECK_THAT(err("position_embedding_type", "\"relative_key\""), Contains("only \"absolute\" is supported"));
  CHECK_THAT(err("layer_norm_eps", "null"), Contains("layer_norm_eps = null: expected a number, got null"));
  CHECK(err("tie_word_embeddings", "true").empty());
  CHECK_THAT(err("tie_word_embeddings", "false"),
             Contains("ckpt/config.json: tie_word_embeddings = false: only tied output embeddings are supported"));
  CHECK_THAT(error_of([] { BertConfig::from_hf_json(Json::parse("[1]"), "x.json"); }),
             Contains("x.json: expected a JSON object"));
  CHECK_THAT(error_of([] { BertConfig::load_hf_json("test_engine_io_tmp/absent.json"); }), Contains("absent.json"));
}

// ---- the Python side ------------------------------------------------------------------------------

namespace {

std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

// Checks one file written by Python against its sidecar "<file>.json":
//   {"metadata": {...}, "tensors": {name: {"dtype": "F16", "shape": [...], "f32_bits": [...]}
//                                         or {"dtype": "I32", ..., "int_values": [...]}}}
void check_python_file(const std::string& path) {
  INFO(path);
  const Json expected = Json::parse(read_file(path + ".json"), path + ".json");
  const SafetensorsFile f(path);
  const Json& want_meta = *expected.find("metadata");
  CHECK(f.metadata().size() == want_meta.as_object().size());
  for (const auto& [k, v] : want_meta.as_object()) {
    REQUIRE(f.metadata_value(k));
    CHECK(*f.metadata_value(k) == v.as_string());
  }
  const Json& tensors = *expected.find("tensors");
  CHECK(f.tensors().size() == tensors.as_object().size());
  for (const auto& [name, want] : tensors.as_object()) {
    INFO(name);
    const TensorInfo& t = f.info(name);
    CHECK(dtype_name(t.dtype) == want.find("dtype")->as_string());
    std::vector<int64_t> shape;
    for (const Json& d : want.find("shape")->as_array()) shape.push_back(d.as_int());
    CHECK(t.shape == shape);
    if (const Json* bits = want.find("f32_bits")) {
      const std::vector<float> got = f.read_f32(name, shape);
      REQUIRE(got.size() == bits->as_array().size());
      for (size_t i = 0; i < got.size(); ++i) {
        const auto want_bits = static_cast<uint32_t>(bits->as_array()[i].as_int());
        const float want_value = std::bit_cast<float>(want_bits);
        if (std::isnan(want_value)) {
          CHECK(std::isnan(got[i]));
        } else if (bits_of(got[i]) != want_bits) {
          FAIL_CHECK("element " << i << ": got " << got[i] << " (bits " << bits_of(got[i]) << "), want " << want_value
                                << " (bits " << want_bits << ")");
        }
      }
    } else {
      const auto& values = want.find("int_values")->as_array();
      const std::span<const std::byte> raw = f.raw(t);
      const size_t width = dtype_size_bytes(t.dtype);
      REQUIRE(raw.size() == values.size() * width);
      for (size_t i = 0; i < values.size(); ++i) {
        int64_t v = 0;
        if (width == 4) {
          int32_t v32;
          std::memcpy(&v32, raw.data() + 4 * i, 4);
          v = v32;
        } else {
          std::memcpy(&v, raw.data() + 8 * i, 8);
        }
        CHECK(v == values[i].as_int());
      }
    }
  }
}

// A sweep of fp32 bit patterns over every exponent, plus the special cases of 16-bit rounding.
std::vector<float> tricky_values() {
  std::vector<float> v = {0.0f,
                          -0.0f,
                          1.0f,
                          -1.0f,
                          0.1f,
                          1.0f / 3,
                          65504.0f,
                          65519.99f,
                          65520.0f,
                          1e10f,
                          -1e10f,
                          INFINITY,
                          -INFINITY,
                          NAN,
                          1e-8f,
                          6e-8f,
                          3e-8f,
                          5.960464477539063e-08f,
                          2.9802322387695312e-08f,
                          1.0009765625f,
                          1.00048828125f,
                          3.3895313892515355e+38f,
                          1e-40f};
  uint32_t x = 12345;
  for (int i = 0; i < 2000; ++i) {
    x = x * 1664525u + 1013904223u;
    v.push_back(std::bit_cast<float>(x));
  }
  return v;
}

}  // namespace

TEST_CASE("safetensors: files written by Python read back, ours for Python", "[.python-roundtrip]") {
  const std::string in = env("BERT_SAFETENSORS_IN"), in_bf16 = env("BERT_SAFETENSORS_IN_BF16");
  const std::string out = env("BERT_SAFETENSORS_OUT"), out_bf16 = env("BERT_SAFETENSORS_OUT_BF16");
  REQUIRE(!in.empty());
  REQUIRE(!out.empty());
  check_python_file(in);
  if (!in_bf16.empty()) check_python_file(in_bf16);

  // Ours: F32 and F16 in one file (numpy reads both); BF16 in another (numpy has no bfloat16).
  std::vector<float> matrix(12);
  for (size_t i = 0; i < matrix.size(); ++i) matrix[i] = static_cast<float>(i) * 0.5f - 2.75f;
  const std::vector<float> scalar = {3.25f};
  const std::vector<float> empty;
  const std::vector<float> tricky = tricky_values();
  std::vector<uint16_t> tricky_f16, tricky_bf16;
  for (const float f : tricky) {
    tricky_f16.push_back(f32_to_f16(f));
    tricky_bf16.push_back(f32_to_bf16(f));
  }
  SafetensorsWriter w;
  w.add_f32("bert.encoder.layer.0.attention.self.query.weight", {3, 4}, matrix);
  w.add_f32("scalar", {}, scalar);
  w.add_f32("empty", {0, 5}, empty);
  w.add_f32("tricky.f32", {static_cast<int64_t>(tricky.size())}, tricky);
  w.add_f16("tricky.f16", {static_cast<int64_t>(tricky.size())}, tricky_f16);
  w.set_metadata("producer", "bertforge");
  w.write(out);
  if (!out_bf16.empty()) {
    SafetensorsWriter wb;
    wb.add_f32("tricky.f32", {static_cast<int64_t>(tricky.size())}, tricky);
    wb.add_bf16("tricky.bf16", {static_cast<int64_t>(tricky.size())}, tricky_bf16);
    wb.add_data_hash();
    wb.write(out_bf16);
  }

  // config.json: HF's (if given) through our reader and writer; else our own.
  const std::string config_in = env("BERT_CONFIG_IN"), config_out = env("BERT_CONFIG_OUT");
  if (!config_out.empty()) {
    BertConfig m{.vocab_size = 1234, .hidden_size = 128, .num_hidden_layers = 2, .num_attention_heads = 4};
    if (!config_in.empty()) m = BertConfig::load_hf_json(config_in);
    write_file_atomic(config_out, m.to_hf_json().dump(2) + "\n");
  }
}

// ---- TOML against Python's tomllib ------------------------------------------------------------------
// tests/conformance/test_toml_tomllib.py writes random documents as cases (tests/oracle_cases.h) and
// compares tomllib's reading of each with this one's, one line a document: "ok <JSON>" ({"table": {"key": value}}, the
// root table as "", each value tagged: ["s", text], ["i", "digits"], ["f", "%.17g" or inf/-inf/nan], ["b", bool], ["a",
// [...]]), or "error <message>".

namespace {

Json tagged(const TomlValue& v) {
  Json out = Json::array();
  switch (v.kind) {
    case TomlValue::Kind::kString:
      out.push(Json("s"));
      out.push(Json(v.string));
      break;
    case TomlValue::Kind::kInteger:
      out.push(Json("i"));
      out.push(Json(std::to_string(v.integer)));
      break;
    case TomlValue::Kind::kFloat: {
      char text[64];
      if (std::isnan(v.floating))
        std::snprintf(text, sizeof(text), "nan");
      else
        std::snprintf(text, sizeof(text), "%.17g", v.floating);  // inf / -inf as such
      out.push(Json("f"));
      out.push(Json(std::string(text)));
      break;
    }
    case TomlValue::Kind::kBool:
      out.push(Json("b"));
      out.push(Json(v.boolean));
      break;
    case TomlValue::Kind::kArray: {
      Json items = Json::array();
      for (const TomlValue& item : v.array) items.push(tagged(item));
      out.push(Json("a"));
      out.push(std::move(items));
      break;
    }
  }
  return out;
}

}  // namespace

TEST_CASE("toml: documents read as Python's tomllib reads them", "[.toml-oracle]") {
  CHECK(testing::answer_oracle_cases("BERT_TOML_CASES", "BERT_TOML_OUT", [](std::string_view text) {
          const TomlDocument doc = parse_toml(text, "run.toml");
          Json tables = Json::object();
          for (const TomlTable& table : doc.tables) {
            Json entries = Json::object();
            for (const TomlEntry& entry : table.entries) entries.set(entry.key, tagged(entry.value));
            tables.set(table.name, std::move(entries));
          }
          return "ok " + tables.dump();
        }) > 0);
}

// ---- safetensors against the `safetensors` package --------------------------------------------------
// tests/conformance/test_safetensors_oracle.py writes files; each case (tests/oracle_cases.h) is a path,
// opened here (header, offsets, metadata; the data hash when recorded) and every tensor read as raw
// bytes: "ok <tensor count>" or "error <message>".
TEST_CASE("safetensors: files opened as the safetensors package opens them", "[.safetensors-oracle]") {
  CHECK(testing::answer_oracle_cases("BERT_SAFETENSORS_CASES", "BERT_SAFETENSORS_RESULTS", [](std::string_view path) {
          const SafetensorsFile file{std::string(path)};
          (void)file.verify_data_hash();
          for (const TensorInfo& t : file.tensors()) (void)file.raw(t);
          return "ok " + std::to_string(file.tensors().size());
        }) > 0);
}
