#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# The must-not-build check (`make lint`, `make must-not-build`): out-of-tree
# doctests are never compiled, so what must not compile lives in
# src/virtio/must_not_build.rs, which Kbuild compiles into the crate only
# with MUST_NOT_BUILD=1 (`--cfg must_not_build`).
#
#   must-not-build.sh LOG BUILD-COMMAND...
#
# runs the build, its output in LOG, and passes only if the build fails,
# each line after one marked `// MUST NOT BUILD: <Trait>` is rejected by an
# E0277 error (unsatisfied trait bound) naming <Trait>, and there is no
# other compiler error, so that the check cannot pass for an unrelated
# reason (a typo, a missing import, a broken tree).
source "$(dirname "$0")/lib.sh"
[[ $# -ge 2 ]] || die "usage: $0 LOG BUILD-COMMAND..."
log=$1
shift
src=$PROJECT_DIR/src/virtio/must_not_build.rs

mkdir -p "$(dirname "$log")"
if "$@" >"$log" 2>&1; then
	cat "$log"
	die "must-not-build: the build with --cfg must_not_build succeeded; $src must not compile"
fi

# The expected errors (`LINE TRAIT`, the line after each marker) and what
# the compiler said (`LINE HEADER` per error, LINE of its primary span if in
# $src, else 0).
expected=$(awk 'match($0, /\/\/ MUST NOT BUILD: [A-Za-z_][A-Za-z0-9_]*/) {
		print NR + 1, substr($0, RSTART + 19, RLENGTH - 19) }' "$src")
[[ -n "$expected" ]] || die "must-not-build: no '// MUST NOT BUILD: <Trait>' marker in $src"
got=$(sed 's/\x1b\[[0-9;]*m//g' "$log" | awk '
	function flush() { if (header != "") print line + 0, header; header = "" }
	/^error(\[E[0-9]+\])?: / && !/^error: aborting due to/ { flush(); header = $0; line = 0; span = 1; next }
	span && /^ *--> / { span = 0; if (match($0, /must_not_build\.rs:[0-9]+:/))
		line = substr($0, RSTART + 18, RLENGTH - 19) }
	END { flush() }')

fail=0
while read -r n header; do
	trait=$(awk -v n="$n" '$1 == n { print $2 }' <<<"$expected")
	if [[ -z "$trait" || ! "$header" =~ ^error\[E0277\]:\ .*[^A-Za-z0-9_]"$trait"\` ]]; then
		where="line $n of $src"
		[[ $n -ne 0 ]] || where="elsewhere"
		echo "must-not-build: unexpected error ($where): $header"
		fail=1
	fi
done <<<"$got"
while read -r n trait; do
	at=$(awk -v n="$n" '$1 == n' <<<"$got")
	if [[ ! "$at" =~ [^A-Za-z0-9_]"$trait"\` ]]; then
		echo "must-not-build: line $n of $src was not rejected for want of $trait"
		fail=1
	fi
done <<<"$expected"
if [[ $fail -ne 0 ]]; then
	cat "$log"
	die "must-not-build: the build failed, but not (only) as expected (see above)"
fi
echo "must-not-build: $(wc -l <<<"$expected") probes rejected as expected ($log)"
