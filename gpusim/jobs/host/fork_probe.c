/* gpusim's smallest measuring process (issue 32): a C process with almost nothing mapped, whose fork is nearly all
 * the kernel's fixed cost of a fork, or a layout and almost nothing else. It follows the protocol of
 * gpusim/jobs/host/real.py's serve(), in one JSON line a request:
 *
 *   argv: CPU (-1: not pinned), the bytes to read through before a fresh fork (0: none), and optionally a layout
 *     of private anonymous memory as real.py's RealLayout describes one (a subset: one fill and one THP advice
 *     for all VMAs, first touch in address order, no pins): VMAS PAGES_PER_VMA STRIDE THP GAPS;
 *   first line out: {"pid": P, "cpu": C, "refused": {}, "thp_pages": T, "frame_breaks": null, "frames": null,
 *     "region": the layout's first address} (its frames are read from outside: the parent is root);
 *   {"visits": K}: K visits, each re-dirtying the layout's touched pages and its own private writable pages (a byte
 *     copied onto itself), checking that a second pass takes no fault, reading the eviction buffer, then timing a
 *     fork ("fresh") and the fork right after it ("repeated"); the answer has lists, as serve()'s;
 *   {"restore": true}: a visit without the forks (the state a capture then describes); {"quit": true}: exit.
 *
 * Each child exits at once; the parent reads its clock when fork() returns and then reaps the child. */
#define _GNU_SOURCE
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_PAGES 65536
#define MAX_VISITS 64

static uintptr_t own[MAX_PAGES];
static long n_own;
static uintptr_t region_lo, region_hi; /* the layout's VMAs, [lo, hi) */
static long n_vmas, vma_pages, stride, thp, gaps;
static volatile unsigned char *evict_buf;
static size_t evict_bytes;

static long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000L + t.tv_nsec;
}

static long minflt(void) {
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return u.ru_minflt;
}

/* the present pages of the private writable mappings, but the eviction buffer's (shared) */
static void list_own(void) {
    FILE *maps = fopen("/proc/self/maps", "r");
    FILE *pm = fopen("/proc/self/pagemap", "rb");
    char line[512], perms[8];
    unsigned long lo, hi;
    n_own = 0;
    if (!maps || !pm) {
        if (maps) fclose(maps);
        if (pm) fclose(pm);
        return;
    }
    while (fgets(line, sizeof line, maps)) {
        if (sscanf(line, "%lx-%lx %7s", &lo, &hi, perms) != 3 || strcmp(perms, "rw-p") != 0) continue;
        if (lo >= region_lo && hi <= region_hi) continue; /* the layout's pages: written by their own pass */
        for (unsigned long a = lo; a < hi && n_own < MAX_PAGES; a += 4096) {
            uint64_t e = 0;
            if (fseek(pm, (long)(a / 4096 * 8), SEEK_SET) != 0 || fread(&e, 8, 1, pm) != 1) break;
            if (e >> 63) own[n_own++] = a;
        }
    }
    fclose(maps);
    fclose(pm);
}

static long redirty(void) {
    long f0 = minflt();
    for (long i = 0; i < n_own; i++) {
        volatile unsigned char *p = (volatile unsigned char *)own[i];
        *p = *p;
    }
    return minflt() - f0;
}

static long vma_span(void) { return gaps ? (vma_pages + 511) / 512 * 512 : vma_pages; }

/* a byte written to every stride-th page of the region (pages of the VMAs one after the other) */
static long write_layout(unsigned char value) {
    long f0 = minflt(), b = 0;
    for (long v = 0; v < n_vmas; v++) {
        unsigned char *a = (unsigned char *)(region_lo + (uintptr_t)(v * vma_span()) * 4096);
        for (long i = 0; i < vma_pages; i++, b++)
            if (stride > 0 && b % stride == 0) a[i * 4096] = value;
    }
    return minflt() - f0;
}

static int set_up_layout(void) {
    long span = n_vmas * vma_span() + 1024;
    char *res = mmap(NULL, span * 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (res == MAP_FAILED) return -1;
    region_lo = ((uintptr_t)res + (2 << 20) - 1) & ~(uintptr_t)((2 << 20) - 1);
    munmap(res, span * 4096);
    for (long v = 0; v < n_vmas; v++) {
        void *a = (void *)(region_lo + (uintptr_t)(v * vma_span()) * 4096);
        if (mmap(a, vma_pages * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) != a)
            return -1;
    }
    for (long v = 0; v < n_vmas; v++) /* after mapping them all: packed neighbours are told apart here */
        if (gaps || v % 2 == 0)
            madvise((void *)(region_lo + (uintptr_t)(v * vma_span()) * 4096), vma_pages * 4096,
                    thp ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
    region_hi = region_lo + (uintptr_t)(n_vmas * vma_span()) * 4096;
    write_layout(1);
    return 0;
}

static long thp_pages(void) {
    FILE *f = fopen("/proc/self/smaps_rollup", "r");
    char line[256];
    long kb = 0;
    if (!f) return 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "AnonHugePages: %ld kB", &kb) == 1) break;
    fclose(f);
    return kb / 4;
}

static void evict(void) {
    unsigned long sum = 0;
    for (size_t i = 0; i < evict_bytes; i += 64) sum += evict_buf[i];
    if (sum == 1) fputs("", stderr); /* keeps the reads */
}

static long fork_ns(void) {
    long t0 = now_ns();
    pid_t pid = fork();
    if (pid == 0) _exit(0);
    long t1 = now_ns();
    waitpid(pid, NULL, 0);
    return t1 - t0;
}

struct visit {
    long redirty_faults, check_faults, own_pages, own_faults, own_check_faults, fresh, repeated;
};

static struct visit visit(int forks) {
    struct visit v = {0};
    list_own();
    v.own_pages = n_own;
    v.redirty_faults = write_layout(1);
    v.own_faults = redirty();
    v.check_faults = write_layout(1);
    v.own_check_faults = redirty();
    if (forks) {
        evict();
        v.fresh = fork_ns();
        v.repeated = fork_ns();
    }
    return v;
}

#define FIELD(name, expr)                                                 \
    do {                                                                  \
        printf("%s\"%s\": [", first ? "" : ", ", name);                   \
        for (int i = 0; i < k; i++) printf("%s%ld", i ? ", " : "", expr); \
        printf("]");                                                      \
        first = 0;                                                        \
    } while (0)

int main(int argc, char **argv) {
    int cpu = argc > 1 ? atoi(argv[1]) : -1;
    evict_bytes = argc > 2 ? strtoul(argv[2], NULL, 10) : 0;
    if (argc > 7) {
        n_vmas = atol(argv[3]), vma_pages = atol(argv[4]), stride = atol(argv[5]), thp = atol(argv[6]);
        gaps = atol(argv[7]);
    }
    if (cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(cpu, &set);
        if (sched_setaffinity(0, sizeof set, &set) != 0) cpu = -1;
    }
    if (evict_bytes) {
        void *b = mmap(NULL, evict_bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (b == MAP_FAILED) return 2;
        memset(b, 0, evict_bytes);
        evict_buf = b;
    }
    if (n_vmas > 0 && vma_pages > 0 && set_up_layout() != 0) return 3;
    printf("{\"pid\": %d, \"cpu\": %s, \"refused\": {}, \"thp_pages\": %ld, \"frame_breaks\": null, "
           "\"frames\": null, \"region\": %lu}\n",
           (int)getpid(), cpu >= 0 ? argv[1] : "null", thp ? thp_pages() : 0L, (unsigned long)region_lo);
    fflush(stdout);
    char line[256];
    static struct visit vs[MAX_VISITS];
    while (fgets(line, sizeof line, stdin)) {
        if (strstr(line, "\"quit\"")) break;
        int k = 1, forks = 1, first = 1;
        char *p = strstr(line, "\"visits\"");
        if (strstr(line, "\"restore\"")) forks = 0;
        else if (p && sscanf(p + 8, " : %d", &k) == 1 && (k < 1 || k > MAX_VISITS)) k = 1;
        for (int i = 0; i < k; i++) vs[i] = visit(forks);
        if (!forks) {
            printf("{\"pinned_faults\": 0, \"redirty_faults\": %ld, \"check_faults\": %ld, \"own_pages\": %ld, "
                   "\"own_faults\": %ld, \"own_check_faults\": %ld}\n",
                   vs[0].redirty_faults, vs[0].check_faults, vs[0].own_pages, vs[0].own_faults,
                   vs[0].own_check_faults);
        } else {
            printf("{");
            FIELD("fresh_ns", vs[i].fresh);
            FIELD("repeated_ns", vs[i].repeated);
            FIELD("pinned_faults", 0L);
            FIELD("redirty_faults", vs[i].redirty_faults);
            FIELD("check_faults", vs[i].check_faults);
            FIELD("own_pages", vs[i].own_pages);
            FIELD("own_faults", vs[i].own_faults);
            FIELD("own_check_faults", vs[i].own_check_faults);
            printf("}\n");
        }
        fflush(stdout);
    }
    return 0;
}
