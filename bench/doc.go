// Package bench measures tether against raw coder/websocket, the limit it
// wraps, and gorilla/websocket, a common peer. It is a module of its own so
// that the comparison targets never reach the go.mod of tether's users.
//
// Every client talks to the same echo server (internal/echo), so only the
// client differs. Run everything with run.sh, which prints each tether
// figure as a ratio to raw coder/websocket from the same run; BENCHMARKS.md
// at the repository root holds the last published run.
//
// The idle-memory benchmarks start the server in a process of its own
// (cmd/echoserver), so that only client memory is counted. The 10,000-Conn
// idle run happens only when TETHER_BENCH_10K=1.
package bench
