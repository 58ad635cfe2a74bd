#!/usr/bin/env bash
# run.sh runs every benchmark in bench/ in interleaved rounds (each round runs
# raw, tether and gorilla side by side; tether in session mode next to raw;
# long polling next to session mode), keeps the raw output under
# bench/results/<time>/, and prints each tether figure as a ratio to raw
# coder/websocket from the same run, with its target.
#
#   bench/run.sh                  # 8 rounds and one 10,000-Conn idle round (~12 min)
#   COUNT=10 bench/run.sh         # more rounds
#   TETHER_BENCH_10K=0 bench/run.sh   # skip the 10,000-Conn idle round
#   BENCHTIME=2s bench/run.sh     # longer throughput benchmarks
#
# Only ratios from one run mean anything: these machines are shared and noisy.
set -euo pipefail
cd "$(dirname "$0")"

count=${COUNT:-8}
benchtime=${BENCHTIME:-1s}
big=${TETHER_BENCH_10K:-1}
unset TETHER_BENCH_10K

out=results/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$out"
go test -c -o "$out/bench.test" .
go build -o "$out/echoserver" ./cmd/echoserver
go build -o "$out/ratio" ./cmd/ratio
export TETHER_BENCH_ECHOSERVER=$PWD/$out/echoserver
raw=$out/bench.txt
: > "$raw"

{
	echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
	echo "go: $(go version)"
	echo "nproc: $(nproc)"
	echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
	echo "command: bench/run.sh (COUNT=$count BENCHTIME=$benchtime TETHER_BENCH_10K=$big)"
	if rev=$(git -C .. rev-parse --short HEAD 2>/dev/null); then
		# Library files changed since that commit, if any: the build measured them.
		dirty=$(git -C .. status --porcelain -- . ':(exclude)bench' | wc -l)
		echo "tether: $rev (+$dirty uncommitted files outside bench/)"
	fi
} | tee "$out/machine.txt"

bench() { # pattern benchtime
	"$out/bench.test" -test.run '^$' -test.bench "$1" -test.benchtime "$2" | tee -a "$raw"
}

start=$SECONDS
for i in $(seq "$count"); do
	echo "== round $i of $count ($((SECONDS - start)) s)"
	# Which client runs first changes from round to round.
	export TETHER_BENCH_ROTATE=$(((i - 1) % 3))
	# Round trips vary most with the machine's load: two samples a round,
	# each with its own client order.
	bench '^Benchmark(Echo|Pipeline)$' "$benchtime"
	TETHER_BENCH_ROTATE=$((i % 3)) bench '^Benchmark(Echo|Pipeline)$' "$benchtime"
	# Session mode (tether.Dial against a tether.Handler) next to raw, and
	# long polling next to session mode over WebSocket.
	bench '^BenchmarkSession(Echo|Pipeline)$' "$benchtime"
	TETHER_BENCH_ROTATE=$((i % 3)) bench '^BenchmarkSession(Echo|Pipeline)$' "$benchtime"
	bench '^BenchmarkPolling$' "$benchtime"
	bench '^BenchmarkFallback$' 5x
	bench '^BenchmarkAllocs$' "$benchtime"
	bench '^BenchmarkDial$' 300x
	bench '^BenchmarkIdle$' 1x
	bench '^Benchmark(Blackhole|Restart|Herd)$' 1x
done
export TETHER_BENCH_ROTATE=0
if [ "$big" = 1 ]; then
	echo "== 10,000 idle Conns ($((SECONDS - start)) s)"
	TETHER_BENCH_10K=1 bench '^BenchmarkIdle$/conns=10000' 1x
fi
echo "== done in $((SECONDS - start)) s; raw output in bench/$raw"

"$out/ratio" "$raw" | tee "$out/ratio.md"

bs=$(command -v benchstat || true)
if [ -z "$bs" ] && [ -x "$(go env GOPATH)/bin/benchstat" ]; then
	bs=$(go env GOPATH)/bin/benchstat
fi
if [ -n "$bs" ]; then
	"$bs" -col /client "$raw" > "$out/benchstat.txt" 2>&1 || true
	echo "benchstat -col /client: bench/$out/benchstat.txt"
fi
ln -sfn "$(basename "$out")" results/latest
