package kms

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/fleetbox/fleetbox/attest"
	"github.com/fleetbox/fleetbox/kms/api"
	"github.com/fleetbox/fleetbox/kms/audit"
	"github.com/fleetbox/fleetbox/measure/eventlog"
)

// apiError is a refusal with a stable code.
type apiError struct {
	code    string
	details []string
	// retryAfter, when set, becomes a Retry-After header (429, 503).
	retryAfter time.Duration
}

// rateLimited is a 429 refusal that says when to come back.
func rateLimited(d time.Duration, detail string) *apiError {
	return &apiError{code: api.CodeRateLimited, details: []string{detail}, retryAfter: d}
}

func refuse(code string, details ...string) *apiError { return &apiError{code: code, details: details} }

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	route := func(method, path string, h http.HandlerFunc) {
		name := path[1:]
		mux.Handle(path, s.instrument(name, func(w http.ResponseWriter, r *http.Request) {
			if r.Method != method {
				w.Header().Set("Allow", method)
				writeError(w, refuse(api.CodeMethodNotAllowed, path+" takes "+method))
				return
			}
			// A browser's cross-site "simple" POST cannot declare JSON, so
			// requiring it keeps web pages from reaching the KMS.
			if method == http.MethodPost {
				if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
					writeError(w, refuse(api.CodeUnsupportedMediaType, fmt.Sprintf("Content-Type %q, want application/json", r.Header.Get("Content-Type"))))
					return
				}
				if ok, wait := s.byAddr.take(sourceKey(r), s.cfg.Now()); !ok {
					s.m.rateLimited.WithLabelValues("address").Inc()
					writeError(w, rateLimited(wait, fmt.Sprintf("more than %g requests per second from this address", s.limits.AddressRate)))
					return
				}
			}
			h(w, r)
		}))
	}
	route(http.MethodPost, api.PathChallenge, s.handleChallenge)
	route(http.MethodPost, api.PathGetKey, s.handleGetKey)
	route(http.MethodPost, api.PathAttest, s.handleAttest)
	route(http.MethodGet, api.PathHealth, s.handleHealth)
	route(http.MethodGet, api.PathAudit, s.handleAudit)
	metricsH := promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{})
	route(http.MethodGet, api.PathMetrics, metricsH.ServeHTTP)
	mux.Handle("/", s.instrument("other", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, refuse(api.CodeNotFound, "no such endpoint: "+r.URL.Path))
	}))
	return mux
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.status = code
	r.ResponseWriter.WriteHeader(code)
}

func (s *Server) instrument(endpoint string, h http.HandlerFunc) http.Handler {
	lat := s.m.latency.WithLabelValues(endpoint)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		h(rec, r)
		lat.Observe(time.Since(start).Seconds())
		s.m.requests.WithLabelValues(endpoint, strconv.Itoa(rec.status)).Inc()
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"error":"internal_error"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

func writeError(w http.ResponseWriter, e *apiError) {
	if e.retryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(retryAfterSeconds(e.retryAfter)))
	}
	writeJSON(w, api.Status(e.code), api.Error{Error: e.code, Details: e.details})
}

// readBody reads at most limit bytes of the request body.
func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, *apiError) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, refuse(api.CodeInvalidRequest, fmt.Sprintf("body exceeds the %d-byte limit", limit))
		}
		return nil, refuse(api.CodeInvalidRequest, "reading body: "+err.Error())
	}
	return body, nil
}

func shapeRefusal(err error) *apiError { return refuse(api.CodeInvalidRequest, err.Error()) }

func (s *Server) handleChallenge(w http.ResponseWriter, r *http.Request) {
	body, aerr := readBody(w, r, api.MaxChallengeBody)
	if aerr != nil {
		writeError(w, aerr)
		return
	}
	req, err := api.DecodeChallengeRequest(body)
	if err != nil {
		writeError(w, shapeRefusal(err))
		return
	}
	id, nonce, exp, err := s.ch.issue(req.PeerID, sourceKey(r))
	if err != nil {
		if errors.Is(err, ErrAddressChallenges) {
			s.m.rateLimited.WithLabelValues("address_pending").Inc()
			writeError(w, rateLimited(s.cfg.ChallengeTTL/10,
				fmt.Sprintf("%d challenges are pending for this address; use or let them expire", s.limits.PendingPerAddress)))
			return
		}
		if errors.Is(err, ErrTooManyChallenges) {
			s.m.challengesFull.Inc()
			writeError(w, refuse(api.CodeTooManyChallenges, fmt.Sprintf("%d challenges are pending; retry later", s.cfg.MaxPendingChallenges)))
			return
		}
		s.log.Error("issuing challenge", "err", err)
		writeError(w, refuse(api.CodeInternal))
		return
	}
	writeJSON(w, http.StatusOK, api.ChallengeResponse{
		ChallengeID: id, NonceB64: base64.StdEncoding.EncodeToString(nonce[:]), ExpiresAt: exp.UTC(),
	})
}

// auditWait bounds how long a decision waits for its audit commit.
const auditWait = 30 * time.Second

func (s *Server) handleGetKey(w http.ResponseWriter, r *http.Request) {
	rel, ev, verified, aerr := s.release(r.Context(), w, r)
	if aerr != nil && !verified {
		// No identity was proven (bad shape, unknown challenge, bad
		// signature, no policy yet, rate limited): anyone can send these
		// for free, so they are counted, not written to the audit log,
		// which keeps every decision about a verified request.
		s.m.denials.WithLabelValues(aerr.code).Inc()
		s.log.Debug("unverified key request refused", "reason", aerr.code)
		writeError(w, aerr)
		return
	}
	ev.Time = s.cfg.Now().UTC()
	ev.Profile = s.cfg.Profile
	if aerr != nil {
		ev.Decision, ev.Reason, ev.Details = audit.Denied, aerr.code, capDetails(aerr.details)
	} else {
		ev.Decision = audit.Granted
	}
	// The decision is on disk before the response leaves; if it cannot be
	// recorded, no key leaves either. The append does not follow the
	// request's context: a requester that hangs up does not decide whether
	// its decision is recorded.
	actx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), auditWait)
	seq, err := s.audit.Append(actx, ev)
	cancel()
	if err != nil && rel != nil {
		clear(rel.delivered)
	}
	if err != nil {
		s.log.Error("audit append failed; no key leaves", "peer", ev.PeerID, "decision", ev.Decision, "err", err)
		s.m.denials.WithLabelValues(api.CodeInternal).Inc()
		writeError(w, refuse(api.CodeInternal, "the decision could not be recorded in the audit log"))
		return
	}
	if r.Context().Err() != nil {
		s.log.Info("requester went away before the answer; the decision is recorded", "peer", ev.PeerID, "decision", ev.Decision, "auditSeq", seq)
	}
	if aerr != nil {
		s.m.denials.WithLabelValues(aerr.code).Inc()
		s.log.Info("key denied", "peer", ev.PeerID, "reason", aerr.code, "quoteHash", ev.QuoteHash, "auditSeq", seq)
		writeError(w, aerr)
		return
	}
	mode := "plain"
	if ev.Sealed {
		mode = "sealed"
	}
	s.m.grants.WithLabelValues(mode).Inc()
	s.log.Debug("key granted", "peer", ev.PeerID, "quoteHash", ev.QuoteHash, "sealed", ev.Sealed, "auditSeq", seq)
	resp := rel.resp
	resp.AuditSeq = seq
	resp.SignatureB64 = base64.StdEncoding.EncodeToString(ed25519.Sign(s.signer,
		api.ResponseMessage(rel.challengeID, ev.PeerID, s.cfg.Profile, rel.instanceID, seq, rel.delivered)))
	clear(rel.delivered)
	writeJSON(w, http.StatusOK, resp)
}

// capDetails bounds what a denial records.
func capDetails(d []string) []string {
	const maxN, maxLen = 8, 300
	if len(d) > maxN {
		d = d[:maxN]
	}
	out := make([]string, len(d))
	for i, s := range d {
		if len(s) > maxLen {
			s = s[:maxLen] + "…"
		}
		out[i] = s
	}
	return out
}

// release runs the /get-key checks in order, stopping at the first failure:
// shape, policy loaded, challenge, key/peer/signature, the peer's rate,
// quote, binding, policy; then derives (and seals) the key. ev collects what
// the audit record says; verified is true once the signature proved the
// peer ID, from which point every decision is audited.
func (s *Server) release(ctx context.Context, w http.ResponseWriter, r *http.Request) (*released, audit.Event, bool, *apiError) {
	var ev audit.Event
	body, aerr := readBody(w, r, api.MaxGetKeyBody)
	if aerr != nil {
		return nil, ev, false, aerr
	}
	req, err := api.DecodeGetKeyRequest(body)
	if err != nil {
		return nil, ev, false, shapeRefusal(err)
	}
	ev.PeerID = req.PeerIDText
	ev.InstanceID = req.InstanceID
	ev.Sealed = req.SealTo != nil

	// The policy in force when the request arrived judges it, even if a
	// reload lands meanwhile. Without one nothing is consumed: retry later.
	pol := s.policy.Load()
	if pol == nil {
		return nil, ev, false, refuse(api.CodePolicyNotReady, "the KMS has no valid admission policy loaded")
	}

	// Consumed whatever happens next: a refused request cannot be retried
	// with the same challenge.
	nonce, err := s.ch.consume(req.ChallengeID, req.PeerIDText)
	if err != nil {
		return nil, ev, false, refuse(api.CodeInvalidChallenge, err.Error())
	}

	derived, err := peerIDOf(req)
	if err != nil {
		return nil, ev, false, refuse(api.CodeInvalidSignature, err.Error())
	}
	if derived != req.PeerID {
		return nil, ev, false, refuse(api.CodeInvalidSignature, "peerPublicKeyB64 derives peer "+derived.String()+", not "+req.PeerIDText)
	}
	q, err := attest.ParseQuote(req.Quote)
	if err != nil {
		return nil, ev, false, refuse(api.CodeAttestationInvalid, err.Error())
	}
	ev.QuoteHash = q.Hash.String()
	msg := api.SigningMessage(req.ChallengeID, nonce, req.PeerIDText, q.Hash, req.SealTo, req.InstanceID)
	if ok, err := req.PublicKey.Verify(msg, req.Signature); err != nil || !ok {
		return nil, ev, false, refuse(api.CodeInvalidSignature, "signatureB64 does not verify over the canonical request with peerPublicKeyB64")
	}
	// The peer ID is proven from here on: limit it, and audit every
	// decision about it.
	if ok, wait := s.byPeer.take(req.PeerIDText, s.cfg.Now()); !ok {
		s.m.rateLimited.WithLabelValues("peer").Inc()
		return nil, ev, false, rateLimited(wait, fmt.Sprintf("more than %g key requests per second for this peer", s.limits.PeerRate))
	}

	verdict, err := s.cfg.Verifier.VerifyQuoteAt(ctx, q, s.cfg.Now())
	if err != nil {
		code := attest.CollateralReason(err)
		if errors.Is(err, ErrCollateralUnavailable) {
			code = api.CodeCollateralUnavailable
		}
		if code != "" {
			// The KMS's collateral is at fault, not the quote: a distinct
			// code, and 503 so that the node retries.
			s.log.Error("collateral does not serve; refusing key releases until it does", "reason", code, "err", err)
			return nil, ev, true, refuse(code, err.Error())
		}
		return nil, ev, true, refuse(api.CodeAttestationInvalid, err.Error())
	}
	ev.MRTD = q.MRTD.String()
	ev.RTMR = []string{q.RTMR[0].String(), q.RTMR[1].String(), q.RTMR[2].String(), q.RTMR[3].String()}
	ev.TcbStatus = string(verdict.TcbStatus)
	ev.Mock = verdict.Mock

	if err := attest.CheckBinding(q.ReportData, nonce, api.BindingFor(req.PeerIDText, req.SealTo, req.InstanceID)); err != nil {
		want := "nonce || SHA-256(peerId)"
		switch {
		case req.InstanceID != "":
			want = "nonce || SHA-256(BindingFor(peerId, sealTo, instanceId))"
		case req.SealTo != nil:
			want = "nonce || SHA-256(peerId || sealTo)"
		}
		return nil, ev, true, refuse(api.CodeReportDataMismatch, "quote report_data is not "+want)
	}

	var elog *eventlog.Log
	if req.EventLog != nil {
		if elog, aerr = s.checkEventLog(req.EventLog, verdict); aerr != nil {
			return nil, ev, true, aerr
		}
		ev.Rtmr3Events = attest.Rtmr3EventMap(verdict.Rtmr3Events)
	}

	if err := pol.Evaluate(verdict); err != nil {
		var details []string
		vs := attest.Violations(err)
		for _, v := range vs {
			details = append(details, v.Message)
		}
		if len(details) == 0 {
			details = []string{err.Error()}
		}
		details = append(details, s.eventDiff(elog, vs)...)
		return nil, ev, true, refuse(api.CodePolicyRejected, details...)
	}

	key, err := s.cfg.RootSecret.DeriveKey(s.cfg.Profile, req.PeerIDText, req.InstanceID)
	if err != nil {
		s.log.Error("deriving key", "err", err)
		return nil, ev, true, refuse(api.CodeInternal)
	}
	defer clear(key[:])
	rel := &released{resp: &api.GetKeyResponse{Profile: s.cfg.Profile}, challengeID: req.ChallengeID, instanceID: req.InstanceID}
	if req.SealTo != nil {
		ct, err := key.Seal(req.SealTo, s.cfg.Profile, req.PeerIDText)
		if err != nil {
			return nil, ev, true, refuse(api.CodeInvalidRequest, err.Error())
		}
		rel.resp.SealedKeyB64 = base64.StdEncoding.EncodeToString(ct)
		rel.delivered = ct
	} else {
		rel.resp.Key = hex.EncodeToString(key[:])
		rel.delivered = append([]byte(nil), key[:]...)
	}
	return rel, ev, true, nil
}

// released is a key ready to leave, once its grant is audited.
type released struct {
	resp        *api.GetKeyResponse
	challengeID string
	instanceID  string
	delivered   []byte // the key material as sent, which the response signature covers
}

func (s *Server) handleAttest(w http.ResponseWriter, r *http.Request) {
	body, aerr := readBody(w, r, api.MaxAttestBody)
	if aerr != nil {
		writeError(w, aerr)
		return
	}
	nonce, err := api.DecodeAttestRequest(body)
	if err != nil {
		writeError(w, shapeRefusal(err))
		return
	}
	pub := s.PublicKey()
	evd, err := attest.GetEvidence(r.Context(), s.source, attest.BindPublicKey(nonce, pub))
	if err != nil {
		s.log.Error("getting the KMS's own quote", "source", s.source.Kind(), "err", err)
		writeError(w, refuse(api.CodeInternal, "the KMS could not get its own quote"))
		return
	}
	quote := evd.Quote
	var logB64 string
	if len(evd.EventLog) > 0 && len(evd.EventLog) <= api.MaxEventLog {
		logB64 = base64.StdEncoding.EncodeToString(evd.EventLog)
	}
	writeJSON(w, http.StatusOK, api.AttestResponse{
		EventLogB64:  logB64,
		QuoteB64:     base64.StdEncoding.EncodeToString(quote),
		PublicKeyB64: base64.StdEncoding.EncodeToString(pub),
		Mock:         attest.IsMockQuote(quote),
		Source:       s.source.Kind(),
	})
}

// handleHealth answers 200 while keys can be released and 503 (not_ready,
// with the reason) while the audit log cannot be appended, since then no
// decision can be recorded and so no key can leave.
func (s *Server) handleHealth(w http.ResponseWriter, _ *http.Request) {
	status, code, reason := "ok", http.StatusOK, ""
	if err := s.audit.Err(); err != nil {
		status, code, reason = "not_ready", http.StatusServiceUnavailable, "the audit log cannot be appended, so no key can be released: "+err.Error()
	}
	writeJSON(w, code, api.Health{
		Status:            status,
		Reason:            reason,
		PolicyReady:       s.policy.Load() != nil,
		Profile:           s.cfg.Profile,
		AuditSeq:          s.audit.Head().Seq,
		PendingChallenges: s.ch.count(),
	})
}

func (s *Server) handleAudit(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var after uint64
	limit := audit.MaxPage
	var err error
	if v := q.Get("after"); v != "" {
		if after, err = strconv.ParseUint(v, 10, 64); err != nil {
			writeError(w, refuse(api.CodeInvalidRequest, "after must be a record number"))
			return
		}
	}
	if v := q.Get("limit"); v != "" {
		if limit, err = strconv.Atoi(v); err != nil || limit < 1 || limit > audit.MaxPage {
			writeError(w, refuse(api.CodeInvalidRequest, fmt.Sprintf("limit must be 1..%d", audit.MaxPage)))
			return
		}
	}
	p, err := s.audit.Entries(after, limit)
	if err != nil {
		s.log.Error("reading audit log", "err", err)
		writeError(w, refuse(api.CodeInternal))
		return
	}
	writeJSON(w, http.StatusOK, p)
}

// peerIDOf derives the libp2p peer ID of the request's public key.
func peerIDOf(req *api.GetKey) (peer.ID, error) {
	id, err := peer.IDFromPublicKey(req.PublicKey)
	if err != nil {
		return "", fmt.Errorf("deriving peer ID from peerPublicKeyB64: %w", err)
	}
	return id, nil
}
