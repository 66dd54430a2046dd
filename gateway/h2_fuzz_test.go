package gateway

import (
	"bytes"
	"errors"
	"io"
	"net"
	"strings"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// chunkConn is a client connection whose bytes arrive in pieces of at
// most chunk bytes.
type chunkConn struct {
	net.Conn
	r     *bytes.Reader
	chunk int
}

func (c *chunkConn) Read(p []byte) (int, error) {
	if len(p) > c.chunk {
		p = p[:c.chunk]
	}
	return c.r.Read(p)
}

// h2Frames builds a client byte stream (after the preface) from frames.
type h2Frames struct {
	b   bytes.Buffer
	fr  *http2.Framer
	enc *hpack.Encoder
	hb  bytes.Buffer
}

func newH2Frames() *h2Frames {
	s := &h2Frames{}
	s.fr = http2.NewFramer(&s.b, nil)
	s.enc = hpack.NewEncoder(&s.hb)
	return s
}

func (s *h2Frames) block(fields ...string) []byte {
	s.hb.Reset()
	for _, f := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":authority", "h2.test"}, {":path", "/"}} {
		s.enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	for i := 0; i+1 < len(fields); i += 2 {
		s.enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
	}
	return bytes.Clone(s.hb.Bytes())
}

// FuzzH2Guard checks the guard against x/net's Framer as the reference:
// whatever a client sends, the frames net/http reads from the guard are
// the frames the client sent, except for the documented rewrites (a
// request with a connection-specific field depends on its own stream; a
// SETTINGS frame's repeated values are folded in order), and after a
// connection error the guard passes nothing more.
func FuzzH2Guard(f *testing.F) {
	s := newH2Frames()
	s.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 100}, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1})
	s.fr.WriteSettingsAck()
	s.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: s.block("connection", "close"), EndStream: true, EndHeaders: true})
	s.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: s.block("x-a", "1"), EndStream: true, EndHeaders: true})
	f.Add(uint8(0), bytes.Clone(s.b.Bytes()))

	s = newH2Frames()
	blk := s.block("te", "gzip", "x-long", strings.Repeat("v", 100))
	s.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: blk[:10], PadLength: 4, Priority: http2.PriorityParam{StreamDep: 0, Weight: 9}})
	s.fr.WriteContinuation(1, false, blk[10:20])
	s.fr.WriteContinuation(1, true, blk[20:])
	s.fr.WriteData(1, true, []byte("body"))
	s.fr.WritePing(false, [8]byte{1})
	s.fr.WriteWindowUpdate(0, 1000)
	s.fr.WriteRSTStream(1, http2.ErrCodeCancel)
	s.fr.WritePriority(3, http2.PriorityParam{StreamDep: 1, Weight: 3})
	s.fr.WriteGoAway(0, http2.ErrCodeNo, nil)
	f.Add(uint8(3), bytes.Clone(s.b.Bytes()))

	s = newH2Frames()
	s.fr.WriteSettings(http2.Setting{ID: http2.SettingEnablePush, Val: 0}, http2.Setting{ID: http2.SettingEnablePush, Val: 2}, http2.Setting{ID: http2.SettingEnablePush, Val: 1})
	n := h2MaxFrameSize * 4 / 3 // a frame with no room left: find its size on a fresh encoder
	for len(newH2Frames().block("transfer-encoding", "chunked", "x-big", strings.Repeat("b", n))) > h2MaxFrameSize {
		n--
	}
	full := s.block("transfer-encoding", "chunked", "x-big", strings.Repeat("b", n))
	s.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: full, EndStream: true, EndHeaders: true})
	f.Add(uint8(17), bytes.Clone(s.b.Bytes()))

	s = newH2Frames()
	s.fr.WriteRawFrame(http2.FrameHeaders, http2.FlagHeadersEndHeaders, 1, make([]byte, h2MaxFrameSize+1))
	f.Add(uint8(63), bytes.Clone(s.b.Bytes()))
	f.Add(uint8(1), []byte("\x00\x00\x05\x01\x05\x00\x00\x00\x01\x82\x86\x84\x41\x00"))

	f.Fuzz(func(t *testing.T, chunk uint8, in []byte) {
		limit := h2MaxHeaderListSize(DefaultConfig().MaxHeaderBytes)
		c := &chunkConn{r: bytes.NewReader(append([]byte(h2Preface), in...)), chunk: int(chunk%64) + 1}
		out, _ := io.ReadAll(newH2Conn(c, false, limit))
		if !bytes.HasPrefix(out, []byte(h2Preface)) {
			t.Fatalf("output does not start with the preface: %q", out)
		}
		ref, got := h2RefFramer(in, limit), h2RefFramer(out[len(h2Preface):], limit)
		for n := 0; ; n++ {
			rf, rerr := ref.ReadFrame()
			var rse http2.StreamError
			if rerr != nil && !errors.As(rerr, &rse) {
				// A connection error (or the end): the guard passed the
				// bytes up to it and then nothing.
				if gf, gerr := got.ReadFrame(); gerr == nil {
					t.Fatalf("frame %d: reference failed (%v), guard passed %v", n, rerr, gf)
				}
				return
			}
			gf, gerr := got.ReadFrame()
			if rerr != nil {
				var gse http2.StreamError
				if !errors.As(gerr, &gse) || gse.StreamID != rse.StreamID || gse.Code != rse.Code {
					t.Fatalf("frame %d: reference stream error %v, guard gave %v, %v", n, rerr, gf, gerr)
				}
				continue
			}
			if mh, ok := rf.(*http2.MetaHeadersFrame); ok && refConnectionSpecific(mh) && gerr == http2.ErrFrameTooLarge {
				return // a full frame that grew by the priority fields
			}
			if gerr != nil {
				t.Fatalf("frame %d: reference read %v, guard's output failed: %v", n, rf, gerr)
			}
			compareH2Frames(t, n, rf, gf)
		}
	})
}

// h2RefFramer reads b as Go's server reads a client's frames.
func h2RefFramer(b []byte, maxHeaderListSize uint32) *http2.Framer {
	fr := http2.NewFramer(io.Discard, bytes.NewReader(b))
	fr.SetMaxReadFrameSize(h2MaxFrameSize)
	fr.MaxHeaderListSize = maxHeaderListSize
	fr.ReadMetaHeaders = hpack.NewDecoder(h2HeaderTableSize, nil)
	return fr
}

// refConnectionSpecific is RFC 9113 8.2.2 read on its own: a request
// must not carry connection-specific fields, nor TE but "trailers".
func refConnectionSpecific(mh *http2.MetaHeadersFrame) bool {
	if mh.Truncated {
		return false // answered 431 by Go's server; not looked into
	}
	for _, f := range mh.Fields {
		switch {
		case strings.HasPrefix(f.Name, ":"):
		case f.Name == "te" && f.Value == "trailers":
		case f.Name == "te", f.Name == "connection", f.Name == "keep-alive",
			f.Name == "proxy-connection", f.Name == "transfer-encoding", f.Name == "upgrade":
			return true
		}
	}
	return false
}

// settingsAfter applies a SETTINGS frame's values in order, as RFC 9113
// 6.5.3 says, until an invalid one.
func settingsAfter(f *http2.SettingsFrame) (map[http2.SettingID]uint32, error) {
	m := map[http2.SettingID]uint32{}
	err := f.ForeachSetting(func(s http2.Setting) error {
		m[s.ID] = s.Val
		return s.Valid()
	})
	return m, err
}

func compareH2Frames(t *testing.T, n int, rf, gf http2.Frame) {
	t.Helper()
	rh, gh := rf.Header(), gf.Header()
	if rh.Type != gh.Type || rh.StreamID != gh.StreamID {
		t.Fatalf("frame %d: reference %v, guard %v", n, rf, gf)
	}
	switch r := rf.(type) {
	case *http2.MetaHeadersFrame:
		g := gf.(*http2.MetaHeadersFrame)
		if !equalFields(r.Fields, g.Fields) || r.Truncated != g.Truncated || r.StreamEnded() != g.StreamEnded() {
			t.Fatalf("frame %d: header fields %v -> %v", n, r.Fields, g.Fields)
		}
		if refConnectionSpecific(r) {
			if !g.HasPriority() || g.Priority.StreamDep != g.StreamID {
				t.Fatalf("frame %d: %v not made self-dependent: %+v", n, r.Fields, g.Priority)
			}
		} else if r.HasPriority() != g.HasPriority() || r.Priority != g.Priority {
			t.Fatalf("frame %d: priority %+v -> %+v", n, r.Priority, g.Priority)
		}
	case *http2.SettingsFrame:
		g := gf.(*http2.SettingsFrame)
		if r.IsAck() != g.IsAck() {
			t.Fatalf("frame %d: ack %v -> %v", n, r.IsAck(), g.IsAck())
		}
		if g.HasDuplicates() && g.NumSettings() <= 100 {
			t.Fatalf("frame %d: repeated settings passed on: %v", n, g)
		}
		rm, rerr := settingsAfter(r)
		gm, gerr := settingsAfter(g)
		if (rerr == nil) != (gerr == nil) || !equalSettings(rm, gm) {
			t.Fatalf("frame %d: settings %v (%v) -> %v (%v)", n, rm, rerr, gm, gerr)
		}
	case *http2.DataFrame:
		g := gf.(*http2.DataFrame)
		if !bytes.Equal(r.Data(), g.Data()) || rh.Flags != gh.Flags || rh.Length != gh.Length {
			t.Fatalf("frame %d: %v -> %v", n, rf, gf)
		}
	default:
		if rh != gh {
			t.Fatalf("frame %d: %v -> %v", n, rf, gf)
		}
	}
}

func equalFields(a, b []hpack.HeaderField) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func equalSettings(a, b map[http2.SettingID]uint32) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}
