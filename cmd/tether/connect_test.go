package main

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tetherws/tether/internal/faultnet"
)

// The walk-through: "tether serve -drop" cuts every link, and
// "tether connect" rides through: every line comes back once, in order
// (session mode), and stderr tells the story. EOF on stdin ends connect
// with 0; SIGINT ends serve gracefully with 0.
func TestServeDropConnect(t *testing.T) {
	t.Parallel()
	srv, url := serve(t, "-drop", "400ms")
	c := startTether(t, "connect", "-heartbeat", "100ms", url)

	// Lines go out one at a time, each after the echo of the one before,
	// until the server has dropped the links twice (bounded in lines and
	// time).
	deadline := time.Now().Add(20 * time.Second)
	n := 0
	for strings.Count(srv.stderr.String(), "dropped") < 2 {
		if n == 5000 || time.Now().After(deadline) {
			t.Fatalf("%d lines and the server has not dropped the links twice:\n%s", n, srv.stderr.String())
		}
		n++
		msg := fmt.Sprintf("line %d", n)
		if _, err := fmt.Fprintln(c.stdin, msg); err != nil {
			t.Fatal(err)
		}
		if got := c.line(10 * time.Second); got != msg {
			t.Fatalf("got %q, want %q (lost, repeated or out of order)", got, msg)
		}
	}
	c.stderrEventually("reconnected over websocket", 5*time.Second)
	if err := c.stdin.Close(); err != nil {
		t.Fatal(err)
	}
	if code := c.wait(10 * time.Second); code != 0 {
		t.Fatalf("connect exited %d after EOF, want 0", code)
	}
	select {
	case l, ok := <-c.lines:
		if ok {
			t.Fatalf("an extra line on stdout: %q", l)
		}
	default:
	}
	stderr := c.stderr.String()
	for _, want := range []string{"connected over websocket (attempt 1)", "reconnecting: ", "closed"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("connect's stderr lacks %q:\n%s", want, stderr)
		}
	}
	if strings.Contains(stderr, "new session") {
		t.Errorf("the session was lost on the way:\n%s", stderr)
	}

	if code := srv.signal(syscall.SIGINT, 10*time.Second); code != 0 {
		t.Fatalf("serve exited %d on SIGINT, want 0", code)
	}
	for _, want := range []string{"session ", "opened over websocket", "shutting down", "stopped"} {
		if !strings.Contains(srv.stderr.String(), want) {
			t.Errorf("serve's stderr lacks %q:\n%s", want, srv.stderr.String())
		}
	}
}

// A quiet link is pinged at the -heartbeat interval, and each answer's
// round-trip time is printed; with -ping-timeout 0 too.
func TestConnectPingRTT(t *testing.T) {
	t.Parallel()
	_, url := serve(t)
	c := startTether(t, "connect", "-heartbeat", "50ms", "-ping-timeout", "0", url)
	c.stderrEventually("ping rtt ", 10*time.Second)
	c.stdin.Close()
	if code := c.wait(10 * time.Second); code != 0 {
		t.Fatalf("connect exited %d, want 0", code)
	}
}

// Behind "tether serve -strip-upgrade", connect -fallback moves to long
// polling and echoes over it; -json prints each state event as an object.
func TestServeStripUpgradeConnectFallback(t *testing.T) {
	t.Parallel()
	srv, url := serve(t, "-strip-upgrade")
	c := startTether(t, "connect", "-fallback", "-json", url)
	for _, msg := range []string{"one", "two", "three"} {
		fmt.Fprintln(c.stdin, msg)
		if got := c.line(10 * time.Second); got != msg {
			t.Fatalf("got %q, want %q", got, msg)
		}
	}
	c.stdin.Close()
	if code := c.wait(10 * time.Second); code != 0 {
		t.Fatalf("connect exited %d, want 0", code)
	}

	var polling, closed bool
	for _, line := range strings.Split(strings.TrimSpace(c.stderr.String()), "\n") {
		var e struct {
			Event, From, To, Transport, Cause, Time string
		}
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("stderr line is not JSON: %q: %v", line, err)
		}
		if _, err := time.Parse(time.RFC3339Nano, e.Time); err != nil {
			t.Errorf("event without a time: %q", line)
		}
		if e.Event == "state" && e.To == "connected" && e.Transport == "polling" && strings.Contains(e.Cause, "426") {
			polling = true
		}
		if e.Event == "state" && e.To == "closed" {
			closed = true
		}
	}
	if !polling || !closed {
		t.Errorf("want a connected-over-polling event with the 426 cause, and a closed event:\n%s", c.stderr.String())
	}
	if !strings.Contains(srv.stderr.String(), "stripped the Upgrade header") {
		t.Errorf("serve did not say it stripped the Upgrade header:\n%s", srv.stderr.String())
	}
	if !strings.Contains(srv.stderr.String(), "opened over polling") {
		t.Errorf("serve did not see a polling session:\n%s", srv.stderr.String())
	}
}

// A server that refuses the credentials: connect exits 1 and says why,
// without printing the credentials it sent.
func TestConnectRefused(t *testing.T) {
	t.Parallel()
	seen := make(chan string, 16)
	hs := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen <- r.URL.Query().Get("token") + " " + r.Header.Get("Authorization")
		http.Error(w, "no", http.StatusUnauthorized)
	}))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs.Listener = ln
	hs.Start()
	t.Cleanup(hs.Close)

	const token, bearer = "tok-Secret-123", "Bearer hdr-Secret-456"
	stdout, stderr, code := runTether(t, "hello\n", "connect", "-H", "Authorization: "+bearer, "ws://"+ln.Addr().String()+"/?token="+token)
	if code != 1 {
		t.Fatalf("exit %d, want 1\n%s", code, stderr)
	}
	if !strings.Contains(stderr, "the server refuses: 401 Unauthorized") {
		t.Errorf("stderr does not say why:\n%s", stderr)
	}
	if got := <-seen; got != token+" "+bearer {
		t.Fatalf("the server got %q: the credentials were not sent", got)
	}
	for _, secret := range []string{"tok-Secret-123", "hdr-Secret-456"} {
		if strings.Contains(stdout+stderr, secret) {
			t.Errorf("a credential was printed:\n%s%s", stdout, stderr)
		}
	}
	if !strings.Contains(stderr, "token=REDACTED") {
		t.Errorf("the URL is not shown with its token redacted:\n%s", stderr)
	}
}

// Nothing listens: the first connect gives up after -timeout, exit 1, and
// the error (which quotes the URL) shows no token.
func TestConnectTimeout(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	start := time.Now()
	stdout, stderr, code := runTether(t, "", "connect", "-timeout", "500ms", "ws://"+addr+"/?token=tok-Secret-789")
	if code != 1 {
		t.Fatalf("exit %d, want 1\n%s", code, stderr)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("took %v to give up with -timeout 500ms", d)
	}
	if !strings.Contains(stderr, "error: ") || strings.Contains(stdout+stderr, "tok-Secret-789") {
		t.Errorf("want an error without the token:\n%s", stderr)
	}
}

// Lines written while the link is down are not dropped when stdin ends:
// connect waits for the link to come back, and for their echoes, before it
// closes. Here stdin ends 0.1 s after the link was cut, and the server is
// unreachable for 1 s, ten times -linger.
func TestConnectEOFWhileReconnecting(t *testing.T) {
	t.Parallel()
	_, url := serve(t)
	addr := strings.TrimSuffix(strings.TrimPrefix(url, "ws://"), "/")
	p, err := faultnet.Listen(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	c := startTether(t, "connect", "-linger", "100ms", "ws://"+p.Addr()+"/")

	if _, err := fmt.Fprintln(c.stdin, "before"); err != nil {
		t.Fatal(err)
	}
	if got := c.line(10 * time.Second); got != "before" {
		t.Fatalf("got %q, want %q", got, "before")
	}
	if err := p.Refuse(true); err != nil {
		t.Fatal(err)
	}
	p.Reset()
	c.stderrEventually("reconnecting: ", 5*time.Second)
	if _, err := fmt.Fprintln(c.stdin, "during"); err != nil {
		t.Fatal(err)
	}
	if err := c.stdin.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.exited:
		t.Fatalf("connect exited %d while the link was down", c.code)
	case <-time.After(time.Second):
	}
	if err := p.Refuse(false); err != nil {
		t.Fatal(err)
	}
	if got := c.line(10 * time.Second); got != "during" {
		t.Fatalf("got %q, want %q: the line written while the link was down", got, "during")
	}
	if code := c.wait(10 * time.Second); code != 0 {
		t.Fatalf("connect exited %d, want 0", code)
	}
}
