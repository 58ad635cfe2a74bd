package main

import (
	"strings"
	"testing"
)

const sample = `goos: linux
BenchmarkEcho/size=16/ctx=bg/client=raw-2     	  1000	     10000 ns/op	 2 allocs/op
BenchmarkEcho/size=16/ctx=bg/client=tether-2  	  1000	     10500 ns/op	 3 allocs/op
BenchmarkEcho/size=16/ctx=bg/client=raw-2     	  1000	     20000 ns/op	 2 allocs/op
BenchmarkEcho/size=16/ctx=bg/client=tether-2  	  1000	     20000 ns/op	 3 allocs/op
BenchmarkEcho/size=16/ctx=bg/client=raw-2     	  1000	     10000 ns/op	 2 allocs/op
BenchmarkEcho/size=16/ctx=bg/client=tether-2  	  1000	     12000 ns/op	 3 allocs/op
--- BENCH: BenchmarkHerd/conns=500/client=tether-2
    reconnect_test.go:231: herd: 500 Conns back
BenchmarkHerd/conns=500/client=tether-2 	 1	 6.8 maxbucket-%	 1036 p50-ms
`

func TestPrint(t *testing.T) {
	s := samples{}
	var order []string
	for _, line := range strings.Split(sample, "\n") {
		if g, ok := s.add(line); ok && (len(order) == 0 || order[len(order)-1] != g) {
			order = append(order, g)
		}
	}
	if len(order) != 2 {
		t.Fatalf("groups %q, want Echo and Herd", order)
	}
	var out strings.Builder
	missed := s.print(&out, order)
	got := out.String()
	// Paired per round: 10000/10500, 20000/20000, 10000/12000 -> median 0.952.
	for _, want := range []string{
		"| Echo/size=16/ctx=bg | ns/op | 10.0 µs | 12.0 µs | — | 0.952x | ≥ 0.95x raw | met | 3 |",
		"| Echo/size=16/ctx=bg | allocs/op | 2 | 3 | — | +1 | ≤ +1 alloc/msg | met | 3 |",
		"| Herd/conns=500 | maxbucket-% | — | 6.8 | — | — | ≤ 10% | met | 1 |",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("missing row %q in\n%s", want, got)
		}
	}
	if missed != 0 {
		t.Errorf("missed = %d, want 0", missed)
	}
}

func TestSplitClient(t *testing.T) {
	g, c := splitClient("BenchmarkEcho/size=16/client=tether/x")
	if g != "BenchmarkEcho/size=16/x" || c != "tether" {
		t.Errorf("got %q %q", g, c)
	}
}

const sessionSample = `BenchmarkSessionEcho/size=16/ctx=bg/client=raw-2     	  1000	     10000 ns/op
BenchmarkSessionEcho/size=16/ctx=bg/client=session-2 	  1000	     12500 ns/op
BenchmarkPolling/size=1024/client=session-2 	 1000	 100 ns/op	 50000 msgs/s
BenchmarkPolling/size=1024/client=polling-2 	 1000	 100 ns/op	 5000 msgs/s
BenchmarkFallback/backoff=20ms/probe=50ms/client=tether-2 	 1	 52.2 back-ms	 68.2 fallback-ms
`

func TestPrintSession(t *testing.T) {
	s := samples{}
	var order []string
	for _, line := range strings.Split(sessionSample, "\n") {
		if g, ok := s.add(line); ok && (len(order) == 0 || order[len(order)-1] != g) {
			order = append(order, g)
		}
	}
	var out strings.Builder
	missed := s.print(&out, order)
	got := out.String()
	for _, want := range []string{
		"| SessionEcho/size=16/ctx=bg | ns/op | session | 12.5 µs | raw | 10.0 µs | 0.800x | ≥ 0.90x raw | **missed** | 1 |",
		"| Polling/size=1024 | msgs/s | polling | 5000 | session | 50000 | 0.100x |  |  | 1 |",
		"| Fallback/backoff=20ms/probe=50ms | fallback-ms | tether | 68.2 | — | — | — |  |  | 1 |",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("missing row %q in\n%s", want, got)
		}
	}
	if missed != 1 {
		t.Errorf("missed = %d, want 1", missed)
	}
}
