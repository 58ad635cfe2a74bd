package main

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestRun(t *testing.T) {
	defer goleak.VerifyNone(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	var out bytes.Buffer
	if err := run(ctx, &out); err != nil {
		t.Fatalf("run: %v\noutput:\n%s", err, out.String())
	}
	got := out.String()
	for _, want := range []string{
		"server: restarting: listener closed, every connection cut",
		"server: listening again on ",
		"the conversation, as every client saw it:",
		"every client got all 9 lines, each once, in the same order",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("output lacks %q:\n%s", want, got)
		}
	}
	for _, name := range []string{"alice", "bob", "carol"} {
		if !strings.Contains(got, name+": reconnecting (") || !strings.Contains(got, name+": reconnected, session resumed") {
			t.Errorf("%s did not reconnect and resume:\n%s", name, got)
		}
	}
	// The lines written during the outage come right after the restart, in
	// the order the clients got back; then the conversation goes on.
	transcript := got[strings.Index(got, "as every client saw it:"):]
	for _, want := range []string{"bob: written while the server was down", "carol: so was this", "alice: and this"} {
		i := strings.Index(transcript, want)
		if i < 0 || !strings.Contains("#5#6#7", transcript[i-3:i-1]) {
			t.Errorf("transcript: %q is not among lines 5 to 7:\n%s", want, transcript)
		}
	}
	for _, want := range []string{"#8 bob: all there?", "#9 carol: all there"} {
		if !strings.Contains(transcript, want) {
			t.Errorf("transcript lacks %q:\n%s", want, transcript)
		}
	}
	if strings.Contains(got, "connected: ") {
		t.Errorf("a session was lost:\n%s", got)
	}
}

func TestRunTimeout(t *testing.T) {
	defer goleak.VerifyNone(t)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	var out bytes.Buffer
	start := time.Now()
	err := run(ctx, &out)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want a deadline error\n%s", err, out.String())
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("took %v to give up", d)
	}
}
