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

// TestRunTimeout checks that run gives up when its ctx ends mid-way, and
// leaves nothing running.
func TestRunTimeout(t *testing.T) {
	defer goleak.VerifyNone(t)

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	var out bytes.Buffer
	start := time.Now()
	err := run(ctx, &out, 2)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("run: got %v, want a deadline error\noutput:\n%s", err, out.String())
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("run took %v to give up", d)
	}
}
