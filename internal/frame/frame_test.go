package frame

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"errors"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

var (
	session = [16]byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}
	secret  = [16]byte{16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31}
)

// validFrames returns one frame of each shape worth a round trip.
func validFrames() map[string]Frame {
	return map[string]Frame{
		"hello new":          {Kind: Hello, Status: StatusNew, Session: session, Secret: secret},
		"hello resumed":      {Kind: Hello, Status: StatusResumed, Session: session, Secret: secret, Ack: 300},
		"hello lost max ack": {Kind: Hello, Status: StatusLost, Session: session, Secret: secret, Ack: math.MaxUint64},
		"hello window":       {Kind: Hello, Status: StatusNew, Session: session, Secret: secret, WindowBytes: 4 << 20, WindowMessages: 4096},
		"hello max window":   {Kind: Hello, Status: StatusResumed, Session: session, Secret: secret, Ack: 9, WindowBytes: math.MaxUint64, WindowMessages: math.MaxUint64},
		"data empty":         {Kind: Data, Seq: 1},
		"data text":          {Kind: Data, Seq: 1, Payload: []byte("hi")},
		"data binary":        {Kind: Data, Seq: 128, Ack: 127, Binary: true, Payload: []byte{0, 0xff}},
		"data max":           {Kind: Data, Seq: math.MaxUint64, Ack: math.MaxUint64, Binary: true, Payload: []byte{1}},
		"data 1 MiB":         {Kind: Data, Seq: 7, Ack: 3, Binary: true, Payload: bytes.Repeat([]byte{0xa5}, 1<<20)},
		"ack zero":           {Kind: Ack},
		"ack max":            {Kind: Ack, Ack: math.MaxUint64},
		"close empty":        {Kind: Close, Code: 1000},
		"close reason":       {Kind: Close, Code: 4001, Ack: 99, Reason: "going away, é"},
		"close max reason":   {Kind: Close, Code: 1001, Ack: 1 << 40, Reason: strings.Repeat("x", MaxReason)},
	}
}

// requireFrame compares frames, treating a nil and an empty payload alike.
func requireFrame(t testing.TB, want, got Frame) {
	t.Helper()
	require.True(t, bytes.Equal(want.Payload, got.Payload), "payload differs")
	want.Payload, got.Payload = nil, nil
	require.Equal(t, want, got)
}

// headerLen is the length of f's encoding without its payload or reason.
func headerLen(f *Frame) int {
	return size(f) - len(f.Payload) - len(f.Reason)
}

func TestRoundTrip(t *testing.T) {
	t.Parallel()
	for name, f := range validFrames() {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			b := Append(nil, &f)
			require.Len(t, b, size(&f))
			got, err := Decode(b)
			require.NoError(t, err)
			requireFrame(t, f, got)

			// Append keeps what dst already holds.
			prefixed := Append([]byte("xyz"), &f)
			require.Equal(t, "xyz", string(prefixed[:3]))
			require.Equal(t, b, prefixed[3:])
		})
	}
}

// TestAppendIgnoresUnusedFields: fields a kind does not use are not encoded.
func TestAppendIgnoresUnusedFields(t *testing.T) {
	t.Parallel()
	junk := Frame{Seq: 9, Ack: 5, Binary: true, Payload: []byte("p"), Status: StatusLost,
		Session: session, Secret: secret, WindowBytes: 7, WindowMessages: 3, Code: 1000, Reason: "r"}
	for _, k := range []Kind{Hello, Data, Ack, Close} {
		f := junk
		f.Kind = k
		got, err := Decode(Append(nil, &f))
		require.NoError(t, err)
		require.Equal(t, k, got.Kind)
		require.EqualValues(t, 5, got.Ack)
		clean := got
		switch k {
		case Hello:
			clean = Frame{Kind: k, Ack: 5, Status: StatusLost, Session: session, Secret: secret, WindowBytes: 7, WindowMessages: 3}
		case Data:
			clean = Frame{Kind: k, Ack: 5, Seq: 9, Binary: true, Payload: []byte("p")}
		case Ack:
			clean = Frame{Kind: k, Ack: 5}
		case Close:
			clean = Frame{Kind: k, Ack: 5, Code: 1000, Reason: "r"}
		}
		requireFrame(t, clean, got)
	}
}

func TestAppendUnknownKindPanics(t *testing.T) {
	t.Parallel()
	for _, k := range []Kind{0, 5, 255} {
		require.PanicsWithValue(t, "frame: Append: unknown kind "+k.String(), func() {
			Append(nil, &Frame{Kind: k})
		})
	}
}

// readHex reads a golden file: hex digits and spaces, '#' starts a comment
// line.
func readHex(t *testing.T, path string) []byte {
	t.Helper()
	file, err := os.Open(path)
	require.NoError(t, err)
	defer file.Close()
	var digits strings.Builder
	sc := bufio.NewScanner(file)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		digits.WriteString(strings.ReplaceAll(line, " ", ""))
	}
	require.NoError(t, sc.Err())
	b, err := hex.DecodeString(digits.String())
	require.NoError(t, err)
	return b
}

// TestGolden pins the wire format to hand-written encodings in
// testdata/golden, so that a change to it cannot pass unnoticed.
func TestGolden(t *testing.T) {
	t.Parallel()
	frames := map[string]Frame{
		"hello_new":     {Kind: Hello, Status: StatusNew, Session: session, Secret: secret},
		"hello_resumed": {Kind: Hello, Status: StatusResumed, Session: session, Secret: secret, Ack: 300},
		"hello_window":  {Kind: Hello, Status: StatusResumed, Session: session, Secret: secret, Ack: 300, WindowBytes: 4 << 20, WindowMessages: 4096},
		"data_text":     {Kind: Data, Seq: 1, Payload: []byte("hi")},
		"data_binary":   {Kind: Data, Seq: 128, Ack: 127, Binary: true, Payload: []byte{0, 0xff}},
		"ack_max":       {Kind: Ack, Ack: math.MaxUint64},
		"close":         {Kind: Close, Code: 1000, Ack: 5, Reason: "bye"},
	}
	for name, f := range frames {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			want := readHex(t, filepath.Join("testdata", "golden", name+".hex"))
			require.Equal(t, hex.EncodeToString(want), hex.EncodeToString(Append(nil, &f)))
			got, err := Decode(want)
			require.NoError(t, err)
			requireFrame(t, f, got)
		})
	}
	t.Run("batch", func(t *testing.T) {
		t.Parallel()
		fs := []Frame{frames["data_text"], {Kind: Ack, Ack: 1}}
		want := readHex(t, filepath.Join("testdata", "golden", "batch.hex"))
		require.Equal(t, hex.EncodeToString(want), hex.EncodeToString(AppendBatch(nil, fs)))
		got, err := DecodeBatch(want, 2, 16)
		require.NoError(t, err)
		require.Len(t, got, 2)
		for i := range fs {
			requireFrame(t, fs[i], got[i])
		}
	})
	// Every golden file is checked above.
	files, err := filepath.Glob(filepath.Join("testdata", "golden", "*.hex"))
	require.NoError(t, err)
	require.Len(t, files, len(frames)+1)
}

func mustHex(s string) []byte {
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		panic(err)
	}
	return b
}

func TestDecodeErrors(t *testing.T) {
	t.Parallel()
	keys := hex.EncodeToString(session[:]) + hex.EncodeToString(secret[:])
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"empty", nil, ErrShort},
		{"kind 0", mustHex("00"), ErrKind},
		{"kind 5", mustHex("05 00"), ErrKind},
		{"kind 255", mustHex("ff"), ErrKind},

		{"hello kind only", mustHex("01"), ErrShort},
		{"hello without ack", mustHex("01 01" + keys), ErrShort},
		{"hello status 0", mustHex("01 00" + keys + "00"), ErrMalformed},
		{"hello status 4", mustHex("01 04" + keys + "00"), ErrMalformed},
		{"hello trailing", mustHex("01 01" + keys + "00 00"), ErrMalformed},
		{"hello window of 0 bytes", mustHex("01 01" + keys + "00 00 01"), ErrMalformed},
		{"hello window without messages", mustHex("01 01" + keys + "00 01"), ErrShort},
		{"hello window of 0 messages", mustHex("01 01" + keys + "00 01 00"), ErrMalformed},
		{"hello window overlong", mustHex("01 01" + keys + "00 8100 01"), ErrMalformed},
		{"hello window trailing", mustHex("01 01" + keys + "00 01 01 00"), ErrMalformed},
		{"hello overlong ack", mustHex("01 01" + keys + "80 00"), ErrMalformed},

		{"data kind only", mustHex("02"), ErrShort},
		{"data flags only", mustHex("02 00"), ErrShort},
		{"data without ack", mustHex("02 00 01"), ErrShort},
		{"data seq cut", mustHex("02 00 80"), ErrShort},
		{"data seq 0", mustHex("02 00 00 00"), ErrMalformed},
		{"data flag bit 1", mustHex("02 02 01 00"), ErrMalformed},
		{"data flag bit 7", mustHex("02 81 01 00"), ErrMalformed},
		{"data overlong seq", mustHex("02 00 8100 00"), ErrMalformed},
		{"data overlong seq 0", mustHex("02 00 80808000 00"), ErrMalformed},
		{"data overlong ack", mustHex("02 00 01 ff00"), ErrMalformed},
		{"data seq overflow 10th byte", mustHex("02 00 ffffffffffffffffff02 00"), ErrMalformed},
		{"data seq overflow 11 bytes", mustHex("02 00 ffffffffffffffffffff01 00"), ErrMalformed},

		{"ack kind only", mustHex("03"), ErrShort},
		{"ack cut", mustHex("03 ff"), ErrShort},
		{"ack trailing", mustHex("03 00 00"), ErrMalformed},
		{"ack overlong", mustHex("03 8000"), ErrMalformed},
		{"ack overflow", mustHex("03 80808080808080808002"), ErrMalformed},

		{"close kind only", mustHex("04"), ErrShort},
		{"close half code", mustHex("04 03"), ErrShort},
		{"close without ack", mustHex("04 03e8"), ErrShort},
		{"close overlong ack", mustHex("04 03e8 8000"), ErrMalformed},
		{"close reason not UTF-8", mustHex("04 03e8 00 ff"), ErrMalformed},
		{"close reason cut rune", mustHex("04 03e8 00 c3"), ErrMalformed},
		{"close reason too long", append(mustHex("04 03e8 00"), strings.Repeat("x", MaxReason+1)...), ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f, err := Decode(tt.in)
			require.ErrorIs(t, err, tt.want)
			require.True(t, strings.HasPrefix(err.Error(), "frame: "), err.Error())
			require.Equal(t, Frame{}, f, "a failed Decode returns the zero Frame")
		})
	}
}

// TestTruncation cuts valid frames at every offset: a cut in the header is an
// error, and a cut in a payload or reason, which run to the end of the frame,
// is either an error (a split rune) or the same frame with less payload. A
// Hello's window is optional: a cut just before it leaves a Hello without
// one.
func TestTruncation(t *testing.T) {
	t.Parallel()
	frames := validFrames()
	delete(frames, "data 1 MiB")
	frames["data long"] = Frame{Kind: Data, Seq: 1 << 50, Ack: 1 << 35, Payload: []byte("hello, world")}
	for name, f := range frames {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			b := Append(nil, &f)
			noWindow := f
			noWindow.WindowBytes, noWindow.WindowMessages = 0, 0
			for n := range len(b) {
				got, err := Decode(b[:n])
				if f.Kind == Hello && f.WindowBytes != 0 && n == size(&noWindow) {
					require.NoError(t, err)
					requireFrame(t, noWindow, got)
					continue
				}
				if n < headerLen(&f) {
					require.Error(t, err, "cut at %d", n)
					continue
				}
				if err != nil {
					require.ErrorIs(t, err, ErrMalformed, "cut at %d", n)
					continue
				}
				rest := n - headerLen(&f)
				want := f
				if f.Kind == Data {
					want.Payload = f.Payload[:rest]
				} else {
					want.Reason = f.Reason[:rest]
				}
				requireFrame(t, want, got)
			}
		})
	}
}

func TestPayloadAliases(t *testing.T) {
	t.Parallel()
	b := Append(nil, &Frame{Kind: Data, Seq: 1, Payload: []byte("abc")})
	b = append(b, "tail"...)[:len(b)]
	f, err := Decode(b)
	require.NoError(t, err)
	b[len(b)-1] = 'z'
	require.Equal(t, "abz", string(f.Payload), "Payload aliases the input")
	require.Equal(t, 3, cap(f.Payload), "Payload capacity is clipped")
}

func TestStrings(t *testing.T) {
	t.Parallel()
	require.Equal(t, "hello", Hello.String())
	require.Equal(t, "data", Data.String())
	require.Equal(t, "ack", Ack.String())
	require.Equal(t, "close", Close.String())
	require.Equal(t, "Kind(9)", Kind(9).String())
	require.Equal(t, "new", StatusNew.String())
	require.Equal(t, "resumed", StatusResumed.String())
	require.Equal(t, "lost", StatusLost.String())
	require.Equal(t, "Status(0)", Status(0).String())
}

func TestUvarintLen(t *testing.T) {
	t.Parallel()
	for _, v := range []uint64{0, 1, 127, 128, 16383, 16384, 1<<63 - 1, 1 << 63, math.MaxUint64} {
		var buf [10]byte
		require.Equal(t, len(appendUvarint(buf[:0], v)), uvarintLen(v), "%d", v)
	}
}

func appendUvarint(b []byte, v uint64) []byte {
	for v >= 0x80 {
		b = append(b, byte(v)|0x80)
		v >>= 7
	}
	return append(b, byte(v))
}

func TestBatchRoundTrip(t *testing.T) {
	t.Parallel()
	var fs []Frame
	for _, f := range validFrames() {
		fs = append(fs, f)
	}
	b := AppendBatch([]byte("x"), fs)
	require.Equal(t, byte('x'), b[0])
	got, err := DecodeBatch(b[1:], len(fs), 1<<20+32)
	require.NoError(t, err)
	require.Len(t, got, len(fs))
	for i := range fs {
		requireFrame(t, fs[i], got[i])
	}

	// A payload cannot reach into the next frame.
	require.Equal(t, len(got[0].Payload), cap(got[0].Payload))

	empty := AppendBatch(nil, nil)
	require.Equal(t, []byte{0}, empty)
	got, err = DecodeBatch(empty, 0, 0)
	require.NoError(t, err)
	require.Empty(t, got)
}

// EntrySize is what each frame adds to a batch, so that a sender can keep a
// batch within a bound without encoding it.
func TestEntrySize(t *testing.T) {
	t.Parallel()
	var fs []Frame
	sum := 0
	for _, f := range validFrames() {
		require.Equal(t, len(AppendBatch(nil, []Frame{f}))-1, EntrySize(&f), "%v", f.Kind)
		fs = append(fs, f)
		sum += EntrySize(&f)
	}
	b := AppendBatch(nil, fs)
	require.Equal(t, 1+sum, len(b))
	require.LessOrEqual(t, len(b), BatchHeaderMax+sum)
}

func TestDecodeBatchErrors(t *testing.T) {
	t.Parallel()
	ack := "02 0301" // one entry: length 2, Ack 1
	tests := []struct {
		name         string
		in           []byte
		maxFrames    int
		maxFrameSize int
		want         error
	}{
		{"empty", nil, 10, 10, ErrShort},
		{"count cut", mustHex("80"), 10, 10, ErrShort},
		{"count overlong", mustHex("8000"), 10, 10, ErrMalformed},
		{"count overflow", mustHex("ffffffffffffffffff7f"), math.MaxInt, 10, ErrMalformed},
		{"too many", mustHex("02" + ack + ack), 1, 10, ErrTooMany},
		{"max frames 0", mustHex("01" + ack), 0, 10, ErrTooMany},
		{"max frames negative", mustHex("01" + ack), -1, 10, ErrTooMany},
		{"count beyond input", mustHex("03" + ack + ack), 10, 10, ErrShort},
		{"2^60 frames, limit 100", mustHex("8080808080808080 10" + ack), 100, 10, ErrTooMany},
		{"2^60 frames, no limit", mustHex("8080808080808080 10" + ack), math.MaxInt, 10, ErrShort},
		{"frame too large", mustHex("01" + ack), 10, 1, ErrTooLarge},
		{"max frame size negative", mustHex("01" + ack), 10, -1, ErrTooLarge},
		{"length beyond input", mustHex("01 05 0301 0000"), 10, 10, ErrShort},
		{"length overlong", mustHex("01 8200 0301"), 10, 10, ErrMalformed},
		{"length 0", mustHex("01 00 0000"), 10, 10, ErrShort},
		{"bad frame", mustHex("01 02 0300 00"), 10, 10, ErrMalformed},
		{"bad kind", mustHex("01 02 0900"), 10, 10, ErrKind},
		{"frame trailing", mustHex("01 03 030000"), 10, 10, ErrMalformed},
		{"batch trailing", mustHex("01" + ack + "00"), 10, 10, ErrMalformed},
		{"empty batch trailing", mustHex("00 0000"), 10, 10, ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			fs, err := DecodeBatch(tt.in, tt.maxFrames, tt.maxFrameSize)
			require.ErrorIs(t, err, tt.want)
			require.True(t, strings.HasPrefix(err.Error(), "frame: "), err.Error())
			require.Nil(t, fs)
		})
	}
}

// TestBatchTruncation: unlike a lone frame, a batch knows its length, so
// every cut is ErrShort.
func TestBatchTruncation(t *testing.T) {
	t.Parallel()
	fs := []Frame{
		{Kind: Hello, Status: StatusNew, Session: session, Secret: secret, Ack: 1 << 20},
		{Kind: Data, Seq: 1 << 30, Payload: bytes.Repeat([]byte("p"), 200)},
		{Kind: Ack, Ack: 3},
		{Kind: Close, Code: 1000, Reason: "bye"},
	}
	b := AppendBatch(nil, fs)
	for n := range len(b) {
		_, err := DecodeBatch(b[:n], 10, 1000)
		require.ErrorIs(t, err, ErrShort, "cut at %d", n)
	}
	_, err := DecodeBatch(b, 10, 1000)
	require.NoError(t, err)
}

// memPerRun reports the mean allocations and bytes allocated by one call of
// fn. Like testing.AllocsPerRun, it must not run beside parallel tests.
func memPerRun(runs int, fn func()) (allocs, bytes uint64) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	fn()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range runs {
		fn()
	}
	runtime.ReadMemStats(&after)
	return (after.Mallocs - before.Mallocs) / uint64(runs),
		(after.TotalAlloc - before.TotalAlloc) / uint64(runs)
}

// TestBatchHugeCount: a tiny batch claiming 2^60 frames fails at once, with
// an allocation for the error and none for the frames. Not parallel: it
// measures allocations.
func TestBatchHugeCount(t *testing.T) {
	in := mustHex("8080808080808080 10 02 0301")
	for _, maxFrames := range []int{100, math.MaxInt} {
		var err error
		allocs, bytes := memPerRun(100, func() {
			_, err = DecodeBatch(in, maxFrames, math.MaxInt)
		})
		require.Error(t, err)
		require.True(t, errors.Is(err, ErrTooMany) || errors.Is(err, ErrShort), err.Error())
		require.LessOrEqual(t, allocs, uint64(5), "allocations per call")
		require.LessOrEqual(t, bytes, uint64(512), "bytes per call")
	}
}

// TestNoAllocs: Append and AppendBatch do not allocate when dst has room,
// and Decode of a Data frame does not allocate at all. Not parallel: it
// measures allocations.
func TestNoAllocs(t *testing.T) {
	for name, f := range validFrames() {
		dst := make([]byte, 0, size(&f))
		allocs := testing.AllocsPerRun(100, func() { dst = Append(dst[:0], &f) })
		require.Zero(t, allocs, "Append %s", name)
	}
	fs := []Frame{
		{Kind: Data, Seq: 1, Payload: make([]byte, 1024)},
		{Kind: Ack, Ack: 1},
		{Kind: Close, Code: 1000, Reason: "bye"},
	}
	dst := AppendBatch(nil, fs)
	allocs := testing.AllocsPerRun(100, func() { dst = AppendBatch(dst[:0], fs) })
	require.Zero(t, allocs, "AppendBatch")

	b := Append(nil, &fs[0])
	allocs = testing.AllocsPerRun(100, func() {
		if _, err := Decode(b); err != nil {
			panic(err)
		}
	})
	require.Zero(t, allocs, "Decode data")
}

// TestAppendGrowsOnce: Append sizes dst in one step. Under the race detector,
// which CI runs, slices.Grow's append(s, make(...)...) is not fused into one
// allocation, so one step costs two; growing as it goes would cost more
// either way.
func TestAppendGrowsOnce(t *testing.T) {
	f := Frame{Kind: Data, Seq: 1 << 40, Ack: 1 << 40, Payload: make([]byte, 5000)}
	want := 1.0
	if raceEnabled {
		want = 2
	}
	allocs := testing.AllocsPerRun(100, func() { Append(nil, &f) })
	require.Equal(t, want, allocs)
	require.Len(t, Append(nil, &f), size(&f))
}

func BenchmarkAppendDecode(b *testing.B) {
	f := Frame{Kind: Data, Seq: 12345, Ack: 678, Binary: true, Payload: make([]byte, 1024)}
	buf := make([]byte, 0, size(&f))
	b.ReportAllocs()
	b.SetBytes(int64(len(f.Payload)))
	for b.Loop() {
		buf = Append(buf[:0], &f)
		if _, err := Decode(buf); err != nil {
			b.Fatal(err)
		}
	}
}
