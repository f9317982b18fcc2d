// The single-process communicator, the launcher's environment, and the choice between them and MPI
// (engine/communicator.h).
#include "engine/communicator.h"

#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "common/error.h"

namespace bert {

#if defined(BERT_HAVE_MPI)
std::unique_ptr<Communicator> make_mpi_communicator();  // engine/communicator_mpi.cpp
#endif

namespace {

class SingleCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string description() const override { return "single process"; }
  void allreduce_sum(std::span<float>) override {}
  void allreduce_sum(std::span<double>) override {}
  void broadcast(std::span<std::byte>, int) override {}
  std::vector<uint64_t> allgather(uint64_t value) override { return {value}; }
  [[noreturn]] void abort(int exit_code) override { std::_Exit(exit_code); }
};

// A launcher variable holding a number >= minimum (a process count: 1, a rank: 0).
std::optional<int> launcher_number(const char* name, long minimum, const char* what) {
  const char* value = std::getenv(name);
  if (value == nullptr || *value == '\0') return std::nullopt;
  char* end = nullptr;
  const long n = std::strtol(value, &end, 10);
  if (*end != '\0' || n < minimum || n > 1 << 24)
    throw Error(std::string("the MPI launcher's ") + name + "='" + value + "' is not " + what);
  return static_cast<int>(n);
}

}  // namespace

Watchdog::Watchdog(std::chrono::milliseconds limit, Expired expired)
    : limit_(limit), expired_(std::move(expired)), thread_([this] { run(); }) {}

Watchdog::~Watchdog() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_one();
  thread_.join();
}

Watchdog::Guard Watchdog::watch(const char* name) {
  bool wake = false;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    active_ = true;
    ++operation_;
    name_ = name;
    started_ = std::chrono::steady_clock::now();
    wake = idle_;
  }
  if (wake) wake_.notify_one();
  return Guard(this);
}

void Watchdog::end() {
  std::lock_guard<std::mutex> lock(mutex_);
  active_ = false;  // no wake: the thread finds out at the deadline it sleeps towards
}

void Watchdog::run() {
  std::unique_lock<std::mutex> lock(mutex_);
  while (!stopping_) {
    if (!active_ || reported_ == operation_) {
      idle_ = true;
      const uint64_t seen = operation_;
      wake_.wait(lock, [&] { return stopping_ || (active_ && operation_ != seen); });  // a new operation
      idle_ = false;
      continue;
    }
    const auto deadline = started_ + limit_;
    if (std::chrono::steady_clock::now() < deadline) {
      wake_.wait_until(lock, deadline, [&] { return stopping_; });
      continue;  // the same operation, a later one, or none: look again
    }
    reported_ = operation_;
    const char* name = name_;
    lock.unlock();
    expired_(name);
    lock.lock();
  }
}

bool Communicator::any(bool flag) {
  double value = flag ? 1.0 : 0.0;
  allreduce_sum(std::span<double>(&value, 1));
  return value > 0;
}

bool Communicator::all_equal(uint64_t value) {
  // Rank 0's value to everyone; each rank says whether it differs.
  uint64_t root = value;
  broadcast(std::as_writable_bytes(std::span<uint64_t>(&root, 1)), 0);
  return !any(root != value);
}

std::string Communicator::broadcast_string(const std::string& text, int root) {
  uint64_t length = text.size();
  broadcast(std::as_writable_bytes(std::span<uint64_t>(&length, 1)), root);
  std::string out = rank() == root ? text : std::string(length, '\0');
  if (length > 0) broadcast(std::as_writable_bytes(std::span<char>(out.data(), out.size())), root);
  return out;
}

std::optional<int> launcher_world_size(std::string* variable) {
  std::vector<const char*> names = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE"};
  if (std::getenv("PMIX_RANK") != nullptr) {  // srun --mpi=pmix: Slurm's own count of this step's tasks
    names.push_back("SLURM_STEP_NUM_TASKS");
    names.push_back("SLURM_NTASKS");
  }
  for (const char* name : names) {
    if (const std::optional<int> n = launcher_number(name, 1, "a process count")) {
      if (variable != nullptr) *variable = name;
      return n;
    }
  }
  return std::nullopt;
}

std::optional<int> launcher_world_rank() {
  for (const char* name : {"OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"})
    if (const std::optional<int> rank = launcher_number(name, 0, "a rank")) return rank;
  return std::nullopt;
}

RankPlacement place_ranks(Communicator& comm) {
  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  cpu_set_t cpus;
  CPU_ZERO(&cpus);
  if (::sched_getaffinity(0, sizeof cpus, &cpus) != 0) CPU_ZERO(&cpus);
  // Ranks with equal host keys share a machine; with equal CPU keys they compete for the same cores.
  const uint64_t host_key = std::hash<std::string>{}(host);
  const uint64_t cpu_key = std::hash<std::string>{}(std::string(host) + '\0' +
                                                    std::string(reinterpret_cast<const char*>(&cpus), sizeof cpus));
  const std::vector<uint64_t> hosts = comm.allgather(host_key);
  const std::vector<uint64_t> places = comm.allgather(cpu_key);
  RankPlacement placement;
  placement.cpu_sharers = static_cast<int>(std::count(places.begin(), places.end(), cpu_key));
  placement.host_rank = static_cast<int>(std::count(hosts.begin(), hosts.begin() + comm.rank(), host_key));
  placement.host_ranks = static_cast<int>(std::count(hosts.begin(), hosts.end(), host_key));
  return placement;
}

std::unique_ptr<Communicator> make_single_communicator() { return std::make_unique<SingleCommunicator>(); }

bool communicator_has_mpi() {
#if defined(BERT_HAVE_MPI)
  return true;
#else
  return false;
#endif
}

std::unique_ptr<Communicator> make_communicator() {
  std::string variable;
  const std::optional<int> world = launcher_world_size(&variable);
  if (!world || *world == 1) return make_single_communicator();
#if defined(BERT_HAVE_MPI)
  return make_mpi_communicator();
#else
  throw Error("started as one of " + std::to_string(*world) + " processes (" + variable + "=" + std::to_string(*world) +
              "), but this build has no MPI (CMake found none): install libopenmpi-dev and rebuild, or run one "
              "process");
#endif
}

}  // namespace bert
