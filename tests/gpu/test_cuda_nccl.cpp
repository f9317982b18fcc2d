// engine/communicator_nccl.cpp on a real GPU, as far as one GPU allows: the real NCCL loads beside the
// toolkit the executables were built with, a one-rank communicator starts on the device
// (ncclGetUniqueId, ncclCommInitRank), and its all-reduce runs on the given stream in order with the
// work around it (a copy in, the sum, a copy out: the sum of one rank is its own values, bit for bit).
// Several ranks need several GPUs and MPI; what the trainer does with them (2 ranks = 1 rank with twice
// the accumulation) is tested on the CUDA emulation with NCCL emulated over MPI (tests/test_trainer_mpi.cpp).
#include <cuda_runtime.h>

#include <catch2/catch.hpp>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "engine/communicator.h"
#include "engine/communicator_nccl.h"
#include "kernels/cuda/check.h"

TEST_CASE("NCCL on one GPU: the communicator starts and its all-reduce keeps stream order", "[cuda][nccl]") {
  const std::string library = bert::nccl_library_description();
  std::printf("%s\n", library.c_str());
  const std::unique_ptr<bert::Communicator> host = bert::make_single_communicator();
  const std::unique_ptr<bert::DeviceCommunicator> nccl = bert::make_nccl_communicator(*host);
  CHECK(nccl->description() == library);

  // 64 Mi + 3 floats (256 MB): long enough that a sum or copy issued out of order would be caught mid-way.
  const size_t count = (size_t{1} << 26) + 3;
  float* pinned = nullptr;
  float* out = nullptr;
  float* device = nullptr;
  CUDA_CHECK(cudaMallocHost(&pinned, count * sizeof(float)));
  CUDA_CHECK(cudaMallocHost(&out, count * sizeof(float)));
  std::memset(out, 0xFF, count * sizeof(float));  // NaN
  CUDA_CHECK(cudaMalloc(&device, count * sizeof(float)));
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  std::vector<float> expected(count);
  for (float& v : expected) v = uniform(rng);
  std::memcpy(pinned, expected.data(), count * sizeof(float));
  cudaStream_t stream = nullptr;
  CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  CUDA_CHECK(cudaMemsetAsync(device, 0xFF, count * sizeof(float), stream));  // NaN
  CUDA_CHECK(cudaMemcpyAsync(device, pinned, count * sizeof(float), cudaMemcpyHostToDevice, stream));
  nccl->allreduce_sum(device, count, stream);
  CUDA_CHECK(cudaMemcpyAsync(out, device, count * sizeof(float), cudaMemcpyDeviceToHost, stream));
  CUDA_CHECK(cudaStreamSynchronize(stream));
  CHECK(std::memcmp(out, expected.data(), count * sizeof(float)) == 0);
  CUDA_CHECK(cudaStreamDestroy(stream));
  CUDA_CHECK(cudaFree(device));
  CUDA_CHECK(cudaFreeHost(pinned));
  CUDA_CHECK(cudaFreeHost(out));
}
