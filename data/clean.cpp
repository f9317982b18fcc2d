#include "data/clean.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <ostream>
#include <thread>
#include <unordered_set>

#include "common/args.h"
#include "common/error.h"
#include "common/file.h"
#include "common/parallel.h"
#include "common/progress.h"
#include "data/sentence_splitter.h"
#include "data/text_reader.h"
#include "tokenizer/unicode.h"

namespace bert {

namespace fs = std::filesystem;

namespace {

constexpr size_t kBatchBytes = size_t{4} << 20;
constexpr size_t kMaxDocumentBytes = size_t{64} << 20;
constexpr size_t kMaxWarnings = 10;

enum class CharAction { kKeep, kSpace, kDrop };

// What normalisation does with the multi-byte character at s[0, len): exactly what the tokenizer's
// clean_text does (tokenizer/unicode.h, HF's tables), so the PII scrubber reads the text the model
// will: a soft hyphen, a zero-width joiner, a direction mark or an invalid byte (U+FFFD, from the
// reader) between the digits of a phone number is dropped here, as the tokenizer would drop it,
// instead of hiding the number from the scrubber. Whitespace (NBSP, U+2000-200A, U+3000, ...) is a
// space; controls, format characters (Cf), private use (Co) and U+FFFD are dropped.
CharAction classify_multibyte(const unsigned char* s, size_t len) {
  char32_t c;
  if (len == 2 && (s[1] & 0xC0) == 0x80) {
    c = static_cast<char32_t>(s[0] & 0x1F) << 6 | (s[1] & 0x3F);
  } else if (len == 3 && (s[1] & 0xC0) == 0x80 && (s[2] & 0xC0) == 0x80) {
    c = static_cast<char32_t>(s[0] & 0x0F) << 12 | static_cast<char32_t>(s[1] & 0x3F) << 6 | (s[2] & 0x3F);
  } else if (len == 4 && (s[1] & 0xC0) == 0x80 && (s[2] & 0xC0) == 0x80 && (s[3] & 0xC0) == 0x80) {
    c = static_cast<char32_t>(s[0] & 0x07) << 18 | static_cast<char32_t>(s[1] & 0x3F) << 12 |
        static_cast<char32_t>(s[2] & 0x3F) << 6 | (s[3] & 0x3F);
  } else {
    return CharAction::kKeep;  // not reached: the reader hands over valid UTF-8 only
  }
  if (unicode::is_whitespace(c)) return CharAction::kSpace;
  if (c == 0xFFFD || unicode::is_control(c)) return CharAction::kDrop;
  return CharAction::kKeep;
}

bool is_fullwidth_digit(const unsigned char* c, size_t len) {
  return len >= 3 && c[0] == 0xEF && c[1] == 0xBC && c[2] >= 0x90 && c[2] <= 0x99;
}

// The ASCII character the multi-byte character c[0, len) is folded to, or 0. Fullwidth digits and
// the fullwidth - + . @ ( ) that numbers and addresses are written with become ASCII (their NFKC
// mapping; the tokenizer keeps them as they are, so ０１０－１２３４－５６７８ would otherwise reach the
// model unscrubbed); a dash between two digits (U+2010-2015 hyphens, figure, en and em dash,
// horizontal bar, U+2212 minus, U+FE58 and U+FE63 small dash and hyphen-minus, U+3161 Hangul ㅡ, which
// informal Korean writes numbers with: 900101–1234567, 010ㅡ1234ㅡ5678) becomes '-'.
char ascii_fold(const unsigned char* c, size_t len, unsigned char before, std::string_view next) {
  if (len != 3) return 0;
  if (c[0] == 0xEF && c[1] == 0xBC && c[2] >= 0x80) {  // U+FF00-FF3F: fullwidth forms of U+0020-005F
    const char ascii = static_cast<char>(c[2] - 0x60);
    return std::string_view("0123456789-+.@()").find(ascii) != std::string_view::npos ? ascii : 0;
  }
  const bool dash =
      (c[0] == 0xE2 && ((c[1] == 0x80 && c[2] >= 0x90 && c[2] <= 0x95) || (c[1] == 0x88 && c[2] == 0x92))) ||
      (c[0] == 0xEF && c[1] == 0xB9 && (c[2] == 0x98 || c[2] == 0xA3)) ||
      (c[0] == 0xE3 && c[1] == 0x85 && c[2] == 0xA1);
  if (!dash || before < '0' || before > '9' || next.empty()) return 0;
  const auto* after = reinterpret_cast<const unsigned char*>(next.data());
  return (after[0] >= '0' && after[0] <= '9') || is_fullwidth_digit(after, next.size()) ? '-' : 0;
}

size_t utf8_length(unsigned char lead) { return lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1; }

struct DocHash {
  uint64_t a, b;
  bool operator==(const DocHash& o) const { return a == o.a && b == o.b; }
};
struct DocHashHasher {
  size_t operator()(const DocHash& h) const { return static_cast<size_t>(h.a); }
};

// Two independent 64-bit hashes (libstdc++'s murmur-based one and a word-at-a-time
// multiply-xorshift): an accidental collision, which would drop a unique document, is ~2^-128 per
// pair. Both read 8 bytes a step, so hashing costs little next to cleaning.
DocHash hash_document(std::string_view text) {
  uint64_t h = 0x9E3779B97F4A7C15ull ^ (text.size() * 0xC2B2AE3D27D4EB4Full);
  size_t i = 0;
  for (; i + 8 <= text.size(); i += 8) {
    uint64_t w;
    std::memcpy(&w, text.data() + i, 8);
    h = (h ^ w) * 0xFF51AFD7ED558CCDull;
    h ^= h >> 32;
  }
  uint64_t tail = 0;
  std::memcpy(&tail, text.data() + i, text.size() - i);
  h = (h ^ tail) * 0xC4CEB9FE1A85EC53ull;
  h ^= h >> 29;
  return {static_cast<uint64_t>(std::hash<std::string_view>{}(text)), h};
}

// A batch of raw documents and, after cleaning, their results.
struct Batch {
  std::string raw;              // each document's lines, each line followed by '\n'
  std::vector<size_t> doc_end;  // end offset of each document in `raw`
  struct Result {
    uint32_t slice;  // which worker's arena holds the text
    size_t offset, length;
    size_t sentences;
    DocHash hash;
  };
  std::vector<Result> results;
  std::vector<std::string> arenas;  // one per worker slice

  size_t documents() const { return doc_end.size(); }
  std::string_view document(size_t i) const {
    const size_t begin = i == 0 ? 0 : doc_end[i - 1];
    return std::string_view(raw).substr(begin, doc_end[i] - begin);
  }
  void clear() {
    raw.clear();
    doc_end.clear();
  }
};

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

void normalize_line(std::string_view line, std::string& out) {
  const auto* s = reinterpret_cast<const unsigned char*>(line.data());
  const size_t n = line.size();
  const size_t base = out.size();
  out.reserve(base + n);
  bool pending_space = false;
  constexpr size_t kNone = std::string_view::npos;
  size_t run = kNone;  // start of the run of kept bytes not yet copied (copied in one append)
  auto keep = [&](size_t i) {
    if (run != kNone) return;
    if (pending_space && out.size() > base) out.push_back(' ');
    pending_space = false;
    run = i;
  };
  auto flush = [&](size_t i) {
    if (run == kNone) return;
    out.append(line.data() + run, i - run);
    run = kNone;
  };
  size_t i = 0;
  while (i < n) {
    const unsigned char c = s[i];
    if (c < 0x80) {
      if (c > 0x20 && c != 0x7F) {
        keep(i);
      } else {
        flush(i);
        if (c == ' ' || (c >= '\t' && c <= '\r')) pending_space = true;  // other C0 and DEL: dropped
      }
      ++i;
      continue;
    }
    if (c >= 0xE4 && c <= 0xED && i + 3 <= n) {  // U+4000-DFFF (CJK, Hangul): no space, control or Cf
      keep(i);
      i += 3;
      continue;
    }
    const size_t len = std::min(utf8_length(c), n - i);
    const unsigned char before = run != kNone ? s[i - 1] : !pending_space && out.size() > base ? out.back() : 0;
    if (const char ascii = ascii_fold(s + i, len, before, std::string_view(line).substr(i + len))) {
      flush(i);
      if (pending_space && out.size() > base) out.push_back(' ');
      pending_space = false;
      out.push_back(ascii);
      i += len;
      continue;
    }
    switch (classify_multibyte(s + i, len)) {
      case CharAction::kKeep:
        keep(i);
        break;
      case CharAction::kSpace:
        flush(i);
        pending_space = true;
        break;
      case CharAction::kDrop:
        flush(i);
        break;
    }
    i += len;
  }
  flush(n);
}

bool is_blank_line(std::string_view line) {
  const auto* s = reinterpret_cast<const unsigned char*>(line.data());
  const size_t n = line.size();
  for (size_t i = 0; i < n;) {
    const unsigned char c = s[i];
    if (c < 0x80) {
      if (c > 0x20 && c != 0x7F) return false;
      ++i;
      continue;
    }
    const size_t len = std::min(utf8_length(c), n - i);
    if (classify_multibyte(s + i, len) == CharAction::kKeep) return false;
    i += len;
  }
  return true;
}

bool sentence_ends_between(std::string_view before, std::string_view after) {
  constexpr size_t kContext = 64;  // the splitter decides from the words around the junction
  const auto continuation = [](char c) { return (static_cast<unsigned char>(c) & 0xC0) == 0x80; };
  size_t from = before.size() > kContext ? before.size() - kContext : 0;
  while (from < before.size() && continuation(before[from])) ++from;
  size_t to = std::min(after.size(), kContext);
  while (to > 0 && to < after.size() && continuation(after[to])) --to;
  std::string window(before.substr(from));
  const size_t junction = window.size();
  window.push_back(' ');
  window.append(after.substr(0, to));
  std::vector<std::string_view> sentences;
  split_sentences(window, sentences);
  for (const std::string_view sentence : sentences) {
    const auto end = static_cast<size_t>(sentence.data() + sentence.size() - window.data());
    if (end >= junction) return end == junction;
  }
  return false;
}

void join_wrapped_line(std::string& paragraph, std::string_view line) {
  const size_t n = paragraph.size();
  // (A byte >= 0x80 ends a non-ASCII character: a Hangul syllable, a letter.)
  const auto before = n >= 2 ? static_cast<unsigned char>(paragraph[n - 2]) : 0;
  const bool hyphenated = n >= 2 && paragraph[n - 1] == '-' && (std::isalnum(before) != 0 || before >= 0x80);
  if (!paragraph.empty() && !hyphenated) paragraph.push_back(' ');
  paragraph.append(line);
}

size_t DocumentCleaner::clean(std::string_view lines, std::string& out) {
  size_t sentences = 0;
  const size_t doc_begin = out.size();
  auto emit = [&](std::string_view sentence) {
    if (out.size() > doc_begin) out.push_back('\n');
    out.append(sentence);
    ++sentences;
  };
  auto emit_line = [&](std::string_view text) {
    if (options_.split_sentences) {
      sentences_.clear();
      split_sentences(text, sentences_);
      for (std::string_view s : sentences_) emit(s);
    } else {
      emit(text);
    }
  };
  // With --join-wrapped-lines, lines (scrubbed) are joined into a paragraph until a sentence ends
  // between it and the next line (sentence_ends_between).
  // At kMaxJoinedBytes the paragraph is let go up to its last sentence end, the rest carried on (all
  // of it when it has none: a table, a list). A paragraph is scrubbed again as a whole: what only the
  // joins bring together may match.
  joined_.clear();
  auto let_go = [&](size_t length) {
    paragraph_.assign(joined_, 0, length);
    const size_t next = joined_.find_first_not_of(' ', length);
    joined_.erase(0, next == std::string::npos ? joined_.size() : next);
    if (options_.scrub_pii) {
      rescrubbed_.clear();  // (scrubbed_ holds the line being read)
      if (scrub_pii(paragraph_, rescrubbed_, pii_) > 0) paragraph_.swap(rescrubbed_);
    }
    emit_line(paragraph_);
  };
  auto deliver = [&](std::string_view line) {
    if (!options_.join_wrapped_lines) {
      emit_line(line);
      return;
    }
    if (!joined_.empty() && sentence_ends_between(joined_, line)) let_go(joined_.size());
    join_wrapped_line(joined_, line);
    if (joined_.size() >= kMaxJoinedBytes) {  // up to its last sentence end (the last sentence's start)
      sentences_.clear();
      split_sentences(joined_, sentences_);
      const size_t last = sentences_.size() < 2 ? 0 : static_cast<size_t>(sentences_.back().data() - joined_.data());
      size_t end = last;
      while (end > 0 && joined_[end - 1] == ' ') --end;
      let_go(end > 0 ? end : joined_.size());
    }
  };
  // Each line is held until the next is scrubbed: a number the text's wrapping broke between them is
  // scrubbed across the break (scrub_pii_across), which may change both.
  previous_.clear();
  tail_.clear();
  while (!lines.empty()) {
    const size_t nl = lines.find('\n');
    const std::string_view line = lines.substr(0, nl);
    lines.remove_prefix(nl == std::string_view::npos ? lines.size() : nl + 1);
    normalized_.clear();
    normalize_line(line, normalized_);
    if (normalized_.empty()) continue;
    if (!options_.scrub_pii) {
      deliver(normalized_);
      continue;
    }
    scrubbed_.clear();
    PiiMatch last{0, 0, PiiType::kRrn};
    next_tail_.clear();
    if (scrub_pii(normalized_, scrubbed_, pii_, &last) > 0 &&
        (last.end == normalized_.size() ||
         (last.end + 1 == normalized_.size() && (normalized_.back() == '.' || normalized_.back() == '-'))) &&
        pii_may_continue(std::string_view(normalized_).substr(last.begin), last.type)) {
      next_tail_.raw.assign(normalized_, last.begin);
      next_tail_.scrubbed.assign(pii_placeholder(last.type)).append(normalized_, last.end);
      next_tail_.type = last.type;
    }
    if (!scrub_pii_across(previous_, scrubbed_, pii_) && !tail_.raw.empty() && previous_.ends_with(tail_.scrubbed)) {
      // The held line's last match may be the first part of one across the break ("kim@korea.ac." alone
      // is an address of .ac, "4111-1111-1111-11" an account): tried again with its raw text, it gives
      // way to a match across, which takes its place and its count.
      retry_first_.assign(previous_, 0, previous_.size() - tail_.scrubbed.size()).append(tail_.raw);
      retry_second_ = scrubbed_;
      // Taken only if the match across covers the whole of the old one: the line is what came before it,
      // as it was, and one placeholder ("[CARD]", "[ACCOUNT]" at most 9 bytes).
      const size_t kept = previous_.size() - tail_.scrubbed.size();
      PiiCounts across;
      if (scrub_pii_across(retry_first_, retry_second_, across) && across.total() > 0 && retry_first_.size() > kept &&
          retry_first_.size() <= kept + 9 && retry_first_[kept] == '[' && retry_first_.back() == ']' &&
          retry_first_.compare(0, kept, previous_, 0, kept) == 0) {
        previous_.swap(retry_first_);
        scrubbed_.swap(retry_second_);
        --pii_[tail_.type];
        pii_ += across;
      }
    }
    if (!previous_.empty()) deliver(previous_);
    previous_.swap(scrubbed_);  // an empty rest of a line is dropped
    std::swap(tail_, next_tail_);
  }
  if (!previous_.empty()) deliver(previous_);
  if (!joined_.empty()) let_go(joined_.size());
  return sentences;
}

CleanStats clean_corpus(const std::vector<std::string>& files, const std::string& out_path, const CleanOptions& options,
                        std::ostream& err) {
  CleanStats stats;
  stats.files = files.size();
  const size_t workers = static_cast<size_t>(std::max(1, options.threads));
  std::vector<DocumentCleaner> cleaners(workers, DocumentCleaner(options));
  std::unordered_set<DocHash, DocHashHasher> seen;
  AtomicOutputFile output(out_path);
  Progress progress(true);
  uint64_t bytes_done = 0;  // of finished files
  size_t warnings = 0;

  Batch batch;
  batch.arenas.resize(workers);
  auto process_batch = [&] {
    const size_t docs = batch.documents();
    if (docs == 0) return;
    batch.results.assign(docs, {});
    // Worker w cleans documents [begin, end) into its own arena.
    auto work = [&](size_t w, size_t begin, size_t end) {
      std::string& arena = batch.arenas[w];
      arena.clear();
      for (size_t d = begin; d < end; ++d) {
        Batch::Result& r = batch.results[d];
        r.slice = static_cast<uint32_t>(w);
        r.offset = arena.size();
        r.sentences = cleaners[w].clean(batch.document(d), arena);
        r.length = arena.size() - r.offset;
        if (options.dedupe) r.hash = hash_document(std::string_view(arena).substr(r.offset, r.length));
      }
    };
    if (workers == 1 || docs < 2 * workers) {
      work(0, 0, docs);
    } else {
      run_parallel(workers, [&](size_t w) { work(w, docs * w / workers, docs * (w + 1) / workers); });
    }
    // In input order: dedupe and write.
    for (const Batch::Result& r : batch.results) {
      if (r.length == 0) continue;  // cannot happen for a non-blank document; kept as a guard
      if (options.dedupe && !seen.insert(r.hash).second) {
        ++stats.duplicates;
        continue;
      }
      if (stats.documents_out > 0) output.write("\n");
      output.write(std::string_view(batch.arenas[r.slice]).substr(r.offset, r.length));
      output.write("\n");
      ++stats.documents_out;
      stats.sentences += r.sentences;
    }
    batch.clear();
  };

  for (size_t f = 0; f < files.size(); ++f) {
    LineReader reader(files[f]);
    size_t doc_begin = batch.raw.size();
    bool in_doc = false;
    auto end_document = [&] {
      batch.doc_end.push_back(batch.raw.size());
      ++stats.documents_in;
      in_doc = false;
      if (batch.raw.size() >= kBatchBytes) {
        process_batch();
        progress.update("cleaning: file " + std::to_string(f + 1) + "/" + std::to_string(files.size()) + ", " +
                        human_bytes(static_cast<double>(bytes_done + reader.bytes_read())) + " read, " +
                        human_count(static_cast<double>(stats.documents_out)) + " documents written");
      }
      doc_begin = batch.raw.size();
    };
    std::string_view line;
    while (reader.next(line)) {
      if (reader.invalid_in_line() && warnings++ < kMaxWarnings)
        err << located(
                   files[f], reader.line_number(),
                   "warning: invalid UTF-8 (" + std::to_string(reader.invalid_in_line()) + " bad sequence(s)) dropped")
            << "\n";
      if (is_blank_line(line)) {
        if (in_doc) end_document();
        continue;
      }
      batch.raw.append(line);
      batch.raw.push_back('\n');
      in_doc = true;
      if (batch.raw.size() - doc_begin > kMaxDocumentBytes) {
        if (stats.long_documents_cut++ == 0)
          err << located(files[f], reader.line_number(),
                         "warning: document longer than " + std::to_string(kMaxDocumentBytes >> 20) +
                             " MiB, cut here (separate documents with blank lines)")
              << "\n";
        end_document();
      }
    }
    if (in_doc) end_document();
    bytes_done += reader.bytes_read();
    stats.invalid_utf8_lines += reader.invalid_lines();
  }
  process_batch();
  progress.finish();
  stats.bytes_in = bytes_done;
  for (const DocumentCleaner& c : cleaners) stats.pii += c.pii();
  if (stats.invalid_utf8_lines > kMaxWarnings)
    err << "warning: " << stats.invalid_utf8_lines << " line(s) with invalid UTF-8 in total\n";
  if (stats.documents_out == 0) {
    std::string names;
    for (const auto& f : files) names += (names.empty() ? "" : ", ") + f;
    throw Error(names + ": no documents (every line is blank); nothing written");
  }
  stats.bytes_out = output.bytes();
  output.commit();
  return stats;
}

int prepare_clean_command(const std::vector<std::string>& argv, std::ostream& out, std::ostream& err) {
  Args args("bert_prepare clean",
            "bert_prepare clean --input FILE|DIR... --out FILE [--split-sentences] [--join-wrapped-lines] "
            "[--scrub-pii | --no-scrub-pii] [--dedupe] [--threads N]");
  args.list("--input", "text files (.txt, .gz) or directories (searched recursively for *.txt, *.gz)")
      .option("--out", "output file: one sentence a line, a blank line between documents")
      .flag("--split-sentences", "split each input line (a paragraph) into sentences")
      .flag("--join-wrapped-lines",
            "join a line to the next of its document unless a sentence ends between them, for text "
            "hard-wrapped at a fixed width (PDF extractions); a hyphen ending a line after a letter or digit "
            "joins without a space")
      .flag("--scrub-pii", "replace personal data with [RRN] [PHONE] [EMAIL] [CARD] [ACCOUNT] [IP] (default)")
      .flag("--no-scrub-pii", "keep personal data as is")
      .flag("--dedupe", "drop documents identical to an earlier one (after cleaning)")
      .option("--threads", "cleaning threads (0 = all cores); the output does not depend on it", "0");
  if (!args.parse(argv)) {
    out << args.help();
    return 0;
  }
  const auto& inputs = args.values("--input");
  if (inputs.empty()) throw Error("bert_prepare clean: missing required option '--input' (see --help)");
  const std::string out_path = args.str("--out");
  if (args.has("--scrub-pii") && args.has("--no-scrub-pii"))
    throw Error("bert_prepare clean: --scrub-pii and --no-scrub-pii contradict each other; give one");
  CleanOptions options;
  options.split_sentences = args.has("--split-sentences");
  options.join_wrapped_lines = args.has("--join-wrapped-lines");
  options.scrub_pii = !args.has("--no-scrub-pii");
  options.dedupe = args.has("--dedupe");
  const int64_t threads = args.integer("--threads", 0, 1024);
  options.threads =
      threads > 0 ? static_cast<int>(threads) : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));

  if (is_directory(out_path)) throw Error(out_path + ": is a directory; --out takes a file path");
  const fs::path out_dir = fs::path(out_path).parent_path();
  if (!out_dir.empty() && !is_directory(out_dir.string()))
    throw Error(out_path + ": directory '" + out_dir.string() + "' does not exist (create it first)");

  // The output must not be read as input: an explicitly named one is an error, one found by
  // expanding a directory (a previous run's output) is skipped.
  std::vector<std::string> files;
  {
    std::error_code ec;
    auto is_output = [&](const std::string& f) { return fs::exists(out_path, ec) && fs::equivalent(f, out_path, ec); };
    for (const auto& input : inputs)
      if (!is_directory(input) && file_exists(input) && is_output(input))
        throw Error(input + ": is also the --out file; write the output elsewhere");
    for (auto& f : expand_inputs(inputs)) {
      if (is_output(f)) {
        err << f << ": warning: skipping the --out file found in an input directory\n";
        continue;
      }
      files.push_back(std::move(f));
    }
    if (files.empty()) throw Error(out_path + ": the only input file is the --out file; nothing to clean");
  }

  const auto t0 = std::chrono::steady_clock::now();
  const CleanStats s = clean_corpus(files, out_path, options, err);
  const double secs = seconds_since(t0);

  out << "bert_prepare clean: " << s.files << " file(s) -> " << out_path << "\n"
      << "  documents   " << s.documents_in << " in, " << s.documents_out << " out";
  if (options.dedupe) out << " (" << s.duplicates << " duplicates dropped)";
  out << "\n  sentences   " << s.sentences
      << (options.split_sentences      ? " (split by the sentence splitter)"
          : options.join_wrapped_lines ? " (one per line, wrapped lines joined)"
                                       : " (one per input line)")
      << "\n"
      << "  bytes       " << s.bytes_in << " in, " << s.bytes_out << " out ("
      << human_bytes(static_cast<double>(s.bytes_in)) << " -> " << human_bytes(static_cast<double>(s.bytes_out))
      << ")\n";
  if (options.scrub_pii) {
    out << "  pii         " << s.pii.total() << " replaced:";
    for (int t = 0; t < kPiiTypeCount; ++t) {
      const auto type = static_cast<PiiType>(t);
      out << (t ? ", " : " ") << pii_name(type) << " " << s.pii[type];
    }
    out << "\n";
  } else {
    out << "  pii         not scrubbed (--no-scrub-pii)\n";
  }
  if (s.invalid_utf8_lines) out << "  utf-8       " << s.invalid_utf8_lines << " line(s) with invalid bytes, dropped\n";
  if (s.long_documents_cut) out << "  long docs   " << s.long_documents_cut << " cut at 64 MiB\n";
  char rate[64];
  std::snprintf(rate, sizeof rate, "%.2f s, %.1f MB/s", secs,
                secs > 0 ? static_cast<double>(s.bytes_in) / 1e6 / secs : 0.0);
  out << "  time        " << rate << ", " << options.threads << " thread(s)\n";
  return 0;
}

}  // namespace bert
