/*
 * Make this process's CPU report AVX2 and nothing above it, so that every library that picks its kernels
 * from the cpuid instruction (PyTorch's cpuinfo, oneDNN, MKL, onnxruntime's MLAS) runs its AVX2 kernels.
 *
 *     gcc -O2 -shared -fPIC -o /tmp/cpuid_avx2.so bench/cpuid_avx2.c
 *     LD_PRELOAD=/tmp/cpuid_avx2.so python benchmark.py --deploy
 *
 * Why: ATEN_CPU_CAPABILITY and ONEDNN_MAX_CPU_ISA cap PyTorch's and oneDNN's kernels only; onnxruntime
 * has no such switch (MLAS reads cpuid once, when it loads) and MKL ignores oneDNN's. This library uses
 * Linux's cpuid faulting (arch_prctl ARCH_SET_CPUID, x86-64, a processor or hypervisor that offers it:
 * the `cpuid_fault` flag of /proc/cpuinfo): every cpuid instruction then traps, and the handler below
 * answers it with the real values minus the AVX-512, AVX-VNNI, AMX and AVX512-BF16 bits. Only the
 * choice of kernels changes: the processor still runs them at its own clock and with its own caches.
 * It is a benchmarking aid, never loaded by the project's code; a program that installs its own
 * SIGSEGV handler after it (Python's faulthandler, e.g. under pytest) breaks the emulation.
 */
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <cpuid.h>
#include <signal.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

/* leaf 7, sub-leaf 0: EBX avx512 f/dq/ifma/pf/er/cd/bw/vl; ECX vbmi/vbmi2/vnni/bitalg/vpopcntdq;
   EDX 4vnniw/4fmaps/vp2intersect/amx-bf16/avx512-fp16/amx-tile/amx-int8 */
#define HIDE_7_0_EBX ((1u << 16) | (1u << 17) | (1u << 21) | (1u << 26) | (1u << 27) | (1u << 28) | (1u << 30) | (1u << 31))
#define HIDE_7_0_ECX ((1u << 1) | (1u << 6) | (1u << 11) | (1u << 12) | (1u << 14))
#define HIDE_7_0_EDX ((1u << 2) | (1u << 3) | (1u << 8) | (1u << 22) | (1u << 23) | (1u << 24) | (1u << 25))
/* leaf 7, sub-leaf 1: EAX avx-vnni/avx512-bf16/amx-fp16; EDX avx-vnni-int8 */
#define HIDE_7_1_EAX ((1u << 4) | (1u << 5) | (1u << 21))
#define HIDE_7_1_EDX (1u << 4)

static long cpuid_faulting(int off) { return syscall(SYS_arch_prctl, ARCH_SET_CPUID, off ? 0 : 1); }

static void answer_cpuid(int sig, siginfo_t *info, void *context) {
    (void)info;
    greg_t *reg = ((ucontext_t *)context)->uc_mcontext.gregs;
    const unsigned char *ip = (const unsigned char *)reg[REG_RIP];
    if (ip[0] != 0x0f || ip[1] != 0xa2) { /* a real fault: let it kill the process as it would have */
        signal(sig, SIG_DFL);
        return;
    }
    unsigned leaf = (unsigned)reg[REG_RAX], sub = (unsigned)reg[REG_RCX], a, b, c, d;
    cpuid_faulting(0); /* per thread: let this thread run the real instruction once */
    __cpuid_count(leaf, sub, a, b, c, d);
    cpuid_faulting(1);
    if (leaf == 7 && sub == 0) {
        b &= ~HIDE_7_0_EBX;
        c &= ~HIDE_7_0_ECX;
        d &= ~HIDE_7_0_EDX;
    } else if (leaf == 7 && sub == 1) {
        a &= ~HIDE_7_1_EAX;
        d &= ~HIDE_7_1_EDX;
    }
    reg[REG_RAX] = a;
    reg[REG_RBX] = b;
    reg[REG_RCX] = c;
    reg[REG_RDX] = d;
    reg[REG_RIP] += 2; /* past the two-byte cpuid instruction */
}

__attribute__((constructor)) static void start(void) {
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_sigaction = answer_cpuid;
    action.sa_flags = SA_SIGINFO;
    sigaction(SIGSEGV, &action, NULL);
    if (cpuid_faulting(1) != 0) {
        static const char message[] = "cpuid_avx2.so: this CPU or kernel offers no cpuid faulting; nothing is hidden\n";
        (void)!write(2, message, sizeof message - 1);
    }
}
