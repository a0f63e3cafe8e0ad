// Package dstacktest runs a fake dstack guest agent on a unix socket for
// tests: test-CA quotes whose RTMRs are the replay of the event log it
// serves with them, and keys derived from the app's identity. Only tests
// may import it (it signs with a test CA).
package dstacktest

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/fleetbox/fleetbox/attest"
	"github.com/fleetbox/fleetbox/attest/attesttest"
	"github.com/fleetbox/fleetbox/attest/dstack"
)

// App is what one dstack CVM is: its app identity, its instance and its OS.
type App struct {
	AppID       [20]byte
	ComposeHash [32]byte
	InstanceID  [20]byte
	// KeyProvider is the key-provider event's payload (dstack: a JSON
	// object naming the KMS).
	KeyProvider []byte
	MRTD        attest.MRTD
	// OSSeed varies the RTMR0-2 boot events (another OS image).
	OSSeed byte
}

// Event is one event of the fake log, in dstack's JSON form.
type Event struct {
	IMR          int    `json:"imr"`
	EventType    uint32 `json:"event_type"`
	Digest       string `json:"digest"`
	Event        string `json:"event"`
	EventPayload string `json:"event_payload"`
}

// Events returns the app's event log: two boot events in each of RTMR0-2,
// then dstack's RTMR3 runtime events in the order dstack extends them.
func (a App) Events() []Event {
	var evs []Event
	for imr := range 3 {
		for i := range 2 {
			d := sha512.Sum384([]byte{a.OSSeed, byte(imr), byte(i)})
			evs = append(evs, Event{IMR: imr, EventType: 0x80000001 + uint32(i), Digest: hex.EncodeToString(d[:])})
		}
	}
	rt := func(name string, payload []byte) {
		d := attest.RuntimeEventDigest(attest.RuntimeEventType, name, payload)
		evs = append(evs, Event{IMR: 3, EventType: attest.RuntimeEventType, Digest: hex.EncodeToString(d[:]),
			Event: name, EventPayload: hex.EncodeToString(payload)})
	}
	rt("system-preparing", nil)
	rt("app-id", a.AppID[:])
	rt("compose-hash", a.ComposeHash[:])
	rt("instance-id", a.InstanceID[:])
	rt("boot-mr-done", nil)
	rt("key-provider", a.KeyProvider)
	rt("system-ready", nil)
	return evs
}

// Registers replays the events into RTMR0-3.
func Registers(evs []Event) [4]attest.RTMR {
	var r [4]attest.RTMR
	for _, e := range evs {
		d, _ := hex.DecodeString(e.Digest)
		h := sha512.New384()
		h.Write(r[e.IMR][:])
		h.Write(d)
		h.Sum(r[e.IMR][:0])
	}
	return r
}

// Policy pins the app the way an operator would: its OS (MRTD and the boot
// events' RTMR0-2) and its compose-hash event, and the key-provider's
// presence; RTMR3 itself is waived, since instance-id differs per CVM.
func (a App) Policy() *attest.Policy {
	regs := Registers(a.Events())
	return &attest.Policy{
		AllowedMrtd:  []string{a.MRTD.String()},
		AllowedRtmr0: []string{regs[0].String()}, AllowedRtmr1: []string{regs[1].String()},
		AllowedRtmr2: []string{regs[2].String()}, AllowedRtmr3: []string{attest.Wildcard},
		Rtmr3Events: map[string][]string{
			"compose-hash": {hex.EncodeToString(a.ComposeHash[:])},
			"key-provider": {attest.Wildcard},
		},
	}
}

// Agent is a running fake agent.
type Agent struct {
	App      App
	Platform *attesttest.Platform
	// Socket is the unix socket it listens on.
	Socket string
	// Tamper, if set, edits each event log before it is served (a forged
	// log for tests).
	Tamper func([]Event) []Event
	// Quotes counts GetQuote calls.
	Quotes atomic.Int64
}

// Start serves app's agent until the test ends. Quotes come from p.
func Start(t testing.TB, p *attesttest.Platform, app App) *Agent {
	t.Helper()
	// A short directory: unix socket paths are limited to 108 bytes.
	dir, err := os.MkdirTemp("", "dstack")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	a := &Agent{App: app, Platform: p, Socket: filepath.Join(dir, "dstack.sock")}
	ln, err := net.Listen("unix", a.Socket)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /GetQuote", a.getQuote)
	mux.HandleFunc("POST /GetKey", a.getKey)
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	return a
}

// Client returns a dstack.Agent talking to this fake.
func (a *Agent) Client() *dstack.Agent { return dstack.New(a.Socket) }

func (a *Agent) getQuote(w http.ResponseWriter, r *http.Request) {
	var req struct {
		ReportData string `json:"report_data"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	rdb, err := hex.DecodeString(req.ReportData)
	if err != nil || len(rdb) > 64 {
		http.Error(w, "report_data: want at most 64 bytes of hex", http.StatusBadRequest)
		return
	}
	a.Quotes.Add(1)
	var rd attest.ReportData
	copy(rd[:], rdb)
	evs := a.App.Events()
	regs := Registers(evs) // the quote shows the true replay
	if a.Tamper != nil {
		evs = a.Tamper(evs)
	}
	src := &attesttest.Source{Platform: a.Platform, Options: attesttest.QuoteOptions{
		MRTD: a.App.MRTD, RTMR: regs, MRConfigID: mrConfigID(a.App.ComposeHash),
	}}
	q, err := src.GetQuote(r.Context(), rd)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	logJSON, _ := json.Marshal(evs)
	json.NewEncoder(w).Encode(map[string]string{
		"quote": hex.EncodeToString(q), "event_log": string(logJSON), "report_data": hex.EncodeToString(rd[:]), "vm_config": "{}",
	})
}

// mrConfigID is dstack's convention: 0x01 || compose hash, zero padded.
func mrConfigID(h [32]byte) attest.MRConfigID {
	var m attest.MRConfigID
	m[0] = 1
	copy(m[1:], h[:])
	return m
}

// getKey derives keys from the app id and path, as dstack's KMS does from
// the app identity: every instance of an app gets the same key.
func (a *Agent) getKey(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Path    string `json:"path"`
		Purpose string `json:"purpose"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Path == "" {
		http.Error(w, "want a path", http.StatusBadRequest)
		return
	}
	m := hmac.New(sha256.New, []byte("fake dstack kms root"))
	m.Write(a.App.AppID[:])
	m.Write([]byte(req.Path))
	json.NewEncoder(w).Encode(map[string]any{"key": hex.EncodeToString(m.Sum(nil)), "signature_chain": []string{}})
}
