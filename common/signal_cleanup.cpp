#include "common/signal_cleanup.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstring>
#include <mutex>

namespace bert {

namespace {

constexpr int kSlots = 64;
constexpr size_t kPathBytes = 4096;

struct Slot {
  std::atomic<bool> used{false};
  bool empty_directory = false;  // SignalCleanup::kEmptyDirectory
  char path[kPathBytes];
};
Slot g_slots[kSlots];
std::mutex g_slots_mutex;          // between registering threads; the handler takes no lock
std::atomic<bool> g_dying{false};  // set by the handler: no slot changes under it from then on
static_assert(std::atomic<bool>::is_always_lock_free, "the signal handler reads the slots");

// A directory's entries, read with the raw system call: opendir/readdir allocate, which a signal
// handler must not.
struct LinuxDirent64 {
  uint64_t d_ino;
  int64_t d_off;
  unsigned short d_reclen;
  unsigned char d_type;
  char d_name[1];
};

// Removes a file, or a directory and the files in it; async-signal-safe (open, getdents64, unlinkat,
// rmdir, close).
void remove_path(const char* path) {
  if (::unlink(path) == 0 || (errno != EISDIR && errno != EPERM)) return;
  const int fd = ::open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  alignas(8) char buffer[4096];
  for (int pass = 0; pass < 4; ++pass) {  // entries removed while reading may hide others from the read
    bool removed = false;
    ::lseek(fd, 0, SEEK_SET);
    for (;;) {
      const long got = ::syscall(SYS_getdents64, fd, buffer, sizeof buffer);
      if (got <= 0) break;
      for (long at = 0; at < got;) {
        const auto* entry = reinterpret_cast<const LinuxDirent64*>(buffer + at);
        at += entry->d_reclen;
        const char* name = entry->d_name;
        if (std::strcmp(name, ".") == 0 || std::strcmp(name, "..") == 0) continue;
        removed = ::unlinkat(fd, name, 0) == 0 || removed;
      }
    }
    if (!removed) break;
  }
  ::close(fd);
  ::rmdir(path);
}

void on_signal(int signal_number) {
  g_dying.store(true);
  for (Slot& slot : g_slots)
    if (slot.used.load(std::memory_order_acquire) && !slot.empty_directory) remove_path(slot.path);
  for (Slot& slot : g_slots)
    if (slot.used.load(std::memory_order_acquire) && slot.empty_directory) ::rmdir(slot.path);
  struct sigaction fallback {};
  fallback.sa_handler = SIG_DFL;
  sigemptyset(&fallback.sa_mask);
  ::sigaction(signal_number, &fallback, nullptr);
  ::raise(signal_number);  // blocked until this handler returns; then it ends the process
}

}  // namespace

void install_signal_cleanup() {
  for (const int signal_number : {SIGINT, SIGTERM, SIGHUP}) {
    struct sigaction old {};
    if (::sigaction(signal_number, nullptr, &old) != 0 || old.sa_handler == SIG_IGN) continue;
    struct sigaction action {};
    action.sa_handler = on_signal;
    sigemptyset(&action.sa_mask);
    // Blocked in the thread that runs the cleanup (another thread may start one too: the removals of
    // two cleanups do not conflict).
    for (const int other : {SIGINT, SIGTERM, SIGHUP}) sigaddset(&action.sa_mask, other);
    ::sigaction(signal_number, &action, nullptr);
  }
}

SignalCleanup::SignalCleanup(const std::string& path, Kind kind) {
  if (path.empty() || path.size() >= kPathBytes || path.find('\0') != std::string::npos) return;
  const std::lock_guard<std::mutex> lock(g_slots_mutex);
  if (g_dying.load()) return;
  for (int i = 0; i < kSlots; ++i) {
    if (g_slots[i].used.load(std::memory_order_relaxed)) continue;
    std::memcpy(g_slots[i].path, path.c_str(), path.size() + 1);
    g_slots[i].empty_directory = kind == kEmptyDirectory;
    g_slots[i].used.store(true, std::memory_order_release);
    slot_ = i;
    return;
  }
}

SignalCleanup& SignalCleanup::operator=(SignalCleanup&& other) noexcept {
  if (this != &other) {
    release();
    slot_ = other.slot_;
    other.slot_ = -1;
  }
  return *this;
}

void SignalCleanup::release() {
  if (slot_ < 0) return;
  const std::lock_guard<std::mutex> lock(g_slots_mutex);
  if (!g_dying.load()) g_slots[slot_].used.store(false, std::memory_order_release);
  slot_ = -1;
}

}  // namespace bert
