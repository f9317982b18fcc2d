// engine/communicator_nccl.cpp on a real GPU, as far as one GPU allows: the real NCCL loads beside the
// toolkit the executables were built with, a one-rank communicator starts on the device
// (ncclGetUniqueId, ncclCommInitRank), and its all-reduce runs on the given stream in order with the
// work around it (a copy in, the sum, a copy out: the sum of one rank is its own values, bit for bit),
// with no asynchronous error after it.
// forward_backward_summed with that communicator, as the trainer runs the last micro-batch of a step
// on several GPUs: the buckets' sums on their own stream see each range of gradients final (a copy
// queued before each sum equals the unsummed step's gradients) and leave the step's gradients as
// they were (one rank), bit for bit (the kernels are deterministic).
// Several ranks need several GPUs and MPI; what the trainer does with them (2 ranks = 1 rank with twice
// the accumulation) is tested on the CUDA emulation with NCCL emulated over MPI (tests/test_trainer_mpi.cpp).
#include <cuda_runtime.h>

#include <catch2/catch.hpp>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "engine/bert.h"
#include "engine/bert_cuda.h"
#include "engine/communicator.h"
#include "engine/communicator_nccl.h"
#include "kernels/cuda/check.h"
#include "tests/gpu/cuda_model_fixture.h"

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
  CHECK(nccl->async_error().empty());
  CUDA_CHECK(cudaStreamDestroy(stream));
  CUDA_CHECK(cudaFree(device));
  CUDA_CHECK(cudaFreeHost(pinned));
  CUDA_CHECK(cudaFreeHost(out));
}

TEST_CASE("NCCL on one GPU: gradients summed during the backward pass are the step's own", "[cuda][nccl]") {
  const std::unique_ptr<bert::Communicator> host = bert::make_single_communicator();
  const std::unique_ptr<bert::DeviceCommunicator> nccl = bert::make_nccl_communicator(*host);
  const bert::BertConfig config = bert::cuda::test::tiny_bert_config(0.1);
  bert::BertForPreTrainingCuda gpu(config);
  // Two full sequences of 16 tokens, every fourth one labelled.
  constexpr int64_t kBatch = 2, kSeq = 16;
  struct {
    int64_t batch_size = kBatch, seq_len = kSeq;
    std::vector<int32_t> input_ids, token_type_ids, attention_mask, labels, nsp_labels, masked_positions, masked_labels;
  } batch;
  std::mt19937 rng(11);
  std::uniform_int_distribution<int32_t> id(5, static_cast<int32_t>(bert::cuda::test::kTinyVocab) - 1);
  for (int64_t t = 0; t < kBatch * kSeq; ++t) {
    batch.input_ids.push_back(t % kSeq == 0 ? 2 : id(rng));
    batch.token_type_ids.push_back(t % kSeq >= kSeq / 2 ? 1 : 0);
    batch.attention_mask.push_back(1);
    batch.labels.push_back(t % 4 == 1 ? id(rng) : bert::ops::kIgnoreIndex);
  }
  batch.nsp_labels = {0, 1};
  gpu.reserve(kBatch, kSeq);

  gpu.zero_grads();
  gpu.set_dropout(3, 0, true);
  gpu.forward_backward(bert::batch_view(batch), 1.0f);
  const std::vector<float> plain = gpu.download_grads();

  const size_t arena = gpu.arena_elements();
  float* copies = nullptr;  // each range as its sum began
  CUDA_CHECK(cudaMalloc(&copies, arena * sizeof(float)));
  CUDA_CHECK(cudaMemset(copies, 0xFF, arena * sizeof(float)));  // NaN
  const float* base = nullptr;
  size_t ranges = 0, covered = 0;
  bert::GradientSum sum;
  sum.bucket_elements = 0;  // every range on its own: the heads, each layer, the embeddings
  sum.sum = [&](float* data, size_t count, cudaStream_t stream) {
    if (base == nullptr) base = data + count - arena;  // the first range ends the arena
    CUDA_CHECK(cudaMemcpyAsync(copies + (data - base), data, count * sizeof(float), cudaMemcpyDeviceToDevice, stream));
    nccl->allreduce_sum(data, count, stream);
    ++ranges;
    covered += count;
  };
  gpu.zero_grads();
  gpu.set_dropout(3, 0, true);
  gpu.upload_batch(bert::batch_view(batch));
  gpu.forward_backward_summed(1.0f, sum);
  const std::vector<float> summed = gpu.download_grads();
  std::vector<float> copied(arena);
  CUDA_CHECK(cudaDeviceSynchronize());
  CUDA_CHECK(cudaMemcpy(copied.data(), copies, arena * sizeof(float), cudaMemcpyDeviceToHost));
  CUDA_CHECK(cudaFree(copies));
  CHECK(ranges == static_cast<size_t>(config.num_hidden_layers) + 2);
  CHECK(covered == arena);
  CHECK(std::memcmp(summed.data(), plain.data(), arena * sizeof(float)) == 0);
  CHECK(std::memcmp(copied.data(), plain.data(), arena * sizeof(float)) == 0);
}
