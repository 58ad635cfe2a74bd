package tether

import (
	"context"
	"encoding/hex"
	"errors"
	"strconv"
	"time"
)

// Cluster is the shared directory that lets several Handler instances serve
// one set of sessions. Each instance owns the sessions whose serve functions
// it runs, and keeps their messages in memory; the Cluster only records who
// owns what, so that a request landing on another instance can be sent to
// the owner, and moves the state of sessions whose owner shuts down. Nothing
// in it is called per message.
//
// A Cluster value stands for one instance: its [Cluster.ID], and the URL
// other instances reach it at (given to the implementation's constructor,
// as in tetherredis.New). The package tetherredis implements it on Redis;
// package clustertest holds an in-memory implementation and the contract
// suite that any implementation (NATS, etcd, ...) should pass.
//
// # Ownership and fencing
//
// A session's record in the directory names its owner instance and an
// epoch. A [Lease] (session id and epoch) is the owner's proof: every write
// about a session (Renew, Release, Park) carries it and succeeds only while
// the record still names this instance with that epoch; otherwise it fails
// with an error wrapping [ErrNotOwner], and the caller must stop serving the
// session. Epochs grow each time a session changes owner, so a lease from an
// earlier tenure, even of the same instance, never passes. The check and the
// write are one atomic step in the store (a Lua script in Redis): two
// instances never both own a session.
//
// # Liveness
//
// The owner keeps itself and its sessions alive by calling [Cluster.Renew]
// every [Cluster.RenewInterval], with the leases of every session it owns;
// [Cluster.Claim] and [Cluster.TakeParked] also mark the instance alive.
// An instance that stops calling them (it crashed, or hangs) is reported
// [OwnerDead] within its liveness lease (10 s by default in tetherredis),
// and its sessions are lost: their records read OwnerDead for a while, then
// are forgotten (OwnerUnknown). The Cluster starts no goroutine of its own
// to stay alive: liveness is proof that the owner's renewal loop is
// running.
//
// # Store outages
//
// Every method bounds its store calls by a timeout of the implementation's
// (and by ctx), and fails fast, with an error wrapping
// [ErrClusterUnavailable], while the store is unreachable. A caller's ctx
// that ends first gives the caller's error (context.Canceled or
// context.DeadlineExceeded), which says nothing about the store. An
// instance keeps serving the sessions it owns meanwhile. When the store
// comes back, even empty, the next Renew writes this instance's records
// again: a record that is missing is taken to have been lost by the store,
// and is recreated from the lease. For about one liveness lease after the store lost records or
// was unreachable, [Cluster.Lookup] answers [OwnerRecovering] instead of
// [OwnerDead] or [OwnerUnknown], since owners may not have written their
// records again yet.
//
// # Concurrency
//
// All methods may be called from several goroutines at once.
type Cluster interface {
	// ID returns this instance's id, unique among live instances (a new
	// one for every instance made, so a restarted process is a new
	// instance). It is what Owner.Instance names.
	ID() string

	// RenewInterval returns how often the owner must call Renew to stay
	// alive: a fraction of the liveness lease, so that one late or failed
	// call does not make the instance look dead.
	RenewInterval() time.Duration

	// Claim records a new session as owned by this instance and returns
	// its lease. It fails with ErrNotOwner if the id already has a record
	// that is not this instance's. Claim is idempotent: a Claim whose
	// answer was lost may be repeated and returns the same lease.
	Claim(ctx context.Context, id SessionID) (Lease, error)

	// Lookup tells who owns a session. It writes nothing the caller could
	// notice, and is what an instance asks about a session it does not
	// hold in memory.
	Lookup(ctx context.Context, id SessionID) (Owner, error)

	// Renew keeps this instance alive and extends the leases of the
	// sessions it owns, in one batch for all of them. A session whose
	// record is missing (the store lost it, or its lease ran out while the
	// store was unreachable) is recorded again from its lease, unless
	// another record appeared meanwhile. lost lists the sessions this
	// instance no longer owns (another owner or a newer epoch, parked or
	// ended): the caller must stop serving them. Never pass a lease that
	// was given up (parked or released): its record would be recreated.
	//
	// On an error, lost lists what was found lost before the failure, and
	// the next call tries again.
	Renew(ctx context.Context, leases []Lease) (lost []SessionID, err error)

	// Release ends this instance's ownership of an ended session. With a
	// non-empty note and a positive ttl the record stays for ttl as
	// [OwnerEnded] carrying the note (for instance how the session ended,
	// so that a late resume gets the same answer on any instance);
	// otherwise it is removed. A record that is already gone is not an
	// error; one owned by someone else is ErrNotOwner.
	Release(ctx context.Context, l Lease, note []byte, ttl time.Duration) error

	// Park gives a session up for handoff: the state (opaque bytes the
	// Handler produces: ids, secret, counters, unacknowledged messages) is
	// kept for ttl, and Lookup reports [OwnerParked] until some instance
	// takes it or ttl passes. The lease is spent: this instance must stop
	// serving the session and not renew it. A Park whose answer was lost
	// may be repeated with the same lease.
	Park(ctx context.Context, l Lease, state []byte, ttl time.Duration) error

	// TakeParked makes this instance the owner of a parked session and
	// returns the new lease and the parked state. When several instances
	// try at once, exactly one wins; the others get ErrNotParked, as does
	// a session that is not parked (never was, expired, or already taken),
	// and should Lookup it again. Until its first Renew of the session,
	// the winner may call TakeParked again and gets the same lease and
	// state, so a take whose answer was lost is not a lost session.
	TakeParked(ctx context.Context, id SessionID) (Lease, []byte, error)

	// Leave takes this instance out of the cluster, on shutdown after its
	// sessions were parked or released: its liveness record is removed, so
	// any session still recorded as its own is reported OwnerDead at once
	// (if the store is out of reach, when the lease runs out).
	// Leave waits, within ctx, for the store calls in flight to return.
	// Every call after Leave fails with an error wrapping net.ErrClosed.
	Leave(ctx context.Context) error
}

// SessionID is a session's 128-bit id, written as 32 hex digits on the wire
// and in stores.
type SessionID [16]byte

// String returns the id in lower-case hex.
func (id SessionID) String() string { return hex.EncodeToString(id[:]) }

// Lease is an owner's proof of ownership of a session: the session and the
// epoch of the ownership, as given by Claim or TakeParked. Epochs start at
// 1, so the zero Lease is no lease (a session whose Claim has not
// succeeded yet).
type Lease struct {
	ID    SessionID
	Epoch uint64
}

// Owner is what Lookup knows about a session.
type Owner struct {
	// Status says where the session is.
	Status OwnerStatus
	// Instance is the id of the owner (OwnerHere, OwnerRemote, OwnerDead),
	// or of the instance that parked or ended the session.
	Instance string
	// URL is where the owner is reached, for OwnerRemote.
	URL string
	// Epoch is the epoch of the record.
	Epoch uint64
	// Note is what Release left, for OwnerEnded.
	Note []byte
}

// OwnerStatus says where a session is, as Lookup found it.
type OwnerStatus int

const (
	// OwnerUnknown: no record. The session never existed, expired, or was
	// lost with a dead owner. A resume of it is a lost session.
	OwnerUnknown OwnerStatus = iota
	// OwnerHere: this instance owns the session.
	OwnerHere
	// OwnerRemote: a live instance owns the session; Owner.URL reaches it.
	OwnerRemote
	// OwnerDead: the owner's liveness lease ran out (it crashed or hangs).
	// The session is lost.
	OwnerDead
	// OwnerParked: the owner shut down and parked the session; TakeParked
	// claims it.
	OwnerParked
	// OwnerEnded: the session ended; Owner.Note is what Release left.
	OwnerEnded
	// OwnerRecovering: no live owner is known, but the store lost records
	// or was unreachable moments ago, so the owner may still be writing
	// them again. Answer "try again" rather than "lost".
	OwnerRecovering
)

var ownerStatusNames = [...]string{"unknown", "here", "remote", "dead", "parked", "ended", "recovering"}

// String returns the status in lower case, e.g. "remote".
func (s OwnerStatus) String() string {
	if s >= 0 && int(s) < len(ownerStatusNames) {
		return ownerStatusNames[s]
	}
	return "OwnerStatus(" + strconv.Itoa(int(s)) + ")"
}

// Errors of a Cluster, for errors.Is. Implementations wrap them, with the
// store's own error beside where there is one.
var (
	// ErrNotOwner: a fenced write was refused because the session's record
	// names another owner, a newer epoch, or a parked or ended session.
	ErrNotOwner = errors.New("tether: cluster: not the session's owner")

	// ErrNotParked: TakeParked found no parked session, or another
	// instance took it first.
	ErrNotParked = errors.New("tether: cluster: session not parked")

	// ErrClusterUnavailable: the store did not answer in time, refused the
	// call, or is known to be down. The call may be tried again later.
	ErrClusterUnavailable = errors.New("tether: cluster: store unavailable")
)
