package eventlog

// TDXFromTPM turns the events of a vTPM log (ParseTPMLog: PCR-indexed,
// mapped to RTMRs) into the sequence TDX firmware logs for the same boot,
// as far as the two differ by rule. The measuring code is the same (edk2
// DxeTpm2MeasureBootLib, systemd-stub, the kernel EFI stub); what differs:
//
//   - PCR 0 (the CRTM version and the firmware blobs) has no RTMR: a TD's
//     firmware is in MRTD. Its events are dropped.
//   - At ReadyToBoot a TPM firmware measures one EV_SEPARATOR into each of
//     PCR 0-7 (edk2 Tcg2Dxe OnReadyToBoot); a TDX firmware one into RTMR1
//     only (edk2 TdTcg2Dxe OnReadyToBoot), and RTMR0's one separator is
//     PCR 7's, measured when the Secure Boot variables are done. So the
//     separators of PCR 0 and 1 are dropped and a run of PCR 2-6
//     separators collapses to its first.
//
// The real CC log in the shared test data (dstack/ccel.bin) shows that
// shape: in RTMR0 one separator after the Secure Boot variables, in RTMR1
// one after "Calling EFI Application from Boot Option". RTMR0 still differs
// from a TD's (a TD's also holds its TD HOB and configuration volume), so
// it is taken from a reference boot or waived; RTMR1 and RTMR2 are what a
// TD booting the same image shows. The dev appliance's mock quote carries
// them, so measure's prediction is checked against a real firmware.
func TDXFromTPM(events []Event) []Event {
	out := make([]Event, 0, len(events))
	prevSep := [Registers]bool{}
	for _, e := range events {
		if e.RTMR < 0 || e.RTMR >= Registers || e.PCR == 0 {
			continue
		}
		sep := e.Type == EvSeparator
		if sep && (e.PCR == 1 || prevSep[e.RTMR]) {
			continue
		}
		prevSep[e.RTMR] = sep
		out = append(out, e)
	}
	return out
}
