package frame

import (
	"bytes"
	"errors"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/require"
)

// FuzzDecode: no input makes Decode panic, and whatever decodes encodes back
// to the same bytes (the encoding is unique) and decodes to the same Frame.
func FuzzDecode(f *testing.F) {
	for _, fr := range validFrames() {
		if len(fr.Payload) < 1024 {
			f.Add(Append(nil, &fr))
		}
	}
	f.Add([]byte{})
	f.Add(mustHex("02 00 00 00"))
	f.Add(mustHex("02 00 8100 00"))
	f.Add(mustHex("03 ffffffffffffffffff02"))
	f.Add(mustHex("04 03e8 00 c3"))
	f.Fuzz(func(t *testing.T, b []byte) {
		fr, err := Decode(b)
		if err != nil {
			requireSentinel(t, err)
			return
		}
		enc := Append(nil, &fr)
		require.Equal(t, b, enc, "re-encoding differs")
		again, err := Decode(enc)
		require.NoError(t, err)
		requireFrame(t, fr, again)
	})
}

// FuzzRoundTrip: a frame built from arbitrary fields survives Append and
// Decode, or, when its fields break the rules, Decode refuses it as
// malformed.
func FuzzRoundTrip(f *testing.F) {
	f.Add(uint8(0), uint64(0), uint64(0), false, []byte(nil), uint8(1), session[:], secret[:], uint16(0), "")
	f.Add(uint8(1), uint64(1), uint64(0), false, []byte("hi"), uint8(0), []byte(nil), []byte(nil), uint16(0), "")
	f.Add(uint8(1), uint64(1<<63), uint64(1<<63), true, []byte{0, 0xff}, uint8(0), []byte(nil), []byte(nil), uint16(0), "")
	f.Add(uint8(2), uint64(0), uint64(42), false, []byte(nil), uint8(0), []byte(nil), []byte(nil), uint16(0), "")
	f.Add(uint8(3), uint64(0), uint64(5), false, []byte(nil), uint8(0), []byte(nil), []byte(nil), uint16(1000), "bye")
	f.Add(uint8(3), uint64(0), uint64(5), false, []byte(nil), uint8(0), []byte(nil), []byte(nil), uint16(4000), "\xff")
	f.Add(uint8(0), uint64(4<<20), uint64(7), false, []byte(nil), uint8(2), session[:], secret[:], uint16(4096), "")
	f.Add(uint8(0), uint64(1), uint64(7), false, []byte(nil), uint8(2), session[:], secret[:], uint16(0), "")
	f.Fuzz(func(t *testing.T, kind uint8, seq, ack uint64, binary bool, payload []byte,
		status uint8, sess, sec []byte, code uint16, reason string) {
		fr := Frame{Kind: Kind(kind%4 + 1), Ack: ack}
		valid := true
		switch fr.Kind {
		case Hello:
			fr.Status = Status(status)
			copy(fr.Session[:], sess)
			copy(fr.Secret[:], sec)
			// The window borrows seq and code: present when seq is not 0.
			fr.WindowBytes = seq
			if seq != 0 {
				fr.WindowMessages = uint64(code)
			}
			valid = fr.Status >= StatusNew && fr.Status <= StatusLost && (seq == 0 || code != 0)
		case Data:
			fr.Seq, fr.Binary, fr.Payload = seq, binary, payload
			valid = seq != 0
		case Close:
			fr.Code, fr.Reason = code, reason
			valid = len(reason) <= MaxReason && utf8.ValidString(reason)
		}
		b := Append(nil, &fr)
		require.Len(t, b, size(&fr))
		got, err := Decode(b)
		if !valid {
			require.ErrorIs(t, err, ErrMalformed)
			return
		}
		require.NoError(t, err)
		requireFrame(t, fr, got)

		fs, err := DecodeBatch(AppendBatch(nil, []Frame{fr, fr}), 2, len(b))
		require.NoError(t, err)
		require.Len(t, fs, 2)
		requireFrame(t, fr, fs[1])
	})
}

// FuzzDecodeBatch: no input makes DecodeBatch panic or exceed its limits, and
// whatever decodes encodes back to the same bytes.
func FuzzDecodeBatch(f *testing.F) {
	var all []Frame
	for _, fr := range validFrames() {
		if len(fr.Payload) < 1024 {
			all = append(all, fr)
		}
	}
	f.Add(AppendBatch(nil, all), uint16(len(all)), uint32(200))
	f.Add(AppendBatch(nil, all[:2]), uint16(1), uint32(200))
	f.Add(AppendBatch(nil, nil), uint16(0), uint32(0))
	f.Add(mustHex("02 06 020001006869 02 0301"), uint16(2), uint32(6))
	f.Add(mustHex("8080808080808080 10 02 0301"), uint16(65535), uint32(1<<31))
	f.Fuzz(func(t *testing.T, b []byte, maxFrames uint16, maxFrameSize uint32) {
		fs, err := DecodeBatch(b, int(maxFrames), int(maxFrameSize))
		if err != nil {
			requireSentinel(t, err)
			require.Nil(t, fs)
			return
		}
		require.LessOrEqual(t, len(fs), int(maxFrames))
		require.LessOrEqual(t, len(fs), len(b)/minEntry)
		require.LessOrEqual(t, cap(fs), len(fs), "allocated more than it decoded")
		for i := range fs {
			require.LessOrEqual(t, size(&fs[i]), int(maxFrameSize))
		}
		require.True(t, bytes.Equal(b, AppendBatch(nil, fs)), "re-encoding differs")
	})
}

// requireSentinel checks that err is a frame error wrapping one of the
// package's sentinels.
func requireSentinel(t *testing.T, err error) {
	t.Helper()
	for _, s := range []error{ErrShort, ErrKind, ErrMalformed, ErrTooLarge, ErrTooMany} {
		if errors.Is(err, s) {
			require.Regexp(t, "^frame: ", err.Error())
			return
		}
	}
	t.Fatalf("error wraps no sentinel: %v", err)
}
