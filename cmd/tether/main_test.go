package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// These tests build the tether binary and run it as a user would, against
// servers on 127.0.0.1: "tether serve" itself, httptest servers, and nginx.

var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "tether-cmd-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	goleak.VerifyTestMain(m, goleak.Cleanup(func(code int) {
		os.RemoveAll(dir)
		os.Exit(code)
	}))
}

var (
	buildOnce sync.Once
	buildErr  error
)

// tetherBin builds the command once per test run and returns its path.
func tetherBin(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(binDir, "tether")
	buildOnce.Do(func() {
		out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return bin
}

// runTether runs the command to the end, with stdin, within 30 s.
func runTether(t *testing.T, stdin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, tetherBin(t), args...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("tether %s: did not end within 30s\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), out.String(), errb.String())
	}
	code = 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("tether %s: %v", strings.Join(args, " "), err)
	}
	return out.String(), errb.String(), code
}

// proc is a tether command running in the background.
type proc struct {
	t      *testing.T
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan string // stdout, line by line
	stderr lockedBuffer
	exited chan struct{}
	code   int
}

func startTether(t *testing.T, args ...string) *proc {
	t.Helper()
	p := &proc{t: t, lines: make(chan string, 1024), exited: make(chan struct{})}
	p.cmd = exec.Command(tetherBin(t), args...)
	var err error
	if p.stdin, err = p.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p.cmd.Stderr = &p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		defer close(p.lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
	}()
	go func() {
		<-scanned // Wait closes the pipe: read it all first
		_ = p.cmd.Wait()
		p.code = p.cmd.ProcessState.ExitCode()
		close(p.exited)
	}()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("tether %s: stderr:\n%s", strings.Join(args, " "), p.stderr.String())
		}
	})
	return p
}

// line returns the next line of stdout, failing the test after d.
func (p *proc) line(d time.Duration) string {
	p.t.Helper()
	select {
	case l, ok := <-p.lines:
		if !ok {
			p.t.Fatalf("stdout ended\nstderr:\n%s", p.stderr.String())
		}
		return l
	case <-time.After(d):
		p.t.Fatalf("no line on stdout within %v\nstderr:\n%s", d, p.stderr.String())
	}
	return ""
}

// wait waits for the command to exit and returns its exit code.
func (p *proc) wait(d time.Duration) int {
	p.t.Helper()
	select {
	case <-p.exited:
		return p.code
	case <-time.After(d):
		p.t.Fatalf("still running after %v\nstderr:\n%s", d, p.stderr.String())
	}
	return -1
}

// signal sends sig and waits for the command to exit.
func (p *proc) signal(sig os.Signal, d time.Duration) int {
	p.t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		p.t.Fatal(err)
	}
	return p.wait(d)
}

// stop ends the command if it still runs: SIGTERM, then SIGKILL.
func (p *proc) stop() {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.stdin.Close()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

// stderrEventually waits until stderr contains s.
func (p *proc) stderrEventually(s string, d time.Duration) {
	p.t.Helper()
	deadline := time.Now().Add(d)
	for !strings.Contains(p.stderr.String(), s) {
		if time.Now().After(deadline) {
			p.t.Fatalf("stderr lacks %q after %v:\n%s", s, d, p.stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// serve starts "tether serve" on a free loopback port and returns it and
// the URL it printed.
func serve(t *testing.T, args ...string) (*proc, string) {
	t.Helper()
	p := startTether(t, append([]string{"serve", "-addr", "127.0.0.1:0"}, args...)...)
	first := p.line(10 * time.Second)
	url, ok := strings.CutPrefix(first, "listening on ")
	if !ok || !strings.HasPrefix(url, "ws://127.0.0.1:") {
		t.Fatalf("serve printed %q, want its URL", first)
	}
	return p, url
}

func TestUsage(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args   []string
		code   int
		stdout string
		stderr string
	}{
		{nil, 2, "", "Usage:"},
		{[]string{"-h"}, 0, "tether connect [flags] URL", ""},
		{[]string{"help"}, 0, "tether probe [flags] URL", ""},
		{[]string{"help", "connect"}, 0, "", "-heartbeat"},
		{[]string{"bogus"}, 2, "", `unknown command "bogus"`},
		{[]string{"connect"}, 2, "", "want one URL, got 0 arguments"},
		{[]string{"connect", "-h"}, 0, "", "-fallback"},
		{[]string{"connect", "-nope", "ws://127.0.0.1:1/"}, 2, "", "flag provided but not defined: -nope"},
		{[]string{"connect", "ftp://127.0.0.1/"}, 2, "", "scheme must be ws, wss, http or https"},
		{[]string{"connect", "-H", "no colon", "ws://127.0.0.1:1/"}, 2, "", "want 'Name: value'"},
		{[]string{"connect", "-heartbeat", "-1s", "ws://127.0.0.1:1/"}, 2, "", "must not be negative"},
		{[]string{"connect", "ws://a/", "ws://b/"}, 2, "", "want one URL, got 2 arguments"},
		{[]string{"serve", "-h"}, 0, "", "-strip-upgrade"},
		{[]string{"serve", "extra"}, 2, "", "unexpected arguments: extra"},
		{[]string{"serve", "-drop", "-5s"}, 2, "", "must not be negative"},
		{[]string{"probe", "-h"}, 0, "", "-cacert"},
		{[]string{"probe"}, 2, "", "want one URL"},
		{[]string{"probe", "-timeout", "0", "ws://127.0.0.1:1/"}, 2, "", "-timeout must be positive"},
		{[]string{"probe", "127.0.0.1:80"}, 2, "", "bad URL"},
		{[]string{"probe", "-cacert", "/nonexistent.pem", "wss://127.0.0.1:1/"}, 2, "", "-cacert"},
	} {
		stdout, stderr, code := runTether(t, "", tc.args...)
		if code != tc.code || !strings.Contains(stdout, tc.stdout) || !strings.Contains(stderr, tc.stderr) {
			t.Errorf("tether %s: exit %d, want %d; stdout want %q:\n%s\nstderr want %q:\n%s",
				strings.Join(tc.args, " "), code, tc.code, tc.stdout, stdout, tc.stderr, stderr)
		}
	}
}
