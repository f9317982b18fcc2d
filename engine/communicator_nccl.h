// Data parallelism over GPUs: bert_train with device = "cuda" under mpirun sums the ranks' gradients
// with NCCL, on the device, on a stream beside the step's while the last backward pass runs
// (BertForPreTrainingCuda::forward_backward_summed; ARCHITECTURE.md, "Distributed": MPI starts the
// processes and carries NCCL's unique id from rank 0 to the others).
//
//   mpirun -np 8 bert_train --config configs/bert_base_seq128.toml    (8 GPUs: rank r uses its host's GPU r)
//
// One process per GPU: rank r of the ranks on a host takes that host's visible device r (or, when a
// host shows each rank one device, e.g. Slurm's --gpus-per-task, that one); two ranks on one GPU are
// refused before training (NCCL would refuse them too, less clearly).
//
// NCCL is loaded when the first device communicator is made, never at program start (as cuBLASLt,
// kernels/cuda/cublaslt_library.h, and for the same reason: a single-GPU or CPU run never maps it):
// BERT_NCCL_LIBRARY if set, else "libnccl.so.<the headers' major version>" on LD_LIBRARY_PATH / the
// loader cache, else beside libcudart. Its major version must be the headers'.
//
// Napkin math: BERT-base's fp32 gradients are 440 MB; a ring all-reduce moves 2 (R - 1) / R of that
// through each rank, ~1.7 ms at NVLink's ~450 GB/s bus bandwidth (8 x H100), against ~4 ms of compute
// per 32 x 128 micro-batch: ~30% more per step with one micro-batch per step if it ran after the
// backward pass. It runs during it instead, in buckets of ddp_bucket_cap_mb (default 25 MiB: one
// BERT-base layer, 28 MB, each; the heads join layer 11's): a layer's sum (~0.11 ms) is shorter than
// the next layer's backward (~0.2 ms), so what stays exposed is the last bucket, the embeddings' 98 MB
// (the word embeddings are tied to the MLM decoder, so their gradient is complete only at the very
// end): ~0.4 ms, ~10% of such a step, ~1% with eight micro-batches. Not measured: the lent machine has
// one GPU. Between hosts over 400 Gb/s InfiniBand the whole sum takes ~15 ms.
//
// Failures: a rank whose ncclCommInitRank fails ends the job with its reason; during training the
// host's waits for the device poll (BertForPreTrainingCuda::set_wait_watch) and a rank ends the job
// when NCCL reports an error (ncclCommGetAsyncError) or it has waited ddp_timeout seconds: a sum
// that waits for a rank that cannot be reached would otherwise hang every rank for ever.
//
// tests/emulated builds this file against an emulation of the NCCL calls (over MPI, on the emulated
// device's memory) with BERT_NCCL_EMULATED: the table then holds the emulated functions.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <memory>
#include <string>

#include "engine/communicator.h"

namespace bert {

class DeviceCommunicator {
 public:
  virtual ~DeviceCommunicator() = default;
  // e.g. "NCCL 2.28.9 (/usr/lib/x86_64-linux-gnu/libnccl.so.2)".
  virtual std::string description() const = 0;
  // Element-wise sums of `count` fp32 values at device address `data` over the ranks, in place, after
  // the work already queued on `stream` and before what is queued after it. The host does not wait.
  // Every rank calls it in the same order with the same count.
  virtual void allreduce_sum(float* data, size_t count, cudaStream_t stream) = 0;
  // An error NCCL found while its kernels ran (a peer gone, a network failure): its words, or "" when
  // there is none. Cheap (no device wait): the trainer asks while it waits for the device.
  virtual std::string async_error() = 0;
};

// Loads NCCL (as the first device communicator does; each call loads it again, which the dynamic
// loader shares) and names it: "NCCL 2.28.9 (<file>)". Throws bert::Error (one line: what was tried,
// the loader's words, the fix). Needs no device.
std::string nccl_library_description();

// NCCL over the ranks of `host`, each on its current CUDA device. A collective of `host` (every rank
// must call it); throws bert::Error (one line) on every rank when NCCL cannot be loaded or started on
// any of them.
std::unique_ptr<DeviceCommunicator> make_nccl_communicator(Communicator& host);

}  // namespace bert
