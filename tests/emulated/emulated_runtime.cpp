// A host-only emulation of the CUDA runtime calls the CUDA backend makes, linked in place of libcudart
// so the CUDA code's host logic runs in every CI job, none of which has a GPU. What executes on the
// emulated device is one of two things, linked beside this file:
//   - emulated_ops.cpp: the bert::cuda ops (kernels/cuda/ops_cuda.h) as kernels/cpu fp32 ops with
//     bf16 rounding where the real kernels write bf16 (test_cuda_model_emulated,
//     test_cuda_trainer_emulated: engine/bert_cuda.cpp, the trainer and bert_infer's CUDA paths);
//   - tests/kernel_emu/: the REAL kernels of kernels/cuda compiled for the host and run thread by
//     thread (test_cuda_kernels_emulated: tests/gpu/test_cuda_<op>.cpp unmodified).
//
// What the runtime itself checks:
//   - memory: every device pointer an op, copy or memset is given must lie, with the extent its shape
//     implies, inside one live cudaMalloc allocation. A violation is a device fault (below).
//     cudaMalloc and cudaMallocHost memory comes back poisoned (every byte 0xFF: NaN in bf16 and
//     fp32, -1 as int32), so a value read before anything wrote it shows up in the results.
//     cudaMalloc memory is 256-byte aligned, as on the device, between two 256-byte guard bands: a
//     kernel (which no extent check sees) writing past either end of its allocation is a device fault
//     when the allocation is freed or the device synchronised; under AddressSanitizer the bands are
//     poisoned instead, so the access itself is reported, reads included.
//   - event and stream ordering, uploads through pinned staging: execution is deferred. Every stream
//     operation (op or kernel, cudaMemcpyAsync, cudaMemsetAsync) is queued on its stream and runs only
//     when the host waits for it: cudaStreamSynchronize, cudaEventSynchronize (up to the point
//     recorded), cudaDeviceSynchronize, and cudaFree / cudaFreeHost (implicitly synchronising). An
//     async copy reads its host memory when it executes, not when it is issued, so a staging buffer
//     rewritten before its copy ran, or a result read before the wait, gives wrong numbers. cudaMemcpy
//     and cudaMemset run at once on the legacy stream WITHOUT waiting for other streams' queues (the
//     streams a Context makes are non-blocking: they do not order against the legacy stream).
//     Stricter than CUDA in one way: an async copy from pageable memory is deferred too (CUDA stages
//     it before returning); emulated_cuda.h's counters tell pinned from pageable copies.
//   - host/device handshakes: emulated_cuda.h counts the host's waits, copies and the work still
//     queued, and injects launch failures.
//   - polls: cudaEventQuery says cudaErrorNotReady once for work still queued (and leaves it as the
//     last error, see there), then runs it.
//   - hangs: detail::enqueue_stall queues work that never finishes (an emulated hung NCCL sum):
//     cudaEventQuery behind it says cudaErrorNotReady for ever, and a blocking wait behind it is a
//     device fault instead of a hung test.
//   - cross-stream waits: cudaStreamWaitEvent queues a wait that runs the recorded stream up to the
//     event when the waiting stream reaches it (a wait captures only work issued before it, so two
//     streams cannot wait for each other: an op counts as executed once it starts).
//   - timing events (cudaEventCreate): a record queues a stamp of the host's clock, and
//     cudaEventElapsedTime is the host time between two stamps, i.e. when the deferred work ran.
// What it does NOT model: concurrency between streams beyond queue order, device memory limits
// beyond BERT_EMULATED_DEVICE_MEMORY, performance.
//
// A device fault (a pointer outside every allocation, an out-of-range index, an op that throws while
// it executes, a kernel's __trap) prints "emulated CUDA device fault: ..." and aborts the process, as
// a trap ends a CUDA context: no test can catch it and pass. Single-threaded host use only, like a
// Context.
#include "tests/emulated/emulated_runtime.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "kernels/cuda/ops_cuda.h"
#include "kernels/device.h"
#include "tests/emulated/emulated_cuda.h"

namespace {

// What cudaMalloc'd and cudaMallocHost'd memory holds before anything writes it.
constexpr int kPoison = 0xFF;

// The emulated device, an H200 by its numbers: what cuda_device_info, cudaDeviceGetAttribute and
// Context report alike.
constexpr int kMultiprocessors = 132, kSmMajor = 9, kSmMinor = 0, kL2Bytes = 50 << 20;

// The guard bands around each cudaMalloc allocation (cudaMalloc's alignment, so one band before keeps
// the allocation aligned) and what they hold.
constexpr size_t kGuardBytes = 256;
constexpr unsigned char kGuardByte = 0xA5;
#if defined(__SANITIZE_ADDRESS__)
#define BERT_EMULATED_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define BERT_EMULATED_ASAN 1
#endif
#endif
#ifdef BERT_EMULATED_ASAN
constexpr bool kAddressSanitizer = true;
extern "C" void __asan_poison_memory_region(void const volatile* address, size_t size);
extern "C" void __asan_unpoison_memory_region(void const volatile* address, size_t size);
void poison_guards(unsigned char* p, size_t bytes) {
  __asan_poison_memory_region(p - kGuardBytes, kGuardBytes);
  __asan_poison_memory_region(p + bytes, kGuardBytes);
}
void unpoison_guards(unsigned char* p, size_t bytes) {
  __asan_unpoison_memory_region(p - kGuardBytes, kGuardBytes);
  __asan_unpoison_memory_region(p + bytes, kGuardBytes);
}
#else
constexpr bool kAddressSanitizer = false;
void poison_guards(unsigned char*, size_t) {}
void unpoison_guards(unsigned char*, size_t) {}
#endif

struct QueuedOp {
  const char* name;
  std::function<void()> run;
  bool stall = false;  // detail::enqueue_stall: never finishes
};

// Thrown (not a std::exception) when running a stream reaches a stall; carries its name.
struct Stalled {
  const char* name;
};

struct Stream {
  std::deque<QueuedOp> queue;
  uint64_t issued = 0, executed = 0;
};

struct Event {
  Stream* stream = nullptr;  // where it was last recorded; nullptr: never recorded (complete)
  uint64_t seq = 0;          // complete once stream->executed >= seq
  bool timing = false;       // cudaEventCreate (no cudaEventDisableTiming): its record is stamped
  // A timing event's last record: the host clock when the stream reached it (shared with the queued
  // stamp, which may run after the event is destroyed); empty until then.
  std::shared_ptr<std::optional<std::chrono::steady_clock::time_point>> stamp;
};

struct State {
  std::map<uintptr_t, size_t> device;            // live cudaMalloc allocations: start -> bytes
  std::map<uintptr_t, size_t> pinned;            // live cudaMallocHost allocations
  Stream legacy;                                 // the legacy default stream (handle 0)
  std::set<Stream*> live_streams;                // created and not destroyed
  std::vector<std::unique_ptr<Stream>> streams;  // kept until exit: events may still name them
  bool deferred = true;
  bert::emulated::Counters counters;
  int current_device = 0;  // cuda_select_device (cudaSetDevice); what cudaGetDevice returns
  std::string fail_op;     // fail_launch()
  int fail_skip = 0;
  cudaError_t last_error = cudaSuccess;  // a rejected launch or a "not ready", until cudaGetLastError
};

State& state() {
  static State s;
  return s;
}

using bert::emulated::detail::device_arg;
using bert::emulated::detail::device_fault;
using bert::emulated::detail::hex;

// [p, p + bytes) lies inside one allocation of `allocations`.
bool inside(const std::map<uintptr_t, size_t>& allocations, const void* p, size_t bytes) {
  const auto address = reinterpret_cast<uintptr_t>(p);
  auto it = allocations.upper_bound(address);
  if (it == allocations.begin()) return false;
  --it;
  const size_t offset = address - it->first;
  return offset <= it->second && bytes <= it->second - offset;
}
bool is_device(const void* p) { return inside(state().device, p, 0) && p != nullptr; }

// The guard bands of the allocation [p, p + bytes) as cudaMalloc left them; `when` names the check.
// (Under ASan the bands are poisoned and an access there has already been reported.)
void check_guards(const void* allocation, size_t bytes, const char* when) {
  if (kAddressSanitizer) return;
  const auto* p = static_cast<const unsigned char*>(allocation);
  for (size_t i = 0; i < kGuardBytes; ++i) {
    if (p[bytes + i] != kGuardByte)
      device_fault("a write past the end of the " + std::to_string(bytes) + "-byte cudaMalloc allocation at " + hex(p) +
                   " (its guard band changed " + std::to_string(i) + " bytes after the end; found at " + when + ")");
    if (p[-1 - static_cast<std::ptrdiff_t>(i)] != kGuardByte)
      device_fault("a write before the start of the " + std::to_string(bytes) + "-byte cudaMalloc allocation at " +
                   hex(p) + " (its guard band changed " + std::to_string(i + 1) + " bytes before the start; found at " +
                   when + ")");
  }
}
void check_all_guards(const char* when) {
  for (const auto& [start, bytes] : state().device) check_guards(reinterpret_cast<const void*>(start), bytes, when);
}
bool is_pinned(const void* p, size_t bytes) { return inside(state().pinned, p, bytes); }

Stream& stream_of(cudaStream_t handle) {
  // 0, cudaStreamLegacy and cudaStreamPerThread all mean the default stream here.
  if (reinterpret_cast<uintptr_t>(handle) <= 2) return state().legacy;
  auto* stream = reinterpret_cast<Stream*>(handle);
  if (state().live_streams.count(stream) == 0) device_fault("use of an unknown or destroyed stream " + hex(handle));
  return *stream;
}

// Runs the stream's next op. A stall, or an op that waits for one on another stream, throws Stalled
// and stays queued.
void run_one(Stream& stream) {
  if (stream.queue.front().stall) throw Stalled{stream.queue.front().name};
  QueuedOp op = std::move(stream.queue.front());
  stream.queue.pop_front();
  ++stream.executed;
  try {
    op.run();
  } catch (const Stalled&) {
    --stream.executed;
    stream.queue.push_front(std::move(op));
    throw;
  } catch (const std::exception& e) {
    device_fault(std::string(op.name) + " failed while executing: " + e.what());
  }
}
// Runs the stream up to `seq`; Stalled if that needs a stall to finish.
void advance(Stream& stream, uint64_t seq) {
  while (stream.executed < seq) run_one(stream);
}
// The host waiting for the stream up to `seq`: behind a stall it would wait for ever.
void wait_for(Stream& stream, uint64_t seq) {
  try {
    advance(stream, seq);
  } catch (const Stalled& stall) {
    device_fault(std::string("the host waits for work queued behind ") + stall.name +
                 ", which never finishes: on a GPU the wait would never return");
  }
}
void flush(Stream& stream) { wait_for(stream, stream.issued); }
void flush_all() {
  State& s = state();
  flush(s.legacy);
  for (Stream* stream : s.live_streams) flush(*stream);
}

void enqueue(Stream& stream, const char* name, std::function<void()> run) {
  ++stream.issued;
  stream.queue.push_back(QueuedOp{name, std::move(run)});
  if (!state().deferred) flush(stream);
}

}  // namespace

namespace bert::emulated::detail {

void device_fault(const std::string& what) {
  std::fprintf(stderr, "emulated CUDA device fault: %s\n", what.c_str());
  std::fflush(stderr);
  std::abort();
}

std::string hex(const void* pointer) {
  char text[32];
  std::snprintf(text, sizeof(text), "%p", pointer);
  return text;
}

bool inside_device_allocation(const void* p, size_t bytes) { return inside(state().device, p, bytes); }
bool inside_pinned_allocation(const void* p, size_t bytes) { return inside(state().pinned, p, bytes); }

void enqueue(cudaStream_t stream, const char* name, std::function<void()> run) {
  enqueue(stream_of(stream), name, std::move(run));
}

bool injected_failure(const char* op) {
  State& s = state();
  if (s.fail_op != op) return false;
  if (s.fail_skip-- > 0) return false;
  s.fail_op.clear();
  return true;
}

void run_queued(cudaStream_t stream) { flush(stream_of(stream)); }

void enqueue_stall(cudaStream_t stream, const char* name) {
  Stream& target = stream_of(stream);
  ++target.issued;
  target.queue.push_back(QueuedOp{name, [] {}, true});
}

void release_stalls() {
  State& s = state();
  for (const auto& stream : s.streams)
    for (QueuedOp& op : stream->queue) op.stall = false;
  for (QueuedOp& op : s.legacy.queue) op.stall = false;
}

void count_op() { ++state().counters.ops; }

void set_last_error(cudaError_t error) { state().last_error = error; }

}  // namespace bert::emulated::detail

namespace {
using bert::emulated::detail::injected_failure;
}  // namespace

// ---- the CUDA runtime subset -----------------------------------------------------------------------

extern "C" {

cudaError_t cudaMalloc(void** pointer, size_t size) {
  const size_t rounded = (std::max<size_t>(size, 1) + kGuardBytes - 1) / kGuardBytes * kGuardBytes;
  auto* base = static_cast<unsigned char*>(std::aligned_alloc(kGuardBytes, kGuardBytes + rounded + kGuardBytes));
  if (base == nullptr) return cudaErrorMemoryAllocation;
  unsigned char* p = base + kGuardBytes;
  std::memset(base, kGuardByte, kGuardBytes);
  std::memset(p, kPoison, size);
  std::memset(p + size, kGuardByte, kGuardBytes);
  poison_guards(p, size);
  state().device[reinterpret_cast<uintptr_t>(p)] = size;
  ++state().counters.device_allocations;
  *pointer = p;
  return cudaSuccess;
}

cudaError_t cudaFree(void* pointer) {
  flush_all();  // cudaFree synchronises the device
  if (pointer == nullptr) return cudaSuccess;
  const auto it = state().device.find(reinterpret_cast<uintptr_t>(pointer));
  if (it == state().device.end()) device_fault("cudaFree of " + hex(pointer) + ", which cudaMalloc did not return");
  check_guards(pointer, it->second, "cudaFree");
  std::memset(pointer, kPoison, it->second);
  unpoison_guards(static_cast<unsigned char*>(pointer), it->second);
  state().device.erase(it);
  std::free(static_cast<unsigned char*>(pointer) - kGuardBytes);
  return cudaSuccess;
}

cudaError_t cudaMallocHost(void** pointer, size_t size) {
  void* p = std::malloc(std::max<size_t>(size, 1));
  if (p == nullptr) return cudaErrorMemoryAllocation;
  std::memset(p, kPoison, size);
  state().pinned[reinterpret_cast<uintptr_t>(p)] = size;
  *pointer = p;
  return cudaSuccess;
}

cudaError_t cudaFreeHost(void* pointer) {
  flush_all();  // as cudaFree
  if (pointer == nullptr) return cudaSuccess;
  const auto it = state().pinned.find(reinterpret_cast<uintptr_t>(pointer));
  if (it == state().pinned.end())
    device_fault("cudaFreeHost of " + hex(pointer) + ", which cudaMallocHost did not return");
  std::memset(pointer, kPoison, it->second);
  state().pinned.erase(it);
  std::free(pointer);
  return cudaSuccess;
}

// The emulated device's memory: BERT_EMULATED_DEVICE_MEMORY bytes (default an H200's 141 GiB
// less what the driver keeps), of which the live cudaMalloc allocations are in use. Lets a test
// make a model "not fit" without a device.
static size_t emulated_device_memory() {
  const char* text = std::getenv("BERT_EMULATED_DEVICE_MEMORY");
  if (text == nullptr || *text == '\0') return size_t{150} << 30;
  char* end = nullptr;
  const unsigned long long bytes = std::strtoull(text, &end, 10);
  if (end == text || *end != '\0') {
    std::fprintf(stderr, "BERT_EMULATED_DEVICE_MEMORY=%s is not a byte count\n", text);
    std::abort();
  }
  return static_cast<size_t>(bytes);
}

cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
  size_t used = 0;
  for (const auto& [start, bytes] : state().device) used += bytes;
  const size_t total = emulated_device_memory();
  *total_bytes = total;
  *free_bytes = used < total ? total - used : 0;
  return cudaSuccess;
}

}  // extern "C"

// kernels/device.h, in place of kernels/cuda/device_query.cu: BERT_EMULATED_DEVICE_COUNT emulated
// devices (default 1), each an H200 by its numbers (the name keeps "H200", so bert_train's MFU is
// formed against its peak as on the real one), told apart by their UUIDs. They share one memory and
// one set of streams: selecting one changes nothing but what the trainer reports. Each process is its
// own machine's view: two processes with the same ordinal report the same UUID, as two ranks given
// the same GPU would.
namespace {

int emulated_device_count() {
  const char* text = std::getenv("BERT_EMULATED_DEVICE_COUNT");
  if (text == nullptr || *text == '\0') return 1;
  char* end = nullptr;
  const long count = std::strtol(text, &end, 10);
  if (end == text || *end != '\0' || count < 0 || count > 64) {
    std::fprintf(stderr, "BERT_EMULATED_DEVICE_COUNT=%s is not a device count (0-64)\n", text);
    std::abort();
  }
  return static_cast<int>(count);
}

}  // namespace

extern "C" {

cudaError_t cudaGetDevice(int* device) {
  if (device == nullptr) return state().last_error = cudaErrorInvalidValue;
  *device = state().current_device;
  return cudaSuccess;
}

// The attributes the callers ask for, an H200's (as Context and cuda_device_info report); any other
// is an error, so a new caller finds out here rather than reading a made-up number.
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attribute, int device) {
  if (value == nullptr || device < 0 || device >= emulated_device_count())
    return state().last_error = cudaErrorInvalidValue;
  switch (attribute) {
    case cudaDevAttrL2CacheSize:
      *value = kL2Bytes;
      return cudaSuccess;
    case cudaDevAttrMultiProcessorCount:
      *value = kMultiprocessors;
      return cudaSuccess;
    case cudaDevAttrComputeCapabilityMajor:
      *value = kSmMajor;
      return cudaSuccess;
    case cudaDevAttrComputeCapabilityMinor:
      *value = kSmMinor;
      return cudaSuccess;
    default:
      return state().last_error = cudaErrorNotSupported;
  }
}

}  // extern "C"

namespace bert {

DeviceInfo cuda_device_info(int ordinal) {
  DeviceInfo info;
  info.ordinal = ordinal;
  info.count = emulated_device_count();
  if (info.count == 0) {
    info.reason = "no CUDA device: none found (BERT_EMULATED_DEVICE_COUNT=0)";
    return info;
  }
  if (ordinal < 0 || ordinal >= info.count) {
    info.reason = "no CUDA device " + std::to_string(ordinal) + ": " + std::to_string(info.count) + " visible";
    return info;
  }
  info.available = true;
  info.name = "NVIDIA H200 (bertforge host emulation)";
  info.sm_major = kSmMajor;
  info.sm_minor = kSmMinor;
  info.multiprocessors = kMultiprocessors;
  info.memory_bytes = emulated_device_memory();
  char uuid[40];
  std::snprintf(uuid, sizeof uuid, "e1a7ed00000000000000000000%06d", ordinal);
  info.uuid = uuid;
  return info;
}

std::string cuda_select_device(int ordinal) {
  if (ordinal < 0 || ordinal >= emulated_device_count())
    return "cudaSetDevice(" + std::to_string(ordinal) + "): invalid device ordinal";
  state().current_device = ordinal;
  return "";  // one shared memory and set of streams: nothing else changes
}

bool built_with_cuda() { return true; }

}  // namespace bert

namespace {

// The direction `kind` names must match where dst and src live.
void check_copy(const char* call, void* dst, const void* src, size_t count, cudaMemcpyKind kind) {
  if (count == 0) return;
  const bool dst_device = is_device(dst), src_device = is_device(src);
  if (kind == cudaMemcpyDefault)
    kind = dst_device ? (src_device ? cudaMemcpyDeviceToDevice : cudaMemcpyHostToDevice)
                      : (src_device ? cudaMemcpyDeviceToHost : cudaMemcpyHostToHost);
  const bool want_dst_device = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
  const bool want_src_device = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
  if (want_dst_device) device_arg(call, "dst", static_cast<const unsigned char*>(dst), static_cast<int64_t>(count));
  if (want_src_device) device_arg(call, "src", static_cast<const unsigned char*>(src), static_cast<int64_t>(count));
  if ((!want_dst_device && dst_device) || (!want_src_device && src_device))
    device_fault(std::string(call) + ": the copy kind does not match where dst / src live");
}

}  // namespace

extern "C" {

cudaError_t cudaMemcpy(void* dst, const void* src, size_t count, cudaMemcpyKind kind) {
  check_copy("cudaMemcpy", dst, src, count, kind);
  flush(state().legacy);  // ordered after the legacy stream's own work, not after other streams'
  std::memcpy(dst, src, count);
  return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count, cudaMemcpyKind kind, cudaStream_t stream) {
  check_copy("cudaMemcpyAsync", dst, src, count, kind);
  const bool to_device = is_device(dst) && !is_device(src);
  const char* name = to_device                           ? "cudaMemcpyAsync(HostToDevice)"
                     : is_device(src) && !is_device(dst) ? "cudaMemcpyAsync(DeviceToHost)"
                                                         : "cudaMemcpyAsync";
  if (injected_failure("cudaMemcpyAsync") || injected_failure(name)) return cudaErrorLaunchFailure;
  if (to_device) {
    ++state().counters.copies_to_device;
    if (!is_pinned(src, count)) ++state().counters.copies_to_device_from_pageable;
  }
  enqueue(stream_of(stream), name, [=] { std::memcpy(dst, src, count); });
  return cudaSuccess;
}

// Row by row: each row's extent is checked as one copy's; the pitches' padding is never read or written.
cudaError_t cudaMemcpy2DAsync(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width, size_t height,
                              cudaMemcpyKind kind, cudaStream_t stream) {
  if (width > dpitch || width > spitch) return cudaErrorInvalidPitchValue;
  auto* d = static_cast<unsigned char*>(dst);
  const auto* s = static_cast<const unsigned char*>(src);
  for (size_t row = 0; row < height; ++row)
    check_copy("cudaMemcpy2DAsync", d + row * dpitch, s + row * spitch, width, kind);
  if (injected_failure("cudaMemcpy2DAsync")) return cudaErrorLaunchFailure;
  if (height > 0 && is_device(dst) && !is_device(src)) {
    ++state().counters.copies_to_device;
    if (!is_pinned(src, (height - 1) * spitch + width)) ++state().counters.copies_to_device_from_pageable;
  }
  enqueue(stream_of(stream), "cudaMemcpy2DAsync", [=] {
    for (size_t row = 0; row < height; ++row) std::memcpy(d + row * dpitch, s + row * spitch, width);
  });
  return cudaSuccess;
}

cudaError_t cudaMemset(void* dst, int value, size_t count) {
  device_arg("cudaMemset", "dst", static_cast<const unsigned char*>(dst), static_cast<int64_t>(count));
  flush(state().legacy);
  std::memset(dst, value, count);
  return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void* dst, int value, size_t count, cudaStream_t stream) {
  device_arg("cudaMemsetAsync", "dst", static_cast<const unsigned char*>(dst), static_cast<int64_t>(count));
  if (injected_failure("cudaMemsetAsync")) return cudaErrorLaunchFailure;
  enqueue(stream_of(stream), "cudaMemsetAsync", [=] { std::memset(dst, value, count); });
  return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize() {
  ++state().counters.device_syncs;
  flush_all();
  check_all_guards("cudaDeviceSynchronize");
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  ++state().counters.stream_syncs;
  flush(stream_of(stream));
  return cudaSuccess;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned int) {
  State& s = state();
  s.streams.push_back(std::make_unique<Stream>());
  s.live_streams.insert(s.streams.back().get());
  *stream = reinterpret_cast<cudaStream_t>(s.streams.back().get());
  return cudaSuccess;
}

// As CUDA: returns at once, the stream's queued work still runs (here: now, before it is dropped).
cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  Stream& target = stream_of(stream);
  if (&target == &state().legacy) device_fault("cudaStreamDestroy of the default stream");
  flush(target);
  state().live_streams.erase(&target);
  return cudaSuccess;
}

// The stream's later work waits for what the event had captured when this was called (recording the
// event again afterwards does not change it): a queued op that runs the recorded stream that far.
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int) {
  const auto* e = reinterpret_cast<const Event*>(event);
  if (e->stream == nullptr) return cudaSuccess;  // never recorded: nothing to wait for
  Stream* recorded = e->stream;
  const uint64_t seq = e->seq;
  enqueue(stream_of(stream), "cudaStreamWaitEvent", [recorded, seq] { advance(*recorded, seq); });
  return cudaSuccess;
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned int flags) {
  auto* created = new Event;
  created->timing = (flags & cudaEventDisableTiming) == 0;
  *event = reinterpret_cast<cudaEvent_t>(created);
  return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t* event) { return cudaEventCreateWithFlags(event, cudaEventDefault); }

cudaError_t cudaEventDestroy(cudaEvent_t event) {
  delete reinterpret_cast<Event*>(event);
  return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  auto* e = reinterpret_cast<Event*>(event);
  e->stream = &stream_of(stream);
  if (e->timing) {  // a queued stamp: the host's clock when the stream gets there (no device clock)
    e->stamp = std::make_shared<std::optional<std::chrono::steady_clock::time_point>>();
    enqueue(*e->stream, "cudaEventRecord (timing)", [stamp = e->stamp] { *stamp = std::chrono::steady_clock::now(); });
  }
  e->seq = e->stream->issued;  // complete once everything issued so far on the stream has run
  return cudaSuccess;
}

// As CUDA: both events made with timing and recorded, else cudaErrorInvalidResourceHandle; either one
// not complete yet, cudaErrorNotReady. The time is the host's between the two stamps (above), which
// measures when the deferred work ran, not how fast a GPU would run it.
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  const auto* first = reinterpret_cast<const Event*>(start);
  const auto* last = reinterpret_cast<const Event*>(end);
  if (ms == nullptr) return state().last_error = cudaErrorInvalidValue;
  if (!first->timing || !last->timing || !first->stamp || !last->stamp)
    return state().last_error = cudaErrorInvalidResourceHandle;
  if (!first->stamp->has_value() || !last->stamp->has_value()) return state().last_error = cudaErrorNotReady;
  *ms = std::chrono::duration<float, std::milli>(**last->stamp - **first->stamp).count();
  return cudaSuccess;
}

// Work still queued when the event is asked about is "not ready" this time and runs then, so the
// next query finds it done (a poll sees the device busy at least once); work behind a stall is never
// done. cudaErrorNotReady is also left as the last error, as HIP does and as some CUDA versions may
// (PyTorch clears it after every such query): code that launches after a poll must clear it.
cudaError_t cudaEventQuery(cudaEvent_t event) {
  const auto* e = reinterpret_cast<const Event*>(event);
  if (e->stream == nullptr || e->stream->executed >= e->seq) return cudaSuccess;
  try {
    advance(*e->stream, e->seq);
  } catch (const Stalled&) {
  }
  state().last_error = cudaErrorNotReady;
  return cudaErrorNotReady;
}

cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  ++state().counters.event_syncs;
  const auto* e = reinterpret_cast<const Event*>(event);
  if (e->stream != nullptr) wait_for(*e->stream, e->seq);
  return cudaSuccess;
}

const char* cudaGetErrorName(cudaError_t error) {
  switch (error) {
    case cudaSuccess:
      return "cudaSuccess";
    case cudaErrorMemoryAllocation:
      return "cudaErrorMemoryAllocation";
    case cudaErrorLaunchFailure:
      return "cudaErrorLaunchFailure";
    case cudaErrorInvalidValue:
      return "cudaErrorInvalidValue";
    case cudaErrorInvalidConfiguration:
      return "cudaErrorInvalidConfiguration";
    case cudaErrorNotReady:
      return "cudaErrorNotReady";
    default:
      return "cudaErrorUnknown";
  }
}

const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaErrorLaunchFailure:
      return "emulated CUDA: injected launch failure";
    case cudaErrorInvalidValue:
    case cudaErrorInvalidConfiguration:
      return "emulated CUDA: launch refused (configuration or shared memory; the details are on stderr)";
    default:
      return "emulated CUDA error";
  }
}

cudaError_t cudaGetLastError() {
  const cudaError_t error = state().last_error;
  state().last_error = cudaSuccess;
  return error;
}

cudaError_t cudaPeekAtLastError() { return state().last_error; }

}  // extern "C"

// ---- bert::cuda::Context ---------------------------------------------------

namespace bert::cuda {

// Context::GemmPlans (the cuBLASLt plan cache) belongs to whatever provides linear_forward: the
// emulated ops (emulated_ops.cpp), or gemm.cu itself on the kernel emulation.

Context::Context(cudaStream_t stream, size_t gemm_workspace_bytes) : stream_(stream) {
  multiprocessors_ = kMultiprocessors;
  sm_version_ = kSmMajor * 10 + kSmMinor;
  if (stream_ == nullptr) {
    cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking);
    owns_stream_ = true;
  }
  gemm_workspace_.resize(gemm_workspace_bytes);
}

Context::~Context() {
  // As the real one: wait for the stream (queued ops may read the buffers), then release.
  if (stream_ != nullptr) flush(stream_of(stream_));
  if (owns_stream_) state().live_streams.erase(reinterpret_cast<Stream*>(stream_));
  scratch_.reset();
  gemm_workspace_.reset();
}

void* Context::scratch(size_t bytes) {
  if (bytes > scratch_.size()) {
    CUDA_CHECK(cudaStreamSynchronize(stream_));
    scratch_.resize(bytes);
  }
  return scratch_.data();
}

}  // namespace bert::cuda

// ---- emulated_cuda.h --------------------------------------------------------------------------------------

namespace bert::emulated {

Counters counters() { return state().counters; }

int64_t pending_operations() {
  const State& s = state();
  int64_t pending = static_cast<int64_t>(s.legacy.queue.size());
  for (const Stream* stream : s.live_streams) pending += static_cast<int64_t>(stream->queue.size());
  return pending;
}

void fail_launch(const std::string& op, int skip) {
  state().fail_op = op;
  state().fail_skip = skip;
}

void clear_injected_failure() { state().fail_op.clear(); }

void set_deferred(bool deferred) {
  if (!deferred) flush_all();
  state().deferred = deferred;
}

}  // namespace bert::emulated
