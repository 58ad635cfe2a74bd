// Package tether is a drop-in, resilient WebSocket client built on
// github.com/coder/websocket.
//
// [Dial] returns a [*Conn] with the same Read, Write, Ping, Close and CloseNow
// methods as a *websocket.Conn. Underneath, a heartbeat finds dead links, and a
// reconnect loop with backoff restores them, so a Read rides through network
// resets and server restarts and fails only when the Conn is closed for good.
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
// code) is replaced by a new dial after a backoff delay (see [WithBackoff]).
// Handshakes answered 401, 403, 404 or 400, and policy or protocol close codes,
// are permanent: the Conn closes and Read returns the cause. [WithOnConnect]
// runs after every connect, before anything queued goes out.
//
// # What can be lost
//
// Writes made while the Conn is reconnecting wait in a bounded send queue (see
// [WithSendQueue]) and go out in order on the next link. A Write that fails on
// a dying link is queued and sent again, so in rare cases the server sees it
// twice. But plain mode has no acknowledgements: a message that was written to
// the socket just before the link died, and that the network then lost, is
// gone, and so is anything the server sent that never reached the client. Use
// application-level acknowledgements if that matters.
//
// # Concurrency
//
// A Conn may be used from several goroutines: Read calls are served one at a
// time, Write calls may run concurrently with each other and with Read, and
// Close may be called from any goroutine, any number of times.
package tether
