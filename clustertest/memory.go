package clustertest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/tetherws/tether"
)

// DefaultLease is the liveness lease of a Store made with a zero lease.
const DefaultLease = 10 * time.Second

// recordLeases is how many liveness leases a session's record outlives its
// last renewal, so that a crashed owner's sessions read as OwnerDead for a
// while before they are forgotten, and a short store outage does not drop
// records that owners can still renew.
const recordLeases = 3

// Store is an in-memory directory shared by the Memory instances made from
// it, as a Redis server is shared by tetherredis instances. It lives in one
// process, so it serves tests and single-process setups, not a deployment.
// A Store may be used from several goroutines.
type Store struct {
	lease time.Duration

	mu      sync.Mutex
	records map[tether.SessionID]*record
	alive   map[string]liveness
	born    bool      // the directory exists; false when new or wiped
	settle  time.Time // Lookup says OwnerRecovering rather than lost until then
	down    bool
	swept   time.Time
}

type recordState int

const (
	owned  recordState = iota
	taken              // owned, and the parked state is kept until the first Renew
	parked             // given up; data is the state
	ended              // released with a note; data is the note
)

type record struct {
	inst  string
	epoch uint64
	state recordState
	data  []byte
	until time.Time
}

type liveness struct {
	url   string
	until time.Time
}

// NewStore returns an empty Store whose instances have the given liveness
// lease (0 means DefaultLease) and renew every third of it.
func NewStore(lease time.Duration) *Store {
	if lease <= 0 {
		lease = DefaultLease
	}
	return &Store{lease: lease, records: make(map[tether.SessionID]*record), alive: make(map[string]liveness)}
}

// Join returns a new instance on the store, reached by other instances at
// advertiseURL. Each call is a new instance with a new id.
func (s *Store) Join(advertiseURL string) *Memory {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return &Memory{store: s, id: hex.EncodeToString(b[:]), url: advertiseURL}
}

// Wipe forgets everything, as a store restarted without persistence does.
func (s *Store) Wipe() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.records = make(map[tether.SessionID]*record)
	s.alive = make(map[string]liveness)
	s.born = false
	s.settle = time.Time{}
}

// SetDown makes every call of every instance fail with
// tether.ErrClusterUnavailable while down is true, as an unreachable store
// does.
func (s *Store) SetDown(down bool) {
	s.mu.Lock()
	s.down = down
	s.mu.Unlock()
}

// Len returns the number of session records the store holds, expired ones
// included until they are swept.
func (s *Store) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.records)
}

// get returns id's record if it has not expired. s.mu is held.
func (s *Store) get(id tether.SessionID, now time.Time) *record {
	r := s.records[id]
	if r != nil && !now.Before(r.until) {
		delete(s.records, id)
		return nil
	}
	return r
}

// touch creates the directory if the store is new or was wiped, and then
// opens the recovery window: owners have not written their records again
// yet. s.mu is held.
func (s *Store) touch(now time.Time) {
	if !s.born {
		s.born = true
		s.settle = now.Add(s.lease)
	}
}

// sweep drops expired records, at most once a lease, so that a store
// whose sessions are never looked up again does not grow. s.mu is held.
func (s *Store) sweep(now time.Time) {
	if now.Sub(s.swept) < s.lease {
		return
	}
	s.swept = now
	for id, r := range s.records {
		if !now.Before(r.until) {
			delete(s.records, id)
		}
	}
	for id, l := range s.alive {
		if !now.Before(l.until) {
			delete(s.alive, id)
		}
	}
}

// Memory is an instance on a Store: a tether.Cluster that keeps its
// directory in memory, with the same semantics as tetherredis. Make one
// with Store.Join.
type Memory struct {
	store *Store
	id    string
	url   string

	// Guarded by store.mu.
	joined  bool      // this instance has written its liveness
	trouble time.Time // store calls failed until recently: Lookup is unsure
	failing bool      // the last call failed
	left    bool
}

var _ tether.Cluster = (*Memory)(nil)

// ID returns the instance's id.
func (m *Memory) ID() string { return m.id }

// URL returns the URL the instance was joined with.
func (m *Memory) URL() string { return m.url }

// RenewInterval returns a third of the store's lease.
func (m *Memory) RenewInterval() time.Duration { return m.store.lease / 3 }

// begin locks the store and checks the instance and the store can serve a
// call. On success the caller must unlock store.mu.
func (m *Memory) begin(ctx context.Context, op string) (time.Time, error) {
	if err := ctx.Err(); err != nil {
		return time.Time{}, fmt.Errorf("tether: cluster: %s: %w", op, err)
	}
	s := m.store
	s.mu.Lock()
	now := time.Now()
	if m.left {
		s.mu.Unlock()
		return now, fmt.Errorf("tether: cluster: %s: instance left: %w", op, net.ErrClosed)
	}
	if s.down {
		m.failing = true
		m.trouble = now.Add(s.lease)
		s.mu.Unlock()
		return now, fmt.Errorf("tether: cluster: %s: %w", op, tether.ErrClusterUnavailable)
	}
	if m.failing {
		// The store is back: other instances may not have renewed yet.
		m.failing = false
		m.trouble = now.Add(s.lease)
	}
	return now, nil
}

// live marks the instance alive. store.mu is held.
func (m *Memory) live(now time.Time) (wasAlive bool) {
	l, ok := m.store.alive[m.id]
	wasAlive = ok && now.Before(l.until)
	m.store.alive[m.id] = liveness{url: m.url, until: now.Add(m.store.lease)}
	m.joined = true
	return wasAlive
}

func (m *Memory) recordTTL() time.Duration { return recordLeases * m.store.lease }

// Claim records a new session as this instance's.
func (m *Memory) Claim(ctx context.Context, id tether.SessionID) (tether.Lease, error) {
	now, err := m.begin(ctx, "claim")
	if err != nil {
		return tether.Lease{}, err
	}
	s := m.store
	defer s.mu.Unlock()
	s.touch(now)
	m.live(now)
	r := s.get(id, now)
	switch {
	case r == nil:
		s.records[id] = &record{inst: m.id, epoch: 1, until: now.Add(m.recordTTL())}
		return tether.Lease{ID: id, Epoch: 1}, nil
	case r.inst == m.id && (r.state == owned || r.state == taken):
		return tether.Lease{ID: id, Epoch: r.epoch}, nil
	}
	return tether.Lease{}, fmt.Errorf("tether: cluster: claim %s: %w", id, tether.ErrNotOwner)
}

// Lookup tells who owns a session.
func (m *Memory) Lookup(ctx context.Context, id tether.SessionID) (tether.Owner, error) {
	now, err := m.begin(ctx, "lookup")
	if err != nil {
		return tether.Owner{}, err
	}
	s := m.store
	defer s.mu.Unlock()
	s.touch(now)
	unsure := now.Before(s.settle) || now.Before(m.trouble)
	r := s.get(id, now)
	if r == nil {
		if unsure {
			return tether.Owner{Status: tether.OwnerRecovering}, nil
		}
		return tether.Owner{Status: tether.OwnerUnknown}, nil
	}
	o := tether.Owner{Instance: r.inst, Epoch: r.epoch}
	switch {
	case r.state == parked:
		o.Status = tether.OwnerParked
	case r.state == ended:
		o.Status = tether.OwnerEnded
		o.Note = append([]byte(nil), r.data...)
	case r.inst == m.id:
		o.Status = tether.OwnerHere
	default:
		if l, ok := s.alive[r.inst]; ok && now.Before(l.until) {
			o.Status, o.URL = tether.OwnerRemote, l.url
		} else if unsure {
			o.Status = tether.OwnerRecovering
		} else {
			o.Status = tether.OwnerDead
		}
	}
	return o, nil
}

// Renew keeps the instance alive and extends its sessions' records.
func (m *Memory) Renew(ctx context.Context, leases []tether.Lease) ([]tether.SessionID, error) {
	now, err := m.begin(ctx, "renew")
	if err != nil {
		return nil, err
	}
	s := m.store
	defer s.mu.Unlock()
	s.touch(now)
	joined := m.joined
	recovered := !m.live(now) && joined
	s.sweep(now)
	var lost []tether.SessionID
	made := 0
	for _, l := range leases {
		r := s.get(l.ID, now)
		switch {
		case r == nil:
			s.records[l.ID] = &record{inst: m.id, epoch: l.Epoch, until: now.Add(m.recordTTL())}
			made++
		case r.inst == m.id && r.epoch == l.Epoch && (r.state == owned || r.state == taken):
			r.state, r.data = owned, nil
			r.until = now.Add(m.recordTTL())
		default:
			lost = append(lost, l.ID)
		}
	}
	if recovered || made > 0 {
		s.settle = now.Add(s.lease)
	}
	return lost, nil
}

// Release ends the instance's ownership of a session.
func (m *Memory) Release(ctx context.Context, l tether.Lease, note []byte, ttl time.Duration) error {
	now, err := m.begin(ctx, "release")
	if err != nil {
		return err
	}
	s := m.store
	defer s.mu.Unlock()
	r := s.get(l.ID, now)
	if r != nil && (r.inst != m.id || r.epoch != l.Epoch || r.state == parked) {
		return fmt.Errorf("tether: cluster: release %s: %w", l.ID, tether.ErrNotOwner)
	}
	if r != nil && r.state == ended {
		return nil // a repeated Release
	}
	if len(note) == 0 || ttl <= 0 {
		delete(s.records, l.ID)
		return nil
	}
	s.records[l.ID] = &record{inst: m.id, epoch: l.Epoch, state: ended, data: append([]byte(nil), note...), until: now.Add(ttl)}
	return nil
}

// Park gives a session up for handoff, with its state, for ttl.
func (m *Memory) Park(ctx context.Context, l tether.Lease, state []byte, ttl time.Duration) error {
	now, err := m.begin(ctx, "park")
	if err != nil {
		return err
	}
	s := m.store
	defer s.mu.Unlock()
	r := s.get(l.ID, now)
	if r != nil && (r.inst != m.id || r.epoch != l.Epoch || r.state == ended) {
		return fmt.Errorf("tether: cluster: park %s: %w", l.ID, tether.ErrNotOwner)
	}
	if ttl <= 0 {
		delete(s.records, l.ID)
		return nil
	}
	s.records[l.ID] = &record{inst: m.id, epoch: l.Epoch, state: parked, data: append([]byte{}, state...), until: now.Add(ttl)}
	return nil
}

// TakeParked makes the instance the owner of a parked session.
func (m *Memory) TakeParked(ctx context.Context, id tether.SessionID) (tether.Lease, []byte, error) {
	now, err := m.begin(ctx, "take")
	if err != nil {
		return tether.Lease{}, nil, err
	}
	s := m.store
	defer s.mu.Unlock()
	r := s.get(id, now)
	switch {
	case r != nil && r.state == parked:
		m.live(now)
		r.inst, r.epoch, r.state = m.id, r.epoch+1, taken
		r.until = now.Add(m.recordTTL())
	case r != nil && r.state == taken && r.inst == m.id:
		m.live(now)
	default:
		return tether.Lease{}, nil, fmt.Errorf("tether: cluster: take %s: %w", id, tether.ErrNotParked)
	}
	return tether.Lease{ID: id, Epoch: r.epoch}, append([]byte{}, r.data...), nil
}

// Leave removes the instance's liveness; later calls fail.
func (m *Memory) Leave(ctx context.Context) error {
	s := m.store
	s.mu.Lock()
	defer s.mu.Unlock()
	if m.left {
		return fmt.Errorf("tether: cluster: leave: %w", net.ErrClosed)
	}
	m.left = true
	if s.down {
		// The liveness record stays until its lease runs out.
		return fmt.Errorf("tether: cluster: leave: %w", tether.ErrClusterUnavailable)
	}
	delete(s.alive, m.id)
	return nil
}
