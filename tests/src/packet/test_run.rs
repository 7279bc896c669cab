//! BPF_PROG_TEST_RUN context, and hex dumps for failure messages.

/// The XDP context `struct xdp_md` for BPF_PROG_TEST_RUN with an ingress device: the kernel
/// requires `data = 0`, `data_end = len(data_in)`, `data_meta = 0`, `egress_ifindex = 0`
/// (net/bpf/test_run.c, bpf_prog_test_run_xdp / xdp_convert_md_to_buff).
pub fn xdp_md(data_len: usize, ingress_ifindex: u32, rx_queue_index: u32) -> [u8; 24] {
    let words = [
        0u32,
        u32::try_from(data_len).expect("fits"),
        0,
        ingress_ifindex,
        rx_queue_index,
        0,
    ];
    let mut out = [0u8; 24];
    for (i, w) in words.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
    out
}

/// A hex dump of `a` against `b`, 16 bytes per line, with `!!` marking lines that differ and a
/// header naming the first differing offset (for fixture failure messages).
pub fn hex_diff(expected: &[u8], actual: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let first = expected
        .iter()
        .zip(actual)
        .position(|(a, b)| a != b)
        .or_else(|| (expected.len() != actual.len()).then(|| expected.len().min(actual.len())));
    let _ = writeln!(
        s,
        "    expected {} bytes, actual {} bytes, first difference at offset {}",
        expected.len(),
        actual.len(),
        first.map_or("none".to_string(), |o| o.to_string())
    );
    let lines = expected.len().max(actual.len()).div_ceil(16);
    for i in 0..lines {
        let r = i * 16..(i + 1) * 16;
        let e = expected
            .get(r.start..r.end.min(expected.len()))
            .unwrap_or(&[]);
        let a = actual.get(r.start..r.end.min(actual.len())).unwrap_or(&[]);
        let mark = if e == a { "  " } else { "!!" };
        let hex = |b: &[u8]| {
            b.iter()
                .map(|x| format!("{x:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let _ = writeln!(
            s,
            "  {mark} {:04x}  exp {:<47}  act {}",
            r.start,
            hex(e),
            hex(a)
        );
    }
    s
}
