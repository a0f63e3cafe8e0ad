package main

import (
	"errors"
	"net/http"
	"time"

	"github.com/fleetbox/fleetbox/node"
)

// contextsStory shows why replicas exist: member-a installs the key-value
// application and writes; the ReadOnlyTee replica, which never installed
// it, fetches it from a peer and answers a query with the value; its own
// write is refused.
func (d *demo) contextsStory(a, b, r *demoNode, ns string) bool {
	ctx := d.ctx
	app, err := a.client.InstallApp(ctx, demoKV)
	if err != nil {
		d.check(false, "install the key-value application: %v", err)
		return false
	}
	created, err := a.client.CreateContext(ctx, ns, node.ContextCreateRequest{Application: app.ID.String()})
	var res *node.CallResult
	if err == nil {
		res, err = a.client.Call(ctx, ns, created.Context.String(), "call", node.CallRequest{Method: "set", Input: `{"key":"greeting","value":"hello from member-a"}`})
	}
	if !d.check(err == nil, "member-a installed the key-value application (%d KiB, id %s…), created a context and wrote greeting (op %.12s…)",
		len(demoKV)>>10, app.ID.String()[:12], opOf(res)) {
		d.say("%v", err)
		return false
	}
	c := created.Context.String()
	q := node.CallRequest{Method: "get", Input: `{"key":"greeting"}`}
	want := `{"value":"hello from member-a","found":true}`
	t0 := time.Now()
	var got *node.CallResult
	answered := d.waitFor(30*time.Second, func() bool {
		got, err = r.client.Call(ctx, ns, c, "query", q)
		return err == nil && got.OutputText == want
	})
	d.check(answered, "the ReadOnlyTee replica fetched the application from a peer and answered a query: %s (%s)", outputOf(got), time.Since(t0).Round(time.Millisecond))
	_, werr := r.client.Call(ctx, ns, c, "call", node.CallRequest{Method: "set", Input: `{"key":"greeting","value":"from the replica"}`})
	var se *node.StatusError
	d.check(errors.As(werr, &se) && se.Status == http.StatusForbidden, "the replica's own write to the context refused: %s", firstLine(werr))
	same := d.waitFor(20*time.Second, func() bool {
		ra, err1 := a.client.Context(ctx, ns, c)
		rb, err2 := b.client.Context(ctx, ns, c)
		rr, err3 := r.client.Context(ctx, ns, c)
		return errors.Join(err1, err2, err3) == nil && ra.Root == rb.Root && ra.Root == rr.Root && ra.Ops == rr.Ops
	})
	root := ""
	if cs, err := r.client.Context(ctx, ns, c); err == nil {
		root = cs.Root
	}
	d.check(same, "member-a, member-b and the replica hold the same context state (root %.16s…)", root)
	return true
}

func opOf(r *node.CallResult) string {
	if r == nil {
		return ""
	}
	return r.Op
}

func outputOf(r *node.CallResult) string {
	if r == nil {
		return "no answer"
	}
	return r.OutputText
}
