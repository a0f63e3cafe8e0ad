package kms_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fleetbox/fleetbox/internal/poll"
	"github.com/fleetbox/fleetbox/kms"
	"github.com/fleetbox/fleetbox/kms/api"
)

// metricValue reads one sample from the KMS's /metrics: the series name
// whose labels include the value label ("" for a series without labels).
func metricValue(t testing.TB, h *harness, name, label string) float64 {
	t.Helper()
	res, err := http.Get(h.url + api.PathMetrics)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	sc := bufio.NewScanner(res.Body)
	for sc.Scan() {
		line := sc.Text()
		series, val, ok := strings.Cut(line, " ")
		if !ok || strings.HasPrefix(line, "#") {
			continue
		}
		base, labels, _ := strings.Cut(series, "{")
		if base != name || (label != "" && !strings.Contains(labels, `="`+label+`"`)) {
			continue
		}
		f, err := strconv.ParseFloat(val, 64)
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	return 0
}

// clientFrom is an HTTP client whose connections come from a given
// loopback address, so one test can play clients at different addresses.
func clientFrom(ip string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	return &http.Client{Transport: &http.Transport{DialContext: d.DialContext, MaxIdleConnsPerHost: 64}, Timeout: 30 * time.Second}
}

func postFrom(t testing.TB, hc *http.Client, url string, body []byte) (int, http.Header, []byte) {
	t.Helper()
	res, err := hc.Post(url, "application/json", strings.NewReader(string(body)))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, res.Header, b
}

// A flood of /challenge requests from one address takes at most that
// address's share of the pending pool and its request rate: an honest node
// at another address gets its key while the flood runs. (Before the limits
// 10,000 challenges from one client locked every node out for 60 s.)
func TestHonestNodeGetsKeyDuringChallengeFlood(t *testing.T) {
	lim := kms.Limits{AddressRate: -1, PendingPerAddress: 50, PeerRate: -1}
	h := newHarness(t, harnessOpts{maxPending: 1000, limits: &lim})
	flooder := clientFrom("127.0.0.2")
	victim := newNode(t, h, 1, goodMRTD)
	body, _ := json.Marshal(api.ChallengeRequest{PeerID: victim.id})
	var issued, limited atomic.Int64
	flood := func(n int) {
		for i := 0; i < n; i++ {
			st, hdr, _ := postFrom(t, flooder, h.url+api.PathChallenge, body)
			switch st {
			case http.StatusOK:
				issued.Add(1)
			case http.StatusTooManyRequests:
				if hdr.Get("Retry-After") == "" {
					t.Error("429 without Retry-After")
				}
				limited.Add(1)
			default:
				t.Errorf("flood challenge: HTTP %d", st)
			}
		}
	}
	// The flooder's challenges stay pending (the test clock stands still);
	// then the honest node asks from 127.0.0.1 while the flood goes on.
	flood(1000)
	var wg sync.WaitGroup
	for w := 0; w < 3; w++ {
		wg.Add(1)
		go func() { defer wg.Done(); flood(200) }()
	}
	key, err := newClient(t, h, victim, false).GetKey(context.Background())
	wg.Wait()
	if err != nil {
		t.Fatalf("honest node during the flood: %v", err)
	}
	if !bytes.Equal(key.Bytes(), expectKey(t, h, kms.DefaultProfile, victim.id)) {
		t.Fatal("honest node got another key")
	}
	if issued.Load() != 50 || limited.Load() != 1600-50 {
		t.Fatalf("flood: %d issued, %d limited; want 50 and %d", issued.Load(), limited.Load(), 1600-50)
	}
	if got := metricValue(t, h, "fleetbox_kms_rate_limited_total", "address_pending"); got != float64(limited.Load()) {
		t.Fatalf("rate_limited_total{limit=address_pending} = %v", got)
	}
}

// The per-address request rate and the per-peer /get-key rate answer 429
// with Retry-After, and refill with time.
func TestRateLimits(t *testing.T) {
	lim := kms.Limits{AddressRate: 2, AddressBurst: 3, PeerRate: 1, PeerBurst: 1, PendingPerAddress: -1}
	h := newHarness(t, harnessOpts{limits: &lim})
	n := newNode(t, h, 1, goodMRTD)
	body, _ := json.Marshal(api.ChallengeRequest{PeerID: n.id})
	hc := clientFrom("127.0.0.3")
	for i := 0; i < 3; i++ {
		if st, _, b := postFrom(t, hc, h.url+api.PathChallenge, body); st != http.StatusOK {
			t.Fatalf("request %d within the burst: %d %s", i, st, b)
		}
	}
	st, hdr, b := postFrom(t, hc, h.url+api.PathChallenge, body)
	if st != http.StatusTooManyRequests || hdr.Get("Retry-After") != "1" || !strings.Contains(string(b), api.CodeRateLimited) {
		t.Fatalf("over the burst: %d Retry-After %q %s", st, hdr.Get("Retry-After"), b)
	}
	// Another address is not affected.
	if st, _, b := postFrom(t, clientFrom("127.0.0.4"), h.url+api.PathChallenge, body); st != http.StatusOK {
		t.Fatalf("other address: %d %s", st, b)
	}
	h.clock.Advance(time.Second)
	if st, _, b := postFrom(t, hc, h.url+api.PathChallenge, body); st != http.StatusOK {
		t.Fatalf("after refill: %d %s", st, b)
	}

	// Per verified peer: the first /get-key goes through, the second in the
	// same second is 429, and is not written to the audit log.
	lim = kms.Limits{AddressRate: -1, PeerRate: 1, PeerBurst: 1, PendingPerAddress: -1}
	h = newHarness(t, harnessOpts{limits: &lim})
	n = newNode(t, h, 1, goodMRTD)
	if r := h.send(t, h.prepare(t, n, nil)); r.status != http.StatusOK {
		t.Fatalf("first key: %+v", r)
	}
	p := h.prepare(t, n, nil)
	if r := h.send(t, p); r.status != http.StatusTooManyRequests || r.err.Error != api.CodeRateLimited {
		t.Fatalf("second key in the same second: %d %s", r.status, r.err.Error)
	}
	pg, _ := h.srv.AuditPage(0, 10)
	if len(pg.Entries) != 1 {
		t.Fatalf("%d audit records, want 1 (the grant)", len(pg.Entries))
	}
	h.clock.Advance(time.Second)
	if r := h.send(t, h.prepare(t, n, nil)); r.status != http.StatusOK {
		t.Fatalf("after a second: %+v", r)
	}
}

// Requests that prove no identity are counted, not fsynced into the audit
// log: a loopback client sending {} as fast as it could wrote 2.8 MB/s.
func TestUnverifiedRefusalsStayOutOfTheAuditLog(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	n := newNode(t, h, 1, goodMRTD)
	for i := 0; i < 200; i++ {
		if st, _ := h.post(t, api.PathGetKey, []byte(`{}`)); st != http.StatusBadRequest {
			t.Fatalf("{}: %d", st)
		}
		p := h.prepare(t, n, nil)
		p.SignKey = newNode(t, h, 2, goodMRTD).sk
		if r := h.send(t, p); r.err.Error != api.CodeInvalidSignature {
			t.Fatalf("bad signature: %+v", r)
		}
	}
	if pg, _ := h.srv.AuditPage(0, 10); len(pg.Entries) != 0 {
		t.Fatalf("%d audit records for refusals without a verified identity", len(pg.Entries))
	}
	if got := metricValue(t, h, "fleetbox_kms_key_denials_total", api.CodeInvalidRequest); got != 200 {
		t.Fatalf("denials{invalid_request} = %v", got)
	}
	// A verified decision still is.
	if r := h.send(t, h.prepare(t, n, nil)); r.status != http.StatusOK {
		t.Fatalf("grant: %+v", r)
	}
	if pg, _ := h.srv.AuditPage(0, 10); len(pg.Entries) != 1 {
		t.Fatalf("%d audit records after a grant", len(pg.Entries))
	}
}

// With the audit database full, /health is 503 and says why.
func TestHealthNotReadyWhenAuditCannotAppend(t *testing.T) {
	h := newHarness(t, harnessOpts{stateMaxSize: 96 << 10})
	n := newNode(t, h, 1, goodMRTD)
	var last result
	for i := 0; i < 400; i++ {
		if last = h.send(t, h.prepare(t, n, nil)); last.status == http.StatusInternalServerError {
			break
		}
	}
	if last.status != http.StatusInternalServerError || last.resp.Key != "" {
		t.Fatalf("the state never filled: last %+v", last)
	}
	var hl api.Health
	if st := h.request(t, http.MethodGet, api.PathHealth, "", "", &hl); st != http.StatusServiceUnavailable || hl.Status != "not_ready" || !strings.Contains(hl.Reason, "audit log cannot be appended") {
		t.Fatalf("health with a full audit log: %d %+v", st, hl)
	}
}

// A client that hangs up mid-body is logged once, not at ERROR.
func TestAbortedBodyIsNotAnError(t *testing.T) {
	var logs syncBuffer
	h := newHarness(t, harnessOpts{logger: &logs})
	conn, err := net.Dial("tcp", strings.TrimPrefix(h.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: kms\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n{\"challengeId\":\"", api.PathGetKey)
	conn.Close()
	poll.Until(t, "the aborted request counted", func() bool {
		return metricValue(t, h, "fleetbox_kms_requests_total", "get-key") >= 1
	})
	if s := logs.String(); strings.Contains(s, "level=ERROR") {
		t.Fatalf("an aborted body logged at ERROR:\n%s", s)
	}
	if pg, _ := h.srv.AuditPage(0, 10); len(pg.Entries) != 0 {
		t.Fatalf("%d audit records for an aborted body", len(pg.Entries))
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
