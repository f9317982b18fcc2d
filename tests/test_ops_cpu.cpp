// CPU ops (kernels/cpu): every op is checked five ways on small odd shapes.
//  1. forward against a naive double implementation written straight from the HF/PyTorch formula;
//  2. every gradient against central finite differences in double (relative error < 1e-6) of
//     L = <upstream, output>, upstream being the random gradient fed to backward (all elements on
//     small shapes; a random sample on wide shapes that span several reduction chunks and blocks);
//  3. float against double (~1e-5 relative to the tensor's largest element);
//  4. poisoned outputs: overwritten outputs start as NaN and must all be written, parameter
//     gradients start at random priors and must be accumulated onto (result - prior = gradient);
//  5. determinism: bitwise-equal results for 1..4 threads on shapes with several reduction chunks.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <numbers>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/cpu/ops_cpu.h"
#include "kernels/cpu/ops_cpu_detail.h"

namespace {

using bert::cpu::AdamWTensor;
using bert::cpu::Context;
using bert::cpu::GradView;
namespace ops = bert::ops;
namespace cpu = bert::cpu;

using Vec = std::vector<double>;
template <class T>
using Outputs = std::map<std::string, std::vector<T>>;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

Vec random_vec(size_t n, uint64_t seed, double lo = -1.0, double hi = 1.0) {
  std::mt19937_64 generator(seed);
  Vec values(n);
  for (double& value : values) value = lo + (hi - lo) * (static_cast<double>(generator() >> 11) * 0x1.0p-53);
  return values;
}

template <class T>
std::vector<T> cast(const Vec& values) {
  return std::vector<T>(values.begin(), values.end());
}

template <class T>
std::vector<T> poisoned(size_t n) {
  return std::vector<T>(n, std::numeric_limits<T>::quiet_NaN());
}

// Parameter-gradient result: what the op added onto the prior.
template <class T>
std::vector<T> minus_prior(const std::vector<T>& accumulated, const Vec& prior) {
  std::vector<T> difference(accumulated.size());
  for (size_t i = 0; i < accumulated.size(); ++i) difference[i] = accumulated[i] - static_cast<T>(prior[i]);
  return difference;
}

template <class T>
bool all_finite(const std::vector<T>& values) {
  for (T value : values)
    if (!std::isfinite(value)) return false;
  return true;
}

// max |a - b| / max |b|.
template <class T>
double max_relative_difference(const std::vector<T>& a, const Vec& b) {
  REQUIRE(a.size() == b.size());
  double difference = 0, scale = 0;
  for (size_t i = 0; i < b.size(); ++i) {
    difference = std::max(difference, std::abs(static_cast<double>(a[i]) - b[i]));
    scale = std::max(scale, std::abs(b[i]));
  }
  return scale == 0 ? difference : difference / scale;
}

template <class T>
bool bitwise_equal(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

// What a gradient check differentiates: the scalar L = <upstream, output()>, where upstream is the
// gradient the test feeds to backward. The difference quotient is taken on the outputs before the
// dot product, so outputs an element does not affect cancel exactly instead of adding roundoff.
struct Probe {
  const Vec& upstream;
  std::function<Vec()> output;
};

// Central differences w.r.t. the listed elements of `param` (perturbed in place and restored)
// against `analytic`: relative error < 1e-6 (floored at 1e-3 for near-zero gradients).
void check_gradient_at(const std::string& name, Vec& param, const Vec& analytic, const Probe& probe,
                       const std::vector<size_t>& indices) {
  REQUIRE(param.size() == analytic.size());
  constexpr double kStep = 1e-5;
  double worst = 0, worst_analytic = 0, worst_numeric = 0;
  size_t worst_index = 0;
  for (size_t i : indices) {
    const double saved = param[i], plus = saved + kStep, minus = saved - kStep;
    param[i] = plus;
    const Vec output_plus = probe.output();
    param[i] = minus;
    const Vec output_minus = probe.output();
    param[i] = saved;
    REQUIRE(output_plus.size() == probe.upstream.size());
    double difference = 0;
    for (size_t k = 0; k < output_plus.size(); ++k)
      difference += probe.upstream[k] * (output_plus[k] - output_minus[k]);
    const double numeric = difference / (plus - minus);
    const double error = std::abs(analytic[i] - numeric) / std::max({std::abs(analytic[i]), std::abs(numeric), 1e-3});
    if (error > worst) {
      worst = error;
      worst_index = i;
      worst_analytic = analytic[i];
      worst_numeric = numeric;
    }
  }
  INFO(name << ": worst relative error " << worst << " at element " << worst_index << " (analytic " << worst_analytic
            << ", numeric " << worst_numeric << ")");
  CHECK(worst < 1e-6);
}

// Every element except those in `exempt` (whose analytic value the caller checks separately).
void check_gradient(const std::string& name, Vec& param, const Vec& analytic, const Probe& probe,
                    const std::vector<size_t>& exempt = {}) {
  std::vector<size_t> indices;
  for (size_t i = 0; i < param.size(); ++i)
    if (std::find(exempt.begin(), exempt.end(), i) == exempt.end()) indices.push_back(i);
  check_gradient_at(name, param, analytic, probe, indices);
}

// A random sample of `count` elements plus the last one: for wide shapes, where the reductions run
// over several row chunks and column blocks and a full sweep would be slow.
void check_gradient_sampled(const std::string& name, Vec& param, const Vec& analytic, const Probe& probe, size_t count,
                            uint64_t seed) {
  std::mt19937_64 generator(seed);
  std::vector<size_t> indices;
  for (size_t k = 0; k < count; ++k) indices.push_back(static_cast<size_t>(generator() % param.size()));
  indices.push_back(param.size() - 1);
  check_gradient_at(name, param, analytic, probe, indices);
}

void check_all_finite(const Outputs<double>& outputs) {
  for (const auto& [name, values] : outputs) {
    INFO(name << " has an unwritten (NaN) or non-finite element");
    CHECK(all_finite(values));
  }
}

template <class Case>
void check_float_matches_double(const Case& test_case) {
  const Outputs<double> reference = test_case.template run<double>(1);
  const Outputs<float> single = test_case.template run<float>(1);
  for (const auto& [name, values] : reference) {
    INFO(name);
    CHECK(max_relative_difference(single.at(name), values) < 1e-5);
  }
}

template <class Case>
void check_deterministic(const Case& test_case) {
  const Outputs<float> first = test_case.template run<float>(1);
  for (int threads : {1, 2, 3, 4}) {
    const Outputs<float> again = test_case.template run<float>(threads);
    for (const auto& [name, values] : first) {
      INFO(name << " with " << threads << " threads");
      CHECK(bitwise_equal(again.at(name), values));
    }
  }
}

// ---- linear ----------------------------------------------------------------------------------------

struct LinearCase {
  ops::LinearShape shape;
  Vec x, weight, bias, dy, dweight_prior, dbias_prior;

  LinearCase(int64_t rows, int64_t in, int64_t out, uint64_t seed) : shape{rows, in, out} {
    x = random_vec(rows * in, seed);
    weight = random_vec(out * in, seed + 1);
    bias = random_vec(out, seed + 2);
    dy = random_vec(rows * out, seed + 3);
    dweight_prior = random_vec(out * in, seed + 4);
    dbias_prior = random_vec(out, seed + 5);
  }
  template <class T>
  std::vector<T> forward(int threads) const {
    Context ctx(threads);
    std::vector<T> y = poisoned<T>(shape.rows * shape.out_features);
    cpu::linear_forward<T>(ctx, shape, cast<T>(x).data(), cast<T>(weight).data(), cast<T>(bias).data(), y.data());
    return y;
  }
  template <class T>
  Outputs<T> run(int threads) const {
    Context ctx(threads);
    std::vector<T> dx = poisoned<T>(x.size()), dweight = cast<T>(dweight_prior), dbias = cast<T>(dbias_prior);
    cpu::linear_backward<T>(ctx, shape, cast<T>(dy).data(), cast<T>(x).data(), cast<T>(weight).data(), dx.data(),
                            dweight.data(), dbias.data());
    return {{"y", forward<T>(threads)},
            {"dx", dx},
            {"dweight", minus_prior(dweight, dweight_prior)},
            {"dbias", minus_prior(dbias, dbias_prior)}};
  }
  Probe probe() const {
    return {dy, [this] { return forward<double>(1); }};
  }
};

TEST_CASE("linear: forward matches naive and gradients match finite differences") {
  LinearCase c(7, 5, 3, 11);
  const Outputs<double> out = c.run<double>(2);
  check_all_finite(out);
  Vec naive(c.dy.size());
  for (int64_t r = 0; r < 7; ++r)
    for (int64_t o = 0; o < 3; ++o) {
      double sum = c.bias[o];
      for (int64_t i = 0; i < 5; ++i) sum += c.x[r * 5 + i] * c.weight[o * 5 + i];
      naive[r * 3 + o] = sum;
    }
  CHECK(max_relative_difference(out.at("y"), naive) < 1e-14);
  check_gradient("linear dx", c.x, out.at("dx"), c.probe());
  check_gradient("linear dweight", c.weight, out.at("dweight"), c.probe());
  check_gradient("linear dbias", c.bias, out.at("dbias"), c.probe());
  check_float_matches_double(c);
}

TEST_CASE("linear: accumulate mode adds onto dx and a null bias is skipped") {
  LinearCase c(5, 4, 3, 21);
  const Outputs<double> out = c.run<double>(1);
  Context ctx(1);
  Vec dx = random_vec(c.x.size(), 99);
  const Vec prior = dx;
  cpu::linear_backward<double>(ctx, c.shape, c.dy.data(), c.x.data(), c.weight.data(), dx.data(), nullptr, nullptr,
                               ops::InputGrad::kAccumulate);
  for (size_t i = 0; i < dx.size(); ++i) CHECK(dx[i] == Approx(prior[i] + out.at("dx")[i]).epsilon(1e-13));

  Vec y(5 * 3, kNaN);
  cpu::linear_forward<double>(ctx, c.shape, c.x.data(), c.weight.data(), nullptr, y.data());
  for (size_t i = 0; i < y.size(); ++i) CHECK(y[i] == Approx(out.at("y")[i] - c.bias[i % 3]).epsilon(1e-13));
}

TEST_CASE("linear: wide shape: sampled finite differences and deterministic for any thread count") {
  LinearCase c(333, 9, 70, 31);
  const Outputs<double> out = c.run<double>(3);
  check_all_finite(out);
  auto loss = c.probe();
  check_gradient_sampled("wide linear dx", c.x, out.at("dx"), loss, 24, 1);
  check_gradient_sampled("wide linear dweight", c.weight, out.at("dweight"), loss, 24, 2);
  check_gradient_sampled("wide linear dbias", c.bias, out.at("dbias"), loss, 24, 3);
  check_deterministic(c);
}

// y and dy rows `stride` apart (the MLM decoder's padded logits): the same values as dense, and the
// padding between rows neither read (it holds NaN in dy) nor written (a sentinel in y survives).
TEST_CASE("linear: rows of y and dy out_stride apart give the dense results and leave the padding") {
  const int64_t rows = 13, in = 6, out = 11, stride = 16;
  LinearCase c(rows, in, out, 41);
  const Outputs<double> dense = c.run<double>(2);
  ops::LinearShape strided = c.shape;
  strided.out_stride = stride;
  constexpr double kSentinel = 12345.0;
  Vec y(static_cast<size_t>(rows * stride), kSentinel), dy(static_cast<size_t>(rows * stride), kNaN);
  for (int64_t r = 0; r < rows; ++r) std::copy_n(c.dy.begin() + r * out, out, dy.begin() + r * stride);
  Context ctx(2);
  cpu::linear_forward<double>(ctx, strided, c.x.data(), c.weight.data(), c.bias.data(), y.data());
  Vec dx(c.x.size(), kNaN), dweight = c.dweight_prior, dbias = c.dbias_prior;
  cpu::linear_backward<double>(ctx, strided, dy.data(), c.x.data(), c.weight.data(), dx.data(), dweight.data(),
                               dbias.data());
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < stride; ++j) {
      const double got = y[static_cast<size_t>(r * stride + j)];
      INFO("y row " << r << " column " << j);
      if (j < out)
        CHECK(got == Approx(dense.at("y")[static_cast<size_t>(r * out + j)]).epsilon(1e-14));
      else
        CHECK(got == kSentinel);
    }
  CHECK(max_relative_difference(dx, dense.at("dx")) < 1e-14);
  CHECK(max_relative_difference(minus_prior(dweight, c.dweight_prior), dense.at("dweight")) < 1e-14);
  CHECK(max_relative_difference(minus_prior(dbias, c.dbias_prior), dense.at("dbias")) < 1e-14);
  strided.out_stride = out - 1;  // below out_features: refused
  CHECK_THROWS_AS(cpu::linear_forward<double>(ctx, strided, c.x.data(), c.weight.data(), nullptr, y.data()),
                  std::invalid_argument);
}

// ---- LayerNorm and residual + LayerNorm --------------------------------------------------------------

struct LayerNormCase {
  ops::MatrixShape shape;
  bool with_residual;
  double eps = 1e-12;
  Vec x, residual, gamma, beta, dy, dgamma_prior, dbeta_prior;

  LayerNormCase(int64_t rows, int64_t cols, bool residual_input, uint64_t seed)
      : shape{rows, cols}, with_residual(residual_input) {
    x = random_vec(rows * cols, seed, -2, 2);
    residual = random_vec(rows * cols, seed + 1);
    gamma = random_vec(cols, seed + 2, 0.5, 1.5);
    beta = random_vec(cols, seed + 3);
    dy = random_vec(rows * cols, seed + 4);
    dgamma_prior = random_vec(cols, seed + 5);
    dbeta_prior = random_vec(cols, seed + 6);
  }
  template <class T>
  Outputs<T> forward(int threads) const {
    Context ctx(threads);
    std::vector<T> y = poisoned<T>(x.size()), mean = poisoned<T>(shape.rows), rstd = poisoned<T>(shape.rows);
    if (with_residual)
      cpu::residual_layernorm_forward<T>(ctx, shape, cast<T>(x).data(), cast<T>(residual).data(), cast<T>(gamma).data(),
                                         cast<T>(beta).data(), static_cast<T>(eps), y.data(), mean.data(), rstd.data());
    else
      cpu::layernorm_forward<T>(ctx, shape, cast<T>(x).data(), cast<T>(gamma).data(), cast<T>(beta).data(),
                                static_cast<T>(eps), y.data(), mean.data(), rstd.data());
    return {{"y", y}, {"mean", mean}, {"rstd", rstd}};
  }
  template <class T>
  Outputs<T> run(int threads) const {
    Outputs<T> out = forward<T>(threads);
    Context ctx(threads);
    std::vector<T> dx = poisoned<T>(x.size()), dgamma = cast<T>(dgamma_prior), dbeta = cast<T>(dbeta_prior);
    if (with_residual)
      cpu::residual_layernorm_backward<T>(ctx, shape, cast<T>(dy).data(), cast<T>(x).data(), cast<T>(residual).data(),
                                          cast<T>(gamma).data(), out.at("mean").data(), out.at("rstd").data(),
                                          dx.data(), dgamma.data(), dbeta.data());
    else
      cpu::layernorm_backward<T>(ctx, shape, cast<T>(dy).data(), cast<T>(x).data(), cast<T>(gamma).data(),
                                 out.at("mean").data(), out.at("rstd").data(), dx.data(), dgamma.data(), dbeta.data());
    out["dx"] = dx;
    out["dgamma"] = minus_prior(dgamma, dgamma_prior);
    out["dbeta"] = minus_prior(dbeta, dbeta_prior);
    return out;
  }
  Probe probe() const {
    return {dy, [this] { return forward<double>(1).at("y"); }};
  }
};

void check_layernorm_case(LayerNormCase& c) {
  const Outputs<double> out = c.run<double>(2);
  check_all_finite(out);
  const int64_t rows = c.shape.rows, cols = c.shape.cols;
  Vec naive(rows * cols);
  for (int64_t r = 0; r < rows; ++r) {
    Vec z(cols);
    double mean = 0, variance = 0;
    for (int64_t j = 0; j < cols; ++j) {
      z[j] = c.x[r * cols + j] + (c.with_residual ? c.residual[r * cols + j] : 0.0);
      mean += z[j] / cols;
    }
    for (int64_t j = 0; j < cols; ++j) variance += (z[j] - mean) * (z[j] - mean) / cols;
    for (int64_t j = 0; j < cols; ++j)
      naive[r * cols + j] = (z[j] - mean) / std::sqrt(variance + c.eps) * c.gamma[j] + c.beta[j];
  }
  CHECK(max_relative_difference(out.at("y"), naive) < 1e-13);
  check_gradient("layernorm dx", c.x, out.at("dx"), c.probe());
  if (c.with_residual) check_gradient("layernorm dresidual", c.residual, out.at("dx"), c.probe());
  check_gradient("layernorm dgamma", c.gamma, out.at("dgamma"), c.probe());
  check_gradient("layernorm dbeta", c.beta, out.at("dbeta"), c.probe());
  check_float_matches_double(c);
}

TEST_CASE("layernorm: forward matches naive and gradients match finite differences") {
  LayerNormCase c(7, 6, false, 41);
  check_layernorm_case(c);
}

TEST_CASE("residual_layernorm: forward matches naive and gradients match finite differences") {
  LayerNormCase c(5, 7, true, 51);
  check_layernorm_case(c);
}

TEST_CASE("layernorm: wide shape: sampled finite differences and deterministic for any thread count") {
  for (bool with_residual : {false, true}) {
    LayerNormCase c(333, 70, with_residual, with_residual ? 71 : 61);
    const Outputs<double> out = c.run<double>(3);
    check_all_finite(out);
    auto loss = c.probe();
    check_gradient_sampled("wide layernorm dx", c.x, out.at("dx"), loss, 24, 1);
    if (with_residual) check_gradient_sampled("wide layernorm dresidual", c.residual, out.at("dx"), loss, 24, 2);
    check_gradient_sampled("wide layernorm dgamma", c.gamma, out.at("dgamma"), loss, 24, 3);
    check_gradient_sampled("wide layernorm dbeta", c.beta, out.at("dbeta"), loss, 24, 4);
    check_deterministic(c);
  }
}

// ---- embeddings + LayerNorm --------------------------------------------------------------------------

struct EmbeddingCase {
  ops::EmbeddingShape shape;
  bool with_token_types = true;
  double eps = 1e-12;
  std::vector<int32_t> input_ids, token_type_ids;
  Vec word, position, type, gamma, beta, dout;
  Vec dword_prior, dposition_prior, dtype_prior, dgamma_prior, dbeta_prior;

  EmbeddingCase(int64_t batch, int64_t seq_len, int64_t hidden, int64_t vocab, uint64_t seed) {
    shape = ops::EmbeddingShape{batch, seq_len, hidden, vocab, seq_len + 3, 2, /*padding_idx=*/0};
    std::mt19937_64 generator(seed);
    for (int64_t t = 0; t < shape.tokens(); ++t) {
      const int64_t s = t % seq_len;
      // The second half of the last sequence is padding (id 0, the padding_idx).
      const bool pad = t / seq_len == batch - 1 && s >= seq_len / 2;
      input_ids.push_back(pad ? 0 : static_cast<int32_t>(generator() % vocab));
      token_type_ids.push_back(s >= seq_len / 3 && !pad ? 1 : 0);
    }
    word = random_vec(vocab * hidden, seed + 1);
    position = random_vec(shape.max_position_embeddings * hidden, seed + 2);
    type = random_vec(2 * hidden, seed + 3);
    gamma = random_vec(hidden, seed + 4, 0.5, 1.5);
    beta = random_vec(hidden, seed + 5);
    dout = random_vec(shape.tokens() * hidden, seed + 6);
    dword_prior = random_vec(word.size(), seed + 7);
    dposition_prior = random_vec(position.size(), seed + 8);
    dtype_prior = random_vec(type.size(), seed + 9);
    dgamma_prior = random_vec(hidden, seed + 10);
    dbeta_prior = random_vec(hidden, seed + 11);
  }
  const int32_t* types() const { return with_token_types ? token_type_ids.data() : nullptr; }
  template <class T>
  Outputs<T> forward(int threads) const {
    Context ctx(threads);
    const int64_t tokens = shape.tokens();
    std::vector<T> out = poisoned<T>(tokens * shape.hidden), mean = poisoned<T>(tokens), rstd = poisoned<T>(tokens);
    cpu::embeddings_layernorm_forward<T>(
        ctx, shape, input_ids.data(), types(), cast<T>(word).data(), cast<T>(position).data(), cast<T>(type).data(),
        cast<T>(gamma).data(), cast<T>(beta).data(), static_cast<T>(eps), out.data(), mean.data(), rstd.data());
    return {{"out", out}, {"mean", mean}, {"rstd", rstd}};
  }
  template <class T>
  Outputs<T> run(int threads) const {
    Outputs<T> out = forward<T>(threads);
    Context ctx(threads);
    std::vector<T> dword = cast<T>(dword_prior), dposition = cast<T>(dposition_prior), dtype = cast<T>(dtype_prior);
    std::vector<T> dgamma = cast<T>(dgamma_prior), dbeta = cast<T>(dbeta_prior);
    cpu::embeddings_layernorm_backward<T>(ctx, shape, cast<T>(dout).data(), input_ids.data(), types(),
                                          cast<T>(word).data(), cast<T>(position).data(), cast<T>(type).data(),
                                          cast<T>(gamma).data(), out.at("mean").data(), out.at("rstd").data(),
                                          dword.data(), dposition.data(), dtype.data(), dgamma.data(), dbeta.data());
    out["dword"] = minus_prior(dword, dword_prior);
    out["dposition"] = minus_prior(dposition, dposition_prior);
    out["dtype"] = minus_prior(dtype, dtype_prior);
    out["dgamma"] = minus_prior(dgamma, dgamma_prior);
    out["dbeta"] = minus_prior(dbeta, dbeta_prior);
    return out;
  }
  Probe probe() const {
    return {dout, [this] { return forward<double>(1).at("out"); }};
  }
};

TEST_CASE("embeddings_layernorm: forward matches naive and gradients match finite differences") {
  EmbeddingCase c(2, 5, 6, 7, 81);
  const Outputs<double> out = c.run<double>(2);
  check_all_finite(out);
  const int64_t hidden = 6;
  Vec naive(c.dout.size());
  for (int64_t t = 0; t < c.shape.tokens(); ++t) {
    Vec z(hidden);
    double mean = 0, variance = 0;
    for (int64_t j = 0; j < hidden; ++j) {
      z[j] = c.word[c.input_ids[t] * hidden + j] + c.type[c.token_type_ids[t] * hidden + j] +
             c.position[(t % 5) * hidden + j];
      mean += z[j] / hidden;
    }
    for (int64_t j = 0; j < hidden; ++j) variance += (z[j] - mean) * (z[j] - mean) / hidden;
    for (int64_t j = 0; j < hidden; ++j)
      naive[t * hidden + j] = (z[j] - mean) / std::sqrt(variance + c.eps) * c.gamma[j] + c.beta[j];
  }
  CHECK(max_relative_difference(out.at("out"), naive) < 1e-13);

  // The padding row gets no gradient (nn.Embedding(padding_idx)); finite differences would see it.
  std::vector<size_t> padding_row;
  for (int64_t j = 0; j < hidden; ++j) {
    padding_row.push_back(static_cast<size_t>(j));
    CHECK(out.at("dword")[j] == 0.0);
  }
  check_gradient("embeddings dword", c.word, out.at("dword"), c.probe(), padding_row);
  check_gradient("embeddings dposition", c.position, out.at("dposition"), c.probe());
  check_gradient("embeddings dtype", c.type, out.at("dtype"), c.probe());
  check_gradient("embeddings dgamma", c.gamma, out.at("dgamma"), c.probe());
  check_gradient("embeddings dbeta", c.beta, out.at("dbeta"), c.probe());
  check_float_matches_double(c);

  // Without token types every token uses type row 0.
  EmbeddingCase untyped = c;
  untyped.with_token_types = false;
  std::fill(c.token_type_ids.begin(), c.token_type_ids.end(), 0);
  CHECK(bitwise_equal(untyped.run<double>(1).at("out"), c.run<double>(1).at("out")));
  CHECK(bitwise_equal(untyped.run<double>(1).at("dtype"), c.run<double>(1).at("dtype")));
}

TEST_CASE("embeddings_layernorm: out-of-range ids are rejected") {
  EmbeddingCase c(2, 5, 6, 7, 91);
  c.input_ids[3] = 7;
  CHECK_THROWS_AS(c.forward<double>(1), std::invalid_argument);
  c.input_ids[3] = 1;
  c.token_type_ids[4] = 2;
  CHECK_THROWS_AS(c.forward<double>(1), std::invalid_argument);
}

TEST_CASE("embeddings_layernorm: wide shape: sampled finite differences and deterministic for any thread count") {
  EmbeddingCase c(3, 111, 70, 50, 101);
  c.shape.padding_idx = -1;  // every row gets its true gradient
  const Outputs<double> out = c.run<double>(3);
  check_all_finite(out);
  auto loss = c.probe();
  check_gradient_sampled("wide embeddings dword", c.word, out.at("dword"), loss, 24, 1);
  check_gradient_sampled("wide embeddings dposition", c.position, out.at("dposition"), loss, 24, 2);
  check_gradient_sampled("wide embeddings dtype", c.type, out.at("dtype"), loss, 24, 3);
  check_gradient_sampled("wide embeddings dgamma", c.gamma, out.at("dgamma"), loss, 24, 4);
  check_gradient_sampled("wide embeddings dbeta", c.beta, out.at("dbeta"), loss, 24, 5);
  check_deterministic(c);
}

// ---- bias + GELU -------------------------------------------------------------------------------------

struct GeluCase {
  ops::GeluKind kind;
  ops::MatrixShape shape;
  Vec x, bias, dy, dbias_prior;

  GeluCase(ops::GeluKind gelu_kind, int64_t rows, int64_t cols, uint64_t seed) : kind(gelu_kind), shape{rows, cols} {
    x = random_vec(rows * cols, seed, -3, 3);
    bias = random_vec(cols, seed + 1);
    dy = random_vec(rows * cols, seed + 2);
    dbias_prior = random_vec(cols, seed + 3);
  }
  template <class T>
  std::vector<T> forward(int threads) const {
    Context ctx(threads);
    std::vector<T> y = poisoned<T>(x.size());
    cpu::bias_gelu_forward<T>(ctx, kind, shape, cast<T>(x).data(), cast<T>(bias).data(), y.data());
    return y;
  }
  template <class T>
  Outputs<T> run(int threads) const {
    Context ctx(threads);
    std::vector<T> dx = poisoned<T>(x.size()), dbias = cast<T>(dbias_prior);
    cpu::bias_gelu_backward<T>(ctx, kind, shape, cast<T>(dy).data(), cast<T>(x).data(), cast<T>(bias).data(), dx.data(),
                               dbias.data());
    return {{"y", forward<T>(threads)}, {"dx", dx}, {"dbias", minus_prior(dbias, dbias_prior)}};
  }
  Probe probe() const {
    return {dy, [this] { return forward<double>(1); }};
  }
};

TEST_CASE("bias_gelu: erf and tanh forms match HF formulas and gradients match finite differences") {
  Context ctx(1);
  const double one = 1.0;
  double y = 0;
  cpu::bias_gelu_forward<double>(ctx, ops::GeluKind::kErf, {1, 1}, &one, nullptr, &y);
  CHECK(y == Approx(0.8413447460685429).epsilon(1e-15));  // Phi(1)
  cpu::bias_gelu_forward<double>(ctx, ops::GeluKind::kTanh, {1, 1}, &one, nullptr, &y);
  CHECK(y == Approx(0.8411919906082768).epsilon(1e-15));

  for (ops::GeluKind kind : {ops::GeluKind::kErf, ops::GeluKind::kTanh}) {
    GeluCase c(kind, 5, 7, 111);
    const Outputs<double> out = c.run<double>(2);
    check_all_finite(out);
    Vec naive(c.x.size());
    for (size_t i = 0; i < naive.size(); ++i) {
      const double z = c.x[i] + c.bias[i % 7];
      naive[i] = kind == ops::GeluKind::kErf
                     ? 0.5 * z * (1 + std::erf(z / std::sqrt(2.0)))
                     : 0.5 * z * (1 + std::tanh(std::sqrt(2 / std::numbers::pi) * (z + 0.044715 * z * z * z)));
    }
    CHECK(max_relative_difference(out.at("y"), naive) < 1e-14);
    check_gradient("gelu dx", c.x, out.at("dx"), c.probe());
    check_gradient("gelu dbias", c.bias, out.at("dbias"), c.probe());
    check_float_matches_double(c);
  }
}

TEST_CASE("bias_gelu: wide shape: sampled finite differences and deterministic for any thread count") {
  GeluCase c(ops::GeluKind::kErf, 333, 70, 121);
  const Outputs<double> out = c.run<double>(3);
  check_all_finite(out);
  auto loss = c.probe();
  check_gradient_sampled("wide gelu dx", c.x, out.at("dx"), loss, 24, 1);
  check_gradient_sampled("wide gelu dbias", c.bias, out.at("dbias"), loss, 24, 2);
  check_deterministic(c);
}

// ---- attention ---------------------------------------------------------------------------------------

// Sequences: 0 unpadded, 1 with its last keys padded, 2 (when batch = 3) entirely padding.
struct AttentionCase {
  ops::AttentionShape shape;
  bool fused;  // q/k/v interleaved in one [tokens, 3*hidden] buffer, else three [tokens, hidden] blocks
  ops::DropoutSpec dropout;
  std::vector<int32_t> mask;
  Vec qkv, dcontext;

  AttentionCase(int64_t batch, int64_t seq_len, int64_t heads, int64_t head_dim, bool fused_qkv, float dropout_p,
                uint64_t seed)
      : fused(fused_qkv) {
    shape = ops::AttentionShape{batch, seq_len, heads, head_dim, 0};
    const int64_t hidden = heads * head_dim;
    shape.qkv_row_stride = fused ? 3 * hidden : hidden;
    dropout = ops::DropoutSpec{dropout_p, seed * 7 + 1, 42};
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t s = 0; s < seq_len; ++s) mask.push_back(b == 0 ? 1 : b == 1 ? (s < seq_len - 2 ? 1 : 0) : 0);
    qkv = random_vec(3 * shape.tokens() * hidden, seed, -1.5, 1.5);
    dcontext = random_vec(shape.tokens() * hidden, seed + 1);
  }
  int64_t hidden() const { return shape.hidden(); }
  // Offsets of q, k, v inside the qkv buffer.
  int64_t offset(int which) const { return fused ? which * hidden() : which * shape.tokens() * hidden(); }
  double q_at(int which, int64_t token, int64_t column) const {
    return qkv[offset(which) + token * shape.qkv_row_stride + column];
  }

  template <class T>
  Outputs<T> forward(int threads) const {
    Context ctx(threads);
    const std::vector<T> input = cast<T>(qkv);
    std::vector<T> context = poisoned<T>(shape.tokens() * hidden());
    std::vector<T> logsumexp = poisoned<T>(shape.batch * shape.num_heads * shape.seq_len);
    cpu::attention_forward<T>(ctx, shape, input.data() + offset(0), input.data() + offset(1), input.data() + offset(2),
                              mask.data(), dropout, context.data(), logsumexp.data());
    return {{"context", context}, {"logsumexp", logsumexp}};
  }
  template <class T>
  Outputs<T> run(int threads) const {
    Outputs<T> out = forward<T>(threads);
    Context ctx(threads);
    const std::vector<T> input = cast<T>(qkv);
    std::vector<T> dqkv = poisoned<T>(qkv.size());
    cpu::attention_backward<T>(ctx, shape, cast<T>(dcontext).data(), input.data() + offset(0), input.data() + offset(1),
                               input.data() + offset(2), mask.data(), dropout, out.at("context").data(),
                               out.at("logsumexp").data(), dqkv.data() + offset(0), dqkv.data() + offset(1),
                               dqkv.data() + offset(2));
    out["dqkv"] = dqkv;
    return out;
  }
  Probe probe() const {
    return {dcontext, [this] { return forward<double>(1).at("context"); }};
  }

  // HF BertSelfAttention in double: scores + (1 - mask) * finfo.min, softmax, dropout, times V.
  Vec naive_context() const {
    const int64_t batch = shape.batch, seq_len = shape.seq_len, heads = shape.num_heads, head_dim = shape.head_dim;
    const double finfo_min = std::numeric_limits<double>::lowest();
    Vec context(shape.tokens() * hidden(), 0.0);
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t h = 0; h < heads; ++h)
        for (int64_t i = 0; i < seq_len; ++i) {
          Vec scores(seq_len);
          for (int64_t j = 0; j < seq_len; ++j) {
            double sum = 0;
            for (int64_t d = 0; d < head_dim; ++d)
              sum += q_at(0, b * seq_len + i, h * head_dim + d) * q_at(1, b * seq_len + j, h * head_dim + d);
            scores[j] = sum / std::sqrt(static_cast<double>(head_dim)) + (1.0 - mask[b * seq_len + j]) * finfo_min;
          }
          const double max_score = *std::max_element(scores.begin(), scores.end());
          double total = 0;
          for (double& score : scores) total += (score = std::exp(score - max_score));
          for (int64_t j = 0; j < seq_len; ++j) {
            double probability = scores[j] / total;
            if (dropout.probability > 0) {
              const uint64_t index = static_cast<uint64_t>(((b * heads + h) * seq_len + i) * seq_len + j);
              probability *= ops::dropout_keep(dropout, index) ? 1.0 / (1.0 - dropout.probability) : 0.0;
            }
            for (int64_t d = 0; d < head_dim; ++d)
              context[(b * seq_len + i) * hidden() + h * head_dim + d] +=
                  probability * q_at(2, b * seq_len + j, h * head_dim + d);
          }
        }
    return context;
  }
};

void check_attention_case(AttentionCase& c) {
  const Outputs<double> out = c.run<double>(2);
  check_all_finite(out);
  CHECK(max_relative_difference(out.at("context"), c.naive_context()) < 1e-13);
  check_gradient("attention dqkv", c.qkv, out.at("dqkv"), c.probe());
  check_float_matches_double(c);
}

// Attention's two implementations (kernels/cpu/attention.cpp): per-head loops, and per-head BLAS
// GEMMs (the default with OpenBLAS's OpenMP build). Each test runs on both; `run(uses_blas)`.
void for_both_attention_paths(const std::function<void(bool)>& run) {
  for (const bool blas : {false, true}) {
    INFO((blas ? "BLAS GEMM" : "loop") << " attention");
    cpu::detail::set_attention_blas(blas ? 1 : 0);
    run(blas);
  }
  cpu::detail::set_attention_blas(-1);
}

TEST_CASE("attention: both implementations give the same results, and the BLAS one is the default where it runs") {
  AttentionCase c(3, 33, 2, 8, true, 0.2f, 191);
  cpu::detail::set_attention_blas(0);
  const Outputs<double> loops = c.run<double>(2);
  const Outputs<float> loops_float = c.run<float>(2);
  cpu::detail::set_attention_blas(1);
  const Outputs<double> gemms = c.run<double>(2);
  const Outputs<float> gemms_float = c.run<float>(2);
  cpu::detail::set_attention_blas(-1);
  for (const char* name : {"context", "logsumexp", "dqkv"}) {
    INFO(name);
    CHECK(max_relative_difference(gemms.at(name), loops.at(name)) < 1e-12);
    const std::vector<float>&a = gemms_float.at(name), &b = loops_float.at(name);
    CHECK(max_relative_difference(Vec(a.begin(), a.end()), Vec(b.begin(), b.end())) < 1e-4);
  }
  // BERT's head shape (S 128, D 64: OpenBLAS's packed GEMM path rather than its small-matrix
  // kernels), and the same bits for any thread count.
  AttentionCase bert(2, 128, 2, 64, true, 0.1f, 193);
  cpu::detail::set_attention_blas(0);
  const Outputs<float> bert_loops = bert.run<float>(2);
  cpu::detail::set_attention_blas(1);
  const Outputs<float> bert_one = bert.run<float>(1), bert_three = bert.run<float>(3);
  cpu::detail::set_attention_blas(-1);
  for (const char* name : {"context", "logsumexp", "dqkv"}) {
    INFO("BERT shape: " << name);
    CHECK(bert_one.at(name) == bert_three.at(name));
    const std::vector<float>&a = bert_one.at(name), &b = bert_loops.at(name);
    CHECK(max_relative_difference(Vec(a.begin(), a.end()), Vec(b.begin(), b.end())) < 1e-4);
  }
  // Installed by scripts/setup.sh (CMakeLists.txt prefers it): then attention uses BLAS by default.
  if (!cpu::detail::attention_uses_blas()) WARN("this build's BLAS is not OpenBLAS for OpenMP: attention uses loops");
}

TEST_CASE("attention: separate q/k/v with padding and a fully padded sequence and no dropout") {
  for_both_attention_paths([](bool) {
    AttentionCase c(3, 5, 2, 3, false, 0.0f, 131);
    check_attention_case(c);

    // The fully padded sequence (b = 2) attends uniformly: context = mean of its V rows, and the
    // scores get no gradient. Its logsumexp is log(seq_len).
    const Outputs<double> out = c.run<double>(1);
    for (int64_t i = 0; i < 5; ++i)
      for (int64_t column = 0; column < 6; ++column) {
        double mean = 0;
        for (int64_t j = 0; j < 5; ++j) mean += c.q_at(2, 10 + j, column) / 5;
        CHECK(out.at("context")[(10 + i) * 6 + column] == Approx(mean).epsilon(1e-14));
        CHECK(out.at("dqkv")[c.offset(0) + (10 + i) * 6 + column] == 0.0);
        CHECK(out.at("dqkv")[c.offset(1) + (10 + i) * 6 + column] == 0.0);
      }
    for (int64_t h = 0; h < 2; ++h)
      for (int64_t i = 0; i < 5; ++i) CHECK(out.at("logsumexp")[(2 * 2 + h) * 5 + i] == Approx(std::log(5.0)));
    // Padded keys of sequence 1 get no gradient through k or v.
    for (int64_t j = 3; j < 5; ++j)
      for (int64_t column = 0; column < 6; ++column) {
        CHECK(out.at("dqkv")[c.offset(1) + (5 + j) * 6 + column] == 0.0);
        CHECK(out.at("dqkv")[c.offset(2) + (5 + j) * 6 + column] == 0.0);
      }
  });
}

TEST_CASE("attention: fused q/k/v rows of 3*hidden with dropout regenerated in backward") {
  // With a fixed DropoutSpec the op is a smooth function of q/k/v, so finite differences only
  // agree if backward applies exactly the forward's mask; the naive forward uses the documented
  // element index ((b*H + h)*S + i)*S + j.
  for_both_attention_paths([](bool) {
    AttentionCase c(3, 5, 2, 3, true, 0.3f, 141);
    check_attention_case(c);
    AttentionCase no_mask_rows(2, 4, 3, 2, true, 0.0f, 151);
    check_attention_case(no_mask_rows);
  });
}

TEST_CASE("attention: wide shape: sampled finite differences and deterministic for any thread count") {
  for_both_attention_paths([](bool) {
    AttentionCase c(3, 17, 4, 8, true, 0.1f, 161);
    const Outputs<double> out = c.run<double>(3);
    check_all_finite(out);
    CHECK(max_relative_difference(out.at("context"), c.naive_context()) < 1e-13);
    check_gradient_sampled("wide attention dqkv", c.qkv, out.at("dqkv"), c.probe(), 48, 1);
    check_deterministic(c);
  });
}

TEST_CASE("attention: a row stride below hidden is rejected") {
  AttentionCase c(1, 3, 2, 2, false, 0.0f, 171);
  c.shape.qkv_row_stride = 3;
  CHECK_THROWS_AS(c.forward<double>(1), std::invalid_argument);
}

// ---- dropout ------------------------------------------------------------------------------------------

TEST_CASE("philox4x32_10 matches the Random123 known-answer vectors") {
  const ops::Philox4x32Result zeros = ops::philox4x32_10(0, 0, 0, 0, 0, 0);
  CHECK(zeros.word[0] == 0x6627e8d5u);
  CHECK(zeros.word[1] == 0xe169c58du);
  CHECK(zeros.word[2] == 0xbc57ac4cu);
  CHECK(zeros.word[3] == 0x9b00dbd8u);
  const ops::Philox4x32Result ones =
      ops::philox4x32_10(0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu);
  CHECK(ones.word[0] == 0x408f276du);
  CHECK(ones.word[1] == 0x41c83b0eu);
  CHECK(ones.word[2] == 0xa20bc7c6u);
  CHECK(ones.word[3] == 0x6d5451fdu);
  const ops::Philox4x32Result pi =
      ops::philox4x32_10(0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u, 0xa4093822u, 0x299f31d0u);
  CHECK(pi.word[0] == 0xd16cfe09u);
  CHECK(pi.word[1] == 0x94fdccebu);
  CHECK(pi.word[2] == 0x5001e420u);
  CHECK(pi.word[3] == 0x24126ea1u);
}

TEST_CASE("dropout: backward uses the forward mask and the keep rate is within binomial bounds") {
  for (float probability : {0.1f, 0.5f}) {
    const int64_t n = int64_t{1} << 20;
    const ops::DropoutSpec spec{probability, 1234, 7};
    const std::vector<float> x = cast<float>(random_vec(n, 181, 0.5, 1.5));  // never 0
    const std::vector<float> dy = cast<float>(random_vec(n, 182, 0.5, 1.5));
    Context ctx(2);
    std::vector<float> y = poisoned<float>(n), dx = poisoned<float>(n);
    cpu::dropout_forward<float>(ctx, n, spec, x.data(), y.data());
    cpu::dropout_backward<float>(ctx, n, spec, dy.data(), dx.data());
    const float scale = 1.0f / (1.0f - probability);
    int64_t kept = 0, mismatches = 0;
    for (int64_t i = 0; i < n; ++i) {
      const bool keep = ops::dropout_keep(spec, static_cast<uint64_t>(i));
      kept += keep;
      mismatches += y[i] != (keep ? x[i] * scale : 0.0f) || dx[i] != (keep ? dy[i] * scale : 0.0f);
    }
    CHECK(mismatches == 0);
    const double expected = n * (1.0 - probability), sigma = std::sqrt(n * probability * (1.0 - probability));
    INFO("p = " << probability << ": kept " << kept << ", expected " << expected << " +- " << sigma);
    CHECK(std::abs(kept - expected) < 5 * sigma);

    // Same spec, other thread count, in place: the same bits. Another offset: another mask.
    std::vector<float> in_place = x;
    Context one_thread(1);
    cpu::dropout_forward<float>(one_thread, n, spec, in_place.data(), in_place.data());
    CHECK(bitwise_equal(in_place, y));
    std::vector<float> other(n);
    cpu::dropout_forward<float>(ctx, n, ops::DropoutSpec{probability, 1234, 8}, x.data(), other.data());
    int64_t differing = 0;
    for (int64_t i = 0; i < n; ++i) differing += (other[i] == 0.0f) != (y[i] == 0.0f);
    CHECK(differing > n * probability * (1 - probability));  // ~2p(1-p)n expected for independent masks
  }
}

TEST_CASE("dropout: p = 0 is the identity and gradients match finite differences") {
  Context ctx(1);
  const Vec x = random_vec(37, 191);
  Vec y(37, kNaN);
  cpu::dropout_forward<double>(ctx, 37, ops::DropoutSpec{0.0f, 1, 2}, x.data(), y.data());
  CHECK(bitwise_equal(y, x));

  const ops::DropoutSpec spec{0.4f, 99, 3};
  Vec input = random_vec(37, 192);
  const Vec dy = random_vec(37, 193);
  Vec dx(37, kNaN);
  cpu::dropout_backward<double>(ctx, 37, spec, dy.data(), dx.data());
  CHECK(all_finite(dx));
  check_gradient("dropout dx", input, dx, Probe{dy, [&] {
                                                  Context inner(1);
                                                  Vec out(37, kNaN);
                                                  cpu::dropout_forward<double>(inner, 37, spec, input.data(),
                                                                               out.data());
                                                  return out;
                                                }});
  CHECK_THROWS_AS(cpu::dropout_forward<double>(ctx, 37, ops::DropoutSpec{1.0f, 1, 2}, x.data(), y.data()),
                  std::invalid_argument);
}

// ---- pooler -----------------------------------------------------------------------------------------

struct PoolerCase {
  ops::PoolerShape shape;
  Vec encoder_out, weight, bias, dpooled, dencoder_prior, dweight_prior, dbias_prior;

  PoolerCase(int64_t batch, int64_t seq_len, int64_t hidden, uint64_t seed) : shape{batch, seq_len, hidden} {
    encoder_out = random_vec(batch * seq_len * hidden, seed);
    weight = random_vec(hidden * hidden, seed + 1);
    bias = random_vec(hidden, seed + 2);
    dpooled = random_vec(batch * hidden, seed + 3);
    dencoder_prior = random_vec(encoder_out.size(), seed + 4);
    dweight_prior = random_vec(weight.size(), seed + 5);
    dbias_prior = random_vec(hidden, seed + 6);
  }
  template <class T>
  std::vector<T> forward(int threads) const {
    Context ctx(threads);
    std::vector<T> pooled = poisoned<T>(shape.batch * shape.hidden);
    cpu::pooler_forward<T>(ctx, shape, cast<T>(encoder_out).data(), cast<T>(weight).data(), cast<T>(bias).data(),
                           pooled.data());
    return pooled;
  }
  template <class T>
  Outputs<T> run(int threads) const {
    const std::vector<T> pooled = forward<T>(threads);
    Context ctx(threads);
    std::vector<T> dencoder = cast<T>(dencoder_prior), dweight = cast<T>(dweight_prior), dbias = cast<T>(dbias_prior);
    cpu::pooler_backward<T>(ctx, shape, cast<T>(dpooled).data(), cast<T>(encoder_out).data(), cast<T>(weight).data(),
                            pooled.data(), dencoder.data(), dweight.data(), dbias.data());
    return {{"pooled", pooled},
            {"dencoder", minus_prior(dencoder, dencoder_prior)},
            {"dweight", minus_prior(dweight, dweight_prior)},
            {"dbias", minus_prior(dbias, dbias_prior)}};
  }
  Probe probe() const {
    return {dpooled, [this] { return forward<double>(1); }};
  }
};

TEST_CASE("pooler: tanh(dense) on the CLS row matches naive and gradients match finite differences") {
  PoolerCase c(3, 4, 5, 201);
  const Outputs<double> out = c.run<double>(2);
  check_all_finite(out);
  Vec naive(15);
  for (int64_t b = 0; b < 3; ++b)
    for (int64_t o = 0; o < 5; ++o) {
      double sum = c.bias[o];
      for (int64_t i = 0; i < 5; ++i) sum += c.weight[o * 5 + i] * c.encoder_out[b * 4 * 5 + i];
      naive[b * 5 + o] = std::tanh(sum);
    }
  CHECK(max_relative_difference(out.at("pooled"), naive) < 1e-14);
  check_gradient("pooler dencoder", c.encoder_out, out.at("dencoder"), c.probe());
  check_gradient("pooler dweight", c.weight, out.at("dweight"), c.probe());
  check_gradient("pooler dbias", c.bias, out.at("dbias"), c.probe());
  // Rows other than [CLS] are left exactly as they were.
  for (int64_t t = 0; t < 12; ++t)
    if (t % 4 != 0)
      for (int64_t j = 0; j < 5; ++j) CHECK(out.at("dencoder")[t * 5 + j] == 0.0);
  check_float_matches_double(c);
}

TEST_CASE("gather_rows and scatter_add_rows: exact row copies and adds, any thread count") {
  const int64_t table_rows = 41, cols = 13;
  const Vec table = random_vec(static_cast<size_t>(table_rows * cols), 207);
  const std::vector<int32_t> rows = {40, 0, 17, 3, 29};  // distinct, unordered
  const int64_t n = static_cast<int64_t>(rows.size());
  for (const int threads : {1, 3}) {
    bert::cpu::Context ctx(threads);
    Vec gathered(static_cast<size_t>(n * cols), std::nan(""));
    bert::cpu::gather_rows<double>(ctx, n, cols, rows.data(), table.data(), gathered.data());
    for (int64_t i = 0; i < n; ++i)
      for (int64_t c = 0; c < cols; ++c) CHECK(gathered[i * cols + c] == table[rows[i] * cols + c]);
    Vec target = table;
    bert::cpu::scatter_add_rows<double>(ctx, n, cols, rows.data(), gathered.data(), target.data());
    for (int64_t r = 0; r < table_rows; ++r) {
      const bool picked = std::find(rows.begin(), rows.end(), r) != rows.end();
      for (int64_t c = 0; c < cols; ++c) CHECK(target[r * cols + c] == (picked ? 2 : 1) * table[r * cols + c]);
    }
  }
  bert::cpu::Context ctx(1);
  bert::cpu::gather_rows<double>(ctx, 0, cols, nullptr, nullptr, nullptr);  // nothing to do
  Vec out(static_cast<size_t>(2 * cols));
  CHECK_THROWS_AS(bert::cpu::gather_rows<double>(ctx, 2, cols, nullptr, table.data(), out.data()),
                  std::invalid_argument);
}

TEST_CASE("pooler: wide shape: sampled finite differences and deterministic for any thread count") {
  PoolerCase c(37, 3, 70, 205);
  const Outputs<double> out = c.run<double>(3);
  check_all_finite(out);
  auto loss = c.probe();
  check_gradient_sampled("wide pooler dencoder", c.encoder_out, out.at("dencoder"), loss, 24, 1);
  check_gradient_sampled("wide pooler dweight", c.weight, out.at("dweight"), loss, 24, 2);
  check_gradient_sampled("wide pooler dbias", c.bias, out.at("dbias"), loss, 24, 3);
  check_deterministic(c);
}

// ---- cross-entropy -------------------------------------------------------------------------------------

struct CrossEntropyCase {
  ops::LogitsShape shape;
  std::vector<int32_t> labels;
  Vec logits;
  double grad_scale = 0.75;
  Vec unit{1.0};

  CrossEntropyCase(int64_t rows, int64_t classes, uint64_t seed) : shape{rows, classes} {
    logits = random_vec(rows * classes, seed, -3, 3);
    std::mt19937_64 generator(seed + 1);
    for (int64_t r = 0; r < rows; ++r)
      labels.push_back(r % 3 == 1 ? ops::kIgnoreIndex : static_cast<int32_t>(generator() % classes));
  }
  template <class T>
  Outputs<T> run(int threads) const {
    Context ctx(threads);
    std::vector<T> dlogits = poisoned<T>(logits.size());
    const ops::CrossEntropyStats stats = cpu::softmax_cross_entropy<T>(
        ctx, shape, cast<T>(logits).data(), labels.data(), static_cast<T>(grad_scale), dlogits.data());
    return {{"dlogits", dlogits},
            {"loss", {static_cast<T>(stats.loss)}},
            {"counts", {static_cast<T>(stats.num_counted), static_cast<T>(stats.num_correct)}}};
  }
  // L = grad_scale * mean loss, whose gradient is what dlogits holds.
  Probe probe() const {
    return {unit, [this] {
              Context ctx(1);
              const double loss =
                  cpu::softmax_cross_entropy<double>(ctx, shape, logits.data(), labels.data(), 1.0, nullptr).loss;
              return Vec{grad_scale * loss};
            }};
  }
};

TEST_CASE("softmax_cross_entropy: loss and accuracy match naive and dlogits match finite differences") {
  for (int64_t classes : {int64_t{7}, int64_t{2}}) {  // MLM-like and NSP
    CrossEntropyCase c(11, classes, 211 + classes);
    const Outputs<double> out = c.run<double>(2);
    check_all_finite(out);
    double loss_sum = 0;
    int64_t counted = 0, correct = 0;
    for (int64_t r = 0; r < 11; ++r) {
      if (c.labels[r] == ops::kIgnoreIndex) continue;
      const double* row = c.logits.data() + r * classes;
      double total = 0;
      for (int64_t k = 0; k < classes; ++k) total += std::exp(row[k]);
      loss_sum += std::log(total) - row[c.labels[r]];
      ++counted;
      correct += std::max_element(row, row + classes) - row == c.labels[r];
    }
    CHECK(out.at("loss")[0] == Approx(loss_sum / counted).epsilon(1e-14));
    CHECK(out.at("counts")[0] == counted);
    CHECK(out.at("counts")[1] == correct);
    check_gradient("cross-entropy dlogits", c.logits, out.at("dlogits"), c.probe());
    for (int64_t r = 1; r < 11; r += 3)
      for (int64_t k = 0; k < classes; ++k) CHECK(out.at("dlogits")[r * classes + k] == 0.0);
    check_float_matches_double(c);

    // dlogits may overwrite the logits in place.
    Context ctx(1);
    Vec in_place = c.logits;
    const ops::CrossEntropyStats stats = cpu::softmax_cross_entropy<double>(
        ctx, c.shape, in_place.data(), c.labels.data(), c.grad_scale, in_place.data());
    CHECK(stats.loss == out.at("loss")[0]);
    CHECK(bitwise_equal(in_place, out.at("dlogits")));
  }
}

TEST_CASE("softmax_cross_entropy: rows row_stride apart give the dense results and leave the padding") {
  const int64_t rows = 9, classes = 7, stride = 12;
  CrossEntropyCase c(rows, classes, 231);
  const Outputs<double> dense = c.run<double>(1);
  constexpr double kPadding = 1e6;  // were it read, it would be every row's max
  Vec logits(static_cast<size_t>(rows * stride), kPadding);
  for (int64_t r = 0; r < rows; ++r) std::copy_n(c.logits.begin() + r * classes, classes, logits.begin() + r * stride);
  Context ctx(2);
  const ops::CrossEntropyStats stats = cpu::softmax_cross_entropy<double>(
      ctx, ops::LogitsShape{rows, classes, stride}, logits.data(), c.labels.data(), c.grad_scale, logits.data());
  CHECK(stats.loss == dense.at("loss")[0]);
  CHECK(stats.num_counted == dense.at("counts")[0]);
  CHECK(stats.num_correct == dense.at("counts")[1]);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < stride; ++k) {
      INFO("row " << r << " column " << k);
      const double got = logits[static_cast<size_t>(r * stride + k)];
      CHECK(got == (k < classes ? dense.at("dlogits")[static_cast<size_t>(r * classes + k)] : kPadding));
    }
  CHECK_THROWS_AS(cpu::softmax_cross_entropy<double>(ctx, ops::LogitsShape{rows, classes, classes - 1}, logits.data(),
                                                     c.labels.data(), 1.0, nullptr),
                  std::invalid_argument);
}

TEST_CASE("softmax_cross_entropy: all rows ignored gives loss 0 and zero gradient") {
  CrossEntropyCase c(5, 4, 221);
  std::fill(c.labels.begin(), c.labels.end(), ops::kIgnoreIndex);
  const Outputs<double> out = c.run<double>(1);
  CHECK(out.at("loss")[0] == 0.0);
  CHECK(out.at("counts")[0] == 0.0);
  CHECK(out.at("counts")[1] == 0.0);
  for (double value : out.at("dlogits")) CHECK(value == 0.0);

  Context ctx(1);
  CHECK(cpu::softmax_cross_entropy<double>(ctx, {0, 4}, nullptr, nullptr, 1.0, nullptr).loss == 0.0);
  c.labels[2] = 4;
  CHECK_THROWS_AS(c.run<double>(1), std::invalid_argument);
}

TEST_CASE("softmax_cross_entropy: wide shape: sampled finite differences and deterministic for any thread count") {
  CrossEntropyCase c(501, 70, 231);
  const Outputs<double> out = c.run<double>(3);
  check_all_finite(out);
  check_gradient_sampled("wide cross-entropy dlogits", c.logits, out.at("dlogits"), c.probe(), 24, 1);
  check_deterministic(c);
}

// ---- AdamW and gradient norm ------------------------------------------------------------------------------

TEST_CASE("adamw: two steps match PyTorch AdamW semantics") {
  ops::AdamWHyperparams hyper;
  hyper.learning_rate = 0.1;
  hyper.weight_decay = 0.01;

  // Hand-derived scalar: p0 = 0.5, g1 = 0.2, g2 = -0.1 (reference values from the PyTorch formula in
  // Python floats). Step 1 reduces to p0 (1 - lr wd) - lr g1 / (|g1| + eps).
  {
    Context ctx(1);
    double param = 0.5, grad = 0.2, exp_avg = 0, exp_avg_sq = 0;
    const AdamWTensor<double> tensor{&param, &grad, &exp_avg, &exp_avg_sq, 1, true};
    hyper.step = 1;
    cpu::adamw_step<double>(ctx, hyper, std::span(&tensor, 1));
    CHECK(param == Approx(0.39950000499999977).epsilon(1e-15));
    CHECK(param == Approx(0.5 * (1 - 0.1 * 0.01) - 0.1 * 0.2 / (0.2 + 1e-8)).epsilon(1e-15));
    grad = -0.1;
    hyper.step = 2;
    cpu::adamw_step<double>(ctx, hyper, std::span(&tensor, 1));
    CHECK(param == Approx(0.37246680271367577).epsilon(1e-14));
  }

  // Many elements, decay on one tensor only, a clipping scale, float and double.
  const int64_t n = 1000;
  const Vec param0 = random_vec(n, 241), grad1 = random_vec(n, 242), grad2 = random_vec(n, 243);
  const double grad_scale = 0.6;
  auto reference = [&](bool decay) {
    Vec param = param0, exp_avg(n, 0.0), exp_avg_sq(n, 0.0);
    for (int step = 1; step <= 2; ++step) {
      const Vec& grad = step == 1 ? grad1 : grad2;
      for (int64_t i = 0; i < n; ++i) {
        const double g = grad[i] * grad_scale;
        if (decay) param[i] *= 1 - hyper.learning_rate * hyper.weight_decay;
        exp_avg[i] = 0.9 * exp_avg[i] + 0.1 * g;
        exp_avg_sq[i] = 0.999 * exp_avg_sq[i] + 0.001 * g * g;
        const double m_hat = exp_avg[i] / (1 - std::pow(0.9, step));
        const double v_hat = exp_avg_sq[i] / (1 - std::pow(0.999, step));
        param[i] -= hyper.learning_rate * m_hat / (std::sqrt(v_hat) + 1e-8);
      }
    }
    return param;
  };
  auto run = [&]<class T>(std::vector<T>& decayed, std::vector<T>& plain, int threads) {
    decayed = cast<T>(param0);
    plain = cast<T>(param0);
    std::vector<T> grad, m_decayed(n, 0), v_decayed(n, 0), m_plain(n, 0), v_plain(n, 0);
    const AdamWTensor<T> tensors[] = {{decayed.data(), nullptr, m_decayed.data(), v_decayed.data(), n, true},
                                      {plain.data(), nullptr, m_plain.data(), v_plain.data(), n, false}};
    Context ctx(threads);
    ops::AdamWHyperparams h = hyper;
    h.grad_scale = grad_scale;
    for (int step = 1; step <= 2; ++step) {
      grad = cast<T>(step == 1 ? grad1 : grad2);
      AdamWTensor<T> with_grad[] = {tensors[0], tensors[1]};
      with_grad[0].grad = with_grad[1].grad = grad.data();
      h.step = step;
      cpu::adamw_step<T>(ctx, h, std::span<const AdamWTensor<T>>(with_grad, 2));
    }
  };
  std::vector<double> decayed, plain;
  run.operator()<double>(decayed, plain, 2);
  CHECK(max_relative_difference(decayed, reference(true)) < 1e-13);
  CHECK(max_relative_difference(plain, reference(false)) < 1e-13);
  std::vector<float> decayed_f, plain_f;
  run.operator()<float>(decayed_f, plain_f, 3);
  CHECK(max_relative_difference(decayed_f, reference(true)) < 1e-5);
  CHECK(max_relative_difference(plain_f, reference(false)) < 1e-5);
}

TEST_CASE("grad_norm: matches naive and is deterministic for any thread count and clips like torch") {
  const std::vector<int64_t> sizes = {100000, 3, 16384, 16385, 0, 40000};
  std::vector<std::vector<float>> grads;
  long double naive = 0;
  for (size_t t = 0; t < sizes.size(); ++t) {
    grads.push_back(cast<float>(random_vec(sizes[t], 251 + t)));
    for (float g : grads.back()) naive += static_cast<long double>(g) * g;
  }
  std::vector<GradView<float>> views;
  for (const auto& grad : grads) views.push_back({grad.data(), static_cast<int64_t>(grad.size())});
  Context one(1);
  const double norm = cpu::grad_norm<float>(one, views);
  CHECK(norm == Approx(std::sqrt(static_cast<double>(naive))).epsilon(1e-12));
  for (int threads : {2, 3, 4}) {
    Context ctx(threads);
    const double again = cpu::grad_norm<float>(ctx, views);
    CHECK(std::memcmp(&again, &norm, sizeof norm) == 0);
  }
  CHECK(ops::clip_grad_coefficient(10.0, 1.0) == Approx(1.0 / (10.0 + 1e-6)));
  CHECK(ops::clip_grad_coefficient(0.5, 1.0) == 1.0);
  CHECK(std::isnan(ops::clip_grad_coefficient(kNaN, 1.0)));
}

}  // namespace
