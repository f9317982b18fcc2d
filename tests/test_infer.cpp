// engine/infer.* (bert_infer) on a hand-written 33-token vocabulary and a tiny random checkpoint
// (hidden 16, 2 layers, 2 heads, 24 positions) written with the model's own save:
//  - fill-mask: top-k sorted by probability, scores equal a softmax computed here from mlm_logits_at,
//    the whole distribution sums to 1, HF's token_str/sequence (several masks keep [CLS]/[SEP]/[MASK]);
//  - HF decoding: "##" handling, special-token skipping, clean_up_tokenization;
//  - errors: no [MASK], prompt too long, incomplete/missing dir, --device cuda, bad probe lines;
//  - probe metrics where the gold ranks are forced through the decoder bias (rank 1 and rank = vocab).
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/file.h"
#include "common/json.h"
#include "engine/bert.h"
#include "engine/infer.h"
#include "engine/safetensors.h"
#include "tests/test_dirs.h"
#include "tokenizer/tokenizer.h"

namespace {

using bert::Json;

const std::vector<std::string> kTokens = {
    "[PAD]", "[UNK]", "[CLS]",  "[SEP]", "[MASK]", "the",      "cat",      "sat",   "on",    "mat",     ".",
    "dog",   "##s",   "'",      "s",     ",",      "?",        "!",        "seoul", "is",    "capital", "of",
    "korea", "paris", "france", "조선",  "중기의", "무신이다", "이순신은", "hello", "world", "n't",     "do"};
constexpr int32_t kCls = 2, kSep = 3, kMask = 4;

int32_t id_of(const std::string& token) {
  const auto it = std::find(kTokens.begin(), kTokens.end(), token);
  REQUIRE(it != kTokens.end());
  return static_cast<int32_t>(it - kTokens.begin());
}

bert::BertConfig tiny_config() {
  bert::BertConfig config;
  config.vocab_size = static_cast<int>(kTokens.size());
  config.hidden_size = 16;
  config.num_hidden_layers = 2;
  config.num_attention_heads = 2;
  config.intermediate_size = 32;
  config.max_position_embeddings = 24;
  config.initializer_range = 0.3;  // a peaked, not near-uniform, prediction
  return config;
}

// A checkpoint dir (model.safetensors, config.json, vocab.txt, tokenizer_config.json). The decoder bias
// entries in `bias` are set before saving.
// `extra_ids`: model ids past vocab.txt's end (room for tokens appended later).
std::string make_checkpoint(const std::string& name, const std::vector<std::pair<int32_t, float>>& bias = {},
                            int extra_ids = 0) {
  const std::string dir = test_dir() + "/" + name;
  std::filesystem::create_directories(dir);
  bert::Vocab(kTokens).save(dir + "/vocab.txt");
  bert::TokenizerConfig tokenizer_config;  // cased, accents kept: Hangul stays composed
  tokenizer_config.save(dir);
  bert::BertConfig config = tiny_config();
  config.vocab_size += extra_ids;
  bert::ModelOptions options;
  options.init_seed = 11;
  bert::BertForPreTraining<float> model(config, options);
  auto decoder_bias = model.parameter(model.param_info("cls.predictions.bias"));
  for (const auto& [id, value] : bias) decoder_bias[static_cast<size_t>(id)] = value;
  model.save_safetensors(dir + "/model.safetensors");
  bert::write_file_atomic(dir + "/config.json", config.to_hf_json().dump(2) + "\n");
  return dir;
}

int run(const std::vector<std::string>& args, const std::string& stdin_text, std::string& out,
        std::string* err = nullptr) {
  std::istringstream in(stdin_text);
  std::ostringstream out_stream, err_stream;
  const int code = bert::infer_main(args, in, out_stream, err_stream);
  out = out_stream.str();
  if (err) *err = err_stream.str();
  return code;
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream stream(text);
  for (std::string line; std::getline(stream, line);) lines.push_back(line);
  return lines;
}

}  // namespace

TEST_CASE("fill_mask: top-k by probability, scores = softmax of mlm_logits_at", "[infer]") {
  const std::string dir = make_checkpoint("ckpt");
  bert::InferenceCheckpoint checkpoint = bert::load_inference_checkpoint(dir);
  const bert::FillMaskResult result =
      bert::fill_mask(checkpoint.model, checkpoint.tokenizer, "the cat [MASK] on the mat.", 5);

  const std::vector<int32_t> expected_ids = {kCls,         id_of("the"), id_of("cat"), kMask, id_of("on"),
                                             id_of("the"), id_of("mat"), id_of("."),   kSep};
  REQUIRE(result.input_ids == expected_ids);
  REQUIRE(result.mask_positions == std::vector<int64_t>{3});
  REQUIRE(result.per_mask.size() == 1);
  REQUIRE(result.per_mask[0].size() == 5);

  // An independent model instance, logits via mlm_logits_at, softmax in double here.
  bert::BertForPreTraining<float> reference(tiny_config());
  reference.load_safetensors(dir + "/model.safetensors");
  bert::BatchView view;
  view.batch = 1;
  view.seq_len = static_cast<int64_t>(expected_ids.size());
  view.input_ids = expected_ids.data();
  const int32_t position[] = {3};
  std::vector<float> logits(kTokens.size());
  reference.mlm_logits_at(view, position, logits);
  const double max_logit = *std::max_element(logits.begin(), logits.end());
  double sum = 0;
  for (float l : logits) sum += std::exp(l - max_logit);
  std::vector<int32_t> order(kTokens.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });

  double score_sum = 0;
  for (size_t i = 0; i < 5; ++i) {
    const bert::FillMaskCandidate& c = result.per_mask[0][i];
    INFO("rank " << i + 1 << " token " << c.token);
    CHECK(c.token == order[i]);
    CHECK(c.score == Approx(std::exp(logits[static_cast<size_t>(order[i])] - max_logit) / sum).epsilon(1e-9));
    if (i > 0) CHECK(c.score <= result.per_mask[0][i - 1].score);
    score_sum += c.score;
  }
  CHECK(score_sum <= 1.0);

  // The whole vocabulary: probabilities sum to 1; top_k beyond it is capped.
  const bert::FillMaskResult all =
      bert::fill_mask(checkpoint.model, checkpoint.tokenizer, "the cat [MASK] on the mat.", 1000);
  REQUIRE(all.per_mask[0].size() == kTokens.size());
  double total = 0;
  for (const auto& c : all.per_mask[0]) total += c.score;
  CHECK(total == Approx(1.0).epsilon(1e-9));

  // token_str and sequence as HF decodes them.
  for (const auto& c : all.per_mask[0]) {
    const std::string& token = kTokens[static_cast<size_t>(c.token)];
    CHECK(c.token_str == token);  // a lone "##s" keeps its prefix, as tokenizer.decode([id]) does
    if (token == "sat") CHECK(c.sequence == "the cat sat on the mat.");
    if (token == "##s") CHECK(c.sequence == "the cats on the mat.");
    if (token == ",") CHECK(c.sequence == "the cat, on the mat.");
    if (token == "[SEP]") CHECK(c.sequence == "the cat on the mat.");  // skip_special_tokens for one mask
  }
}

TEST_CASE("fill_mask: several masks give a list per [MASK] with HF's sequences", "[infer]") {
  bert::InferenceCheckpoint checkpoint = bert::load_inference_checkpoint(make_checkpoint("ckpt"));
  const bert::FillMaskResult result =
      bert::fill_mask(checkpoint.model, checkpoint.tokenizer, "the [MASK] sat on the [MASK].", 3);
  REQUIRE(result.mask_positions == std::vector<int64_t>{2, 6});
  REQUIRE(result.per_mask.size() == 2);
  for (size_t m = 0; m < 2; ++m) {
    REQUIRE(result.per_mask[m].size() == 3);
    for (const auto& c : result.per_mask[m]) {
      // HF keeps the special tokens when there are several masks, so the other [MASK] stays visible.
      INFO(c.sequence);
      CHECK(c.sequence.rfind("[CLS] the", 0) == 0);
      CHECK(c.sequence.find("[MASK]") != std::string::npos);
      CHECK(c.sequence.size() >= 6);
      CHECK(c.sequence.compare(c.sequence.size() - 6, 6, " [SEP]") == 0);
    }
  }
  const Json json = bert::fill_mask_json(result);
  REQUIRE(json.is_array());
  REQUIRE(json.as_array().size() == 2);
  REQUIRE(json.as_array()[0].is_array());
  const Json& first = json.as_array()[0].as_array()[0];
  for (const char* key : {"score", "token", "token_str", "sequence"}) CHECK(first.find(key) != nullptr);

  const Json single = bert::fill_mask_json(
      bert::fill_mask(checkpoint.model, checkpoint.tokenizer, "이순신은 [MASK] 중기의 무신이다.", 2));
  REQUIRE(single.is_array());
  REQUIRE(single.as_array()[0].is_object());  // one mask: a flat list, as HF returns
}

TEST_CASE("fill_mask with targets: the pipeline's targets=, scores over the whole vocabulary", "[infer]") {
  const std::string dir = make_checkpoint("ckpt");
  bert::InferenceCheckpoint checkpoint = bert::load_inference_checkpoint(dir);
  const bert::Tokenizer& tokenizer = checkpoint.tokenizer;
  const int vocab = static_cast<int>(kTokens.size());

  // A vocabulary entry as written ("##s" too), else the first token of it with a note; blank is ignored
  // with a note; duplicates count once; ascending ids.
  std::vector<std::string> notes;
  const std::vector<int32_t> ids =
      bert::fill_mask_target_ids(tokenizer, {"dog", "##s", "dog", "cats", " ", "hello world", "Seoul"}, vocab, notes);
  CHECK(ids == std::vector<int32_t>{id_of("[UNK]"), id_of("cat"), id_of("dog"), id_of("##s"), id_of("hello")});
  REQUIRE(notes.size() == 4);
  CHECK(notes[0] == "target \"cats\" is not a vocabulary entry; scoring its first token 'cat' (id 6)");
  CHECK(notes[1] == "target \" \" is no token (the tokenizer leaves nothing of it); ignored");
  CHECK(notes[2] == "target \"hello world\" is not a vocabulary entry; scoring its first token 'hello' (id 29)");
  CHECK(notes[3] == "target \"Seoul\" is not a vocabulary entry; scoring its first token '[UNK]' (id 1)");
  CHECK_THROWS_WITH(bert::fill_mask_target_ids(tokenizer, {" ", ""}, vocab, notes),
                    "none of the 2 targets is a token (the tokenizer leaves nothing of them)");
  CHECK_THROWS_WITH(bert::fill_mask_target_ids(tokenizer, {"dog", "\xff"}, vocab, notes),
                    "target 2: invalid UTF-8 at byte 1");
  CHECK_THROWS_WITH(bert::fill_mask_target_ids(tokenizer, {}, vocab, notes), "no targets");
  CHECK_THROWS_WITH(bert::fill_mask_target_ids(tokenizer, {"do"}, vocab - 1, notes),
                    "target \"do\" is 'do' (id 32), past the model's vocab_size 32 (a token added to the "
                    "tokenizer after the model was made)");

  // The candidates are the targets, best first, each scored as in the whole-vocabulary answer.
  const std::string prompt = "the [MASK] sat on the [MASK].";
  const bert::FillMaskResult all = bert::fill_mask(checkpoint.model, tokenizer, prompt, 1000);
  const bert::FillMaskResult some = bert::fill_mask(checkpoint.model, tokenizer, prompt, 3, true, ids);
  const bert::FillMaskResult capped = bert::fill_mask(checkpoint.model, tokenizer, prompt, 1000, true, ids);
  REQUIRE(some.per_mask.size() == 2);
  REQUIRE(capped.per_mask.size() == 2);
  for (size_t m = 0; m < 2; ++m) {
    std::vector<bert::FillMaskCandidate> expected;  // all's order restricted to the targets
    for (const bert::FillMaskCandidate& c : all.per_mask[m])
      if (std::find(ids.begin(), ids.end(), c.token) != ids.end()) expected.push_back(c);
    REQUIRE(expected.size() == ids.size());
    REQUIRE(some.per_mask[m].size() == 3);
    REQUIRE(capped.per_mask[m].size() == ids.size());
    for (size_t i = 0; i < ids.size(); ++i) {
      INFO("mask " << m << " rank " << i);
      CHECK(capped.per_mask[m][i].token == expected[i].token);
      CHECK(capped.per_mask[m][i].score == expected[i].score);
      CHECK(capped.per_mask[m][i].token_str == expected[i].token_str);
      CHECK(capped.per_mask[m][i].sequence == expected[i].sequence);
      if (i < 3) CHECK(some.per_mask[m][i].token == expected[i].token);
    }
  }
  const std::vector<int32_t> twice = {id_of("dog"), id_of("cat"), id_of("dog")};  // counted once, as HF's set()
  const bert::FillMaskResult deduplicated = bert::fill_mask(checkpoint.model, tokenizer, prompt, 5, true, twice);
  CHECK(deduplicated.per_mask[0].size() == 2);
  CHECK(deduplicated.per_mask[0][0].token != deduplicated.per_mask[0][1].token);
  const int32_t outside[] = {vocab};
  CHECK_THROWS_WITH(bert::fill_mask(checkpoint.model, tokenizer, prompt, 3, true, outside),
                    "fill_mask: target id 33 is outside the model's vocabulary of 33");

  // The command: notes on stderr, --top-k capped, refused beside --probe and --exposure.
  std::string out, err;
  REQUIRE(run({"--model", dir, "--mask", "the cat [MASK] on the mat.", "--targets", "dog", "cats", "--json"}, "", out,
              &err) == 0);
  CHECK(err == "note: --targets: target \"cats\" is not a vocabulary entry; scoring its first token 'cat' (id 6)\n");
  const Json answer = Json::parse(lines_of(out).at(0));
  REQUIRE(answer.as_array().size() == 2);
  std::vector<int64_t> answered;
  for (const Json& c : answer.as_array()) answered.push_back(c.find("token")->as_int());
  std::sort(answered.begin(), answered.end());
  CHECK(answered == std::vector<int64_t>{id_of("cat"), id_of("dog")});
  CHECK_THROWS_WITH(run({"--model", dir, "--mask", "the [MASK]", "--targets", " "}, "", out),
                    "bert_infer: --targets: the target is no token (the tokenizer leaves nothing of it)");
  bert::write_file_atomic(test_dir() + "/targets_probe.tsv", "the [MASK] sat.\tcat\n");
  CHECK_THROWS_WITH(run({"--model", dir, "--probe", test_dir() + "/targets_probe.tsv", "--targets", "cat"}, "", out),
                    "bert_infer: --targets is for fill-mask; --probe and --exposure score their own answers");
  CHECK_THROWS_WITH(run({"--model", dir, "--exposure", test_dir() + "/targets_probe.tsv", "--targets", "cat"}, "", out),
                    "bert_infer: --targets is for fill-mask; --probe and --exposure score their own answers");
  // A target of invalid UTF-8 is named before stdin is read (whose bad line would be named otherwise).
  CHECK_THROWS_WITH(run({"--model", dir, "--targets", "cat", "\xC3\x28"}, "never read [MASK]\xff\n", out),
                    "bert_infer: --targets: target 2: invalid UTF-8 at byte 1");
}

TEST_CASE("hf_decode and clean_up_tokenization follow BertTokenizerFast", "[infer]") {
  const bert::Tokenizer tokenizer(bert::Vocab(kTokens), bert::TokenizerConfig{});
  auto ids = [](std::initializer_list<const char*> tokens) {
    std::vector<int32_t> out;
    for (const char* t : tokens) out.push_back(id_of(t));
    return out;
  };
  CHECK(bert::hf_decode(tokenizer, ids({"##s"}), false) == "##s");
  CHECK(bert::hf_decode(tokenizer, ids({"cat", "##s"}), false) == "cats");
  CHECK(bert::hf_decode(tokenizer, ids({"[CLS]", "hello", ".", "[SEP]"}), false) == "[CLS] hello. [SEP]");
  CHECK(bert::hf_decode(tokenizer, ids({"[CLS]", "hello", "[UNK]", "[MASK]", "world", "[SEP]"}), true) ==
        "hello world");
  CHECK(bert::hf_decode(tokenizer, ids({"[CLS]", "##s", "[SEP]"}), true) == "##s");  // first kept token
  CHECK(bert::hf_decode(tokenizer, ids({"[SEP]", "##s"}), false) == "[SEP]s");
  CHECK(bert::hf_decode(tokenizer, ids({"dog", "'", "s"}), false) == "dog's");
  CHECK(bert::hf_decode(tokenizer, ids({"dog", "'", "s"}), false, /*clean_up_tokenization_spaces=*/false) == "dog ' s");
  CHECK(bert::hf_decode(tokenizer, ids({"do", "n't"}), false) == "don't");
  CHECK(bert::hf_decode(tokenizer, ids({"hello", "?", "!", ",", "world"}), false, false) == "hello?!, world");
  // tokenizer.json's decoder: "cleanup": false keeps each token as it is; none joins the tokens by spaces.
  bert::TokenizerConfig no_cleanup;
  no_cleanup.decoder.cleanup = false;
  const bert::Tokenizer kept(bert::Vocab(kTokens), no_cleanup);
  CHECK(bert::hf_decode(kept, ids({"hello", "?", "!", ",", "world"}), false, false) == "hello ? ! , world");
  CHECK(bert::hf_decode(kept, ids({"cat", "##s", "."}), false, false) == "cats .");
  bert::TokenizerConfig no_decoder;
  no_decoder.decoder.wordpiece = false;
  const bert::Tokenizer joined(bert::Vocab(kTokens), no_decoder);
  CHECK(bert::hf_decode(joined, ids({"[CLS]", "cat", "##s", ".", "[SEP]"}), true, false) == "cat ##s .");
  CHECK(bert::hf_decode(joined, ids({"cat", "##s", "."}), false) == "cat ##s.");  // then the spaces' clean-up

  CHECK(bert::clean_up_tokenization("a . b ? c ! d , e") == "a. b? c! d, e");
  CHECK(bert::clean_up_tokenization("it ' s") == "it's");
  CHECK(bert::clean_up_tokenization("do n't I 'm he 's we 've they 're") == "don't I'm he's we've they're");
  CHECK(bert::clean_up_tokenization("do not") == "do not");  // only the tokenizers decoder knows this one
  CHECK(bert::clean_up_tokenization("") == "");
}

TEST_CASE("tokens the tokenizer config adds past the model's vocab_size: loaded with a note, an error in a prompt",
          "[infer]") {
  // As transformers: the directory loads (the model was not resized for the added tokens), a prompt
  // that holds one fails, by name; a gold answer that is one is skipped; vocab.txt itself larger than
  // the model is still another model's tokenizer.
  const std::string dir = make_checkpoint("added_past");
  bert::write_file_atomic(dir + "/tokenizer_config.json",
                          R"({"do_lower_case": false, "strip_accents": false, "additional_special_tokens": ["<x>"],
                              "added_tokens_decoder": {")" +
                              std::to_string(kTokens.size()) + R"(": {"content": "법률가", "special": false}}})");
  std::string out, err;
  REQUIRE(run({"--model", dir, "--mask", "the [MASK]", "--json"}, "", out, &err) == 0);
  CHECK_THAT(err, Catch::Contains("2 token(s) the tokenizer config adds ('법률가', '<x>') have ids past config.json's "
                                  "vocab_size " +
                                  std::to_string(kTokens.size())));
  CHECK_THROWS_WITH(run({"--model", dir, "--mask", "the 법률가 [MASK]"}, "", out),
                    "--mask 1: the prompt holds '법률가' (id " + std::to_string(kTokens.size()) +
                        "), past the model's vocab_size " + std::to_string(kTokens.size()) +
                        " (a token added to the tokenizer after the model was made)");
  bert::InferenceCheckpoint loaded = bert::load_inference_checkpoint(dir);
  const bert::ProbeMetrics metrics =
      bert::probe(loaded.model, loaded.tokenizer, bert::parse_probe_tsv("the [MASK] sat.\t법률가\n", "p.tsv"));
  REQUIRE(metrics.outcomes.size() == 1);
  CHECK(metrics.outcomes[0].rank <= 0);
  CHECK_THAT(metrics.outcomes[0].skip_reason, Catch::Contains("past the model's vocab_size"));
  // --exposure names the line.
  bert::write_file_atomic(test_dir() + "/canaries.tsv", "the 법률가 34\t34\n");
  CHECK_THROWS_WITH(run({"--model", dir, "--exposure", test_dir() + "/canaries.tsv"}, "", out),
                    Catch::Contains("canaries.tsv:1: the text holds '법률가' (id " + std::to_string(kTokens.size()) +
                                    "), past the model's vocab_size"));
  // vocab.txt with more tokens than the model: not this model's tokenizer.
  std::vector<std::string> more = kTokens;
  more.push_back("extra");
  bert::Vocab(more).save(dir + "/vocab.txt");
  bert::write_file_atomic(dir + "/tokenizer_config.json", R"({"do_lower_case": false})");
  CHECK_THROWS_WITH(bert::load_inference_checkpoint(dir),
                    Catch::Contains("(the tokenizer does not belong to this model)"));
}

TEST_CASE("errors are one line and name the prompt, the file or the option", "[infer]") {
  const std::string dir = make_checkpoint("ckpt");
  bert::InferenceCheckpoint checkpoint = bert::load_inference_checkpoint(dir);
  std::string out;

  CHECK_THROWS_WITH(bert::fill_mask(checkpoint.model, checkpoint.tokenizer, "the cat sat.", 5),
                    Catch::Contains("no [MASK] in the prompt \"the cat sat.\""));
  CHECK_THROWS_WITH(run({"--model", dir, "--mask", "the [MASK] sat.", "--mask", "no mask here"}, "", out),
                    Catch::Contains("--mask 2: no [MASK]"));
  CHECK_THROWS_WITH(run({"--model", dir}, "the [MASK] sat.\n\nthe cat sat.\n", out),
                    Catch::Contains("<stdin>:3: no [MASK]"));
  std::string long_prompt = "[MASK]";
  for (int i = 0; i < 30; ++i) long_prompt += " cat";
  CHECK_THROWS_WITH(run({"--model", dir, "--mask", long_prompt}, "", out),
                    Catch::Contains("33 tokens") && Catch::Contains("max_position_embeddings 24"));
  CHECK_THROWS_WITH(run({"--model", dir, "--mask", "the [MASK]", "--device", "cuda"}, "", out),
                    Catch::Contains("--device cuda") && Catch::Contains("--device cpu"));
  CHECK_THROWS_WITH(run({"--model", dir, "--mask", "the [MASK]", "--device", "tpu"}, "", out),
                    Catch::Contains("cpu or cuda"));
  CHECK_THROWS_WITH(run({"--model", dir, "--input", test_dir()}, "", out),
                    Catch::Contains(test_dir() + ": is a directory, expected the --input file"));
  CHECK_THROWS_WITH(run({"--model", dir}, "a [MASK]\nb \xC3\x28 [MASK]\n", out),
                    Catch::Contains("<stdin>:2: invalid UTF-8 at byte 3"));
  CHECK_THROWS_WITH(run({"--model", dir, "--mask", "ok [MASK]", "--mask", "\xff[MASK]"}, "", out),
                    Catch::Contains("--mask 2: invalid UTF-8 at byte 1"));
  // A prompt that starts with "--" is read as an option: the message says how to give it.
  CHECK_THROWS_WITH(run({"--model", dir, "--mask", "--> [MASK]"}, "", out),
                    Catch::Contains("bert_infer: option '--mask' needs at least one value; '--> [MASK]' starts with "
                                    "'--' and is read as an option (a value that does is given as --mask='--> "
                                    "[MASK]')"));
  CHECK_THROWS_WITH(run({"--model", dir, "--mask", "a [MASK]", "--> [MASK]"}, "", out),
                    Catch::Contains("'--> [MASK]' starts with '--' and is read as an option; give a value that does "
                                    "as --option='--> [MASK]'"));
  CHECK_THROWS_WITH(run({"--model", dir, "--mask", "--top-k", "3"}, "", out),
                    Catch::Equals("bert_infer: option '--mask' needs at least one value (see --help)"));
  CHECK_THROWS_WITH(run({"--model", dir, "--mask", "--jsonn"}, "", out),  // a mistyped option, not a value
                    Catch::Equals("bert_infer: option '--mask' needs at least one value (see --help)"));
  CHECK(run({"--model", dir, "--mask=--> [MASK]"}, "", out) == 0);
  // The model dir is checked before the prompts are read (stdin may be a terminal waiting for them).
  CHECK_THROWS_WITH(run({"--model", test_dir() + "/nowhere"}, "b \xC3\x28 [MASK]\n", out),
                    Catch::Contains("does not exist"));

  // A tokenizer_config.json naming special tokens vocab.txt lacks: the fields, when the model loads.
  const std::string renamed = make_checkpoint("ckpt_renamed");
  bert::TokenizerConfig tokens = bert::TokenizerConfig::load(renamed);
  tokens.mask_token = "[MASKX]";
  tokens.sep_token = "[SEPX]";
  tokens.save(renamed);
  CHECK_THROWS_WITH(bert::load_inference_checkpoint(renamed),
                    renamed + "/vocab.txt: has no mask_token '[MASKX]', sep_token '[SEPX]' (set by " + renamed +
                        "/tokenizer_config.json, else HF's default); bert_infer needs them");

  std::filesystem::remove(dir + "/vocab.txt");
  std::filesystem::remove(dir + "/config.json");
  CHECK_THROWS_WITH(bert::load_inference_checkpoint(dir),
                    Catch::Contains("is incomplete: missing config.json, vocab.txt"));
  // A directory given with a trailing slash is named without it, and the files in it without "//".
  CHECK_THROWS_WITH(run({"--model", dir + "//", "--mask", "the [MASK]"}, "", out),
                    Catch::StartsWith("model dir '" + dir + "' is incomplete"));
  CHECK_THROWS_WITH(bert::Tokenizer::from_dir(dir + "/"), Catch::StartsWith(dir + "/vocab.txt: missing"));
  CHECK_THROWS_WITH(bert::load_inference_checkpoint(test_dir() + "/nowhere"), Catch::Contains("does not exist"));

  const std::string probe_path = test_dir() + "/bad.tsv";
  bert::write_file_atomic(probe_path, "the [MASK] sat.\tcat\nthe [MASK] sat. cat\n");
  CHECK_THROWS_WITH(bert::parse_probe_tsv(bert::read_file(probe_path), probe_path),
                    Catch::Contains("bad.tsv:2: no tab"));
  CHECK_THROWS_WITH(bert::parse_probe_tsv("a [MASK]\tb\tc\td\n", "p.tsv"), Catch::Contains("p.tsv:1: 4 tab-separated"));
  CHECK_THROWS_WITH(bert::parse_probe_tsv("a [MASK]\t \n", "p.tsv"), Catch::Contains("p.tsv:1: empty gold"));
  CHECK_THROWS_WITH(bert::parse_probe_tsv("a [MASK]\tb\nc [MASK]\t\xff\n", "p.tsv"),
                    Catch::Contains("p.tsv:2: invalid UTF-8 at byte 10"));
  const std::vector<bert::ProbeQuery> bom = bert::parse_probe_tsv("\xEF\xBB\xBFthe [MASK] sat.\tcat\r\n", "p.tsv");
  REQUIRE(bom.size() == 1);
  CHECK(bom[0].prompt == "the [MASK] sat.");
  CHECK(bom[0].gold == "cat");
  const std::vector<bert::ProbeQuery> two_masks = bert::parse_probe_tsv("\nthe [MASK] sat on [MASK]\tcat\n", "p.tsv");
  CHECK_THROWS_WITH(bert::probe(checkpoint.model, checkpoint.tokenizer, two_masks),
                    Catch::Contains("p.tsv:2: the prompt has 2 [MASK] tokens; a probe needs exactly one"));
}

TEST_CASE("a BertForMaskedLM checkpoint (no pooler, no NSP head) serves fill-mask, and does not resume", "[infer]") {
  const std::string full = make_checkpoint("ckpt_full");
  const std::string mlm = make_checkpoint("ckpt_mlm");
  {  // model.safetensors as transformers' BertForMaskedLM.save_pretrained writes it: without those four
    const bert::SafetensorsFile file(full + "/model.safetensors");
    bert::SafetensorsWriter writer;
    std::vector<std::vector<float>> kept;
    kept.reserve(file.tensors().size());
    for (const bert::TensorInfo& t : file.tensors()) {
      if (t.name.starts_with("bert.pooler.") || t.name.starts_with("cls.seq_relationship.")) continue;
      kept.push_back(file.read_f32(t.name));
      writer.add_f32(t.name, t.shape, kept.back());
    }
    REQUIRE(writer.tensor_count() + 4 == file.tensors().size());
    writer.write(mlm + "/model.safetensors");
  }
  std::string want, got;
  REQUIRE(run({"--model", full, "--mask", "the cat [MASK] on the mat.", "--json"}, "", want) == 0);
  REQUIRE(run({"--model", mlm, "--mask", "the cat [MASK] on the mat.", "--json"}, "", got) == 0);
  CHECK(got == want);
  // Training needs both heads: a resume from it stays an error naming the tensor.
  const bert::BertConfig config = tiny_config();
  CHECK_THROWS_WITH(bert::read_parameter_arena(mlm + "/model.safetensors", config, bert::make_parameter_table(config)),
                    Catch::Contains("tensor 'bert.pooler.dense.weight' [16, 16] is missing"));
  std::vector<std::string> zero_filled;
  (void)bert::read_parameter_arena(mlm + "/model.safetensors", config, bert::make_parameter_table(config),
                                   &zero_filled);
  CHECK(zero_filled == std::vector<std::string>{"bert.pooler.dense.weight", "bert.pooler.dense.bias",
                                                "cls.seq_relationship.weight", "cls.seq_relationship.bias"});
}

TEST_CASE("probe: P@1, P@10, MRR per relation with ranks forced by the decoder bias", "[infer]") {
  const int32_t winner = id_of("paris"), loser = id_of("france");
  const std::string dir = make_checkpoint("ckpt", {{winner, 100.0f}, {loser, -100.0f}});
  const std::string tsv = test_dir() + "/probe.tsv";
  bert::write_file_atomic(tsv,
                          "the capital of france is [MASK].\tparis\tcapital\n"
                          "[MASK] is the capital of korea.\tfrance\tcapital\n"
                          "\n"
                          "the [MASK] sat.\tsat on\tverbs\n"
                          "the cat is [MASK].\tparis\n"
                          "hello [MASK]\tnowhere\tverbs\n");
  bert::InferenceCheckpoint checkpoint = bert::load_inference_checkpoint(dir);
  const bert::ProbeMetrics metrics =
      bert::probe(checkpoint.model, checkpoint.tokenizer, bert::parse_probe_tsv(bert::read_file(tsv), tsv));

  const double vocab = static_cast<double>(kTokens.size());
  REQUIRE(metrics.outcomes.size() == 5);
  CHECK(metrics.outcomes[0].rank == 1);
  CHECK(metrics.outcomes[0].top_token == "paris");
  CHECK(metrics.outcomes[1].rank == static_cast<int64_t>(kTokens.size()));
  CHECK(metrics.outcomes[2].rank == 0);
  CHECK(metrics.outcomes[2].query.line == 4);
  CHECK_THAT(metrics.outcomes[2].skip_reason, Catch::Contains("is 2 tokens (sat on)"));
  CHECK(metrics.outcomes[3].rank == 1);
  CHECK(metrics.outcomes[3].query.relation == "-");
  CHECK_THAT(metrics.outcomes[4].skip_reason, Catch::Contains("not in the vocabulary"));

  CHECK(metrics.overall.count == 3);
  CHECK(metrics.overall.skipped == 2);
  CHECK(metrics.overall.p_at_1 == Approx(2.0 / 3));
  CHECK(metrics.overall.p_at_10 == Approx(2.0 / 3));
  CHECK(metrics.overall.mrr == Approx((1 + 1 / vocab + 1) / 3));
  REQUIRE(metrics.relations.size() == 3);
  CHECK(metrics.relations[0].relation == "capital");
  CHECK(metrics.relations[0].p_at_1 == Approx(0.5));
  CHECK(metrics.relations[0].mrr == Approx((1 + 1 / vocab) / 2));
  CHECK(metrics.relations[1].relation == "verbs");
  CHECK(metrics.relations[1].count == 0);
  CHECK(metrics.relations[1].skipped == 2);
  CHECK(metrics.relations[2].relation == "-");
  CHECK(metrics.mean_p_at_1_by_relation == Approx((0.5 + 1.0) / 2));  // relations with a scored query

  // A continuation piece as the gold answer, written as the vocabulary entry.
  const bert::ProbeMetrics pieces =
      bert::probe(checkpoint.model, checkpoint.tokenizer, bert::parse_probe_tsv("the dog[MASK] sat.\t##s\n", "p.tsv"));
  REQUIRE(pieces.outcomes.size() == 1);
  CHECK(pieces.outcomes[0].gold_id == id_of("##s"));
  CHECK(pieces.outcomes[0].rank > 0);
  // Skipped: a piece the vocabulary lacks (not taken for the text "##zz"), and the model's own markers.
  const bert::ProbeMetrics odd = bert::probe(
      checkpoint.model, checkpoint.tokenizer,
      bert::parse_probe_tsv("the dog[MASK] sat.\t##zz\nthe [MASK] sat.\t[MASK]\nthe [MASK] sat.\t[CLS]\n", "p.tsv"));
  REQUIRE(odd.outcomes.size() == 3);
  CHECK(odd.overall.count == 0);
  CHECK(odd.outcomes[0].skip_reason ==
        "gold answer \"##zz\" is not a vocabulary entry (a piece starting with \"##\" is looked up whole)");
  CHECK(odd.outcomes[1].skip_reason == "gold answer \"[MASK]\" is a special token of the model, never an answer");
  CHECK_THAT(odd.outcomes[2].skip_reason, Catch::Contains("\"[CLS]\" is a special token"));

  // The command: table and JSON.
  std::string out;
  REQUIRE(run({"--model", dir, "--probe", tsv}, "", out) == 0);
  CHECK_THAT(out, Catch::Contains("5 queries, 3 scored, 2 skipped"));
  CHECK_THAT(out, Catch::Contains("mean P@1 over relations (LAMA): 0.7500"));
  CHECK_THAT(out, Catch::Contains("probe.tsv:4: gold answer \"sat on\""));
  REQUIRE(run({"--model", dir, "--probe", "-"}, bert::read_file(tsv), out) == 0);  // "-": stdin
  CHECK_THAT(out, Catch::Contains("5 queries, 3 scored, 2 skipped"));
  CHECK_THAT(out, Catch::Contains("<stdin>:4: gold answer \"sat on\""));
  REQUIRE(run({"--model", dir, "--probe", tsv, "--json"}, "", out) == 0);
  const Json json = Json::parse(out);
  CHECK(json.find("overall")->find("p_at_1")->as_number() == Approx(2.0 / 3));
  CHECK(json.find("mean_p_at_1_by_relation")->as_number() == Approx(0.75));
  CHECK(json.find("skipped")->as_array().size() == 2);
  CHECK(json.find("results")->as_array().size() == 3);
  CHECK(json.find("relations")->as_array()[1].find("p_at_1")->is_null());  // "verbs": nothing scored

  // Nothing scorable (gold answers of several tokens, as phone numbers always are): n/a, null, exit 1.
  const std::string unscorable = test_dir() + "/unscorable.tsv";
  bert::write_file_atomic(unscorable, "the [MASK] sat.\tsat on\tphone\nhello [MASK]\tnowhere\tphone\n");
  std::string err;
  REQUIRE(run({"--model", dir, "--probe", unscorable}, "", out, &err) == 1);
  CHECK_THAT(out, Catch::Contains("2 queries, 0 scored, 2 skipped") &&
                      Catch::Contains("      0     n/a     n/a     n/a") &&
                      Catch::Contains("mean P@1 over relations (LAMA): n/a") && !Catch::Contains("0.0000"));
  CHECK_THAT(err, Catch::Contains("unscorable.tsv: no line could be scored"));
  REQUIRE(run({"--model", dir, "--probe", unscorable, "--json"}, "", out) == 1);
  const Json none = Json::parse(out);
  CHECK(none.find("overall")->find("p_at_1")->is_null());
  CHECK(none.find("overall")->find("mrr")->is_null());
  CHECK(none.find("mean_p_at_1_by_relation")->is_null());
  try {
    (void)run({"--model", dir, "--probe", tsv, "--top-k", "3"}, "", out);
    FAIL("no error");
  } catch (const bert::Error& e) {
    CHECK(std::string(e.what()) ==
          "bert_infer: --top-k is for fill-mask; --probe ranks the gold answer over the whole vocabulary");
  }
}

TEST_CASE("softmax_max_and_sum refuses logits a diverged model overflowed, rather than scoring nan", "[infer]") {
  const std::vector<float> fine = {1.0f, 2.0f, 3.0f};
  const auto [max_logit, sum] = bert::softmax_max_and_sum(fine);
  CHECK(max_logit == 3.0);
  CHECK(sum == Approx(std::exp(-2.0) + std::exp(-1.0) + 1.0).epsilon(1e-12));
  const std::string why = "the model's masked-LM logits are not finite (";
  for (const float bad :
       {std::nanf(""), std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity()}) {
    const std::vector<float> logits = {1.0f, bad, 3.0f};
    CHECK_THROWS_WITH(bert::softmax_max_and_sum(logits),
                      why + (std::isnan(bad) ? "nan" : "inf") +
                          "): its weights overflow them, as a diverged training run leaves them");
  }
}

TEST_CASE("rank_of and summarize_probe", "[infer]") {
  const std::vector<float> logits = {0.5f, 2.0f, 0.5f, -1.0f, 2.0f};
  CHECK(bert::rank_of(logits, 1) == 1);
  CHECK(bert::rank_of(logits, 4) == 2);  // a tie goes to the lower id, as fill_mask orders them
  CHECK(bert::rank_of(logits, 0) == 3);
  CHECK(bert::rank_of(logits, 3) == 5);

  std::vector<bert::ProbeOutcome> outcomes(4);
  const int64_t ranks[] = {1, 10, 11, 2};
  const char* relations[] = {"a", "a", "b", "b"};
  for (size_t i = 0; i < 4; ++i) {
    outcomes[i].rank = ranks[i];
    outcomes[i].query.relation = relations[i];
  }
  const bert::ProbeMetrics metrics = bert::summarize_probe(outcomes);
  CHECK(metrics.overall.p_at_1 == Approx(0.25));
  CHECK(metrics.overall.p_at_10 == Approx(0.75));  // ranks 1, 10, 2
  CHECK(metrics.overall.mrr == Approx((1 + 0.1 + 1.0 / 11 + 0.5) / 4));
  CHECK(metrics.relations[0].p_at_1 == Approx(0.5));
  CHECK(metrics.relations[1].p_at_1 == Approx(0.0));
  CHECK(metrics.mean_p_at_1_by_relation == Approx(0.25));
}

TEST_CASE("bert_infer: prompts from --mask, --input and stdin as a table or JSON lines", "[infer]") {
  const std::string dir = make_checkpoint("ckpt");
  std::string out;
  REQUIRE(run({"--model", dir, "--mask", "이순신은 [MASK] 중기의 무신이다.", "--top-k", "3", "--json"}, "", out) == 0);
  std::vector<std::string> lines = lines_of(out);
  REQUIRE(lines.size() == 1);
  const Json single = Json::parse(lines[0]);
  REQUIRE(single.as_array().size() == 3);
  for (const Json& c : single.as_array()) {
    const std::string& token_str = c.find("token_str")->as_string();
    if (token_str == "조선") CHECK(c.find("sequence")->as_string() == "이순신은 조선 중기의 무신이다.");
    CHECK(c.find("token")->as_int() >= 0);
  }

  const std::string input = test_dir() + "/prompts.txt";
  bert::write_file_atomic(input, "the cat [MASK] on the mat.\n\nthe [MASK] sat on the [MASK].\r\n");
  REQUIRE(run({"--model", dir, "--input", input, "--json"}, "", out) == 0);
  lines = lines_of(out);
  REQUIRE(lines.size() == 2);
  CHECK(Json::parse(lines[0]).as_array()[0].is_object());
  CHECK(Json::parse(lines[1]).as_array()[0].is_array());

  REQUIRE(run({"--model", dir, "--top-k", "2"}, "the cat [MASK] on the mat.\n", out) == 0);
  CHECK_THAT(out, Catch::Contains("> the cat [MASK] on the mat."));
  CHECK_THAT(out, Catch::Contains("sequence"));
  CHECK(lines_of(out).size() == 4);  // prompt, header, 2 candidates
  // A byte order mark (Windows editors) before the first prompt is not part of it; "-" is stdin.
  const std::string table = out;
  bert::write_file_atomic(input, "\xEF\xBB\xBFthe cat [MASK] on the mat.\r\n");
  REQUIRE(run({"--model", dir, "--top-k", "2", "--input", input}, "", out) == 0);
  CHECK(out == table);
  REQUIRE(run({"--model", dir, "--top-k", "2", "--input", "-"}, "\xEF\xBB\xBFthe cat [MASK] on the mat.\n", out) == 0);
  CHECK(out == table);

  // Output that cannot be written (a full disk, a closed pipe) is an error, not a success.
  {
    struct Refusing : std::streambuf {
      int overflow(int) override { return traits_type::eof(); }
    } refusing;
    std::ostream full(&refusing);
    std::istringstream none;
    std::ostringstream err_stream;
    CHECK_THROWS_WITH(bert::infer_main({"--model", dir, "--mask", "the [MASK]", "--json"}, none, full, err_stream),
                      "bert_infer: write error on the standard output");
  }

  REQUIRE(run({"--help"}, "", out) == 0);
  CHECK_THAT(out, Catch::Contains("memorised"));

  // A model with ids past vocab.txt's end: HF's token_str for one is "" (the JSON's too); the table
  // says it is not in vocab.txt.
  const auto unnamed = static_cast<int32_t>(kTokens.size()) + 1;
  const std::string roomy = make_checkpoint("roomy", {{unnamed, 50.0f}}, 2);
  REQUIRE(run({"--model", roomy, "--mask", "the [MASK]", "--top-k", "2", "--json"}, "", out) == 0);
  const Json first = Json::parse(lines_of(out)[0]).as_array()[0];
  CHECK(first.find("token")->as_int() == unnamed);
  CHECK(first.find("token_str")->as_string().empty());
  REQUIRE(run({"--model", roomy, "--mask", "the [MASK]", "--top-k", "2"}, "", out) == 0);
  INFO(out);
  REQUIRE(lines_of(out).size() == 4);
  CHECK_THAT(lines_of(out)[2], Catch::Contains("  " + std::to_string(unnamed) + "  (not in vocab.txt)  "));
}

namespace {

// Forwards to a model's logits source, recording each call: [batch, seq_len] and the lengths it got.
class CallLog final : public bert::MlmLogitsSource {
 public:
  struct Call {
    int64_t batch = 0, seq_len = 0;
    std::vector<int32_t> lengths;
  };
  explicit CallLog(bert::MlmLogitsSource& inner) : inner_(inner) {}
  const bert::BertConfig& config() const override { return inner_.config(); }
  std::vector<float> logits_at(const std::vector<int32_t>& ids, const std::vector<int32_t>& positions) override {
    calls.push_back({1, static_cast<int64_t>(ids.size()), {}});
    return inner_.logits_at(ids, positions);
  }
  std::vector<float> padded_logits_at(const std::vector<int32_t>& ids, int64_t batch,
                                      const std::vector<int32_t>& positions,
                                      std::span<const int32_t> lengths) override {
    calls.push_back({batch, static_cast<int64_t>(ids.size()) / batch, {lengths.begin(), lengths.end()}});
    return inner_.padded_logits_at(ids, batch, positions, lengths);
  }
  std::vector<Call> calls;

 private:
  bert::MlmLogitsSource& inner_;
};

// The model one sequence at a time through MlmLogitsSource's own padded_logits_at (the unpadded prefixes).
class OneAtATime final : public bert::MlmLogitsSource {
 public:
  explicit OneAtATime(bert::MlmLogitsSource& inner) : inner_(inner) {}
  const bert::BertConfig& config() const override { return inner_.config(); }
  std::vector<float> logits_at(const std::vector<int32_t>& ids, const std::vector<int32_t>& positions) override {
    lengths_seen.push_back(static_cast<int64_t>(ids.size()));
    return inner_.logits_at(ids, positions);
  }
  std::vector<int64_t> lengths_seen;

 private:
  bert::MlmLogitsSource& inner_;
};

// Each candidate of `batched` has the score, token_str and sequence `alone` gives that token (near ties
// may order two tokens otherwise, so the candidates are matched by token, over the whole vocabulary).
void check_same_answers(const bert::FillMaskResult& batched, const bert::FillMaskResult& alone) {
  REQUIRE(batched.input_ids == alone.input_ids);
  REQUIRE(batched.mask_positions == alone.mask_positions);
  REQUIRE(batched.per_mask.size() == alone.per_mask.size());
  for (size_t m = 0; m < alone.per_mask.size(); ++m) {
    REQUIRE(batched.per_mask[m].size() == alone.per_mask[m].size());
    for (const bert::FillMaskCandidate& expected : alone.per_mask[m]) {
      const auto found = std::find_if(batched.per_mask[m].begin(), batched.per_mask[m].end(),
                                      [&](const bert::FillMaskCandidate& c) { return c.token == expected.token; });
      REQUIRE(found != batched.per_mask[m].end());
      INFO("mask " << m << " token " << expected.token);
      CHECK(found->score == Approx(expected.score).epsilon(1e-5));
      CHECK(found->token_str == expected.token_str);
      CHECK(found->sequence == expected.sequence);
    }
  }
}

}  // namespace

TEST_CASE("bert_infer --interactive: each stdin line answered in turn, a bad line reported in its place", "[infer]") {
  const std::string dir = make_checkpoint("interactive");
  const std::string good = "the cat [MASK] on the mat.", two = "the [MASK] sat on the [MASK].";
  std::string want, out, err;
  REQUIRE(run({"--model", dir, "--json", "--top-k", "2", "--batch-size", "1"}, good + "\n" + two + "\n", want) == 0);
  const std::vector<std::string> answers = lines_of(want);
  REQUIRE(answers.size() == 2);

  // JSON: a line per stdin line, a bad one an {"error": ...} object naming it, a blank one too (a
  // script that writes a line and waits for its answer gets one).
  CHECK(run({"--model", dir, "--json", "--top-k", "2", "--interactive"},
            "\xEF\xBB\xBF" + good + "\r\n\n  \nthe cat sat.\n" + two + "\n", out, &err) == 1);
  const std::vector<std::string> got = lines_of(out);
  REQUIRE(got.size() == 5);
  CHECK(got[0] == answers[0]);
  CHECK(got[4] == answers[1]);
  CHECK(Json::parse(got[1], "out").find("error")->as_string() == "<stdin>:2: a blank line, no prompt");
  CHECK(Json::parse(got[2], "out").find("error")->as_string() == "<stdin>:3: a blank line, no prompt");
  const Json error = Json::parse(got[3], "out");
  REQUIRE(error.is_object());
  CHECK(error.find("error")->as_string().starts_with("<stdin>:4: no [MASK] in the prompt"));
  CHECK_THAT(err, Catch::Contains("error: <stdin>:4: no [MASK]") && Catch::Contains("3 of 5 prompts failed"));
  // The table skips blank lines.
  REQUIRE(run({"--model", dir, "--top-k", "1", "--interactive"}, "\n" + good + "\n \n", out, &err) == 0);
  CHECK(err.empty());

  // The table: the answers' blocks one blank line apart; every line good: exit 0; --targets applies.
  REQUIRE(run({"--model", dir, "--top-k", "1", "--interactive"}, good + "\n" + two + "\n", out, &err) == 0);
  CHECK(err.empty());
  std::string batch_table;
  REQUIRE(run({"--model", dir, "--top-k", "1"}, good + "\n" + two + "\n", batch_table) == 0);
  CHECK(out == batch_table);
  REQUIRE(run({"--model", dir, "--json", "--interactive", "--targets", "sat", "mat"}, good + "\n", out) == 0);
  REQUIRE(lines_of(out).size() == 1);
  CHECK(Json::parse(out, "out").as_array().size() == 2);
  // Invalid UTF-8 is that line's error too.
  CHECK(run({"--model", dir, "--json", "--interactive"}, "the \xFF [MASK].\n" + good + "\n", out, &err) == 1);
  CHECK(lines_of(out).size() == 2);
  CHECK_THAT(err, Catch::Contains("<stdin>:1"));
  CHECK_THAT(err, Catch::Contains("error: <stdin>:1: invalid UTF-8") && !Catch::Contains("<stdin>:1: <stdin>:1"));

  CHECK_THROWS_WITH(run({"--model", dir, "--interactive", "--mask", good}, "", out),
                    Catch::Contains("--interactive answers stdin's lines"));
  CHECK_THROWS_WITH(run({"--model", dir, "--interactive", "--input", dir + "/vocab.txt"}, "", out),
                    Catch::Contains("--interactive answers stdin's lines"));
  CHECK_THROWS_WITH(run({"--model", dir, "--interactive", "--batch-size", "4"}, "", out),
                    Catch::Contains("--batch-size has nothing to batch with --interactive"));
  CHECK_THROWS_WITH(run({"--model", dir, "--interactive", "--probe", "-"}, "", out),
                    Catch::Contains("--interactive is for fill-mask prompts"));
}

TEST_CASE("fill_mask_batch and probe: prompts share padded forwards, each answer as its prompt alone", "[infer]") {
  const std::string dir = make_checkpoint("batched");
  bert::InferenceCheckpoint checkpoint = bert::load_inference_checkpoint(dir);
  const std::unique_ptr<bert::MlmLogitsSource> model = bert::logits_source(checkpoint.model);
  const bert::Tokenizer& tokenizer = checkpoint.tokenizer;
  // Lengths 9, 6, 9, 3, 9 (two masks), 12, 7: equal lengths, a lone mask, one long prompt.
  const std::vector<std::string> prompts = {
      "the cat [MASK] on the mat.",      "the [MASK] sat.",
      "the dog [MASK] on the mat.",      "[MASK]",
      "the [MASK] sat on the [MASK].",   "hello world, seoul is the capital of [MASK] !",
      "이순신은 [MASK] 중기의 무신이다."};
  const int all = static_cast<int>(kTokens.size());
  std::vector<bert::FillMaskResult> alone;
  for (const std::string& prompt : prompts) alone.push_back(bert::fill_mask(*model, tokenizer, prompt, all));

  SECTION("one padded call for all, the longest prompt setting its length") {
    CallLog log(*model);
    bert::PromptBatching batching;
    batching.max_padding = 100;
    const std::vector<bert::FillMaskResult> batched =
        bert::fill_mask_batch(log, tokenizer, prompts, all, true, {}, batching);
    REQUIRE(batched.size() == prompts.size());
    for (size_t i = 0; i < prompts.size(); ++i) {
      INFO("prompt " << i + 1);
      check_same_answers(batched[i], alone[i]);
    }
    REQUIRE(log.calls.size() == 1);
    CHECK(log.calls[0].batch == 7);
    CHECK(log.calls[0].seq_len == 12);
    CHECK(log.calls[0].lengths == std::vector<int32_t>{3, 6, 7, 9, 9, 9, 12});  // ascending, ties in input order
  }
  SECTION("bounded calls: sequences, tokens and padding, with progress") {
    CallLog log(*model);
    bert::PromptBatching batching;
    batching.max_sequences = 2;
    batching.max_tokens = 18;
    batching.max_padding = 0.125;
    std::vector<std::pair<size_t, size_t>> progress;
    batching.progress = [&](size_t done, size_t total) { progress.emplace_back(done, total); };
    const std::vector<bert::FillMaskResult> batched =
        bert::fill_mask_batch(log, tokenizer, prompts, all, true, {}, batching);
    for (size_t i = 0; i < prompts.size(); ++i) {
      INFO("prompt " << i + 1);
      check_same_answers(batched[i], alone[i]);
    }
    // 3 | 6 7 | 9 9 | 9 | 12: 3 + 6 would pad 3 of 9 tokens, 6 + 7 pads 1 of 13; 9 9 + 9 would be 3
    // sequences, 9 + 12 24 tokens.
    std::vector<int64_t> sizes;
    for (const CallLog::Call& call : log.calls) {
      sizes.push_back(call.batch);
      CHECK(call.batch <= 2);
      CHECK(call.batch * call.seq_len <= 18);
    }
    CHECK(sizes == std::vector<int64_t>{1, 2, 2, 1, 1});
    REQUIRE(log.calls.size() == 5);
    CHECK(log.calls[1].lengths == std::vector<int32_t>{6, 7});
    for (const size_t equal : {0, 2, 3, 4}) CHECK(log.calls[equal].lengths.empty());  // one length: no padding
    REQUIRE(progress.size() == log.calls.size());
    CHECK(progress.back() == std::pair<size_t, size_t>{7, 7});
    CHECK(std::is_sorted(progress.begin(), progress.end()));
  }
  SECTION("through the base class's one-sequence-at-a-time default, padding stripped") {
    OneAtATime single(*model);
    bert::PromptBatching batching;
    batching.max_padding = 100;
    const std::vector<bert::FillMaskResult> batched =
        bert::fill_mask_batch(single, tokenizer, prompts, all, true, {}, batching);
    for (size_t i = 0; i < prompts.size(); ++i) {
      INFO("prompt " << i + 1);
      check_same_answers(batched[i], alone[i]);
    }
    CHECK(single.lengths_seen == std::vector<int64_t>{3, 6, 7, 9, 9, 9, 12});
  }
  SECTION("targets and top_k as fill_mask's") {
    const std::vector<int32_t> targets = {id_of("sat"), id_of("dog"), id_of("paris")};
    const std::vector<bert::FillMaskResult> batched =
        bert::fill_mask_batch(*model, tokenizer, prompts, 2, true, targets);
    for (size_t i = 0; i < prompts.size(); ++i) {
      const bert::FillMaskResult expected = bert::fill_mask(*model, tokenizer, prompts[i], 2, true, targets);
      for (size_t m = 0; m < expected.per_mask.size(); ++m) {
        REQUIRE(batched[i].per_mask[m].size() == 2);
        for (size_t k = 0; k < 2; ++k) CHECK(batched[i].per_mask[m][k].token == expected.per_mask[m][k].token);
      }
    }
  }
  SECTION("a bad prompt is named before any forward") {
    CallLog log(*model);
    std::vector<std::string> bad = prompts;
    bad.insert(bad.begin() + 2, "no mask here");
    CHECK_THROWS_WITH(bert::fill_mask_batch(log, tokenizer, bad, 3),
                      Catch::StartsWith("prompt 3: ") && Catch::Contains("[MASK]"));
    CHECK_THROWS_WITH(bert::fill_mask_batch(log, tokenizer, prompts, 0), Catch::Contains("top_k must be >= 1"));
    CHECK(log.calls.empty());
    CHECK(bert::fill_mask_batch(log, tokenizer, {}, 3).empty());
    CHECK(log.calls.empty());
  }
  SECTION("probe: the ranks of each prompt alone, errors before any forward") {
    std::string tsv;
    for (const std::string& prompt : {prompts[0], prompts[1], prompts[2], prompts[5], prompts[6]})
      tsv += prompt + "\tsat\tr\n";
    tsv += "the [MASK] sat.\tsat on\tr\n";  // skipped: not run
    const std::vector<bert::ProbeQuery> queries = bert::parse_probe_tsv(tsv, "p.tsv");
    CallLog log(*model);
    bert::PromptBatching batching;
    batching.max_padding = 100;
    const bert::ProbeMetrics batched = bert::probe(log, tokenizer, queries, batching);
    REQUIRE(log.calls.size() == 1);
    CHECK(log.calls[0].batch == 5);
    bert::PromptBatching one;
    one.max_sequences = 1;
    const bert::ProbeMetrics single = bert::probe(*model, tokenizer, queries, one);
    REQUIRE(batched.outcomes.size() == 6);
    for (size_t q = 0; q < 6; ++q) {
      INFO("query " << q + 1);
      CHECK(batched.outcomes[q].rank == single.outcomes[q].rank);
      CHECK(batched.outcomes[q].gold_score == Approx(single.outcomes[q].gold_score).epsilon(1e-5));
      CHECK(batched.outcomes[q].top_token == single.outcomes[q].top_token);
    }
    CHECK(batched.outcomes[5].rank == 0);
    CHECK(batched.overall.count == 5);

    log.calls.clear();
    const std::vector<bert::ProbeQuery> two_masks =
        bert::parse_probe_tsv(tsv + "the [MASK] sat on the [MASK].\tsat\n", "p.tsv");
    CHECK_THROWS_WITH(bert::probe(log, tokenizer, two_masks), Catch::StartsWith("p.tsv:7: the prompt has 2"));
    CHECK(log.calls.empty());
  }
  SECTION("for_each_mlm_logits and padded_logits_at refuse what does not fit") {
    const std::vector<std::vector<int32_t>> sequences = {{kCls, kMask, kSep}, {kCls, id_of("the"), kMask, kSep}};
    const auto ignore = [](size_t, std::span<const float>) {};
    CHECK_THROWS_WITH(bert::for_each_mlm_logits(*model, sequences, {{1}}, {}, ignore),
                      Catch::Contains("2 sequences but 1 position lists"));
    CHECK_THROWS_WITH(bert::for_each_mlm_logits(*model, sequences, {{1}, {4}}, {}, ignore),
                      Catch::Contains("position 4 is outside sequence 1 of 4 tokens"));
    bert::PromptBatching zero;
    zero.max_sequences = 0;
    CHECK_THROWS_WITH(bert::for_each_mlm_logits(*model, sequences, {{1}, {2}}, zero, ignore),
                      Catch::Contains("must be >= 1"));
    std::vector<size_t> seen;
    bert::for_each_mlm_logits(*model, sequences, {{}, {2, 2}}, {}, [&](size_t i, std::span<const float> logits) {
      seen.push_back(i);
      CHECK(logits.size() == 2 * kTokens.size());
    });
    CHECK(seen == std::vector<size_t>{1});  // no positions: not run
    const std::vector<int32_t> ids = {kCls, kMask, kSep, 0, kCls, id_of("the"), kMask, kSep};
    const std::vector<int32_t> lengths_bad = {5, 4};
    CHECK_THROWS_WITH(model->padded_logits_at(ids, 2, {1}, lengths_bad),
                      Catch::Contains("sequence 0 has length 5, outside [1, 4]"));
    const std::vector<int32_t> one_length = {3};
    CHECK_THROWS_WITH(model->padded_logits_at(ids, 2, {1}, one_length), Catch::Contains("1 lengths for 2 sequences"));
    OneAtATime single(*model);  // the base class's checks
    CHECK_THROWS_WITH(single.padded_logits_at(ids, 2, {1}, one_length), Catch::Contains("1 lengths for 2 sequences"));
    CHECK_THROWS_WITH(single.padded_logits_at(ids, 2, {1}, lengths_bad),
                      Catch::Contains("a sequence length of 5, outside [1, 4]"));
    CHECK(single.lengths_seen.empty());
  }
}

TEST_CASE("bert_infer --batch-size: 1 answers each prompt exactly as fill_mask alone", "[infer]") {
  const std::string dir = make_checkpoint("batch_size");
  bert::InferenceCheckpoint checkpoint = bert::load_inference_checkpoint(dir);
  const std::vector<std::string> prompts = {"the cat [MASK] on the mat.", "the [MASK] sat.",
                                            "the dog [MASK] on the mat."};
  std::string expected;
  for (const std::string& prompt : prompts)
    expected += bert::fill_mask_json(bert::fill_mask(checkpoint.model, checkpoint.tokenizer, prompt, 3)).dump() + "\n";
  std::string out;
  REQUIRE(run({"--model", dir, "--input", "-", "--json", "--top-k", "3", "--batch-size", "1"},
              prompts[0] + "\n" + prompts[1] + "\n" + prompts[2] + "\n", out) == 0);
  CHECK(out == expected);
  // The default shares forwards: the same tokens, scores within rounding.
  REQUIRE(run({"--model", dir, "--input", "-", "--json", "--top-k", "3"},
              prompts[0] + "\n" + prompts[1] + "\n" + prompts[2] + "\n", out) == 0);
  const std::vector<std::string> got = lines_of(out), want = lines_of(expected);
  REQUIRE(got.size() == 3);
  for (size_t i = 0; i < 3; ++i) {
    const Json a = Json::parse(got[i], "out"), b = Json::parse(want[i], "expected");
    for (size_t k = 0; k < 3; ++k) {
      CHECK(a.as_array()[k].find("token")->as_int() == b.as_array()[k].find("token")->as_int());
      CHECK(a.as_array()[k].find("score")->as_number() ==
            Approx(b.as_array()[k].find("score")->as_number()).epsilon(1e-5));
    }
  }
  CHECK_THROWS_WITH(run({"--model", dir, "--mask", prompts[0], "--batch-size", "0"}, "", out),
                    Catch::Contains("'--batch-size' must be between 1 and 4096, got 0"));

  // More prompts than one printed chunk holds (4,096 at --top-k 1): the answers in the input's order
  // across the chunks, the table's blocks one blank line apart.
  std::string many, expected_many;
  for (size_t i = 0; i < 4100; ++i) many += prompts[i % 3] + "\n";
  for (const std::string& prompt : prompts)
    expected_many += bert::fill_mask_json(bert::fill_mask(checkpoint.model, checkpoint.tokenizer, prompt, 1)).dump() + "\n";
  const std::vector<std::string> single = lines_of(expected_many);
  REQUIRE(run({"--model", dir, "--input", "-", "--json", "--top-k", "1", "--batch-size", "1"}, many, out) == 0);
  const std::vector<std::string> answers = lines_of(out);
  REQUIRE(answers.size() == 4100);
  for (size_t i = 0; i < answers.size(); ++i) {
    INFO("prompt " << i + 1);
    REQUIRE(answers[i] == single[i % 3]);
  }
  REQUIRE(run({"--model", dir, "--input", "-", "--top-k", "1"}, many, out) == 0);
  size_t blocks = 0, blank_lines = 0;
  std::istringstream table(out);
  for (std::string line; std::getline(table, line);) {
    if (line.starts_with("> ")) ++blocks;
    if (line.empty()) ++blank_lines;
  }
  CHECK(blocks == 4100);
  CHECK(blank_lines == 4099);
  CHECK_THAT(out, Catch::EndsWith("\n") && !Catch::EndsWith("\n\n"));
}
