// Command ratio reads `go test -bench` output and prints, as a Markdown
// table, the median of each figure for every client and tether's figure as a
// ratio to raw coder/websocket's from the same run, with the target it is held
// to (DESIGN.md, "Performance targets") and whether it is met.
//
// Benchmarks are grouped by their name with the client=... element removed,
// so BenchmarkEcho/size=16/ctx=bg/client=raw and .../client=tether compare.
// The values shown are medians over the rounds; "tether vs raw" is the median
// of the per-round comparisons, which cancels drift in the machine's load.
// A second table holds session mode (client=session) against raw, long
// polling (client=polling) against session mode, and the fallback timings.
//
//	ratio results/bench.txt
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// samples[group][client][unit] holds every value seen.
type samples map[string]map[string]map[string][]float64

var benchLine = regexp.MustCompile(`^(Benchmark\S+?)(?:-\d+)?\s+\d+\s+(.*)$`)

func main() {
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: ratio [bench-output-file ...] (default stdin)")
	}
	flag.Parse()
	s := samples{}
	var order []string
	read := func(r io.Reader) {
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			if g, ok := s.add(sc.Text()); ok && !slices.Contains(order, g) {
				order = append(order, g)
			}
		}
	}
	if flag.NArg() == 0 {
		read(os.Stdin)
	}
	for _, name := range flag.Args() {
		f, err := os.Open(name)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		read(f)
		f.Close()
	}
	if len(order) == 0 {
		fmt.Fprintln(os.Stderr, "ratio: no benchmark lines")
		os.Exit(1)
	}
	missed := s.print(os.Stdout, order)
	if missed > 0 {
		fmt.Printf("\n%d target(s) missed.\n", missed)
	}
}

func (s samples) add(line string) (string, bool) {
	m := benchLine.FindStringSubmatch(line)
	if m == nil {
		return "", false
	}
	group, client := splitClient(m[1])
	f := strings.Fields(m[2])
	for i := 0; i+1 < len(f); i += 2 {
		v, err := strconv.ParseFloat(f[i], 64)
		if err != nil {
			continue
		}
		if s[group] == nil {
			s[group] = map[string]map[string][]float64{}
		}
		if s[group][client] == nil {
			s[group][client] = map[string][]float64{}
		}
		s[group][client][f[i+1]] = append(s[group][client][f[i+1]], v)
	}
	return group, true
}

// splitClient takes the client=... element out of a benchmark name.
func splitClient(name string) (group, client string) {
	parts := strings.Split(name, "/")
	var rest []string
	for _, p := range parts {
		if c, ok := strings.CutPrefix(p, "client="); ok {
			client = c
			continue
		}
		rest = append(rest, p)
	}
	return strings.Join(rest, "/"), client
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	w := slices.Clone(v)
	slices.Sort(w)
	if n := len(w); n%2 == 1 {
		return w[n/2]
	} else {
		return (w[n/2-1] + w[n/2]) / 2
	}
}

// paired compares raw and tether sample by sample when both have one per
// round (run.sh runs them side by side in each round, so slow drift in the
// machine's load cancels out) and returns the median; otherwise it compares
// the medians.
func paired(raw, tether []float64, f func(r, t float64) float64) float64 {
	if len(raw) != len(tether) || len(raw) == 0 {
		return f(median(raw), median(tether))
	}
	v := make([]float64, len(raw))
	for i := range raw {
		v[i] = f(raw[i], tether[i])
	}
	return median(v)
}

// how says how a unit compares between tether and raw.
type how int

const (
	speed how = iota // a time: raw/tether, higher is better
	rate             // a rate: tether/raw, higher is better
	extra            // a count or size: tether - raw, lower is better
	alone            // tether only: the value itself
)

// row is one figure to show, with its target.
type row struct {
	prefix string // group prefix
	unit   string
	how    how
	limit  float64 // the target: speed/rate at least, extra/alone at most; NaN: none
	target string
}

// sessionRow is a row of the session table: client's figure against
// base's ("" for a figure of client's alone). The main table (rows) always
// compares tether with raw.
type sessionRow struct {
	row
	base, client string
}

var rows = []row{
	{"BenchmarkEcho/", "ns/op", speed, 0.95, "≥ 0.95x raw"},
	{"BenchmarkEcho/", "cpu-ns/op", speed, math.NaN(), ""},
	{"BenchmarkEcho/", "allocs/op", extra, 1, "≤ +1 alloc/msg"},
	{"BenchmarkEcho/", "B/op", extra, math.NaN(), ""},
	{"BenchmarkPipeline/", "msgs/s", rate, 0.95, "≥ 0.95x raw"},
	{"BenchmarkPipeline/", "MB/s", rate, math.NaN(), ""},
	{"BenchmarkPipeline/", "cpu-ns/op", speed, math.NaN(), ""},
	{"BenchmarkPipeline/", "allocs/op", extra, 1, "≤ +1 alloc/msg"},
	{"BenchmarkAllocs/", "allocs/op", extra, 1, "≤ +1 alloc/msg"},
	{"BenchmarkAllocs/", "B/op", extra, math.NaN(), ""},
	{"BenchmarkDial", "ns/op", speed, math.NaN(), ""},
	{"BenchmarkDial", "allocs/op", extra, math.NaN(), ""},
	{"BenchmarkIdle/", "B/conn", extra, 16384, "≤ raw + 16 KiB"},
	{"BenchmarkIdle/", "goroutines/conn", extra, 2, "≤ raw + 2"},
	{"BenchmarkIdle/", "dropped-conns", alone, 0, "0"},
	{"BenchmarkBlackhole/", "found/bound", alone, 1.10, "≤ 1.10"},
	{"BenchmarkBlackhole/", "found-ms", alone, math.NaN(), ""},
	{"BenchmarkBlackhole/", "back-ms", alone, math.NaN(), ""},
	{"BenchmarkRestart/", "back/bound", alone, 1.0, "≤ 1.00"},
	{"BenchmarkRestart/", "found-ms", alone, math.NaN(), ""},
	{"BenchmarkRestart/", "back-ms", alone, math.NaN(), ""},
	{"BenchmarkRestart/", "bound-ms", alone, math.NaN(), ""},
	{"BenchmarkRestart/", "over-ms", alone, math.NaN(), ""},
	{"BenchmarkHerd/", "maxbucket-%", alone, 10, "≤ 10%"},
	{"BenchmarkHerd/", "p50-ms", alone, math.NaN(), ""},
	{"BenchmarkHerd/", "p99-ms", alone, math.NaN(), ""},
	{"BenchmarkHerd/", "last-ms", alone, math.NaN(), ""},
}

// sessionRows are tether in session mode (client=session, against a
// tether.Handler) next to raw coder/websocket against the plain echo server,
// long polling next to session mode over WebSocket, and the way to polling
// and back.
var sessionRows = []sessionRow{
	{row{"BenchmarkSessionEcho/", "ns/op", speed, 0.90, "≥ 0.90x raw"}, "raw", "session"},
	{row{"BenchmarkSessionEcho/", "cpu-ns/op", speed, math.NaN(), ""}, "raw", "session"},
	{row{"BenchmarkSessionEcho/", "allocs/op", extra, math.NaN(), ""}, "raw", "session"},
	{row{"BenchmarkSessionEcho/", "B/op", extra, math.NaN(), ""}, "raw", "session"},
	{row{"BenchmarkSessionPipeline/", "msgs/s", rate, 0.90, "≥ 0.90x raw"}, "raw", "session"},
	{row{"BenchmarkSessionPipeline/", "MB/s", rate, math.NaN(), ""}, "raw", "session"},
	{row{"BenchmarkSessionPipeline/", "cpu-ns/op", speed, math.NaN(), ""}, "raw", "session"},
	{row{"BenchmarkSessionPipeline/", "allocs/op", extra, math.NaN(), ""}, "raw", "session"},
	{row{"BenchmarkPolling/", "msgs/s", rate, math.NaN(), ""}, "session", "polling"},
	{row{"BenchmarkPolling/", "MB/s", rate, math.NaN(), ""}, "session", "polling"},
	{row{"BenchmarkPolling/", "cpu-ns/op", speed, math.NaN(), ""}, "session", "polling"},
	{row{"BenchmarkPolling/", "allocs/op", extra, math.NaN(), ""}, "session", "polling"},
	{row{"BenchmarkFallback/", "fallback-ms", alone, math.NaN(), ""}, "", "tether"},
	{row{"BenchmarkFallback/", "back-ms", alone, math.NaN(), ""}, "", "tether"},
}

func (s samples) print(w io.Writer, order []string) (missed int) {
	fmt.Fprintln(w, "| benchmark | metric | raw | tether | gorilla | tether vs raw | target | verdict | n |")
	fmt.Fprintln(w, "|---|---|---:|---:|---:|---:|---|---|---:|")
	for _, g := range order {
		for _, r := range rows {
			if !strings.HasPrefix(g, r.prefix) {
				continue
			}
			c, ok := s.compare(g, r, "raw", "tether")
			if !ok {
				continue
			}
			missed += c.missed
			fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s | %s | %d |\n",
				strings.TrimPrefix(g, "Benchmark"), r.unit, format(c.base, r.unit), format(c.value, r.unit),
				format(median(s[g]["gorilla"][r.unit]), r.unit), c.cmp, r.target, c.verdict, c.n)
		}
	}
	var session []string
	for _, g := range order {
		for _, r := range sessionRows {
			if !strings.HasPrefix(g, r.prefix) {
				continue
			}
			c, ok := s.compare(g, r.row, r.base, r.client)
			if !ok {
				continue
			}
			missed += c.missed
			base := r.base
			if base == "" {
				base = "—"
			}
			session = append(session, fmt.Sprintf("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %d |",
				strings.TrimPrefix(g, "Benchmark"), r.unit, r.client, format(c.value, r.unit),
				base, format(c.base, r.unit), c.cmp, r.target, c.verdict, c.n))
		}
	}
	if len(session) > 0 {
		fmt.Fprintln(w)
		fmt.Fprintln(w, "Session mode (client=session: tether.Dial against a tether.Handler echo) next to raw against the plain echo server; long polling next to session mode over WebSocket; the way to polling and back.")
		fmt.Fprintln(w)
		fmt.Fprintln(w, "| benchmark | metric | client | value | vs | its value | client vs it | target | verdict | n |")
		fmt.Fprintln(w, "|---|---|---|---:|---|---:|---:|---|---|---:|")
		for _, l := range session {
			fmt.Fprintln(w, l)
		}
	}
	return missed
}

// comparison is one figure of a client next to a base client.
type comparison struct {
	value, base float64 // medians
	cmp         string
	verdict     string
	missed      int
	n           int
}

// compare compares client's figure r.unit in group g with base's.
func (s samples) compare(g string, r row, base, client string) (comparison, bool) {
	byClient := s[g]
	tv := byClient[client][r.unit]
	if len(tv) == 0 {
		return comparison{}, false
	}
	var rv []float64
	if base != "" {
		rv = byClient[base][r.unit]
	}
	c := comparison{value: median(tv), base: median(rv), n: len(tv)}
	ok := true
	hasTarget := !math.IsNaN(r.limit)
	switch r.how {
	case speed:
		v := paired(rv, tv, func(r, t float64) float64 { return r / t })
		c.cmp = fmt.Sprintf("%.3fx", v)
		ok = v >= r.limit
	case rate:
		v := paired(rv, tv, func(r, t float64) float64 { return t / r })
		c.cmp = fmt.Sprintf("%.3fx", v)
		ok = v >= r.limit
	case extra:
		v := paired(rv, tv, func(r, t float64) float64 { return t - r })
		c.cmp = signed(v, r.unit)
		ok = v <= r.limit
	case alone:
		c.cmp = "—"
		ok = c.value <= r.limit
	}
	if (r.how != alone && math.IsNaN(c.base)) || math.IsNaN(c.value) {
		hasTarget, c.cmp = false, "—"
	}
	if hasTarget {
		c.verdict = "met"
		if !ok {
			c.verdict = "**missed**"
			c.missed = 1
		}
	}
	return c, true
}

func format(v float64, unit string) string {
	switch {
	case math.IsNaN(v):
		return "—"
	case strings.HasSuffix(unit, "ns/op") && v >= 1e6:
		return fmt.Sprintf("%.2f ms", v/1e6)
	case strings.HasSuffix(unit, "ns/op") && v >= 1e3:
		return fmt.Sprintf("%.1f µs", v/1e3)
	case unit == "B/conn":
		return fmt.Sprintf("%.1f KiB", v/1024)
	case strings.HasSuffix(unit, "/bound"):
		return fmt.Sprintf("%.3f", v)
	case v == math.Trunc(v) && math.Abs(v) < 1e15:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case math.Abs(v) >= 100:
		return fmt.Sprintf("%.0f", v)
	default:
		return fmt.Sprintf("%.3g", v)
	}
}

func signed(v float64, unit string) string {
	if unit == "B/conn" {
		return fmt.Sprintf("%+.1f KiB", v/1024)
	}
	if v == math.Trunc(v) {
		return fmt.Sprintf("%+.0f", v)
	}
	return fmt.Sprintf("%+.2f", v)
}
