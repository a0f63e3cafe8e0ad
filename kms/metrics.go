package kms

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are the KMS's Prometheus metrics, on the server's own registry.
// No label ever carries a peer ID, a quote or key material.
type metrics struct {
	requests       *prometheus.CounterVec   // endpoint, code
	grants         *prometheus.CounterVec   // mode: plain|sealed
	denials        *prometheus.CounterVec   // reason
	latency        *prometheus.HistogramVec // endpoint
	pending        prometheus.GaugeFunc
	auditBatch     prometheus.Histogram
	auditCommit    prometheus.Histogram
	policyReloads  *prometheus.CounterVec // result: ok|error
	policyReady    prometheus.Gauge
	challengesFull prometheus.Counter
	rateLimited    *prometheus.CounterVec // limit: address|address_pending|peer
}

func newMetrics(reg *prometheus.Registry, pending func() float64) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fleetbox_kms_requests_total", Help: "HTTP requests by endpoint and response code.",
		}, []string{"endpoint", "code"}),
		grants: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fleetbox_kms_key_grants_total", Help: "Storage keys released, by delivery (plain or HPKE-sealed).",
		}, []string{"mode"}),
		denials: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fleetbox_kms_key_denials_total", Help: "Key requests denied, by error code.",
		}, []string{"reason"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "fleetbox_kms_request_duration_seconds", Help: "Request handling time by endpoint.",
			Buckets: []float64{.0005, .001, .002, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}, []string{"endpoint"}),
		pending: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "fleetbox_kms_pending_challenges", Help: "Challenges issued and not yet used or expired.",
		}, pending),
		auditBatch: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "fleetbox_kms_audit_batch_records", Help: "Audit records per group commit.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 10),
		}),
		auditCommit: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "fleetbox_kms_audit_commit_seconds", Help: "Time of one audit group commit (write and fsync).",
			Buckets: []float64{.0005, .001, .002, .005, .01, .025, .05, .1},
		}),
		policyReloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fleetbox_kms_policy_reloads_total", Help: "Policy reloads (SIGHUP) by result.",
		}, []string{"result"}),
		policyReady: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "fleetbox_kms_policy_ready", Help: "1 when a valid policy is loaded.",
		}),
		challengesFull: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fleetbox_kms_challenges_refused_total", Help: "Challenges refused because the pending cap was reached.",
		}),
		rateLimited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fleetbox_kms_rate_limited_total", Help: "Requests refused with 429 by the per-client limit they hit.",
		}, []string{"limit"}),
	}
	reg.MustRegister(m.rateLimited, m.requests, m.grants, m.denials, m.latency, m.pending, m.auditBatch, m.auditCommit,
		m.policyReloads, m.policyReady, m.challengesFull,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}
