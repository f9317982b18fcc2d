#include "tokenizer/commands.h"

#include <algorithm>
#include <charconv>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <thread>

#include "common/args.h"
#include "common/error.h"
#include "common/file.h"
#include "common/json.h"
#include "common/parallel.h"
#include "common/progress.h"
#include "common/utf8.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/trainer.h"

namespace bert {

static double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

static int resolve_threads(int64_t requested) {
  if (requested > 0) return static_cast<int>(requested);
  return std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
}

int tokenizer_train_command(const std::vector<std::string>& argv, std::ostream& out, std::ostream& err) {
  Args args(
      "bert_tokenizer train",
      "bert_tokenizer train --input FILE... --out DIR [--vocab-size N] [--min-frequency N] [--extend DIR --add N] "
      "[options]");
  args.list("--input", "training text files (one or more; one line = one sequence)")
      .option("--out", "output directory for vocab.txt, tokenizer_config.json, special_tokens_map.json")
      .option("--vocab-size", "target vocabulary size, special tokens included", "30000")
      .option("--min-frequency", "a merge needs at least this pair count", "2")
      .option("--limit-alphabet", "keep only the N most frequent characters (default: keep every character)")
      .flag("--lowercase", "lowercase text (off by default: right for Korean)")
      .flag("--strip-accents", "NFD + drop nonspacing marks (off by default: would split Hangul into jamo)")
      .flag("--no-clean-text", "keep control characters and non-space whitespace")
      .flag("--no-chinese-chars", "do not isolate CJK ideographs")
      .list("--special-tokens", "special tokens, in id order [default: [PAD] [UNK] [CLS] [SEP] [MASK]]")
      .option("--model-max-length", "model_max_length written to tokenizer_config.json", "512")
      .option("--threads", "counting threads (0 = all cores)", "0")
      .option("--extend",
              "a pretrained model's tokenizer directory: write its vocabulary with --add pieces learned from --input "
              "appended (its normalisation and special tokens are used), for bert_train's model_name_or_path")
      .option("--add",
              "--extend: the number of new pieces to append: those a vocabulary of --vocab-size trained on --input "
              "uses most to tokenize it")
      .flag("--quiet", "no summary");
  if (!args.parse(argv)) {
    out << args.help();
    return 0;
  }
  const auto& inputs = args.values("--input");
  if (inputs.empty()) throw Error("bert_tokenizer train: missing required option '--input' (see --help)");
  const std::string out_dir = without_trailing_slashes(args.str("--out"));
  for (const auto& f : inputs) {
    if (!file_exists(f)) throw Error(f + ": input file not found");
    if (is_directory(f)) throw Error(f + ": is a directory, expected a text file");
    // What train writes replaces its file: an input among them would be gone.
    for (const char* written : {"vocab.txt", "tokenizer_config.json", "special_tokens_map.json"}) {
      std::error_code ec;
      if (std::filesystem::equivalent(f, out_dir + "/" + written, ec))
        throw Error(f + ": is the " + written + " that --out " + out_dir + " would replace; write to another --out");
    }
  }

  TrainerOptions topt;
  topt.vocab_size = static_cast<size_t>(args.integer("--vocab-size", 1, 1 << 30));
  topt.min_frequency = static_cast<uint64_t>(args.integer("--min-frequency", 0));
  // 1 at least: HF accepts 0, which keeps no character, so the vocabulary is the special tokens alone.
  if (args.has("--limit-alphabet")) topt.limit_alphabet = static_cast<size_t>(args.integer("--limit-alphabet", 1));
  if (args.has("--special-tokens")) topt.special_tokens = args.values("--special-tokens");

  TokenizerConfig config;
  config.normalizer.lowercase = args.has("--lowercase");
  config.normalizer.strip_accents = args.has("--strip-accents");
  config.normalizer.clean_text = !args.has("--no-clean-text");
  config.normalizer.handle_chinese_chars = !args.has("--no-chinese-chars");
  config.model_max_length = static_cast<size_t>(args.integer("--model-max-length", 1));
  // --extend: the pretrained tokenizer whose vocabulary the new pieces follow, its settings the training's.
  std::optional<Tokenizer> base;
  size_t add = 0;
  if (args.has("--add") && !args.has("--extend")) throw Error("bert_tokenizer train: --add goes with --extend DIR");
  if (args.has("--extend")) {
    const std::string dir = without_trailing_slashes(args.str("--extend"));
    const std::string what = "bert_tokenizer train --extend " + dir;
    if (!args.has("--add")) throw Error(what + ": give --add N, the number of pieces to append");
    add = static_cast<size_t>(args.integer("--add", 1, 1 << 24));
    for (const char* option : {"--lowercase", "--strip-accents", "--no-clean-text", "--no-chinese-chars",
                               "--special-tokens", "--model-max-length"})
      if (args.has(option)) throw Error(what + ": " + option + " comes from that tokenizer's config; drop it");
    if (!is_directory(dir)) throw Error(what + ": not a directory");
    std::error_code ec;
    if (std::filesystem::equivalent(dir, out_dir, ec))
      throw Error(what +
                  ": --out is that directory; write the extended tokenizer elsewhere (the model there "
                  "keeps its own vocabulary)");
    try {
      base.emplace(Tokenizer::from_dir(dir));
    } catch (const Error& e) {
      throw Error(what + ": " + e.what());
    }
    if (base->vocab().size() != base->piece_count())
      throw Error(what + ": its tokenizer has " + std::to_string(base->vocab().size() - base->piece_count()) +
                  " added or appended token(s) after its " + std::to_string(base->piece_count()) +
                  " word pieces (ids from " + std::to_string(base->piece_count()) +
                  "); new pieces would take their ids, which the model's embeddings hold");
    config = base->config();
    topt.special_tokens = config.special_tokens();
  }
  if (!base) {
    const std::vector<std::string> standard = {config.pad_token, config.unk_token, config.cls_token, config.sep_token,
                                               config.mask_token};
    for (const auto& t : topt.special_tokens) {
      if (t.empty()) throw Error("bert_tokenizer train: empty special token");
      // vocab.txt is one token a line (HF's reader splits lines at '\r' too), and ours strips a line's
      // trailing whitespace.
      if (t.find_first_of("\r\n") != std::string::npos || t.back() == ' ' || t.back() == '\t')
        throw Error("bert_tokenizer train: special token " + Json(t).dump() +
                    " holds a line break or ends in whitespace, so it cannot be a line of vocab.txt");
      if (std::find(standard.begin(), standard.end(), t) == standard.end())
        config.additional_special_tokens.push_back(t);
    }
    if (std::find(topt.special_tokens.begin(), topt.special_tokens.end(), config.unk_token) == topt.special_tokens.end())
      throw Error("bert_tokenizer train: --special-tokens must include " + config.unk_token);
    // tokenizer_config.json names all five; transformers' BertTokenizerFast adds one vocab.txt lacks as a
    // new id past the vocabulary (bert_tokenizer and tokenizers' BertWordPieceTokenizer split it into
    // pieces), so the ids would no longer match. BERT pretraining needs all five anyway.
    for (const auto& t : standard) {
      if (std::find(topt.special_tokens.begin(), topt.special_tokens.end(), t) == topt.special_tokens.end())
        throw Error("bert_tokenizer train: --special-tokens lacks " + t +
                    ": BERT needs [PAD] [UNK] [CLS] [SEP] [MASK] (transformers' BertTokenizerFast would add a "
                    "missing one as a new id past vocab.txt, so its ids would differ from bert_tokenizer's)");
    }
  }
  if (!config.normalizer.clean_text)
    err << "warning: "
        << (base ? args.str("--extend") + "'s tokenizer does not clean text (clean_text false)"
                 : std::string("--no-clean-text"))
        << ": transformers' BertTokenizerFast.from_pretrained ignores clean_text and "
           "always cleans; only bert_tokenizer and tokenizers' BertWordPieceTokenizer(clean_text=False) keep "
           "control characters\n";
  // transformers reads a tokenizer.json before vocab.txt: one left in --out would replace what is written.
  if (file_exists(out_dir + "/tokenizer.json"))
    throw Error("bert_tokenizer train: " + out_dir +
                "/tokenizer.json exists, and transformers would read it instead "
                "of the vocab.txt written here; remove it or choose another --out");
  // So would an added_tokens.json (transformers' legacy added tokens) be read beside it.
  if (file_exists(out_dir + "/added_tokens.json"))
    throw Error("bert_tokenizer train: " + out_dir +
                "/added_tokens.json exists, and transformers would add its tokens to the vocabulary written "
                "here; remove it or choose another --out");
  const bool quiet = args.has("--quiet");
  const auto t0 = std::chrono::steady_clock::now();

  Progress progress(!quiet);
  CountOptions copt;
  copt.normalizer = config.normalizer;
  copt.threads = resolve_threads(args.integer("--threads", 0, 1024));
  uint64_t total_bytes = 0;
  bool sizes_known = true;  // not for a pipe
  for (const auto& f : inputs) {
    std::error_code ec;
    sizes_known = sizes_known && std::filesystem::is_regular_file(f, ec);
    total_bytes += file_size(f);
  }
  copt.progress = [&](uint64_t bytes, uint64_t words) {
    progress.update("counting words: " + human_bytes(static_cast<double>(bytes)) +
                    (sizes_known ? " / " + human_bytes(static_cast<double>(total_bytes)) : std::string()) + " read, " +
                    human_count(static_cast<double>(words)) + " words");
  };
  size_t invalid_reported = 0;
  copt.on_invalid_utf8 = [&](const std::string& file, size_t line, size_t byte) {
    if (invalid_reported++ < 10)
      err << file << ":" << line << ": warning: invalid UTF-8 at byte " << byte << "; bad bytes replaced by U+FFFD"
          << (config.normalizer.clean_text ? ", which clean_text removes" : " (--no-clean-text: kept)") << "\n";
  };
  CountStats cstats;
  WordCounts counts = count_words(inputs, copt, &cstats);
  progress.finish();
  if (cstats.invalid_utf8_lines > 0)
    err << "warning: " << cstats.invalid_utf8_lines << " line(s) with invalid UTF-8 in total\n";
  if (counts.distinct() == 0) {
    std::string names;
    for (const auto& f : inputs) names += (names.empty() ? "" : ", ") + f;
    throw Error(names + ": empty corpus (no words after normalisation)");
  }
  const double count_s = seconds_since(t0);

  topt.progress = [&](size_t merges, size_t vocab_now) {
    progress.update("merging: " + std::to_string(merges) + " merges, vocab " + std::to_string(vocab_now) + " / " +
                    std::to_string(topt.vocab_size));
  };
  TrainStats tstats;
  // --extend reads the counts again; a plain train lets them go before the merges.
  const uint64_t total_words = counts.total(), distinct_words = counts.distinct();
  const Vocab vocab = base ? train_wordpiece(counts, topt, &tstats) : train_wordpiece(std::move(counts), topt, &tstats);
  progress.finish();

  make_directories(out_dir);
  if (base) {
    // The new pieces the corpus's own vocabulary uses most when it tokenizes the corpus (ties: the
    // order training learned them), so a rare character of the alphabet does not take a frequent
    // domain word's place.
    const Tokenizer domain(vocab, config);
    std::vector<uint64_t> usage(vocab.size(), 0);
    EncodeScratch scratch;
    std::vector<int32_t> ids;
    counts.for_each([&](std::string_view word, uint64_t count) {
      ids.clear();
      domain.encode(word, ids, scratch);
      for (const int32_t id : ids) usage[static_cast<size_t>(id)] += count;
    });
    const std::vector<std::string> specials = config.special_tokens();
    std::vector<int32_t> candidates;
    for (int32_t id = 0; id < static_cast<int32_t>(vocab.size()); ++id) {
      const std::string& token = vocab.token(id);
      if (usage[static_cast<size_t>(id)] > 0 && base->vocab().id(token) < 0 &&
          std::find(specials.begin(), specials.end(), token) == specials.end())
        candidates.push_back(id);
    }
    std::stable_sort(candidates.begin(), candidates.end(), [&](int32_t a, int32_t b) {
      return usage[static_cast<size_t>(a)] > usage[static_cast<size_t>(b)];
    });
    if (candidates.size() > add) candidates.resize(add);
    std::vector<std::string> tokens = base->vocab().tokens(), added;
    for (const int32_t id : candidates) {
      added.push_back(vocab.token(id));
      tokens.push_back(vocab.token(id));
    }
    Tokenizer(Vocab(std::move(tokens)), config).save(out_dir);
    if (added.size() < add)
      err << "warning: --add " << add << ": only " << added.size() << " of the " << vocab.size()
          << " tokens learned from the corpus are new to " << args.str("--extend") << " and used by it"
          << "; a larger --vocab-size learns more\n";
    if (!quiet) {
      std::string shown;
      for (size_t i = 0; i < added.size() && i < 12; ++i) shown += (i ? " " : "") + added[i];
      out << "extended " << args.str("--extend") << "'s vocabulary of " << base->vocab().size() << " tokens by "
          << added.size() << " pieces learned from the corpus -> " << out_dir << "/vocab.txt ("
          << base->vocab().size() + added.size() << " tokens)\n"
          << "  added       " << shown << (added.size() > 12 ? " ..." : "") << "\n"
          << "  next        bert_prepare build --tokenizer " << out_dir
          << ", then bert_train with [data] tokenizer = \"" << out_dir << "\" and [model] model_name_or_path = \""
          << args.str("--extend") << "\" (past its config.json's vocab_size, the model's embeddings grow)\n";
    }
    return 0;
  }
  vocab.save(out_dir + "/vocab.txt");
  config.save(out_dir);
  if (!quiet) {
    out << "trained WordPiece vocabulary: " << vocab.size() << " tokens -> " << out_dir << "/vocab.txt\n"
        << "  corpus      " << human_bytes(static_cast<double>(cstats.bytes)) << ", " << cstats.lines << " lines, "
        << total_words << " words, " << distinct_words << " distinct\n"
        << "  alphabet    " << tstats.alphabet << " characters"
        << (tstats.dropped_characters
                ? " (" + std::to_string(tstats.dropped_characters) + " dropped by --limit-alphabet)"
                : std::string())
        << ", " << tstats.continuation_forms << " ##-continuations\n"
        << "  merges      " << tstats.merges << " (stopped: " << tstats.stop_reason << ")\n"
        << "  time        " << count_s << " s counting, " << seconds_since(t0) - count_s << " s merging; peak RSS "
        << human_bytes(static_cast<double>(peak_rss_bytes())) << "\n";
  }
  return 0;
}

namespace {

enum class Format { kIds, kTokens, kJsonl };

struct EncodeJob {
  const Tokenizer* tokenizer;
  bool add_special, pair;
  std::optional<size_t> max_length;
  Format format;
};

void append_int(std::string& out, int32_t v) {
  char buf[16];
  const auto r = std::to_chars(buf, buf + sizeof buf, v);
  out.append(buf, r.ptr);
}

// Encodes one input line and appends its output line. `a`, `b`, `type_ids` are per-thread scratch:
// nothing is allocated per line once they have grown.
void format_line(const EncodeJob& job, std::string_view line, EncodeScratch& scratch, std::vector<int32_t>& a,
                 std::vector<int32_t>& b, std::vector<int32_t>& type_ids, std::string& out, size_t& bad) {
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  a.clear();
  b.clear();
  if (job.pair) {
    const size_t tab = line.find('\t');
    const std::string_view first = tab == std::string_view::npos ? line : line.substr(0, tab);
    bad += job.tokenizer->encode(first, a, scratch);
    if (tab != std::string_view::npos) bad += job.tokenizer->encode(line.substr(tab + 1), b, scratch);
  } else {
    bad += job.tokenizer->encode(line, a, scratch);
  }
  const std::vector<int32_t>* ids = &a;
  Encoding enc;
  if (job.add_special) {
    enc = job.tokenizer->post_process(std::move(a), job.pair ? &b : nullptr, job.max_length);
    ids = &enc.ids;
    type_ids.swap(enc.type_ids);
  } else {
    if (job.max_length) truncate_longest_first(a, job.pair ? &b : nullptr, *job.max_length);
    type_ids.assign(a.size(), 0);
    if (job.pair) {
      type_ids.resize(a.size() + b.size(), 1);
      a.insert(a.end(), b.begin(), b.end());
    }
  }
  const Vocab& vocab = job.tokenizer->vocab();
  switch (job.format) {
    case Format::kIds:
      for (size_t i = 0; i < ids->size(); ++i) {
        if (i) out.push_back(' ');
        append_int(out, (*ids)[i]);
      }
      break;
    case Format::kTokens:
      for (size_t i = 0; i < ids->size(); ++i) {
        if (i) out.push_back(' ');
        out += vocab.token((*ids)[i]);
      }
      break;
    case Format::kJsonl: {
      out += "{\"ids\": [";
      for (size_t i = 0; i < ids->size(); ++i) {
        if (i) out += ", ";
        append_int(out, (*ids)[i]);
      }
      out += "], \"tokens\": [";
      for (size_t i = 0; i < ids->size(); ++i) {
        if (i) out += ", ";
        json_escape(out, vocab.token((*ids)[i]));
      }
      out += "], \"type_ids\": [";
      for (size_t i = 0; i < type_ids.size(); ++i) {
        if (i) out += ", ";
        append_int(out, type_ids[i]);
      }
      out += "]}";
      break;
    }
  }
  out.push_back('\n');
  if (job.add_special) a = std::move(enc.ids);  // keep the grown buffer for the next line
}

}  // namespace

int tokenizer_encode_command(const std::vector<std::string>& argv, std::istream& in, std::ostream& out,
                             std::ostream& err) {
  Args args("bert_tokenizer encode",
            "bert_tokenizer encode --tokenizer DIR [--input FILE|-] [--output FILE] [--threads N] "
            "[--add-special-tokens] [--pair] [--max-length N] [--format ids|tokens|jsonl]");
  args.option("--tokenizer", "tokenizer directory (vocab.txt or tokenizer.json, + tokenizer_config.json)")
      .option("--input", "input text, one sequence a line (default or '-': stdin)")
      .option("--output", "output file (default or '-': stdout)")
      .option("--threads", "encoding threads (0 = all cores)", "0")
      .flag("--add-special-tokens", "add [CLS] ... [SEP] (and B [SEP] with --pair)")
      .flag("--pair",
            "each line is 'A<TAB>B' (split at the first tab; a line without one is A with an empty B, as "
            "tokenizers' encode(A, \"\") gives)")
      .option("--max-length", "truncate (LongestFirst) to this many tokens, specials included")
      .option("--format", "ids | tokens | jsonl", "ids");
  if (!args.parse(argv)) {
    out << args.help();
    return 0;
  }
  if (!args.positional().empty())
    throw Error("bert_tokenizer encode: unexpected argument '" + args.positional()[0] +
                "' (the input file goes after --input)");
  const Tokenizer tokenizer = Tokenizer::from_dir(args.str("--tokenizer"));
  if (args.has("--add-special-tokens"))
    tokenizer.require({SpecialToken::kCls, SpecialToken::kSep}, args.str("--tokenizer"), "--add-special-tokens");
  EncodeJob job{&tokenizer, args.has("--add-special-tokens"), args.has("--pair"), std::nullopt, Format::kIds};
  if (args.has("--max-length")) job.max_length = static_cast<size_t>(args.integer("--max-length", 1));
  // HF's tokenizers subtracts the specials from max_length in an unsigned integer: below their count
  // it wraps around and does not truncate at all. Say so rather than silently differ.
  const size_t specials = job.pair ? 3 : 2;
  if (job.max_length && job.add_special && *job.max_length < specials) {
    throw Error("bert_tokenizer encode: --max-length " + std::to_string(*job.max_length) + " leaves no room for the " +
                std::to_string(specials) + " special tokens --add-special-tokens adds" +
                (job.pair ? " with --pair" : "") + "; use at least " + std::to_string(specials));
  }
  const std::string format = args.str("--format");
  if (format == "ids") job.format = Format::kIds;
  else if (format == "tokens") job.format = Format::kTokens;
  else if (format == "jsonl") job.format = Format::kJsonl;
  else throw Error("bert_tokenizer encode: --format must be ids, tokens or jsonl, got '" + format + "'");
  const int threads = resolve_threads(args.integer("--threads", 0, 1024));

  std::ifstream file_in;
  std::istream* src = &in;
  const bool from_stdin = !args.has("--input") || args.str("--input") == "-";
  const std::string input_name = from_stdin ? "<stdin>" : args.str("--input");
  if (!from_stdin) {
    const std::string path = args.str("--input");
    if (is_directory(path)) throw Error(path + ": is a directory, expected a text file");
    file_in.open(path, std::ios::binary);
    if (!file_in) throw Error(path + ": cannot open input file");
    src = &file_in;
  }
  // A regular file appears whole or not at all (an error leaves none); /dev/stdout or a FIFO is written
  // in place.
  std::optional<AtomicOutputFile> file_out;
  if (args.has("--output") && args.str("--output") != "-") {
    // The output replaces its file when done: the input would be gone.
    std::error_code ec;
    if (!from_stdin && std::filesystem::equivalent(args.str("--input"), args.str("--output"), ec))
      throw Error(args.str("--output") + ": is also the --input file; write the output elsewhere");
    file_out.emplace(args.str("--output"));
  }
  const auto emit = [&](std::string_view text) {
    if (file_out)
      file_out->write(text);
    else
      out.write(text.data(), static_cast<std::streamsize>(text.size()));
  };

  // Blocks of whole lines; each block is split into one contiguous slice per thread, and the
  // slices are written back in order.
  constexpr size_t kBlockBytes = 8 << 20;
  std::string block, carry;
  std::vector<std::string_view> lines;
  std::vector<std::string> outputs(static_cast<size_t>(threads));
  struct ThreadScratch {
    EncodeScratch text;
    std::vector<int32_t> a, b, types;
  };
  std::vector<ThreadScratch> scratch(static_cast<size_t>(threads));
  std::vector<size_t> bad_per_line;
  size_t line_base = 0, bad_lines = 0;
  std::vector<char> buf(kBlockBytes);
  bool eof = false, sniffed = false;
  while (!eof) {
    src->read(buf.data(), static_cast<std::streamsize>(buf.size()));
    const size_t got = static_cast<size_t>(src->gcount());
    if (got < buf.size()) eof = true;
    if (src->bad()) throw Error(input_name + ": read error");
    if (!sniffed) {
      sniffed = true;
      const std::string problem = utf8_text_problem(std::string_view(buf.data(), got), eof);
      if (!problem.empty()) throw Error(input_name + ": " + problem);
    }
    block.swap(carry);
    carry.clear();
    block.append(buf.data(), got);
    if (!eof) {
      const size_t last_nl = block.rfind('\n');
      if (last_nl == std::string::npos) {  // a line longer than the block: keep accumulating
        carry.swap(block);
        continue;
      }
      carry.assign(block, last_nl + 1, std::string::npos);
      block.resize(last_nl + 1);
    }
    lines.clear();
    size_t pos = 0;
    while (pos < block.size()) {
      size_t nl = block.find('\n', pos);
      if (nl == std::string::npos) nl = block.size();
      lines.emplace_back(block.data() + pos, nl - pos);
      pos = nl + 1;
    }
    bad_per_line.assign(lines.size(), 0);
    auto work = [&](size_t t) {
      std::string& o = outputs[t];
      o.clear();
      const size_t begin = lines.size() * t / static_cast<size_t>(threads);
      const size_t end = lines.size() * (t + 1) / static_cast<size_t>(threads);
      for (size_t i = begin; i < end; ++i)
        format_line(job, lines[i], scratch[t].text, scratch[t].a, scratch[t].b, scratch[t].types, o, bad_per_line[i]);
    };
    if (threads == 1 || lines.size() < 64) {
      outputs[0].clear();
      for (size_t t = 1; t < outputs.size(); ++t) outputs[t].clear();
      for (size_t i = 0; i < lines.size(); ++i)
        format_line(job, lines[i], scratch[0].text, scratch[0].a, scratch[0].b, scratch[0].types, outputs[0],
                    bad_per_line[i]);
    } else {
      run_parallel(static_cast<size_t>(threads), work);
    }
    for (const auto& o : outputs) emit(o);
    for (size_t i = 0; i < lines.size(); ++i) {
      if (bad_per_line[i] && bad_lines++ < 10)
        err << input_name << ":" << line_base + i + 1 << ": warning: invalid UTF-8 (" << bad_per_line[i]
            << " bad sequence(s)) replaced by U+FFFD"
            << (tokenizer.config().normalizer.clean_text ? ", which clean_text removes" : " (clean_text is off: kept)")
            << "\n";
    }
    line_base += lines.size();
  }
  if (bad_lines > 10) err << "warning: " << bad_lines << " line(s) with invalid UTF-8 in total\n";
  if (file_out) {
    file_out->commit();
  } else {
    out.flush();
    if (!out) throw Error("bert_tokenizer encode: write error on the standard output");
  }
  return 0;
}

int tokenizer_main(const std::vector<std::string>& argv, std::istream& in, std::ostream& out, std::ostream& err) {
  const std::string usage =
      "usage: bert_tokenizer <command> [options]\n\n"
      "commands:\n"
      "  train    learn a WordPiece vocabulary from text files (HF BertWordPieceTokenizer-compatible)\n"
      "  encode   turn lines of text into token ids\n\n"
      "Run 'bert_tokenizer <command> --help' for the options of a command.\n";
  if (argv.empty() || argv[0] == "-h" || argv[0] == "--help") {
    (argv.empty() ? err : out) << usage;
    return argv.empty() ? 2 : 0;
  }
  const std::vector<std::string> rest(argv.begin() + 1, argv.end());
  if (argv[0] == "train") return tokenizer_train_command(rest, out, err);
  if (argv[0] == "encode") return tokenizer_encode_command(rest, in, out, err);
  throw Error("bert_tokenizer: unknown command '" + argv[0] + "' (expected train or encode)");
}

}  // namespace bert
