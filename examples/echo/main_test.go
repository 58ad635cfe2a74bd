package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestRun(t *testing.T) {
	defer goleak.VerifyNone(t)

	for _, drops := range []int{0, 1, 3} {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		var out bytes.Buffer
		err := run(ctx, &out, drops)
		cancel()
		if err != nil {
			t.Fatalf("drops=%d: run: %v\noutput:\n%s", drops, err, out.String())
		}

		// The story must be told in order: connected, then each drop followed
		// by reconnecting, connected again and the queued write's echo.
		want := []string{"tether: connected (attempt 1)", `echo "hello 1" in `}
		for d := 1; d <= drops; d++ {
			want = append(want,
				"tether: reconnecting (cause: ",
				"tether: connected (attempt ",
				`arrived after the reconnect`,
			)
		}
		want = append(want, "rtt last=", "tether: closed")
		rest := out.String()
		for _, w := range want {
			i := strings.Index(rest, w)
			if i < 0 {
				t.Fatalf("drops=%d: output lacks %q after the earlier lines\noutput:\n%s", drops, w, out.String())
			}
			rest = rest[i+len(w):]
		}
		if n := strings.Count(out.String(), "tether: reconnecting"); n != drops {
			t.Errorf("drops=%d: %d reconnects in the output\n%s", drops, n, out.String())
		}
	}
}

// TestRunFallback runs the -fallback demo: the client must fall back to
// polling, echo over it, and come back to WebSocket when the proxy is fixed.
func TestRunFallback(t *testing.T) {
	defer goleak.VerifyNone(t)

	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	var out bytes.Buffer
	if err := runFallback(ctx, &out); err != nil {
		t.Fatalf("runFallback: %v\noutput:\n%s", err, out.String())
	}
	want := []string{
		"proxy: WebSocket handshake 1 refused",
		"tether: connected over polling",
		"moved to long polling: tether: handshake answered 426",
		`echo "hello 3 over polling"`,
		"proxy: fixed",
		"passed",
		"tether: probe succeeded, session moved to websocket",
		`echo "hello 1 over websocket"`,
		`echo "hello 3 over websocket"`,
		"transport=websocket",
		"tether: closed",
	}
	rest := out.String()
	for _, w := range want {
		i := strings.Index(rest, w)
		if i < 0 {
			t.Fatalf("output lacks %q after the earlier lines\noutput:\n%s", w, out.String())
		}
		rest = rest[i+len(w):]
	}
	if strings.Contains(out.String(), "reconnecting") {
		// The move back to WebSocket is made without a reconnect: the
		// session goes from the polls to the probe's WebSocket directly.
		t.Fatalf("the move back went through a reconnect\n%s", out.String())
	}
}

// TestRunTimeout checks that both demos give up when their ctx ends mid-way,
// and leave nothing running.
func TestRunTimeout(t *testing.T) {
	defer goleak.VerifyNone(t)

	demos := map[string]func(context.Context, io.Writer) error{
		"drops":    func(ctx context.Context, w io.Writer) error { return run(ctx, w, 2) },
		"fallback": runFallback,
	}
	for name, demo := range demos {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		var out bytes.Buffer
		start := time.Now()
		err := demo(ctx, &out)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("%s: got %v, want a deadline error\noutput:\n%s", name, err, out.String())
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("%s: took %v to give up", name, d)
		}
	}
}
