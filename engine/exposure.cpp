// Canary exposure: pseudo-log-likelihood scoring of a secret against secrets of the same shape. The
// method and its definitions are in engine/exposure.h.
#include "engine/exposure.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <numbers>
#include <numeric>
#include <random>
#include <unordered_set>

#include "common/error.h"

namespace bert {

namespace {

size_t count_digits(std::string_view text) {
  return static_cast<size_t>(std::count_if(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; }));
}

// A uniform digit from a 64-bit generator (rejection: no modulo bias).
char random_digit(std::mt19937_64& rng) {
  constexpr uint64_t kLimit = std::numeric_limits<uint64_t>::max() - std::numeric_limits<uint64_t>::max() % 10;
  uint64_t value;
  do value = rng();
  while (value >= kLimit);
  return static_cast<char>('0' + value % 10);
}

}  // namespace

std::vector<ExposureCanary> parse_exposure_tsv(std::string_view text, const std::string& path) {
  std::vector<ExposureCanary> canaries;
  for_each_tsv_line(text, path, [&](size_t line_number, const std::vector<std::string>& columns) {
    const std::string hint = " (expected 'text as in the corpus<TAB>secret in it[<TAB>label]')";
    if (columns.size() < 2) throw Error(located(path, line_number, "no tab between the text and the secret" + hint));
    if (columns.size() > 3)
      throw Error(
          located(path, line_number, std::to_string(columns.size()) + " tab-separated columns, at most 3" + hint));
    ExposureCanary canary;
    canary.source = path + ":" + std::to_string(line_number);
    canary.line = line_number;
    canary.text = columns[0];
    canary.secret = trim_spaces(columns[1]);
    canary.label = columns.size() == 3 ? trim_spaces(columns[2]) : std::string("-");
    if (canary.label.empty()) canary.label = "-";
    if (trim_spaces(canary.text).empty()) throw Error(located(path, line_number, "empty text" + hint));
    if (canary.secret.empty()) throw Error(located(path, line_number, "empty secret" + hint));
    const size_t at = canary.text.find(canary.secret);
    if (at == std::string::npos)
      throw Error(located(path, line_number, "the secret '" + canary.secret + "' is not in the text"));
    if (canary.text.find(canary.secret, at + 1) != std::string::npos)
      throw Error(located(path, line_number,
                          "the secret '" + canary.secret +
                              "' occurs more than once in the text (which one is the secret is ambiguous)"));
    if (count_digits(canary.secret) == 0)
      throw Error(located(
          path, line_number,
          "the secret '" + canary.secret + "' has no ASCII digit (its candidates are copies with other digits)"));
    canaries.push_back(std::move(canary));
  });
  return canaries;
}

std::vector<int32_t> encode_scored_text(const Tokenizer& tokenizer, std::string_view text, int max_positions) {
  std::vector<int32_t> ids;
  EncodeScratch scratch;
  tokenizer.encode(text, ids, scratch);
  if (ids.empty()) throw Error("the text has no token");
  const std::vector<std::string> specials = tokenizer.config().special_tokens();
  for (const int32_t id : ids) {
    if (id == tokenizer.unk_id()) continue;
    const std::string& token = tokenizer.vocab().token(id);
    if (std::find(specials.begin(), specials.end(), token) != specials.end())
      throw Error("the text holds the special token " + token + " (a pseudo-log-likelihood scores plain text)");
  }
  Encoding encoding = tokenizer.post_process(std::move(ids), nullptr, std::nullopt);
  if (encoding.ids.size() > static_cast<size_t>(max_positions))
    throw Error("the text is " + std::to_string(encoding.ids.size()) +
                " tokens with [CLS] and [SEP], more than the model's max_position_embeddings " +
                std::to_string(max_positions));
  return std::move(encoding.ids);
}

std::vector<double> pseudo_log_likelihoods(MlmLogitsSource& model, const Tokenizer& tokenizer,
                                           const std::vector<std::vector<int32_t>>& sequences,
                                           std::vector<std::vector<double>>* per_token, const PllOptions& options) {
  const size_t vocab = static_cast<size_t>(model.config().vocab_size);
  std::vector<double> totals(sequences.size(), 0.0);
  if (per_token) {
    per_token->assign(sequences.size(), {});
    for (size_t i = 0; i < sequences.size(); ++i)
      (*per_token)[i].assign(sequences[i].size() >= 2 ? sequences[i].size() - 2 : 0, 0.0);
  }
  // Equal lengths next to each other, so their masked copies share model calls.
  std::vector<size_t> order(sequences.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return sequences[a].size() < sequences[b].size(); });

  struct Row {
    size_t sequence, token;  // token: index into the sequence (1 .. length - 2)
  };
  std::vector<Row> rows;
  std::vector<int32_t> ids, positions;
  std::vector<double> log_p;
  size_t length = 0, done = 0, total = 0;
  for (const std::vector<int32_t>& sequence : sequences) total += sequence.size() >= 2 ? sequence.size() - 2 : 0;
  auto flush = [&] {
    if (rows.empty()) return;
    const std::vector<float> logits = model.batch_logits_at(ids, static_cast<int64_t>(rows.size()), positions);
    require_finite_logits(logits);  // here: an exception inside the parallel loop would end the process
    // The log-softmax rows in parallel (vocab exps each: as much work as the small models' forward),
    // then summed in row order, so the totals do not depend on the thread count.
    log_p.resize(rows.size());
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < static_cast<int64_t>(rows.size()); ++r) {
      const std::span<const float> row(logits.data() + static_cast<size_t>(r) * vocab, vocab);
      const auto [max_logit, sum] = softmax_max_and_sum(row);
      const Row& at = rows[static_cast<size_t>(r)];
      const int32_t target = sequences[at.sequence][at.token];
      log_p[static_cast<size_t>(r)] = static_cast<double>(row[static_cast<size_t>(target)]) - max_logit - std::log(sum);
    }
    for (size_t r = 0; r < rows.size(); ++r) {
      totals[rows[r].sequence] += log_p[r];
      if (per_token) (*per_token)[rows[r].sequence][rows[r].token - 1] = log_p[r];
    }
    done += rows.size();
    rows.clear();
    ids.clear();
    positions.clear();
    if (options.progress) options.progress(done, total);
  };
  for (const size_t s : order) {
    const std::vector<int32_t>& sequence = sequences[s];
    if (sequence.size() < 3)
      throw Error("pseudo_log_likelihoods: a sequence needs [CLS], at least one token and [SEP], got " +
                  std::to_string(sequence.size()) + " ids");
    for (const int32_t id : sequence)
      if (id < 0 || static_cast<size_t>(id) >= vocab)
        throw Error("pseudo_log_likelihoods: token id " + std::to_string(id) + " is outside the model's vocabulary");
    if (sequence.size() != length) flush();
    length = sequence.size();
    for (size_t t = 1; t + 1 < length; ++t) {
      const auto copies = static_cast<int64_t>(rows.size() + 1);
      if (!rows.empty() &&
          (copies * static_cast<int64_t>(length) > options.max_batch_tokens || copies > options.max_batch_rows))
        flush();
      positions.push_back(static_cast<int32_t>(rows.size() * length + t));
      rows.push_back({s, t});
      ids.insert(ids.end(), sequence.begin(), sequence.end());
      ids[ids.size() - length + t] = tokenizer.mask_id();
    }
  }
  flush();
  return totals;
}

std::vector<std::string> exposure_candidates(std::string_view secret, size_t count, uint64_t seed, bool& exhaustive) {
  std::vector<size_t> digit_at;
  for (size_t i = 0; i < secret.size(); ++i)
    if (secret[i] >= '0' && secret[i] <= '9') digit_at.push_back(i);
  if (digit_at.empty()) throw Error("exposure_candidates: the secret '" + std::string(secret) + "' has no digit");
  const std::string original(secret);
  std::vector<std::string> candidates;
  // 10^digits - 1 others; beyond 18 digits that is more than any count could ask for.
  uint64_t others = 0;
  if (digit_at.size() <= 18) {
    uint64_t space = 1;
    for (size_t i = 0; i < digit_at.size(); ++i) space *= 10;
    others = space - 1;
  }
  exhaustive = digit_at.size() <= 18 && others <= count;
  if (exhaustive) {
    candidates.reserve(others);
    std::string candidate = original;
    for (uint64_t value = 0; value <= others; ++value) {
      uint64_t rest = value;
      for (size_t i = digit_at.size(); i-- > 0;) {
        candidate[digit_at[i]] = static_cast<char>('0' + rest % 10);
        rest /= 10;
      }
      if (candidate != original) candidates.push_back(candidate);
    }
    return candidates;
  }
  std::mt19937_64 rng(seed);
  std::unordered_set<std::string> seen{original};
  candidates.reserve(count);
  std::string candidate = original;
  while (candidates.size() < count) {
    for (const size_t at : digit_at) candidate[at] = random_digit(rng);
    if (seen.insert(candidate).second) candidates.push_back(candidate);
  }
  return candidates;
}

double normal_tail_bits(double z) {
  // P(Z >= z) = erfc(z / sqrt 2) / 2, while erfc has not underflowed (z < ~37); past that the
  // asymptotic series of log erfc: ln P = -z^2/2 - ln(z sqrt(2 pi)) + ln(1 - 1/z^2 + 3/z^4 - 15/z^6).
  if (z < 30) return 0.0 - std::log2(0.5 * std::erfc(z / std::sqrt(2.0)));  // 0 - 0 is +0: no "-0.00"
  const double inv = 1 / (z * z);
  const double ln_p = -0.5 * z * z - std::log(z * std::sqrt(2 * std::numbers::pi)) +
                      std::log1p(-inv + 3 * inv * inv - 15 * inv * inv * inv);
  return -ln_p / std::log(2.0);
}

ExposureStats exposure_stats(double canary_score, std::span<const double> candidate_scores) {
  ExposureStats stats;
  stats.population = static_cast<int64_t>(candidate_scores.size()) + 1;
  stats.rank = 1 + std::count_if(candidate_scores.begin(), candidate_scores.end(),
                                 [&](double score) { return score >= canary_score; });
  stats.max_exposure = std::log2(static_cast<double>(stats.population));
  stats.exposure = stats.max_exposure - std::log2(static_cast<double>(stats.rank));
  const size_t n = candidate_scores.size();
  if (n) stats.mean = std::accumulate(candidate_scores.begin(), candidate_scores.end(), 0.0) / static_cast<double>(n);
  const auto [low, high] = std::minmax_element(candidate_scores.begin(), candidate_scores.end());
  if (n >= 2 && *low < *high) {  // equal scores have no spread, even where their mean is an ulp off
    double squares = 0;
    for (const double score : candidate_scores) squares += (score - stats.mean) * (score - stats.mean);
    stats.stddev = std::sqrt(squares / static_cast<double>(n - 1));
  }
  stats.has_gaussian = n >= 2 && stats.stddev > 0;
  if (stats.has_gaussian) stats.gaussian_exposure = normal_tail_bits((canary_score - stats.mean) / stats.stddev);
  return stats;
}

ExposureJob prepare_exposure(const Tokenizer& tokenizer, const ExposureCanary& canary, const ExposureOptions& options,
                             int max_positions, int vocab_size) {
  ExposureJob job;
  job.canary = canary;
  const size_t at = canary.text.find(canary.secret);
  if (at == std::string::npos) throw Error(canary.source + ": the secret is not in the text");
  // The length is checked here, with advice that depends on whose text it is.
  auto too_long = [&](const std::vector<int32_t>& ids) {
    if (const std::string past = token_past_vocab(tokenizer, ids, vocab_size); !past.empty())
      return "the text holds " + past;
    return ids.size() > static_cast<size_t>(max_positions)
               ? "the text is " + std::to_string(ids.size()) +
                     " tokens with [CLS] and [SEP], more than the model's max_position_embeddings " +
                     std::to_string(max_positions)
               : std::string();
  };
  try {
    job.sequences.push_back(encode_scored_text(tokenizer, canary.text, std::numeric_limits<int>::max()));
  } catch (const Error& e) {
    throw Error(canary.source + ": " + e.what());
  }
  if (const std::string why = too_long(job.sequences.front()); !why.empty())
    throw Error(canary.source + ": " + why + " (shorten it)");
  job.candidates = exposure_candidates(canary.secret, options.candidates, options.seed, job.exhaustive);
  job.sequences.reserve(job.candidates.size() + 1);
  std::string text = canary.text;
  for (const std::string& candidate : job.candidates) {
    text.replace(at, canary.secret.size(), candidate);  // same length: the digits are replaced one for one
    try {
      job.sequences.push_back(encode_scored_text(tokenizer, text, std::numeric_limits<int>::max()));
    } catch (const Error& e) {
      throw Error(canary.source + ": with the candidate secret '" + candidate + "' " + e.what());
    }
    if (const std::string why = too_long(job.sequences.back()); !why.empty())
      throw Error(canary.source + ": with the candidate secret '" + candidate + "' " + why +
                  " (its digits split into more WordPieces than the secret's; shorten the text)");
    job.same_tokens += job.sequences.back() == job.sequences.front();
  }
  if (!job.candidates.empty() && job.same_tokens == job.candidates.size())
    throw Error(canary.source + ": the tokenizer does not see the secret '" + canary.secret +
                "': the text encodes to the same tokens with any digits in its place (the secret is inside a word "
                "that becomes " +
                tokenizer.config().unk_token + "?), so there is nothing to rank");
  return job;
}

ExposureResult score_exposure(MlmLogitsSource& model, const Tokenizer& tokenizer, const ExposureJob& job,
                              const PllOptions& scoring) {
  ExposureResult result;
  result.canary = job.canary;
  result.space_bits = static_cast<double>(count_digits(job.canary.secret)) * std::log2(10.0);
  result.exhaustive = job.exhaustive;
  result.same_tokens = job.same_tokens;
  result.candidates = job.candidates;
  // Each distinct token sequence once: equal texts get bit-equal scores.
  std::map<std::vector<int32_t>, size_t> index_of;
  std::vector<std::vector<int32_t>> distinct;
  std::vector<size_t> slot(job.sequences.size());
  for (size_t i = 0; i < job.sequences.size(); ++i) {
    const auto [it, inserted] = index_of.emplace(job.sequences[i], distinct.size());
    if (inserted) distinct.push_back(job.sequences[i]);
    slot[i] = it->second;
  }
  const std::vector<double> scores = pseudo_log_likelihoods(model, tokenizer, distinct, nullptr, scoring);
  result.score = scores[slot.front()];
  result.candidate_scores.reserve(job.candidates.size());
  for (size_t i = 1; i < slot.size(); ++i) result.candidate_scores.push_back(scores[slot[i]]);
  result.stats = exposure_stats(result.score, result.candidate_scores);
  result.best_candidate =
      static_cast<size_t>(std::max_element(result.candidate_scores.begin(), result.candidate_scores.end()) -
                          result.candidate_scores.begin());
  return result;
}

ExposureResult measure_exposure(MlmLogitsSource& model, const Tokenizer& tokenizer, const ExposureCanary& canary,
                                const ExposureOptions& options) {
  return score_exposure(model, tokenizer,
                        prepare_exposure(tokenizer, canary, options, model.config().max_position_embeddings),
                        options.scoring);
}

Json exposure_json(const std::vector<ExposureResult>& results, const ExposureOptions& options) {
  Json j = Json::object();
  j.set("candidates", static_cast<int64_t>(options.candidates));
  j.set("seed", static_cast<int64_t>(options.seed));
  Json canaries = Json::array();
  for (const ExposureResult& r : results) {
    Json item = Json::object();
    item.set("line", static_cast<int64_t>(r.canary.line));
    item.set("label", r.canary.label);
    item.set("secret", r.canary.secret);
    item.set("text", r.canary.text);
    item.set("score", r.score);
    item.set("rank", r.stats.rank);
    item.set("population", r.stats.population);
    item.set("exposure", r.stats.exposure);
    item.set("max_exposure", r.stats.max_exposure);
    item.set("space_bits", r.space_bits);
    item.set("exhaustive", r.exhaustive);
    item.set("same_tokens", static_cast<int64_t>(r.same_tokens));
    item.set("candidate_mean", r.stats.mean);
    item.set("candidate_stddev", r.stats.stddev);
    item.set("gaussian_exposure", r.stats.has_gaussian ? Json(r.stats.gaussian_exposure) : Json());
    if (!r.candidates.empty()) {
      item.set("best_candidate", r.candidates[r.best_candidate]);
      item.set("best_candidate_score", r.candidate_scores[r.best_candidate]);
    }
    canaries.push(std::move(item));
  }
  j.set("canaries", std::move(canaries));
  return j;
}

}  // namespace bert
