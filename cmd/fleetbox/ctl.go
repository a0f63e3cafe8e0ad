package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/fleetbox/fleetbox/attest"
	"github.com/fleetbox/fleetbox/node"
)

const ctlUsage = `usage: fleetbox ctl [--home DIR | --admin URL --token FILE] [--json] COMMAND

Talks to a running node's admin API. By default it reads the admin address and
token from the node home (--home, or $FLEETBOX_HOME, or ~/.fleetbox).

commands:
  status                                   node identity, addresses, counts
  peers                                    connected peers
  namespace create                         create a namespace (this node is its admin)
  namespace join NS                        make an identity for NS and sync it; prints
                                           the member keys an admin passes to member add
  namespace list                           namespaces this node takes part in
  namespace show NS                        heads, groups, members, policy presence
  group create --ns NS [--parent G]        create a subgroup (parent: root by default)
  member add --ns NS [--group G] --member KEYS --role ROLE [--caps CAPS]
  member remove --ns NS [--group G] KEY
  member list --ns NS [--group G]
  member role --ns NS [--group G] KEY ROLE
  member caps --ns NS [--group G] KEY CAPS
  policy set --ns NS FILE                  set the TeeAdmissionPolicy (JSON file)
  policy get --ns NS
  fleet-join --namespace NS [--stop]       become a candidate fleet replica of NS: announce
                                           a quote until admitted as ReadOnlyTee (--stop: stop)
  fleet-status --namespace NS              admitted, group key held, still announcing
  fleet-replicas --namespace NS [--evict-outside-policy]
                                           every replica ever admitted, judged against the
                                           current policy (exit 1 if a current one fails it;
                                           --evict-outside-policy removes those)

ROLE is Admin, Member or ReadOnly. CAPS are names joined by "," (for example
MANAGE_MEMBERS,CAN_CREATE_SUBGROUP) or a number. KEY is a member's signing key
(hex); KEYS is the "fbm1..." form that namespace join prints.
`

type ctl struct {
	e      *env
	client *node.Client
	json   bool
}

func runCtl(ctx context.Context, e *env, args []string) int {
	fs := flag.NewFlagSet("ctl", flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	fs.Usage = func() { fmt.Fprint(e.stderr, ctlUsage+ctlContextsUsage) }
	home := fs.String("home", defaultHome(), "node home directory (admin address and token)")
	admin := fs.String("admin", "", "admin API URL, e.g. http://127.0.0.1:7457 (with --token)")
	tokenFile := fs.String("token", "", "file holding the admin bearer token (with --admin)")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	c := &ctl{e: e, json: *asJSON}
	switch {
	case *admin != "" || *tokenFile != "":
		if *admin == "" || *tokenFile == "" {
			return usageErr(e, "ctl: --admin and --token go together")
		}
		tok, err := node.ReadAdminToken(*tokenFile)
		if err != nil {
			return usageErr(e, "ctl: %v", err)
		}
		c.client = &node.Client{BaseURL: *admin, Token: tok}
	default:
		cl, err := node.ClientFromHome(*home)
		if err != nil {
			return usageErr(e, "ctl: finding the node from home %s: %v", *home, err)
		}
		c.client = cl
	}
	rest := fs.Args()
	if len(rest) == 0 {
		fmt.Fprint(e.stderr, ctlUsage)
		return exitUsage
	}
	cmd, rest := rest[0], rest[1:]
	sub := ""
	if len(rest) > 0 && cmd != "status" && cmd != "peers" && cmd != "fleet-join" && cmd != "fleet-status" && cmd != "fleet-replicas" {
		sub, rest = rest[0], rest[1:]
	}
	switch cmd + " " + sub {
	case "status ":
		return c.status(ctx, rest)
	case "peers ":
		return c.peers(ctx, rest)
	case "namespace create":
		return c.nsCreate(ctx, rest)
	case "namespace join":
		return c.nsJoin(ctx, rest)
	case "namespace list":
		return c.nsList(ctx, rest)
	case "namespace show":
		return c.nsShow(ctx, rest)
	case "group create":
		return c.groupCreate(ctx, rest)
	case "member add":
		return c.memberAdd(ctx, rest)
	case "member remove":
		return c.memberRemove(ctx, rest)
	case "member list":
		return c.memberList(ctx, rest)
	case "member role":
		return c.memberRole(ctx, rest)
	case "member caps":
		return c.memberCaps(ctx, rest)
	case "policy set":
		return c.policySet(ctx, rest)
	case "policy get":
		return c.policyGet(ctx, rest)
	case "fleet-join ":
		return c.fleetJoin(ctx, rest)
	case "fleet-status ":
		return c.fleetStatus(ctx, rest)
	case "fleet-replicas ":
		return c.fleetReplicas(ctx, rest)
	}
	if code, ok := c.ctlContexts(ctx, cmd, sub, rest); ok {
		return code
	}
	fmt.Fprintf(e.stderr, "fleetbox: ctl: unknown command %q\n\n", strings.TrimSpace(cmd+" "+sub))
	fmt.Fprint(e.stderr, ctlUsage)
	return exitUsage
}

func defaultHome() string {
	if h := os.Getenv("FLEETBOX_HOME"); h != "" {
		return h
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".fleetbox")
	}
	return ".fleetbox"
}

// flags makes a leaf FlagSet; --json is accepted there too.
func (c *ctl) flags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet("ctl "+name, flag.ContinueOnError)
	fs.SetOutput(c.e.stderr)
	fs.BoolVar(&c.json, "json", c.json, "print JSON")
	return fs
}

func (c *ctl) parse(fs *flag.FlagSet, args []string, nargs int, argNames string) ([]string, int) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, exitOK
		}
		return nil, exitUsage
	}
	if fs.NArg() != nargs {
		return nil, usageErr(c.e, "%s: want %s", fs.Name(), argNames)
	}
	return fs.Args(), -1
}

// fail prints an admin API error: a refusal (401/403) is a "no", another
// 4xx bad input, a 5xx or a node that does not answer a runtime failure.
func (c *ctl) fail(err error) int {
	fmt.Fprintf(c.e.stderr, "fleetbox: ctl: %v\n", err)
	var se *node.StatusError
	switch {
	case errors.As(err, &se) && (se.Status == http.StatusForbidden || se.Status == http.StatusUnauthorized):
		return exitNo
	case errors.As(err, &se) && se.Status >= 400 && se.Status < 500:
		return exitUsage
	}
	return exitRuntime
}

func (c *ctl) printJSON(v any) int {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return c.fail(err)
	}
	fmt.Fprintln(c.e.stdout, string(b))
	return exitOK
}

func (c *ctl) table(header string, rows [][]string) {
	tw := tabwriter.NewWriter(c.e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, header)
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	tw.Flush()
}

func (c *ctl) status(ctx context.Context, args []string) int {
	fs := c.flags("status")
	if _, code := c.parse(fs, args, 0, "no arguments"); code >= 0 {
		return code
	}
	s, err := c.client.Status(ctx)
	if err != nil {
		return c.fail(err)
	}
	if c.json {
		return c.printJSON(s)
	}
	fmt.Fprintf(c.e.stdout, "peer id:     %s\nversion:     %s\nuptime:      %s\nnamespaces:  %d\npeers:       %d\nstore key:   %s\n",
		s.PeerID, s.Version, s.Uptime, s.Namespaces, s.Peers, s.StoreKeySource)
	for _, a := range s.Addrs {
		fmt.Fprintf(c.e.stdout, "listening:   %s\n", a)
	}
	return exitOK
}

func (c *ctl) peers(ctx context.Context, args []string) int {
	fs := c.flags("peers")
	if _, code := c.parse(fs, args, 0, "no arguments"); code >= 0 {
		return code
	}
	ps, err := c.client.Peers(ctx)
	if err != nil {
		return c.fail(err)
	}
	if c.json {
		if ps == nil {
			ps = []node.PeerInfo{}
		}
		return c.printJSON(ps)
	}
	var rows [][]string
	for _, p := range ps {
		rows = append(rows, []string{p.ID, strings.Join(p.Addrs, ","), fmt.Sprint(len(p.Namespaces))})
	}
	c.table("PEER\tADDRESS\tSHARED NAMESPACES", rows)
	return exitOK
}

func (c *ctl) nsCreate(ctx context.Context, args []string) int {
	fs := c.flags("namespace create")
	if _, code := c.parse(fs, args, 0, "no arguments"); code >= 0 {
		return code
	}
	n, err := c.client.CreateNamespace(ctx)
	if err != nil {
		return c.fail(err)
	}
	if c.json {
		return c.printJSON(n)
	}
	fmt.Fprintf(c.e.stdout, "namespace:   %s\nmember keys: %s\n", n.ID, n.MemberKeys)
	return exitOK
}

func (c *ctl) nsJoin(ctx context.Context, args []string) int {
	fs := c.flags("namespace join")
	a, code := c.parse(fs, args, 1, "NS")
	if code >= 0 {
		return code
	}
	j, err := c.client.JoinNamespace(ctx, a[0])
	if err != nil {
		return c.fail(err)
	}
	if c.json {
		return c.printJSON(j)
	}
	fmt.Fprintf(c.e.stdout, "namespace:   %s\nmember keys: %s\n\nAsk an admin of the namespace to run:\n  fleetbox ctl member add --ns %s --member %s --role Member\n",
		j.Namespace, j.MemberKeys, j.Namespace, j.MemberKeys)
	return exitOK
}

func (c *ctl) nsList(ctx context.Context, args []string) int {
	fs := c.flags("namespace list")
	if _, code := c.parse(fs, args, 0, "no arguments"); code >= 0 {
		return code
	}
	l, err := c.client.Namespaces(ctx)
	if err != nil {
		return c.fail(err)
	}
	if c.json {
		if l == nil {
			l = []node.NamespaceInfo{}
		}
		return c.printJSON(l)
	}
	var rows [][]string
	for _, n := range l {
		rows = append(rows, []string{n.ID, fmt.Sprint(n.Ops), fmt.Sprint(len(n.Heads)), fmt.Sprint(n.Members), fmt.Sprint(n.Pending)})
	}
	c.table("NAMESPACE\tOPS\tHEADS\tMEMBERS\tPENDING", rows)
	return exitOK
}

func (c *ctl) nsShow(ctx context.Context, args []string) int {
	fs := c.flags("namespace show")
	a, code := c.parse(fs, args, 1, "NS")
	if code >= 0 {
		return code
	}
	n, err := c.client.Namespace(ctx, a[0])
	if err != nil {
		return c.fail(err)
	}
	if c.json {
		return c.printJSON(n)
	}
	fmt.Fprintf(c.e.stdout, "namespace:   %s\nmember keys: %s\nops:         %d (pending %d)\npolicy:      %v\n",
		n.ID, n.MemberKeys, n.Ops, n.Pending, map[bool]string{true: "set", false: "none"}[n.HasPolicy])
	for _, h := range n.Heads {
		fmt.Fprintf(c.e.stdout, "head:        %s\n", h)
	}
	for _, g := range n.Groups {
		parent := g.Parent
		if parent == "" {
			parent = "(root)"
		}
		fmt.Fprintf(c.e.stdout, "\ngroup %s  parent %s  key held: %v\n", g.ID, parent, g.HasKey)
		c.memberTable(g.Members)
	}
	return exitOK
}

func (c *ctl) memberTable(ms []node.MemberInfo) {
	var rows [][]string
	for _, m := range ms {
		caps := strings.Join(m.CapNames, ",")
		if caps == "" {
			caps = "-"
		}
		rows = append(rows, []string{m.Key, m.Role, caps})
	}
	c.table("MEMBER\tROLE\tCAPABILITIES", rows)
}

func (c *ctl) opDone(r *node.OpResult) int {
	if c.json {
		return c.printJSON(r)
	}
	if r.GroupID != "" {
		fmt.Fprintf(c.e.stdout, "group: %s\n", r.GroupID)
	}
	ops := r.Ops
	if len(ops) == 0 && r.Op != "" {
		ops = []string{r.Op}
	}
	for _, o := range ops {
		fmt.Fprintf(c.e.stdout, "op:    %s\n", o)
	}
	return exitOK
}

func (c *ctl) groupCreate(ctx context.Context, args []string) int {
	fs := c.flags("group create")
	ns := fs.String("ns", "", "namespace id")
	parent := fs.String("parent", "", "parent group id (default: the root group)")
	if _, code := c.parse(fs, args, 0, "no arguments"); code >= 0 {
		return code
	}
	if *ns == "" {
		return usageErr(c.e, "ctl group create: --ns is required")
	}
	r, err := c.client.CreateGroup(ctx, *ns, *parent)
	if err != nil {
		return c.fail(err)
	}
	return c.opDone(r)
}

func (c *ctl) memberFlags(name string) (*flag.FlagSet, *string, *string) {
	fs := c.flags(name)
	ns := fs.String("ns", "", "namespace id")
	group := fs.String("group", "", "group id (default: the root group)")
	return fs, ns, group
}

func (c *ctl) memberAdd(ctx context.Context, args []string) int {
	fs, ns, group := c.memberFlags("member add")
	member := fs.String("member", "", "the new member's keys (fbm1..., from namespace join)")
	role := fs.String("role", "Member", "Admin, Member or ReadOnly")
	caps := fs.String("caps", "", "capabilities: names joined by ',' or a number")
	if _, code := c.parse(fs, args, 0, "flags only"); code >= 0 {
		return code
	}
	if *ns == "" || *member == "" {
		return usageErr(c.e, "ctl member add: --ns and --member are required")
	}
	r, err := c.client.AddMember(ctx, *ns, *group, node.MemberAddRequest{Member: *member, Role: *role, Capabilities: *caps})
	if err != nil {
		return c.fail(err)
	}
	return c.opDone(r)
}

func (c *ctl) memberRemove(ctx context.Context, args []string) int {
	fs, ns, group := c.memberFlags("member remove")
	a, code := c.parse(fs, args, 1, "KEY")
	if code >= 0 {
		return code
	}
	if *ns == "" {
		return usageErr(c.e, "ctl member remove: --ns is required")
	}
	r, err := c.client.RemoveMember(ctx, *ns, *group, a[0])
	if err != nil {
		return c.fail(err)
	}
	return c.opDone(r)
}

func (c *ctl) memberList(ctx context.Context, args []string) int {
	fs, ns, group := c.memberFlags("member list")
	if _, code := c.parse(fs, args, 0, "flags only"); code >= 0 {
		return code
	}
	if *ns == "" {
		return usageErr(c.e, "ctl member list: --ns is required")
	}
	ms, err := c.client.Members(ctx, *ns, *group)
	if err != nil {
		return c.fail(err)
	}
	if c.json {
		if ms == nil {
			ms = []node.MemberInfo{}
		}
		return c.printJSON(ms)
	}
	c.memberTable(ms)
	return exitOK
}

func (c *ctl) memberRole(ctx context.Context, args []string) int {
	fs, ns, group := c.memberFlags("member role")
	a, code := c.parse(fs, args, 2, "KEY ROLE")
	if code >= 0 {
		return code
	}
	if *ns == "" {
		return usageErr(c.e, "ctl member role: --ns is required")
	}
	r, err := c.client.SetRole(ctx, *ns, *group, a[0], a[1])
	if err != nil {
		return c.fail(err)
	}
	return c.opDone(r)
}

func (c *ctl) memberCaps(ctx context.Context, args []string) int {
	fs, ns, group := c.memberFlags("member caps")
	a, code := c.parse(fs, args, 2, "KEY CAPS")
	if code >= 0 {
		return code
	}
	if *ns == "" {
		return usageErr(c.e, "ctl member caps: --ns is required")
	}
	r, err := c.client.SetCapabilities(ctx, *ns, *group, a[0], a[1])
	if err != nil {
		return c.fail(err)
	}
	return c.opDone(r)
}

func (c *ctl) policySet(ctx context.Context, args []string) int {
	fs := c.flags("policy set")
	ns := fs.String("ns", "", "namespace id")
	a, code := c.parse(fs, args, 1, "FILE (a TeeAdmissionPolicy JSON document)")
	if code >= 0 {
		return code
	}
	if *ns == "" {
		return usageErr(c.e, "ctl policy set: --ns is required")
	}
	data, err := os.ReadFile(a[0])
	if err != nil {
		return usageErr(c.e, "ctl policy set: %v", err)
	}
	p, err := attest.ParsePolicy(data)
	if err != nil {
		return usageErr(c.e, "ctl policy set: %s: %v", a[0], err)
	}
	r, err := c.client.SetPolicy(ctx, *ns, p)
	if err != nil {
		return c.fail(err)
	}
	return c.opDone(r)
}

func (c *ctl) policyGet(ctx context.Context, args []string) int {
	fs := c.flags("policy get")
	ns := fs.String("ns", "", "namespace id")
	if _, code := c.parse(fs, args, 0, "flags only"); code >= 0 {
		return code
	}
	if *ns == "" {
		return usageErr(c.e, "ctl policy get: --ns is required")
	}
	p, err := c.client.Policy(ctx, *ns)
	if err != nil {
		return c.fail(err)
	}
	b, err := p.Marshal() // the policy is JSON in both output modes
	if err != nil {
		return c.fail(err)
	}
	fmt.Fprintln(c.e.stdout, string(b))
	return exitOK
}
