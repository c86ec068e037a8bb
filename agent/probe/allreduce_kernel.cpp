// The probe's compiled kernel for c10d::allreduce_ at AutogradCPU (built by agent/probe/compiled.py; the Python
// kernel in agent/probe/dispatch.py is the fallback and the reference for what it records).
//
// Per all-reduce, on the calling thread and without the GIL: a clock read, the redispatch to the keys after autograd,
// the bytes, an entry appended to a bounded queue, and a callback on the Work's future that stores the completion
// time from the backend's thread (an atomic store: no lock, no GIL). Python takes the entries with the GIL held:
// `number` gives them their sequence numbers (in issue order, into the recorder's own per-group counters, so they
// interleave correctly with the wrappers' collectives), `collect` hands over the running ones (the hang signal) and
// the completed ones.

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>
#include <torch/extension.h>
#include <torch/library.h>

#include <atomic>
#include <cstdint>
#include <ctime>
#include <deque>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <unordered_map>
#include <vector>

namespace {

namespace py = pybind11;

using Result = std::tuple<std::vector<at::Tensor>, c10::intrusive_ptr<c10d::Work>>;
using Signature = Result(at::TensorList, const c10::intrusive_ptr<c10d::ProcessGroup>&,
                         const c10::intrusive_ptr<c10d::ReduceOp>&, const std::optional<at::Tensor>&, bool, int64_t);

constexpr double kRunning = -1.0;  // completed_at of an all-reduce still running; 0.0: over, time unknown
// A running all-reduce younger than this (s) waits for the next `collect`, and so do all after it: a synchronous one
// has returned before gloo's thread ran its future's callback, and reported running now, completed a flush later, it
// would reach the agent after thousands of later ones in a flood (refused there as older than the rank's window).
// Well under the sender's pending_report_seconds (0.2), so a hang is reported as soon as before.
constexpr double kYoungSeconds = 0.05;

double unix_seconds() {
  timespec now{};
  clock_gettime(CLOCK_REALTIME, &now);
  return static_cast<double>(now.tv_sec) + static_cast<double>(now.tv_nsec) * 1e-9;
}

struct Entry {
  std::string group;  // the c10d group name (ProcessGroup::getGroupName)
  double issued_at;   // Unix s, before the redispatch
  uint64_t bytes;
  bool failed;  // the redispatch raised: it takes its number, nothing is recorded
  std::atomic<double> completed_at{kRunning};  // Unix s, stored by the backend's thread
  int64_t seq = -1;  // -1: not numbered yet
  PyObject* name = nullptr;  // the record's group name (borrowed from Kernel::names_), set when numbered
  bool handed = false;  // `collect` has reported it running
};

// What the kernel appends to and Python takes from. The kernel runs without the GIL (DDP's autograd thread), so a
// mutex guards the deque; completion times are atomics on the entries, so the backend's threads take no lock.
struct Queue {
  std::mutex mutex;
  std::deque<std::shared_ptr<Entry>> entries;  // issue order: numbered ones first, then the unnumbered
  size_t unnumbered = 0;  // entries at the back not numbered yet
  size_t capacity = 8192;
  // all-reduces past capacity, per c10d group name: numbered (after every queued entry), never recorded
  std::unordered_map<std::string, uint64_t> overflow;
};

std::atomic<Queue*> g_queue{nullptr};  // the registered kernel's queue (one per process)

void append(Queue& queue, const std::shared_ptr<Entry>& entry) {
  std::lock_guard<std::mutex> lock(queue.mutex);
  if (!queue.overflow.empty() || queue.entries.size() >= queue.capacity) {
    ++queue.overflow[entry->group];  // once over, all go there until numbered: the order stays
    return;
  }
  queue.entries.push_back(entry);
  ++queue.unnumbered;
}

// Queue the all-reduce and put the completion callback on its Work's future; never raises (the training goes on
// unrecorded). Bytes as the Python kernel counts them: a sparse tensor by its dense size.
void record(Queue& queue, const c10::intrusive_ptr<c10d::ProcessGroup>& group, double issued_at,
            at::TensorList tensors, bool failed, c10d::Work* work) noexcept {
  try {
    auto entry = std::make_shared<Entry>();
    entry->group = group->getGroupName();
    entry->issued_at = issued_at;
    entry->failed = failed;
    uint64_t bytes = 0;
    for (const auto& tensor : tensors) {
      bytes += static_cast<uint64_t>(tensor.numel()) * tensor.element_size();
    }
    entry->bytes = failed ? 0 : bytes;
    if (work != nullptr) {
      try {
        work->getFuture()->addCallback(
            [entry](c10::ivalue::Future&) { entry->completed_at.store(unix_seconds(), std::memory_order_release); });
      } catch (...) {  // a Work without a future: the issue time is all we know
        entry->completed_at.store(0.0, std::memory_order_release);
      }
    }
    append(queue, entry);
  } catch (...) {
  }
}

Result allreduce_(c10::DispatchKeySet keys, at::TensorList tensors,
                  const c10::intrusive_ptr<c10d::ProcessGroup>& process_group,
                  const c10::intrusive_ptr<c10d::ReduceOp>& reduce_op, const std::optional<at::Tensor>& sparse_indices,
                  bool async_op, int64_t timeout) {
  static auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("c10d::allreduce_", "").typed<Signature>();
  const double issued_at = unix_seconds();
  Queue* queue = g_queue.load(std::memory_order_acquire);
  Result result;
  try {
    result = op.redispatch(keys & c10::after_autograd_keyset, tensors, process_group, reduce_op, sparse_indices,
                           async_op, timeout);
  } catch (...) {
    if (queue != nullptr) {  // it takes its number all the same: the ranks' numbers stay aligned
      record(*queue, process_group, issued_at, tensors, /*failed=*/true, nullptr);
    }
    throw;
  }
  if (queue != nullptr) {
    record(*queue, process_group, issued_at, tensors, /*failed=*/false, std::get<1>(result).get());
  }
  return result;
}

// The Python object: owns the queue and, while registered, the torch::Library holding the kernel.
class Kernel {
 public:
  // The queue is never freed: a kernel call on another thread may still hold it when the kernel is unregistered
  // (one small struct per process).
  Kernel(size_t capacity, py::object op) : queue_(new Queue()), op_(std::move(op)) { queue_->capacity = capacity; }

  ~Kernel() {
    unregister();
    std::lock_guard<std::mutex> lock(queue_->mutex);
    clear_locked(default_name_);
  }

  // Register the kernel for c10d::allreduce_ at AutogradCPU; raises if the op has another schema or a kernel there.
  void register_kernel(const std::string& expected_schema) {
    if (library_) {
      return;
    }
    auto handle = c10::Dispatcher::singleton().findSchemaOrThrow("c10d::allreduce_", "");
    std::ostringstream schema;
    schema << handle.schema();
    TORCH_CHECK(schema.str() == expected_schema, "c10d::allreduce_ has another schema here: ", schema.str());
    TORCH_CHECK(!handle.hasKernelForDispatchKey(c10::DispatchKey::AutogradCPU),
                "c10d::allreduce_ has an AutogradCPU kernel already; not replacing it");
    Queue* expected = nullptr;
    TORCH_CHECK(g_queue.compare_exchange_strong(expected, queue_), "another compiled kernel is registered");
    try {
      library_ = std::make_unique<torch::Library>(torch::Library::IMPL, "c10d", c10::DispatchKey::AutogradCPU,
                                                  __FILE__, __LINE__);
      library_->impl("allreduce_", TORCH_FN(allreduce_));
    } catch (...) {
      library_.reset();
      g_queue.store(nullptr);
      throw;
    }
  }

  void unregister() {
    if (library_) {
      library_.reset();
      Queue* mine = queue_;
      g_queue.compare_exchange_strong(mine, nullptr);
    }
  }

  bool registered() const { return static_cast<bool>(library_); }

  // Number the queued all-reduces in issue order: next_seq is the recorder's {group name: next seq}. Returns how
  // many were numbered without being queued (the queue was full): the recorder counts them dropped.
  // Under the lock, with the GIL: nothing here makes an object the garbage collector tracks (str and int only), so
  // no other Python thread runs meanwhile and the numbers are taken in one piece.
  uint64_t number(py::dict next_seq) {
    std::lock_guard<std::mutex> lock(queue_->mutex);
    auto& entries = queue_->entries;
    for (size_t index = entries.size() - queue_->unnumbered; index < entries.size(); ++index) {
      Entry& entry = *entries[index];
      entry.name = name_of(entry.group);
      if (entry.name != nullptr) {
        entry.seq = take_seq(next_seq, entry.name, 1);
      }
    }
    queue_->unnumbered = 0;
    uint64_t overflowed = 0;
    for (const auto& [group, count] : queue_->overflow) {
      PyObject* name = name_of(group);
      if (name != nullptr) {
        take_seq(next_seq, name, count);
        overflowed += count;
      }
    }
    queue_->overflow.clear();
    return overflowed;
  }

  // The numbered all-reduces Python has not seen running yet (tokens: group, seq, op, bytes, issued_at) and those
  // completed since the last call ((token, completed_at): 0.0 when the time is unknown), in issue order up to the
  // first one running for less than kYoungSeconds. Completed ones leave the queue; failed ones and those of groups
  // this rank is not a member of leave it unreported.
  py::tuple collect() {
    std::vector<std::pair<std::shared_ptr<Entry>, double>> report;  // completed_at, kRunning for running ones
    {
      std::lock_guard<std::mutex> lock(queue_->mutex);
      auto& entries = queue_->entries;
      const size_t numbered = entries.size() - queue_->unnumbered;
      const double now = unix_seconds();
      std::deque<std::shared_ptr<Entry>> kept;
      size_t index = 0;
      for (; index < numbered; ++index) {
        auto& entry = entries[index];
        if (entry->failed || entry->name == nullptr) {
          continue;
        }
        const double completed_at = entry->completed_at.load(std::memory_order_acquire);
        if (completed_at != kRunning) {
          report.emplace_back(std::move(entry), completed_at);
          continue;
        }
        if (now - entry->issued_at < kYoungSeconds) {
          break;  // it and all after it wait for the next call
        }
        if (!entry->handed) {
          entry->handed = true;
          report.emplace_back(entry, kRunning);
        }
        kept.push_back(std::move(entry));
      }
      for (; index < entries.size(); ++index) {
        kept.push_back(std::move(entries[index]));
      }
      entries.swap(kept);
    }
    // the Python objects after the lock: making tuples may run the garbage collector, and so other threads
    py::list running;
    py::list completed;
    for (const auto& [entry, completed_at] : report) {
      if (completed_at == kRunning) {
        running.append(token(*entry));
      } else {
        completed.append(py::make_tuple(token(*entry), completed_at));
      }
    }
    return py::make_tuple(running, completed);
  }

  // A new default process group: forget every all-reduce of the old one; `default_name` is the c10d name the
  // records call "default".
  void reset(const std::string& default_name) {
    std::lock_guard<std::mutex> lock(queue_->mutex);
    clear_locked(default_name);
  }

  // In a forked child: the parent's threads are gone, and one of them may have held the mutex.
  void after_fork() {
    new (&queue_->mutex) std::mutex();
    clear_locked(default_name_);
  }

  size_t queued() {
    std::lock_guard<std::mutex> lock(queue_->mutex);
    return queue_->entries.size();
  }

 private:
  void clear_locked(const std::string& default_name) {
    queue_->entries.clear();
    queue_->unnumbered = 0;
    queue_->overflow.clear();
    for (auto& [group, name] : names_) {  // kept: a `collect` on another thread may still be reading them
      retired_names_.push_back(std::move(name));
    }
    names_.clear();
    default_name_ = default_name;
  }

  // The record's name for a c10d group name (agent/probe/patch.py GroupNames.name): "default" for the default group,
  // nullptr (not recorded) for an empty name. Owned by names_; GIL held.
  PyObject* name_of(const std::string& group) {
    if (group.empty()) {
      return nullptr;
    }
    auto found = names_.find(group);
    if (found == names_.end()) {
      found = names_.emplace(group, py::str(group == default_name_ ? std::string("default") : group)).first;
    }
    return found->second.ptr();
  }

  static int64_t take_seq(py::dict& next_seq, PyObject* name, uint64_t count) {
    PyObject* current = PyDict_GetItemWithError(next_seq.ptr(), name);  // borrowed
    int64_t seq = 0;
    if (current != nullptr) {
      seq = PyLong_AsLongLong(current);
    } else if (PyErr_Occurred()) {
      throw py::error_already_set();
    }
    py::int_ next(seq + static_cast<int64_t>(count));
    if (PyDict_SetItem(next_seq.ptr(), name, next.ptr()) != 0) {
      throw py::error_already_set();
    }
    return seq;
  }

  py::tuple token(const Entry& entry) const {
    return py::make_tuple(py::reinterpret_borrow<py::object>(entry.name), entry.seq, op_, entry.bytes,
                          entry.issued_at);
  }

  Queue* queue_;
  std::unique_ptr<torch::Library> library_;
  py::object op_;  // what the tokens carry as their op (agent.probe.wire.Op.all_reduce)
  std::string default_name_ = "0";
  std::unordered_map<std::string, py::object> names_;  // c10d group name -> the records' name; entries borrow them
  std::vector<py::object> retired_names_;  // names of before the last reset (a few per new default group)
};

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.doc() = "Lockstep probe: compiled dispatcher kernel for c10d::allreduce_ (agent/probe/compiled.py)";
  py::class_<Kernel>(module, "Kernel")
      .def(py::init<size_t, py::object>(), py::arg("capacity"), py::arg("op"))
      .def("register", &Kernel::register_kernel, py::arg("expected_schema"))
      .def("unregister", &Kernel::unregister)
      .def_property_readonly("registered", &Kernel::registered)
      .def("number", &Kernel::number, py::arg("next_seq"))
      .def("collect", &Kernel::collect)
      .def("reset", &Kernel::reset, py::arg("default_name"))
      .def("after_fork", &Kernel::after_fork)
      .def("queued", &Kernel::queued);
}
