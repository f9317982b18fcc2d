// Fork-join over a fixed number of threads.
#pragma once

#include <cstddef>
#include <functional>

namespace bert {

// Runs work(0), ..., work(threads - 1): work(0) on the calling thread, the others each on a thread of
// their own, and returns when all are done. An exception thrown by any of them (or a failure to start
// a thread, as a bert::Error) is rethrown once every started thread has been joined: never
// std::terminate. The lowest index's exception wins.
void run_parallel(size_t threads, const std::function<void(size_t)>& work);

}  // namespace bert
