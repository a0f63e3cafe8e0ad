// Package roots holds the set of root certificates a Verifier trusts.
//
// The type lives in an internal package so that code outside attest/ can pass
// a Set along but cannot build one: the shipped binary trusts only the Intel
// SGX Root CA that attest embeds, and only attest/attesttest (test code) can
// hand a Verifier its test root.
package roots

import "crypto/x509"

// Set is an immutable set of trusted root certificates.
type Set struct {
	pool  *x509.CertPool
	certs []*x509.Certificate
}

// New returns a Set trusting exactly certs.
func New(certs ...*x509.Certificate) *Set {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return &Set{pool: p, certs: certs}
}

// Pool returns the certificates as an x509 pool.
func (s *Set) Pool() *x509.CertPool { return s.pool }

// Contains reports whether c is one of the trusted roots (byte equality).
func (s *Set) Contains(c *x509.Certificate) bool {
	for _, r := range s.certs {
		if r.Equal(c) {
			return true
		}
	}
	return false
}
