/* The measuring process of a fork episode on the host kernel (gpusim.jobs.host.episodes; spec 11.6).
 *
 * episode_writer PAGES THP CHILD
 *   maps PAGES anonymous pages at a 2 MiB boundary (MADV_HUGEPAGE when THP is 1, else MADV_NOHUGEPAGE), writes one
 *   byte to each, and prints {"pid", "start_page", "pages"}. Then, one line at a time on stdin:
 *   "go SCHEDULE LATENCIES": reads the schedule (int64 n, int64 b; n write times in ns; n page offsets; b write counts
 *     at which to sample), forks (the child stays alive: CHILD "idle" blocks, "read" reads one byte of every page
 *     over and over, as a snapshot writer does), prints {"child"} and waits for "start"; then the parent writes one
 *     byte to each scheduled page at its time (spinning until then), timing each write with CLOCK_MONOTONIC; at each
 *     sample count it prints {"sample", "writes"} and waits for a line (the caller reads /proc meanwhile; the wait is
 *     left out of the schedule's clock); at the end it writes the latencies (uint32 ns) to LATENCIES, stops and reaps
 *     the child, and prints {"done", "late_ns"} (how far behind its schedule it fell at most).
 *   "warm PAGES": touches and frees PAGES pages first (free memory backed by the host again; see warm_free_memory).
 *   "quit": exits.
 * Written in C so that a write's timing holds the write and two reads of the clock, not an interpreter. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096L
#define HUGE (2L << 20)

static char *held; /* the pages warm_free_memory keeps until the episode ends */
static size_t held_bytes;

static int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000L + t.tv_nsec;
}

static int read_line(char *buf, size_t n) {
    if (!fgets(buf, (int)n, stdin)) return 0;
    buf[strcspn(buf, "\n")] = 0;
    return 1;
}

static void die(const char *what) {
    fprintf(stderr, "episode_writer: %s\n", what);
    exit(1);
}

static int64_t *read_schedule(const char *path, int64_t *n, int64_t *b) {
    FILE *f = fopen(path, "rb");
    if (!f) die("cannot open the schedule");
    if (fread(n, 8, 1, f) != 1 || fread(b, 8, 1, f) != 1) die("short schedule");
    int64_t total = 2 * *n + *b;
    int64_t *data = malloc((size_t)(total > 0 ? total : 1) * 8);
    if (!data || (int64_t)fread(data, 8, (size_t)total, f) != total) die("short schedule");
    fclose(f);
    return data;
}

static void child_life(volatile char *region, long pages, volatile int *stop, int reads) {
    if (!reads) {
        while (!*stop) usleep(1000);
        _exit(0);
    }
    long sum = 0;
    while (!*stop)
        for (long p = 0; p < pages && !*stop; p++) sum += region[p * PAGE];
    _exit((int)(sum & 1));
}

static void run(volatile char *region, long pages, const char *schedule, const char *latencies, int reads) {
    int64_t n, b;
    int64_t *data = read_schedule(schedule, &n, &b);
    int64_t *t = data, *off = data + n, *bounds = data + 2 * n;
    for (int64_t j = 0; j < n; j++)
        if (off[j] < 0 || off[j] >= pages) die("a scheduled page lies outside the region");
    uint32_t *lat = malloc((size_t)(n > 0 ? n : 1) * 4);
    volatile int *stop = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (!lat || stop == MAP_FAILED) die("out of memory");
    *stop = 0;
    fflush(stdout);
    pid_t child = fork();
    if (child < 0) die("fork failed");
    if (child == 0) child_life(region, pages, stop, reads);
    char line[4096];
    printf("{\"child\": %d}\n", (int)child);
    fflush(stdout);
    if (!read_line(line, sizeof line)) die("no start");
    int64_t k = 0, late = 0, t0 = now_ns();
    for (int64_t j = 0; j < n; j++) {
        int64_t due = t0 + t[j], a;
        while ((a = now_ns()) < due) {
        }
        if (a - due > late) late = a - due;
        region[off[j] * PAGE + (j & 511) * 8] = (char)j;
        lat[j] = (uint32_t)(now_ns() - a);
        while (k < b && bounds[k] == j + 1) {
            int64_t p0 = now_ns();
            printf("{\"sample\": %ld, \"writes\": %ld}\n", (long)k, (long)(j + 1));
            fflush(stdout);
            if (!read_line(line, sizeof line)) die("no answer to a sample");
            t0 += now_ns() - p0;
            k++;
        }
    }
    FILE *f = fopen(latencies, "wb");
    if (!f || (int64_t)fwrite(lat, 4, (size_t)n, f) != n) die("cannot write the latencies");
    fclose(f);
    *stop = 1;
    waitpid(child, NULL, 0);
    if (held) munmap(held, held_bytes);
    held = NULL;
    printf("{\"done\": %ld, \"late_ns\": %ld}\n", (long)n, (long)late);
    fflush(stdout);
    free(lat);
    free(data);
}

/* Free memory the hypervisor backs, for PAGES pages of copies: touch 2 x PAGES pages and free every other one,
 * keeping the others until the episode ends. This VM returns free memory to its host in blocks of 2 MiB and more
 * (free page reporting), and a copy fault into a page the host must fault in again took 10 us instead of 2: a state
 * of the hypervisor, not of the kernel's COW. Single free pages never merge into such blocks, so they stay backed,
 * and the allocator hands out single pages first. Prints {"warmed"}. */
static void warm_free_memory(long pages) {
    if (pages > 0) {
        held_bytes = (size_t)(2 * pages) * PAGE;
        held = mmap(NULL, held_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (held == MAP_FAILED) die("mmap failed");
        madvise(held, held_bytes, MADV_NOHUGEPAGE);
        for (long p = 0; p < 2 * pages; p++) held[p * PAGE] = 1;
        for (long p = 0; p < 2 * pages; p += 2) madvise(held + p * PAGE, PAGE, MADV_DONTNEED);
    }
    printf("{\"warmed\": %ld}\n", pages);
    fflush(stdout);
}

int main(int argc, char **argv) {
    if (argc != 4) die("usage: episode_writer PAGES THP(0|1) idle|read");
    long pages = atol(argv[1]);
    int thp = atoi(argv[2]), reads = strcmp(argv[3], "read") == 0;
    if (pages <= 0) die("PAGES must be positive");
    size_t size = (size_t)pages * PAGE;
    char *raw = mmap(NULL, size + HUGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) die("mmap failed");
    char *region = (char *)(((uintptr_t)raw + HUGE - 1) & ~(uintptr_t)(HUGE - 1));
    if (region > raw) munmap(raw, (size_t)(region - raw));
    munmap(region + size, (size_t)(raw + HUGE - region));
    madvise(region, size, thp ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
    for (long p = 0; p < pages; p++) region[p * PAGE] = 1;
    printf("{\"pid\": %d, \"start_page\": %lu, \"pages\": %ld}\n", (int)getpid(), (unsigned long)region / PAGE, pages);
    fflush(stdout);
    char line[8192], schedule[4096], latencies[4096];
    while (read_line(line, sizeof line)) {
        long warm;
        if (sscanf(line, "go %4095s %4095s", schedule, latencies) == 2)
            run(region, pages, schedule, latencies, reads);
        else if (sscanf(line, "warm %ld", &warm) == 1)
            warm_free_memory(warm);
        else if (strncmp(line, "quit", 4) == 0 || strncmp(line, "{\"quit\"", 7) == 0)
            break;
        else
            die("unknown command");
    }
    return 0;
}
