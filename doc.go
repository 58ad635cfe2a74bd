// Package tether is a drop-in, resilient WebSocket client built on
// github.com/coder/websocket.
//
// [Dial] returns a [*Conn] with every method of a *websocket.Conn: Read, Write,
// Reader, Writer, Ping, Close, CloseNow, CloseRead, SetReadLimit and
// Subprotocol; [NetConn] stands for websocket.NetConn. Underneath, a heartbeat finds dead links, and a
// reconnect loop with backoff restores them, so a Read rides through network
// resets and server restarts and fails only when the Conn is closed for good.
// [NewHandler] is the matching server side: with it, messages survive drops
// (session mode), and clients behind a proxy that blocks WebSocket fall back
// to HTTP long polling.
//
// # Plain mode
//
// Plain mode works against any WebSocket server. The heartbeat sends WebSocket
// ping frames whenever the link has been quiet for the heartbeat interval (any
// inbound message is proof of life), and a link whose pong does not come within
// the heartbeat timeout is closed and replaced (see [WithHeartbeat]). A timeout
// of zero keeps the pings going, to hold proxies open and measure round trips,
// but never kills a link for a slow pong.
//
// A link that fails (read or write error, heartbeat timeout, a retryable close
// code) is replaced by a new dial after a backoff delay (see [WithBackoff]);
// the delays grow while links keep failing soon after they come up. Handshakes
// answered 401, 403, 404 or 400 (see [WithFallback] for proxies), and policy,
// protocol, 3000, 3003 and 4000-4999 close codes, are permanent: the Conn closes and Read
// returns the cause. [WithOnConnect] runs after every connect, before anything
// queued goes out.
//
// The ctx of Read, Write and Ping bounds the call, never the link: a Read
// returns when its ctx ends unless a message is half received, a Write unless
// its message is going out (then it returns an error wrapping [ErrInFlight]:
// the message may still be delivered). Control frames keep flowing while the
// application does not read, up to 1 MiB or 1024 unread messages; an
// application that never reads calls [Conn.CloseRead].
//
// [Conn] has every method of *websocket.Conn: [Conn.Reader] and [Conn.Writer]
// stream a message in and out, and [NetConn] runs a byte stream over a Conn.
// In session mode a message cut by a dropped link comes again whole, and a
// NetConn's stream survives drops and moves between transports, every byte
// once and in order.
//
// # Session mode
//
// Against a server that uses [Handler], the Conn runs in session mode by
// itself. It offers the [Subprotocol] tether.v1 last among its subprotocols,
// and trusts the server's choice of it only if the 101 answer also carries the
// Tether-Protocol header that a Handler sets; anything else is plain mode.
// Each side numbers its messages, acknowledges the other's (on traffic, or in
// ack-only frames when idle) and keeps what is not yet acknowledged in a
// bounded replay buffer. A message is acknowledged once the application has
// read it, so the replay buffer is also the flow-control window: each side
// reads ahead of a slow application up to the peer's buffer, and a Write
// waits for room. A new link presents the session and the last number read,
// and both sides replay the rest. Every message is delivered exactly
// once, in order, across drops and transport switches, for as long as the
// server keeps the session ([WithSessionTTL], 2 minutes by default). Each
// side tells the other its limits on every handshake, and a Write refuses,
// before numbering it, a message the peer would refuse on every link: over
// the peer's read limit ([ErrMessageTooLarge]), or text that is not valid
// UTF-8 ([ErrInvalidUTF8]).
//
// When a session cannot be resumed (expired, or unknown to the server), Read
// returns an error wrapping [ErrSessionLost] once, the state hook's next
// Connected transition carries it as Cause, and the Conn goes on with a new
// session.
//
// # Fallback
//
// With [WithFallback], the Conn moves its session onto HTTP long polling (by
// default at the dial URL with an http or https scheme) when the path blocks
// WebSocket: at once on a 426, or on a 401, 403 or 404 without the
// Tether-Protocol mark a [Handler] puts on its own answers (a proxy's
// refusal; if polling is refused too, it is permanent); after 3 attempts in a
// row on other signs (another non-101 answer, a handshake that hangs, a
// WebSocket that never greets the session). A refused connection is not
// such a sign: it says the server is down. While on polling the Conn probes
// WebSocket with backoff (the first probe within 3 s, growing to a minute; see
// [WithProbeBackoff]), and when a probe gets through it moves the session
// back. The state hook reports each move: the one to polling as a Connected
// transition whose Cause says why, the way back as Connected -> Connected
// with the new Transport. Fallback needs session mode.
//
// # What can be lost
//
// Writes made while the Conn is reconnecting wait in a bounded send queue (see
// [WithSendQueue]) and go out in order on the next link, unless a queue
// policy you chose drops them. In session mode nothing else is lost or
// repeated while the session lives. In plain mode a Write
// that fails on a dying link is queued and sent again, so in rare cases the
// server sees it twice. But plain mode has no acknowledgements: a message that
// was written to the socket just before the link died, and that the network
// then lost, is gone, and so is anything the server sent that tether had not
// read from the socket when the link died (in the network, or waiting behind
// a full read-ahead). What tether had read is still delivered. Use session
// mode, or application-level acknowledgements, if that matters.
//
// # Several instances
//
// A Handler keeps its sessions in memory. Several instances behind a load
// balancer share one set of sessions through a directory ([WithCluster];
// the module tetherredis implements it on Redis): no sticky routing is
// needed, as a request that lands on another instance is forwarded to the
// one that holds its session, and [Handler.Shutdown] hands sessions over to
// the instances that stay, without loss. A crashed instance's sessions are
// lost, and their clients told once.
//
// # Concurrency
//
// A Conn may be used from several goroutines: Read calls are served one at a
// time, Write calls may run concurrently with each other and with Read, and
// Close may be called from any goroutine, any number of times.
package tether
