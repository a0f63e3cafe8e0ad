package main

import (
	"fmt"
	"strings"
	"testing"
)

func newc(entries ...[3]string) []byte { // name, mode (octal), mtime
	var b []byte
	add := func(name string, mode, mtime int, data string) {
		b = fmt.Appendf(b, "070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
			1, mode, 0, 0, 1, mtime, len(data), 0, 0, 0, 0, len(name)+1, 0)
		b = append(b, name...)
		b = append(b, 0)
		for len(b)%4 != 0 {
			b = append(b, 0)
		}
		b = append(b, data...)
		for len(b)%4 != 0 {
			b = append(b, 0)
		}
	}
	for _, e := range entries {
		var mode, mtime int
		fmt.Sscanf(e[1], "%o", &mode)
		fmt.Sscanf(e[2], "%d", &mtime)
		add(e[0], mode, mtime, "data of "+e[0])
	}
	add("TRAILER!!!", 0, 0, "")
	return b
}

func TestReadCpioAndWhy(t *testing.T) {
	a, err := readCpio(newc([3]string{"usr/bin/fleetbox", "100755", "0"}, [3]string{"etc/os-release", "100644", "0"}))
	if err != nil || len(a) != 2 || a[0].Name != "usr/bin/fleetbox" || a[0].Mode != 0o100755 {
		t.Fatalf("%v %+v", err, a)
	}
	b, _ := readCpio(newc([3]string{"usr/bin/fleetbox", "100755", "1700000000"}, [3]string{"etc/os-release", "100600", "0"}))
	if r := whyEntry(a[0], true, b[0], true); !strings.HasPrefix(r, "timestamp: mtime 0 vs 1700000000") {
		t.Fatal(r)
	}
	if r := whyEntry(a[1], true, b[1], true); r != "mode: 100644 vs 100600" {
		t.Fatal(r)
	}
	if r := whyEntry(a[1], true, cpioEntry{}, false); r != "only in build A" {
		t.Fatal(r)
	}
	for _, bad := range [][]byte{[]byte("070701zz"), []byte("not a cpio archive at all, no magic here at all, nothing, nothing, nothing, nothing, nothing, nothing, nothing")} {
		if _, err := readCpio(bad); err == nil {
			t.Fatalf("%q was read", bad)
		}
	}
	if r := whyFile("x", []byte("abcd"), []byte("abXd")); r != "content: 1 bytes differ, the first at offset 2" {
		t.Fatal(r)
	}
}

func FuzzReadCpio(f *testing.F) {
	f.Add(newc([3]string{"a", "100644", "0"}))
	f.Fuzz(func(t *testing.T, b []byte) {
		ents, err := readCpio(b)
		if err != nil {
			return
		}
		for _, e := range ents {
			if len(e.Data) != int(e.Size) {
				t.Fatal("size mismatch")
			}
		}
	})
}
