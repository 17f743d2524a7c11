// SPDX-License-Identifier: GPL-2.0
/*
 * workload: the guest's own work in `make bench BENCH_ARGS=--workload`, a
 * fixed mix with a throughput number, counted once a second.
 *
 *   workload -t SECS -f FILE [-m MIB]
 *
 * Three processes run for SECS seconds:
 *   mem   maps MIB (default 64) MiB of anonymous memory, writes every page
 *         and unmaps it again: one operation per MiB written;
 *   fork  forks, execs busybox's `true` and waits for it: one per child;
 *   read  reads FILE from its start to its end with 1 MiB read()s (from the
 *         page cache once it was read): one per MiB read.
 * The three start together. Each second it prints "t=S mem=N fork=N
 * read=N", the operations of that second; at the end "total mem=N fork=N
 * read=N elapsed=SECONDS" (the time measured, not the one asked). Exit
 * code 0, or 1 on an error (said on stderr): a process that ended before
 * the end (an OOM kill too: its SIGKILL is not the SIGTERM that ends them)
 * or a `true` that did not exit 0.
 *
 * Built statically by scripts/mkinitramfs.sh, like memhog and fragment.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MIB (1UL << 20)

enum { MEM, FORK, READ, KINDS };

/* counts[GO] is set once every process may start. */
#define GO KINDS

static const char *const names[KINDS] = { "mem", "fork", "read" };

static uint64_t *counts;

static void count(int kind)
{
	__atomic_fetch_add(&counts[kind], 1, __ATOMIC_RELAXED);
}

static void die(const char *what)
{
	fprintf(stderr, "workload: %s: %s\n", what, strerror(errno));
	exit(1);
}

static void mem_loop(unsigned long mib)
{
	long page = sysconf(_SC_PAGESIZE);

	for (;;) {
		char *p = mmap(NULL, mib * MIB, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

		if (p == MAP_FAILED)
			die("mmap");
		for (unsigned long m = 0; m < mib; m++) {
			for (unsigned long off = 0; off < MIB; off += page)
				p[m * MIB + off] = (char)(m + off);
			count(MEM);
		}
		munmap(p, mib * MIB);
	}
}

static void fork_loop(void)
{
	for (;;) {
		pid_t pid = fork();

		if (pid < 0)
			die("fork");
		if (pid == 0) {
			execl("/bin/busybox", "true", (char *)NULL);
			_exit(127);
		}
		int status;

		if (waitpid(pid, &status, 0) < 0)
			die("waitpid");
		if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
			fprintf(stderr, "workload: true ended with status %#x\n", status);
			exit(1);
		}
		count(FORK);
	}
}

static void read_loop(const char *file)
{
	char *buf = malloc(MIB);

	if (!buf)
		die("malloc");
	for (;;) {
		int fd = open(file, O_RDONLY);
		ssize_t n;

		if (fd < 0)
			die(file);
		while ((n = read(fd, buf, MIB)) > 0)
			if (n == (ssize_t)MIB)
				count(READ);
		if (n < 0)
			die("read");
		close(fd);
	}
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	unsigned long secs = 0, mib = 64;
	const char *file = NULL;
	uint64_t last[KINDS] = { 0 }, total[KINDS];
	pid_t kids[KINDS];
	double start, elapsed;
	int opt;

	while ((opt = getopt(argc, argv, "t:f:m:")) != -1) {
		switch (opt) {
		case 't':
			secs = strtoul(optarg, NULL, 0);
			break;
		case 'f':
			file = optarg;
			break;
		case 'm':
			mib = strtoul(optarg, NULL, 0);
			break;
		default:
			goto usage;
		}
	}
	if (!secs || !file || !mib)
		goto usage;
	counts = mmap(NULL, (KINDS + 1) * sizeof(*counts), PROT_READ | PROT_WRITE,
		      MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (counts == MAP_FAILED)
		die("mmap");
	setvbuf(stdout, NULL, _IOLBF, 0);
	for (int k = 0; k < KINDS; k++) {
		kids[k] = fork();
		if (kids[k] < 0)
			die("fork");
		if (kids[k] == 0) {
			/* Never outlive the parent (into a later measurement). */
			prctl(PR_SET_PDEATHSIG, SIGKILL);
			if (getppid() == 1)
				_exit(1);
			while (!__atomic_load_n(&counts[GO], __ATOMIC_ACQUIRE))
				usleep(1000);
			if (k == MEM)
				mem_loop(mib);
			else if (k == FORK)
				fork_loop();
			else
				read_loop(file);
		}
	}
	start = now();
	__atomic_store_n(&counts[GO], 1, __ATOMIC_RELEASE);
	for (unsigned long s = 1; s <= secs; s++) {
		double wait = start + s - now();

		if (wait > 0) {
			struct timespec ts = { (time_t)wait,
					       (long)((wait - (time_t)wait) * 1e9) };

			while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
				;
		}
		printf("t=%lu", s);
		for (int k = 0; k < KINDS; k++) {
			uint64_t c = __atomic_load_n(&counts[k], __ATOMIC_RELAXED);

			printf(" %s=%llu", names[k], (unsigned long long)(c - last[k]));
			last[k] = c;
		}
		printf("\n");
		for (int k = 0; k < KINDS; k++) {
			int status;

			if (waitpid(kids[k], &status, WNOHANG) == kids[k]) {
				fprintf(stderr, "workload: the %s process ended early (status %#x)\n",
					names[k], status);
				for (int j = 0; j < KINDS; j++)
					kill(kids[j], SIGKILL);
				return 1;
			}
		}
	}
	elapsed = now() - start;
	for (int k = 0; k < KINDS; k++) {
		kill(kids[k], SIGTERM);
		total[k] = last[k];
	}
	for (int k = 0; k < KINDS; k++) {
		int status;

		if (waitpid(kids[k], &status, 0) < 0)
			die("waitpid");
		/* A child that ended otherwise than by our SIGTERM failed. */
		if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGTERM) {
			fprintf(stderr, "workload: the %s process failed\n", names[k]);
			return 1;
		}
	}
	printf("total mem=%llu fork=%llu read=%llu elapsed=%.3f\n",
	       (unsigned long long)total[MEM], (unsigned long long)total[FORK],
	       (unsigned long long)total[READ], elapsed);
	return 0;
usage:
	fprintf(stderr, "usage: workload -t SECS -f FILE [-m MIB]\n");
	return 1;
}
