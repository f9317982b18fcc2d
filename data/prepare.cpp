// bert_prepare build: cleaned text (one sentence a line, blank line between documents) -> shards.
//
// Streaming with bounded memory: documents are read in pools of at most --pool-mb of text. Each
// pool is tokenised on all threads, its documents are shuffled and split into train/validation
// (by a hash of (seed, document number), so the split does not depend on pool boundaries), and
// Google's NSP algorithm runs inside the pool: a random-next segment is drawn from another document
// of the same pool and split. This is what Google's own pipeline does when run once per input
// shard; a pool of 64 MB holds ~30k documents, plenty to make "random" mean random. Memory is
// O(pool), not O(corpus). Every random choice comes from Rng(mix(seed, pool, split)), so the same
// input + seed gives the same shards whatever the thread count.
#include "data/prepare.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <regex>
#include <thread>

#include "common/args.h"
#include "common/error.h"
#include "common/file.h"
#include "common/json.h"
#include "common/parallel.h"
#include "common/progress.h"
#include "common/signal_cleanup.h"
#include "data/clean.h"
#include "data/loader.h"
#include "data/nsp.h"
#include "data/shard.h"
#include "data/text_reader.h"
#include "tokenizer/tokenizer.h"

namespace bert {

namespace {

// One pool of raw sentences, packed: sentence i is text[sentence_begin[i], sentence_begin[i+1]).
struct RawPool {
  std::string text;
  std::vector<size_t> sentence_begin{0};
  std::vector<uint32_t> doc_begin{0};  // into sentences
  std::vector<uint64_t> doc_number;    // global document index, for the split hash
  size_t sentences() const { return sentence_begin.size() - 1; }
  std::string_view sentence(size_t i) const {
    return std::string_view(text).substr(sentence_begin[i], sentence_begin[i + 1] - sentence_begin[i]);
  }
  void add_sentence(std::string_view s) {
    text.append(s);
    sentence_begin.push_back(text.size());
  }
  void clear() {
    text.clear();
    sentence_begin.assign(1, 0);
    doc_begin.assign(1, 0);
    doc_number.clear();
  }
};

struct BuildTotals {
  uint64_t documents = 0, sentences = 0, bytes = 0, examples[2] = {0, 0}, tokens[2] = {0, 0}, random_next[2] = {0, 0},
           truncated = 0, skipped = 0, kept_next = 0, empty_sentences = 0, max_length[2] = {0, 0},
           single_document_pools[2] = {0, 0}, split_documents[2] = {0, 0};
};

// Token ids of a pool's sentences, packed per thread: sentence i's ids are
// ids[thread_of[i]][begin[i], begin[i] + length[i]).
struct TokenizedPool {
  std::vector<std::vector<int32_t>> ids;  // one buffer per thread
  std::vector<uint64_t> begin;
  std::vector<uint32_t> length;
  std::vector<uint16_t> thread_of;
  std::span<const int32_t> sentence(size_t i) const { return {ids[thread_of[i]].data() + begin[i], length[i]}; }
};

// Tokenises a pool's sentences on `threads` threads, each over a contiguous range.
void tokenize_pool(const Tokenizer& tok, const RawPool& raw, int threads, TokenizedPool& out) {
  const size_t n = raw.sentences();
  out.ids.resize(static_cast<size_t>(threads));
  out.begin.resize(n);
  out.length.resize(n);
  out.thread_of.resize(n);
  auto work = [&](size_t t) {
    EncodeScratch scratch;
    std::vector<int32_t>& buffer = out.ids[t];
    buffer.clear();
    for (size_t i = n * t / static_cast<size_t>(threads); i < n * (t + 1) / static_cast<size_t>(threads); ++i) {
      const size_t before = buffer.size();
      tok.encode(raw.sentence(i), buffer, scratch);
      out.begin[i] = before;
      out.length[i] = static_cast<uint32_t>(buffer.size() - before);
      out.thread_of[i] = static_cast<uint16_t>(t);
    }
  };
  run_parallel(static_cast<size_t>(threads), work);
}

// A shard file name this command writes: train-00000.bin, valid-00012.bin.
bool is_shard_file_name(const std::string& name) {
  static const std::regex kName("(train|valid)-[0-9]{5,}\\.bin");
  return std::regex_match(name, kName);
}

// The staging directory of a build (inside --out, hidden from input directories and from inspect).
constexpr const char* kStagingPrefix = ".building-";

// The lock a build holds on its --out directory (hidden, as staging is; removed when the build ends).
constexpr const char* kLockFileName = ".bert_prepare.lock";

// Removes the staging directories that builds killed before they could clean up left in `out_dir`.
// Holding the directory's lock, every one is stale (a running build would hold the lock, on whichever
// host); without a lock (a file system that cannot hold one) only those whose process is gone here.
void remove_stale_staging(const std::string& out_dir, bool locked) {
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(out_dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind(kStagingPrefix, 0) != 0) continue;
    const std::string pid = name.substr(std::strlen(kStagingPrefix));
    if (pid.empty() || pid.find_first_not_of("0123456789") != std::string::npos || pid.size() > 9) continue;
    if (locked || (::kill(static_cast<pid_t>(std::stol(pid)), 0) != 0 && errno == ESRCH))
      std::filesystem::remove_all(entry.path(), ec);
  }
}

}  // namespace

int prepare_build_command(const std::vector<std::string>& argv, std::ostream& out, std::ostream& err) {
  Args args("bert_prepare build",
            "bert_prepare build --tokenizer DIR --input FILE... --out DIR [--max-seq-len 128] [--short-seq-prob 0.1] "
            "[--nsp-prob 0.5] [--dupe-factor N] [--valid-fraction F] [--seed S] [--threads N]");
  args.option("--tokenizer", "tokenizer directory (bert_tokenizer train output)")
      .list("--input", "cleaned text: one sentence a line, a blank line between documents (.txt or .gz)")
      .option("--out", "output directory for the shards and manifest.json")
      .option("--max-seq-len", "maximum sequence length, [CLS] and two [SEP] included", "128")
      .option("--short-seq-prob", "probability of a shorter random target length", "0.1")
      .option("--nsp-prob",
              "probability that B is a random next sentence (a chunk of one sentence always takes a random B, as in "
              "Google's create_pretraining_data)",
              "0.5")
      .option("--dupe-factor", "how many times each document is turned into instances", "1")
      .option("--valid-fraction", "fraction of documents held out for validation", "0.01")
      .option("--seed", "random seed", "12345")
      .option("--threads", "tokenisation threads (0 = all cores)", "0")
      .option(
          "--pool-mb",
          "documents per NSP pool, in MB of text (peak memory ~7x this at --dupe-factor 1, more with each duplicate)",
          "64")
      .flag("--quiet", "no report");
  if (!args.parse(argv)) {
    out << args.help();
    return 0;
  }
  const auto& inputs = args.values("--input");
  if (inputs.empty()) throw Error("bert_prepare build: missing required option '--input' (see --help)");
  const std::string out_dir = without_trailing_slashes(args.str("--out"));
  const std::string tok_dir = without_trailing_slashes(args.str("--tokenizer"));
  // --out is made, not its parents (a mistyped path would make a tree), as clean's --out.
  if (const std::filesystem::path parent = std::filesystem::path(out_dir).parent_path();
      !parent.empty() && !is_directory(parent.string()))
    throw Error(out_dir + ": directory '" + parent.string() + "' does not exist (create it first)");
  NspOptions nsp;
  nsp.max_seq_len = static_cast<uint32_t>(args.integer("--max-seq-len", 5, 65535));
  nsp.short_seq_prob = args.number("--short-seq-prob");
  nsp.nsp_prob = args.number("--nsp-prob");
  nsp.dupe_factor = static_cast<uint32_t>(args.integer("--dupe-factor", 1, 1000));
  const double valid_fraction = args.number("--valid-fraction");
  // Below 2^53: manifest.json records it as a JSON number, exact only that far.
  const uint64_t seed = static_cast<uint64_t>(args.integer("--seed", 0, (int64_t{1} << 53) - 1));
  int threads = static_cast<int>(args.integer("--threads", 0, 1024));
  if (threads == 0) threads = std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  const size_t pool_bytes = static_cast<size_t>(args.integer("--pool-mb", 1, 1 << 20)) << 20;
  for (const auto& [name, v] : {std::pair{"--short-seq-prob", nsp.short_seq_prob}, std::pair{"--nsp-prob", nsp.nsp_prob},
                                std::pair{"--valid-fraction", valid_fraction}})
    if (!(v >= 0.0 && v <= 1.0)) throw Error(std::string("bert_prepare build: ") + name + " must be in [0, 1]");
  if (valid_fraction == 1.0)
    throw Error(
        "bert_prepare build: --valid-fraction 1 sends every document to validation and leaves none to train "
        "on; it must be below 1");
  // What this build writes must not be read back as input: a rebuild into a directory inside an input
  // directory would find the last build's tokenizer/vocab.txt there.
  for (const std::string& input : inputs)
    if (path_within(out_dir, input) && file_exists(input) && !is_directory(input))
      throw Error(input + ": is also the --out path; --out names the directory the shards go to");
  std::vector<std::string> files;
  for (std::string& f : expand_inputs(inputs)) {
    if (path_within(f, out_dir)) {
      err << f << ": warning: skipping a file inside the --out directory\n";
      continue;
    }
    files.push_back(std::move(f));
  }
  if (files.empty()) throw Error("bert_prepare build: every input file is inside the --out directory " + out_dir);

  const Tokenizer tok = Tokenizer::from_dir(tok_dir);
  tok.require({SpecialToken::kCls, SpecialToken::kSep, SpecialToken::kPad, SpecialToken::kMask}, tok_dir,
              "BERT pretraining");
  Json shards = Json::array();
  // Shards are written into a staging directory inside --out and moved into place once the build has
  // succeeded, so that a failed or interrupted rebuild leaves the previous build whole. A failed build
  // leaves nothing of its own behind: the staging directory goes, and so does the output directory
  // when it made it (and it is empty then); so does Ctrl-C or SIGTERM (install_signal_cleanup). A killed
  // build's staging directory goes at the next build.
  // Two builds into one --out at once would interleave their shards: the second is refused.
  const std::string staging = out_dir + "/" + kStagingPrefix + std::to_string(::getpid());
  struct Cleanup {
    const std::string& dir;
    const std::string& staging;
    bool created;
    bool done = false;
    SignalCleanup staging_on_signal{}, created_on_signal{};  // Ctrl-C's share of the same
    ~Cleanup() {  // after the lock's, which removes its file
      std::error_code ec;
      std::filesystem::remove_all(staging, ec);
      staging_on_signal.release();
      created_on_signal.release();
      if (!done && created) std::filesystem::remove(dir, ec);  // fails, as it should, when anything else is there
    }
  } cleanup{out_dir, staging, !file_exists(out_dir)};
  if (cleanup.created) cleanup.created_on_signal = SignalCleanup(out_dir, SignalCleanup::kEmptyDirectory);
  const DirectoryLock lock(out_dir, kLockFileName, "bert_prepare build", "--out directory");
  if (!lock.unsupported().empty())
    err << "warning: " << out_dir << ": not locked (" << lock.unsupported()
        << "): nothing stops a second bert_prepare build from writing to it at the same time\n";
  remove_stale_staging(out_dir, lock.unsupported().empty());
  make_directories(staging);
  cleanup.staging_on_signal = SignalCleanup(staging);
  const auto t0 = std::chrono::steady_clock::now();
  Progress progress(!args.has("--quiet"));

  BuildTotals totals;
  RawPool raw;
  TokenizedPool ids;
  size_t pool_index = 0;
  uint64_t doc_counter = 0;
  bool in_document = false;
  const uint32_t vocab_size = static_cast<uint32_t>(tok.vocab().size());

  auto flush_pool = [&]() {
    if (raw.doc_begin.size() <= 1) return;
    tokenize_pool(tok, raw, threads, ids);
    DocumentPool pools[2];
    for (size_t d = 0; d + 1 < raw.doc_begin.size(); ++d) {
      const double u = static_cast<double>(mix_seed(seed, raw.doc_number[d]) >> 11) * 0x1.0p-53;
      DocumentPool& p = pools[u < valid_fraction ? 1 : 0];
      ++totals.split_documents[u < valid_fraction ? 1 : 0];
      for (uint32_t s = raw.doc_begin[d]; s < raw.doc_begin[d + 1]; ++s) {
        if (ids.length[s] == 0) {
          ++totals.empty_sentences;
          continue;
        }
        p.add_sentence(ids.sentence(s));
      }
      p.end_document();
    }
    for (int split = 0; split < 2; ++split) {
      DocumentPool& p = pools[split];
      if (p.documents() == 0) continue;
      Rng rng(mix_seed(seed, pool_index, static_cast<uint64_t>(split)));
      // Google shuffles the documents before creating instances.
      std::vector<uint32_t> order(p.documents());
      for (uint32_t i = 0; i < order.size(); ++i) order[i] = i;
      rng.shuffle(order.data(), order.size());
      DocumentPool shuffled;
      for (uint32_t d : order) {
        for (uint32_t s = p.doc_begin[d]; s < p.doc_begin[d + 1]; ++s) shuffled.add_sentence(p.sentence(s));
        shuffled.end_document();
      }
      ShardWriter writer(vocab_size, nsp.max_seq_len, static_cast<Split>(split));
      NspStats st;
      create_nsp_instances(
          shuffled, nsp, rng,
          [&](std::span<const int32_t> a, std::span<const int32_t> b, bool random_next) {
            writer.add(a, b, random_next);
            const uint64_t len = a.size() + b.size() + 3;
            totals.max_length[split] = std::max(totals.max_length[split], len);
          },
          st);
      totals.examples[split] += st.instances;
      totals.random_next[split] += st.random_next;
      totals.truncated += st.truncated;
      totals.skipped += st.skipped_no_other_document;
      totals.kept_next += st.kept_next_no_other_document;
      totals.single_document_pools[split] += p.documents() == 1;
      totals.tokens[split] += writer.tokens();
      if (writer.examples() == 0) continue;
      char name[64];
      std::snprintf(name, sizeof name, "%s-%05zu.bin", split_name(static_cast<Split>(split)), pool_index);
      const ShardHeader h = writer.write(staging + "/" + name);
      Json entry = Json::object();
      entry.set("file", name);
      entry.set("split", split_name(static_cast<Split>(split)));
      entry.set("examples", h.example_count);
      entry.set("tokens", h.token_count);
      entry.set("checksum", std::to_string(h.checksum));
      shards.push(entry);
    }
    ++pool_index;
    raw.clear();
  };

  uint64_t invalid_utf8_lines = 0;
  for (const auto& path : files) {
    LineReader reader(path);
    std::string_view line;
    while (reader.next(line)) {
      if (reader.invalid_in_line() && invalid_utf8_lines++ < 10)
        err << path << ":" << reader.line_number() << ": warning: invalid UTF-8 replaced by U+FFFD\n";
      size_t b = 0, e = line.size();
      while (b < e && (line[b] == ' ' || line[b] == '\t' || line[b] == '\r')) ++b;
      while (e > b && (line[e - 1] == ' ' || line[e - 1] == '\t' || line[e - 1] == '\r')) --e;
      totals.bytes += line.size() + 1;
      // Blank as clean (and Python's str.strip(), Google's and HF's test) sees it: a line of U+3000, NBSP
      // or form feeds separates documents too.
      if (b == e || is_blank_line(line.substr(b, e - b))) {
        if (in_document) {
          raw.doc_begin.push_back(static_cast<uint32_t>(raw.sentences()));
          in_document = false;
          if (raw.text.size() >= pool_bytes) flush_pool();
        }
        continue;
      }
      if (!in_document) {
        raw.doc_number.push_back(doc_counter++);
        in_document = true;
      }
      raw.add_sentence(line.substr(b, e - b));
      ++totals.sentences;
      if (progress.enabled() && (totals.sentences & 1023) == 0)
        progress.update("reading: " + human_bytes(static_cast<double>(totals.bytes)) + ", " +
                      std::to_string(doc_counter) + " documents, " + std::to_string(totals.examples[0]) + " examples");
    }
    // A file's end closes its last document (and a pool, when it is full: a corpus of one document a
    // file has no blank lines).
    if (in_document) {
      raw.doc_begin.push_back(static_cast<uint32_t>(raw.sentences()));
      in_document = false;
      if (raw.text.size() >= pool_bytes) flush_pool();
    }
  }
  flush_pool();
  progress.finish();
  if (invalid_utf8_lines > 10) err << "warning: " << invalid_utf8_lines << " line(s) with invalid UTF-8 in total\n";
  totals.documents = doc_counter;
  if (totals.examples[0] + totals.examples[1] == 0)
    throw Error("bert_prepare build: no examples produced (empty input, or every document too short to pair)");
  if (totals.examples[0] == 0) {
    // Nothing bert_train could use: the validation shards just written go too (cleanup).
    throw Error("bert_prepare build: no training examples: the validation split holds all " +
                std::to_string(totals.examples[1]) + " (--valid-fraction " + args.str("--valid-fraction") + " of " +
                std::to_string(totals.documents) + " document(s)); lower it or add input");
  }
  if (valid_fraction > 0 && totals.examples[1] == 0) {
    err << "warning: --valid-fraction " << args.str("--valid-fraction") << " sent ";
    if (totals.split_documents[1] == 0)
      err << "none of the " << totals.documents << " document(s) to validation (each goes with that probability)";
    else
      err << totals.split_documents[1] << " of the " << totals.documents
          << " document(s) to validation, and they gave no examples (too short to pair)";
    err << ": there is no valid split, and bert_train evaluates nothing unless [data] valid_data names other "
           "shards (raise it, or add input)\n";
  }
  if (const uint64_t single = totals.single_document_pools[0] + totals.single_document_pools[1]; single > 0)
    err << "warning: " << single << " pool(s) held a single document (train " << totals.single_document_pools[0]
        << ", valid " << totals.single_document_pools[1] << "): with no other document to draw a random next "
        << "sentence from, " << totals.kept_next << " pair(s) kept their actual next segment and " << totals.skipped
        << " single-sentence chunk(s) were skipped, so every NSP label there is 0 (more documents per pool: "
        << (totals.single_document_pools[1] ? "a larger --valid-fraction, " : "") << "a larger --pool-mb or input)\n";

  // Google's recipe makes every chunk of one sentence a random-next pair, whatever --nsp-prob says:
  // a corpus of one-sentence documents (a line each, not split) teaches NSP nothing.
  for (int split = 0; split < 2; ++split) {
    const uint64_t n = totals.examples[split], r = totals.random_next[split];
    if (n >= 20 && static_cast<double>(r) > static_cast<double>(n) * std::max(0.9, nsp.nsp_prob + 0.3)) {
      err << "warning: " << std::lround(100.0 * static_cast<double>(r) / static_cast<double>(n)) << "% of the "
          << split_name(static_cast<Split>(split)) << " pairs are random-next (--nsp-prob " << args.str("--nsp-prob")
          << "): ";
      // Documents of several sentences (2 on average at least): then the chunks hold one because
      // --max-seq-len leaves room for no more.
      if (totals.sentences >= 2 * totals.documents)
        err << "a chunk of one sentence always takes a random B, and --max-seq-len " << args.str("--max-seq-len")
            << " leaves room for one sentence a chunk; give it more room\n";
      else
        err << "most documents hold a single sentence, and a chunk of one sentence always takes a random B; "
               "split documents into sentences (bert_prepare clean --split-sentences) or join them\n";
    }
  }

  // Into place: the old manifest goes first (a build cut short from here on leaves none, never one
  // listing shards of two builds), then an earlier build's shards, then this one's move in. Tokenizer
  // files travel with the shards so inspect and the trainer can check and decode them.
  std::filesystem::remove(out_dir + "/manifest.json");
  {
    std::error_code ec;
    std::vector<std::filesystem::path> old;
    for (const auto& entry : std::filesystem::directory_iterator(out_dir, ec))
      if (entry.is_regular_file(ec) && is_shard_file_name(entry.path().filename().string()))
        old.push_back(entry.path());
    for (const auto& path : old) std::filesystem::remove(path, ec);
  }
  for (const Json& entry : shards.as_array()) {
    const std::string& name = entry.find("file")->as_string();
    std::error_code ec;
    std::filesystem::rename(staging + "/" + name, out_dir + "/" + name, ec);
    if (ec) throw Error(out_dir + "/" + name + ": cannot move the new shard into place: " + ec.message());
  }
  make_directories(out_dir + "/tokenizer");
  tok.save(out_dir + "/tokenizer");

  Json manifest = Json::object();
  manifest.set("format", "bertforge-shards");
  manifest.set("version", static_cast<int>(kShardVersion));
  manifest.set("vocab_size", static_cast<uint64_t>(vocab_size));
  manifest.set("vocab_hash", std::to_string(vocabulary_hash(tok.vocab())));
  manifest.set("max_seq_len", static_cast<uint64_t>(nsp.max_seq_len));
  manifest.set("short_seq_prob", nsp.short_seq_prob);
  manifest.set("nsp_prob", nsp.nsp_prob);
  manifest.set("dupe_factor", static_cast<uint64_t>(nsp.dupe_factor));
  manifest.set("valid_fraction", valid_fraction);
  manifest.set("seed", seed);
  manifest.set("documents", totals.documents);
  manifest.set("sentences", totals.sentences);
  manifest.set("shards", shards);
  write_file_atomic(out_dir + "/manifest.json", manifest.dump(2) + "\n");
  cleanup.done = true;

  if (!args.has("--quiet")) {
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    out << "built NSP shards -> " << out_dir << "\n"
        << "  input       " << human_bytes(static_cast<double>(totals.bytes)) << ", " << totals.documents
        << " documents, " << totals.sentences << " sentences (" << totals.empty_sentences << " empty after tokenising)\n";
    for (int s = 0; s < 2; ++s) {
      if (!totals.examples[s]) continue;
      out << "  " << split_name(static_cast<Split>(s)) << "       " << totals.examples[s] << " examples, "
          << totals.tokens[s] + 3 * totals.examples[s] << " tokens, random-next "
          << (totals.examples[s] ? 100.0 * static_cast<double>(totals.random_next[s]) / static_cast<double>(totals.examples[s]) : 0.0)
          << "%, max length " << totals.max_length[s] << " / " << nsp.max_seq_len << "\n";
    }
    out << "  truncated   " << totals.truncated << " pairs; no other document: " << totals.skipped
        << " chunks skipped, " << totals.kept_next << " kept their actual next\n"
        << "  time        " << secs << " s (" << static_cast<double>(totals.bytes) / 1e6 / secs << " MB/s), peak RSS "
        << human_bytes(static_cast<double>(peak_rss_bytes())) << ", " << threads << " thread(s)\n";
  }
  return 0;
}

}  // namespace bert

namespace bert {

namespace {

// Shard files named by a directory (its manifest, else every *.bin in it) or given directly, and the
// vocabulary hash the manifest records.
struct ShardList {
  std::vector<std::string> paths;
  std::string manifest_path;
  std::vector<Json> entries;  // the manifest's entry for each path, when there is a manifest
  std::vector<size_t> entry_indices;  // ... and its index there
  std::string dataset_dir;            // the manifest's directory
  std::optional<uint64_t> vocab_hash;
};

// DIR/manifest.json's shards (only the one named `only`, when given) and vocabulary hash into `list`.
void read_manifest(const std::string& dir, ShardList& list, const std::string* only = nullptr) {
  const std::string manifest = dir + "/manifest.json";
  const Json m = Json::parse(read_file(manifest), manifest);
  const Json* shards = m.find("shards");
  if (!shards || !shards->is_array()) throw Error(manifest + ": missing 'shards' list");
  for (size_t i = 0; i < shards->as_array().size(); ++i) {
    const Json& s = shards->as_array()[i];
    const Json* f = s.find("file");
    if (!f || !f->is_string()) throw Error(manifest + ": shard entry without 'file'");
    if (only && f->as_string() != *only) continue;
    list.paths.push_back(dir + "/" + f->as_string());
    list.entries.push_back(s);
    list.entry_indices.push_back(i);
    if (only) break;  // (its first entry, as the loader's lookup by name would find)
  }
  list.manifest_path = manifest;
  list.dataset_dir = dir;
  list.vocab_hash = manifest_vocab_hash(m, manifest);
}

// `problems` counts what inspect reports on `err` and exits 1 for: here, a manifest beside a lone shard
// that cannot be read (the shard is inspected all the same: this is the tool for a half-built dir).
ShardList shard_paths(const std::string& target, std::ostream& err, size_t& problems) {
  ShardList list;
  if (!is_directory(target)) {
    if (!file_exists(target)) throw Error(target + ": no such shard file or directory");
    // A shard its directory's manifest lists is checked against that entry, and decoded only with the
    // vocabulary the manifest records (one of the same size is not enough).
    const std::filesystem::path path(target);
    const std::string dir = path.has_parent_path() ? path.parent_path().string() : std::string(".");
    const std::string name = path.filename().string();
    // The manifest itself: what a user means is the directory it describes.
    if (name == "manifest.json") return shard_paths(dir, err, problems);
    if (file_exists(dir + "/manifest.json")) {
      try {
        read_manifest(dir, list, &name);
      } catch (const Error& e) {
        err << "error: " << e.what() << " (inspecting " << target << " without it)\n";
        ++problems;
        list = ShardList{};
      }
      if (!list.paths.empty()) {
        list.paths = {target};
        return list;
      }
      if (!list.manifest_path.empty())
        err << "note: " << list.manifest_path << " does not list " << name
            << ": the shard is not checked against it, nor its vocabulary\n";
      list = ShardList{};
    }
    list.paths.push_back(target);
    return list;
  }
  if (file_exists(target + "/manifest.json")) {
    read_manifest(target, list);
    return list;
  }
  for (const auto& e : std::filesystem::directory_iterator(target))
    if (e.path().extension() == ".bin") list.paths.push_back(e.path().string());
  std::sort(list.paths.begin(), list.paths.end());
  if (list.paths.empty()) throw Error(target + ": no manifest.json and no .bin shards");
  return list;
}

}  // namespace

int prepare_inspect_command(const std::vector<std::string>& argv, std::ostream& out, std::ostream& err) {
  Args args("bert_prepare inspect", "bert_prepare inspect DIR|SHARD [--json] [--decode N|all] [--tokenizer DIR]");
  args.flag("--json", "print the statistics as JSON")
      .option("--decode", "decode the first N examples (or all) back to text")
      .option("--tokenizer", "tokenizer for --decode (default: DIR/tokenizer, or for one shard its manifest's DIR's)");
  if (!args.parse(argv)) {
    out << args.help();
    return 0;
  }
  if (args.positional().size() != 1) throw Error("bert_prepare inspect: expected one shard directory or file (see --help)");
  const std::string target = without_trailing_slashes(args.positional()[0]);
  size_t stale = 0;  // shards that disagree with their manifest entry, or a manifest that cannot be read
  const ShardList listed = shard_paths(target, err, stale);
  const std::vector<std::string>& paths = listed.paths;

  struct SplitStats {
    uint64_t examples = 0, tokens = 0, random_next = 0, max_length = 0, shards = 0;
    std::map<uint64_t, uint64_t> histogram;  // bucket start -> count
  };
  std::map<std::string, SplitStats> splits;
  uint32_t vocab_size = 0, max_seq_len = 0;
  std::vector<std::unique_ptr<Shard>> shards;
  for (size_t k = 0; k < paths.size(); ++k) {
    const std::string& p = paths[k];
    auto shard = std::make_unique<Shard>(p);
    // A shard that is not the one its manifest lists is reported, and inspected all the same: this
    // is the tool for looking into a half-rebuilt directory. The exit status says so.
    if (!listed.entries.empty()) {
      try {
        check_manifest_entry(listed.entries[k], listed.entry_indices[k], *shard, listed.manifest_path);
      } catch (const Error& e) {
        err << "error: " << e.what() << "\n";
        ++stale;
      }
    }
    const ShardHeader& h = shard->header();
    if (vocab_size && h.vocab_size != vocab_size) throw Error(p + ": vocabulary size differs from the other shards");
    vocab_size = h.vocab_size;
    max_seq_len = std::max(max_seq_len, h.max_seq_len);
    SplitStats& s = splits[split_name(h.split)];
    ++s.shards;
    const uint64_t bucket = std::max<uint64_t>(1, h.max_seq_len / 8);
    for (size_t i = 0; i < shard->size(); ++i) {
      const uint64_t len = shard->length(i) + 3;
      s.examples++;
      s.tokens += len;
      s.random_next += shard->nsp_label(i);
      s.max_length = std::max(s.max_length, len);
      s.histogram[(len - 1) / bucket * bucket + 1]++;
    }
    shards.push_back(std::move(shard));
  }
  Json j = Json::object();
  j.set("shards", static_cast<uint64_t>(paths.size()));
  j.set("vocab_size", static_cast<uint64_t>(vocab_size));
  j.set("max_seq_len", static_cast<uint64_t>(max_seq_len));
  Json js = Json::object();
  for (const auto& [name, s] : splits) {
    Json e = Json::object();
    e.set("split", name);
    e.set("shards", s.shards);
    e.set("examples", s.examples);
    e.set("tokens", s.tokens);
    e.set("nsp_random_next_fraction", s.examples ? static_cast<double>(s.random_next) / static_cast<double>(s.examples) : 0.0);
    e.set("max_length", s.max_length);
    e.set("mean_length", s.examples ? static_cast<double>(s.tokens) / static_cast<double>(s.examples) : 0.0);
    Json hist = Json::object();
    const uint64_t bucket = std::max<uint64_t>(1, max_seq_len / 8);
    for (const auto& [start, count] : s.histogram)
      hist.set(std::to_string(start) + "-" + std::to_string(start + bucket - 1), count);
    e.set("length_histogram", hist);
    js.set(name, e);
  }
  j.set("splits", js);

  std::vector<std::string> decoded;
  if (args.has("--decode")) {
    const std::string how = args.str("--decode");
    const size_t limit = how == "all" ? SIZE_MAX : static_cast<size_t>(args.integer("--decode", 0));
    // (The dataset's copy of its tokenizer, also for a shard its manifest lists.)
    const std::string tok_dir = args.maybe("--tokenizer")
                                    .value_or(is_directory(target)          ? target + "/tokenizer"
                                              : !listed.dataset_dir.empty() ? listed.dataset_dir + "/tokenizer"
                                                                            : "");
    if (tok_dir.empty())
      throw Error(
          "bert_prepare inspect: --decode on a shard not listed in a manifest.json beside it needs --tokenizer DIR");
    const Tokenizer tok = Tokenizer::from_dir(tok_dir);
    if (tok.vocab().size() != vocab_size)
      throw Error(tok_dir + ": tokenizer has " + std::to_string(tok.vocab().size()) + " tokens, shards were built with " +
                  std::to_string(vocab_size));
    check_vocab_hash(listed.vocab_hash, listed.manifest_path, tok.vocab(), tok_dir);
    std::vector<int32_t> a, b;
    for (const auto& shard : shards) {
      for (size_t i = 0; i < shard->size() && decoded.size() < limit; ++i) {
        shard->example(i, a, b);
        decoded.push_back("[CLS] A: " + tok.decode(a) + " [SEP] B: " + tok.decode(b) + " [SEP]  (" +
                          (shard->nsp_label(i) ? "random next" : "actual next") + ", " +
                          std::to_string(a.size() + b.size() + 3) + " tokens)");
      }
    }
  }
  if (args.has("--json")) {
    if (!decoded.empty()) {
      Json ex = Json::array();
      for (const auto& d : decoded) ex.push(d);
      j.set("decoded", ex);
    }
    out << j.dump(2) << "\n";
    return stale ? 1 : 0;
  }
  out << target << ": " << paths.size() << " shard(s), vocab " << vocab_size << ", max_seq_len " << max_seq_len << "\n";
  for (const auto& [name, s] : splits) {
    out << "  " << name << ": " << s.examples << " examples, " << s.tokens << " tokens, mean length "
        << (s.examples ? static_cast<double>(s.tokens) / static_cast<double>(s.examples) : 0.0) << ", max length "
        << s.max_length << ", nsp_random_next_fraction "
        << (s.examples ? static_cast<double>(s.random_next) / static_cast<double>(s.examples) : 0.0) << "\n";
    uint64_t peak = 1;
    for (const auto& [start, count] : s.histogram) peak = std::max(peak, count);
    const uint64_t bucket = std::max<uint64_t>(1, max_seq_len / 8);
    for (const auto& [start, count] : s.histogram) {
      char label[48];
      std::snprintf(label, sizeof label, "    %4llu-%-4llu %9llu ", static_cast<unsigned long long>(start),
                    static_cast<unsigned long long>(start + bucket - 1), static_cast<unsigned long long>(count));
      out << label << std::string(static_cast<size_t>(40 * count / peak), '#') << "\n";
    }
  }
  for (size_t i = 0; i < decoded.size(); ++i) out << "#" << i << " " << decoded[i] << "\n";
  return stale ? 1 : 0;
}

int prepare_main(const std::vector<std::string>& argv, std::ostream& out, std::ostream& err) {
  const std::string usage =
      "usage: bert_prepare <command> [options]\n\n"
      "commands:\n"
      "  clean     raw text -> cleaned, PII-scrubbed, one sentence a line, blank line between documents\n"
      "  build     cleaned text -> tokenised NSP shards (train + validation)\n"
      "  inspect   statistics and decoded examples of shards\n\n"
      "Run 'bert_prepare <command> --help' for the options of a command.\n";
  if (argv.empty() || argv[0] == "-h" || argv[0] == "--help") {
    (argv.empty() ? err : out) << usage;
    return argv.empty() ? 2 : 0;
  }
  const std::vector<std::string> rest(argv.begin() + 1, argv.end());
  if (argv[0] == "build") return prepare_build_command(rest, out, err);
  if (argv[0] == "inspect") return prepare_inspect_command(rest, out, err);
  if (argv[0] == "clean") return prepare_clean_command(rest, out, err);
  throw Error("bert_prepare: unknown command '" + argv[0] + "' (expected clean, build or inspect)");
}

}  // namespace bert
