// Package frame is the codec of tether's session protocol, tether.v1.
//
// The same frames travel on both transports: each WebSocket binary message
// carries exactly one frame, and an HTTP long-polling body carries a batch of
// them. [Append] and [Decode] handle one frame, [AppendBatch] and
// [DecodeBatch] a batch. Decoding never panics and never allocates more than
// the input justifies; it is fuzzed.
//
// # Frame
//
// Byte 0 is the [Kind]. All integers called uvarint are
// [encoding/binary] unsigned varints in their shortest form; a longer form,
// or one that overflows 64 bits, is malformed. Payload and reason run to the
// end of the frame, so a frame needs an outer boundary: the WebSocket message,
// or the length prefix in a batch.
//
//	Hello  0x01  status(1)  session(16)  secret(16)  uvarint ack  [uvarint window-bytes  uvarint window-messages]
//	Data   0x02  flags(1)   uvarint seq  uvarint ack  payload...
//	Ack    0x03  uvarint ack
//	Close  0x04  code(2, big-endian)  uvarint ack  reason...
//
// Data flags: bit 0 set for a binary message, clear for text; the other bits
// must be zero. A Data seq is at least 1. A Hello status is one of the
// [Status] constants; its window, when present, is two non-zero uvarints
// (absent, the Hello ends after the ack). A Close reason is valid UTF-8 of at most [MaxReason]
// bytes, as in a WebSocket close frame.
//
// Ack, in every kind, is the highest sequence number received in order from
// the peer (0 before the first).
//
// # Batch
//
//	uvarint count  { uvarint length  frame(length) } * count
//
// The count may be zero. A batch ends exactly after its last frame.
package frame
