package tetherredis

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tetherws/tether"
)

// renewBatch is how many sessions one renewal script handles. A script
// holds Redis for its whole run, so a batch is kept to about a millisecond
// of Redis time; the batches of one Renew go out in one pipeline.
const renewBatch = 500

// Cluster is a tether.Cluster on Redis: one instance of a Handler, with the
// directory of sessions in Redis. Make one per Handler with New. Its
// methods may be called from several goroutines at once.
type Cluster struct {
	rdb redis.UniversalClient
	id  string
	url string
	o   options
	log *slog.Logger

	liveKey    string // this instance's liveness key
	livePrefix string
	sessPrefix string
	dirKey     string
	settleKey  string

	sem chan struct{} // bounds store calls in flight

	mu        sync.Mutex
	closed    bool
	down      bool      // the last call failed: one call at a time probes
	downSince time.Time // when the outage began
	probing   bool
	trouble   time.Time     // Lookup is unsure until then
	joined    bool          // this instance wrote its liveness at least once
	inFlight  int           // calls whose goroutines have not returned
	drained   chan struct{} // closed when inFlight drops to 0, for Leave
}

var _ tether.Cluster = (*Cluster)(nil)

// New returns the Cluster of one Handler instance on the Redis that rdb
// reaches (a *redis.Client, *redis.ClusterClient, *redis.Ring or failover
// client). advertiseURL is this Handler's URL as other instances reach it,
// e.g. http://10.0.0.5:8080/ws: the http or https URL of the Handler itself,
// with no credentials in it. Each New is a new instance with a fresh id.
//
// New does no I/O and cannot fail: an invalid advertiseURL or option makes
// every call return an error saying so (wrapping tether.ErrInvalidOption).
// The Cluster does not close rdb.
func New(rdb redis.UniversalClient, advertiseURL string, opts ...Option) *Cluster {
	o := defaultOptions()
	for _, opt := range opts {
		opt(&o)
	}
	if o.err == nil {
		if rdb == nil {
			o.err = fmt.Errorf("tether: redis: New: nil client: %w", tether.ErrInvalidOption)
		} else if err := checkURL(advertiseURL); err != nil {
			o.err = err
		}
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	id := hex.EncodeToString(b[:])
	c := &Cluster{
		rdb:        rdb,
		id:         id,
		url:        advertiseURL,
		o:          o,
		livePrefix: o.prefix + "i:",
		sessPrefix: o.prefix + "s:",
		dirKey:     o.prefix + "dir",
		settleKey:  o.prefix + "settle",
		sem:        make(chan struct{}, maxInFlight),
	}
	c.liveKey = c.livePrefix + id
	c.log = o.logger.With(slog.String("instance", id))
	return c
}

func checkURL(s string) error {
	u, err := url.Parse(s)
	switch {
	case err != nil:
		return fmt.Errorf("tether: redis: advertise URL: %w", tether.ErrInvalidURL)
	case u.Scheme != "http" && u.Scheme != "https":
		return fmt.Errorf("tether: redis: advertise URL: scheme %q, want http or https: %w", u.Scheme, tether.ErrInvalidURL)
	case u.Host == "":
		return fmt.Errorf("tether: redis: advertise URL: no host: %w", tether.ErrInvalidURL)
	case u.User != nil:
		return fmt.Errorf("tether: redis: advertise URL: credentials in the URL: %w", tether.ErrInvalidURL)
	}
	return nil
}

// ID returns this instance's id: 16 hex digits, new for every New.
func (c *Cluster) ID() string { return c.id }

// URL returns the advertise URL given to New.
func (c *Cluster) URL() string { return c.url }

// RenewInterval returns a third of the lease (see WithLease).
func (c *Cluster) RenewInterval() time.Duration { return c.o.lease / 3 }

func (c *Cluster) key(id tether.SessionID) string { return c.sessPrefix + id.String() }

func ms(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return max(int64((d+time.Millisecond-1)/time.Millisecond), 1)
}

func (c *Cluster) recordTTL() int64 { return ms(3 * c.o.lease) }

func (c *Cluster) setJoined() {
	c.mu.Lock()
	c.joined = true
	c.mu.Unlock()
}

// Claim records a new session as this instance's (one script: it also
// refreshes this instance's liveness).
func (c *Cluster) Claim(ctx context.Context, id tether.SessionID) (tether.Lease, error) {
	epoch, err := do(c, ctx, "claim", func(ctx context.Context) (int64, error) {
		epoch, err := claimScript.Run(ctx, c.rdb,
			[]string{c.key(id), c.liveKey, c.dirKey, c.settleKey},
			c.id, c.url, ms(c.o.lease), c.recordTTL()).Int64()
		if err == nil && epoch <= 0 {
			return 0, fmt.Errorf("session %s: %w", id, tether.ErrNotOwner)
		}
		return epoch, err
	})
	if err != nil {
		return tether.Lease{}, err
	}
	c.setJoined()
	return tether.Lease{ID: id, Epoch: uint64(epoch)}, nil
}

// Lookup tells who owns a session (one script).
func (c *Cluster) Lookup(ctx context.Context, id tether.SessionID) (tether.Owner, error) {
	o, err := do(c, ctx, "lookup", func(ctx context.Context) (tether.Owner, error) {
		res, err := lookupScript.Run(ctx, c.rdb,
			[]string{c.key(id), c.dirKey, c.settleKey},
			c.id, c.livePrefix, ms(c.o.lease)).Slice()
		if err != nil {
			return tether.Owner{}, err
		}
		return parseOwner(res)
	})
	if err != nil {
		return tether.Owner{}, err
	}
	if (o.Status == tether.OwnerDead || o.Status == tether.OwnerUnknown) && c.unsure() {
		o.Status = tether.OwnerRecovering
	}
	return o, nil
}

var statuses = map[string]tether.OwnerStatus{
	"unknown":    tether.OwnerUnknown,
	"here":       tether.OwnerHere,
	"remote":     tether.OwnerRemote,
	"dead":       tether.OwnerDead,
	"parked":     tether.OwnerParked,
	"ended":      tether.OwnerEnded,
	"recovering": tether.OwnerRecovering,
}

var errReply = errors.New("unexpected reply from the script")

func parseOwner(res []any) (tether.Owner, error) {
	var f [4]string
	for i, v := range res {
		s, ok := v.(string)
		if !ok || i >= len(f) {
			return tether.Owner{}, errReply
		}
		f[i] = s
	}
	st, ok := statuses[f[0]]
	if !ok {
		return tether.Owner{}, errReply
	}
	o := tether.Owner{Status: st, Instance: f[1]}
	if f[2] != "" {
		e, err := strconv.ParseUint(f[2], 10, 64)
		if err != nil {
			return tether.Owner{}, errReply
		}
		o.Epoch = e
	}
	switch st {
	case tether.OwnerRemote:
		o.URL = f[3]
	case tether.OwnerEnded:
		o.Note = []byte(f[3])
	}
	return o, nil
}

type renewed struct {
	lost []tether.SessionID
	made int64 // records written again
}

// Renew keeps this instance alive and extends the records of its sessions:
// one script per batch of 500 sessions, all batches in one pipeline, so
// that a Renew of 1,000 sessions is one round trip and two commands.
func (c *Cluster) Renew(ctx context.Context, leases []tether.Lease) ([]tether.SessionID, error) {
	c.mu.Lock()
	joined := "0"
	if c.joined {
		joined = "1"
	}
	c.mu.Unlock()
	r, err := do(c, ctx, "renew", func(ctx context.Context) (renewed, error) {
		cmds, err := c.renewPipeline(ctx, leases, joined)
		if err != nil && isNoScript(cmds) {
			// Redis restarted and forgot the script: load it and run the
			// whole batch again, which is idempotent.
			if err = renewScript.Load(ctx, c.rdb).Err(); err == nil {
				cmds, err = c.renewPipeline(ctx, leases, joined)
			}
		}
		var r renewed
		for b, cmd := range cmds {
			res, cerr := cmd.Int64Slice()
			if cerr != nil {
				continue
			}
			if len(res) == 0 {
				return r, errReply
			}
			r.made += res[0]
			for _, i := range res[1:] {
				k := b*renewBatch + int(i) - 1
				if k < 0 || k >= len(leases) {
					return r, errReply
				}
				r.lost = append(r.lost, leases[k].ID)
			}
		}
		return r, err
	})
	if err == nil {
		c.setJoined()
	}
	if r.made > 0 {
		c.log.LogAttrs(context.Background(), slog.LevelInfo, "sessions written again: the store had lost them",
			slog.Int64("sessions", r.made))
	}
	if len(r.lost) > 0 {
		c.log.LogAttrs(context.Background(), slog.LevelWarn, "sessions found owned elsewhere",
			slog.Int("sessions", len(r.lost)))
	}
	return r.lost, err
}

func (c *Cluster) renewPipeline(ctx context.Context, leases []tether.Lease, joined string) ([]*redis.Cmd, error) {
	nb := max((len(leases)+renewBatch-1)/renewBatch, 1)
	pipe := c.rdb.Pipeline()
	cmds := make([]*redis.Cmd, 0, nb)
	lease, rec := ms(c.o.lease), c.recordTTL()
	for b := range nb {
		batch := leases[b*renewBatch : min((b+1)*renewBatch, len(leases))]
		keys := make([]string, 0, 3+len(batch))
		args := make([]any, 0, 5+len(batch))
		keys = append(keys, c.liveKey, c.dirKey, c.settleKey)
		args = append(args, c.id, c.url, lease, rec, joined)
		for _, l := range batch {
			keys = append(keys, c.key(l.ID))
			args = append(args, strconv.FormatUint(l.Epoch, 10))
		}
		cmds = append(cmds, renewScript.EvalSha(ctx, pipe, keys, args...))
	}
	_, err := pipe.Exec(ctx)
	return cmds, err
}

func isNoScript(cmds []*redis.Cmd) bool {
	for _, cmd := range cmds {
		if redis.HasErrorPrefix(cmd.Err(), "NOSCRIPT") {
			return true
		}
	}
	return false
}

// Release ends this instance's ownership of a session (one script).
func (c *Cluster) Release(ctx context.Context, l tether.Lease, note []byte, ttl time.Duration) error {
	keep := ms(ttl)
	if len(note) == 0 {
		keep = 0
	}
	_, err := do(c, ctx, "release", func(ctx context.Context) (struct{}, error) {
		ok, err := releaseScript.Run(ctx, c.rdb, []string{c.key(l.ID)},
			c.id, strconv.FormatUint(l.Epoch, 10), note, keep).Int64()
		if err == nil && ok != 1 {
			err = fmt.Errorf("session %s: %w", l.ID, tether.ErrNotOwner)
		}
		return struct{}{}, err
	})
	return err
}

// Park gives a session up for handoff, with its state, for ttl (one
// script).
func (c *Cluster) Park(ctx context.Context, l tether.Lease, state []byte, ttl time.Duration) error {
	if state == nil {
		state = []byte{}
	}
	_, err := do(c, ctx, "park", func(ctx context.Context) (struct{}, error) {
		ok, err := parkScript.Run(ctx, c.rdb, []string{c.key(l.ID)},
			c.id, strconv.FormatUint(l.Epoch, 10), state, ms(ttl)).Int64()
		if err == nil && ok != 1 {
			err = fmt.Errorf("session %s: %w", l.ID, tether.ErrNotOwner)
		}
		return struct{}{}, err
	})
	return err
}

type taken struct {
	lease tether.Lease
	state []byte
}

// TakeParked makes this instance the owner of a parked session (one
// script: exactly one of several instances taking it at once wins).
func (c *Cluster) TakeParked(ctx context.Context, id tether.SessionID) (tether.Lease, []byte, error) {
	t, err := do(c, ctx, "take", func(ctx context.Context) (taken, error) {
		res, err := takeScript.Run(ctx, c.rdb, []string{c.key(id), c.liveKey},
			c.id, c.url, ms(c.o.lease), c.recordTTL()).Result()
		if err != nil {
			return taken{}, err
		}
		a, ok := res.([]any)
		if !ok {
			return taken{}, fmt.Errorf("session %s: %w", id, tether.ErrNotParked)
		}
		if len(a) != 2 {
			return taken{}, errReply
		}
		es, _ := a[0].(string)
		st, ok := a[1].(string)
		epoch, err := strconv.ParseUint(es, 10, 64)
		if err != nil || !ok {
			return taken{}, errReply
		}
		return taken{tether.Lease{ID: id, Epoch: epoch}, []byte(st)}, nil
	})
	if err != nil {
		return tether.Lease{}, nil, err
	}
	c.setJoined()
	return t.lease, t.state, nil
}

// Leave removes this instance's liveness key and waits, within ctx, for the
// calls in flight to return.
func (c *Cluster) Leave(ctx context.Context) error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return fmt.Errorf("tether: redis: leave: %w", net.ErrClosed)
	}
	c.closed = true
	c.mu.Unlock()
	var err error
	if c.o.err == nil {
		_, err = run(c, ctx, "leave", true, func(ctx context.Context) (int64, error) {
			return c.rdb.Del(ctx, c.liveKey).Result()
		})
	}
	c.mu.Lock()
	if c.inFlight == 0 {
		c.mu.Unlock()
		return err
	}
	drained := make(chan struct{})
	c.drained = drained
	c.mu.Unlock()
	select {
	case <-drained:
		return err
	case <-ctx.Done():
		return errors.Join(err, fmt.Errorf("tether: redis: leave: calls still in flight: %w", ctx.Err()))
	}
}
