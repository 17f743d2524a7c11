// SPDX-License-Identifier: GPL-2.0
/*
 * fragment MIB READY GO [STRIDE]: a guest test workload that shapes free
 * memory for compaction tests.
 *
 * Allocates MIB MiB of anonymous memory and writes every page; with STRIDE
 * > 1, gives every STRIDE-th page back (MADV_DONTNEED). Creates the file
 * READY, waits for the file GO to appear, then exits, freeing the rest.
 *
 * A balloon inflated between READY and GO takes what the buffer left free:
 * the lowest memory (the page allocator hands out high addresses first) and
 * the holes. Once the buffer is gone, ballooned pages sit below and between
 * free memory, and compaction must migrate them to build large free blocks.
 *
 * Built statically by scripts/mkinitramfs.sh; busybox has no such tool.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc != 4 && argc != 5) {
		fprintf(stderr, "usage: %s MIB READY GO [STRIDE]\n", argv[0]);
		return 2;
	}
	long stride = argc == 5 ? atol(argv[4]) : 0;
	long page = sysconf(_SC_PAGESIZE);
	size_t len = (size_t)atol(argv[1]) << 20;
	char *mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (mem == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	for (size_t off = 0; off < len; off += page)
		mem[off] = 1;
	for (size_t off = 0; stride > 1 && off < len; off += stride * page) {
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
