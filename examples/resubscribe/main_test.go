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
	want := []string{
		"connect 1: subscribed to btc-usd, eth-usd",
		"connect 1: ticks arriving: btc-usd x3, eth-usd x3",
		"feed: dropping every connection",
		"tether: reconnecting (",
		"connect 2: subscribed to btc-usd, eth-usd",
		"connect 2: ticks arriving: btc-usd x3, eth-usd x3",
		"feed: dropping every connection",
		"connect 3: subscribed to btc-usd, eth-usd",
		"connect 3: ticks arriving: btc-usd x3, eth-usd x3",
		"stats: dials=3 reconnects=2",
	}
	rest := out.String()
	for _, w := range want {
		i := strings.Index(rest, w)
		if i < 0 {
			t.Fatalf("output lacks %q after the earlier lines:\n%s", w, out.String())
		}
		rest = rest[i+len(w):]
	}
}

func TestRunTimeout(t *testing.T) {
	defer goleak.VerifyNone(t)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	var out bytes.Buffer
	start := time.Now()
	if err := run(ctx, &out); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want a deadline error\n%s", err, out.String())
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("took %v to give up", d)
	}
}
