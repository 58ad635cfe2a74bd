package clustertest

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/tetherws/tether"
)

// Harness makes the instances the contract suite runs against. They must
// all share one store, and the store must be reachable when Run starts.
type Harness struct {
	// New returns a new instance on the shared store, reached by other
	// instances at advertiseURL, with the liveness lease Lease. Run calls
	// Leave on every instance when its test ends.
	New func(t *testing.T, advertiseURL string) tether.Cluster

	// Lease is the liveness lease of the instances New makes. The suite
	// waits for leases to run out, several times, so a short one (under a
	// second) keeps it fast; it should still be long enough that an
	// instance renewing every RenewInterval on a loaded machine never
	// misses it.
	Lease time.Duration

	// Wipe empties the store, as a restart without persistence does. Nil
	// skips the tests of re-registration.
	Wipe func(t *testing.T)

	// Outage makes the store unreachable (stopped, frozen, cut off) until
	// restore is called. Nil skips the outage test.
	Outage func(t *testing.T) (restore func())

	// CallTimeout is the implementation's bound on one call: while the
	// store is unreachable every call must fail within it (plus slack).
	// Needed with Outage.
	CallTimeout time.Duration
}

// Run runs the contract suite: every behaviour that the tether.Cluster
// documentation promises and a Handler relies on. The subtests run one
// after another, since some of them wipe or stop the shared store.
func Run(t *testing.T, h Harness) {
	t.Helper()
	if h.New == nil || h.Lease <= 0 {
		t.Fatal("clustertest: Harness needs New and a positive Lease")
	}
	s := &suite{h: h}
	tests := []struct {
		name string
		fn   func(t *testing.T)
	}{
		{"ClaimLookupRelease", s.claimLookupRelease},
		{"ReleaseNote", s.releaseNote},
		{"Fencing", s.fencing},
		{"ParkedRoundTrip", s.parkedRoundTrip},
		{"ParkedTTL", s.parkedTTL},
		{"OneWinner", s.oneWinner},
		{"Crash", s.crash},
		{"RenewMany", s.renewMany},
		{"Leave", s.leave},
		{"CanceledContext", s.canceledContext},
		{"WipeReregisters", s.wipeReregisters},
		{"WipeOneOwner", s.wipeOneOwner},
		{"Outage", s.outage},
	}
	for _, tt := range tests {
		t.Run(tt.name, tt.fn)
	}
}

type suite struct {
	h Harness
}

// callTimeout bounds one call of the suite when the store is up.
const callTimeout = 10 * time.Second

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	t.Cleanup(cancel)
	return ctx
}

// NewSessionID returns a random session id.
func NewSessionID() tether.SessionID {
	var id tether.SessionID
	_, _ = rand.Read(id[:])
	return id
}

// instance makes an instance and leaves it when the test ends.
func (s *suite) instance(t *testing.T, name string) tether.Cluster {
	t.Helper()
	c := s.h.New(t, "http://127.0.0.1:8080/"+name)
	if c == nil {
		t.Fatal("Harness.New returned nil")
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		defer cancel()
		if err := c.Leave(ctx); err != nil && !errors.Is(err, net.ErrClosed) && !errors.Is(err, tether.ErrClusterUnavailable) {
			t.Errorf("Leave: %v", err)
		}
	})
	return c
}

// poll calls cond every tenth of a lease until it is true or the deadline
// passes; the last message says what was still wrong.
func (s *suite) poll(t *testing.T, within time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(within)
	tick := time.NewTicker(max(s.h.Lease/10, time.Millisecond))
	defer tick.Stop()
	for {
		ok, msg := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %s", within, msg)
		}
		<-tick.C
	}
}

// settled waits until the store is out of its recovery window, when an
// unknown id reads as OwnerUnknown.
func (s *suite) settled(t *testing.T, c tether.Cluster) {
	t.Helper()
	s.poll(t, 5*s.h.Lease+5*time.Second, func() (bool, string) {
		o, err := c.Lookup(ctxT(t), NewSessionID())
		return err == nil && o.Status == tether.OwnerUnknown, fmt.Sprintf("Lookup of an unknown id: %v, %v", o.Status, err)
	})
}

// keepRenewing calls c.Renew(leases) every RenewInterval until the test
// ends, reporting any error or lost session.
func (s *suite) keepRenewing(t *testing.T, c tether.Cluster, leases []tether.Lease) {
	t.Helper()
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(c.RenewInterval())
		defer tick.Stop()
		for {
			ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
			lost, err := c.Renew(ctx, leases)
			cancel()
			if err != nil || len(lost) > 0 {
				t.Errorf("Renew of %d leases: lost %d, %v", len(leases), len(lost), err)
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	t.Cleanup(func() { close(stop); <-done })
}

func lookup(t *testing.T, c tether.Cluster, id tether.SessionID) tether.Owner {
	t.Helper()
	o, err := c.Lookup(ctxT(t), id)
	if err != nil {
		t.Fatalf("Lookup(%s): %v", id, err)
	}
	return o
}

func wantStatus(t *testing.T, o tether.Owner, want tether.OwnerStatus) {
	t.Helper()
	if o.Status != want {
		t.Fatalf("Lookup: status %v (%+v), want %v", o.Status, o, want)
	}
}

func claim(t *testing.T, c tether.Cluster, id tether.SessionID) tether.Lease {
	t.Helper()
	l, err := c.Claim(ctxT(t), id)
	if err != nil {
		t.Fatalf("Claim: %v", err)
	}
	if l.ID != id || l.Epoch == 0 {
		t.Fatalf("Claim: lease %+v for %s; want its id and a non-zero epoch", l, id)
	}
	return l
}

func renew(t *testing.T, c tether.Cluster, leases ...tether.Lease) []tether.SessionID {
	t.Helper()
	lost, err := c.Renew(ctxT(t), leases)
	if err != nil {
		t.Fatalf("Renew: %v", err)
	}
	return lost
}

func wantErr(t *testing.T, what string, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("%s: error %v, want one wrapping %v", what, err, want)
	}
}

func noErr(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func (s *suite) claimLookupRelease(t *testing.T) {
	a, b := s.instance(t, "a"), s.instance(t, "b")
	s.settled(t, b)
	if a.ID() == "" || a.ID() == b.ID() {
		t.Fatalf("instance ids %q and %q: want distinct, non-empty", a.ID(), b.ID())
	}
	if iv := a.RenewInterval(); iv <= 0 || iv >= s.h.Lease {
		t.Fatalf("RenewInterval %v: want a fraction of the lease %v", iv, s.h.Lease)
	}
	// A new instance joining is no sign that the store lost anything.
	if lost := renew(t, a); len(lost) > 0 {
		t.Fatalf("Renew of nothing: lost %v", lost)
	}
	wantStatus(t, lookup(t, b, NewSessionID()), tether.OwnerUnknown)

	id := NewSessionID()
	l := claim(t, a, id)

	o := lookup(t, a, id)
	wantStatus(t, o, tether.OwnerHere)
	if o.Instance != a.ID() || o.Epoch != l.Epoch {
		t.Fatalf("owner's Lookup: %+v, want instance %s epoch %d", o, a.ID(), l.Epoch)
	}
	// Claim alone makes the owner alive: b sees it, though a never renewed.
	o = lookup(t, b, id)
	wantStatus(t, o, tether.OwnerRemote)
	if o.Instance != a.ID() || o.URL != "http://127.0.0.1:8080/a" || o.Epoch != l.Epoch {
		t.Fatalf("other's Lookup: %+v, want instance %s at http://127.0.0.1:8080/a, epoch %d", o, a.ID(), l.Epoch)
	}

	if l2 := claim(t, a, id); l2 != l {
		t.Fatalf("repeated Claim: %+v, want %+v", l2, l)
	}
	_, err := b.Claim(ctxT(t), id)
	wantErr(t, "Claim of another's session", err, tether.ErrNotOwner)

	noErr(t, "Release", a.Release(ctxT(t), l, nil, 0))
	wantStatus(t, lookup(t, b, id), tether.OwnerUnknown)
	noErr(t, "repeated Release", a.Release(ctxT(t), l, nil, 0))
	wantStatus(t, lookup(t, b, NewSessionID()), tether.OwnerUnknown)
	// The id is free again.
	claim(t, b, id)
}

func (s *suite) releaseNote(t *testing.T) {
	a, b := s.instance(t, "a"), s.instance(t, "b")
	s.settled(t, b)
	id := NewSessionID()
	l := claim(t, a, id)
	note := []byte("ended 1000 bye")
	noErr(t, "Release with a note", a.Release(ctxT(t), l, note, 2*s.h.Lease))
	o := lookup(t, b, id)
	wantStatus(t, o, tether.OwnerEnded)
	if !bytes.Equal(o.Note, note) || o.Instance != a.ID() {
		t.Fatalf("Lookup of an ended session: %+v, want note %q by %s", o, note, a.ID())
	}
	noErr(t, "repeated Release", a.Release(ctxT(t), l, note, 2*s.h.Lease))
	if lost := renew(t, a, l); !slices.Equal(lost, []tether.SessionID{id}) {
		t.Fatalf("Renew of a released session: lost %v, want it", lost)
	}
	_, err := b.Claim(ctxT(t), id)
	wantErr(t, "Claim of an ended session", err, tether.ErrNotOwner)
	s.poll(t, 10*s.h.Lease+5*time.Second, func() (bool, string) {
		o := lookup(t, b, id)
		return o.Status == tether.OwnerUnknown, "the ended record is still there: " + o.Status.String()
	})
}

func (s *suite) fencing(t *testing.T) {
	a, b := s.instance(t, "a"), s.instance(t, "b")
	id := NewSessionID()
	l1 := claim(t, a, id)
	noErr(t, "Park", a.Park(ctxT(t), l1, []byte("one"), 10*s.h.Lease))
	// A parked lease is spent.
	if lost := renew(t, a, l1); !slices.Equal(lost, []tether.SessionID{id}) {
		t.Fatalf("Renew of a parked session: lost %v, want it", lost)
	}
	wantErr(t, "Release of a parked session", a.Release(ctxT(t), l1, nil, 0), tether.ErrNotOwner)

	l2, _, err := b.TakeParked(ctxT(t), id)
	noErr(t, "TakeParked", err)
	if l2.ID != id || l2.Epoch <= l1.Epoch {
		t.Fatalf("TakeParked: lease %+v after %+v: want a greater epoch", l2, l1)
	}
	if lost := renew(t, a, l1); !slices.Equal(lost, []tether.SessionID{id}) {
		t.Fatalf("Renew with the old owner's lease: lost %v, want it", lost)
	}
	wantErr(t, "Release with the old owner's lease", a.Release(ctxT(t), l1, nil, 0), tether.ErrNotOwner)
	wantErr(t, "Park with the old owner's lease", a.Park(ctxT(t), l1, []byte("stale"), s.h.Lease), tether.ErrNotOwner)
	if lost := renew(t, b, l2); len(lost) > 0 {
		t.Fatalf("Renew by the new owner: lost %v", lost)
	}

	// Back to a: the same instance with its old epoch is still fenced off.
	noErr(t, "Park", b.Park(ctxT(t), l2, []byte("two"), 10*s.h.Lease))
	l3, st, err := a.TakeParked(ctxT(t), id)
	noErr(t, "TakeParked", err)
	if l3.Epoch <= l2.Epoch || string(st) != "two" {
		t.Fatalf("TakeParked: lease %+v state %q after %+v: want a greater epoch and state two", l3, st, l2)
	}
	if lost := renew(t, a, l1); !slices.Equal(lost, []tether.SessionID{id}) {
		t.Fatalf("Renew with the owner's own earlier lease: lost %v, want it", lost)
	}
	wantErr(t, "Release with the owner's earlier lease", a.Release(ctxT(t), l1, nil, 0), tether.ErrNotOwner)
	wantErr(t, "Park with the owner's earlier lease", a.Park(ctxT(t), l1, nil, s.h.Lease), tether.ErrNotOwner)
	if lost := renew(t, b, l2); !slices.Equal(lost, []tether.SessionID{id}) {
		t.Fatalf("Renew by the previous owner: lost %v, want it", lost)
	}
	if lost := renew(t, a, l3); len(lost) > 0 {
		t.Fatalf("Renew by the owner: lost %v", lost)
	}
	o := lookup(t, b, id)
	wantStatus(t, o, tether.OwnerRemote)
	if o.Instance != a.ID() || o.Epoch != l3.Epoch {
		t.Fatalf("Lookup after the stale writes: %+v, want %s epoch %d", o, a.ID(), l3.Epoch)
	}
}

func (s *suite) parkedRoundTrip(t *testing.T) {
	a, b, c := s.instance(t, "a"), s.instance(t, "b"), s.instance(t, "c")
	id := NewSessionID()
	l := claim(t, a, id)
	state := make([]byte, 256<<10)
	_, _ = rand.Read(state)
	noErr(t, "Park", a.Park(ctxT(t), l, []byte("first try"), 10*s.h.Lease))
	noErr(t, "repeated Park", a.Park(ctxT(t), l, state, 10*s.h.Lease))
	o := lookup(t, c, id)
	wantStatus(t, o, tether.OwnerParked)
	if o.Instance != a.ID() {
		t.Fatalf("Lookup of a parked session: %+v, want parked by %s", o, a.ID())
	}

	lb, got, err := b.TakeParked(ctxT(t), id)
	noErr(t, "TakeParked", err)
	if !bytes.Equal(got, state) {
		t.Fatalf("TakeParked: %d bytes of state, not the %d parked", len(got), len(state))
	}
	// The winner's answer may be lost: it can take again until it renews.
	lb2, got2, err := b.TakeParked(ctxT(t), id)
	noErr(t, "repeated TakeParked by the winner", err)
	if lb2 != lb || !bytes.Equal(got2, state) {
		t.Fatalf("repeated TakeParked: lease %+v and %d bytes, want %+v and the state", lb2, len(got2), lb)
	}
	_, _, err = c.TakeParked(ctxT(t), id)
	wantErr(t, "TakeParked of a taken session", err, tether.ErrNotParked)
	wantStatus(t, lookup(t, b, id), tether.OwnerHere)
	o = lookup(t, a, id)
	wantStatus(t, o, tether.OwnerRemote)
	if o.Instance != b.ID() || o.URL != "http://127.0.0.1:8080/b" {
		t.Fatalf("Lookup after the take: %+v, want b", o)
	}
	if lost := renew(t, b, lb); len(lost) > 0 {
		t.Fatalf("Renew after the take: lost %v", lost)
	}
	_, _, err = b.TakeParked(ctxT(t), id)
	wantErr(t, "TakeParked after the winner renewed", err, tether.ErrNotParked)

	// An empty state is a state.
	noErr(t, "Park of an empty state", b.Park(ctxT(t), lb, nil, 10*s.h.Lease))
	_, got, err = c.TakeParked(ctxT(t), id)
	noErr(t, "TakeParked of an empty state", err)
	if len(got) != 0 {
		t.Fatalf("TakeParked: %d bytes, want none", len(got))
	}
	_, _, err = c.TakeParked(ctxT(t), NewSessionID())
	wantErr(t, "TakeParked of an unknown session", err, tether.ErrNotParked)
}

func (s *suite) parkedTTL(t *testing.T) {
	a, b := s.instance(t, "a"), s.instance(t, "b")
	s.settled(t, b)
	id := NewSessionID()
	l := claim(t, a, id)
	noErr(t, "Park", a.Park(ctxT(t), l, []byte("state"), s.h.Lease))
	wantStatus(t, lookup(t, b, id), tether.OwnerParked)
	s.poll(t, 10*s.h.Lease+5*time.Second, func() (bool, string) {
		o := lookup(t, b, id)
		return o.Status == tether.OwnerUnknown, "the parked session is still there: " + o.Status.String()
	})
	_, _, err := b.TakeParked(ctxT(t), id)
	wantErr(t, "TakeParked after the TTL", err, tether.ErrNotParked)
}

func (s *suite) oneWinner(t *testing.T) {
	const n, rounds = 8, 10
	owner := s.instance(t, "owner")
	takers := make([]tether.Cluster, n)
	for i := range takers {
		takers[i] = s.instance(t, fmt.Sprintf("t%d", i))
	}
	for range rounds {
		id := NewSessionID()
		l := claim(t, owner, id)
		noErr(t, "Park", owner.Park(ctxT(t), l, []byte("the state"), 10*s.h.Lease))
		var (
			wg      sync.WaitGroup
			start   = make(chan struct{})
			mu      sync.Mutex
			winners []int
			errs    []error
		)
		for i, c := range takers {
			wg.Go(func() {
				<-start
				ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
				defer cancel()
				_, st, err := c.TakeParked(ctx, id)
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err == nil && string(st) == "the state":
					winners = append(winners, i)
				case errors.Is(err, tether.ErrNotParked):
				default:
					errs = append(errs, fmt.Errorf("taker %d: state %q, %w", i, st, err))
				}
			})
		}
		close(start)
		wg.Wait()
		if len(errs) > 0 || len(winners) != 1 {
			t.Fatalf("%d concurrent TakeParked: winners %v, errors %v; want exactly one winner and ErrNotParked for the rest", n, winners, errs)
		}
		wantStatus(t, lookup(t, takers[winners[0]], id), tether.OwnerHere)
	}
}

func (s *suite) crash(t *testing.T) {
	a, b, c := s.instance(t, "a"), s.instance(t, "b"), s.instance(t, "c")
	x, y := NewSessionID(), NewSessionID()
	claim(t, a, x)
	ly := claim(t, c, y)
	s.keepRenewing(t, c, []tether.Lease{ly})
	wantStatus(t, lookup(t, b, x), tether.OwnerRemote)
	// a stops renewing, as a crashed process does; c goes on.
	s.poll(t, 5*s.h.Lease+5*time.Second, func() (bool, string) {
		if o := lookup(t, b, y); o.Status != tether.OwnerRemote {
			t.Fatalf("a renewing owner's session: %v, want remote", o.Status)
		}
		o := lookup(t, b, x)
		if o.Status != tether.OwnerRemote && o.Status != tether.OwnerDead {
			t.Fatalf("a crashed owner's session: %v, want remote, then dead", o.Status)
		}
		return o.Status == tether.OwnerDead, "the crashed owner still looks alive"
	})
}

func (s *suite) renewMany(t *testing.T) {
	const n = 2000
	a, b := s.instance(t, "a"), s.instance(t, "b")
	s.settled(t, b)
	var kept, dropped []tether.Lease
	for i := range n {
		l := claim(t, a, NewSessionID())
		if i%2 == 0 {
			kept = append(kept, l)
		} else {
			dropped = append(dropped, l)
		}
	}
	// One Renew call a tick for all of them; the dropped half is not renewed.
	s.keepRenewing(t, a, kept)
	start := time.Now()
	next := 0
	s.poll(t, 10*s.h.Lease+10*time.Second, func() (bool, string) {
		for i := range 20 {
			l := kept[(next+i)%len(kept)]
			if o := lookup(t, b, l.ID); o.Status != tether.OwnerRemote || o.Epoch != l.Epoch {
				t.Fatalf("a renewed session after %v: %+v, want remote", time.Since(start), o)
			}
		}
		next += 20
		for i, l := range dropped {
			if o := lookup(t, b, l.ID); o.Status != tether.OwnerUnknown {
				return false, fmt.Sprintf("session %d of %d not renewed is still %v", i, len(dropped), o.Status)
			}
		}
		return true, ""
	})
	for _, l := range kept {
		if o := lookup(t, b, l.ID); o.Status != tether.OwnerRemote {
			t.Fatalf("a renewed session after %v: %+v, want remote", time.Since(start), o)
		}
	}
}

func (s *suite) leave(t *testing.T) {
	a, b := s.instance(t, "a"), s.instance(t, "b")
	id := NewSessionID()
	claim(t, a, id)
	wantStatus(t, lookup(t, b, id), tether.OwnerRemote)
	noErr(t, "Leave", a.Leave(ctxT(t)))
	wantStatus(t, lookup(t, b, id), tether.OwnerDead)
	_, err := a.Claim(ctxT(t), NewSessionID())
	wantErr(t, "Claim after Leave", err, net.ErrClosed)
	_, err = a.Lookup(ctxT(t), id)
	wantErr(t, "Lookup after Leave", err, net.ErrClosed)
	wantErr(t, "second Leave", a.Leave(ctxT(t)), net.ErrClosed)
}

func (s *suite) canceledContext(t *testing.T) {
	a := s.instance(t, "a")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := a.Claim(ctx, NewSessionID())
	wantErr(t, "Claim with a canceled context", err, context.Canceled)
	_, err = a.Lookup(ctx, NewSessionID())
	wantErr(t, "Lookup with a canceled context", err, context.Canceled)
	// The caller's canceled context says nothing about the store.
	claim(t, a, NewSessionID())
}

func (s *suite) wipeReregisters(t *testing.T) {
	if s.h.Wipe == nil {
		t.Skip("Harness.Wipe is nil")
	}
	a, b := s.instance(t, "a"), s.instance(t, "b")
	var xs []tether.Lease
	for range 3 {
		xs = append(xs, claim(t, a, NewSessionID()))
	}
	y := claim(t, b, NewSessionID())
	s.h.Wipe(t)

	// Nobody has written anything yet: the owner may still come back.
	wantStatus(t, lookup(t, b, xs[0].ID), tether.OwnerRecovering)
	if lost := renew(t, a, xs...); len(lost) > 0 {
		t.Fatalf("Renew after the store was wiped: lost %v, want the sessions written again", lost)
	}
	if lost := renew(t, b, y); len(lost) > 0 {
		t.Fatalf("Renew after the store was wiped: lost %v", lost)
	}
	for _, l := range xs {
		o := lookup(t, b, l.ID)
		wantStatus(t, o, tether.OwnerRemote)
		if o.Instance != a.ID() || o.Epoch != l.Epoch {
			t.Fatalf("Lookup after re-registration: %+v, want %s epoch %d", o, a.ID(), l.Epoch)
		}
	}
	wantStatus(t, lookup(t, a, y.ID), tether.OwnerRemote)
	// The recovery window ends.
	s.settled(t, b)
}

func (s *suite) wipeOneOwner(t *testing.T) {
	if s.h.Wipe == nil {
		t.Skip("Harness.Wipe is nil")
	}
	a, b := s.instance(t, "a"), s.instance(t, "b")
	for range 5 {
		id := NewSessionID()
		la := claim(t, a, id)
		lb := tether.Lease{ID: id, Epoch: la.Epoch + 1}
		s.h.Wipe(t)
		// Both believe they own it and write it again at once.
		var lostA, lostB []tether.SessionID
		var errA, errB error
		var wg sync.WaitGroup
		start := make(chan struct{})
		wg.Go(func() { <-start; lostA, errA = a.Renew(ctxT(t), []tether.Lease{la}) })
		wg.Go(func() { <-start; lostB, errB = b.Renew(ctxT(t), []tether.Lease{lb}) })
		close(start)
		wg.Wait()
		noErr(t, "Renew by a", errA)
		noErr(t, "Renew by b", errB)
		if len(lostA)+len(lostB) != 1 {
			t.Fatalf("two instances re-registering one session: a lost %v, b lost %v; want exactly one to lose it", lostA, lostB)
		}
		winner, wl := a, la
		if len(lostA) > 0 {
			winner, wl = b, lb
		}
		o := lookup(t, winner, id)
		wantStatus(t, o, tether.OwnerHere)
		if o.Epoch != wl.Epoch {
			t.Fatalf("Lookup: epoch %d, want the winner's %d", o.Epoch, wl.Epoch)
		}
	}
}

func (s *suite) outage(t *testing.T) {
	if s.h.Outage == nil {
		t.Skip("Harness.Outage is nil")
	}
	if s.h.CallTimeout <= 0 {
		t.Fatal("Harness.Outage needs CallTimeout")
	}
	a, b := s.instance(t, "a"), s.instance(t, "b")
	x := claim(t, a, NewSessionID())
	wantStatus(t, lookup(t, b, x.ID), tether.OwnerRemote)

	restore := s.h.Outage(t)
	restored := false
	defer func() {
		if !restored {
			restore()
		}
	}()
	bound := 2*s.h.CallTimeout + time.Second
	var wg sync.WaitGroup
	for i := range 16 {
		c := []tether.Cluster{a, b}[i%2]
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
			defer cancel()
			t0 := time.Now()
			var err error
			switch i % 4 {
			case 0:
				_, err = c.Claim(ctx, NewSessionID())
			case 1:
				_, err = c.Lookup(ctx, x.ID)
			case 2:
				_, err = c.Renew(ctx, []tether.Lease{x})
			case 3:
				_, _, err = c.TakeParked(ctx, x.ID)
			}
			if took := time.Since(t0); took > bound {
				t.Errorf("call %d during the outage took %v, want at most %v", i, took, bound)
			}
			if !errors.Is(err, tether.ErrClusterUnavailable) {
				t.Errorf("call %d during the outage: %v, want ErrClusterUnavailable", i, err)
			}
		})
	}
	wg.Wait()
	// Outlast the leases, as a long outage does.
	<-time.After(s.h.Lease + s.h.Lease/2)
	restore()
	restored = true

	// b asks first, before a had the chance to write anything: the owner
	// must not be declared lost while it may still come back.
	first := true
	s.poll(t, 5*s.h.Lease+10*time.Second, func() (bool, string) {
		o, err := b.Lookup(ctxT(t), x.ID)
		if err == nil && o.Status != tether.OwnerRemote && o.Status != tether.OwnerRecovering {
			t.Fatalf("Lookup after the outage (first: %v): %v, want recovering until the owner renews", first, o.Status)
		}
		first = false
		if _, rerr := a.Renew(ctxT(t), []tether.Lease{x}); rerr != nil && !errors.Is(rerr, tether.ErrClusterUnavailable) {
			t.Fatalf("Renew after the outage: %v", rerr)
		}
		return err == nil && o.Status == tether.OwnerRemote, fmt.Sprintf("Lookup after the outage: %v, %v", o.Status, err)
	})
}
