package main

import (
	"bufio"
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// startRedis runs a redis-server on a free loopback port, without
// persistence, until the test ends. Without redis-server the test is
// skipped, or fails when CI is set (CI installs it).
func startRedis(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("redis-server not found: %v", err)
		}
		t.Skipf("redis-server not found; apt-get install redis-server: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	cmd := exec.Command(bin, "--port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", t.TempDir())
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-exited })
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			_, _ = c.Write([]byte("PING\r\n"))
			_ = c.SetReadDeadline(time.Now().Add(time.Second))
			line, _ := bufio.NewReader(c).ReadString('\n')
			c.Close()
			if line == "+PONG\r\n" {
				return addr
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("redis-server did not answer on %s", addr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestRun(t *testing.T) {
	addr := startRedis(t)
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent()) // redis-server's waiter ends at cleanup
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	var out bytes.Buffer
	start := time.Now()
	if err := run(ctx, &out, addr); err != nil {
		t.Fatalf("run: %v\noutput:\n%s", err, out.String())
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("the demo took %v", took)
	}
	id := `[0-9a-f]{8}`
	want := []string{
		`three instances on the Redis at ` + regexp.QuoteMeta(addr),
		`client: "hello 1" -> a: hello 1 \[session ` + id + `, new here\]`,
		`client: "hello 2" -> a: hello 2 \[session ` + id + `, new here\]`,
		`b forwarded the client's requests to a, which holds the session \(b: [1-9][0-9]* forwarded\)`,
		`a: shut down in under [0-9]+m?s, 1 session handed over`,
		`client: "hello 3" -> a: shutting down, handing the session over`,
		`client: "hello 3" -> b: hello 3 \[session ` + id + `, handed over\]`,
		`b: shut down in under [0-9]+m?s, 1 session handed over`,
		`client: "hello 4" -> b: shutting down, handing the session over`,
		`client: "hello 4" -> c: hello 4 \[session ` + id + `, handed over\]`,
		`c: shut down in under [0-9]+m?s, 1 session handed over`,
		`client: "hello 5" -> c: shutting down, handing the session over`,
		`client: "hello 5" -> a: hello 5 \[session ` + id + `, handed over\]`,
		`5 messages each way, each delivered once; the client reconnected [3-9] times, and its session was never lost`,
	}
	pattern := "(?s)"
	for _, w := range want {
		pattern += w + ".*"
	}
	if !regexp.MustCompile(pattern).MatchString(out.String()) {
		for i := range want {
			p := "(?s)"
			for _, w := range want[:i+1] {
				p += w + ".*"
			}
			if !regexp.MustCompile(p).MatchString(out.String()) {
				t.Errorf("output lacks, after the lines before it:\n%s", want[i])
				break
			}
		}
		t.Logf("output:\n%s", out.String())
	}
	ids := map[string]bool{}
	for _, m := range regexp.MustCompile(`\[session ([0-9a-f]{8}),`).FindAllStringSubmatch(out.String(), -1) {
		ids[m[1]] = true
	}
	if len(ids) != 1 {
		t.Errorf("sessions %v; want one throughout", ids)
	}
}
