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
		"client: token 1 issued",
		"tether: connected (attempt 1)",
		`echo "hello 1"`,
		"server: token expired, closing the link with 4001",
		`tether: reconnecting (`, `closed by the server with 4001: "token expired")`,
		"client: token 2 issued",
		`echo "written while renewing 1"`,
		`echo "hello 2"`,
		"client: token 3 issued",
		`echo "written while renewing 2"`,
		"issuer: revoking the client",
		"client: token 4 issued",
		"server: 401, the token has expired",
		"tether: closed (tether: handshake answered 401 Unauthorized)",
		"read: tether: handshake answered 401 Unauthorized",
		"server: refused 1 handshake(s): no retry after a 401",
		"tokens issued: 4, links: 3",
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
