package main

import (
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/fleetbox/fleetbox/node"
)

// ctlContextsUsage is appended to ctl's usage.
const ctlContextsUsage = `
applications and contexts:
  app install FILE.wasm                    check (compile, imports, exports) and store an application
  app list                                 applications stored on this node
  context create --ns NS --app APP [--group G] [--init TEXT]
                                           create a context of APP (runs its init method)
  context list --ns NS                     the namespace's contexts
  context show --ns NS CTX                 application, keys, bytes, ops applied, state root hash
  context call --ns NS CTX METHOD [INPUT]  a call that changes state (recorded as a signed op)
  context query --ns NS CTX METHOD [INPUT] a read-only call (replicas answer it too)
  context upgrade --ns NS CTX APP          point the context at another application
  context delete --ns NS CTX               delete the context and its state
`

// ctlContexts runs the app and context commands; ok is false for other
// commands.
func (c *ctl) ctlContexts(ctx context.Context, cmd, sub string, rest []string) (int, bool) {
	switch cmd + " " + sub {
	case "app install":
		return c.appInstall(ctx, rest), true
	case "app list":
		return c.appList(ctx, rest), true
	case "context create":
		return c.contextCreate(ctx, rest), true
	case "context list":
		return c.contextList(ctx, rest), true
	case "context show":
		return c.contextShow(ctx, rest), true
	case "context call":
		return c.contextCall(ctx, "call", rest), true
	case "context query":
		return c.contextCall(ctx, "query", rest), true
	case "context upgrade":
		return c.contextUpgrade(ctx, rest), true
	case "context delete":
		return c.contextDelete(ctx, rest), true
	}
	return 0, false
}

func (c *ctl) appInstall(ctx context.Context, args []string) int {
	fs := c.flags("app install")
	a, code := c.parse(fs, args, 1, "FILE.wasm")
	if code >= 0 {
		return code
	}
	wasm, err := os.ReadFile(a[0])
	if err != nil {
		return usageErr(c.e, "ctl app install: %v", err)
	}
	app, err := c.client.InstallApp(ctx, wasm)
	if err != nil {
		return c.fail(err)
	}
	if c.json {
		return c.printJSON(app)
	}
	fmt.Fprintf(c.e.stdout, "application: %s\nsize:        %d bytes\nmethods:     %s\n", app.ID, app.Size, strings.Join(app.Methods, ", "))
	return exitOK
}

func (c *ctl) appList(ctx context.Context, args []string) int {
	if _, code := c.parse(c.flags("app list"), args, 0, "no arguments"); code >= 0 {
		return code
	}
	apps, err := c.client.Apps(ctx)
	if err != nil {
		return c.fail(err)
	}
	if c.json {
		return c.printJSON(apps)
	}
	var rows [][]string
	for _, a := range apps {
		src := "fetched"
		if a.Installed {
			src = "installed"
		}
		rows = append(rows, []string{a.ID.String(), fmt.Sprint(a.Size), src, strings.Join(a.Methods, ",")})
	}
	c.table("APPLICATION\tSIZE\tSOURCE\tMETHODS", rows)
	return exitOK
}

// nsFlag parses a leaf command with a required --ns.
func (c *ctl) nsArgs(name string, args []string, nargs int, argNames string, more func(fsAdd func(string, string, string) *string)) (string, []string, int) {
	fs := c.flags(name)
	ns := fs.String("ns", "", "namespace id")
	if more != nil {
		more(fs.String)
	}
	a, code := c.parse(fs, args, nargs, argNames)
	if code >= 0 {
		return "", nil, code
	}
	if *ns == "" {
		return "", nil, usageErr(c.e, "ctl %s: --ns is required", name)
	}
	return *ns, a, -1
}

func (c *ctl) contextCreate(ctx context.Context, args []string) int {
	var app, group, init *string
	ns, _, code := c.nsArgs("context create", args, 0, "flags only", func(s func(string, string, string) *string) {
		app = s("app", "", "application id (from app install)")
		group = s("group", "", "group id (default: the root group)")
		init = s("init", "", "input of the application's init method")
	})
	if code >= 0 {
		return code
	}
	if *app == "" {
		return usageErr(c.e, "ctl context create: --app is required")
	}
	res, err := c.client.CreateContext(ctx, ns, node.ContextCreateRequest{Application: *app, Group: *group, Init: *init})
	if err != nil {
		return c.fail(err)
	}
	if c.json {
		return c.printJSON(res)
	}
	fmt.Fprintf(c.e.stdout, "context: %s\nop:      %s\n", res.Context, res.Op)
	return exitOK
}

func (c *ctl) contextList(ctx context.Context, args []string) int {
	ns, _, code := c.nsArgs("context list", args, 0, "flags only", nil)
	if code >= 0 {
		return code
	}
	l, err := c.client.Contexts(ctx, ns)
	if err != nil {
		return c.fail(err)
	}
	if c.json {
		return c.printJSON(l)
	}
	var rows [][]string
	for _, s := range l {
		state := "live"
		if s.Deleted {
			state = "deleted"
		}
		rows = append(rows, []string{s.ID.String(), s.Application.String()[:16] + "…", state, fmt.Sprint(s.Keys), fmt.Sprint(s.Ops), s.Root})
	}
	c.table("CONTEXT\tAPPLICATION\tSTATE\tKEYS\tOPS\tROOT", rows)
	return exitOK
}

func (c *ctl) contextShow(ctx context.Context, args []string) int {
	ns, a, code := c.nsArgs("context show", args, 1, "CTX", nil)
	if code >= 0 {
		return code
	}
	s, err := c.client.Context(ctx, ns, a[0])
	if err != nil {
		return c.fail(err)
	}
	if c.json {
		return c.printJSON(s)
	}
	fmt.Fprintf(c.e.stdout, "context:     %s\ngroup:       %s\napplication: %s\ndeleted:     %v\nkeys:        %d (%d bytes)\nops applied: %d\nstate root:  %s\n",
		s.ID, s.Group, s.Application, s.Deleted, s.Keys, s.Bytes, s.Ops, s.Root)
	return exitOK
}

func (c *ctl) contextCall(ctx context.Context, kind string, args []string) int {
	fs := c.flags("context " + kind)
	ns := fs.String("ns", "", "namespace id")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	a := fs.Args()
	if *ns == "" || len(a) < 2 || len(a) > 3 {
		return usageErr(c.e, "ctl context %s: want --ns NS CTX METHOD [INPUT]", kind)
	}
	req := node.CallRequest{Method: a[1]}
	if len(a) == 3 {
		req.Input = a[2]
	}
	res, err := c.client.Call(ctx, *ns, a[0], kind, req)
	if err != nil {
		return c.fail(err)
	}
	if c.json {
		return c.printJSON(res)
	}
	if res.Op != "" {
		fmt.Fprintf(c.e.stdout, "op:     %s (%d writes)\n", res.Op, res.Writes)
	}
	out := res.OutputText
	if out == "" && len(res.Output) > 0 {
		out = fmt.Sprintf("%x", res.Output)
	}
	fmt.Fprintf(c.e.stdout, "output: %s\n", out)
	for _, l := range res.Logs {
		fmt.Fprintf(c.e.stdout, "log:    %s\n", l)
	}
	for _, ev := range res.Events {
		fmt.Fprintf(c.e.stdout, "event:  %s %q\n", ev.Kind, ev.Data)
	}
	return exitOK
}

func (c *ctl) contextUpgrade(ctx context.Context, args []string) int {
	ns, a, code := c.nsArgs("context upgrade", args, 2, "CTX APP", nil)
	if code >= 0 {
		return code
	}
	r, err := c.client.UpgradeContext(ctx, ns, a[0], a[1])
	if err != nil {
		return c.fail(err)
	}
	return c.opDone(r)
}

func (c *ctl) contextDelete(ctx context.Context, args []string) int {
	ns, a, code := c.nsArgs("context delete", args, 1, "CTX", nil)
	if code >= 0 {
		return code
	}
	r, err := c.client.DeleteContext(ctx, ns, a[0])
	if err != nil {
		return c.fail(err)
	}
	return c.opDone(r)
}
