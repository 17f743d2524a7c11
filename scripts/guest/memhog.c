// SPDX-License-Identifier: GPL-2.0
/*
 * memhog: a guest test workload that holds anonymous memory with content it
 * can check.
 *
 *   memhog -m MIB [-n NODE] [-H|-N] [-s SEED] [-R READY] [-G GO] [-t SECS]
 *
 *   -m MIB    allocate MIB MiB of anonymous memory and write every page
 *   -n NODE   bind the memory to NUMA node NODE (set_mempolicy MPOL_BIND)
 *   -H        ask for transparent huge pages (madvise MADV_HUGEPAGE)
 *   -N        refuse transparent huge pages (madvise MADV_NOHUGEPAGE)
 *   -s SEED   content seed (default 1): every 8-byte word is a hash of the
 *             seed and its offset, so it can be checked without a copy
 *   -R READY  create the file READY once the memory is written
 *   -G GO     then wait until the file GO exists
 *   -t SECS   then keep reading and rewriting the memory for SECS seconds
 *
 * Before it exits it checks every word and prints "memhog: ok MIB MiB" or
 * "memhog: CORRUPT at offset X" (exit code 3). Other errors exit with 1.
 *
 * Built statically by scripts/mkinitramfs.sh (busybox has no such tool, and
 * the guest has no libnuma: the NUMA policy is set with a raw system call).
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define MPOL_BIND 2

static uint64_t word(uint64_t seed, uint64_t off)
{
	uint64_t x = seed * 0x9e3779b97f4a7c15ull ^ off;

	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ull;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

static void fill(uint64_t *mem, size_t words, uint64_t seed)
{
	for (size_t i = 0; i < words; i++)
		mem[i] = word(seed, i);
}

static long check(const uint64_t *mem, size_t words, uint64_t seed)
{
	for (size_t i = 0; i < words; i++)
		if (mem[i] != word(seed, i))
			return (long)i;
	return -1;
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	long mib = 0, node = -1, secs = 0;
	uint64_t seed = 1;
	const char *ready = NULL, *go = NULL;
	int thp = 0, nothp = 0, c;

	while ((c = getopt(argc, argv, "m:n:HNs:R:G:t:")) != -1) {
		switch (c) {
		case 'm': mib = atol(optarg); break;
		case 'n': node = atol(optarg); break;
		case 'H': thp = 1; break;
		case 'N': nothp = 1; break;
		case 's': seed = strtoull(optarg, NULL, 0); break;
		case 'R': ready = optarg; break;
		case 'G': go = optarg; break;
		case 't': secs = atol(optarg); break;
		default:
			fprintf(stderr, "usage: %s -m MIB [-n NODE] [-H|-N] [-s SEED] [-R READY] [-G GO] [-t SECS]\n",
				argv[0]);
			return 1;
		}
	}
	if (mib <= 0) {
		fprintf(stderr, "memhog: -m MIB is required\n");
		return 1;
	}
	if (node >= 0) {
		unsigned long mask[16] = { 0 };

		if (node >= (long)(sizeof(mask) * 8)) {
			fprintf(stderr, "memhog: node %ld out of range\n", node);
			return 1;
		}
		mask[node / (8 * sizeof(long))] = 1ul << (node % (8 * sizeof(long)));
		if (syscall(SYS_set_mempolicy, MPOL_BIND, mask, sizeof(mask) * 8)) {
			perror("memhog: set_mempolicy");
			return 1;
		}
	}
	size_t len = (size_t)mib << 20, words = len / sizeof(uint64_t);
	uint64_t *mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (mem == MAP_FAILED) {
		perror("memhog: mmap");
		return 1;
	}
	if (thp && madvise(mem, len, MADV_HUGEPAGE)) {
		perror("memhog: madvise(MADV_HUGEPAGE)");
		return 1;
	}
	if (nothp && madvise(mem, len, MADV_NOHUGEPAGE)) {
		perror("memhog: madvise(MADV_NOHUGEPAGE)");
		return 1;
	}
	fill(mem, words, seed);
	if (ready) {
		int fd = open(ready, O_CREAT | O_WRONLY, 0644);

		if (fd < 0) {
			perror(ready);
			return 1;
		}
		close(fd);
	}
	while (go && access(go, F_OK))
		usleep(100000);
	for (double end = now() + secs; now() < end; seed++) {
		long bad = check(mem, words, seed);

		if (bad >= 0) {
			printf("memhog: CORRUPT at offset %ld\n", bad * 8);
			return 3;
		}
		fill(mem, words, seed + 1);
	}
	long bad = check(mem, words, seed);

	if (bad >= 0) {
		printf("memhog: CORRUPT at offset %ld\n", bad * 8);
		return 3;
	}
	printf("memhog: ok %ld MiB\n", mib);
	return 0;
}
