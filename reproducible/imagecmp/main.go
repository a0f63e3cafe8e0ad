// Command imagecmp compares two builds of the fleetbox image, artifact by
// artifact, and explains a difference: reproducible/image.sh runs it on two
// builds made in different directories with different caches.
//
//	go run ./reproducible/imagecmp [-json FILE] DIR_A DIR_B
//
// It compares the sha256 of every artifact image/build.sh writes (the disk
// image, the UKI, the UKI's initrd and kernel, the fleetbox binary, the
// configuration, the package list), of each UKI section (.linux, .initrd,
// .cmdline, .osrel, .uname, .sbat, ...), and of every file in the initrd
// with its mode, owner and time. For each difference it says what differs
// and, where it can tell, why: a timestamp, the order of the archive, a
// build ID, or the content. Exit status: 0 identical, 1 different, 2 bad
// usage or unreadable input.
package main

import (
	"bytes"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"

	"github.com/fleetbox/fleetbox/measure/pe"
)

// artifacts are the files image/build.sh writes that must be identical.
var artifacts = []string{
	"fleetbox.raw", "fleetbox.efi", "fleetbox.initrd", "fleetbox.vmlinuz",
	"fleetbox.bin", "fleetbox.conf", "packages.txt",
}

// Row is one compared item.
type Row struct {
	Item   string `json:"item"`
	A      string `json:"a"`
	B      string `json:"b"`
	Same   bool   `json:"same"`
	Reason string `json:"reason,omitempty"`
}

// Report is the whole comparison.
type Report struct {
	Rows      []Row `json:"rows"`
	Identical bool  `json:"identical"`
	// InitrdFiles is the number of files compared inside the initrd.
	InitrdFiles int `json:"initrdFiles"`
}

func main() {
	jsonOut := flag.String("json", "", "also write the report as JSON to `file`")
	flag.Parse()
	if flag.NArg() != 2 {
		fmt.Fprintln(os.Stderr, "usage: imagecmp [-json FILE] DIR_A DIR_B")
		os.Exit(2)
	}
	rep, err := compare(flag.Arg(0), flag.Arg(1))
	if err != nil {
		fmt.Fprintln(os.Stderr, "imagecmp:", err)
		os.Exit(2)
	}
	rep.write(os.Stdout)
	if *jsonOut != "" {
		b, _ := json.MarshalIndent(rep, "", "  ")
		if err := os.WriteFile(*jsonOut, append(b, '\n'), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "imagecmp:", err)
			os.Exit(2)
		}
	}
	if !rep.Identical {
		os.Exit(1)
	}
}

func sum(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

func compare(a, b string) (*Report, error) {
	rep := &Report{Identical: true}
	add := func(r Row) {
		r.Same = r.A == r.B
		if !r.Same {
			rep.Identical = false
		}
		rep.Rows = append(rep.Rows, r)
	}
	files := map[string][2][]byte{}
	for _, name := range artifacts {
		var pair [2][]byte
		for i, dir := range []string{a, b} {
			d, err := os.ReadFile(filepath.Join(dir, name))
			if err != nil {
				return nil, err
			}
			pair[i] = d
		}
		files[name] = pair
		r := Row{Item: name, A: sum(pair[0]), B: sum(pair[1])}
		if r.A != r.B {
			r.Reason = whyFile(name, pair[0], pair[1])
		}
		add(r)
	}

	// UKI sections, by name.
	secs := [2]map[string][]byte{}
	for i := range secs {
		f, err := pe.Parse(files["fleetbox.efi"][i])
		if err != nil {
			return nil, fmt.Errorf("parsing the UKI: %w", err)
		}
		secs[i] = map[string][]byte{}
		for j := range f.Sections {
			secs[i][f.Sections[j].Name] = f.Data(&f.Sections[j])
		}
	}
	for _, name := range unionKeys(secs[0], secs[1]) {
		r := Row{Item: "uki section " + name, A: sumOrMissing(secs[0], name), B: sumOrMissing(secs[1], name)}
		if r.A != r.B {
			r.Reason = whyFile(name, secs[0][name], secs[1][name])
		}
		add(r)
	}

	// The initrd's files, and the order the archive lists them in (a
	// difference there alone means the files were written in another
	// order).
	var lists [2]map[string]cpioEntry
	var orders [2]string
	for i, dir := range []string{a, b} {
		raw, err := decompress(filepath.Join(dir, "fleetbox.initrd"))
		if err != nil {
			return nil, err
		}
		ents, err := readCpio(raw)
		if err != nil {
			return nil, fmt.Errorf("reading the initrd of %s: %w", dir, err)
		}
		lists[i] = map[string]cpioEntry{}
		var names []string
		for _, e := range ents {
			lists[i][e.Name] = e
			names = append(names, e.Name)
		}
		orders[i] = sum([]byte(strings.Join(names, "\n")))
		rep.InitrdFiles = len(ents)
	}
	r := Row{Item: "initrd file order", A: orders[0], B: orders[1]}
	if r.A != r.B {
		r.Reason = "order: the archive lists its files in another order"
	}
	add(r)
	for _, name := range unionKeys(lists[0], lists[1]) {
		ea, oka := lists[0][name]
		eb, okb := lists[1][name]
		r := Row{Item: "initrd " + name, A: ea.key(oka), B: eb.key(okb)}
		if r.A != r.B {
			r.Reason = whyEntry(ea, oka, eb, okb)
			add(r)
		}
	}
	return rep, nil
}

func sumOrMissing[V []byte](m map[string]V, k string) string {
	v, ok := m[k]
	if !ok {
		return "missing"
	}
	return sum(v)
}

func unionKeys[V any](a, b map[string]V) []string {
	seen := map[string]bool{}
	for k := range a {
		seen[k] = true
	}
	for k := range b {
		seen[k] = true
	}
	out := make([]string, 0, len(seen))
	for k := range seen {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func decompress(path string) ([]byte, error) {
	out, err := exec.Command("zstd", "-dc", path).Output()
	if err != nil {
		return nil, fmt.Errorf("zstd -dc %s: %w (is zstd installed?)", path, err)
	}
	return out, nil
}

// whyFile guesses why two versions of a file differ.
func whyFile(name string, a, b []byte) string {
	switch {
	case a == nil || b == nil:
		return "present in one build only"
	case len(a) != len(b):
		if r := whyELF(a, b); r != "" {
			return r
		}
		return fmt.Sprintf("content: %d and %d bytes", len(a), len(b))
	}
	if r := whyELF(a, b); r != "" {
		return r
	}
	if r := whyPE(a, b); r != "" {
		return r
	}
	n, first := 0, -1
	for i := range a {
		if a[i] != b[i] {
			if first < 0 {
				first = i
			}
			n++
		}
	}
	return fmt.Sprintf("content: %d bytes differ, the first at offset %d", n, first)
}

// whyELF reports a differing GNU build ID.
func whyELF(a, b []byte) string {
	ia, ib := buildID(a), buildID(b)
	if ia != "" && ib != "" && ia != ib {
		return "build id: " + ia + " vs " + ib
	}
	return ""
}

func buildID(b []byte) string {
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return ""
	}
	s := f.Section(".note.gnu.build-id")
	if s == nil {
		return ""
	}
	d, err := s.Data()
	if err != nil || len(d) < 16 {
		return ""
	}
	return hex.EncodeToString(d[16:])
}

// whyPE reports a differing COFF TimeDateStamp (PE/COFF spec, 3.3: offset
// 4 of the COFF header that follows "PE\0\0").
func whyPE(a, b []byte) string {
	off := func(d []byte) int {
		if len(d) < 0x40 || string(d[:2]) != "MZ" {
			return -1
		}
		o := int(d[0x3c]) | int(d[0x3d])<<8 | int(d[0x3e])<<16 | int(d[0x3f])<<24
		if o+12 > len(d) || string(d[o:o+4]) != "PE\x00\x00" {
			return -1
		}
		return o + 8
	}
	oa, ob := off(a), off(b)
	if oa < 0 || oa != ob {
		return ""
	}
	if !bytes.Equal(a[oa:oa+4], b[ob:ob+4]) {
		return "timestamp: the PE header's TimeDateStamp differs"
	}
	return ""
}

// whyEntry explains a differing initrd entry.
func whyEntry(a cpioEntry, oka bool, b cpioEntry, okb bool) string {
	switch {
	case !oka:
		return "only in build B"
	case !okb:
		return "only in build A"
	case a.Sum == b.Sum && a.Mode == b.Mode && a.UID == b.UID && a.GID == b.GID && a.Mtime != b.Mtime:
		return fmt.Sprintf("timestamp: mtime %d vs %d, content equal", a.Mtime, b.Mtime)
	case a.Sum == b.Sum && a.Mode != b.Mode:
		return fmt.Sprintf("mode: %o vs %o", a.Mode, b.Mode)
	case a.Sum == b.Sum:
		return fmt.Sprintf("owner: %d:%d vs %d:%d", a.UID, a.GID, b.UID, b.GID)
	}
	if r := whyELF(a.Data, b.Data); r != "" {
		return r
	}
	return whyFile(a.Name, a.Data, b.Data)
}

func (r *Report) write(w io.Writer) {
	diff := 0
	for _, row := range r.Rows {
		if row.Same {
			continue
		}
		diff++
	}
	for _, row := range r.Rows {
		if strings.HasPrefix(row.Item, "initrd ") && row.Same {
			continue
		}
		mark := "same"
		if !row.Same {
			mark = "DIFFERS"
		}
		fmt.Fprintf(w, "%-8s %-32s %s", mark, row.Item, short(row.A))
		if !row.Same {
			fmt.Fprintf(w, " vs %s: %s", short(row.B), row.Reason)
		}
		fmt.Fprintln(w)
	}
	if r.Identical {
		fmt.Fprintf(w, "identical: every artifact, every UKI section, and all %d files of the initrd\n", r.InitrdFiles)
	} else {
		fmt.Fprintf(w, "%d differences\n", diff)
	}
}

func short(s string) string {
	if len(s) > 16 {
		return s[:16]
	}
	return s
}
