// SPDX-License-Identifier: GPL-2.0
/*
 * fragment MIB READY GO: a guest test workload that fragments free memory.
 *
 * Allocates MIB MiB of anonymous memory, writes every page, then gives every
 * other page back (MADV_DONTNEED), so that free memory is a checkerboard of
 * single pages. Creates the file READY, waits for the file GO to appear, then
 * exits, freeing the rest. A balloon inflated between READY and GO takes the
 * single free pages, so afterwards ballooned pages sit alone between free
 * ones: compaction can only build large free blocks by migrating them.
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
	if (argc != 4) {
		fprintf(stderr, "usage: %s MIB READY GO\n", argv[0]);
		return 2;
	}
	long page = sysconf(_SC_PAGESIZE);
	size_t len = (size_t)atol(argv[1]) << 20;
	char *mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (mem == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	for (size_t off = 0; off < len; off += page)
		mem[off] = 1;
	for (size_t off = 0; off < len; off += 2 * page) {
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
