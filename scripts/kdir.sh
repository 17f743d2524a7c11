#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# Prints the kernel build directory `make setup` produced for $KVER, or
# nothing when it has not been built yet.
source "$(dirname "$0")/lib.sh"
kout=$(kernel_build_dir)
if [[ -n "$kout" && -f "$kout/.balloon-built" ]]; then
	echo "$kout"
fi
