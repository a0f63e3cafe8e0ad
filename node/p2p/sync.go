package p2p

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
)

// SyncProtocol is the request/response stream protocol that fetches missing
// ops. The requester sends one request frame (namespace and a locator of ops
// it has), closes its write side, and reads batch frames until an end frame.
// Each frame is an unsigned-varint length followed by that many bytes of
// canonical CBOR.
const SyncProtocol protocol.ID = "/fleetbox/ns-sync/1"

// SyncCode is the outcome a responder reports in its end frame.
type SyncCode uint8

const (
	SyncOK               SyncCode = 0
	SyncUnknownNamespace SyncCode = 1
	SyncBadRequest       SyncCode = 2
	SyncInternal         SyncCode = 3
	SyncBusy             SyncCode = 4
)

// maxServing bounds the sync requests a node answers at once; more are
// answered SyncBusy and the requester tries again on its next trigger.
const maxServing = 8

// ErrSyncRefused wraps a non-OK end frame from a responder.
var ErrSyncRefused = errors.New("sync refused by peer")

// batchBytes is the payload size at which a responder sends a batch even if
// it has fewer than MaxBatchOps ops.
const batchBytes = 1 << 20

// SyncRequest asks a peer for the ops of a namespace the requester lacks.
type SyncRequest struct {
	Namespace []byte `cbor:"1,keyasint"`
	// Known is the requester's locator: ids of ops it has applied.
	Known [][]byte `cbor:"2,keyasint,omitempty"`
}

// SyncFrame is one response frame: a batch of op wire bytes, parents before
// children, or the end frame.
type SyncFrame struct {
	Ops  [][]byte `cbor:"1,keyasint,omitempty"`
	End  bool     `cbor:"2,keyasint,omitempty"`
	Code SyncCode `cbor:"3,keyasint,omitempty"`
}

// DecodeSyncRequest decodes a request frame strictly.
func DecodeSyncRequest(data []byte) (*SyncRequest, error) {
	if len(data) > MaxFrameSize {
		return nil, fmt.Errorf("sync request of %d bytes: %w", len(data), ErrOversize)
	}
	var r SyncRequest
	if err := strictUnmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("decoding sync request: %w", err)
	}
	if len(r.Namespace) != len(NamespaceID{}) {
		return nil, fmt.Errorf("%w: namespace id of %d bytes", ErrMalformed, len(r.Namespace))
	}
	if len(r.Known) > maxLocator {
		return nil, fmt.Errorf("sync request with %d known ids: %w", len(r.Known), ErrOversize)
	}
	for _, k := range r.Known {
		if len(k) != len(OpID{}) {
			return nil, fmt.Errorf("%w: op id of %d bytes", ErrMalformed, len(k))
		}
	}
	return &r, nil
}

// DecodeSyncFrame decodes a response frame strictly.
func DecodeSyncFrame(data []byte) (*SyncFrame, error) {
	if len(data) > MaxFrameSize {
		return nil, fmt.Errorf("sync frame of %d bytes: %w", len(data), ErrOversize)
	}
	var f SyncFrame
	if err := strictUnmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("decoding sync frame: %w", err)
	}
	if f.End && len(f.Ops) > 0 {
		return nil, fmt.Errorf("%w: end frame carries ops", ErrMalformed)
	}
	if !f.End && (len(f.Ops) == 0 || f.Code != SyncOK) {
		return nil, fmt.Errorf("%w: batch frame without ops", ErrMalformed)
	}
	if len(f.Ops) > MaxBatchOps {
		return nil, fmt.Errorf("sync frame with %d ops: %w", len(f.Ops), ErrOversize)
	}
	for _, op := range f.Ops {
		if len(op) == 0 || len(op) > MaxOpSize {
			return nil, fmt.Errorf("op of %d bytes in sync frame: %w", len(op), ErrOversize)
		}
	}
	return &f, nil
}

func writeFrame(w *bufio.Writer, v any) error {
	b, err := encMode.Marshal(v)
	if err != nil {
		return fmt.Errorf("encoding frame: %w", err)
	}
	if len(b) > MaxFrameSize {
		return fmt.Errorf("frame of %d bytes: %w", len(b), ErrOversize)
	}
	var hdr [binary.MaxVarintLen64]byte
	n := binary.PutUvarint(hdr[:], uint64(len(b)))
	if _, err := w.Write(hdr[:n]); err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

func readFrame(r *bufio.Reader) ([]byte, error) {
	n, err := binary.ReadUvarint(r)
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil, io.ErrUnexpectedEOF
		}
		return nil, err
	}
	if n > MaxFrameSize {
		return nil, fmt.Errorf("frame of %d bytes: %w", n, ErrOversize)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, err
	}
	return b, nil
}

// serveSync answers one sync stream.
func (n *Network) serveSync(s network.Stream) {
	defer s.Close()
	start := time.Now()
	_ = s.SetDeadline(time.Now().Add(n.cfg.SyncTimeout))
	r := bufio.NewReader(s)
	raw, err := readFrame(r)
	if err != nil {
		n.metrics.syncServed.WithLabelValues("bad_request").Inc()
		_ = s.Reset()
		return
	}
	w := bufio.NewWriterSize(s, 64<<10)
	end := func(code SyncCode) {
		_ = writeFrame(w, &SyncFrame{End: true, Code: code})
		_ = w.Flush()
	}
	select {
	case n.serving <- struct{}{}:
		defer func() { <-n.serving }()
	default:
		n.metrics.syncServed.WithLabelValues("busy").Inc()
		end(SyncBusy)
		return
	}
	req, err := DecodeSyncRequest(raw)
	if err != nil {
		n.metrics.syncServed.WithLabelValues("bad_request").Inc()
		end(SyncBadRequest)
		return
	}
	ns := NamespaceID(req.Namespace)
	known := make([]OpID, len(req.Known))
	for i, k := range req.Known {
		known[i] = OpID(k)
	}
	var (
		batch [][]byte
		size  int
		sent  int
	)
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		if err := writeFrame(w, &SyncFrame{Ops: batch}); err != nil {
			return err
		}
		sent += len(batch)
		batch, size = batch[:0], 0
		return nil
	}
	err = n.cfg.Engine.OpsMissing(ns, known, func(wire []byte) error {
		if len(wire) > MaxOpSize {
			return nil // cannot be sent; the peer would refuse it
		}
		if size+len(wire) > batchBytes || len(batch) == MaxBatchOps {
			if err := flush(); err != nil {
				return err
			}
		}
		batch = append(batch, wire)
		size += len(wire)
		return nil
	})
	if err == nil {
		err = flush()
	}
	switch {
	case errors.Is(err, ErrUnknownNamespace):
		n.metrics.syncServed.WithLabelValues("unknown_namespace").Inc()
		end(SyncUnknownNamespace)
	case err != nil:
		n.metrics.syncServed.WithLabelValues("error").Inc()
		n.log.Debug("serving sync", "peer", s.Conn().RemotePeer(), "namespace", ns, "err", err)
		end(SyncInternal)
	default:
		n.metrics.syncServed.WithLabelValues("ok").Inc()
		n.metrics.syncOpsServed.Add(float64(sent))
		end(SyncOK)
		n.log.Debug("served sync", "peer", s.Conn().RemotePeer(), "namespace", ns, "ops", sent, "took", time.Since(start))
	}
}

// SyncStats reports one fetch.
type SyncStats struct {
	Received int
	ApplyResult
}

func (a *ApplyResult) add(b ApplyResult) {
	a.Applied += b.Applied
	a.Duplicate += b.Duplicate
	a.Pending += b.Pending
	a.Refused += b.Refused
	if a.FirstRefusal == nil {
		a.FirstRefusal = b.FirstRefusal
	}
	a.Missing = b.Missing // the latest batch knows what is still missing
}

// SyncFrom fetches the ops of ns that p has and this node lacks, applying
// them batch by batch as they stream in.
func (n *Network) SyncFrom(ctx context.Context, ns NamespaceID, p peer.ID) (SyncStats, error) {
	var st SyncStats
	h := n.host()
	if h == nil {
		return st, ErrNotRunning
	}
	known, err := n.cfg.Engine.Locator(ns, maxLocator)
	if err != nil {
		return st, fmt.Errorf("building locator: %w", err)
	}
	req := &SyncRequest{Namespace: ns[:]}
	for i := range known {
		req.Known = append(req.Known, known[i][:])
	}
	ctx, cancel := context.WithTimeout(ctx, n.cfg.SyncTimeout)
	defer cancel()
	s, err := h.NewStream(network.WithAllowLimitedConn(ctx, "sync"), p, SyncProtocol)
	if err != nil {
		return st, fmt.Errorf("opening sync stream to %s: %w", p, err)
	}
	defer s.Close()
	if d, ok := ctx.Deadline(); ok {
		_ = s.SetDeadline(d)
	}
	w := bufio.NewWriter(s)
	if err := writeFrame(w, req); err != nil {
		_ = s.Reset()
		return st, fmt.Errorf("sending sync request: %w", err)
	}
	if err := w.Flush(); err != nil {
		_ = s.Reset()
		return st, fmt.Errorf("sending sync request: %w", err)
	}
	_ = s.CloseWrite()
	r := bufio.NewReaderSize(s, 256<<10)
	for {
		raw, err := readFrame(r)
		if err != nil {
			_ = s.Reset()
			return st, fmt.Errorf("reading sync frame from %s: %w", p, err)
		}
		f, err := DecodeSyncFrame(raw)
		if err != nil {
			_ = s.Reset()
			return st, fmt.Errorf("sync from %s: %w", p, err)
		}
		if f.End {
			if f.Code != SyncOK {
				return st, fmt.Errorf("%w: %s answered code %d", ErrSyncRefused, p, f.Code)
			}
			return st, nil
		}
		st.Received += len(f.Ops)
		res, err := n.cfg.Engine.Apply(WithOrigin(ctx, p), ns, f.Ops)
		st.add(res)
		n.metrics.opsSynced.Add(float64(res.Applied))
		n.countRefused("sync", res.Refused)
		if err != nil {
			_ = s.Reset()
			return st, fmt.Errorf("applying synced ops: %w", err)
		}
	}
}
