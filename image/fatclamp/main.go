// Command fatclamp clamps every timestamp in the FAT file system of a disk
// image's first partition (the appliance's ESP) to SOURCE_DATE_EPOCH.
//
//	go run ./image/fatclamp -epoch SECONDS DISK.raw
//
// systemd-repart 254 fills the ESP with mtools 4.0.32, whose mmd and mcopy
// stamp the directories they create with the current time (mtools of that
// version does not read SOURCE_DATE_EPOCH); two builds of the same image a
// minute apart then differ in those directory entries. The ESP's directory
// entries are not measured (RTMR1 covers the GPT and the UKI's bytes, not
// FAT metadata), so clamping them changes no measurement; image/build.sh
// runs this after mkosi. Newer systemd-repart clamps the same way
// (systemd pull request 43545).
package main

import (
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"os"
	"time"
)

func main() {
	epoch := flag.Int64("epoch", -1, "SOURCE_DATE_EPOCH: seconds since 1970 (UTC)")
	flag.Parse()
	if flag.NArg() != 1 || *epoch < 0 {
		fmt.Fprintln(os.Stderr, "usage: fatclamp -epoch SECONDS DISK.raw")
		os.Exit(2)
	}
	f, err := os.OpenFile(flag.Arg(0), os.O_RDWR, 0)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fatclamp:", err)
		os.Exit(2)
	}
	n, err := clampDisk(f, time.Unix(*epoch, 0).UTC())
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "fatclamp:", err)
		os.Exit(1)
	}
	fmt.Printf("fatclamp: %d timestamps clamped to %s\n", n, time.Unix(*epoch, 0).UTC().Format(time.RFC3339))
}

// disk is what clampDisk needs of the image file.
type disk interface {
	ReadAt(p []byte, off int64) (int, error)
	WriteAt(p []byte, off int64) (int, error)
}

// clampDisk finds the first GPT partition and clamps its FAT.
func clampDisk(d disk, limit time.Time) (int, error) {
	hdr := make([]byte, 92)
	if _, err := d.ReadAt(hdr, 512); err != nil {
		return 0, fmt.Errorf("reading the GPT header: %w", err)
	}
	// UEFI 2.10, 5.3.2 GPT Header: signature, partition entry LBA at 72.
	if string(hdr[:8]) != "EFI PART" {
		return 0, errors.New("no GPT header at LBA 1")
	}
	entries := int64(binary.LittleEndian.Uint64(hdr[72:]))
	ent := make([]byte, 48)
	if _, err := d.ReadAt(ent, entries*512); err != nil {
		return 0, fmt.Errorf("reading the first partition entry: %w", err)
	}
	// 5.3.3 GPT Partition Entry: starting LBA at 32.
	start := int64(binary.LittleEndian.Uint64(ent[32:]))
	if start == 0 {
		return 0, errors.New("the first partition entry is empty")
	}
	fs, err := openFAT(d, start*512)
	if err != nil {
		return 0, err
	}
	return fs.clamp(limit)
}

// fat is a FAT12/16/32 volume inside d at byte offset base (Microsoft
// "FAT: General Overview of On-Disk Format", the BPB and directory entry
// layouts).
type fat struct {
	d                 disk
	base              int64
	bytesPerSector    int64
	sectorsPerCluster int64
	reserved          int64
	fats              int64
	rootEntries       int64
	sectorsPerFAT     int64
	rootCluster       uint32
	fat32             bool
	totalClusters     int64
}

func openFAT(d disk, base int64) (*fat, error) {
	b := make([]byte, 512)
	if _, err := d.ReadAt(b, base); err != nil {
		return nil, fmt.Errorf("reading the boot sector: %w", err)
	}
	if b[510] != 0x55 || b[511] != 0xAA {
		return nil, errors.New("the first partition holds no FAT boot sector")
	}
	f := &fat{d: d, base: base,
		bytesPerSector:    int64(binary.LittleEndian.Uint16(b[11:])),
		sectorsPerCluster: int64(b[13]),
		reserved:          int64(binary.LittleEndian.Uint16(b[14:])),
		fats:              int64(b[16]),
		rootEntries:       int64(binary.LittleEndian.Uint16(b[17:])),
		sectorsPerFAT:     int64(binary.LittleEndian.Uint16(b[22:])),
	}
	total := int64(binary.LittleEndian.Uint16(b[19:]))
	if total == 0 {
		total = int64(binary.LittleEndian.Uint32(b[32:]))
	}
	if f.sectorsPerFAT == 0 {
		f.fat32 = true
		f.sectorsPerFAT = int64(binary.LittleEndian.Uint32(b[36:]))
		f.rootCluster = binary.LittleEndian.Uint32(b[44:])
	}
	if f.bytesPerSector == 0 || f.sectorsPerCluster == 0 || f.fats == 0 {
		return nil, errors.New("a FAT boot sector with zero geometry")
	}
	data := total - f.reserved - f.fats*f.sectorsPerFAT - f.rootDirSectors()
	f.totalClusters = data / f.sectorsPerCluster
	return f, nil
}

func (f *fat) rootDirSectors() int64 {
	return (f.rootEntries*32 + f.bytesPerSector - 1) / f.bytesPerSector
}

func (f *fat) dataStart() int64 {
	return f.base + (f.reserved+f.fats*f.sectorsPerFAT+f.rootDirSectors())*f.bytesPerSector
}

func (f *fat) clusterOffset(c uint32) int64 {
	return f.dataStart() + int64(c-2)*f.sectorsPerCluster*f.bytesPerSector
}

func (f *fat) clusterSize() int64 { return f.sectorsPerCluster * f.bytesPerSector }

// next reads the FAT entry of cluster c (the first FAT copy); ok is false
// at the end of the chain.
func (f *fat) next(c uint32) (uint32, bool, error) {
	fatOff := f.base + f.reserved*f.bytesPerSector
	var b [4]byte
	switch {
	case f.fat32:
		if _, err := f.d.ReadAt(b[:4], fatOff+int64(c)*4); err != nil {
			return 0, false, err
		}
		n := binary.LittleEndian.Uint32(b[:]) & 0x0FFFFFFF
		return n, n >= 2 && n < 0x0FFFFFF7, nil
	case f.totalClusters >= 4085: // FAT16
		if _, err := f.d.ReadAt(b[:2], fatOff+int64(c)*2); err != nil {
			return 0, false, err
		}
		n := uint32(binary.LittleEndian.Uint16(b[:]))
		return n, n >= 2 && n < 0xFFF7, nil
	default: // FAT12
		off := int64(c) + int64(c)/2
		if _, err := f.d.ReadAt(b[:2], fatOff+off); err != nil {
			return 0, false, err
		}
		v := uint32(binary.LittleEndian.Uint16(b[:]))
		if c&1 == 1 {
			v >>= 4
		}
		n := v & 0xFFF
		return n, n >= 2 && n < 0xFF7, nil
	}
}

// dirRegions returns the byte ranges of a directory: the fixed root of
// FAT12/16 (cluster 0) or a cluster chain.
func (f *fat) dirRegions(cluster uint32) ([][2]int64, error) {
	if cluster == 0 && !f.fat32 {
		start := f.base + (f.reserved+f.fats*f.sectorsPerFAT)*f.bytesPerSector
		return [][2]int64{{start, f.rootEntries * 32}}, nil
	}
	if cluster == 0 {
		cluster = f.rootCluster
	}
	var out [][2]int64
	for seen := 0; ; seen++ {
		if int64(seen) > f.totalClusters {
			return nil, errors.New("a directory's cluster chain loops")
		}
		out = append(out, [2]int64{f.clusterOffset(cluster), f.clusterSize()})
		n, ok, err := f.next(cluster)
		if err != nil {
			return nil, err
		}
		if !ok {
			return out, nil
		}
		cluster = n
	}
}

// clamp walks every directory from the root and clamps each entry's
// creation, access and write times.
func (f *fat) clamp(limit time.Time) (int, error) {
	limDate, limTime := fatDateTime(limit)
	count := 0
	var walk func(cluster uint32, depth int) error
	walk = func(cluster uint32, depth int) error {
		if depth > 32 {
			return errors.New("directories nested deeper than 32")
		}
		regions, err := f.dirRegions(cluster)
		if err != nil {
			return err
		}
		for _, r := range regions {
			buf := make([]byte, r[1])
			if _, err := f.d.ReadAt(buf, r[0]); err != nil {
				return err
			}
			changed := false
			for off := 0; off+32 <= len(buf); off += 32 {
				e := buf[off : off+32]
				if e[0] == 0x00 {
					break // no entries follow
				}
				if e[0] == 0xE5 || e[11] == 0x0F { // deleted, long-name part
					continue
				}
				// Each (date, time) pair: creation (16, 14), write (24,
				// 22); access has a date only (18).
				for _, p := range [][2]int{{16, 14}, {24, 22}} {
					if clampPair(e, p[0], p[1], limDate, limTime) {
						count++
						changed = true
					}
				}
				if d := binary.LittleEndian.Uint16(e[18:]); d > limDate {
					binary.LittleEndian.PutUint16(e[18:], limDate)
					count++
					changed = true
				}
				name := string(e[:11])
				if e[11]&0x10 != 0 && name != ".          " && name != "..         " {
					c := uint32(binary.LittleEndian.Uint16(e[26:]))
					if f.fat32 {
						c |= uint32(binary.LittleEndian.Uint16(e[20:])) << 16
					}
					if c >= 2 {
						if err := walk(c, depth+1); err != nil {
							return err
						}
					}
				}
			}
			if changed {
				if _, err := f.d.WriteAt(buf, r[0]); err != nil {
					return err
				}
			}
		}
		return nil
	}
	return count, walk(0, 0)
}

// clampPair sets a (date, time) pair later than the limit to the limit,
// and the creation time's 10 ms field with it.
func clampPair(e []byte, dateOff, timeOff int, limDate, limTime uint16) bool {
	d, t := binary.LittleEndian.Uint16(e[dateOff:]), binary.LittleEndian.Uint16(e[timeOff:])
	if d < limDate || (d == limDate && t <= limTime) {
		return false
	}
	binary.LittleEndian.PutUint16(e[dateOff:], limDate)
	binary.LittleEndian.PutUint16(e[timeOff:], limTime)
	if timeOff == 14 {
		e[13] = 0
	}
	return true
}

// fatDateTime encodes a time as FAT does: date = (year-1980)<<9 | month<<5
// | day, time = hour<<11 | minute<<5 | second/2. Times before 1980 become
// 1980-01-01.
func fatDateTime(t time.Time) (uint16, uint16) {
	if t.Year() < 1980 {
		return 1<<5 | 1, 0
	}
	return uint16((t.Year()-1980)<<9 | int(t.Month())<<5 | t.Day()),
		uint16(t.Hour()<<11 | t.Minute()<<5 | t.Second()/2)
}
