package tetherredis_test

import (
	"context"
	"encoding/hex"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/tetherws/tether"
	"github.com/tetherws/tether/tetherredis"
	"github.com/tetherws/tether/tetherredis/internal/redistest"
)

// Three instances behind a round-robin balancer that cuts every link
// again and again: each reconnect lands on another instance than the last,
// and finds its session. Nothing is lost or repeated, either way, and each
// session's serve started once.
func TestHandlersBehindCuttingBalancer(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	lg := newLedger()
	ins := startInstances(t, srv, lg, 3)
	b := newBalancer(t, addrs(ins)...)
	talkers := startTalkers(t, b.wsURL(), 6)
	for range 12 {
		time.Sleep(300 * time.Millisecond)
		b.cut()
	}
	finishAll(t, talkers)
	starts := lg.check(t, 0)
	if len(starts) != len(talkers) {
		t.Errorf("%d sessions for %d clients: %v", len(starts), len(talkers), starts)
	}
	forwarded := uint64(0)
	for _, in := range ins {
		forwarded += in.h.Stats().Forwarded
	}
	if forwarded == 0 {
		t.Error("no request was forwarded: the test did not test forwarding")
	}
	t.Logf("forwarded requests: %d", forwarded)
}

// A rolling deploy under load: each instance in turn is taken out of the
// balancer and shut down, and a new one takes its place. Every session is
// handed over, never lost, and every message is delivered once.
func TestHandlersRollingDeploy(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	lg := newLedger()
	ins := startInstances(t, srv, lg, 3)
	b := newBalancer(t, addrs(ins)...)
	talkers := startTalkers(t, b.wsURL(), 6)
	time.Sleep(300 * time.Millisecond)
	handed := uint64(0)
	for i := range ins {
		old := ins[i]
		ins[i] = startInstance(t, srv, fmt.Sprintf("%s'", old.name), lg)
		b.setBackends(addrs(ins)...)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		start := time.Now()
		if err := old.h.Shutdown(ctx); err != nil {
			t.Errorf("%s: Shutdown: %v", old.name, err)
		}
		cancel()
		handed += old.h.Stats().HandedOver
		t.Logf("%s: shut down in %v, %d sessions handed over", old.name, time.Since(start).Round(time.Millisecond), old.h.Stats().HandedOver)
		old.stop()
		time.Sleep(300 * time.Millisecond)
	}
	finishAll(t, talkers)
	starts := lg.check(t, 3)
	if len(starts) != len(talkers) {
		t.Errorf("%d sessions for %d clients: %v", len(starts), len(talkers), starts)
	}
	if handed == 0 {
		t.Error("no session was handed over: the test did not test handoffs")
	}
	for _, tk := range talkers {
		if r, h := tk.lostCount(); r+h > 0 {
			t.Errorf("%s: session lost (%d, %d)", tk.name, r, h)
		}
	}
}

// An instance that crashes (no Shutdown) loses its sessions: each of their
// clients is told once, within the owner's liveness lease and a retry, and
// goes on with a new session. The other instances' sessions lose nothing.
//
// The lease is longer here than in the other tests, so that "within the
// lease and a retry" (the owner's liveness key runs out at most a lease
// after the crash; the client was told to come back after a second) is
// told apart from "when the records run out" (three leases).
func TestHandlersCrash(t *testing.T) {
	t.Parallel()
	const lease = 1500 * time.Millisecond
	srv := redistest.Start(t)
	lg := newLedger()
	ins := make([]*instance, 3)
	for i := range ins {
		ins[i] = startLeased(t, srv, string(rune('a'+i)), "127.0.0.1:0", lease, lg.echo)
	}
	b := newBalancer(t, addrs(ins)...)
	talkers := startTalkers(t, b.wsURL(), 6)
	time.Sleep(300 * time.Millisecond)
	victim := ins[0]
	onVictim := victim.h.Sessions()
	if onVictim == 0 {
		t.Fatal("the balancer put no session on the first instance")
	}
	b.setBackends(ins[1].addr(), ins[2].addr())
	crashed := time.Now()
	victim.crash()
	b.cut()
	// The lease, one Retry-After (1 s), and a reconnect.
	deadline := crashed.Add(lease + 2*time.Second)
	for {
		lost := 0
		for _, tk := range talkers {
			if r, _ := tk.lostCount(); r > 0 {
				lost++
			}
		}
		if lost == onVictim {
			t.Logf("%d clients told within %v of the crash", lost, time.Since(crashed).Round(time.Millisecond))
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d clients of the crashed instance told within %v", lost, onVictim, time.Since(crashed))
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)
	finishAll(t, talkers)
	lg.checkFrom(t, 0, false)
	told := 0
	for _, tk := range talkers {
		r, h := tk.lostCount()
		if r != h || r > 1 {
			t.Errorf("%s: told %d times (Read), %d (state hook); want once at most, both ways", tk.name, r, h)
		}
		told += r
	}
	if told != onVictim {
		t.Errorf("%d clients told their session was lost; %d were on the crashed instance", told, onVictim)
	}
}

// Redis killed, and started again empty: the links up keep working
// meanwhile, new sessions open, and once Redis is back the instances write
// their sessions again within a renewal or two, so that the clients,
// cut off afterwards, resume on other instances without a loss.
func TestHandlersRedisRestartedEmpty(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	lg := newLedger()
	logs := &recorder{}
	ins := startInstances(t, srv, lg, 3, tether.WithHandlerLogger(slog.New(logs)))
	b := newBalancer(t, addrs(ins)...)
	talkers := startTalkers(t, b.wsURL(), 6)
	time.Sleep(300 * time.Millisecond)

	srv.Kill()
	time.Sleep(3 * testLease)
	late := startTalkers(t, b.wsURL(), 3, "late")
	time.Sleep(300 * time.Millisecond)
	for _, tk := range append(talkers, late...) {
		if sent, got := tk.counts(); got == 0 || sent == 0 {
			t.Errorf("%s: no traffic during the outage (%d sent, %d echoed)", tk.name, sent, got)
		}
	}
	srv.Restart()
	rdb := srv.Client(t)
	probe := tetherredis.New(rdb, "http://127.0.0.1:1/probe", tetherredis.WithLease(testLease))
	t.Cleanup(func() { _ = probe.Leave(context.Background()) })
	ids := lg.sessionIDs()
	deadline := time.Now().Add(3 * time.Second)
	for {
		missing := 0
		for _, id := range ids {
			o, err := probe.Lookup(context.Background(), id)
			if err != nil || o.Status != tether.OwnerRemote {
				missing++
			}
		}
		if missing == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d sessions not recorded again within 3 s", missing, len(ids))
		}
		time.Sleep(50 * time.Millisecond)
	}
	b.cut()
	time.Sleep(500 * time.Millisecond)
	finishAll(t, append(talkers, late...))
	lg.check(t, 0)
	for _, tk := range append(talkers, late...) {
		if r, h := tk.lostCount(); r+h > 0 {
			t.Errorf("%s: session lost (%d, %d)", tk.name, r, h)
		}
	}
	if n := logs.count("WARN cluster: directory unavailable; sessions open and live locally meanwhile"); n != len(ins) {
		t.Errorf("outage logged %d times by %d instances; want once each: %v", n, len(ins), logs.all())
	}
}

// Redis frozen (it holds connections and answers nothing, as a hung server
// or a network partition does) for longer than its records live: the
// links up keep working, new sessions open without waiting on Redis
// beyond the call timeout, clients cut off meanwhile resume (forwarded to
// the owner last known, or on the owner after a retry), and each instance
// logs the outage once. Thawed, Redis has let the records run out: the
// instances write them again, and no session is lost.
func TestHandlersRedisFrozen(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	lg := newLedger()
	logs := &recorder{}
	ins := startInstances(t, srv, lg, 3, tether.WithHandlerLogger(slog.New(logs)))
	b := newBalancer(t, addrs(ins)...)
	talkers := startTalkers(t, b.wsURL(), 6)
	time.Sleep(300 * time.Millisecond)

	srv.Freeze()
	thawed := false
	defer func() {
		if !thawed {
			srv.Thaw()
		}
	}()
	frozen := time.Now()
	before := make([]int, len(talkers))
	for i, tk := range talkers {
		_, before[i] = tk.counts()
	}
	start := time.Now()
	late := startTalkers(t, b.wsURL(), 3, "late")
	// Each dial may wait for one Claim, bounded by the call timeout.
	if took := time.Since(start); took > 3*(testCallTimeout+time.Second) {
		t.Errorf("3 new sessions took %v to open while Redis was frozen", took)
	}
	b.cut()
	// The records live three leases: wait that long before the thaw.
	time.Sleep(3*testLease - time.Since(frozen) + 200*time.Millisecond)
	for i, tk := range talkers {
		if _, got := tk.counts(); got <= before[i] {
			t.Errorf("%s: no echo while Redis was frozen (%d before, %d after)", tk.name, before[i], got)
		}
	}
	srv.Thaw()
	thawed = true
	// Cut at once: the clients come back before their owners have
	// written their records again, and must be told "try again", not
	// "lost".
	b.cut()
	time.Sleep(testLease)
	finishAll(t, append(talkers, late...))
	lg.check(t, 0)
	for _, tk := range append(talkers, late...) {
		if r, h := tk.lostCount(); r+h > 0 {
			t.Errorf("%s: session lost (%d, %d)", tk.name, r, h)
		}
	}
	if n := logs.count("WARN cluster: directory unavailable; sessions open and live locally meanwhile"); n != len(ins) {
		t.Errorf("outage logged %d times by %d instances; want once each: %v", n, len(ins), logs.all())
	}
}

// A steady stream of messages costs Redis nothing per message: the only
// calls during it are the instances' renewals, one script call per
// instance per tick, whatever the number of messages.
func TestHandlersRedisCommandsPerMessage(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	lg := newLedger()
	ins := startInstances(t, srv, lg, 3)
	b := newBalancer(t, addrs(ins)...)
	talkers := startTalkers(t, b.wsURL(), 3)
	time.Sleep(200 * time.Millisecond)
	before := srv.CommandCalls(t)
	sent0 := 0
	for _, tk := range talkers {
		s, _ := tk.counts()
		sent0 += s
	}
	start := time.Now()
	time.Sleep(2 * time.Second)
	after := srv.CommandCalls(t)
	elapsed := time.Since(start)
	sent := -sent0
	for _, tk := range talkers {
		s, _ := tk.counts()
		sent += s
	}
	finishAll(t, talkers)
	diff := map[string]int64{}
	for k, v := range after {
		if d := v - before[k]; d > 0 {
			diff[k] = d
		}
	}
	diff["info"]-- // the first CommandCalls
	// Each instance renews every third of the lease.
	ticks := float64(len(ins)) * (elapsed.Seconds()/(testLease/3).Seconds() + 1)
	calls := diff["evalsha"] + diff["eval"]
	t.Logf("%d messages each way; Redis round trips (script calls): %d for %.1f renewal ticks; every command, scripts' included: %v",
		sent, calls, ticks, diff)
	if sent < 500 {
		t.Fatalf("only %d messages: the stream was not steady", sent)
	}
	if float64(calls) > ticks+5 {
		t.Errorf("%d script calls for %.1f renewal ticks and %d messages", calls, ticks, sent)
	}
	for k := range diff {
		switch k {
		case "evalsha", "eval", "exists", "set", "hmget", "hset", "pexpire", "hdel", "info":
		default:
			t.Errorf("command %s during the stream: not a renewal's", k)
		}
	}
}

func startInstances(t *testing.T, srv *redistest.Server, lg *ledger, n int, opts ...tether.HandlerOption) []*instance {
	t.Helper()
	ins := make([]*instance, n)
	for i := range ins {
		ins[i] = startInstance(t, srv, string(rune('a'+i)), lg, opts...)
	}
	return ins
}

func addrs(ins []*instance) []string {
	var a []string
	for _, in := range ins {
		a = append(a, in.addr())
	}
	return a
}

// startTalkers dials n clients through url and starts them talking, one
// message every 5 ms each.
func startTalkers(t *testing.T, url string, n int, prefix ...string) []*talker {
	t.Helper()
	p := "c"
	if len(prefix) > 0 {
		p = prefix[0]
	}
	var tks []*talker
	for i := range n {
		tk := newTalker(t, fmt.Sprintf("%s%d", p, i), url)
		tk.run(5 * time.Millisecond)
		tks = append(tks, tk)
	}
	return tks
}

func finishAll(t *testing.T, tks []*talker) {
	t.Helper()
	for _, tk := range tks {
		tk.stopWriting()
	}
	for _, tk := range tks {
		tk.finish(t, 15*time.Second)
	}
}

// sessionIDs returns the sessions the serve functions saw.
func (lg *ledger) sessionIDs() []tether.SessionID {
	lg.mu.Lock()
	defer lg.mu.Unlock()
	var ids []tether.SessionID
	for s := range lg.starts {
		var id tether.SessionID
		if _, err := hex.Decode(id[:], []byte(s)); err == nil {
			ids = append(ids, id)
		}
	}
	return ids
}
