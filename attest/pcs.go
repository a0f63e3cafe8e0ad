package attest

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/fleetbox/fleetbox/internal/atomicfile"
	"github.com/fleetbox/fleetbox/internal/strictjson"
)

// IntelPCS is the base URL of Intel's Provisioning Certification Service.
// A PCCS (caching service) serves the same v4 paths under its own base URL.
const IntelPCS = "https://api.trustedservices.intel.com"

// intelRootCRL is the CRL distribution point of the Intel SGX Root CA.
const intelRootCRL = "https://certificates.trustedservices.intel.com/IntelSGXRootCA.der"

// CollateralCacheConfig configures a CollateralCache.
type CollateralCacheConfig struct {
	// Dir holds one QuoteCollateralV3 JSON file per platform. Required.
	Dir string
	// URL is a PCS or PCCS base URL (IntelPCS, https://pccs:8081). Empty:
	// serve what Dir holds and never fetch.
	URL string
	// Client fetches from URL. Nil: a client with a 30 s timeout.
	Client *http.Client
	// Now gives the time freshness is judged at. Nil: time.Now.
	Now func() time.Time
	// RefreshBefore refreshes collateral this long before its earliest
	// nextUpdate. Zero: 24 hours.
	RefreshBefore time.Duration
	Logger        *slog.Logger
}

// CollateralCache serves collateral from a directory and refreshes it from a
// PCS or PCCS. Past its validity it fails closed: a clear error, never stale
// data. It is safe for concurrent use.
type CollateralCache struct {
	cfg CollateralCacheConfig
	log *slog.Logger

	mu      sync.Mutex // guards entries
	entries map[string]*cacheEntry
}

type cacheEntry struct {
	mu sync.Mutex // serializes loads and refreshes of this entry
	c  *Collateral
}

// NewCollateralCache returns a cache. It starts nothing and reads nothing.
func NewCollateralCache(cfg CollateralCacheConfig) *CollateralCache {
	if cfg.Client == nil {
		cfg.Client = &http.Client{Timeout: 30 * time.Second}
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.RefreshBefore == 0 {
		cfg.RefreshBefore = 24 * time.Hour
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &CollateralCache{cfg: cfg, log: log, entries: make(map[string]*cacheEntry)}
}

// Expiry is the earliest nextUpdate among the collateral's parts.
func (c *Collateral) Expiry() time.Time {
	t := c.TcbInfo.NextUpdate
	if c.QeIdentity.NextUpdate.Before(t) {
		t = c.QeIdentity.NextUpdate
	}
	if c.PckCrl != nil && c.PckCrl.NextUpdate.Before(t) {
		t = c.PckCrl.NextUpdate
	}
	if c.RootCaCrl != nil && c.RootCaCrl.NextUpdate.Before(t) {
		t = c.RootCaCrl.NextUpdate
	}
	return t
}

func (cc *CollateralCache) path(fmspc FMSPC, ca string) string {
	return filepath.Join(cc.cfg.Dir, fmt.Sprintf("collateral-%s-%s.json", fmspc, ca))
}

// Collateral implements CollateralSource.
func (cc *CollateralCache) Collateral(ctx context.Context, fmspc FMSPC, ca string) (*Collateral, error) {
	if ca != "platform" && ca != "processor" {
		return nil, fmt.Errorf("collateral cache: unknown PCK CA %q", ca)
	}
	key := fmspc.String() + "-" + ca
	cc.mu.Lock()
	e, ok := cc.entries[key]
	if !ok {
		e = &cacheEntry{}
		cc.entries[key] = e
	}
	cc.mu.Unlock()

	e.mu.Lock()
	defer e.mu.Unlock()
	now := cc.cfg.Now()
	if e.c == nil {
		c, err := LoadCollateralFile(cc.path(fmspc, ca))
		switch {
		case err == nil:
			e.c = c
		case errors.Is(err, os.ErrNotExist):
		default:
			cc.log.Warn("ignoring unreadable cached collateral", "fmspc", fmspc, "ca", ca, "err", err)
		}
	}
	if e.c != nil && now.Add(cc.cfg.RefreshBefore).Before(e.c.Expiry()) {
		return e.c, nil
	}
	var refreshErr error
	if cc.cfg.URL == "" {
		refreshErr = errors.New("no PCS/PCCS URL is configured to refresh it")
	} else {
		c, data, err := cc.fetch(ctx, fmspc, ca)
		if err == nil {
			if werr := writeFileAtomic(cc.path(fmspc, ca), data); werr != nil {
				cc.log.Warn("could not write collateral cache", "err", werr)
			}
			e.c = c
			cc.log.Info("collateral refreshed", "fmspc", fmspc, "ca", ca, "nextUpdate", c.Expiry())
			return c, nil
		}
		refreshErr = err
	}
	if e.c != nil && !now.After(e.c.Expiry()) {
		cc.log.Warn("collateral refresh failed; serving cached copy until it expires", "fmspc", fmspc, "expires", e.c.Expiry(), "err", refreshErr)
		return e.c, nil
	}
	if e.c != nil {
		return nil, fmt.Errorf("%w: cached collateral for fmspc %s expired at %s, and %v", ErrCollateralExpired, fmspc, e.c.Expiry().UTC().Format(time.RFC3339), refreshErr)
	}
	return nil, fmt.Errorf("%w: none for fmspc %s in %s, and %v", ErrCollateralUnavailable, fmspc, cc.cfg.Dir, refreshErr)
}

// fetch gets TCB Info, QE Identity and the CRLs from the PCS API v4
// (Intel PCS API documentation, "Get TDX TCB Info", "Get TDX QE Identity",
// "Get PCK Cert CRL") and assembles them as QuoteCollateralV3 JSON.
func (cc *CollateralCache) fetch(ctx context.Context, fmspc FMSPC, ca string) (*Collateral, []byte, error) {
	base := strings.TrimRight(cc.cfg.URL, "/")
	var doc collateralV3JSON
	tcbBody, hdr, err := cc.get(ctx, base+"/tdx/certification/v4/tcb?fmspc="+fmspc.String())
	if err != nil {
		return nil, nil, err
	}
	if doc.TcbInfo, doc.TcbInfoSignature, err = splitSigned(tcbBody, "tcbInfo"); err != nil {
		return nil, nil, err
	}
	if doc.TcbInfoIssuerChain, err = issuerChain(hdr, "Tcb-Info-Issuer-Chain", "Sgx-Tcb-Info-Issuer-Chain"); err != nil {
		return nil, nil, err
	}
	qeBody, hdr, err := cc.get(ctx, base+"/tdx/certification/v4/qe/identity")
	if err != nil {
		return nil, nil, err
	}
	if doc.QeIdentity, doc.QeIdentitySignature, err = splitSigned(qeBody, "enclaveIdentity"); err != nil {
		return nil, nil, err
	}
	if doc.QeIdentityIssuerChain, err = issuerChain(hdr, "Sgx-Enclave-Identity-Issuer-Chain"); err != nil {
		return nil, nil, err
	}
	crl, hdr, err := cc.get(ctx, base+"/sgx/certification/v4/pckcrl?ca="+ca+"&encoding=der")
	if err != nil {
		return nil, nil, err
	}
	doc.PckCrl = derOrHex(crl)
	if doc.PckCrlIssuerChain, err = issuerChain(hdr, "Sgx-Pck-Crl-Issuer-Chain"); err != nil {
		return nil, nil, err
	}
	rootURL := base + "/sgx/certification/v4/rootcacrl"
	if base == IntelPCS {
		rootURL = intelRootCRL
	}
	root, _, err := cc.get(ctx, rootURL)
	if err != nil {
		return nil, nil, err
	}
	doc.RootCaCrl = derOrHex(root)
	data, err := json.MarshalIndent(doc, "", " ")
	if err != nil {
		return nil, nil, err
	}
	c, err := ParseCollateralJSON(data)
	if err != nil {
		return nil, nil, fmt.Errorf("collateral from %s: %w", base, err)
	}
	return c, data, nil
}

func (cc *CollateralCache) get(ctx context.Context, u string) ([]byte, http.Header, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, nil, err
	}
	resp, err := cc.cfg.Client.Do(req)
	if err != nil {
		return nil, nil, fmt.Errorf("fetching collateral: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxCollateralSize+1))
	if err != nil {
		return nil, nil, fmt.Errorf("fetching collateral from %s: %w", u, err)
	}
	if len(body) > MaxCollateralSize {
		return nil, nil, fmt.Errorf("fetching collateral from %s: response over %d bytes", u, MaxCollateralSize)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, nil, fmt.Errorf("fetching collateral from %s: HTTP %s", u, resp.Status)
	}
	return body, resp.Header, nil
}

// splitSigned cuts the exact signed JSON object and its signature out of a
// PCS response body {"<field>": {...}, "signature": "<hex>"}.
func splitSigned(body []byte, field string) (string, string, error) {
	var m map[string]json.RawMessage
	if err := strictjson.UnmarshalKnown(body, &m); err != nil {
		return "", "", fmt.Errorf("PCS response: %w", err)
	}
	raw, ok := m[field]
	if !ok {
		return "", "", fmt.Errorf("PCS response has no %q", field)
	}
	var sig string
	if err := strictjson.Unmarshal(m["signature"], &sig); err != nil {
		return "", "", fmt.Errorf("PCS response signature: %w", err)
	}
	return string(raw), sig, nil
}

// issuerChain reads a URL-escaped PEM issuer chain header.
func issuerChain(h http.Header, names ...string) (string, error) {
	for _, n := range names {
		if v := h.Get(n); v != "" {
			s, err := url.QueryUnescape(v)
			if err != nil {
				return "", fmt.Errorf("PCS header %s: %w", n, err)
			}
			return s, nil
		}
	}
	return "", fmt.Errorf("PCS response lacks the %s header", names[0])
}

// derOrHex returns hex of a CRL given as DER or as hex text (PCCS returns
// either, depending on version).
func derOrHex(b []byte) string {
	t := bytes.TrimSpace(b)
	if _, err := hex.DecodeString(string(t)); err == nil && len(t) > 0 {
		return string(t)
	}
	return hex.EncodeToString(b)
}

func writeFileAtomic(path string, data []byte) error { return atomicfile.Write(path, data, 0o644) }
