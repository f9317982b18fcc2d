#include "common/file.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <utility>

#include "common/error.h"

namespace bert {

static std::string os_error() { return std::strerror(errno); }

std::string read_file(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) throw Error(path + ": is a directory, expected a file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot open: " + os_error());
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw Error(path + ": read error: " + os_error());
  return std::move(ss).str();
}

namespace {

// Writes all of `content` to fd; false (errno set) on failure.
bool write_all(int fd, std::string_view content) {
  size_t done = 0;
  while (done < content.size()) {
    const ssize_t w = ::write(fd, content.data() + done, content.size() - done);
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    done += static_cast<size_t>(w);
  }
  return true;
}

}  // namespace

namespace {

// The descriptor a /dev/stdout-like path names: /dev/stdout, /dev/stderr, /dev/fd/N, /proc/self/fd/N.
std::optional<int> descriptor_path(const std::string& path) {
  if (path == "/dev/stdout") return 1;
  if (path == "/dev/stderr") return 2;
  for (const char* prefix : {"/dev/fd/", "/proc/self/fd/"}) {
    const std::string_view p(prefix);
    if (path.compare(0, p.size(), p) != 0 || path.size() == p.size() || path.size() > p.size() + 6) continue;
    const std::string number = path.substr(p.size());
    if (std::all_of(number.begin(), number.end(), [](char c) { return c >= '0' && c <= '9'; }))
      return std::stoi(number);
  }
  return std::nullopt;
}

}  // namespace

AtomicOutputFile::AtomicOutputFile(const std::string& path) : requested_(path), target_(path) {
  // An inherited descriptor (the shell's `> file` or `>> file` behind /dev/stdout) is written through a
  // copy of it, at its offset and with its append mode: opening the path anew would start at offset 0
  // of the file, and a rename would replace it.
  if (const std::optional<int> fd = descriptor_path(path)) {
    fd_ = ::fcntl(*fd, F_DUPFD_CLOEXEC, 0);
    if (fd_ < 0) throw Error(requested_ + ": cannot write: " + os_error());
    return;
  }
  struct stat link_st {};
  if (::lstat(target_.c_str(), &link_st) == 0 && S_ISLNK(link_st.st_mode)) {
    // A symlink: the file it points to is replaced, not the link.
    std::error_code ec;
    const std::filesystem::path resolved = std::filesystem::canonical(target_, ec);
    if (!ec) target_ = resolved.string();
  }
  struct stat st {};
  if (::stat(target_.c_str(), &st) == 0 && !S_ISREG(st.st_mode)) {
    if (S_ISDIR(st.st_mode)) throw Error(requested_ + ": is a directory, expected a file to write");
    // A device, FIFO or socket (/dev/stdout, /dev/null, a pipe): written in place, as a rename would
    // replace the special file itself with a regular one.
    fd_ = ::open(target_.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd_ < 0) throw Error(requested_ + ": cannot open for writing: " + os_error());
    return;
  }
  tmp_ = target_ + ".tmp." + std::to_string(::getpid());
  fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) throw Error(requested_ + ": cannot write: " + os_error() + via());
  tmp_cleanup_ = SignalCleanup(tmp_);
}

AtomicOutputFile::~AtomicOutputFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_ && !tmp_.empty()) ::unlink(tmp_.c_str());
  tmp_cleanup_.release();  // after: a signal in between removes what is gone already
}

std::string AtomicOutputFile::via() const { return tmp_.empty() ? std::string() : " (via " + tmp_ + ")"; }

void AtomicOutputFile::fail(const char* what) {
  const std::string reason = os_error();
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  throw Error(requested_ + ": " + what + ": " + reason + via());
}

void AtomicOutputFile::write(std::string_view content) {
  if (fd_ < 0) throw Error(requested_ + ": internal: written after commit or a failure");
  bytes_ += content.size();
  if (buffer_.size() + content.size() > kBufferBytes) flush();
  if (content.size() >= kBufferBytes) {
    if (!write_all(fd_, content)) fail("write failed");
  } else {
    buffer_.append(content);
  }
}

void AtomicOutputFile::flush() {
  if (!write_all(fd_, buffer_)) fail("write failed");
  buffer_.clear();
}

void AtomicOutputFile::commit() {
  if (fd_ < 0) throw Error(requested_ + ": internal: committed twice or after a failure");
  flush();
  if (tmp_.empty()) {  // in place
    const int closing = fd_;
    fd_ = -1;
    if (::close(closing) != 0) fail("close failed");
    committed_ = true;
    return;
  }
  if (::fsync(fd_) != 0) fail("fsync failed");
  const int closing = fd_;
  fd_ = -1;
  if (::close(closing) != 0) fail("close failed");
  if (::rename(tmp_.c_str(), target_.c_str()) != 0) fail("rename failed");
  committed_ = true;
  tmp_cleanup_.release();
  std::string dir = std::filesystem::path(target_).parent_path().string();
  if (dir.empty()) dir = ".";
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

void write_file_atomic(const std::string& path, std::string_view content) {
  AtomicOutputFile file(path);
  file.write(content);
  file.commit();
}

bool file_exists(const std::string& path) {
  std::error_code ec;
  return std::filesystem::exists(path, ec);
}

bool is_directory(const std::string& path) {
  std::error_code ec;
  return std::filesystem::is_directory(path, ec);
}

std::string without_trailing_slashes(std::string path) {
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  return path;
}

bool path_within(const std::string& path, const std::string& dir) {
  std::error_code ec;
  const std::string p = std::filesystem::weakly_canonical(path, ec).string();
  if (ec) return false;
  std::string d = std::filesystem::weakly_canonical(dir, ec).string();
  if (ec || d.empty()) return false;
  if (p == d) return true;
  if (d.back() != '/') d += '/';
  return p.size() > d.size() && p.compare(0, d.size(), d) == 0;
}

size_t file_size(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) throw Error(path + ": cannot stat: " + os_error());
  return static_cast<size_t>(st.st_size);
}

void make_directories(const std::string& path) {
  std::error_code ec;
  std::filesystem::create_directories(path, ec);
  if (ec) throw Error(path + ": cannot create directory: " + ec.message());
}

MappedFile::MappedFile(const std::string& path) : path_(path) {
  if (is_directory(path)) throw Error(path + ": is a directory, expected a file");
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(path + ": cannot open: " + os_error());
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const std::string reason = os_error();
    ::close(fd);
    throw Error(path + ": cannot stat: " + reason);
  }
  if (!S_ISREG(st.st_mode)) {  // a pipe ("--input <(zcat corpus.gz)"), a device: read whole
    try {
      read_stream(fd);
    } catch (...) {
      ::close(fd);
      throw;
    }
    ::close(fd);
    return;
  }
  size_ = static_cast<size_t>(st.st_size);
  if (size_ > 0) {
    data_ = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (data_ == MAP_FAILED) {
      const std::string reason = os_error();
      data_ = nullptr;
      ::close(fd);
      throw Error(path + ": cannot map: " + reason);
    }
    ::madvise(data_, size_, MADV_SEQUENTIAL);
  }
  ::close(fd);
}

void MappedFile::read_stream(int fd) {
  anonymous_ = true;
  size_t capacity = 0;
  const auto fail = [&](const std::string& what) {
    const std::string reason = os_error();
    if (data_) ::munmap(data_, capacity);  // no destructor runs for a constructor that throws
    data_ = nullptr;
    size_ = 0;
    throw Error(path_ + ": " + what + ": " + reason);
  };
  while (true) {
    if (size_ == capacity) {
      const size_t grown = std::max<size_t>(capacity * 2, size_t{1} << 20);
      void* p = capacity == 0 ? ::mmap(nullptr, grown, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
                              : ::mremap(data_, capacity, grown, MREMAP_MAYMOVE);
      if (p == MAP_FAILED) fail("cannot hold more than its first " + std::to_string(size_) + " bytes in memory");
      data_ = p;
      capacity = grown;
    }
    const ssize_t got = ::read(fd, static_cast<char*>(data_) + size_, capacity - size_);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) fail("read error");
    if (got == 0) break;
    size_ += static_cast<size_t>(got);
  }
  // The view is size_ bytes; the mapping keeps its capacity until the destructor (munmap of size_
  // would leave the tail mapped).
  mapped_bytes_ = capacity;
  if (size_ == 0) {
    ::munmap(data_, capacity);
    data_ = nullptr;
    mapped_bytes_ = 0;
  }
}

void MappedFile::release(size_t begin, size_t end) const {
  if (!data_ || end <= begin || anonymous_) return;  // anonymous memory would come back as zeros
  const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  const size_t first = (begin + page - 1) / page * page;  // only whole pages inside the range
  const size_t last = std::min(end, size_) / page * page;
  if (last > first) ::madvise(static_cast<char*>(data_) + first, last - first, MADV_DONTNEED);
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(data_, anonymous_ ? mapped_bytes_ : size_);
}

MappedFile::MappedFile(MappedFile&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      mapped_bytes_(std::exchange(other.mapped_bytes_, 0)),
      anonymous_(std::exchange(other.anonymous_, false)),
      path_(std::move(other.path_)) {}

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
  if (this != &other) {
    if (data_) ::munmap(data_, anonymous_ ? mapped_bytes_ : size_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    mapped_bytes_ = std::exchange(other.mapped_bytes_, 0);
    anonymous_ = std::exchange(other.anonymous_, false);
    path_ = std::move(other.path_);
  }
  return *this;
}

DirectoryLock::DirectoryLock(const std::string& dir, const std::string& file_name, const std::string& tool,
                             const std::string& role) {
  make_directories(dir);
  const std::string path = dir + "/" + file_name;
  for (int attempt = 0;; ++attempt) {
    fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd_ < 0) {
      if (errno != EROFS && errno != EACCES && errno != EPERM)
        throw Error(path + ": cannot open the " + role + "'s lock file: " + std::strerror(errno));
      unsupported_ = path + ": " + std::strerror(errno);
      return;
    }
    if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
      const int error = errno;
      if (error == ENOLCK || error == ENOSYS || error == EOPNOTSUPP || error == EINVAL) {
        unsupported_ = path + ": flock: " + std::strerror(error);
        ::close(fd_);
        fd_ = -1;
        return;
      }
      char holder[32] = {};
      const ssize_t got = ::pread(fd_, holder, sizeof holder - 1, 0);
      ::close(fd_);
      fd_ = -1;
      if (error != EWOULDBLOCK)
        throw Error(path + ": cannot lock the " + role + "'s lock file: " + std::strerror(error));
      std::string pid = got > 0 ? std::string(holder, static_cast<size_t>(got)) : std::string();
      while (!pid.empty() && (pid.back() == '\n' || pid.back() == ' ')) pid.pop_back();
      throw Error(dir + ": another " + tool + " is writing to this " + role + " (" +
                  (pid.empty() ? std::string("pid unknown") : "pid " + pid) + ", holding " + path +
                  "); wait for it to end, or choose another " + role);
    }
    // Locked; but the holder before may have removed the file between our open and our lock, and a
    // third process may hold a new one at the path: ours counts only if it is still the file there.
    struct stat held {
    }, named{};
    if (::fstat(fd_, &held) == 0 && ::stat(path.c_str(), &named) == 0 && held.st_dev == named.st_dev &&
        held.st_ino == named.st_ino)
      break;
    ::close(fd_);
    fd_ = -1;
    if (attempt == 100) throw Error(path + ": the " + role + "'s lock file keeps being replaced; cannot lock it");
  }
  path_ = path;
  on_signal_ = SignalCleanup(path_);
  const std::string pid = std::to_string(::getpid()) + "\n";
  if (::ftruncate(fd_, 0) == 0) {
    const ssize_t written = ::pwrite(fd_, pid.data(), pid.size(), 0);
    (void)written;  // the pid is a courtesy for the message above
  }
}

DirectoryLock::~DirectoryLock() {
  if (fd_ < 0) return;
  on_signal_.release();     // first: a signal after the close would remove the next holder's file
  ::unlink(path_.c_str());  // while still held: whoever locks the path next locks a new file
  ::close(fd_);             // releases the lock
}

}  // namespace bert
