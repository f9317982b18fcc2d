// cub::DeviceRadixSort::SortPairs for the kernel emulation (tests/kernel_emu/cuda_emu.h), in place of
// CUB's: the same contract, done on the host when the stream reaches it. A call without temporary
// storage reports the bytes needed; a call with storage checks it is large enough (cudaErrorInvalidValue
// otherwise, as CUB), poisons it (CUB's use of it is opaque), and queues a stable sort of the pairs by
// bits [begin_bit, end_bit) of the keys on the stream. Device pointers are checked against the live
// allocations.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <vector>

#include "tests/emulated/emulated_runtime.h"

namespace cub {

struct DeviceRadixSort {
  template <class Key, class Value, class NumItems>
  static cudaError_t SortPairs(void* temp_storage, size_t& temp_storage_bytes, const Key* keys_in, Key* keys_out,
                               const Value* values_in, Value* values_out, NumItems num_items, int begin_bit = 0,
                               int end_bit = sizeof(Key) * 8, cudaStream_t stream = 0) {
    static_assert(std::is_unsigned_v<Key>, "unsigned keys only");
    // Double buffers of keys and values plus a histogram, as CUB's onesweep roughly needs.
    const size_t needed = static_cast<size_t>(num_items) * (sizeof(Key) + sizeof(Value)) + 4096;
    if (temp_storage == nullptr) {
      temp_storage_bytes = needed;
      return cudaSuccess;
    }
    if (temp_storage_bytes < needed || begin_bit < 0 || end_bit > static_cast<int>(sizeof(Key) * 8) ||
        begin_bit >= end_bit || num_items < 0)
      return cudaErrorInvalidValue;
    namespace d = bert::emulated::detail;
    const int64_t n = static_cast<int64_t>(num_items);
    d::device_arg("cub::DeviceRadixSort::SortPairs", "temp_storage", static_cast<unsigned char*>(temp_storage),
                  static_cast<int64_t>(needed));
    d::device_arg("cub::DeviceRadixSort::SortPairs", "keys_in", keys_in, n);
    d::device_arg("cub::DeviceRadixSort::SortPairs", "keys_out", keys_out, n);
    d::device_arg("cub::DeviceRadixSort::SortPairs", "values_in", values_in, n);
    d::device_arg("cub::DeviceRadixSort::SortPairs", "values_out", values_out, n);
    auto overlap = [n](const void* a, const void* b, size_t element) {
      const auto x = reinterpret_cast<uintptr_t>(a), y = reinterpret_cast<uintptr_t>(b);
      const auto bytes = static_cast<uintptr_t>(n) * element;
      return x < y + bytes && y < x + bytes;
    };
    if (overlap(keys_in, keys_out, sizeof(Key)) || overlap(values_in, values_out, sizeof(Value)))
      d::device_fault("cub::DeviceRadixSort::SortPairs: input and output ranges overlap (CUB requires disjoint ones)");
    d::enqueue(stream, "cub::DeviceRadixSort::SortPairs", [=] {
      std::memset(temp_storage, 0xFF, needed);
      const int bits = end_bit - begin_bit;
      const Key mask = bits >= static_cast<int>(sizeof(Key) * 8) ? static_cast<Key>(~Key{0})
                                                                 : static_cast<Key>((Key{1} << bits) - 1);
      auto digit = [&](int64_t i) { return static_cast<Key>((keys_in[i] >> begin_bit) & mask); };
      std::vector<int64_t> order(static_cast<size_t>(n));
      std::iota(order.begin(), order.end(), int64_t{0});
      std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return digit(a) < digit(b); });
      std::vector<Key> keys(static_cast<size_t>(n));
      std::vector<Value> values(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) {
        keys[static_cast<size_t>(i)] = keys_in[order[static_cast<size_t>(i)]];
        values[static_cast<size_t>(i)] = values_in[order[static_cast<size_t>(i)]];
      }
      std::copy(keys.begin(), keys.end(), keys_out);
      std::copy(values.begin(), values.end(), values_out);
    });
    return cudaSuccess;
  }
};

}  // namespace cub
