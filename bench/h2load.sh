#!/usr/bin/env bash
# Floor and Validate with the server on its own core, driven by h2load (apt-get install nghttp2-client).
# Run from bench/ after `cargo build --release --bins`. Results and logs go to /tmp/bb/.
mkdir -p /tmp/bb
# usage: h2load.sh NAME MIX [writ-load server args...]: server pinned to CPU 0, h2load to CPU 1
B=${CARGO_TARGET_DIR:-$HOME/.cache/writ-bench-target}/release
name=$1; mix=$2; shift 2
taskset -c 0 $B/writ-load --mix $mix --tokens 10 --serve-only /tmp/bb/$name.bin "$@" > /tmp/bb/$name.srv 2>/tmp/bb/$name.srv.err &
pid=$!
for i in $(seq 50); do grep -q ^body /tmp/bb/$name.srv 2>/dev/null && break; sleep 0.2; done
url=$(grep ^url /tmp/bb/$name.srv | cut -d' ' -f2); caller=$(grep ^caller /tmp/bb/$name.srv | cut -d' ' -f2)
# One request first: the answer must be grpc-status 0.
h2load -n 1 -c 1 -v -H 'content-type: application/grpc' -H 'te: trailers' -H "x-writ-caller: $caller" -d /tmp/bb/$name.bin $url 2>&1 | grep -m1 -o "grpc-status: [0-9]*" | sed "s/^/$name check: /"
taskset -c 1 h2load -c ${CONNS:-4} -m ${STREAMS:-16} -D ${DUR:-8} --warm-up-time 2 -H 'content-type: application/grpc' -H 'te: trailers' -H "x-writ-caller: $caller" -d /tmp/bb/$name.bin $url > /tmp/bb/$name.h2 2>&1
kill -INT $pid; wait $pid 2>/dev/null
printf "%-22s %s | %s\n" $name "$(grep -m1 '^finished in' /tmp/bb/$name.h2 | sed 's/,.*req.s/ req\/s/' | cut -c1-60)" "$(grep -m1 'time for request' /tmp/bb/$name.h2)"
grep -m1 "^requests:" /tmp/bb/$name.h2
