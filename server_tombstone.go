package tether

import (
	"crypto/subtle"
	"time"

	"github.com/coder/websocket"
)

// tombstone remembers how a session ended.
type tombstone struct {
	secret [16]byte
	code   websocket.StatusCode
	reason string
	until  time.Time
}

// tombstones remember for a while how ended sessions ended, for clients that
// come back. They all live as long as the session TTL, so they expire in the
// order they were made: expiring them takes the oldest off a queue rather
// than scanning them all under the Handler's lock.
type tombstones struct {
	byID  map[[16]byte]tombstone
	order [][16]byte // ids, oldest first from head; some may be gone
	head  int
}

func newTombstones() tombstones {
	return tombstones{byID: make(map[[16]byte]tombstone)}
}

// add remembers ts for id, dropping the oldest when max are remembered.
func (t *tombstones) add(id [16]byte, ts tombstone, max int) {
	for len(t.byID) >= max && t.head < len(t.order) {
		t.pop()
	}
	t.byID[id] = ts
	t.order = append(t.order, id)
}

// expire forgets the tombstones expired at now.
func (t *tombstones) expire(now time.Time) {
	for t.head < len(t.order) {
		ts, ok := t.byID[t.order[t.head]]
		if ok && now.Before(ts.until) {
			break
		}
		t.pop()
	}
}

// pop forgets the oldest tombstone.
func (t *tombstones) pop() {
	delete(t.byID, t.order[t.head])
	t.order[t.head] = [16]byte{}
	t.head++
	if t.head == len(t.order) {
		t.order, t.head = t.order[:0], 0
	} else if t.head >= 64 && t.head >= len(t.order)/2 {
		n := copy(t.order, t.order[t.head:])
		t.order, t.head = t.order[:n], 0
	}
}

// find returns the tombstone of the session id, if secret is its own and it
// has not expired at now.
func (t *tombstones) find(id, secret [16]byte, now time.Time) (tombstone, bool) {
	ts, ok := t.byID[id]
	if !ok || !now.Before(ts.until) || subtle.ConstantTimeCompare(ts.secret[:], secret[:]) != 1 {
		return tombstone{}, false
	}
	return ts, true
}

// len returns how many tombstones are kept, expired ones included.
func (t *tombstones) len() int { return len(t.byID) }
