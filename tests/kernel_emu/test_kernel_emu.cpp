// The kernel emulation's own semantics (tests/kernel_emu/cuda_emu.h), on small kernels
// (selftest_kernels.cu): the PTX shuffle modes with widths, __syncthreads_or ignoring exited threads,
// races between blocks and within a block made visible, the device faults (deadlock, launch bounds,
// host pointers), rejected launches, and waits across streams (cudaStreamWaitEvent). A fault aborts
// the process, so those cases run in a forked child whose exit and stderr are checked.
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "kernels/cuda/ops_cuda.h"
#include "tests/kernel_emu/selftest_kernels.h"

namespace {

namespace k = bert::kernel_emu_selftest;
using bert::cuda::DeviceBuffer;

template <class T>
std::vector<T> download(const DeviceBuffer<T>& buffer) {
  std::vector<T> host(buffer.size());
  CUDA_CHECK(cudaDeviceSynchronize());
  CUDA_CHECK(cudaMemcpy(host.data(), buffer.data(), buffer.bytes(), cudaMemcpyDeviceToHost));
  return host;
}

std::vector<int> shuffled(int mode, int operand, int width) {
  DeviceBuffer<int> out(32);
  k::shuffle(mode, operand, width, out.data());
  return download(out);
}

// Runs `body` in a child process; returns its stderr, and whether it died of SIGABRT.
std::string run_child(const std::function<void()>& body, bool* aborted) {
  int pipe_fds[2];
  REQUIRE(pipe(pipe_fds) == 0);
  std::fflush(nullptr);
  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    close(pipe_fds[0]);
    dup2(pipe_fds[1], 1);
    dup2(pipe_fds[1], 2);
    std::signal(SIGABRT, SIG_DFL);  // not Catch's handler: the child just dies of it
    body();
    std::_Exit(0);
  }
  close(pipe_fds[1]);
  std::string err;
  char chunk[512];
  for (ssize_t n; (n = read(pipe_fds[0], chunk, sizeof(chunk))) > 0;) err.append(chunk, static_cast<size_t>(n));
  close(pipe_fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  *aborted = WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT;
  return err;
}

}  // namespace

TEST_CASE("kernel emulation: shuffles follow the PTX modes, widths included", "[kernel_emu]") {
  const auto xor1 = shuffled(0, 1, 32);
  for (int lane = 0; lane < 32; ++lane) CHECK(xor1[lane] == (lane ^ 1) + 100);
  // width 16, lane mask 16: the source is in the previous segment for the upper half (allowed), in the
  // next one for the lower half (own value).
  const auto xor16 = shuffled(0, 16, 16);
  CHECK(xor16[20] == 4 + 100);
  CHECK(xor16[4] == 4 + 100);
  const auto down = shuffled(1, 4, 32);
  CHECK(down[3] == 7 + 100);
  CHECK(down[30] == 30 + 100);
  const auto down8 = shuffled(1, 4, 8);
  CHECK(down8[2] == 6 + 100);
  CHECK(down8[5] == 5 + 100);
  const auto idx16 = shuffled(2, 3, 16);
  CHECK(idx16[20] == 19 + 100);
  CHECK(idx16[7] == 3 + 100);
}

TEST_CASE("kernel emulation: __syncthreads_or counts only the threads still running", "[kernel_emu]") {
  DeviceBuffer<int> out(1);
  k::syncthreads_or_after_exit(32, 64, out.data());
  CHECK(download(out)[0] == 0);
}

TEST_CASE("kernel emulation: blocks run in both orders, a race between blocks shows", "[kernel_emu]") {
  constexpr int kBlocks = 6;
  int in_order = 0, stale = 0;
  for (int launch = 0; launch < 2; ++launch) {
    DeviceBuffer<int> out(kBlocks), seen(kBlocks);
    CUDA_CHECK(cudaMemset(out.data(), 0xFF, out.bytes()));
    CUDA_CHECK(cudaMemset(seen.data(), 0, seen.bytes()));
    k::block_order(kBlocks, out.data(), seen.data());
    const auto s = download(seen);
    bool all_new = true, all_stale = true;
    for (int b = 1; b < kBlocks; ++b) {
      all_new &= s[b] == b;
      all_stale &= s[b] == -1;
    }
    in_order += all_new;
    stale += all_stale;
  }
  CHECK(in_order == 1);
  CHECK(stale == 1);
}

TEST_CASE("kernel emulation: a missing __syncthreads reads poisoned shared memory", "[kernel_emu]") {
  constexpr int kThreads = 64;
  DeviceBuffer<float> with(kThreads), without(kThreads);
  k::shared_race(true, kThreads, with.data());
  k::shared_race(false, kThreads, without.data());
  const auto a = download(with), b = download(without);
  int stale = 0;
  for (int t = 0; t < kThreads; ++t) {
    CHECK(a[t] == static_cast<float>((t + 1) % kThreads));
    stale += std::isnan(b[t]) ? 1 : 0;
  }
  CHECK(stale > 0);
}

TEST_CASE("kernel emulation: device faults abort with the kernel named", "[kernel_emu]") {
  bool aborted = false;
  std::string err = run_child(
      [] {
        DeviceBuffer<int> out(32);
        k::divergent_barrier(out.data());
        cudaDeviceSynchronize();
      },
      &aborted);
  CHECK(aborted);
  CHECK(err.find("divergent_barrier_kernel") != std::string::npos);
  CHECK(err.find("deadlocks") != std::string::npos);

  err = run_child(
      [] {
        DeviceBuffer<float> out(128);
        k::shared_race(true, 128, out.data());
        cudaDeviceSynchronize();
      },
      &aborted);
  CHECK(aborted);
  CHECK(err.find("__launch_bounds__(64)") != std::string::npos);

  err = run_child(
      [] {
        std::vector<int> host(32);
        k::shuffle(0, 1, 32, host.data());
      },
      &aborted);
  CHECK(aborted);
  CHECK(err.find("neither device memory nor cudaMallocHost memory") != std::string::npos);
}

TEST_CASE("kernel emulation: a kernel writing outside its cudaMalloc allocation is a device fault", "[kernel_emu]") {
  // In bounds, up to the last element: no fault, and the allocation is 256-byte aligned like cudaMalloc's.
  {
    DeviceBuffer<int> out(7);
    CHECK(reinterpret_cast<uintptr_t>(out.data()) % 256 == 0);
    k::write_at(out.data(), 6);
    CHECK(download(out)[6] == 1);
  }
  bool aborted = false;
  std::string err = run_child(
      [] {
        DeviceBuffer<int> out(7);
        k::write_at(out.data(), 7);  // the int just past the end
        cudaDeviceSynchronize();
      },
      &aborted);
  CHECK(aborted);
  CHECK(err.find("a write past the end of the 28-byte cudaMalloc allocation") != std::string::npos);
  CHECK(err.find("found at cudaDeviceSynchronize") != std::string::npos);
  err = run_child(
      [] {
        DeviceBuffer<int> out(7);
        k::write_at(out.data(), -1);
        CUDA_CHECK(cudaStreamSynchronize(nullptr));  // no check here: the next cudaFree finds it
      },
      &aborted);
  CHECK(aborted);
  CHECK(err.find("a write before the start of the 28-byte cudaMalloc allocation") != std::string::npos);
  CHECK(err.find("found at cudaFree") != std::string::npos);
}

TEST_CASE("kernel emulation: launches the device refuses are refused, and reported once", "[kernel_emu]") {
  DeviceBuffer<int> out(32);
  CUDA_CHECK(cudaMemset(out.data(), 0, out.bytes()));
  k::dynamic_shared(48 << 10, out.data());  // the default limit: accepted
  CHECK(cudaGetLastError() == cudaSuccess);
  CHECK(download(out)[5] == 1);
  CUDA_CHECK(cudaMemset(out.data(), 0, out.bytes()));
  k::dynamic_shared((48 << 10) + 1, out.data());  // above it without the opt-in attribute
  const cudaError_t refused = cudaGetLastError();
  CHECK(refused == cudaErrorInvalidValue);
  CHECK(std::string(cudaGetErrorName(refused)) == "cudaErrorInvalidValue");
  CHECK(cudaGetLastError() == cudaSuccess);
  CHECK(download(out)[5] == 0);  // nothing ran
}

TEST_CASE("kernel emulation: a stream waits for the work an event captured when the wait was issued", "[kernel_emu]") {
  cudaStream_t first = nullptr, second = nullptr;
  cudaEvent_t event = nullptr;
  CUDA_CHECK(cudaStreamCreateWithFlags(&first, cudaStreamNonBlocking));
  CUDA_CHECK(cudaStreamCreateWithFlags(&second, cudaStreamNonBlocking));
  CUDA_CHECK(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
  DeviceBuffer<int> a(8), b(8), c(8);
  std::vector<int> host(8, -7);
  CUDA_CHECK(cudaMemsetAsync(a.data(), 0, a.bytes(), first));
  CUDA_CHECK(cudaEventRecord(event, first));
  CUDA_CHECK(cudaStreamWaitEvent(second, event, 0));
  CUDA_CHECK(cudaEventRecord(event, first));                   // recorded again later: the wait above is unaffected
  CUDA_CHECK(cudaMemsetAsync(a.data(), 1, a.bytes(), first));  // after the event: not waited for
  CUDA_CHECK(cudaMemcpyAsync(b.data(), a.data(), a.bytes(), cudaMemcpyDeviceToDevice, second));
  // Without a wait the second stream copies whatever a holds when it runs: poison, here.
  CUDA_CHECK(cudaMemcpyAsync(c.data(), b.data(), b.bytes(), cudaMemcpyDeviceToDevice, second));
  CUDA_CHECK(cudaStreamSynchronize(second));
  CUDA_CHECK(cudaMemcpy(host.data(), c.data(), c.bytes(), cudaMemcpyDeviceToHost));
  CHECK(host == std::vector<int>(8, 0));  // the first memset ran, the second had not
  CUDA_CHECK(cudaStreamSynchronize(first));
  CUDA_CHECK(cudaMemcpy(host.data(), a.data(), a.bytes(), cudaMemcpyDeviceToHost));
  CHECK(host == std::vector<int>(8, 0x01010101));

  // A stream that waits for nothing it was not given: no event wait, the copy sees poison.
  DeviceBuffer<int> d(8), e(8);
  CUDA_CHECK(cudaMemsetAsync(d.data(), 0, d.bytes(), first));
  CUDA_CHECK(cudaMemcpyAsync(e.data(), d.data(), d.bytes(), cudaMemcpyDeviceToDevice, second));
  CUDA_CHECK(cudaStreamSynchronize(second));
  CUDA_CHECK(cudaMemcpy(host.data(), e.data(), e.bytes(), cudaMemcpyDeviceToHost));
  CHECK(host == std::vector<int>(8, -1));
  CUDA_CHECK(cudaEventDestroy(event));
  CUDA_CHECK(cudaStreamDestroy(first));
  CUDA_CHECK(cudaStreamDestroy(second));
}

TEST_CASE("kernel emulation: timing events time the deferred work, as cudaEventElapsedTime's rules say",
          "[kernel_emu]") {
  cudaStream_t stream = nullptr;
  cudaEvent_t start = nullptr, stop = nullptr, untimed = nullptr, unrecorded = nullptr;
  CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  CUDA_CHECK(cudaEventCreate(&start));
  CUDA_CHECK(cudaEventCreate(&stop));
  CUDA_CHECK(cudaEventCreateWithFlags(&untimed, cudaEventDisableTiming));
  CUDA_CHECK(cudaEventCreate(&unrecorded));
  DeviceBuffer<int> a(1 << 16);
  CUDA_CHECK(cudaEventRecord(start, stream));
  CUDA_CHECK(cudaMemsetAsync(a.data(), 0, a.bytes(), stream));
  CUDA_CHECK(cudaEventRecord(stop, stream));
  CUDA_CHECK(cudaEventRecord(untimed, stream));
  float ms = -1;
  CHECK(cudaEventElapsedTime(&ms, start, stop) == cudaErrorNotReady);  // nothing has run yet
  CHECK(ms == -1);
  CHECK(cudaGetLastError() == cudaErrorNotReady);
  CUDA_CHECK(cudaEventSynchronize(stop));
  CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
  CHECK(ms >= 0);
  CHECK(ms < 60e3);
  float back = 1;
  CUDA_CHECK(cudaEventElapsedTime(&back, stop, start));
  CHECK(back == -ms);
  CHECK(cudaEventElapsedTime(&ms, start, untimed) == cudaErrorInvalidResourceHandle);
  CHECK(cudaEventElapsedTime(&ms, unrecorded, stop) == cudaErrorInvalidResourceHandle);
  CHECK(cudaGetLastError() == cudaErrorInvalidResourceHandle);
  // Recorded again: "not ready" until the stream gets there, then the new stamp.
  CUDA_CHECK(cudaMemsetAsync(a.data(), 1, a.bytes(), stream));
  CUDA_CHECK(cudaEventRecord(stop, stream));
  CHECK(cudaEventElapsedTime(&ms, start, stop) == cudaErrorNotReady);
  (void)cudaGetLastError();
  CUDA_CHECK(cudaStreamSynchronize(stream));
  CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
  CHECK(ms >= 0);
  for (cudaEvent_t event : {start, stop, untimed, unrecorded}) CUDA_CHECK(cudaEventDestroy(event));
  CUDA_CHECK(cudaStreamDestroy(stream));
}

TEST_CASE("kernel emulation: cp.async lands at its issue or only at its wait, and faults when never waited for",
          "[kernel_emu]") {
  constexpr int kBlocks = 4;
  std::vector<float> input(128 * 4);
  for (size_t i = 0; i < input.size(); ++i) input[i] = static_cast<float>(i);
  DeviceBuffer<float> in(input.size()), scratch(64 * 4), out(size_t{kBlocks} * 64 * 2);
  CUDA_CHECK(cudaMemcpy(in.data(), input.data(), in.bytes(), cudaMemcpyHostToDevice));
  // A's word 0 of thread t is input[4t], B's input[4 (64 + t)].
  const auto a_of = [](int t) { return static_cast<float>(4 * t); };
  const auto b_of = [](int t) { return static_cast<float>(4 * (64 + t)); };

  // Waited for and published: the neighbour's copies, zeros where the source size was 0.
  k::async_copy(0, kBlocks, 32, in.data(), scratch.data(), out.data());
  auto o = download(out);
  for (int block = 0; block < kBlocks; ++block)
    for (int t = 0; t < 64; ++t) {
      const int next = (t + 1) % 64;
      CHECK(o[(block * 64 + t) * 2] == (next < 32 ? a_of(next) : 0.0f));
      CHECK(o[(block * 64 + t) * 2 + 1] == (next < 32 ? b_of(next) : 0.0f));
    }

  // Waited for only after the barrier: another thread's copy is stale in some blocks, fine in others.
  k::async_copy(1, kBlocks, 64, in.data(), scratch.data(), out.data());
  o = download(out);
  int stale = 0, fresh = 0;
  for (int block = 0; block < kBlocks; ++block)
    for (int t = 0; t < 64; ++t) {
      const float a = o[(block * 64 + t) * 2];
      stale += std::isnan(a) ? 1 : 0;
      fresh += a == a_of((t + 1) % 64) ? 1 : 0;
    }
  CHECK(stale > 0);
  CHECK(fresh > 0);
  CHECK(stale + fresh == kBlocks * 64);

  // wait_group 1: the older group is there; the newer one only in the blocks where copies land early.
  k::async_copy(2, kBlocks, 64, in.data(), scratch.data(), out.data());
  o = download(out);
  int early_blocks = 0, late_blocks = 0;
  for (int block = 0; block < kBlocks; ++block) {
    int b_there = 0, b_poison = 0;
    for (int t = 0; t < 64; ++t) {
      CHECK(o[(block * 64 + t) * 2] == a_of(t));
      const float b = o[(block * 64 + t) * 2 + 1];
      b_there += b == b_of(t) ? 1 : 0;
      b_poison += std::isnan(b) ? 1 : 0;
    }
    early_blocks += b_there == 64 ? 1 : 0;
    late_blocks += b_poison == 64 ? 1 : 0;
  }
  CHECK(early_blocks == 2);
  CHECK(late_blocks == 2);

  // The faulting modes, each in a child: it must die naming the fault (mode 7 in the blocks where
  // copies land late, so over kBlocks blocks).
  const std::pair<int, const char*> faults[] = {
      {3, "async_copy_kernel"},
      {3, "exits with 2 cp.async copies it never waited for"},
      {4, "is not in the block's shared memory"},
      {5, "must be aligned to the copy size 16"},
      {6, "bytes is not inside a cudaMalloc allocation"},
      {7, "were written while a cp.async into them was in flight"},
  };
  for (const auto& [mode, message] : faults) {
    bool aborted = false;
    const std::string err = run_child(
        [&, mode = mode] {
          k::async_copy(mode, mode == 7 ? kBlocks : 1, 64, in.data(), scratch.data(), out.data());
          cudaDeviceSynchronize();
        },
        &aborted);
    INFO("mode " << mode << ": " << err);
    CHECK(aborted);
    CHECK(err.find(message) != std::string::npos);
  }
}
