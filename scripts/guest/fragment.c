// SPDX-License-Identifier: GPL-2.0
/*
 * fragment [-N] [-F FREE_MIB] [-n NODE] MIB READY GO [STRIDE]: a guest test
 * workload that shapes free memory for compaction tests and the benchmark.
 *
 * Allocates MIB MiB of anonymous memory and writes every page; with STRIDE
 * > 1, gives every STRIDE-th page back (MADV_DONTNEED). Creates the file
 * READY, waits for the file GO to appear, then exits, freeing the rest.
 *
 *   -N           madvise(MADV_NOHUGEPAGE) the buffer before writing it, so
 *                it is made of 4 KiB pages whatever the guest's THP mode:
 *                a hole punched in a transparent huge page only splits it
 *                and frees nothing, and khugepaged would fill the holes in
 *   -F FREE_MIB  give back the first FREE_MIB MiB of the buffer entirely
 *                (before punching the holes in the rest): large free
 *                blocks beside the single free pages the holes leave
 *   -n NODE      take the memory from NUMA node NODE only (set_mempolicy
 *                MPOL_BIND, as memhog -n)
 *
 * A balloon inflated between READY and GO takes what the buffer left free:
 * the lowest memory (the page allocator hands out high addresses first) and
 * the holes. Once the buffer is gone, ballooned pages sit below and between
 * free memory, and compaction must migrate them to build large free blocks.
 *
 * With -N and -F, one instance per node (`make bench --guest-state
 * fragmented`), free memory looks like a guest's after a long run: single
 * free pages all over the held memory, which order-0 allocations get first,
 * and whole free 2 MiB blocks.
 *
 * Built statically by scripts/mkinitramfs.sh; busybox has no such tool.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MPOL_BIND 2

static void usage(const char *prog)
{
	fprintf(stderr, "usage: %s [-N] [-F FREE_MIB] [-n NODE] MIB READY GO [STRIDE]\n", prog);
}

int main(int argc, char **argv)
{
	const char *prog = argv[0];
	int nohuge = 0, c;
	long free_mib = 0, node = -1;

	while ((c = getopt(argc, argv, "NF:n:")) != -1) {
		switch (c) {
		case 'N': nohuge = 1; break;
		case 'F': free_mib = atol(optarg); break;
		case 'n': node = atol(optarg); break;
		default:
			usage(prog);
			return 2;
		}
	}
	/* Positional arguments as argv[1..]. */
	argc -= optind - 1;
	argv += optind - 1;
	if (argc != 4 && argc != 5) {
		usage(prog);
		return 2;
	}
	if (node >= 0) {
		unsigned long mask[16] = { 0 };

		if (node >= (long)(sizeof(mask) * 8)) {
			fprintf(stderr, "fragment: node %ld out of range\n", node);
			return 1;
		}
		mask[node / (8 * sizeof(long))] = 1ul << (node % (8 * sizeof(long)));
		if (syscall(SYS_set_mempolicy, MPOL_BIND, mask, sizeof(mask) * 8)) {
			perror("fragment: set_mempolicy");
			return 1;
		}
	}
	long stride = argc == 5 ? atol(argv[4]) : 0;
	long page = sysconf(_SC_PAGESIZE);
	size_t len = (size_t)atol(argv[1]) << 20;
	size_t free_len = (size_t)free_mib << 20;
	char *mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (mem == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	if (nohuge && madvise(mem, len, MADV_NOHUGEPAGE)) {
		perror("madvise(MADV_NOHUGEPAGE)");
		return 1;
	}
	for (size_t off = 0; off < len; off += page)
		mem[off] = 1;
	if (free_len > len)
		free_len = len;
	if (free_len && madvise(mem, free_len, MADV_DONTNEED)) {
		perror("madvise");
		return 1;
	}
	/*
	 * The holes last: freed pages go to the per-CPU free lists first,
	 * which hand out the most recently freed page first.
	 */
	for (size_t off = free_len; stride > 1 && off < len; off += stride * page) {
		if (madvise(mem + off, page, MADV_DONTNEED)) {
			perror("madvise");
			return 1;
		}
	}
	int fd = open(argv[2], O_CREAT | O_WRONLY, 0644);

	if (fd < 0) {
		perror(argv[2]);
		return 1;
	}
	close(fd);
	while (access(argv[3], F_OK))
		usleep(100000);
	return 0;
}
