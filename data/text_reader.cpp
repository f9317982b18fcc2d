#include "data/text_reader.h"

#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <filesystem>

#include "common/error.h"
#include "common/file.h"
#include "common/utf8.h"

namespace bert {

namespace fs = std::filesystem;

namespace {

// A line longer than this is not text (a binary file, or a dump without newlines); failing beats
// growing the buffer until the machine runs out of memory.
constexpr size_t kMaxLineBytes = size_t{256} << 20;
constexpr size_t kInitialBuffer = size_t{1} << 20;

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

bool is_corpus_file_name(std::string_view name) { return ends_with(name, ".txt") || ends_with(name, ".gz"); }

std::vector<std::string> expand_inputs(const std::vector<std::string>& inputs) {
  std::vector<std::string> files;
  for (const std::string& input : inputs) {
    std::error_code ec;
    const fs::file_status st = fs::status(input, ec);
    if (ec || !fs::exists(st)) throw Error(input + ": input not found");
    if (!fs::is_directory(st)) {
      files.push_back(input);
      continue;
    }
    std::vector<std::string> found;
    fs::recursive_directory_iterator it(input, fs::directory_options::none, ec);
    if (ec) throw Error(input + ": cannot read directory: " + ec.message());
    for (; it != fs::recursive_directory_iterator(); it.increment(ec)) {
      if (ec) throw Error(input + ": cannot read directory: " + ec.message());
      const std::string name = it->path().filename().string();
      if (!name.empty() && name[0] == '.') {  // .git, editor swap files, ...
        if (it->is_directory(ec)) it.disable_recursion_pending();
        continue;
      }
      if (it->is_regular_file(ec) && is_corpus_file_name(name)) found.push_back(it->path().string());
    }
    if (ec) throw Error(input + ": cannot read directory: " + ec.message());
    if (found.empty()) throw Error(input + ": directory has no .txt or .gz files (searched recursively)");
    std::sort(found.begin(), found.end());
    files.insert(files.end(), found.begin(), found.end());
  }
  return files;
}

size_t utf8_valid_prefix(std::string_view str) { return utf8_first_invalid(str).value_or(str.size()); }

LineReader::LineReader(const std::string& path) : path_(path) {
  if (is_directory(path)) throw Error(path + ": is a directory, expected a text file");
  errno = 0;
  gz_ = gzopen(path.c_str(), "rb");
  if (!gz_) throw Error(path + ": cannot open: " + (errno ? std::strerror(errno) : "out of memory"));
  gzbuffer(gz_, 1 << 18);
  // gzdirect() peeks at the magic bytes: 0 means gzip. Asked before any read, as zlib requires.
  compressed_ = gzdirect(gz_) == 0;
  if (!compressed_ && ends_with(path, ".gz")) {
    gzclose_r(gz_);
    gz_ = nullptr;
    throw Error(path + ": not a gzip file (no gzip header); rename it if it is plain text");
  }
  buf_.resize(kInitialBuffer);
}

LineReader::~LineReader() {
  if (gz_) gzclose_r(gz_);
}

void LineReader::fail(const std::string& what) const { throw Error(located(path_, line_number_ + 1, what)); }

bool LineReader::fill() {
  if (eof_) return false;
  if (begin_ > 0) {
    std::memmove(buf_.data(), buf_.data() + begin_, end_ - begin_);
    end_ -= begin_;
    begin_ = 0;
  }
  if (end_ == buf_.size()) {
    if (buf_.size() >= kMaxLineBytes)
      fail("line longer than " + std::to_string(kMaxLineBytes >> 20) + " MiB; is this really a text file?");
    buf_.resize(std::min(buf_.size() * 2, kMaxLineBytes));
  }
  const unsigned want = static_cast<unsigned>(std::min<size_t>(buf_.size() - end_, INT_MAX));
  const int got = gzread(gz_, buf_.data() + end_, want);
  if (got < 0) {
    int errnum = 0;
    const char* msg = gzerror(gz_, &errnum);
    if (errnum == Z_ERRNO) fail(std::string("read error: ") + std::strerror(errno));
    fail(std::string(compressed_ ? "corrupt gzip data: " : "read error: ") + (msg ? msg : "unknown zlib error"));
  }
  if (got == 0) {
    // zlib reports a truncated member only through the error state, with a successful 0-byte read.
    int errnum = 0;
    const char* msg = gzerror(gz_, &errnum);
    if (errnum == Z_BUF_ERROR) fail("truncated gzip data (" + std::string(msg ? msg : "unexpected end of file") + ")");
    if (errnum != Z_OK) fail(std::string("corrupt gzip data: ") + (msg ? msg : "unknown zlib error"));
    eof_ = true;
    return false;
  }
  end_ += static_cast<size_t>(got);
  if (!sniffed_) {
    sniffed_ = true;
    const std::string problem =
        utf8_text_problem(std::string_view(buf_.data(), end_), static_cast<unsigned>(got) < want);
    if (!problem.empty()) throw Error(path_ + ": " + problem);
  }
  return true;
}

bool LineReader::next(std::string_view& line) {
  // The line ends at the first '\n' or '\r'. A '\r' ends it alone (a classic Mac file, as Python's
  // universal newlines read it), but "\r\n", and "\r\r\n" from a CRLF file converted twice, end a line
  // once. (At most two bytes are looked at past a CR, so a long run of CRs reads in linear time.)
  size_t scanned = 0;  // bytes of the pending line already searched
  size_t len = 0, ending = 0;
  bool found = false;
  while (true) {
    const size_t avail = end_ - begin_;
    if (avail > scanned) {
      const char* base = buf_.data() + begin_;
      // The first '\n' or '\r': searched in windows that double from 256 bytes, so that a line costs
      // about its own length even when the other kind of ending is far off (a CR-only file has no LF).
      const char *nl = nullptr, *cr = nullptr;
      for (size_t from = scanned, window = 256; from < avail && !nl && !cr; from += window, window *= 2) {
        const size_t to = std::min(avail, from + window);
        nl = static_cast<const char*>(std::memchr(base + from, '\n', to - from));
        const size_t stop = nl ? static_cast<size_t>(nl - base) : to;
        cr = static_cast<const char*>(std::memchr(base + from, '\r', stop - from));
      }
      if (!cr && nl) {
        len = static_cast<size_t>(nl - base), ending = 1, found = true;
        break;
      }
      if (cr) {
        const size_t at = static_cast<size_t>(cr - base);
        const bool lf1 = at + 1 < avail && base[at + 1] == '\n';
        const bool crlf2 = at + 2 < avail && base[at + 1] == '\r' && base[at + 2] == '\n';
        // Decided once the two bytes after the CR are here, or a byte that is neither CR nor LF.
        if (lf1 || crlf2 || at + 2 < avail || (at + 1 < avail && base[at + 1] != '\r')) {
          len = at, ending = lf1 ? 2 : crlf2 ? 3 : 1, found = true;
          break;
        }
        scanned = at;   // the bytes after the CR are still to be read: read on, and look again from it
        if (!fill()) {  // the end of the file: "\r" or "\r\r" ends the last line(s)
          len = at, ending = 1, found = true;
          break;
        }
        continue;
      }
    }
    scanned = avail;
    if (!fill()) break;
  }
  if (!found) {
    if (begin_ == end_) return false;  // end of file
    len = end_ - begin_;
  }
  bytes_read_ += len + ending;
  std::string_view raw(buf_.data() + begin_, len);
  begin_ += len + ending;
  ++line_number_;
  invalid_in_line_ = 0;
  if (utf8_valid_prefix(raw) != raw.size()) {
    invalid_in_line_ = utf8_repair(raw, fixed_);
    ++invalid_lines_;
    raw = fixed_;
  }
  line = raw;
  return true;
}

}  // namespace bert
