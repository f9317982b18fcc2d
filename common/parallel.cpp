#include "common/parallel.h"

#include <exception>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "common/error.h"

namespace bert {

void run_parallel(size_t threads, const std::function<void(size_t)>& work) {
  if (threads <= 1) {
    work(0);
    return;
  }
  std::vector<std::exception_ptr> failures(threads);
  const auto guarded = [&](size_t t) {
    try {
      work(t);
    } catch (...) {
      failures[t] = std::current_exception();
    }
  };
  std::vector<std::thread> pool;
  pool.reserve(threads - 1);
  try {
    for (size_t t = 1; t < threads; ++t) pool.emplace_back(guarded, t);
  } catch (const std::system_error& e) {
    failures[0] = std::make_exception_ptr(Error("cannot start thread " + std::to_string(pool.size() + 2) + " of " +
                                                std::to_string(threads) + " (" + e.what() + "); use fewer threads"));
  }
  if (!failures[0]) guarded(0);
  for (std::thread& thread : pool) thread.join();
  for (const std::exception_ptr& failure : failures)
    if (failure) std::rethrow_exception(failure);
}

}  // namespace bert
