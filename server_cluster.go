package tether

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"log/slog"
	"net/http"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"
)

// A Handler in a cluster (WithCluster) keeps its sessions in memory, as
// alone, and tells the directory which ones it holds: a session is claimed
// when it opens (before its client learns its id), renewed with all the
// others in one call every RenewInterval from the Handler's one renewal
// goroutine, and released when it ends, with a note saying how, so that a
// client that comes back anywhere is told. Nothing of this is on the
// message path, and nothing in it waits for the directory for long: while
// the directory is out of reach, sessions open and live locally, and are
// claimed once it answers again.

// handlerCluster is a Handler's side of the cluster.
type handlerCluster struct {
	h   *Handler
	c   Cluster
	fwd *forwarder

	mu       sync.Mutex
	owned    map[[16]byte]*Session // session-mode sessions held here, claimed (lease set) or not yet
	releases []release             // releases to make, oldest first
	down     bool                  // the last call failed: new sessions are not claimed until a Renew works
	outage   bool                  // an outage was logged, and its end was not yet
	routes   routeCache
	lookups  tokenBucket
	left     bool

	kick    chan struct{}      // wakes the loop for releases
	loopCtx context.Context    // ends when the loop is told to stop
	stop    context.CancelFunc // tells the loop to stop
	done    chan struct{}      // closed when the loop has returned
}

// release is a session's release, waiting for the renewal goroutine.
type release struct {
	lease Lease
	note  []byte
}

// Bounds of the cluster's bookkeeping.
const (
	// claimWait bounds the Claim a new session makes before its client is
	// greeted; beyond it the session stays local and is claimed later.
	claimWait = time.Second
	// lookupWait bounds a Lookup for a request that resumes a session held
	// elsewhere.
	lookupWait = 2 * time.Second
	// maxReleases bounds the releases kept while the directory is out of
	// reach; beyond it the oldest are dropped (their records run out).
	maxReleases = 65536
	// closeClusterWait bounds what Close spends on releasing its sessions
	// and leaving the cluster.
	closeClusterWait = 5 * time.Second
)

func newHandlerCluster(h *Handler, c Cluster) *handlerCluster {
	cl := &handlerCluster{
		h:       h,
		c:       c,
		owned:   make(map[[16]byte]*Session),
		routes:  newRouteCache(),
		lookups: newTokenBucket(lookupRate, lookupBurst),
		kick:    make(chan struct{}, 1),
		done:    make(chan struct{}),
	}
	cl.loopCtx, cl.stop = context.WithCancel(context.Background())
	cl.fwd = newForwarder(cl)
	go cl.run()
	return cl
}

// register records a session-mode session held here, with its lease, or
// the zero Lease when it is yet to be claimed; h.mu is held.
func (cl *handlerCluster) register(s *Session, l Lease) {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	s.lease = l
	cl.owned[s.id] = s
}

// claimNew claims a new session before its client is greeted, so that a
// client that comes back through another instance is sent here. When the
// directory does not answer in time, the session stays local, and the
// renewal goroutine claims it later.
func (cl *handlerCluster) claimNew(r *http.Request, s *Session) {
	cl.mu.Lock()
	down := cl.down
	cl.mu.Unlock()
	if down {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), claimWait)
	defer cancel()
	l, err := cl.c.Claim(ctx, SessionID(s.id))
	cl.claimed(s, l, err)
}

// claimed records the outcome of a session's Claim.
func (cl *handlerCluster) claimed(s *Session, l Lease, err error) {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	switch {
	case err == nil && cl.owned[s.id] == s:
		s.lease = l
	case err == nil:
		// The session ended while it was being claimed.
		cl.queueLocked(release{lease: l})
	case errors.Is(err, ErrNotOwner):
		// Never for a fresh random id, unless the directory is wrong: the
		// session is served here, unregistered, rather than fought over.
		delete(cl.owned, s.id)
		cl.h.log.Error("cluster: a new session's id is already recorded elsewhere; serving it unregistered",
			slog.String("session", s.idStr), slog.Any("err", err))
	case errors.Is(err, ErrClusterUnavailable):
		cl.down = true
	}
}

// forget takes an ended session out of the directory's view; h.mu is held.
// A session that ended here is released, with a note saying how it ended
// when it leaves a tombstone (a lost one leaves none, and its record goes:
// the client is told it is lost); one that lives on elsewhere, or was
// handed over, is not.
func (cl *handlerCluster) forget(s *Session, code websocket.StatusCode, reason string, ended, tomb bool) {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if cl.owned[s.id] != s {
		return
	}
	delete(cl.owned, s.id)
	l := s.lease
	if !ended || l.Epoch == 0 {
		return
	}
	var note []byte
	if tomb {
		note = encodeNote(s.secret, code, reason)
	}
	cl.queueLocked(release{lease: l, note: note})
}

// queueLocked queues a release for the renewal goroutine; cl.mu is held.
func (cl *handlerCluster) queueLocked(r release) {
	if len(cl.releases) >= maxReleases {
		cl.releases = cl.releases[1:]
	}
	cl.releases = append(cl.releases, r)
	select {
	case cl.kick <- struct{}{}:
	default:
	}
}

// leaseOf returns the lease of a session held here.
func (cl *handlerCluster) leaseOf(s *Session) Lease {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	return s.lease
}

// run is the renewal goroutine: every RenewInterval it renews this
// instance and its sessions, claims those not claimed yet, and makes the
// releases queued; releases are made as soon as they are queued, too.
func (cl *handlerCluster) run() {
	defer close(cl.done)
	t := time.NewTimer(0) // at once: the instance is alive from the start
	defer t.Stop()
	for {
		select {
		case <-cl.loopCtx.Done():
			return
		case <-cl.kick:
			ctx, cancel := context.WithTimeout(cl.loopCtx, cl.tickWait())
			cl.makeReleases(ctx)
			cancel()
			continue
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(cl.loopCtx, cl.tickWait())
		cl.tick(ctx)
		cancel()
		t.Reset(cl.c.RenewInterval())
	}
}

// tickWait bounds one round of the renewal goroutine's calls. Each call is
// bounded by the Cluster's own timeout, which the round must leave room
// for: a caller's ctx that ends first would hide whether the directory
// answered.
func (cl *handlerCluster) tickWait() time.Duration {
	return max(cl.c.RenewInterval(), 5*time.Second)
}

// tick renews, claims and releases, within ctx.
func (cl *handlerCluster) tick(ctx context.Context) {
	cl.mu.Lock()
	leases := make([]Lease, 0, len(cl.owned))
	var pending []*Session
	for _, s := range cl.owned {
		if s.lease.Epoch != 0 {
			leases = append(leases, s.lease)
		} else {
			pending = append(pending, s)
		}
	}
	cl.mu.Unlock()

	lost, err := cl.c.Renew(ctx, leases)
	cl.endMoved(lost)
	cl.health(err)
	if err != nil {
		return
	}
	for _, s := range pending {
		if ctx.Err() != nil {
			return
		}
		l, err := cl.c.Claim(ctx, SessionID(s.id))
		cl.claimed(s, l, err)
		if errors.Is(err, ErrClusterUnavailable) {
			return
		}
	}
	cl.makeReleases(ctx)
}

// health records whether the directory answered, and logs an outage once
// when it begins and once when it ends.
func (cl *handlerCluster) health(err error) {
	down := err != nil
	cl.mu.Lock()
	was := cl.outage
	cl.down, cl.outage = down, down
	cl.mu.Unlock()
	switch {
	case down && !was:
		cl.h.log.Warn("cluster: directory unavailable; sessions open and live locally meanwhile", slog.Any("err", err))
	case !down && was:
		cl.h.log.Info("cluster: directory available again")
	}
}

// endMoved ends the sessions the directory says another instance owns (or
// that were handed over or ended meanwhile): their clients reconnect, with
// 1012, and are sent to the real owner.
func (cl *handlerCluster) endMoved(lost []SessionID) {
	for _, id := range lost {
		cl.mu.Lock()
		s := cl.owned[id]
		cl.mu.Unlock()
		if s == nil {
			continue
		}
		cl.h.log.Warn("cluster: session owned by another instance; closing it here", slog.String("session", s.idStr))
		s.finish(websocket.StatusServiceRestart, "session moved", errOwnedElsewhere, leaveGone)
	}
}

// errOwnedElsewhere ends a session that the directory says another instance owns.
var errOwnedElsewhere = errors.New("tether: session owned by another instance")

// makeReleases makes the releases queued, oldest first, until the
// directory fails to answer.
func (cl *handlerCluster) makeReleases(ctx context.Context) {
	for ctx.Err() == nil {
		cl.mu.Lock()
		if len(cl.releases) == 0 {
			cl.mu.Unlock()
			return
		}
		r := cl.releases[0]
		cl.mu.Unlock()
		err := cl.c.Release(ctx, r.lease, r.note, cl.h.opts.sessionTTL)
		if errors.Is(err, ErrClusterUnavailable) || ctx.Err() != nil {
			return // tried again on the next tick
		}
		cl.mu.Lock()
		if len(cl.releases) > 0 && cl.releases[0].lease == r.lease {
			cl.releases[0] = release{}
			cl.releases = cl.releases[1:]
		}
		cl.mu.Unlock()
	}
}

// stopLoop stops the renewal goroutine and waits for it.
func (cl *handlerCluster) stopLoop() {
	cl.stop()
	<-cl.done
}

// leave makes the releases still queued, takes the instance out of the
// cluster, and stops forwarding, within ctx.
func (cl *handlerCluster) leave(ctx context.Context) {
	cl.stopLoop()
	cl.makeReleases(ctx)
	cl.mu.Lock()
	left := cl.left
	cl.left = true
	cl.mu.Unlock()
	if !left {
		if err := cl.c.Leave(ctx); err != nil {
			cl.h.log.Warn("cluster: leave", slog.Any("err", err))
		}
	}
	cl.fwd.close()
}

// A note is what a released session leaves in the directory: how it ended,
// for a client that comes back on another instance, told only to the
// holder of the session's secret.
//
//	version(1)  sha256(secret)[:16]  code(2, big-endian)  reason...
//
// Only a digest of the secret is kept: the directory can be read by every
// instance, and the secret of a session that still lives elsewhere must
// not be in it.
const noteVersion = 1

func secretDigest(secret [16]byte) [16]byte {
	sum := sha256.Sum256(secret[:])
	return [16]byte(sum[:16])
}

func encodeNote(secret [16]byte, code websocket.StatusCode, reason string) []byte {
	d := secretDigest(secret)
	reason = clipReason(reason)
	b := make([]byte, 0, 1+16+2+len(reason))
	b = append(b, noteVersion)
	b = append(b, d[:]...)
	b = binary.BigEndian.AppendUint16(b, uint16(code))
	return append(b, reason...)
}

// decodeNote returns how a session ended, if note is well formed and
// secret is the session's.
func decodeNote(note []byte, secret [16]byte) (websocket.StatusCode, string, bool) {
	if len(note) < 1+16+2 || note[0] != noteVersion || len(note) > 1+16+2+maxReasonBytes {
		return 0, "", false
	}
	d := secretDigest(secret)
	if subtle.ConstantTimeCompare(note[1:17], d[:]) != 1 {
		return 0, "", false
	}
	code := websocket.StatusCode(binary.BigEndian.Uint16(note[17:19]))
	reason := string(note[19:])
	if code < 1000 || code > 4999 || !utf8.ValidString(reason) {
		return 0, "", false
	}
	return code, reason, true
}

// maxReasonBytes is the longest close reason.
const maxReasonBytes = 123
