//go:build unix

package tetherredis_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/tetherws/tether"
	"github.com/tetherws/tether/internal/nginxtest"
	"github.com/tetherws/tether/tetherredis/internal/redistest"
)

// Three instances behind a real nginx upstream, round robin, that does not
// pass the WebSocket upgrade: the clients fall back to long polling, and
// each poll and send lands on another instance than the last. Every
// message is delivered once, each way, and each session's serve started
// once. Then each instance in turn is shut down and started again on its
// address, as a deploy does, with the clients polling throughout.
func TestHandlersBehindNginx(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	lg := newLedger()
	ins := startInstances(t, srv, lg, 3)
	ngx := nginxtest.StartFile(t, "testdata/nginx/cluster-strip-upgrade.conf.tmpl", addrs(ins)...)
	url := "ws://" + ngx.Addr + "/ws"
	var talkers []*talker
	for i := range 4 {
		tk := newTalker(t, "p"+string(rune('0'+i)), url, tether.WithFallback(""))
		if tk.c.Transport() != tether.Polling {
			t.Fatalf("%s: on %v; nginx should have stripped the upgrade", tk.name, tk.c.Transport())
		}
		tk.run(5 * time.Millisecond)
		talkers = append(talkers, tk)
	}
	before := srv.CommandCalls(t)
	start := time.Now()
	time.Sleep(2 * time.Second)
	after := srv.CommandCalls(t)
	elapsed := time.Since(start)
	forwarded := uint64(0)
	for _, in := range ins {
		forwarded += in.h.Stats().Forwarded
	}
	if forwarded == 0 {
		t.Fatal("no poll was forwarded: nginx did not spread them")
	}
	for _, tk := range talkers {
		if n := tk.c.Stats().Reconnects; n != 0 {
			t.Errorf("%s: %d reconnects: its polls did not all reach its session", tk.name, n)
		}
	}
	// Polls reuse the directory's answer for a renewal interval: the
	// round trips to Redis are the renewals, and a lookup per session and
	// instance per interval at most, however many polls there are.
	calls := after["evalsha"] + after["eval"] - before["evalsha"] - before["eval"]
	intervals := elapsed.Seconds()/(testLease/3).Seconds() + 1
	bound := intervals * float64(len(ins)+len(talkers)*len(ins))
	t.Logf("in %v: %d requests forwarded, %d Redis round trips (bound %.0f)", elapsed.Round(time.Millisecond), forwarded, calls, bound)
	if float64(calls) > bound+5 {
		t.Errorf("%d Redis round trips for %d forwarded requests in %v: polls are not reusing the directory's answer", calls, forwarded, elapsed)
	}

	for i, old := range ins {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := old.h.Shutdown(ctx); err != nil {
			t.Errorf("%s: Shutdown: %v", old.name, err)
		}
		cancel()
		t.Logf("%s: %d sessions handed over", old.name, old.h.Stats().HandedOver)
		addr := old.addr()
		old.stop()
		ins[i] = startInstanceAt(t, srv, old.name+"'", addr, lg)
		time.Sleep(500 * time.Millisecond)
	}
	finishAll(t, talkers)
	starts := lg.check(t, 3)
	if len(starts) != len(talkers) {
		t.Errorf("%d sessions for %d clients: %v", len(starts), len(talkers), starts)
	}
	for _, tk := range talkers {
		if r, h := tk.lostCount(); r+h > 0 {
			t.Errorf("%s: session lost (%d, %d)", tk.name, r, h)
		}
	}
	if t.Failed() {
		log, _ := ngx.File("access.log")
		lines := strings.Split(log, "\n")
		t.Logf("nginx access log, last lines:\n%s", strings.Join(lines[max(0, len(lines)-30):], "\n"))
	}
}
