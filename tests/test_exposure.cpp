// engine/exposure.* (bert_infer --exposure) on a hand-written vocabulary with digits:
//  - the canary TSV and its one-line errors;
//  - the candidate secrets: exhaustive when few, else distinct seeded draws with only digits changed;
//  - the statistics on hand-computed values (ties against the canary, no spread, the normal tail far
//    out against erfc);
//  - pseudo-log-likelihoods of a tiny random model against a direct mask-one-token-at-a-time loop over
//    mlm_logits_at, batched and unbatched, in any batch size;
//  - exposure on mock models: one that memorised the canary (rank 1, exposure = log2(N+1), exact when
//    every other secret is scored) and one that knows nothing (rank N+1, 0 bits, no gaussian);
//  - the command: table, JSON and --scores agree, and its errors.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <filesystem>
#include <functional>
#include <limits>
#include <map>
#include <numeric>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/file.h"
#include "common/json.h"
#include "engine/bert.h"
#include "engine/exposure.h"
#include "engine/infer.h"
#include "tests/test_dirs.h"
#include "tokenizer/tokenizer.h"

namespace {

using bert::Json;

std::vector<std::string> tokens() {
  std::vector<std::string> t = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "-", ".", "연락처는", "입니다", "번호"};
  for (char d = '0'; d <= '9'; ++d) {
    t.push_back(std::string(1, d));
    t.push_back(std::string("##") + d);
  }
  t.push_back("42");  // a number that is one token: its candidates are longer
  return t;
}

bert::Tokenizer tokenizer() {
  bert::TokenizerConfig config;  // cased, accents kept: Hangul stays composed
  return bert::Tokenizer(bert::Vocab(tokens()), config);
}

bert::BertConfig tiny_config() {
  bert::BertConfig config;
  config.vocab_size = static_cast<int>(tokens().size());
  config.hidden_size = 16;
  config.num_hidden_layers = 2;
  config.num_attention_heads = 2;
  config.intermediate_size = 32;
  config.max_position_embeddings = 24;
  config.initializer_range = 0.3;  // a peaked, not near-uniform, prediction
  return config;
}

bert::BertForPreTraining<float> tiny_model() {
  bert::ModelOptions options;
  options.init_seed = 5;
  return bert::BertForPreTraining<float>(tiny_config(), options);
}

// The model's logits through the base class's one-sequence-at-a-time padded_logits_at.
class Unbatched final : public bert::MlmLogitsSource {
 public:
  explicit Unbatched(bert::MlmLogitsSource& inner) : inner_(inner) {}
  const bert::BertConfig& config() const override { return inner_.config(); }
  std::vector<float> logits_at(const std::vector<int32_t>& ids, const std::vector<int32_t>& positions) override {
    ++calls;
    return inner_.logits_at(ids, positions);
  }
  int calls = 0;

 private:
  bert::MlmLogitsSource& inner_;
};

// A model that memorised one sequence: at a masked position p it gives the token that sequence has at
// p a logit of `peak` (all else 0). With peak 0 it knows nothing: every text scores the same.
class Memorised final : public bert::MlmLogitsSource {
 public:
  Memorised(std::vector<int32_t> memorised, float peak) : memorised_(std::move(memorised)), peak_(peak) {
    config_ = tiny_config();
  }
  const bert::BertConfig& config() const override { return config_; }
  std::vector<float> logits_at(const std::vector<int32_t>& ids, const std::vector<int32_t>& positions) override {
    REQUIRE(std::count(ids.begin(), ids.end(), 4) == static_cast<std::ptrdiff_t>(positions.size()));
    const size_t vocab = static_cast<size_t>(config_.vocab_size);
    std::vector<float> logits(positions.size() * vocab, 0.0f);
    for (size_t r = 0; r < positions.size(); ++r) {
      const size_t p = static_cast<size_t>(positions[r]);
      REQUIRE(ids[p] == 4);  // [MASK]
      if (p < memorised_.size()) logits[r * vocab + static_cast<size_t>(memorised_[p])] = peak_;
    }
    return logits;
  }

 private:
  std::vector<int32_t> memorised_;
  float peak_;
  bert::BertConfig config_;
};

// The PLL the definition gives, straight from mlm_logits_at: mask token t alone, log-softmax, sum.
double direct_pll(bert::BertForPreTraining<float>& model, const std::vector<int32_t>& ids) {
  const size_t vocab = static_cast<size_t>(model.config().vocab_size);
  double total = 0;
  for (size_t t = 1; t + 1 < ids.size(); ++t) {
    std::vector<int32_t> masked = ids;
    masked[t] = 4;
    bert::BatchView view;
    view.batch = 1;
    view.seq_len = static_cast<int64_t>(ids.size());
    view.input_ids = masked.data();
    std::vector<float> logits(vocab);
    const int32_t position[] = {static_cast<int32_t>(t)};
    model.mlm_logits_at(view, position, logits);
    double sum = 0;
    for (const float l : logits) sum += std::exp(static_cast<double>(l));
    total += static_cast<double>(logits[static_cast<size_t>(ids[t])]) - std::log(sum);
  }
  return total;
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const bert::Error& e) {
    return e.what();
  }
  return "(no error)";
}

std::string make_checkpoint(const std::string& name) {
  const std::string dir = test_dir() + "/" + name;
  std::filesystem::create_directories(dir);
  bert::Vocab(tokens()).save(dir + "/vocab.txt");
  bert::TokenizerConfig().save(dir);
  tiny_model().save_safetensors(dir + "/model.safetensors");
  bert::write_file_atomic(dir + "/config.json", tiny_config().to_hf_json().dump(2) + "\n");
  return dir;
}

int run(const std::vector<std::string>& args, std::string& out, std::string* err = nullptr) {
  std::istringstream in;
  std::ostringstream out_stream, err_stream;
  const int code = bert::infer_main(args, in, out_stream, err_stream);
  out = out_stream.str();
  if (err) *err = err_stream.str();
  return code;
}

}  // namespace

TEST_CASE("parse_exposure_tsv: columns, labels, and one-line errors naming path:line", "[exposure]") {
  const auto canaries = bert::parse_exposure_tsv(
      "연락처는 010-1234-5678 입니다\t010-1234-5678\tphone\r\n\n  \n번호 77 .\t 77 \n", "c.tsv");
  REQUIRE(canaries.size() == 2);
  CHECK(canaries[0].source == "c.tsv:1");
  CHECK(canaries[0].secret == "010-1234-5678");
  CHECK(canaries[0].label == "phone");
  CHECK(canaries[1].line == 4);
  CHECK(canaries[1].secret == "77");  // spaces around the secret are trimmed
  CHECK(canaries[1].label == "-");

  auto error = [](const std::string& text) { return error_of([&] { (void)bert::parse_exposure_tsv(text, "c.tsv"); }); };
  CHECK(error("\nno tab here") ==
        "c.tsv:2: no tab between the text and the secret (expected 'text as in the "
        "corpus<TAB>secret in it[<TAB>label]')");
  CHECK(error("a 1\t1\tx\ty").find("c.tsv:1: 4 tab-separated columns, at most 3") == 0);
  CHECK(error("a 1\t ").find("c.tsv:1: empty secret") == 0);
  CHECK(error(" \t1").find("c.tsv:1: empty text") == 0);
  CHECK(error("번호 12\t13") == "c.tsv:1: the secret '13' is not in the text");
  CHECK(error("12 and 12\t12").find("c.tsv:1: the secret '12' occurs more than once") == 0);
  CHECK(error("번호 abc\tabc") ==
        "c.tsv:1: the secret 'abc' has no ASCII digit (its candidates are copies with "
        "other digits)");
  CHECK(error("번호 \x80 1\t1") == "c.tsv:1: invalid UTF-8 at byte 8");
}

TEST_CASE("exposure_candidates: every other secret when few, else distinct seeded draws of the digits", "[exposure]") {
  bool exhaustive = false;
  const auto all = bert::exposure_candidates("a7-3", 1000, 1, exhaustive);
  CHECK(exhaustive);
  REQUIRE(all.size() == 99);
  CHECK(std::is_sorted(all.begin(), all.end()));
  CHECK(std::set<std::string>(all.begin(), all.end()).size() == 99);
  CHECK(std::find(all.begin(), all.end(), "a7-3") == all.end());
  CHECK(all.front() == "a0-0");
  CHECK(all.back() == "a9-9");

  CHECK(bert::exposure_candidates("7-3", 99, 1, exhaustive).size() == 99);  // 99 others: all of them
  CHECK(exhaustive);
  const auto some = bert::exposure_candidates("7-3", 98, 1, exhaustive);
  CHECK_FALSE(exhaustive);
  CHECK(std::set<std::string>(some.begin(), some.end()).size() == 98);
  CHECK(std::find(some.begin(), some.end(), "7-3") == some.end());

  const std::string secret = "010-1234-5678";
  const auto drawn = bert::exposure_candidates(secret, 600, 3, exhaustive);
  CHECK_FALSE(exhaustive);
  REQUIRE(drawn.size() == 600);
  CHECK(std::set<std::string>(drawn.begin(), drawn.end()).size() == 600);
  std::vector<std::map<char, int>> digit_counts(secret.size());
  for (const std::string& c : drawn) {
    REQUIRE(c.size() == secret.size());
    CHECK(c != secret);
    for (size_t i = 0; i < c.size(); ++i) {
      if (secret[i] == '-') {
        CHECK(c[i] == '-');
      } else {
        REQUIRE(std::isdigit(static_cast<unsigned char>(c[i])));
        ++digit_counts[i][c[i]];
      }
    }
  }
  for (size_t i = 0; i < secret.size(); ++i)
    if (secret[i] != '-') {
      CHECK(digit_counts[i].size() == 10);  // 600 draws: every digit, about 60 each, at every place
      for (const auto& [digit, count] : digit_counts[i]) CHECK((count > 25 && count < 110));
    }
  CHECK(bert::exposure_candidates(secret, 600, 3, exhaustive) == drawn);  // reproducible
  CHECK(bert::exposure_candidates(secret, 600, 4, exhaustive) != drawn);
  CHECK(bert::exposure_candidates("12345678901234567890", 5, 1, exhaustive).size() == 5);
  CHECK_FALSE(exhaustive);
  CHECK(error_of([&] { (void)bert::exposure_candidates("abc", 5, 1, exhaustive); }) ==
        "exposure_candidates: the secret 'abc' has no digit");
}

TEST_CASE("normal_tail_bits: -log2 P(Z >= z), erfc near the middle, the asymptotic series far out", "[exposure]") {
  CHECK(bert::normal_tail_bits(0) == Approx(1.0).epsilon(1e-15));
  CHECK(bert::normal_tail_bits(1.6448536269514722) == Approx(-std::log2(0.05)).epsilon(1e-12));
  CHECK(bert::normal_tail_bits(-40) == Approx(0.0).margin(1e-15));
  // Both sides of the switch at z = 30 against erfc itself (representable up to z ~ 37).
  for (const double z : {29.5, 30.0, 31.0, 35.0, 37.0})
    CHECK(bert::normal_tail_bits(z) == Approx(-std::log2(0.5 * std::erfc(z / std::sqrt(2.0)))).epsilon(1e-12));
  // Far past erfc's range: -ln P = z^2/2 + ln(z sqrt(2 pi)) + 1/z^2 + O(1/z^4).
  const double z = 1000;
  CHECK(bert::normal_tail_bits(z) ==
        Approx((z * z / 2 + std::log(z * std::sqrt(2 * 3.141592653589793)) + 1 / (z * z)) / std::log(2.0))
            .epsilon(1e-15));
  CHECK(std::isfinite(bert::normal_tail_bits(1e150)));
  double previous = -1;
  for (double x = -5; x < 60; x += 0.25) {  // increasing: a higher score is always more exposed
    const double bits = bert::normal_tail_bits(x);
    CHECK(bits > previous);
    previous = bits;
  }
}

TEST_CASE("exposure_stats: rank with ties against the canary, exposure, mean, spread and the normal fit",
          "[exposure]") {
  const std::vector<double> four = {1, 2, 3, 4};
  bert::ExposureStats s = bert::exposure_stats(5, four);
  CHECK(s.rank == 1);
  CHECK(s.population == 5);
  CHECK(s.exposure == Approx(std::log2(5.0)));
  CHECK(s.max_exposure == Approx(std::log2(5.0)));
  CHECK(s.mean == Approx(2.5));
  CHECK(s.stddev == Approx(std::sqrt(5.0 / 3.0)));
  REQUIRE(s.has_gaussian);
  CHECK(s.gaussian_exposure == Approx(-std::log2(0.5 * std::erfc((2.5 / std::sqrt(5.0 / 3.0)) / std::sqrt(2.0)))));

  const std::vector<double> tied = {3, 3, 1};
  s = bert::exposure_stats(3, tied);
  CHECK(s.rank == 3);  // both ties count against the canary
  CHECK(s.exposure == Approx(2.0 - std::log2(3.0)));

  const std::vector<double> same = {-7, -7, -7};
  s = bert::exposure_stats(-7, same);
  CHECK(s.rank == 4);
  CHECK(s.exposure == 0);
  CHECK_FALSE(s.has_gaussian);  // no spread: no normal to fit

  s = bert::exposure_stats(1, std::vector<double>{});
  CHECK(s.rank == 1);
  CHECK(s.population == 1);
  CHECK(s.exposure == 0);
  CHECK_FALSE(s.has_gaussian);
}

TEST_CASE("pseudo_log_likelihoods equal masking each token in turn through mlm_logits_at", "[exposure]") {
  auto model = tiny_model();
  const bert::Tokenizer tok = tokenizer();
  const std::vector<std::string> texts = {"연락처는 010-1234-5678 입니다", "번호 7", "연락처는 010-9999-0000 입니다",
                                          "번호 12 . 34 -", "연락처는 010-1234-5679 입니다"};
  std::vector<std::vector<int32_t>> sequences;
  for (const std::string& text : texts) sequences.push_back(bert::encode_scored_text(tok, text, 24));
  CHECK(sequences[1] == std::vector<int32_t>{2, 9, 24, 3});  // [CLS] 번호 7 [SEP]

  const auto source = bert::logits_source(model);
  std::vector<std::vector<double>> terms;
  const std::vector<double> batched = bert::pseudo_log_likelihoods(*source, tok, sequences, &terms);
  Unbatched one_by_one(*source);
  const std::vector<double> unbatched = bert::pseudo_log_likelihoods(one_by_one, tok, sequences);
  CHECK(one_by_one.calls ==
        static_cast<int>(std::accumulate(sequences.begin(), sequences.end(), size_t{0},
                                         [](size_t n, const std::vector<int32_t>& s) { return n + s.size() - 2; })));
  bert::PllOptions small;
  small.max_batch_tokens = 10;  // 1-2 copies a call
  std::vector<size_t> reported;
  small.progress = [&](size_t done, size_t total) {
    CHECK(total == static_cast<size_t>(one_by_one.calls));  // every masked copy
    reported.push_back(done);
  };
  const std::vector<double> small_batches = bert::pseudo_log_likelihoods(*source, tok, sequences, nullptr, small);
  CHECK(std::is_sorted(reported.begin(), reported.end()));
  CHECK(reported.back() == static_cast<size_t>(one_by_one.calls));
  bert::PllOptions few_rows;
  few_rows.max_batch_rows = 3;
  std::vector<size_t> steps;
  few_rows.progress = [&](size_t done, size_t) { steps.push_back(done); };
  const std::vector<double> three_rows = bert::pseudo_log_likelihoods(*source, tok, sequences, nullptr, few_rows);
  for (size_t i = 1; i < steps.size(); ++i) CHECK(steps[i] - steps[i - 1] <= 3);
  REQUIRE(batched.size() == texts.size());
  for (size_t i = 0; i < texts.size(); ++i) {
    INFO(texts[i]);
    const double want = direct_pll(model, sequences[i]);
    CHECK(want < 0);
    CHECK(batched[i] == Approx(want).epsilon(1e-5));
    CHECK(unbatched[i] == Approx(want).epsilon(1e-5));
    CHECK(small_batches[i] == Approx(want).epsilon(1e-5));
    CHECK(three_rows[i] == Approx(want).epsilon(1e-5));
    REQUIRE(terms[i].size() == sequences[i].size() - 2);
    CHECK(std::accumulate(terms[i].begin(), terms[i].end(), 0.0) == Approx(batched[i]).epsilon(1e-12));
    for (const double term : terms[i]) CHECK(term <= 0);
  }
  CHECK(batched[0] != Approx(batched[4]).epsilon(1e-9));  // one digit apart, and the model can tell

  CHECK(error_of([&] {
          (void)bert::pseudo_log_likelihoods(*source, tok, {{2, 3}});
        }) == "pseudo_log_likelihoods: a sequence needs [CLS], at least one token and [SEP], got 2 ids");
  CHECK(error_of([&] {
          (void)bert::pseudo_log_likelihoods(*source, tok, {{2, 99, 3}});
        }) == "pseudo_log_likelihoods: token id 99 is outside the model's vocabulary");
  CHECK(error_of([&] { (void)bert::encode_scored_text(tok, "번호 [MASK] 7", 24); }) ==
        "the text holds the special token [MASK] (a pseudo-log-likelihood scores plain text)");
  CHECK(error_of([&] { (void)bert::encode_scored_text(tok, "  ", 24); }) == "the text has no token");
  CHECK(error_of([&] { (void)bert::encode_scored_text(tok, "1 2 3 4 5 6 7 8 9 0 1 2 3", 14); }) ==
        "the text is 15 tokens with [CLS] and [SEP], more than the model's max_position_embeddings 14");
  CHECK(bert::encode_scored_text(tok, "번호 ☃ 7", 24) == std::vector<int32_t>{2, 9, 1, 24, 3});  // [UNK] is scored
}

TEST_CASE("pseudo_log_likelihoods: a model whose logits are not finite is one error, not an abort", "[exposure]") {
  // A diverged model's logits: the check comes before the parallel loop (an exception inside it
  // would end the process).
  const bert::Tokenizer tok = tokenizer();
  const std::vector<std::vector<int32_t>> sequences = {bert::encode_scored_text(tok, "번호 7", 24)};
  Memorised broken(sequences[0], std::numeric_limits<float>::quiet_NaN());
  CHECK_THROWS_WITH(bert::pseudo_log_likelihoods(broken, tok, sequences),
                    "the model's masked-LM logits are not finite (nan): its weights overflow them, as a diverged "
                    "training run leaves them");
}

TEST_CASE("measure_exposure: a model that memorised the canary ranks it first, one that knows nothing last",
          "[exposure]") {
  const bert::Tokenizer tok = tokenizer();
  bert::ExposureCanary canary;
  canary.source = "c.tsv:3";
  canary.line = 3;
  canary.text = "연락처는 010-12-34 입니다";
  canary.secret = "12-34";
  canary.label = "phone";
  const std::vector<int32_t> ids = bert::encode_scored_text(tok, canary.text, 24);

  bert::ExposureOptions options;
  options.candidates = 200;
  options.seed = 9;
  Memorised memorised(ids, 6.0f);
  const bert::ExposureResult sampled = bert::measure_exposure(memorised, tok, canary, options);
  CHECK_FALSE(sampled.exhaustive);
  CHECK(sampled.candidates.size() == 200);
  CHECK(sampled.stats.rank == 1);
  CHECK(sampled.stats.population == 201);
  CHECK(sampled.stats.exposure == Approx(std::log2(201.0)));
  CHECK(sampled.space_bits == Approx(4 * std::log2(10.0)));
  REQUIRE(sampled.stats.has_gaussian);
  CHECK(sampled.stats.gaussian_exposure > sampled.stats.exposure);  // the fit extrapolates past the sample
  // The best other secret is among the fewest digits off (the mock rewards each matching digit).
  auto digits_off = [&](const std::string& candidate) {
    int differing = 0;
    for (size_t i = 0; i < candidate.size(); ++i) differing += candidate[i] != canary.secret[i];
    return differing;
  };
  const std::string& best = sampled.candidates[sampled.best_candidate];
  int fewest = 4;
  for (const std::string& candidate : sampled.candidates) fewest = std::min(fewest, digits_off(candidate));
  CHECK(digits_off(best) == fewest);
  CHECK(sampled.candidate_scores[sampled.best_candidate] ==
        *std::max_element(sampled.candidate_scores.begin(), sampled.candidate_scores.end()));

  options.candidates = 10000;  // more than the 9999 others: every one of them, the exposure exact
  const bert::ExposureResult exact = bert::measure_exposure(memorised, tok, canary, options);
  CHECK(exact.exhaustive);
  CHECK(exact.candidates.size() == 9999);
  CHECK(exact.stats.rank == 1);
  CHECK(exact.stats.exposure == Approx(exact.space_bits));

  Memorised ignorant(ids, 0.0f);
  options.candidates = 50;
  const bert::ExposureResult none = bert::measure_exposure(ignorant, tok, canary, options);
  CHECK(none.stats.rank == 51);
  CHECK(none.stats.exposure == 0);
  CHECK_FALSE(none.stats.has_gaussian);
  CHECK(none.score == Approx(static_cast<double>(ids.size() - 2) * -std::log(static_cast<double>(tokens().size()))));

  const Json j = bert::exposure_json({sampled, none}, options);
  REQUIRE(j.find("canaries")->as_array().size() == 2);
  const Json& first = j.find("canaries")->as_array()[0];
  CHECK(first.find("line")->as_int() == 3);
  CHECK(first.find("label")->as_string() == "phone");
  CHECK(first.find("rank")->as_int() == 1);
  CHECK(first.find("exposure")->as_number() == Approx(std::log2(201.0)));
  CHECK(first.find("best_candidate")->as_string() == best);
  CHECK(j.find("canaries")->as_array()[1].find("gaussian_exposure")->is_null());

  bert::ExposureCanary bad = canary;
  bad.text = "연락처는 010-12-34 입니다 [MASK]";
  CHECK(error_of([&] { (void)bert::measure_exposure(memorised, tok, bad, options); }) ==
        "c.tsv:3: the text holds the special token [MASK] (a pseudo-log-likelihood scores plain text)");
  CHECK(error_of([&] { (void)bert::prepare_exposure(tok, canary, options, 12); }) ==
        "c.tsv:3: the text is 13 tokens with [CLS] and [SEP], more than the model's max_position_embeddings 12 "
        "(shorten it)");
  // "7" is one token; "12" two ("1" "##2"): a candidate can be longer than the secret.
  bad.text = "번호 7 입니다";
  bad.secret = "7";
  bert::ExposureOptions one_digit;
  one_digit.candidates = 3;
  CHECK(bert::prepare_exposure(tok, bad, one_digit, 5).sequences.size() == 4);
  bad.text = "번호 7";
  bad.secret = "번호 7";
  CHECK(bert::prepare_exposure(tok, bad, one_digit, 4).candidates.size() == 3);
  bad.text = "번호 42 입니다";  // "42" is one token, "00" two
  bad.secret = "42";
  one_digit.candidates = 1000;
  CHECK(bert::prepare_exposure(tok, bad, one_digit, 6).candidates.size() == 99);
  CHECK(error_of([&] { (void)bert::prepare_exposure(tok, bad, one_digit, 5); }) ==
        "c.tsv:3: with the candidate secret '00' the text is 6 tokens with [CLS] and [SEP], more than the model's "
        "max_position_embeddings 5 (its digits split into more WordPieces than the secret's; shorten the text)");
}

TEST_CASE("prepare_exposure: a secret the tokenizer cannot see is refused, equal texts tie exactly", "[exposure]") {
  const bert::Tokenizer tok = tokenizer();
  bert::ExposureCanary canary;
  canary.source = "c.tsv:1";
  canary.line = 1;
  canary.text = "번호 x12 입니다";  // "x12" is not spelled by the vocabulary: one [UNK] whatever its digits
  canary.secret = "12";
  bert::ExposureOptions options;
  options.candidates = 20;
  CHECK(error_of([&] { (void)bert::prepare_exposure(tok, canary, options, 24); }) ==
        "c.tsv:1: the tokenizer does not see the secret '12': the text encodes to the same tokens with any digits "
        "in its place (the secret is inside a word that becomes [UNK]?), so there is nothing to rank");

  // Half visible: the first digit is a word of its own, the second is inside an unknown word ("2x" ->
  // [UNK]), so the candidates that keep the first digit encode as the canary does and tie with it.
  canary.text = "번호 1 2x 입니다";
  canary.secret = "1 2";
  options.candidates = 1000;
  const bert::ExposureJob job = bert::prepare_exposure(tok, canary, options, 24);
  REQUIRE(job.exhaustive);
  CHECK(job.candidates.size() == 99);
  CHECK(job.same_tokens == 9);  // "1 0" .. "1 9" but "1 2"
  auto model = tiny_model();
  const auto source = bert::logits_source(model);
  bert::PllOptions small;
  small.max_batch_rows = 7;  // equal texts in different batches would round differently
  const bert::ExposureResult r = bert::score_exposure(*source, tok, job, small);
  CHECK(r.same_tokens == 9);
  size_t ties = 0;
  for (size_t i = 0; i < r.candidates.size(); ++i) ties += r.candidate_scores[i] == r.score;
  CHECK(ties == 9);  // bit-equal: scored once
  CHECK(r.stats.rank >= 10);
}

TEST_CASE("bert_infer --exposure: the table, JSON and --scores agree, and misuse is one line", "[exposure]") {
  const std::string dir = make_checkpoint("model");
  const std::string tsv = test_dir() + "/canaries.tsv";
  bert::write_file_atomic(tsv, "연락처는 010-1234-5678 입니다\t010-1234-5678\tphone\n\n번호 42 .\t42\n");
  const std::string scores = test_dir() + "/scores.tsv";
  std::string out, err;
  REQUIRE(run({"--model", dir, "--exposure", tsv, "--candidates", "120", "--seed", "7", "--json", "--scores", scores},
              out, &err) == 0);
  const Json j = Json::parse(out);
  CHECK(j.find("candidates")->as_int() == 120);
  CHECK(j.find("seed")->as_int() == 7);
  const auto& canaries = j.find("canaries")->as_array();
  REQUIRE(canaries.size() == 2);
  CHECK(canaries[0].find("population")->as_int() == 121);
  CHECK_FALSE(canaries[0].find("exhaustive")->as_bool());
  CHECK(canaries[1].find("population")->as_int() == 100);  // "42": all 99 others
  CHECK(canaries[1].find("exhaustive")->as_bool());

  // --scores: the canary, then its candidates; the rank and exposure follow from them.
  std::map<int64_t, std::vector<std::pair<std::string, double>>> rows;
  std::istringstream file(bert::read_file(scores));
  std::string line;
  std::getline(file, line);
  CHECK(line == "line\tsecret\tscore\tcanary");
  while (std::getline(file, line)) {
    std::istringstream fields(line);
    std::string number, secret, score, is_canary;
    std::getline(fields, number, '\t');
    std::getline(fields, secret, '\t');
    std::getline(fields, score, '\t');
    std::getline(fields, is_canary, '\t');
    CHECK(is_canary == (rows[std::stoll(number)].empty() ? "1" : "0"));
    rows[std::stoll(number)].emplace_back(secret, std::stod(score));
  }
  REQUIRE(rows.size() == 2);
  for (size_t c = 0; c < 2; ++c) {
    const Json& item = canaries[c];
    const auto& scored = rows[item.find("line")->as_int()];
    REQUIRE(static_cast<int64_t>(scored.size()) == item.find("population")->as_int());
    CHECK(scored[0].first == item.find("secret")->as_string());
    CHECK(scored[0].second == Approx(item.find("score")->as_number()).epsilon(1e-8));  // JSON: 9 digits
    int64_t rank = 1;
    for (size_t i = 1; i < scored.size(); ++i) rank += scored[i].second >= scored[0].second;
    CHECK(rank == item.find("rank")->as_int());
    CHECK(item.find("exposure")->as_number() ==
          Approx(std::log2(static_cast<double>(scored.size()) / static_cast<double>(rank))));
  }

  // The table: a row per canary with its rank out of the population.
  REQUIRE(run({"--model", dir, "--exposure", tsv, "--candidates", "120", "--seed", "7"}, out) == 0);
  const std::string rank0 = std::to_string(canaries[0].find("rank")->as_int()) + "/121";
  CHECK(out.find("exposure " + tsv + ": 2 canaries") == 0);
  CHECK(out.find(rank0) != std::string::npos);
  CHECK(out.find("[all 99 others scored: exact]") != std::string::npos);
  // --batch-size: fewer masked copies a forward, the same ranks (scores within rounding).
  std::string small;
  REQUIRE(run({"--model", dir, "--exposure", tsv, "--candidates", "120", "--seed", "7", "--json", "--batch-size", "3"},
              small) == 0);
  const Json reparsed = Json::parse(small);
  const auto& again = reparsed.find("canaries")->as_array();
  REQUIRE(again.size() == 2);
  for (size_t c = 0; c < 2; ++c) {
    CHECK(again[c].find("rank")->as_int() == canaries[c].find("rank")->as_int());
    CHECK(again[c].find("score")->as_number() == Approx(canaries[c].find("score")->as_number()).epsilon(1e-5));
  }

  auto error = [&](const std::vector<std::string>& args) { return error_of([&] { (void)run(args, out); }); };
  CHECK(error({"--model", dir, "--candidates", "5", "--mask", "[MASK]"}) ==
        "bert_infer: --candidates goes with --exposure");
  CHECK(error({"--model", dir, "--exposure", tsv, "--mask", "[MASK]"}) ==
        "bert_infer: --exposure takes its texts from the TSV file; drop --probe/--mask/--input");
  CHECK(error({"--model", dir, "--exposure", tsv, "--candidates", "0"}).find("--candidates") != std::string::npos);
  const std::string bad = test_dir() + "/bad.tsv";
  bert::write_file_atomic(bad, "번호 42\t42\n번호 [MASK] 43\t43\n");
  CHECK(error({"--model", dir, "--exposure", bad}) ==
        bad + ":2: the text holds the special token [MASK] (a pseudo-log-likelihood scores plain text)");
  bert::write_file_atomic(bad, "\n\n");
  CHECK(error({"--model", dir, "--exposure", bad}) == bad + ": no canary lines");
  // Checked before the model loads (a missing model dir would otherwise be the error).
  const std::string none = test_dir() + "/no_model";
  CHECK(error({"--model", none, "--exposure", tsv, "--top-k", "3"}) ==
        "bert_infer: --top-k is for fill-mask; --exposure ranks whole secrets (see --candidates)");
  CHECK(error({"--model", none, "--exposure", ""}) == "bert_infer: --exposure: empty path");
  CHECK(error({"--model", none, "--exposure", test_dir()}) ==
        test_dir() + ": is a directory, expected the --exposure TSV file");
  CHECK(error({"--model", none, "--exposure", tsv, "--scores", ""}) == "bert_infer: --scores: empty path");
  CHECK(error({"--model", none, "--exposure", tsv, "--scores", test_dir()}) ==
        "bert_infer: --scores " + test_dir() + ": is a directory, expected a file");
  CHECK(error({"--model", none, "--exposure", tsv, "--scores", none + "/s.tsv"}) ==
        "bert_infer: --scores " + none + "/s.tsv: the directory " + none + " does not exist");
  CHECK(error({"--model", none, "--exposure", tsv, "--scores", "./" + tsv}) ==
        "bert_infer: --scores ./" + tsv + " is the --exposure file; write the scores elsewhere");
  CHECK(error({"--model", none, "--exposure", tsv, "--seed", "9007199254740992"}).find("--seed") != std::string::npos);

  // Candidates the tokenizer cannot tell from the secret: a warning on stderr, and they tie.
  bert::write_file_atomic(bad, "번호 1 2x 입니다\t1 2\n");
  REQUIRE(run({"--model", dir, "--exposure", bad, "--json"}, out, &err) == 0);
  CHECK(err == "warning: " + bad +
                   ":1: 9 of the 99 candidate secrets encode to the same tokens as '1 2' (a word that becomes "
                   "[UNK]?): they tie with it, which lowers its exposure\n");
  CHECK(Json::parse(out).find("canaries")->as_array()[0].find("same_tokens")->as_int() == 9);
}
