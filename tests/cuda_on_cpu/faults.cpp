// The CUDA execution layer's reports of memory faults a GPU would raise:
// misaligned accesses and illegal addresses, with the kernel, block and thread.
// See README.md beside this file.
#include "runtime.h"

#include <c10/util/Exception.h>
#include <cxxabi.h>
#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <sstream>

namespace cuda_on_cpu {

// Note [Alignment]
// ----------------
// A GPU faults ("misaligned address") on a load or store whose address is not
// a multiple of its size: a 16-byte vector load from a row whose stride is not
// a multiple of 16 bytes, say. x86 mostly does not care, so the layer checks:
// the cache-hinted loads (__ldg and kin, cuda_on_cpu.h) at the caller's line,
// and every other typed load and store of the kernels' files through g++'s
// -fsanitize=alignment (build.py), whose calls land in the handlers below
// (UBSan's own runtime reports them in the asan variant). Either way the
// report names the kernel, block, thread and source line.
[[noreturn]] void misaligned(const void* p, size_t alignment, const char* type, const char* file, int line) {
  int status = 0;
  char* demangled = abi::__cxa_demangle(type, nullptr, nullptr, &status);
  const std::string name = status == 0 && demangled != nullptr ? demangled : type;
  std::free(demangled);
  std::ostringstream s;
  s << "makes a misaligned access: " << p << " is not a multiple of " << alignment << " bytes for " << name << " ("
    << file << ":" << line << ")";
  fail_in_thread(s.str());
}

// Note [Illegal addresses]
// ------------------------
// A kernel that reads or writes unmapped memory stops with "an illegal memory
// access was encountered" on a GPU; here it would kill the process, and the
// test would report a crash with no kernel named. While a grid runs, SIGSEGV
// and SIGBUS are the layer's: the faulting thread leaves its fiber for good
// with a report (as every other failure in a kernel does), and the launch
// raises it. Faults outside a kernel go to the handler that was there before.
// Under the sanitizers their own reports stand.
namespace {

struct sigaction previous[2];

void on_fault(int signal, siginfo_t* info, void* context) {
  if (!in_kernel()) {
    sigaction(signal, &previous[signal == SIGBUS], nullptr);
    raise(signal);
    return;
  }
  sigset_t unblock;  // the handler never returns: let the next fault in
  sigemptyset(&unblock);
  sigaddset(&unblock, signal);
  pthread_sigmask(SIG_UNBLOCK, &unblock, nullptr);
  std::ostringstream s;
  s << "makes an illegal memory access at " << info->si_addr << " ("
    << (signal == SIGSEGV ? "SIGSEGV" : "SIGBUS") << "; a GPU: \"an illegal memory access was encountered\")";
  (void)context;
  fail_in_thread(s.str());
}

}  // namespace

FaultHandlers::FaultHandlers() {
#if !defined(__SANITIZE_ADDRESS__) && !defined(CUDA_ON_CPU_TSAN)
  struct sigaction action {};
  action.sa_sigaction = &on_fault;
  action.sa_flags = SA_SIGINFO;
  sigemptyset(&action.sa_mask);
  installed = sigaction(SIGSEGV, &action, &previous[0]) == 0 && sigaction(SIGBUS, &action, &previous[1]) == 0;
#endif
}

FaultHandlers::~FaultHandlers() {
  if (!installed) return;
  sigaction(SIGSEGV, &previous[0], nullptr);
  sigaction(SIGBUS, &previous[1], nullptr);
}

}  // namespace cuda_on_cpu

#if !defined(__SANITIZE_ADDRESS__)
// The -fsanitize=alignment handlers (UBSan's ABI, as g++ calls them).
namespace {
struct UbsanLocation {
  const char* file;
  uint32_t line, column;
};
struct UbsanType {
  uint16_t kind, info;
  char name[1];
};
struct UbsanTypeMismatch {
  UbsanLocation location;
  const UbsanType* type;
  unsigned char log_alignment, check_kind;
};
}  // namespace

extern "C" void __ubsan_handle_type_mismatch_v1(void* data, uintptr_t pointer) {
  const auto* d = static_cast<const UbsanTypeMismatch*>(data);
  const size_t alignment = size_t(1) << d->log_alignment;
  if (pointer % alignment == 0) return;  // not a misalignment (-fsanitize=null is not on)
  if (!cuda_on_cpu::in_kernel()) {  // a launcher's host code: no exception may leave this call
    std::fprintf(stderr, "cuda_on_cpu: misaligned access in host code: %p is not a multiple of %zu bytes for %s "
                 "(%s:%u)\n", reinterpret_cast<void*>(pointer), alignment, d->type->name, d->location.file,
                 d->location.line);
    std::abort();
  }
  std::ostringstream s;
  s << "makes a misaligned access: " << reinterpret_cast<void*>(pointer) << " is not a multiple of " << alignment
    << " bytes for " << d->type->name << " (" << d->location.file << ":" << d->location.line << ")";
  cuda_on_cpu::fail_in_thread(s.str());
}
extern "C" void __ubsan_handle_type_mismatch_v1_abort(void* data, uintptr_t pointer) {
  __ubsan_handle_type_mismatch_v1(data, pointer);
}
#endif

