// bench_train_step: CPU training throughput of BertForPreTraining<float> for one shape, plus the
// sgemm FLOP/s of the same BLAS in the same process (the ceiling our FLOP/s is measured against);
// with --device cuda (CUDA builds), the same for BertForPreTrainingCuda on GPU 0.
//
//   bench_train_step --hidden H --layers L --heads A --intermediate I --vocab V --seq S --batch B
//                    --steps N --warmup W --threads T [--dropout 0.1] [--dense-mlm]
//                    [--omp-wait-policy default|passive|active] [--device cpu|cuda] [--profile]
//                    [--gemm-autotune N] [--kernel-paths default|baseline|<field>=false,...]
//                    [--decoder-chunk-rows N] [--json]
//
// One optimizer step, timed as a whole: zero_grads, set_dropout(training), forward_backward, grad_norm,
// clip to 1.0, adamw_step (lr 1e-4, eps 1e-8, weight decay 0.01 on the decay-flagged tensors) — what
// bert_train does per step without the data loader. W warm-up steps, then N timed; the median is the
// step time. tokens/s = B*S / step; model FLOP/s = training_flops(B, S, mlm_rows) / step, where
// mlm_rows is the rows the MLM head actually ran on (the masked tokens, or all tokens with
// --dense-mlm). The forward_backward and optimizer parts are also reported separately (medians).
//
// The batch: [CLS] A [SEP] B [SEP] with random ids in [5, V), no padding, token types 0 / 1,
// round(0.15 * (S - 3)) labelled non-special positions per sequence (80% -> [MASK] = 4, 10% random,
// 10% unchanged), random NSP labels. bench/bench_train_cpu.py builds the same for HF.
//
// sgemm: cblas_sgemm row-major NN on [B*S, H] x [H, I] (the FFN up-projection's shape) and on
// 2048 x 2048 x 2048, each the median of several runs after a warm-up, 2 m n k FLOPs.
//
// --device cuda (bench/bench_train_gpu.py drives it beside HF on the same GPU): one timed step is
// zero_grads, set_dropout(training), upload_batch (the same synthetic batch), forward_backward,
// optimizer_step (lr 1e-4, eps 1e-8, weight decay 0.01, clip 1.0 on the device), then read_grad_norm
// -- a host wait every step, as the HF loop beside it synchronises every step (bert_train itself
// waits only when it logs, so it is at least this fast). Step time = host wall clock from zero_grads to
// that wait's return (median of N after W warm-ups); CUDA events on the model's stream split it into
// forward+backward and optimizer device time. Host issue time = wall clock from zero_grads to
// optimizer_step returning, before the wait: how long the host takes to queue a step. Well under the
// device time, the host runs ahead and the device waits for it only at the step's first ops, so
// capturing the step in a CUDA graph could save no more than the device's own launch latency between
// kernels (~1-2 us each; the profile's "between ops" shows those at op boundaries, bench/RESULTS.md);
// near or over it, the host is the bottleneck and a graph would pay. The MLM head always runs on the masked rows
// (--dense-mlm is refused). MFU = model FLOP/s over the dense bf16 tensor-core peak of the device
// (H100 SXM / H200 989.4e12, H100 PCIe 756e12, A100 312e12; other devices: none). Memory: the
// model's memory_plan and allocated() bytes, and cudaMemGetInfo before the model and after the run
// (the arenas never shrink, so after the run is the peak). A machine without a CUDA device (or a
// build without CUDA) is a one-line error and exit status 1.
// --profile (cuda only): after the timed steps, one more forward+backward with an OpProfiler attached
// (engine/bert_cuda.h: two CUDA events around every op of the graph), reported per op name and shape
// (calls, device ms, share of that forward+backward), beside the time between ops (the launch gaps
// and host work no op accounts for) and the number of ops issued: where a step's time goes, without a
// profiler on the machine.
// --gemm-autotune N (cuda only): the model's Context times up to N cuBLASLt algorithms for each class
// of GEMM shapes on its first call (in the warm-up steps, so give at least one) and keeps the fastest
// (kernels/cuda/ops_cuda.h, Context::set_gemm_autotune); the run then lists every GEMM plan with its
// algorithm and the candidates' times. Run it beside a plain run to see what autotuning buys a step.
//
// --kernel-paths baseline (cuda only): the model's Context runs the general kernels that the
// specialised ones replaced wherever both apply (kernels/cuda/ops_cuda.h, KernelPaths::baseline():
// the LayerNorm, cross-entropy and GELU rewrites, the dropout fused into the LayerNorm forward, the
// fused attention backward). Run it beside a default run: the difference is what those kernels buy a
// whole step on this device. --kernel-paths <field>=false[,<field>=false...] turns off only the
// fields named (KernelPaths::parse: describe()'s format, e.g. "gelu_fast_math=false"), to see what one
// rewrite buys a step.
//
// --decoder-chunk-rows N: the MLM decoder's rows a chunk (ModelOptions::decoder_chunk_rows; 0, the
// default: the model's own, 1,024 on the CPU and 4,096 on CUDA). A base-128 batch of 16k tokens masks
// ~2,460 rows: --decoder-chunk-rows 1024 beside a default run times the three-chunk head against one.
//
// Threads: omp_set_num_threads(T), openblas_set_num_threads(T) (when the BLAS is OpenBLAS) and
// ModelOptions::num_threads = T. --omp-wait-policy sets OMP_WAIT_POLICY and re-executes this program
// (libgomp reads the variable when it loads, before main), so the policy applies to every region.
#include <cblas.h>
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "common/args.h"
#include "common/error.h"
#include "engine/bert.h"
#include "kernels/cpu/ops_cpu.h"

#if defined(BERT_BENCH_CUDA)
#include <cuda_runtime.h>

#include <cmath>

#include "engine/bert_cuda.h"
#include "kernels/device.h"
#endif

// OpenBLAS's own thread pool size (weak: another BLAS simply has no such call).
extern "C" void openblas_set_num_threads(int) __attribute__((weak));
extern "C" char* openblas_get_config() __attribute__((weak));

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

double median(std::vector<double> values) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

struct Batch {
  int64_t batch_size = 0, seq_len = 0;
  std::vector<int32_t> input_ids, token_type_ids, attention_mask, labels, nsp_labels;
  std::vector<int32_t> masked_positions, masked_labels;  // empty: the labels are the MLM rows
  int64_t num_masked = 0;

  bert::BatchView view() const { return bert::batch_view(*this); }
};

constexpr int32_t kCls = 2, kSep = 3, kMask = 4, kFirstOrdinary = 5;

Batch make_batch(int64_t batch, int64_t seq_len, int32_t vocab, uint64_t seed) {
  Batch b;
  b.batch_size = batch;
  b.seq_len = seq_len;
  const size_t n = static_cast<size_t>(batch * seq_len);
  b.input_ids.resize(n);
  b.token_type_ids.resize(n);
  b.attention_mask.assign(n, 1);
  b.labels.assign(n, bert::ops::kIgnoreIndex);
  b.nsp_labels.resize(static_cast<size_t>(batch));
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> token(kFirstOrdinary, vocab - 1);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  const int64_t len_a = (seq_len - 3) / 2;
  const int64_t sep_a = 1 + len_a, sep_b = seq_len - 1;
  const int64_t ordinary = seq_len - 3;
  const auto masked_per_sequence = static_cast<int64_t>(0.15 * static_cast<double>(ordinary) + 0.5);
  for (int64_t s = 0; s < batch; ++s) {
    int32_t* ids = b.input_ids.data() + s * seq_len;
    int32_t* types = b.token_type_ids.data() + s * seq_len;
    int32_t* labels = b.labels.data() + s * seq_len;
    std::vector<int64_t> candidates;
    for (int64_t t = 0; t < seq_len; ++t) {
      types[t] = t <= sep_a ? 0 : 1;
      if (t == 0) {
        ids[t] = kCls;
      } else if (t == sep_a || t == sep_b) {
        ids[t] = kSep;
      } else {
        ids[t] = token(rng);
        candidates.push_back(t);
      }
    }
    std::shuffle(candidates.begin(), candidates.end(), rng);
    for (int64_t i = 0; i < masked_per_sequence; ++i) {
      const int64_t t = candidates[static_cast<size_t>(i)];
      labels[t] = ids[t];
      const double u = unit(rng);
      if (u < 0.8) {
        ids[t] = kMask;
      } else if (u < 0.9) {
        ids[t] = token(rng);
      }
    }
    b.nsp_labels[static_cast<size_t>(s)] = static_cast<int32_t>(rng() & 1);
    b.num_masked += masked_per_sequence;
  }
  return b;
}

struct SgemmResult {
  int64_t m = 0, n = 0, k = 0;
  int runs = 0;
  double median_s = 0;
  double flops_per_s = 0;
};

SgemmResult measure_sgemm(int64_t m, int64_t n, int64_t k, int min_runs, double min_seconds) {
  std::vector<float> a(static_cast<size_t>(m * k)), b(static_cast<size_t>(k * n)), c(static_cast<size_t>(m * n));
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  for (float& x : a) x = dist(rng);
  for (float& x : b) x = dist(rng);
  const auto run = [&] {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(m), static_cast<int>(n),
                static_cast<int>(k), 1.0f, a.data(), static_cast<int>(k), b.data(), static_cast<int>(n), 0.0f,
                c.data(), static_cast<int>(n));
  };
  run();  // warm-up: OpenBLAS thread pool, page faults of c
  std::vector<double> times;
  const auto start = Clock::now();
  while (static_cast<int>(times.size()) < min_runs || seconds_since(start) < min_seconds) {
    const auto t0 = Clock::now();
    run();
    times.push_back(seconds_since(t0));
    if (times.size() >= 200) break;
  }
  SgemmResult r;
  r.m = m;
  r.n = n;
  r.k = k;
  r.runs = static_cast<int>(times.size());
  r.median_s = median(times);
  r.flops_per_s = 2.0 * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k) / r.median_s;
  return r;
}

std::string json_escape(const std::string& s) {
  std::string out;
  for (const char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      out += ' ';
    } else {
      out += c;
    }
  }
  return out;
}

struct Shape {
  bert::BertConfig config;
  int64_t seq_len = 0, batch = 0;
  int steps = 0, warmup = 0;
  bool json = false;
  bool profile = false;
  int gemm_autotune = 0;
  int64_t decoder_chunk_rows = 0;
#if defined(BERT_BENCH_CUDA)
  bert::cuda::KernelPaths kernel_paths;
#endif
};

#if defined(BERT_BENCH_CUDA)
void cuda_check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw bert::Error(std::string("bench_train_step: ") + what + ": " + cudaGetErrorString(err));
}

// Dense bf16 tensor-core peak of a device, by name (NVIDIA datasheets; engine/trainer.cpp's table).
std::pair<double, const char*> bf16_dense_peak(const std::string& name) {
  if (name.find("H100") != std::string::npos) {
    if (name.find("PCIe") != std::string::npos) return {756e12, "H100 PCIe dense bf16 (756 TFLOP/s)"};
    return {989.4e12, "H100 SXM / H200 dense bf16 (989.4 TFLOP/s)"};
  }
  if (name.find("H200") != std::string::npos) return {989.4e12, "H100 SXM / H200 dense bf16 (989.4 TFLOP/s)"};
  if (name.find("A100") != std::string::npos) return {312e12, "A100 dense bf16 (312 TFLOP/s)"};
  return {0, ""};
}

int bench_cuda(const Shape& shape) {
  const bert::DeviceInfo device = bert::cuda_device_info();
  if (!device.available) throw bert::Error("bench_train_step: --device cuda: " + device.reason);
  if (const std::string why = bert::cuda_check_kernels(); !why.empty())
    throw bert::Error("bench_train_step: --device cuda: " + why);
  const bert::BertConfig& config = shape.config;
  const int64_t batch = shape.batch, seq_len = shape.seq_len;
  bert::BertForPreTrainingCuda::check_supported(config);
  bert::BertForPreTrainingCuda::check_supported_seq_len(seq_len);

  bert::ModelOptions options;
  options.init_seed = 42;
  options.decoder_chunk_rows = shape.decoder_chunk_rows;
  const bert::CudaMemoryPlan plan = bert::BertForPreTrainingCuda::memory_plan(config, batch, seq_len, options);
  size_t free_before = 0, total_bytes = 0;
  cuda_check(cudaMemGetInfo(&free_before, &total_bytes), "cudaMemGetInfo");
  if (plan.total_bytes() > free_before)
    throw bert::Error("bench_train_step: --device cuda: batch " + std::to_string(batch) + " x " +
                      std::to_string(seq_len) + " needs " + std::to_string(plan.total_bytes() >> 20) + " MiB, " +
                      device.name + " has " + std::to_string(free_before >> 20) + " MiB free");

  const auto build_start = Clock::now();
  bert::BertForPreTrainingCuda model(config, options);
  model.reserve(batch, seq_len);
  model.context().set_gemm_autotune(shape.gemm_autotune);
  model.context().set_kernel_paths(shape.kernel_paths);
  const std::string kernel_paths = model.context().kernel_paths().describe();
  cuda_check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
  const double build_s = seconds_since(build_start);

  const Batch data = make_batch(batch, seq_len, config.vocab_size, 1234);
  const bert::BatchView view = data.view();

  const cudaStream_t stream = model.context().stream();
  cudaEvent_t events[3];
  for (cudaEvent_t& event : events) cuda_check(cudaEventCreate(&event), "cudaEventCreate");

  std::vector<double> step_s, device_step_s, fb_s, opt_s, issue_s, losses;
  double last_norm = 0;
  int non_finite_norms = 0;
  for (int i = 0; i < shape.warmup + shape.steps; ++i) {
    const auto t0 = Clock::now();
    cuda_check(cudaEventRecord(events[0], stream), "cudaEventRecord");
    model.zero_grads();
    model.set_dropout(99, static_cast<uint64_t>(i), true);
    model.upload_batch(view);
    model.forward_backward(1.0f, true);
    cuda_check(cudaEventRecord(events[1], stream), "cudaEventRecord");
    bert::ops::AdamWHyperparams hyper;
    hyper.learning_rate = 1e-4;
    hyper.epsilon = 1e-8;
    hyper.weight_decay = 0.01;
    hyper.step = i + 1;
    model.optimizer_step(hyper, 1.0f);
    cuda_check(cudaEventRecord(events[2], stream), "cudaEventRecord");
    const double issued = seconds_since(t0);     // the host has queued the whole step
    const double norm = model.read_grad_norm();  // the per-step host wait (see the top)
    const double wall = seconds_since(t0);
    float fb_ms = 0, opt_ms = 0;
    cuda_check(cudaEventSynchronize(events[2]), "cudaEventSynchronize");
    cuda_check(cudaEventElapsedTime(&fb_ms, events[0], events[1]), "cudaEventElapsedTime");
    cuda_check(cudaEventElapsedTime(&opt_ms, events[1], events[2]), "cudaEventElapsedTime");
    const std::vector<bert::LossStats> stats = model.take_loss_stats();
    if (!stats.empty()) losses.push_back(stats.back().loss);
    last_norm = norm;
    if (!std::isfinite(norm)) ++non_finite_norms;
    if (i >= shape.warmup) {
      step_s.push_back(wall);
      device_step_s.push_back(1e-3 * (static_cast<double>(fb_ms) + static_cast<double>(opt_ms)));
      fb_s.push_back(1e-3 * static_cast<double>(fb_ms));
      opt_s.push_back(1e-3 * static_cast<double>(opt_ms));
      issue_s.push_back(issued);
    }
  }
  // --profile: one more forward+backward, every op timed (not part of the numbers above).
  std::vector<bert::OpProfiler::Entry> profile;
  float profile_fb_ms = 0;
  double profile_ops_ms = 0;
  int64_t profile_calls = 0;  // ops issued in that forward+backward
  if (shape.profile) {
    bert::OpProfiler profiler;
    model.zero_grads();
    model.set_dropout(99, static_cast<uint64_t>(shape.warmup + shape.steps), true);
    model.upload_batch(view);
    model.set_profiler(&profiler);
    cuda_check(cudaEventRecord(events[0], stream), "cudaEventRecord");
    model.forward_backward(1.0f, true);
    cuda_check(cudaEventRecord(events[1], stream), "cudaEventRecord");
    model.set_profiler(nullptr);
    cuda_check(cudaEventSynchronize(events[1]), "cudaEventSynchronize");
    cuda_check(cudaEventElapsedTime(&profile_fb_ms, events[0], events[1]), "cudaEventElapsedTime");
    profile = profiler.collect();
    std::stable_sort(profile.begin(), profile.end(), [](const auto& a, const auto& b) { return a.ms > b.ms; });
    for (const auto& entry : profile) {
      profile_ops_ms += entry.ms;
      profile_calls += entry.calls;
    }
    (void)model.take_loss_stats();
  }
  for (cudaEvent_t event : events) cudaEventDestroy(event);
  cuda_check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
  size_t free_after = 0;
  cuda_check(cudaMemGetInfo(&free_after, &total_bytes), "cudaMemGetInfo");
  const size_t allocated = model.allocated().total_bytes();
  const size_t device_delta = free_before > free_after ? free_before - free_after : 0;

  const double step = median(step_s);
  const double tokens = static_cast<double>(batch * seq_len);
  const int64_t mlm_rows = data.num_masked;
  const double flops = bert::bert_training_flops(config, batch, seq_len, mlm_rows);
  const double dense_flops = bert::bert_training_flops(config, batch, seq_len, batch * seq_len);
  const double flops_per_s = flops / step;
  const auto [peak, peak_name] = bf16_dense_peak(device.name);
  const double mfu = peak > 0 ? flops_per_s / peak : 0;
  if (losses.empty()) losses.push_back(0);
  const std::vector<bert::cuda::GemmPlanInfo> plans = model.context().gemm_plans();

  if (shape.json) {
    std::printf("{\"device\": \"cuda\", \"device_name\": \"%s\", \"sm\": \"%d%d\", \"multiprocessors\": %d, ",
                json_escape(device.name).c_str(), device.sm_major, device.sm_minor, device.multiprocessors);
    std::printf("\"hidden\": %d, \"layers\": %d, \"heads\": %d, \"intermediate\": %d, \"vocab\": %d, ",
                config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.intermediate_size,
                config.vocab_size);
    std::printf("\"seq\": %lld, \"batch\": %lld, \"dropout\": %g, \"dense_mlm\": false, \"precision\": "
                "\"bf16 activations and working weights, fp32 master weights, grads and AdamW moments\", ",
                static_cast<long long>(seq_len), static_cast<long long>(batch), config.hidden_dropout_prob);
    std::printf("\"parameters\": %lld, \"build_s\": %.4f, \"warmup\": %d, \"steps\": %d, \"step_ms\": [",
                static_cast<long long>(model.num_parameters()), build_s, shape.warmup, shape.steps);
    for (size_t i = 0; i < step_s.size(); ++i) std::printf("%s%.3f", i ? ", " : "", 1e3 * step_s[i]);
    std::printf(
        "], \"median_step_ms\": %.3f, \"median_device_step_ms\": %.3f, "
        "\"median_forward_backward_ms\": %.3f, \"median_optimizer_ms\": %.3f, \"median_host_issue_ms\": %.3f, ",
        1e3 * step, 1e3 * median(device_step_s), 1e3 * median(fb_s), 1e3 * median(opt_s), 1e3 * median(issue_s));
    std::printf("\"tokens_per_s\": %.2f, \"sequences_per_s\": %.3f, \"mlm_rows\": %lld, \"num_masked\": %lld, ",
                tokens / step, static_cast<double>(batch) / step, static_cast<long long>(mlm_rows),
                static_cast<long long>(data.num_masked));
    std::printf("\"flops_per_step\": %.6e, \"dense_equivalent_flops_per_step\": %.6e, \"flops_per_s\": %.6e, ",
                flops, dense_flops, flops_per_s);
    if (peak > 0) {
      std::printf("\"peak_flops_per_s\": %.6e, \"peak_name\": \"%s\", \"mfu\": %.5f, ", peak, peak_name, mfu);
    } else {
      std::printf("\"peak_flops_per_s\": null, \"peak_name\": \"unknown device: no MFU\", \"mfu\": null, ");
    }
    std::printf("\"memory_plan_bytes\": %zu, \"allocated_bytes\": %zu, \"device_memory_delta_bytes\": %zu, "
                "\"device_used_bytes\": %zu, \"device_total_bytes\": %zu, ",
                plan.total_bytes(), allocated, device_delta, total_bytes - free_after, total_bytes);
    std::printf("\"first_loss\": %.6f, \"last_loss\": %.6f, \"last_grad_norm\": %.6g, \"non_finite_grad_norms\": %d",
                losses.front(), losses.back(), last_norm, non_finite_norms);
    if (shape.profile) {
      std::printf(
          ", \"profile_forward_backward_ms\": %.4f, \"profile_ops_ms\": %.4f, \"profile_op_calls\": %lld, "
          "\"profile\": [",
          static_cast<double>(profile_fb_ms), profile_ops_ms, static_cast<long long>(profile_calls));
      for (size_t i = 0; i < profile.size(); ++i)
        std::printf("%s{\"op\": \"%s\", \"calls\": %lld, \"ms\": %.4f}", i ? ", " : "",
                    json_escape(profile[i].name).c_str(), static_cast<long long>(profile[i].calls), profile[i].ms);
      std::printf("]");
    }
    std::printf(", \"kernel_paths\": \"%s\", \"decoder_chunk_rows\": %lld", kernel_paths.c_str(),
                static_cast<long long>(model.options().decoder_chunk_rows));
    std::printf(", \"gemm_autotune\": %d, \"gemm_plans\": [", shape.gemm_autotune);
    for (size_t i = 0; i < plans.size(); ++i) {
      const bert::cuda::GemmPlanInfo& plan = plans[i];
      std::printf(
          "%s{\"product\": \"%s\", \"m\": %lld, \"n\": %lld, \"k\": %lld, \"algorithm\": \"%s\", "
          "\"accumulate\": %s, \"rank_reused\": %s, \"offered\": %d, \"chosen\": %d, \"candidate_ms\": [",
          i ? ", " : "", json_escape(plan.product).c_str(), static_cast<long long>(plan.m),
          static_cast<long long>(plan.n), static_cast<long long>(plan.k), json_escape(plan.algorithm).c_str(),
          plan.accumulate ? "true" : "false", plan.rank_reused ? "true" : "false", plan.offered, plan.chosen);
      for (size_t j = 0; j < plan.candidate_ms.size(); ++j) {
        if (plan.candidate_ms[j] < 0)
          std::printf("%snull", j ? ", " : "");
        else
          std::printf("%s%.4f", j ? ", " : "", plan.candidate_ms[j]);
      }
      std::printf("]}");
    }
    std::printf("]}\n");
  } else {
    std::printf("shape      hidden %d, layers %d, heads %d, intermediate %d, vocab %d, seq %lld, batch %lld\n",
                config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.intermediate_size,
                config.vocab_size, static_cast<long long>(seq_len), static_cast<long long>(batch));
    std::printf("setup      %lld parameters on %s (sm_%d%d), dropout %g, MLM head on masked tokens (%lld rows)\n",
                static_cast<long long>(model.num_parameters()), device.name.c_str(), device.sm_major, device.sm_minor,
                config.hidden_dropout_prob, static_cast<long long>(mlm_rows));
    std::printf("kernels    %s paths (kernels/cuda/ops_cuda.h: KernelPaths), MLM decoder chunks of %lld rows\n",
                kernel_paths.c_str(), static_cast<long long>(model.options().decoder_chunk_rows));
    std::printf("loss       %.4f -> %.4f over %d steps (last grad norm %.4g)\n", losses.front(), losses.back(),
                shape.warmup + shape.steps, last_norm);
    std::printf("step       %.3f ms median of %d (device: forward+backward %.3f ms, grad norm + AdamW %.3f ms)\n",
                1e3 * step, shape.steps, 1e3 * median(fb_s), 1e3 * median(opt_s));
    std::printf(
        "host       %.3f ms median to queue a step (zero_grads to optimizer_step returning), %.0f%% of the "
        "device's %.3f ms\n",
        1e3 * median(issue_s), 100 * median(issue_s) / median(device_step_s), 1e3 * median(device_step_s));
    std::printf("throughput %.0f tokens/s, %.1f sequences/s, %.1f TFLOP/s (%.3f TFLOP per step)", tokens / step,
                static_cast<double>(batch) / step, flops_per_s / 1e12, flops / 1e12);
    if (peak > 0) std::printf(", MFU %.1f%% of %s", 100 * mfu, peak_name);
    std::printf("\nmemory     plan %.2f GiB, allocated %.2f GiB, device used %.2f of %.2f GiB\n",
                static_cast<double>(plan.total_bytes()) / (1 << 30), static_cast<double>(allocated) / (1 << 30),
                static_cast<double>(total_bytes - free_after) / (1 << 30), static_cast<double>(total_bytes) / (1 << 30));
    if (shape.profile) {
      const double fb = static_cast<double>(profile_fb_ms);
      const auto share = [fb](double ms) { return fb > 0 ? 100 * ms / fb : 0.0; };
      std::printf("profile    one forward+backward, %.3f ms of device time, by op (CUDA events around each):\n", fb);
      std::printf("  %-44s %6s %10s %7s %10s\n", "op", "calls", "ms", "share", "ms/call");
      for (const auto& entry : profile)
        std::printf("  %-44s %6lld %10.3f %6.1f%% %10.4f\n", entry.name.c_str(), static_cast<long long>(entry.calls),
                    entry.ms, share(entry.ms), entry.ms / static_cast<double>(entry.calls));
      std::printf("  %-44s %6lld %10.3f %6.1f%%\n", "sum of the ops", static_cast<long long>(profile_calls),
                  profile_ops_ms, share(profile_ops_ms));
      std::printf("  %-44s %6s %10.3f %6.1f%%\n", "between ops (launch gaps, host work)", "", fb - profile_ops_ms,
                  share(fb - profile_ops_ms));
    }
    std::printf("gemm plans %zu (cuBLASLt, m x n x k column-major; %s):\n", plans.size(),
                shape.gemm_autotune > 1 ? "autotuned, ms of each candidate by rank" : "the heuristic's first");
    for (const bert::cuda::GemmPlanInfo& plan : plans)
      std::printf("  %s\n", bert::cuda::describe_gemm_plan(plan).c_str());
  }
  return 0;
}
#endif

int bench_main(int argc, char** argv) {
  bert::Args args("bench_train_step", "bench_train_step --hidden H --layers L ... [--json]");
  args.option("--hidden", "hidden size", "256")
      .option("--layers", "encoder layers", "4")
      .option("--heads", "attention heads", "4")
      .option("--intermediate", "FFN size", "1024")
      .option("--vocab", "vocabulary size", "16000")
      .option("--seq", "sequence length", "128")
      .option("--batch", "sequences per step", "16")
      .option("--steps", "timed optimizer steps", "10")
      .option("--warmup", "untimed warm-up steps", "2")
      .option("--threads", "CPU threads (0 = all cores)", "0")
      .option("--dropout", "hidden and attention dropout", "0.1")
      .option("--omp-wait-policy", "default | passive | active (sets OMP_WAIT_POLICY, re-executes)", "default")
      .option("--sgemm-seconds", "minimum seconds per sgemm measurement", "1.0")
      .option("--device", "cpu | cuda (cuda: CUDA builds, GPU 0; see the header)", "cpu")
      .flag("--dense-mlm", "run the MLM head on every token (HF's way) instead of the masked ones only")
      .flag("--no-sgemm", "skip the sgemm measurements")
      .flag("--profile", "cuda: also time every op of one forward+backward (see the header)")
      .option("--gemm-autotune", "cuda: time up to N cuBLASLt algorithms per GEMM shape, keep the fastest (0: off)",
              "0")
      .option("--kernel-paths",
              "cuda: default | baseline (the general kernels the specialised ones replaced, to time both) | "
              "<field>=false,... (KernelPaths fields)",
              "default")
      .option("--decoder-chunk-rows", "MLM decoder rows a chunk (0: the model's default, CPU 1024, CUDA 4096)", "0")
      .flag("--json", "print one JSON object instead of text");
  if (!args.parse(std::vector<std::string>(argv + 1, argv + argc))) {
    std::cout << args.help();
    return 0;
  }

  // OMP_WAIT_POLICY is read by libgomp at load time: set it and start over.
  const std::string policy = args.str("--omp-wait-policy");
  if (policy != "default" && policy != "passive" && policy != "active")
    throw bert::Error("bench_train_step: --omp-wait-policy must be default, passive or active");
  if (policy != "default") {
    const char* current = std::getenv("OMP_WAIT_POLICY");
    if (current == nullptr || policy != current) {
      setenv("OMP_WAIT_POLICY", policy.c_str(), 1);
      execv("/proc/self/exe", argv);
      throw bert::Error("bench_train_step: re-executing with OMP_WAIT_POLICY failed: " +
                        std::string(std::strerror(errno)));
    }
  }

  bert::BertConfig config;
  config.hidden_size = static_cast<int>(args.integer("--hidden", 1, 1 << 16));
  config.num_hidden_layers = static_cast<int>(args.integer("--layers", 1, 1000));
  config.num_attention_heads = static_cast<int>(args.integer("--heads", 1, 1024));
  config.intermediate_size = static_cast<int>(args.integer("--intermediate", 1, 1 << 18));
  config.vocab_size = static_cast<int>(args.integer("--vocab", kFirstOrdinary + 1, 1 << 24));
  config.hidden_dropout_prob = args.number("--dropout");
  config.attention_probs_dropout_prob = args.number("--dropout");
  const int64_t seq_len = args.integer("--seq", 4, 512);
  const int64_t batch = args.integer("--batch", 1, 1 << 16);
  const int steps = static_cast<int>(args.integer("--steps", 1, 1000000));
  const int warmup = static_cast<int>(args.integer("--warmup", 0, 1000000));
  int threads = static_cast<int>(args.integer("--threads", 0, 4096));
  if (threads == 0) threads = std::max(1, omp_get_num_procs());
  const bool dense_mlm = args.has("--dense-mlm");
  const bool json = args.has("--json");

  const std::string device = args.str("--device");
  if (device != "cpu" && device != "cuda") throw bert::Error("bench_train_step: --device must be cpu or cuda");
  const int gemm_autotune = static_cast<int>(args.integer("--gemm-autotune", 0, 32));
  const std::string kernel_paths = args.str("--kernel-paths");
  const int64_t decoder_chunk_rows = args.integer("--decoder-chunk-rows", 0, 1 << 24);
  if (device == "cuda") {
    if (dense_mlm) throw bert::Error("bench_train_step: --dense-mlm: the CUDA model runs the MLM head on masked rows only");
#if defined(BERT_BENCH_CUDA)
    Shape shape;
    shape.config = config;
    shape.seq_len = seq_len;
    shape.batch = batch;
    shape.steps = steps;
    shape.warmup = warmup;
    shape.json = json;
    shape.profile = args.has("--profile");
    shape.gemm_autotune = gemm_autotune;
    shape.decoder_chunk_rows = decoder_chunk_rows;
    try {
      shape.kernel_paths = bert::cuda::KernelPaths::parse(kernel_paths);
    } catch (const std::invalid_argument& e) {
      throw bert::Error("bench_train_step: --kernel-paths: " + std::string(e.what()));
    }
    if (gemm_autotune > 1 && warmup < 1)
      throw bert::Error(
          "bench_train_step: --gemm-autotune needs --warmup 1 or more (the tuning runs in the first step)");
    return bench_cuda(shape);
#else
    throw bert::Error("bench_train_step: --device cuda: this build has no CUDA backend (no nvcc at build time)");
#endif
  }

  if (args.has("--profile")) throw bert::Error("bench_train_step: --profile needs --device cuda");
  if (gemm_autotune != 0) throw bert::Error("bench_train_step: --gemm-autotune needs --device cuda");
  if (kernel_paths != "default") throw bert::Error("bench_train_step: --kernel-paths needs --device cuda");
  omp_set_num_threads(threads);
  if (openblas_set_num_threads) openblas_set_num_threads(threads);

  bert::ModelOptions options;
  options.mlm_on_masked_positions_only = !dense_mlm;
  options.num_threads = threads;
  options.init_seed = 42;
  options.decoder_chunk_rows = decoder_chunk_rows;
  const auto build_start = Clock::now();
  bert::BertForPreTraining<float> model(config, options);
  model.reserve(batch, seq_len);
  const double build_s = seconds_since(build_start);

  const Batch data = make_batch(batch, seq_len, config.vocab_size, 1234);
  const bert::BatchView view = data.view();

  bert::cpu::Context context(threads);
  const size_t arena = model.parameters().size();
  std::vector<float> exp_avg(arena, 0.0f), exp_avg_sq(arena, 0.0f);
  std::vector<bert::cpu::AdamWTensor<float>> adam_tensors;
  std::vector<bert::cpu::GradView<float>> grad_views;
  for (const bert::ParamInfo& info : model.params()) {
    bert::cpu::AdamWTensor<float> tensor;
    tensor.param = model.parameters().data() + info.offset;
    tensor.grad = model.grads().data() + info.offset;
    tensor.exp_avg = exp_avg.data() + info.offset;
    tensor.exp_avg_sq = exp_avg_sq.data() + info.offset;
    tensor.numel = static_cast<int64_t>(info.numel);
    tensor.apply_weight_decay = info.apply_weight_decay;
    adam_tensors.push_back(tensor);
    grad_views.push_back({tensor.grad, tensor.numel});
  }

  std::vector<double> step_s, fb_s, opt_s, losses;
  int64_t optimizer_step = 0;
  for (int i = 0; i < warmup + steps; ++i) {
    const auto t0 = Clock::now();
    model.zero_grads();
    model.set_dropout(99, static_cast<uint64_t>(i), true);
    bert::LossStats stats;
    model.forward_backward(view, stats, true, 1.0f);
    const auto t1 = Clock::now();
    const double norm = bert::cpu::grad_norm<float>(context, grad_views);
    bert::cpu::AdamWHyperparams hyper;
    hyper.learning_rate = 1e-4;
    hyper.epsilon = 1e-8;
    hyper.weight_decay = 0.01;
    hyper.step = ++optimizer_step;
    hyper.grad_scale = bert::ops::clip_grad_coefficient(norm, 1.0);
    bert::cpu::adamw_step<float>(context, hyper, adam_tensors);
    const auto t2 = Clock::now();
    if (i >= warmup) {
      step_s.push_back(std::chrono::duration<double>(t2 - t0).count());
      fb_s.push_back(std::chrono::duration<double>(t1 - t0).count());
      opt_s.push_back(std::chrono::duration<double>(t2 - t1).count());
    }
    losses.push_back(stats.loss);
  }

  const double step = median(step_s);
  const double tokens = static_cast<double>(batch * seq_len);
  const int64_t mlm_rows = dense_mlm ? batch * seq_len : data.num_masked;
  const double flops = model.training_flops(batch, seq_len, mlm_rows);
  const double dense_flops = model.training_flops(batch, seq_len, batch * seq_len);
  const double flops_per_s = flops / step;

  SgemmResult model_shaped, large;
  const bool sgemm = !args.has("--no-sgemm");
  if (sgemm) {
    const double min_seconds = args.number("--sgemm-seconds");
    model_shaped = measure_sgemm(batch * seq_len, config.intermediate_size, config.hidden_size, 5, min_seconds);
    large = measure_sgemm(2048, 2048, 2048, 5, min_seconds);
  }
  const double peak = std::max(model_shaped.flops_per_s, large.flops_per_s);
  const char* wait_policy = std::getenv("OMP_WAIT_POLICY");
  const std::string blas = openblas_get_config ? openblas_get_config() : "unknown BLAS";

  if (json) {
    std::printf("{\"hidden\": %d, \"layers\": %d, \"heads\": %d, \"intermediate\": %d, \"vocab\": %d, ",
                config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.intermediate_size,
                config.vocab_size);
    std::printf("\"seq\": %lld, \"batch\": %lld, \"threads\": %d, \"dropout\": %g, \"dense_mlm\": %s, ",
                static_cast<long long>(seq_len), static_cast<long long>(batch), threads, config.hidden_dropout_prob,
                dense_mlm ? "true" : "false");
    std::printf("\"omp_wait_policy\": \"%s\", \"blas\": \"%s\", \"parameters\": %lld, \"build_s\": %.4f, ",
                wait_policy ? wait_policy : "", json_escape(blas).c_str(),
                static_cast<long long>(model.num_parameters()), build_s);
    std::printf("\"warmup\": %d, \"steps\": %d, \"step_ms\": [", warmup, steps);
    for (size_t i = 0; i < step_s.size(); ++i) std::printf("%s%.3f", i ? ", " : "", 1e3 * step_s[i]);
    std::printf("], \"median_step_ms\": %.3f, \"median_forward_backward_ms\": %.3f, \"median_optimizer_ms\": %.3f, ",
                1e3 * step, 1e3 * median(fb_s), 1e3 * median(opt_s));
    std::printf("\"tokens_per_s\": %.2f, \"mlm_rows\": %lld, \"num_masked\": %lld, ", tokens / step,
                static_cast<long long>(mlm_rows), static_cast<long long>(data.num_masked));
    std::printf("\"flops_per_step\": %.6e, \"dense_equivalent_flops_per_step\": %.6e, \"flops_per_s\": %.6e, ", flops,
                dense_flops, flops_per_s);
    std::printf("\"first_loss\": %.6f, \"last_loss\": %.6f, \"decoder_chunk_rows\": %lld", losses.front(),
                losses.back(), static_cast<long long>(model.options().decoder_chunk_rows));
    if (sgemm) {
      const auto print_sgemm = [](const char* name, const SgemmResult& r) {
        std::printf(", \"%s\": {\"m\": %lld, \"n\": %lld, \"k\": %lld, \"runs\": %d, \"median_ms\": %.3f, "
                    "\"flops_per_s\": %.6e}",
                    name, static_cast<long long>(r.m), static_cast<long long>(r.n), static_cast<long long>(r.k),
                    r.runs, 1e3 * r.median_s, r.flops_per_s);
      };
      print_sgemm("sgemm_model_shaped", model_shaped);
      print_sgemm("sgemm_2048", large);
      std::printf(", \"fraction_of_sgemm_model_shaped\": %.4f, \"fraction_of_sgemm_2048\": %.4f, "
                  "\"fraction_of_sgemm_best\": %.4f",
                  flops_per_s / model_shaped.flops_per_s, flops_per_s / large.flops_per_s, flops_per_s / peak);
    }
    std::printf("}\n");
  } else {
    std::printf("shape      hidden %d, layers %d, heads %d, intermediate %d, vocab %d, seq %lld, batch %lld\n",
                config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.intermediate_size,
                config.vocab_size, static_cast<long long>(seq_len), static_cast<long long>(batch));
    std::printf(
        "setup      %lld parameters, %d threads, dropout %g, MLM head on %s (%lld rows, chunks of %lld), "
        "OMP_WAIT_POLICY=%s, %s\n",
        static_cast<long long>(model.num_parameters()), threads, config.hidden_dropout_prob,
        dense_mlm ? "every token" : "masked tokens", static_cast<long long>(mlm_rows),
        static_cast<long long>(model.options().decoder_chunk_rows), wait_policy ? wait_policy : "(unset)",
        blas.c_str());
    std::printf("loss       %.4f -> %.4f over %d steps\n", losses.front(), losses.back(), warmup + steps);
    std::printf("step       %.2f ms median of %d (forward+backward %.2f ms, grad norm + AdamW %.2f ms)\n", 1e3 * step,
                steps, 1e3 * median(fb_s), 1e3 * median(opt_s));
    std::printf("throughput %.1f tokens/s, %.2f GFLOP/s (%.3f TFLOP per step)\n", tokens / step, flops_per_s / 1e9,
                flops / 1e12);
    if (sgemm) {
      std::printf("sgemm      [%lld x %lld] x [%lld x %lld]: %.2f GFLOP/s; 2048^3: %.2f GFLOP/s\n",
                  static_cast<long long>(model_shaped.m), static_cast<long long>(model_shaped.k),
                  static_cast<long long>(model_shaped.k), static_cast<long long>(model_shaped.n),
                  model_shaped.flops_per_s / 1e9, large.flops_per_s / 1e9);
      std::printf("fraction   %.1f%% of the model-shaped sgemm, %.1f%% of 2048^3\n",
                  100 * flops_per_s / model_shaped.flops_per_s, 100 * flops_per_s / large.flops_per_s);
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return bench_main(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}
