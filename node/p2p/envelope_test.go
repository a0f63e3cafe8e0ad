package p2p

import (
	"bytes"
	"errors"
	"testing"
)

func mustMarshal(t testing.TB, v any) []byte {
	t.Helper()
	b, err := encMode.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestEnvelopeRoundTrip(t *testing.T) {
	ns := NamespaceID{7}
	heads := []OpID{{1}, {2}}
	cases := map[string]*Envelope{
		"op":        NewOpEnvelope(ns, []byte("op bytes")),
		"heartbeat": NewHeartbeat(ns, heads, 42),
		"empty dag": NewHeartbeat(ns, nil, 0),
		"announce":  NewAnnounce(ns, []byte("quote")),
	}
	for name, e := range cases {
		t.Run(name, func(t *testing.T) {
			b, err := e.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			got, err := DecodeEnvelope(b)
			if err != nil {
				t.Fatal(err)
			}
			again, _ := got.Marshal()
			if !bytes.Equal(again, b) || got.NamespaceID() != ns || got.Kind != e.Kind {
				t.Fatalf("round trip changed the envelope: %+v -> %+v", e, got)
			}
		})
	}
}

func TestDecodeEnvelopeRefuses(t *testing.T) {
	ns := NamespaceID{7}
	good := mustMarshal(t, NewOpEnvelope(ns, []byte("x")))
	cases := map[string]struct {
		data []byte
		want error
	}{
		"empty":           {nil, ErrMalformed},
		"not a map":       {[]byte{0x01}, ErrMalformed},
		"truncated":       {good[:len(good)-1], ErrMalformed},
		"trailing":        {append(append([]byte(nil), good...), 0x00), ErrMalformed},
		"oversize":        {make([]byte, MaxEnvelopeSize+1), ErrOversize},
		"oversize op":     {mustMarshal(t, &Envelope{Kind: KindOp, Namespace: ns[:], Op: make([]byte, MaxOpSize+1)}), ErrOversize},
		"unknown kind":    {mustMarshal(t, &Envelope{Kind: 9, Namespace: ns[:]}), ErrMalformed},
		"short ns":        {mustMarshal(t, &Envelope{Kind: KindOp, Namespace: ns[:31], Op: []byte("x")}), ErrMalformed},
		"op without op":   {mustMarshal(t, &Envelope{Kind: KindOp, Namespace: ns[:]}), ErrMalformed},
		"short head":      {mustMarshal(t, &Envelope{Kind: KindHeartbeat, Namespace: ns[:], Heads: [][]byte{{1}}}), ErrMalformed},
		"too many heads":  {mustMarshal(t, &Envelope{Kind: KindHeartbeat, Namespace: ns[:], Heads: make([][]byte, MaxHeads+1)}), ErrMalformed},
		"heartbeat w/ op": {mustMarshal(t, &Envelope{Kind: KindHeartbeat, Namespace: ns[:], Op: []byte("x")}), ErrMalformed},
		"unknown field":   {mustMarshal(t, map[int]any{1: 1, 2: ns[:], 3: []byte("x"), 99: 1}), ErrMalformed},
		"duplicate key":   {[]byte{0xa3, 0x01, 0x01, 0x01, 0x01, 0x03, 0x41, 0x78}, ErrMalformed},
		"indefinite":      {append([]byte{0xbf}, append(good[1:], 0xff)...), ErrMalformed},
		"tagged":          {append([]byte{0xd8, 0x18}, good...), ErrMalformed},
		"non-canonical int": {
			// kind 1 encoded as a one-byte uint (0x18 0x01) instead of 0x01.
			bytes.Replace(good, []byte{0x01, 0x01}, []byte{0x01, 0x18, 0x01}, 1), ErrNonCanonical},
		"unsorted keys": {mustMarshalUnsorted(t, ns), ErrNonCanonical},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := DecodeEnvelope(c.data)
			if err == nil {
				t.Fatal("accepted")
			}
			if c.want == ErrMalformed && (errors.Is(err, ErrMalformed) || errors.Is(err, ErrOversize) || errors.Is(err, ErrNonCanonical)) {
				return
			}
			if !errors.Is(err, c.want) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
		})
	}
}

// mustMarshalUnsorted encodes an op envelope with keys 3, 1, 2.
func mustMarshalUnsorted(t testing.TB, ns NamespaceID) []byte {
	var b bytes.Buffer
	b.WriteByte(0xa3)
	b.Write([]byte{0x03, 0x41, 'x'})
	b.Write([]byte{0x01, 0x01})
	b.Write([]byte{0x02, 0x58, 0x20})
	b.Write(ns[:])
	return b.Bytes()
}

func TestSyncFrameRefuses(t *testing.T) {
	cases := map[string][]byte{
		"end with ops":   mustMarshal(t, &SyncFrame{End: true, Ops: [][]byte{{1}}}),
		"batch, no ops":  mustMarshal(t, &SyncFrame{}),
		"empty op":       mustMarshal(t, &SyncFrame{Ops: [][]byte{{}}}),
		"too many ops":   mustMarshal(t, &SyncFrame{Ops: make([][]byte, MaxBatchOps+1)}),
		"oversize op":    mustMarshal(t, &SyncFrame{Ops: [][]byte{make([]byte, MaxOpSize+1)}}),
		"code on batch":  mustMarshal(t, &SyncFrame{Ops: [][]byte{{1}}, Code: SyncInternal}),
		"unknown field":  mustMarshal(t, map[int]any{1: [][]byte{{1}}, 7: true}),
		"garbage":        []byte{0xff, 0x00},
		"oversize frame": make([]byte, MaxFrameSize+1),
	}
	for name, data := range cases {
		t.Run(name, func(t *testing.T) {
			if _, err := DecodeSyncFrame(data); err == nil {
				t.Fatal("accepted")
			}
		})
	}
	reqs := map[string][]byte{
		"short ns":     mustMarshal(t, &SyncRequest{Namespace: []byte{1}}),
		"short known":  mustMarshal(t, &SyncRequest{Namespace: make([]byte, 32), Known: [][]byte{{1}}}),
		"many known":   mustMarshal(t, &SyncRequest{Namespace: make([]byte, 32), Known: make([][]byte, maxLocator+1)}),
		"not a map":    {0x80},
		"extra fields": mustMarshal(t, map[int]any{1: make([]byte, 32), 3: 1}),
	}
	for name, data := range reqs {
		t.Run("request "+name, func(t *testing.T) {
			if _, err := DecodeSyncRequest(data); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

func FuzzDecodeEnvelope(f *testing.F) {
	ns := NamespaceID{7}
	for _, e := range []*Envelope{
		NewOpEnvelope(ns, fakeOp(ns, []OpID{{1}}, key(1), []byte("payload"))),
		NewHeartbeat(ns, []OpID{{1}, {2}}, 3),
		NewAnnounce(ns, []byte("announce")),
	} {
		b, _ := e.Marshal()
		f.Add(b)
	}
	f.Add([]byte{0xa0})
	f.Fuzz(func(t *testing.T, data []byte) {
		e, err := DecodeEnvelope(data)
		if err != nil {
			return
		}
		// Whatever decodes re-encodes to exactly the same bytes.
		b, err := e.Marshal()
		if err != nil || !bytes.Equal(b, data) {
			t.Fatalf("accepted envelope does not round-trip: %v", err)
		}
	})
}

func FuzzDecodeSyncMessages(f *testing.F) {
	ns := NamespaceID{7}
	f.Add(mustMarshal(f, &SyncRequest{Namespace: ns[:], Known: [][]byte{make([]byte, 32)}}))
	f.Add(mustMarshal(f, &SyncFrame{Ops: [][]byte{fakeOp(ns, nil, key(1), []byte("a")), fakeOp(ns, nil, key(2), []byte("b"))}}))
	f.Add(mustMarshal(f, &SyncFrame{End: true, Code: SyncUnknownNamespace}))
	f.Fuzz(func(t *testing.T, data []byte) {
		if r, err := DecodeSyncRequest(data); err == nil {
			if b := mustMarshal(t, r); !bytes.Equal(b, data) {
				t.Fatal("accepted request does not round-trip")
			}
		}
		if fr, err := DecodeSyncFrame(data); err == nil {
			if b := mustMarshal(t, fr); !bytes.Equal(b, data) {
				t.Fatal("accepted frame does not round-trip")
			}
		}
	})
}
