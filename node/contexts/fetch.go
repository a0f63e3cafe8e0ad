package contexts

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/fxamacker/cbor/v2"

	"github.com/fleetbox/fleetbox/node/contexts/wasmhost"
	"github.com/fleetbox/fleetbox/node/governance"
)

// FetchProtocol is the libp2p stream protocol that serves application
// bytes. One request per stream:
//
//	requester -> u16 length || FetchRequest (canonical CBOR)
//	responder -> u16 length || FetchResponse (canonical CBOR) || Size bytes
//
// The request is signed by the requester's namespace identity over
// "fleetbox/v1/app-fetch\x00" || namespace || application || requester
// peer id || responder peer id. The libp2p connection authenticates both
// peer ids, so a request cannot be replayed by another peer or to another
// responder. The responder serves only members of a group of that
// namespace whose context uses or used the application.
const FetchProtocol = "/fleetbox/app-fetch/1"

const (
	fetchDomain        = "fleetbox/v1/app-fetch\x00"
	maxFetchMessage    = 1024
	fetchOK            = 0
	fetchDenied        = 1
	fetchNotFound      = 2
	fetchBadRequest    = 3
	maxFetchErrorBytes = 256
)

// FetchRequest asks for an application.
type FetchRequest struct {
	Namespace   NamespaceID          `cbor:"1,keyasint"`
	Application ApplicationID        `cbor:"2,keyasint"`
	Member      governance.PublicKey `cbor:"3,keyasint"`
	Sig         []byte               `cbor:"4,keyasint"`
}

// FetchResponse answers one.
type FetchResponse struct {
	Status uint8  `cbor:"1,keyasint"`
	Size   uint32 `cbor:"2,keyasint,omitempty"`
	Error  string `cbor:"3,keyasint,omitempty"`
}

// Fetch errors.
var (
	ErrFetchDenied    = errors.New("contexts: peer refused to serve the application")
	ErrFetchMalformed = errors.New("contexts: malformed application-fetch message")
)

var fetchDec = must(cbor.DecOptions{DupMapKey: cbor.DupMapKeyEnforcedAPF, IndefLength: cbor.IndefLengthForbidden,
	TagsMd: cbor.TagsForbidden, MaxNestedLevels: 4, MaxArrayElements: 16, MaxMapPairs: 16,
	ExtraReturnErrors: cbor.ExtraDecErrorUnknownField}.DecMode())

// decodeStrict decodes a canonical CBOR message of at most maxFetchMessage
// bytes, refusing anything that is not the canonical encoding.
func decodeStrict(b []byte, v any) error {
	if len(b) > maxFetchMessage {
		return fmt.Errorf("%w: %d bytes", ErrFetchMalformed, len(b))
	}
	if err := fetchDec.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%w: %v", ErrFetchMalformed, err)
	}
	if again := enc(v); !bytes.Equal(again, b) {
		return fmt.Errorf("%w: not canonical CBOR", ErrFetchMalformed)
	}
	return nil
}

// DecodeFetchRequest decodes a request strictly (no signature check).
func DecodeFetchRequest(b []byte) (*FetchRequest, error) {
	var r FetchRequest
	if err := decodeStrict(b, &r); err != nil {
		return nil, err
	}
	if len(r.Sig) != ed25519.SignatureSize {
		return nil, fmt.Errorf("%w: signature of %d bytes", ErrFetchMalformed, len(r.Sig))
	}
	return &r, nil
}

// DecodeFetchResponse decodes a response header strictly.
func DecodeFetchResponse(b []byte) (*FetchResponse, error) {
	var r FetchResponse
	if err := decodeStrict(b, &r); err != nil {
		return nil, err
	}
	if r.Size > wasmhost.MaxAppSize || len(r.Error) > maxFetchErrorBytes || (r.Status == fetchOK) != (r.Error == "") {
		return nil, fmt.Errorf("%w: response out of bounds", ErrFetchMalformed)
	}
	return &r, nil
}

func fetchMessage(ns NamespaceID, app ApplicationID, requester, responder []byte) []byte {
	m := append([]byte(fetchDomain), ns[:]...)
	m = append(m, app[:]...)
	m = binary.BigEndian.AppendUint16(m, uint16(len(requester)))
	m = append(m, requester...)
	m = binary.BigEndian.AppendUint16(m, uint16(len(responder)))
	return append(m, responder...)
}

// NewFetchRequest signs a request as the holder of priv (a namespace
// identity key), bound to both peers.
func NewFetchRequest(priv ed25519.PrivateKey, ns NamespaceID, app ApplicationID, requester, responder []byte) *FetchRequest {
	r := &FetchRequest{Namespace: ns, Application: app}
	copy(r.Member[:], priv.Public().(ed25519.PublicKey))
	r.Sig = ed25519.Sign(priv, fetchMessage(ns, app, requester, responder))
	return r
}

// Verify checks the signature for this pair of peers.
func (r *FetchRequest) Verify(requester, responder []byte) bool {
	return len(r.Sig) == ed25519.SignatureSize && ed25519.Verify(r.Member[:], fetchMessage(r.Namespace, r.Application, requester, responder), r.Sig)
}

func writeMsg(w io.Writer, v any) error {
	b := enc(v)
	if _, err := w.Write(binary.BigEndian.AppendUint16(nil, uint16(len(b)))); err != nil {
		return err
	}
	_, err := w.Write(b)
	return err
}

func readMsg(r io.Reader) ([]byte, error) {
	var n [2]byte
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return nil, err
	}
	l := int(binary.BigEndian.Uint16(n[:]))
	if l > maxFetchMessage {
		return nil, fmt.Errorf("%w: %d-byte message", ErrFetchMalformed, l)
	}
	b := make([]byte, l)
	_, err := io.ReadFull(r, b)
	return b, err
}

// ServeFetch answers one request on rw (a stream from requester to this
// node, responder). The caller bounds the stream's lifetime.
func (e *Engine) ServeFetch(rw io.ReadWriter, requester, responder []byte) error {
	b, err := readMsg(rw)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(rw)
	answer := func(status uint8, msg string) error {
		if err := writeMsg(w, &FetchResponse{Status: status, Error: msg}); err != nil {
			return err
		}
		return w.Flush()
	}
	req, err := DecodeFetchRequest(b)
	if err != nil {
		_ = answer(fetchBadRequest, "malformed request")
		return err
	}
	if !req.Verify(requester, responder) {
		_ = answer(fetchDenied, "bad signature")
		return fmt.Errorf("%w: bad signature", ErrFetchDenied)
	}
	if !e.gov.MayFetchApplication(req.Namespace, req.Member, req.Application) {
		_ = answer(fetchDenied, "not a member of a group whose context uses the application")
		return fmt.Errorf("%w: %s is not a member of a group using %s", ErrFetchDenied, req.Member.String()[:12], req.Application.String()[:12])
	}
	wasm, err := e.ApplicationBytes(req.Application)
	if err != nil {
		_ = answer(fetchNotFound, "not stored here")
		return err
	}
	if err := writeMsg(w, &FetchResponse{Status: fetchOK, Size: uint32(len(wasm))}); err != nil {
		return err
	}
	if _, err := w.Write(wasm); err != nil {
		return err
	}
	return w.Flush()
}

// FetchFrom requests app over rw (a stream from this node, requester, to
// responder) and returns bytes that hash to app.
func FetchFrom(ctx context.Context, rw io.ReadWriter, priv ed25519.PrivateKey, ns NamespaceID, app ApplicationID, requester, responder []byte) ([]byte, error) {
	if err := writeMsg(rw, NewFetchRequest(priv, ns, app, requester, responder)); err != nil {
		return nil, err
	}
	r := bufio.NewReader(rw)
	b, err := readMsg(r)
	if err != nil {
		return nil, err
	}
	resp, err := DecodeFetchResponse(b)
	if err != nil {
		return nil, err
	}
	if resp.Status != fetchOK {
		return nil, fmt.Errorf("%w: %s", ErrFetchDenied, resp.Error)
	}
	wasm := make([]byte, resp.Size)
	if _, err := io.ReadFull(r, wasm); err != nil {
		return nil, err
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	if wasmhost.ID(wasm) != wasmhost.ApplicationID(app) {
		return nil, fmt.Errorf("%w: bytes do not hash to application %s", ErrFetchMalformed, app)
	}
	return wasm, nil
}

// IdentityKey returns this node's namespace identity signing key for ns,
// to sign fetch requests.
func (e *Engine) IdentityKey(ns NamespaceID) (ed25519.PrivateKey, error) {
	k, _, err := e.gov.IdentityKeys(ns)
	return k, err
}
