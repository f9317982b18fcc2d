// CUDA embeddings + LayerNorm (kernels/cuda/embeddings.cu) against kernels/cpu in fp32 on the same
// bf16-rounded tables: repeated ids (long runs that cross the scatter's 32-token blocks, one id for
// every token), padding_idx, nullptr token types, odd hidden sizes (the scalar path, also on tables
// misaligned by one element), outputs poisoned with NaN and fenced by NaN guards, every gradient
// accumulated onto a nonzero prior with untouched rows (padding, absent ids, positions >= seq_len)
// bitwise unchanged, two runs bitwise equal.
#include <algorithm>
#include <cstddef>
#include <cstring>
#include <random>
#include <set>
#include <stdexcept>
#include <vector>

#include "kernels/cpu/ops_cpu.h"
#include "tests/gpu/cuda_test_util.h"

namespace {

namespace cpu = bert::cpu;
namespace cuda = bert::cuda;
using bert::ops::EmbeddingShape;
using cuda::bf16;
using cuda::DeviceBuffer;
using namespace bert::cuda::test;

constexpr float kEps = 1e-12f;           // BERT's layer_norm_eps
constexpr double kBf16Tolerance = 1e-2;  // bf16 outputs
constexpr double kStatTolerance = 1e-5;  // fp32 mean / rstd
constexpr double kGradTolerance = 5e-5;  // fp32 sums over up to 2000 tokens, in another order

enum class Ids {
  kRandom,     // uniform over the vocabulary, every 5th token padding_idx (if any)
  kSame,       // every token the same id: one run through every scatter block
  kSequences,  // BERT-like: [CLS] words [SEP] then padding_idx up to seq_len; types 0 then 1
};

struct EmbeddingCase {
  EmbeddingShape shape;
  bool with_types;
  size_t offset;
  Ids ids;
};

std::vector<int32_t> make_ids(const EmbeddingCase& c, std::mt19937_64& rng) {
  const EmbeddingShape& s = c.shape;
  std::vector<int32_t> ids(static_cast<size_t>(s.tokens()));
  std::uniform_int_distribution<int64_t> any_id(0, s.vocab_size - 1);
  for (int64_t t = 0; t < s.tokens(); ++t) {
    int64_t id = any_id(rng);
    if (c.ids == Ids::kRandom && s.padding_idx >= 0 && t % 5 == 4) id = s.padding_idx;
    if (c.ids == Ids::kSame) id = s.vocab_size - 1;
    ids[static_cast<size_t>(t)] = static_cast<int32_t>(id);
  }
  if (c.ids == Ids::kSequences) {
    std::uniform_int_distribution<int64_t> length(2, s.seq_len);
    for (int64_t b = 0; b < s.batch; ++b) {
      const int64_t used = length(rng);
      ids[static_cast<size_t>(b * s.seq_len)] = 1;             // [CLS]
      ids[static_cast<size_t>(b * s.seq_len + used - 1)] = 2;  // [SEP]
      for (int64_t p = used; p < s.seq_len; ++p)
        ids[static_cast<size_t>(b * s.seq_len + p)] = static_cast<int32_t>(s.padding_idx);
    }
  }
  return ids;
}

std::vector<int32_t> make_types(const EmbeddingCase& c, std::mt19937_64& rng) {
  const EmbeddingShape& s = c.shape;
  std::vector<int32_t> types(static_cast<size_t>(s.tokens()));
  std::uniform_int_distribution<int64_t> any_type(0, s.type_vocab_size - 1);
  for (int64_t t = 0; t < s.tokens(); ++t)
    types[static_cast<size_t>(t)] = static_cast<int32_t>(
        c.ids == Ids::kSequences ? std::min<int64_t>(s.type_vocab_size - 1, 2 * (t % s.seq_len) / s.seq_len)
                                 : any_type(rng));
  return types;
}

// Rows of a [rows, hidden] table (not) listed in `touched` hold exactly the prior's bits.
bool untouched_rows_equal(const std::vector<float>& table, const std::vector<float>& prior, int64_t rows,
                          int64_t hidden, const std::set<int64_t>& touched) {
  for (int64_t r = 0; r < rows; ++r) {
    if (touched.count(r) != 0) continue;
    const size_t at = static_cast<size_t>(r * hidden);
    if (std::memcmp(table.data() + at, prior.data() + at, static_cast<size_t>(hidden) * sizeof(float)) != 0)
      return false;
  }
  return true;
}

void check_embeddings(const EmbeddingCase& c, uint64_t seed, const cuda::KernelPaths& paths = {}) {
  const EmbeddingShape& shape = c.shape;
  INFO("batch " << shape.batch << " seq_len " << shape.seq_len << " hidden " << shape.hidden << " vocab "
                << shape.vocab_size << " types " << shape.type_vocab_size << " padding_idx " << shape.padding_idx
                << (c.with_types ? "" : " no type ids") << " offset " << c.offset << " ids "
                << static_cast<int>(c.ids));
  const int64_t tokens = shape.tokens(), hidden = shape.hidden;
  const size_t n = static_cast<size_t>(tokens * hidden);
  const size_t word_n = static_cast<size_t>(shape.vocab_size * hidden);
  const size_t position_n = static_cast<size_t>(shape.max_position_embeddings * hidden);
  const size_t type_n = static_cast<size_t>(shape.type_vocab_size * hidden);
  std::mt19937_64 rng(seed);
  const std::vector<int32_t> ids = make_ids(c, rng);
  const std::vector<int32_t> types = c.with_types ? make_types(c, rng) : std::vector<int32_t>();
  const std::vector<float> word = random_bf16_values(rng, word_n);
  const std::vector<float> position = random_bf16_values(rng, position_n);
  const std::vector<float> type = random_bf16_values(rng, type_n);
  const std::vector<float> gamma = random_bf16_values(rng, static_cast<size_t>(hidden), 0.5f, 1.5f);
  const std::vector<float> beta = random_bf16_values(rng, static_cast<size_t>(hidden), -0.5f, 0.5f);
  const std::vector<float> dout = random_bf16_values(rng, n);
  const std::vector<float> d_word_prior = random_floats(rng, word_n);
  const std::vector<float> d_position_prior = random_floats(rng, position_n);
  const std::vector<float> d_type_prior = random_floats(rng, type_n);
  const std::vector<float> dgamma_prior = random_floats(rng, static_cast<size_t>(hidden));
  const std::vector<float> dbeta_prior = random_floats(rng, static_cast<size_t>(hidden));
  const int32_t* types_host = c.with_types ? types.data() : nullptr;

  cpu::Context cpu_ctx(1);
  std::vector<float> out_ref(n), mean_ref(static_cast<size_t>(tokens)), rstd_ref(static_cast<size_t>(tokens));
  std::vector<float> d_word_ref(word_n, 0.0f), d_position_ref(position_n, 0.0f), d_type_ref(type_n, 0.0f);
  std::vector<float> dgamma_ref(static_cast<size_t>(hidden), 0.0f), dbeta_ref(static_cast<size_t>(hidden), 0.0f);
  cpu::embeddings_layernorm_forward<float>(cpu_ctx, shape, ids.data(), types_host, word.data(), position.data(),
                                           type.data(), gamma.data(), beta.data(), kEps, out_ref.data(),
                                           mean_ref.data(), rstd_ref.data());
  cpu::embeddings_layernorm_backward<float>(cpu_ctx, shape, dout.data(), ids.data(), types_host, word.data(),
                                            position.data(), type.data(), gamma.data(), mean_ref.data(),
                                            rstd_ref.data(), d_word_ref.data(), d_position_ref.data(),
                                            d_type_ref.data(), dgamma_ref.data(), dbeta_ref.data());

  cuda::Context ctx;
  ctx.set_kernel_paths(paths);
  DeviceBuffer<int32_t> d_ids = upload<int32_t>(ids);
  DeviceBuffer<int32_t> d_types = upload<int32_t>(types);
  const int32_t* types_device = c.with_types ? d_types.data() : nullptr;
  const size_t offset = c.offset;
  Bf16Tensor d_word = Bf16Tensor::input(word, offset), d_position = Bf16Tensor::input(position, offset);
  Bf16Tensor d_type = Bf16Tensor::input(type, offset), d_gamma = Bf16Tensor::input(gamma, offset);
  Bf16Tensor d_beta = Bf16Tensor::input(beta, offset), d_dout = Bf16Tensor::input(dout, offset);

  std::vector<std::vector<float>> out_runs, mean_runs, rstd_runs;
  for (int run = 0; run < 2; ++run) {
    Bf16Tensor d_out = Bf16Tensor::output(n, offset);
    DeviceBuffer<float> d_mean = poisoned<float>(static_cast<size_t>(tokens));
    DeviceBuffer<float> d_rstd = poisoned<float>(static_cast<size_t>(tokens));
    cuda::embeddings_layernorm_forward(ctx, shape, d_ids.data(), types_device, d_word.data(), d_position.data(),
                                       d_type.data(), d_gamma.data(), d_beta.data(), kEps, d_out.data(), d_mean.data(),
                                       d_rstd.data());
    ctx.synchronize();
    CHECK(d_out.guards_intact());
    out_runs.push_back(d_out.values());
    mean_runs.push_back(d_mean.download());
    rstd_runs.push_back(d_rstd.download());
  }
  CHECK_CLOSE_REL("out", out_runs[0], out_ref, kBf16Tolerance);
  CHECK_CLOSE_REL("mean", mean_runs[0], mean_ref, kStatTolerance);
  CHECK_CLOSE_REL("rstd", rstd_runs[0], rstd_ref, kStatTolerance);
  CHECK(same_bits(out_runs[0], out_runs[1]));
  CHECK(same_bits(mean_runs[0], mean_runs[1]));
  CHECK(same_bits(rstd_runs[0], rstd_runs[1]));

  // Backward, twice, from the reference statistics.
  DeviceBuffer<float> d_mean_ref = upload<float>(mean_ref), d_rstd_ref = upload<float>(rstd_ref);
  std::vector<std::vector<float>> word_runs, position_runs, type_runs, dgamma_runs, dbeta_runs;
  for (int run = 0; run < 2; ++run) {
    DeviceBuffer<float> d_d_word = upload<float>(d_word_prior), d_d_position = upload<float>(d_position_prior);
    DeviceBuffer<float> d_d_type = upload<float>(d_type_prior);
    DeviceBuffer<float> d_dgamma = upload<float>(dgamma_prior), d_dbeta = upload<float>(dbeta_prior);
    cuda::embeddings_layernorm_backward(ctx, shape, d_dout.data(), d_ids.data(), types_device, d_word.data(),
                                        d_position.data(), d_type.data(), d_gamma.data(), d_mean_ref.data(),
                                        d_rstd_ref.data(), d_d_word.data(), d_d_position.data(), d_d_type.data(),
                                        d_dgamma.data(), d_dbeta.data());
    ctx.synchronize();
    word_runs.push_back(d_d_word.download());
    position_runs.push_back(d_d_position.download());
    type_runs.push_back(d_d_type.download());
    dgamma_runs.push_back(d_dgamma.download());
    dbeta_runs.push_back(d_dbeta.download());
  }
  CHECK_ERROR_AT_MOST("d_word (added to the prior)", accumulated_error(word_runs[0], d_word_prior, d_word_ref),
                      kGradTolerance);
  CHECK_ERROR_AT_MOST("d_position (added to the prior)",
                      accumulated_error(position_runs[0], d_position_prior, d_position_ref), kGradTolerance);
  CHECK_ERROR_AT_MOST("d_token_type (added to the prior)", accumulated_error(type_runs[0], d_type_prior, d_type_ref),
                      kGradTolerance);
  CHECK_ERROR_AT_MOST("dgamma (added to the prior)", accumulated_error(dgamma_runs[0], dgamma_prior, dgamma_ref),
                      kGradTolerance);
  CHECK_ERROR_AT_MOST("dbeta (added to the prior)", accumulated_error(dbeta_runs[0], dbeta_prior, dbeta_ref),
                      kGradTolerance);

  // Rows no token reaches keep their prior exactly: padding_idx, absent ids, positions >= seq_len.
  std::set<int64_t> word_rows, position_rows, type_rows;
  for (int64_t t = 0; t < tokens; ++t) {
    if (ids[static_cast<size_t>(t)] != shape.padding_idx) word_rows.insert(ids[static_cast<size_t>(t)]);
    position_rows.insert(t % shape.seq_len);
    type_rows.insert(c.with_types ? types[static_cast<size_t>(t)] : 0);
  }
  CHECK(untouched_rows_equal(word_runs[0], d_word_prior, shape.vocab_size, hidden, word_rows));
  CHECK(untouched_rows_equal(position_runs[0], d_position_prior, shape.max_position_embeddings, hidden, position_rows));
  CHECK(untouched_rows_equal(type_runs[0], d_type_prior, shape.type_vocab_size, hidden, type_rows));

  CHECK(same_bits(word_runs[0], word_runs[1]));
  CHECK(same_bits(position_runs[0], position_runs[1]));
  CHECK(same_bits(type_runs[0], type_runs[1]));
  CHECK(same_bits(dgamma_runs[0], dgamma_runs[1]));
  CHECK(same_bits(dbeta_runs[0], dbeta_runs[1]));
}

EmbeddingShape make_shape(int64_t batch, int64_t seq_len, int64_t hidden, int64_t vocab, int64_t max_positions,
                          int64_t types, int64_t padding_idx) {
  EmbeddingShape shape;
  shape.batch = batch;
  shape.seq_len = seq_len;
  shape.hidden = hidden;
  shape.vocab_size = vocab;
  shape.max_position_embeddings = max_positions;
  shape.type_vocab_size = types;
  shape.padding_idx = padding_idx;
  return shape;
}

}  // namespace

TEST_CASE("cuda embeddings_layernorm matches the CPU reference", "[embeddings]") {
  const EmbeddingCase cases[] = {
      {make_shape(3, 7, 768, 50, 16, 2, 0), true, 0, Ids::kRandom},
      {make_shape(3, 7, 7, 50, 16, 2, 0), false, 0, Ids::kRandom},
      {make_shape(40, 50, 1024, 5, 64, 2, 3), true, 0, Ids::kRandom},  // 2000 tokens, runs of ~400
      {make_shape(2, 5, 4099, 1000, 8, 3, -1), true, 0, Ids::kRandom},
      {make_shape(8, 64, 32, 30522, 512, 2, -1), true, 0, Ids::kSame},     // one run over 16 blocks
      {make_shape(8, 64, 32, 30522, 512, 2, 30521), true, 0, Ids::kSame},  // all padding: no word gradient
      {make_shape(5, 3, 1, 10, 3, 1, 2), false, 0, Ids::kRandom},
      {make_shape(1, 33, 8, 3, 40, 2, -1), true, 0, Ids::kRandom},
      {make_shape(3, 7, 768, 50, 16, 2, 0), true, 1, Ids::kRandom},  // misaligned: scalar path
      {make_shape(16, 128, 768, 1000, 512, 2, 0), true, 0, Ids::kSequences},
      {make_shape(16, 128, 768, 1000, 512, 2, 0), false, 0, Ids::kSequences},
      {make_shape(9, 20, 256, 300, 24, 4, 0), true, 0, Ids::kRandom},  // the most types summed without a sort
      {make_shape(9, 20, 256, 300, 24, 6, 0), true, 0, Ids::kRandom},  // more: sorted as the word ids
      {make_shape(9, 20, 10, 300, 24, 4, 0), true, 0, Ids::kRandom},   // hidden % 4 != 0: scalar partial stores
  };
  uint64_t seed = 400;
  for (const EmbeddingCase& c : cases) check_embeddings(c, seed++);
}

// KernelPaths::baseline(): the forward's general LayerNorm kernel (L1 re-reads) at BERT's widths,
// held to the CPU like the default, and (under the kernel emulation, which records launches) seen to run.
TEST_CASE("cuda embeddings_layernorm with KernelPaths::baseline() matches the CPU reference", "[embeddings]") {
  const EmbeddingCase cases[] = {
      {make_shape(16, 128, 768, 1000, 512, 2, 0), true, 0, Ids::kSequences},
      {make_shape(40, 50, 1024, 5, 64, 2, 3), true, 0, Ids::kRandom},
      {make_shape(16, 128, 768, 1000, 512, 2, 0), false, 0, Ids::kSequences},
  };
  uint64_t seed = 450;
  (void)launched_kernels();
  for (const EmbeddingCase& c : cases) check_embeddings(c, seed++, cuda::KernelPaths::baseline());
  if (const auto names = launched_kernels()) {
    CHECK(launched(*names, "layernorm_rows_forward_kernel"));
    CHECK_FALSE(launched(*names, "layernorm_rows_forward_resident_kernel"));
  } else {
    WARN("which kernel ran is not checked on a device: only the kernel emulation records it");
  }
}

TEST_CASE("cuda embeddings_layernorm: zero tokens is a no-op, bad shapes throw", "[embeddings]") {
  cuda::Context ctx;
  const EmbeddingShape empty = make_shape(0, 4, 2, 3, 4, 2, -1);
  DeviceBuffer<int32_t> ids = upload<int32_t>(std::vector<int32_t>{0, 1, 2, 0});
  Bf16Tensor table = Bf16Tensor::input(std::vector<float>(8, 0.5f), 0);
  Bf16Tensor out = Bf16Tensor::output(8, 0);
  DeviceBuffer<float> stats = poisoned<float>(4);
  const std::vector<float> prior(8, 0.25f);
  DeviceBuffer<float> grad = upload<float>(prior);
  cuda::embeddings_layernorm_forward(ctx, empty, ids.data(), nullptr, table.data(), table.data(), table.data(),
                                     table.data(), table.data(), kEps, out.data(), stats.data(), stats.data());
  cuda::embeddings_layernorm_backward(ctx, empty, out.data(), ids.data(), nullptr, table.data(), table.data(),
                                      table.data(), table.data(), stats.data(), stats.data(), grad.data(), grad.data(),
                                      grad.data(), grad.data(), grad.data());
  ctx.synchronize();
  CHECK(out.guards_intact());
  CHECK(out.bits()[0] == 0xFFFF);
  CHECK(same_bits(grad.download(), prior));

  const EmbeddingShape too_long = make_shape(1, 5, 2, 3, 4, 2, -1);  // seq_len > max_position_embeddings
  CHECK_THROWS_AS(
      cuda::embeddings_layernorm_forward(ctx, too_long, ids.data(), nullptr, table.data(), table.data(), table.data(),
                                         table.data(), table.data(), kEps, out.data(), stats.data(), stats.data()),
      std::invalid_argument);
  const EmbeddingShape no_hidden = make_shape(1, 4, 0, 3, 4, 2, -1);
  CHECK_THROWS_AS(
      cuda::embeddings_layernorm_forward(ctx, no_hidden, ids.data(), nullptr, table.data(), table.data(), table.data(),
                                         table.data(), table.data(), kEps, out.data(), stats.data(), stats.data()),
      std::invalid_argument);
}

// The backward's kernels under each setting of the two KernelPaths fields it reads (under the kernel
// emulation, which records launches; the results are held to the CPU by check_embeddings):
// layernorm_fused_backward picks the one-pass dz + dgamma/dbeta kernel over the dz and column passes,
// embeddings_direct_type_gradient the type gradient from the position pass over the sorted scatter
// (which then runs twice a backward: word ids and type ids), the latter only up to 4 types.
TEST_CASE("cuda embeddings_layernorm_backward launches the kernels its KernelPaths name", "[embeddings]") {
  struct Setting {
    bool fused_backward, direct_types;
  };
  const Setting settings[] = {{true, true}, {false, true}, {true, false}, {false, false}};
  const EmbeddingCase cases[] = {
      {make_shape(8, 64, 256, 500, 64, 2, 0), true, 0, Ids::kSequences},
      {make_shape(8, 64, 256, 500, 64, 5, 0), true, 0, Ids::kRandom},  // 5 types: always sorted
  };
  uint64_t seed = 470;
  for (const Setting& setting : settings) {
    for (const EmbeddingCase& c : cases) {
      cuda::KernelPaths paths;
      paths.layernorm_fused_backward = setting.fused_backward;
      paths.embeddings_direct_type_gradient = setting.direct_types;
      INFO(paths.describe() << ", " << c.shape.type_vocab_size << " types");
      (void)launched_kernels();
      check_embeddings(c, seed++, paths);  // two backward calls
      const auto names = launched_kernels();
      if (!names) {
        WARN("which kernel ran is not checked on a device: only the kernel emulation records it");
        continue;
      }
      const bool direct = setting.direct_types && c.shape.type_vocab_size <= 4;
      const auto count = [&](const std::string& name) { return std::count(names->begin(), names->end(), name); };
      CHECK(launched(*names, "layernorm_backward_fused_kernel") == setting.fused_backward);
      CHECK(launched(*names, "layernorm_param_partials_kernel") == !setting.fused_backward);
      CHECK(launched(*names, "layernorm_rows_backward_kernel") == !setting.fused_backward);
      CHECK(count("position_grad_kernel<true>") == (direct ? 2 : 0));
      CHECK(count("position_grad_kernel<false>") == (direct ? 0 : 2));
      CHECK(count("segment_partial_sums_kernel") == (direct ? 2 : 4));
    }
  }
}
